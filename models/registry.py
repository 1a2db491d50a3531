"""The model registry: versions of each symbol's MTF model and one champion per symbol, kept in the journal.

The journal is the registry's truth, because it is what every host reaches (`core.journal`; "Beyond one box",
issue #15): a version trained on one host is the champion every host loads. Its tables (journal schema migration
8, written and read by `core.journal.models`):

    model_versions          one row a version: symbol, version (v0001, v0002 ... numbered per symbol), metadata
    model_files             the version's files as BLOBs, each with its size and sha256:
        model.keras         the Keras model (for retraining, evaluation and as the reference)
        scaler.joblib       the scikit-learn StandardScaler fitted on the training window
        weights.npz         LSTM/Dense weights + scaler mean/scale for the numpy forward pass (models.inference)
        metadata.json       features, L, H, data range, data fingerprint, metrics, config, created_at (as_of)
        walkforward.json    the walk-forward evidence of the retrain that made it (models.walkforward), if any
    model_champions         one row a symbol: the champion and the former champions it replaced (oldest first)
    model_champion_changes  every promote, rollback and import of a champion, numbered per symbol

``root`` (``settings.models_dir``) is this host's cache of those files, ``<root>/<SYMBOL>/<version>/<file>``,
written from the journal when a version is first loaded and checked against the journal's sha256 at every load
(a missing or damaged cached file is fetched again; a journal copy that does not match its own sha256 is an
error). A version's model files never change once registered, so a cached version is reused; only
walkforward.json is replaced, by a new walk-forward run of the same version.

Atomicity and concurrency (the journal runs one transaction at a time):

* ``register`` serialises the model into a temporary folder (Keras saves to a path), then numbers the version
  (the symbol's highest number + 1) and stores its row and every file in one transaction: a reader sees the
  version with all its files or not at all, and two hosts registering at once get different numbers.
* ``promote`` and ``rollback`` read and change the pointer in one transaction, so no change is lost and the
  history stays whole. With ``expected=`` (the champion the caller decided against) they are compare-and-set: if
  another host or person changed the champion meanwhile, they change nothing and raise `ChampionChanged`. The
  monthly retrain passes the champion it evaluated, `tradeflow models promote|rollback` the champion it read, so
  of two hosts promoting at once one wins and the other fails saying what the champion is now.

Registry folders made before the journal held the registry (version folders and ``champion.json`` files only) are
imported on the first use of a registry on that folder, automatically, once, and journaled: each version not yet
in the journal in one transaction (its number and files as they are; ``source`` 'imported'), then each symbol's
``champion.json`` as its champion (action 'import') unless the journal already has a champion for the symbol (the
journal wins); ``champion.json`` is then renamed ``champion.json.imported``. Running it again changes nothing. A
folder whose version name the journal already holds with other metadata (another host registered that number
first) is not imported: it is renamed ``.<version>.not-imported-<n>`` beside it, with a warning in the log.

Nothing here imports TensorFlow except :meth:`ModelRegistry.load_keras_model`; nothing reads the clock (``as_of``
is passed in).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from core.journal import Journal

log = logging.getLogger("tradeflow.models.registry")

CHAMPION_FILE = "champion.json"
"""The champion pointer of a registry folder made before the journal held the registry (imported, then renamed)."""
EVIDENCE_FILE = "walkforward.json"
_VERSION_RE = re.compile(r"^v(\d{4,})$")
_SYMBOL_RE = re.compile(r"[A-Za-z0-9._-]+")


class RegistryError(RuntimeError):
    """Unknown symbol or version, nothing to roll back to, or a damaged registry entry."""


class ChampionChanged(RegistryError):
    """A compare-and-set promote or rollback found another champion than the one the caller decided against."""


ANY = object()
"""``expected=ANY`` (the default): promote or roll back whatever the champion is now."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: its cache folder on this host and its metadata (the files are in the folder once
    `ModelRegistry.materialise` or a ``load_*`` method has run)."""

    symbol: str
    version: str
    path: Path
    metadata: dict[str, Any]

    @property
    def keras_path(self) -> Path:
        return self.path / "model.keras"

    @property
    def scaler_path(self) -> Path:
        return self.path / "scaler.joblib"

    @property
    def weights_path(self) -> Path:
        return self.path / "weights.npz"


class ModelRegistry:
    """Versions and champions in `journal`, cached under ``root`` (a folder; created when first written).

    Args:
        root: this host's cache folder (``settings.models_dir``); a registry folder made before the journal held
            the registry is imported from it on first use (module docstring).
        journal: the journal every host shares.
    """

    def __init__(self, root: str | Path, journal: Journal):
        self.root = Path(root)
        self.journal = journal
        self._imported = False

    # ---------------------------------------------------------------------------------------------------------
    @staticmethod
    def _symbol(symbol: str) -> str:
        if not isinstance(symbol, str) or not _SYMBOL_RE.fullmatch(symbol):
            raise RegistryError(f"bad symbol {symbol!r}")
        return symbol.upper()

    def _folder(self, symbol: str, version: str) -> Path:
        if not _VERSION_RE.match(version):
            raise RegistryError(f"bad version {version!r} (versions are named v0001, v0002 ...)")
        return self.root / symbol / version

    def _version(self, row: dict[str, Any]) -> ModelVersion:
        return ModelVersion(row["symbol"], row["version"], self._folder(row["symbol"], row["version"]),
                            row["metadata"])

    def symbols(self) -> list[str]:
        """Every symbol with a registered version, sorted."""
        self._ensure_imported()
        with self.journal.transaction() as tx:
            return tx.model_symbols()

    def list_versions(self, symbol: str) -> list[ModelVersion]:
        """All versions of ``symbol``, oldest first (empty when none)."""
        sym = self._symbol(symbol)
        self._ensure_imported()
        with self.journal.transaction() as tx:
            return [self._version(r) for r in tx.model_versions_of(sym)]

    @staticmethod
    def _registered(tx: Any, sym: str, version: str) -> dict[str, Any]:
        """The journal's row of a version, read in `tx`. Raises RegistryError when it is not registered."""
        row = tx.model_version_of(sym, version)
        if row is None:
            raise RegistryError(f"{sym} has no version {version!r} (see `tradeflow models list`)")
        return row

    def get(self, symbol: str, version: str) -> ModelVersion:
        """One version. Raises RegistryError when it is not registered."""
        sym = self._symbol(symbol)
        self._ensure_imported()
        with self.journal.transaction() as tx:
            return self._version(self._registered(tx, sym, version))

    def register(self, symbol: str, model: Any, scaler: Any, weights: dict[str, np.ndarray],
                 metadata: dict[str, Any], as_of: datetime) -> ModelVersion:
        """Store a new version (not champion yet) and return it.

        Args:
            model: a Keras model (anything with ``save(path)``), saved as model.keras.
            scaler: the fitted scaler, saved with joblib.
            weights: arrays from :func:`models.mtf.export_weights`, saved as weights.npz.
            metadata: JSON-able dict; ``symbol``, ``version`` and ``created_at`` (= as_of) are added.
            as_of: tz-aware time of registration (recorded, never read from a clock).

        Raises:
            ValueError: ``as_of`` is naive.
            core.journal.JournalError: the journal cannot be written (nothing is registered).
        """
        import joblib

        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        sym = self._symbol(symbol)
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".register-", dir=self.root) as tmp:
            model.save(Path(tmp) / "model.keras")
            joblib.dump(scaler, Path(tmp) / "scaler.joblib")
            np.savez(Path(tmp) / "weights.npz", **weights)
            files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        return self.register_files(sym, files, metadata, as_of)

    def register_files(self, symbol: str, files: dict[str, bytes], metadata: dict[str, Any],
                       as_of: datetime) -> ModelVersion:
        """Store a new version from its files' contents (name -> bytes: model.keras, scaler.joblib, weights.npz;
        metadata.json is made from ``metadata``) in one journal transaction, and put it in this host's cache.

        Raises:
            ValueError: ``as_of`` is naive, or a file name is not a plain file name.
            core.journal.JournalError: the journal cannot be written (nothing is registered).
        """
        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        bad = [n for n in files if Path(n).name != n or n.startswith(".") or n == "metadata.json"]
        if bad:
            raise ValueError(f"not a version's file name: {bad}")
        sym = self._symbol(symbol)
        self._ensure_imported()
        with self.journal.transaction() as tx:
            number = tx.next_model_number(sym)
            version = f"v{number:04d}"
            meta = dict(metadata) | {"symbol": sym, "version": version, "created_at": as_of.isoformat()}
            text = json.dumps(meta, indent=2, sort_keys=True, default=_json_default)
            tx.record_model_version(sym, version, number, text, as_of, "registered", files)
        self._cache(sym, version, {**files, "metadata.json": text.encode()})
        return ModelVersion(sym, version, self._folder(sym, version), json.loads(text))

    # ---------------------------------------------------------------------------------------------------------
    def champion(self, symbol: str) -> ModelVersion | None:
        """The champion of ``symbol``, or None when it has none."""
        sym = self._symbol(symbol)
        self._ensure_imported()
        with self.journal.transaction() as tx:
            ptr = tx.model_champion_of(sym)
            row = tx.model_version_of(sym, ptr["version"]) if ptr else None
        if ptr and row is None:
            raise RegistryError(f"{sym}'s champion {ptr['version']} is not a registered version")
        return self._version(row) if row else None

    def champion_history(self, symbol: str) -> list[str]:
        """The former champions of ``symbol``, oldest first (``rollback`` restores the last one)."""
        sym = self._symbol(symbol)
        self._ensure_imported()
        with self.journal.transaction() as tx:
            ptr = tx.model_champion_of(sym)
        return list(ptr["history"]) if ptr else []

    @staticmethod
    def _check_expected(sym: str, current: str | None, expected: Any, what: str) -> None:
        if expected is not ANY and current != expected:
            raise ChampionChanged(
                f"{sym}: not {what}: the champion is {current or 'none'} now, not {expected or 'none'} as when this "
                "was decided (another host or person changed it meanwhile); nothing changed: look again "
                "(`tradeflow models list`) and decide again")

    def promote(self, symbol: str, version: str, *, expected: Any = ANY) -> ModelVersion:
        """Make ``version`` the champion; the previous champion goes onto the rollback history. One journal
        transaction; a version already champion is left as it is (whatever ``expected`` says).

        Args:
            expected: the champion's version (None: no champion) the caller decided against; default ANY.

        Raises:
            RegistryError: the version does not exist.
            ChampionChanged: ``expected`` was given and the champion is another version now (nothing changed).
        """
        sym = self._symbol(symbol)
        self._ensure_imported()
        with self.journal.transaction() as tx:
            row = self._registered(tx, sym, version)
            ptr = tx.model_champion_of(sym) or {"version": None, "history": []}
            if ptr["version"] != version:
                self._check_expected(sym, ptr["version"], expected, f"promoted to {version}")
                history = ptr["history"] + ([ptr["version"]] if ptr["version"] else [])
                tx.record_champion(sym, version, history, "promote", ptr["version"])
        return self._version(row)

    def rollback(self, symbol: str, *, expected: Any = ANY) -> ModelVersion:
        """Make the previous champion the champion again and return it (one journal transaction).

        Args:
            expected: the champion's version the caller decided to roll back; default ANY.

        Raises:
            RegistryError: there is no previous champion.
            ChampionChanged: ``expected`` was given and the champion is another version now (nothing changed).
        """
        sym = self._symbol(symbol)
        self._ensure_imported()
        with self.journal.transaction() as tx:
            ptr = tx.model_champion_of(sym) or {"version": None, "history": []}
            self._check_expected(sym, ptr["version"], expected, "rolled back")
            if not ptr["history"]:
                raise RegistryError(f"{sym} has no previous champion to roll back to")
            previous = ptr["history"][-1]
            row = tx.model_version_of(sym, previous)
            if row is None:
                raise RegistryError(f"{sym}'s previous champion {previous} is not a registered version")
            tx.record_champion(sym, previous, ptr["history"][:-1], "rollback", ptr["version"])
        return self._version(row)

    # ---------------------------------------------------------------------------------------------------------
    def materialise(self, mv: ModelVersion) -> Path:
        """Make this host's cache folder of ``mv`` hold every file the journal has for it, each matching the
        journal's sha256 (files missing or different are fetched, in one transaction), and return the folder.

        Raises:
            RegistryError: the version is not registered, or the journal's copy of a file does not match its own
                sha256 (a damaged journal row: nothing is written).
        """
        sym = self._symbol(mv.symbol)
        folder = self._folder(sym, mv.version)
        with self.journal.transaction() as tx:
            digests = tx.model_file_digests(sym, mv.version)
            stale = sorted(n for n, h in digests.items() if _sha256_file(folder / n) != h)
            contents = tx.model_file_contents(sym, mv.version, stale)
        if not digests:
            raise RegistryError(f"{sym} has no version {mv.version!r} (see `tradeflow models list`)")
        for name in stale:
            content, digest = contents[name]
            if hashlib.sha256(content).hexdigest() != digest:
                raise RegistryError(f"{sym} {mv.version}: the journal's {name} does not match its sha256 {digest}")
        if stale:
            log.info("%s %s: %s fetched from the journal into %s", sym, mv.version, ", ".join(stale), folder)
            self._cache(sym, mv.version, {n: contents[n][0] for n in stale})
        return folder

    def _cache(self, sym: str, version: str, files: dict[str, bytes]) -> None:
        """Write ``files`` into the version's cache folder, each atomically (write + ``os.replace``), so another
        process on this host reading the folder meanwhile sees each file whole."""
        folder = self._folder(sym, version)
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
                os.chmod(tmp, 0o644)
                os.replace(tmp, folder / name)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def save_evidence(self, mv: ModelVersion, evidence: dict[str, Any]) -> Path:
        """Store a version's walk-forward evidence (its ``walkforward.json``, replaced in the journal, then in this
        host's cache); the version's model files are never touched. Returns the cached file's path.

        Raises:
            RegistryError: the version is not registered.
        """
        sym = self._symbol(mv.symbol)
        content = json.dumps(evidence, indent=2, sort_keys=True, default=_json_default).encode()
        with self.journal.transaction() as tx:
            self._registered(tx, sym, mv.version)
            tx.put_model_file(sym, mv.version, EVIDENCE_FILE, content)
        self._cache(sym, mv.version, {EVIDENCE_FILE: content})
        return self._folder(sym, mv.version) / EVIDENCE_FILE

    def evidence(self, mv: ModelVersion) -> dict[str, Any] | None:
        """The version's stored walk-forward evidence (read from the journal), or None when it has none (or it is
        unreadable)."""
        with self.journal.transaction() as tx:
            found = tx.model_file_contents(self._symbol(mv.symbol), mv.version, [EVIDENCE_FILE])
        try:
            return json.loads(found[EVIDENCE_FILE][0]) if EVIDENCE_FILE in found else None
        except (ValueError, UnicodeDecodeError):
            return None

    def load_keras_model(self, mv: ModelVersion):
        """The Keras model of a version (imports TensorFlow: slow; use load_predictor for signals)."""
        import keras

        self.materialise(mv)
        return keras.models.load_model(mv.keras_path)

    def load_scaler(self, mv: ModelVersion):
        """The fitted scaler of a version."""
        import joblib

        self.materialise(mv)
        return joblib.load(mv.scaler_path)

    def load_predictor(self, symbol: str, version: str | None = None):
        """A :class:`models.inference.NumpyLSTMModel` for ``version`` (default: the champion); no TensorFlow.

        Raises:
            RegistryError: no such version / no champion, or a damaged journal copy (`materialise`).
            OSError, ValueError, KeyError: the weights file does not load.
        """
        from models.inference import NumpyLSTMModel

        mv = self.get(symbol, version) if version else self.champion(symbol)
        if mv is None:
            raise RegistryError(f"{symbol.upper()} has no champion model in the journal's registry")
        self.materialise(mv)
        return NumpyLSTMModel.load(mv.weights_path)

    # ---- registry folders made before the journal held the registry --------------------------------------------
    def _ensure_imported(self) -> None:
        """Import the registry folder's versions and champion pointers the journal lacks (module docstring), once
        per registry object."""
        if self._imported:
            return
        local: dict[tuple[str, str], Path] = {}
        pointers: dict[str, Path] = {}
        if self.root.is_dir():
            for sd in sorted(self.root.iterdir()):
                if not sd.is_dir() or sd.name.startswith(".") or not _SYMBOL_RE.fullmatch(sd.name):
                    continue
                for vd in sorted(sd.iterdir()):
                    if vd.is_dir() and _VERSION_RE.match(vd.name) and (vd / "metadata.json").is_file():
                        local[(sd.name.upper(), vd.name)] = vd
                if (sd / CHAMPION_FILE).is_file():
                    pointers[sd.name.upper()] = sd / CHAMPION_FILE
        if local or pointers:
            with self.journal.transaction() as tx:
                known = {(r["symbol"], r["version"]): r["metadata"] for r in tx.model_versions_of()}
            for (sym, version), folder in local.items():
                self._import_version(sym, version, folder, known.get((sym, version)))
            for sym, path in pointers.items():
                self._import_pointer(sym, path)
        self._imported = True

    def _import_version(self, sym: str, version: str, folder: Path, journal_meta: dict[str, Any] | None) -> None:
        try:
            text = (folder / "metadata.json").read_text()
            meta = json.loads(text)
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{folder}/metadata.json unreadable: {exc}") from None
        if journal_meta is not None:
            if meta != journal_meta:  # another model under the same name: keep it, out of the cache's way
                aside = _aside(folder, "not-imported")
                log.warning("%s %s in %s differs from the journal's %s %s: not imported, kept as %s", sym, version,
                            folder, sym, version, aside)
            return  # already in the journal (this is its cached copy)
        try:
            created_at = datetime.fromisoformat(meta["created_at"])
            if created_at.tzinfo is None:
                raise ValueError("no UTC offset")
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"{folder}/metadata.json: created_at missing or not an aware time: {exc}") from None
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())
                 if p.is_file() and not p.name.startswith(".") and p.name != "metadata.json"}
        with self.journal.transaction() as tx:
            new = tx.record_model_version(sym, version, int(_VERSION_RE.match(version).group(1)), text, created_at,
                                          "imported", files)
        if new:
            log.info("%s %s imported into the journal from %s", sym, version, folder)

    def _import_pointer(self, sym: str, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"champion pointer {path} unreadable: {exc}") from None
        version = data.get("version")
        with self.journal.transaction() as tx:
            if version and tx.model_champion_of(sym) is None:
                if tx.model_version_of(sym, version) is None:
                    raise RegistryError(f"{path}: champion {version} is not a version in {path.parent}")
                registered = {r["version"] for r in tx.model_versions_of(sym)}
                history = [v for v in data.get("history", []) if v in registered]
                tx.record_champion(sym, version, history, "import", None)
                log.info("%s champion %s imported into the journal from %s", sym, version, path)
            elif version:
                log.warning("%s: %s names champion %s, but the journal already has a champion for %s: the "
                            "journal's stays", sym, path, version, sym)
        os.replace(path, path.with_name(CHAMPION_FILE + ".imported"))


def _aside(folder: Path, why: str) -> Path:
    """Rename `folder` to a hidden name beside it (``.<name>.<why>-<n>``) and return the new path."""
    n = 1
    while (target := folder.with_name(f".{folder.name}.{why}-{n}")).exists():
        n += 1
    os.rename(folder, target)
    return target


def _sha256_file(path: Path) -> str | None:
    """The hex sha256 of the file at `path`, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "isoformat"):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
