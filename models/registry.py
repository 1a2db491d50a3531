"""The model registry: versions of each symbol's MTF model and one champion per symbol.

Layout under ``root`` (``settings.models_dir``)::

    <SYMBOL>/
        v0001/
            model.keras      the Keras model (for retraining, evaluation and as the reference)
            scaler.joblib    the scikit-learn StandardScaler fitted on the training window
            weights.npz      LSTM/Dense weights + scaler mean/scale for the numpy forward pass (models.inference)
            metadata.json    features, L, H, data range, data fingerprint, metrics, config, created_at (as_of)
            walkforward.json the walk-forward evidence of the retrain that made it (models.walkforward), if any
        v0002/ …
        champion.json        {"version": "v0002", "history": ["v0001"]}: the champion and the ones it replaced

Versions are numbered (v0001, v0002 …) per symbol; a version folder is written under a temporary name and renamed
when complete, and ``champion.json`` is replaced atomically (write + ``os.replace``), so a reader never sees half a
version or half a pointer. ``promote`` pushes the old champion onto the history; ``rollback`` pops it back.
Nothing here imports TensorFlow except :func:`load_keras_model`; nothing reads the clock (``as_of`` is passed in).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

CHAMPION_FILE = "champion.json"
EVIDENCE_FILE = "walkforward.json"
_VERSION_RE = re.compile(r"^v(\d{4,})$")


class RegistryError(RuntimeError):
    """Unknown symbol or version, nothing to roll back to, or a damaged registry entry."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: its folder and metadata."""

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
    """Versions and champions under ``root`` (a folder; created when first written)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---------------------------------------------------------------------------------------------------------
    def _symbol_dir(self, symbol: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", symbol):
            raise RegistryError(f"bad symbol {symbol!r}")
        return self.root / symbol.upper()

    def list_versions(self, symbol: str) -> list[ModelVersion]:
        """All versions of ``symbol``, oldest first (empty when none)."""
        d = self._symbol_dir(symbol)
        if not d.is_dir():
            return []
        out = []
        for p in sorted(d.iterdir()):
            if p.is_dir() and _VERSION_RE.match(p.name):
                out.append(self.get(symbol, p.name))
        return out

    def get(self, symbol: str, version: str) -> ModelVersion:
        """One version. Raises RegistryError when it does not exist or its metadata is unreadable."""
        p = self._symbol_dir(symbol) / version
        meta_path = p / "metadata.json"
        if not meta_path.is_file():
            raise RegistryError(f"{symbol.upper()} has no version {version!r} (looked in {p})")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"metadata of {symbol.upper()} {version} unreadable: {exc}") from None
        return ModelVersion(symbol.upper(), version, p, meta)

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
        """
        import joblib

        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        d = self._symbol_dir(symbol)
        d.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(1)) for p in d.iterdir() if (m := _VERSION_RE.match(p.name))]
        version = f"v{(max(numbers) + 1) if numbers else 1:04d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=d))
        try:
            model.save(tmp / "model.keras")
            joblib.dump(scaler, tmp / "scaler.joblib")
            np.savez(tmp / "weights.npz", **weights)
            meta = dict(metadata) | {"symbol": symbol.upper(), "version": version, "created_at": as_of.isoformat()}
            (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default))
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
            os.rename(tmp, d / version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.get(symbol, version)

    # ---------------------------------------------------------------------------------------------------------
    def _read_pointer(self, symbol: str) -> dict[str, Any]:
        p = self._symbol_dir(symbol) / CHAMPION_FILE
        if not p.is_file():
            return {"version": None, "history": []}
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"champion pointer {p} unreadable: {exc}") from None
        return {"version": data.get("version"), "history": list(data.get("history", []))}

    def _write_pointer(self, symbol: str, data: dict[str, Any]) -> None:
        d = self._symbol_dir(symbol)
        fd, tmp = tempfile.mkstemp(prefix=".champion-", dir=d)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, d / CHAMPION_FILE)

    def champion(self, symbol: str) -> ModelVersion | None:
        """The champion of ``symbol``, or None when it has none."""
        v = self._read_pointer(symbol)["version"]
        return self.get(symbol, v) if v else None

    def champion_history(self, symbol: str) -> list[str]:
        """The former champions of ``symbol``, oldest first (``rollback`` restores the last one)."""
        return list(self._read_pointer(symbol)["history"])

    def promote(self, symbol: str, version: str) -> ModelVersion:
        """Make ``version`` the champion; the previous champion goes onto the rollback history.

        Raises:
            RegistryError: the version does not exist.
        """
        mv = self.get(symbol, version)
        ptr = self._read_pointer(symbol)
        if ptr["version"] == version:
            return mv
        history = ptr["history"] + ([ptr["version"]] if ptr["version"] else [])
        self._write_pointer(symbol, {"version": version, "history": history})
        return mv

    def rollback(self, symbol: str) -> ModelVersion:
        """Make the previous champion the champion again and return it.

        Raises:
            RegistryError: there is no previous champion.
        """
        ptr = self._read_pointer(symbol)
        if not ptr["history"]:
            raise RegistryError(f"{symbol.upper()} has no previous champion to roll back to")
        previous = ptr["history"][-1]
        mv = self.get(symbol, previous)
        self._write_pointer(symbol, {"version": previous, "history": ptr["history"][:-1]})
        return mv

    # ---------------------------------------------------------------------------------------------------------
    def save_evidence(self, mv: ModelVersion, evidence: dict[str, Any]) -> Path:
        """Store a version's walk-forward evidence (``walkforward.json`` in its folder, replaced atomically); the
        version's model files are never touched. Returns the file's path."""
        fd, tmp = tempfile.mkstemp(prefix=".walkforward-", dir=mv.path)
        with os.fdopen(fd, "w") as f:
            json.dump(evidence, f, indent=2, sort_keys=True, default=_json_default)
        os.chmod(tmp, 0o644)
        os.replace(tmp, mv.path / EVIDENCE_FILE)
        return mv.path / EVIDENCE_FILE

    def evidence(self, mv: ModelVersion) -> dict[str, Any] | None:
        """The version's stored walk-forward evidence, or None when it has none (or it is unreadable)."""
        try:
            return json.loads((mv.path / EVIDENCE_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def load_keras_model(self, mv: ModelVersion):
        """The Keras model of a version (imports TensorFlow: slow; use load_predictor for signals)."""
        import keras

        return keras.models.load_model(mv.keras_path)

    def load_scaler(self, mv: ModelVersion):
        """The fitted scaler of a version."""
        import joblib

        return joblib.load(mv.scaler_path)

    def load_predictor(self, symbol: str, version: str | None = None):
        """A :class:`models.inference.NumpyLSTMModel` for ``version`` (default: the champion); no TensorFlow.

        Raises:
            RegistryError: no such version / no champion.
        """
        from models.inference import NumpyLSTMModel

        mv = self.get(symbol, version) if version else self.champion(symbol)
        if mv is None:
            raise RegistryError(f"{symbol.upper()} has no champion model in {self.root}")
        return NumpyLSTMModel.load(mv.weights_path)


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


# module-level shortcuts (root = settings.models_dir)


def list_versions(root: str | Path, symbol: str) -> list[ModelVersion]:
    """All versions of ``symbol`` under ``root``, oldest first."""
    return ModelRegistry(root).list_versions(symbol)


def champion(root: str | Path, symbol: str) -> ModelVersion | None:
    """The champion of ``symbol`` under ``root`` (None when none)."""
    return ModelRegistry(root).champion(symbol)


def promote(root: str | Path, symbol: str, version: str) -> ModelVersion:
    """Make ``version`` the champion of ``symbol``. Raises RegistryError for an unknown version."""
    return ModelRegistry(root).promote(symbol, version)


def rollback(root: str | Path, symbol: str) -> ModelVersion:
    """Restore the previous champion of ``symbol``. Raises RegistryError when there is none."""
    return ModelRegistry(root).rollback(symbol)
