"""The model registry in the journal (models/registry.py): what every host shares, each with its own cache folder.

Stub models (no TensorFlow): model.keras holds a tag, the scaler is a real StandardScaler, weights.npz is a real
Dense-only network that `load_predictor` loads. Every registry here talks to a real journal writer over TCP, so
the files travel as BLOBs over the journal's wire as they do between hosts.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from core.journal import Journal, codec
from models.registry import ChampionChanged, ModelRegistry, RegistryError

AS_OF = datetime(2026, 2, 27, 23, 0, tzinfo=timezone.utc)


class _StubModel:
    def __init__(self, tag: str):
        self.tag = tag

    def save(self, path):
        Path(path).write_text(self.tag)


def _weights(bias: float = 0.0) -> dict:
    return {"layers": np.array(["dense"]), "activations": np.array(["sigmoid"]), "w0_kernel": np.zeros((45, 1)),
            "w0_bias": np.full(1, bias), "scaler_mean": np.zeros(45), "scaler_scale": np.ones(45),
            "features": np.array([f"f{i}" for i in range(45)]), "lookback": np.array(1)}


def _register(reg: ModelRegistry, symbol: str, tag: str) -> str:
    return reg.register(symbol, _StubModel(tag), StandardScaler(), _weights(), {"note": tag}, AS_OF).version


def _changes(journal: Journal, symbol: str) -> list[tuple]:
    with journal.transaction() as tx:
        return tx.fetch("SELECT change, action, version, previous FROM model_champion_changes WHERE symbol = ?"
                        " ORDER BY change", [symbol])


def test_bytes_cross_the_journal_wire_typed():
    blob = bytes(range(256)) * 3
    wire = json.loads(codec.dumps({"v": codec.encode([blob, bytearray(b"ab"), "text"])}))
    assert codec.decode(wire["v"]) == [blob, b"ab", "text"]


def test_two_hosts_with_their_own_cache_see_one_champion_and_load_it(tmp_path):
    journal = Journal(tmp_path / "journal.duckdb")
    host_a = ModelRegistry(tmp_path / "a" / "models", journal)
    host_b = ModelRegistry(tmp_path / "b" / "models", Journal(tmp_path / "journal.duckdb"))
    v1 = _register(host_a, "AAPL", "one")
    v2 = _register(host_a, "AAPL", "two")
    host_a.promote("AAPL", v1)
    host_a.promote("AAPL", v2)
    host_a.save_evidence(host_a.get("AAPL", v2), {"folds": [], "note": "wf"})
    import shutil

    shutil.rmtree(tmp_path / "a")  # host A's folder is gone: B has only the journal

    champ = host_b.champion("AAPL")
    assert (champ.version, champ.metadata["note"]) == (v2, "two")
    assert champ.path == tmp_path / "b" / "models" / "AAPL" / v2 and not champ.path.exists()  # not fetched yet
    assert host_b.champion_history("AAPL") == [v1]
    assert [v.version for v in host_b.list_versions("aapl")] == [v1, v2] and host_b.symbols() == ["AAPL"]
    assert host_b.load_predictor("AAPL").lookback == 1
    assert {p.name for p in champ.path.iterdir()} == {"model.keras", "scaler.joblib", "weights.npz", "metadata.json",
                                                     "walkforward.json"}
    assert champ.keras_path.read_text() == "two"
    assert host_b.evidence(champ)["note"] == "wf"
    assert json.loads((champ.path / "metadata.json").read_text())["version"] == v2

    # B rolls back; A (a fresh registry: nothing kept in memory) sees it
    assert host_b.rollback("AAPL").version == v1
    assert ModelRegistry(tmp_path / "a" / "models", journal).champion("AAPL").version == v1
    assert [(c[1], c[2], c[3]) for c in _changes(journal, "AAPL")] == [
        ("promote", v1, None), ("promote", v2, v1), ("rollback", v1, v2)]


def test_a_damaged_cached_file_is_fetched_again_and_a_damaged_journal_copy_is_an_error(tmp_path):
    journal = Journal(tmp_path / "journal.duckdb")
    reg = ModelRegistry(tmp_path / "models", journal)
    reg.promote("TSLA", _register(reg, "TSLA", "one"))
    mv = reg.champion("TSLA")
    good = mv.weights_path.read_bytes()
    mv.weights_path.write_bytes(b"not a model")
    (mv.path / "scaler.joblib").unlink()
    assert reg.load_predictor("TSLA").lookback == 1
    assert mv.weights_path.read_bytes() == good and (mv.path / "scaler.joblib").is_file()

    with journal.transaction() as tx:  # the journal's copy no longer matches its own sha256
        tx.fetch("UPDATE model_files SET content = ? WHERE symbol = 'TSLA' AND name = 'weights.npz'", [b"bad"])
    mv.weights_path.unlink()
    with pytest.raises(RegistryError, match=r"TSLA v0001: the journal's weights.npz does not match its sha256"):
        reg.load_predictor("TSLA")
    assert not mv.weights_path.exists()  # nothing damaged written


def test_a_promote_race_between_two_hosts_has_one_winner(tmp_path):
    """Both hosts decided against champion v0001 and promote at the same moment: exactly one promote changes the
    champion, the other changes nothing and says what the champion is now."""
    journal = Journal(tmp_path / "journal.duckdb")
    hosts = [ModelRegistry(tmp_path / h / "models", Journal(tmp_path / "journal.duckdb")) for h in ("a", "b")]
    v1 = _register(hosts[0], "AAPL", "one")
    hosts[0].promote("AAPL", v1)
    candidates = [_register(hosts[0], "AAPL", "two"), _register(hosts[1], "AAPL", "three")]
    assert candidates == ["v0002", "v0003"]
    start = threading.Barrier(2, timeout=60)
    outcome: dict[str, object] = {}

    def promote(host: ModelRegistry, version: str) -> None:
        start.wait()
        try:
            outcome[version] = host.promote("AAPL", version, expected=v1).version
        except ChampionChanged as exc:
            outcome[version] = exc

    threads = [threading.Thread(target=promote, args=(h, v)) for h, v in zip(hosts, candidates, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    won = [v for v, o in outcome.items() if o == v]
    lost = [o for o in outcome.values() if isinstance(o, ChampionChanged)]
    assert len(won) == 1 and len(lost) == 1, outcome
    assert f"the champion is {won[0]} now, not {v1}" in str(lost[0]) and "nothing changed" in str(lost[0])
    for host in hosts:
        assert host.champion("AAPL").version == won[0] and host.champion_history("AAPL") == [v1]
    assert [(c[2], c[3]) for c in _changes(journal, "AAPL")] == [(v1, None), (won[0], v1)]

    # without `expected` two promotes are serialized: the last wins and the history keeps both
    loser = next(v for v in candidates if v != won[0])
    hosts[1].promote("AAPL", loser)
    assert hosts[0].champion("AAPL").version == loser and hosts[0].champion_history("AAPL") == [v1, won[0]]
    with pytest.raises(ChampionChanged, match="not rolled back"):
        hosts[0].rollback("AAPL", expected=won[0])
    assert hosts[0].promote("AAPL", loser, expected="v0042").version == loser  # already champion: nothing to do


def test_registering_at_once_on_two_hosts_numbers_the_versions_apart(tmp_path):
    hosts = [ModelRegistry(tmp_path / h / "models", Journal(tmp_path / "journal.duckdb")) for h in ("a", "b")]
    start = threading.Barrier(4, timeout=60)
    made: list[str] = []

    def register(host: ModelRegistry, tag: str) -> None:
        start.wait()
        made.append(_register(host, "MSFT", tag))

    threads = [threading.Thread(target=register, args=(hosts[i % 2], f"t{i}")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(made) == ["v0001", "v0002", "v0003", "v0004"]
    notes = {v.version: v.metadata["note"] for v in hosts[0].list_versions("MSFT")}
    for v in notes:  # each version's files are its own model's
        assert hosts[1].materialise(hosts[1].get("MSFT", v)).joinpath("model.keras").read_text() == notes[v]


def _legacy_version(folder: Path, symbol: str, version: str, tag: str, evidence: dict | None = None) -> None:
    """A version folder as the registry wrote them before the journal held it."""
    folder.mkdir(parents=True)
    (folder / "model.keras").write_text(tag)
    joblib.dump(StandardScaler(), folder / "scaler.joblib")
    np.savez(folder / "weights.npz", **_weights())
    (folder / "metadata.json").write_text(json.dumps({"note": tag, "symbol": symbol, "version": version,
                                                      "created_at": AS_OF.isoformat()}))
    if evidence is not None:
        (folder / "walkforward.json").write_text(json.dumps(evidence))


def test_a_registry_folder_from_before_is_imported_once_on_first_use(tmp_path):
    root = tmp_path / "models"
    for v, tag in (("v0001", "one"), ("v0002", "two"), ("v0003", "three")):
        _legacy_version(root / "AAPL" / v, "AAPL", v, tag, {"note": tag} if v == "v0002" else None)
    (root / "AAPL" / "champion.json").write_text(json.dumps({"version": "v0003", "history": ["v0001", "v0002"]}))
    _legacy_version(root / "TSLA" / "v0001", "TSLA", "v0001", "tsla")  # versions, never a champion
    journal = Journal(tmp_path / "journal.duckdb")
    weights = (root / "AAPL" / "v0003" / "weights.npz").read_bytes()

    other_host = ModelRegistry(tmp_path / "other" / "models", journal)
    assert other_host.champion("AAPL") is None  # nothing imported from a folder it does not have

    reg = ModelRegistry(root, journal)
    champ = reg.champion("AAPL")
    assert champ.version == "v0003" and reg.champion_history("AAPL") == ["v0001", "v0002"]
    assert not (root / "AAPL" / "champion.json").exists() and (root / "AAPL" / "champion.json.imported").is_file()
    assert other_host.load_predictor("AAPL").lookback == 1  # the other host loads the imported champion
    assert (tmp_path / "other" / "models" / "AAPL" / "v0003" / "weights.npz").read_bytes() == weights
    assert other_host.evidence(other_host.get("AAPL", "v0002")) == {"note": "two"}
    assert [v.version for v in other_host.list_versions("TSLA")] == ["v0001"] and other_host.champion("TSLA") is None
    assert [(c[1], c[2]) for c in _changes(journal, "AAPL")] == [("import", "v0003")]
    with journal.transaction() as tx:
        sources = tx.fetch("SELECT DISTINCT source FROM model_versions")
        count = tx.fetch("SELECT count(*) FROM model_files")[0][0]
    assert sources == [("imported",)]

    # again (a new registry on the same folder, as every flow run makes): nothing changes
    again = ModelRegistry(root, journal)
    assert again.champion("AAPL").version == "v0003"
    with journal.transaction() as tx:
        assert tx.fetch("SELECT count(*) FROM model_files")[0][0] == count
    assert len(_changes(journal, "AAPL")) == 1
    assert _register(again, "AAPL", "four") == "v0004"  # numbering goes on after the imported versions

    # a folder from before whose version name the journal already holds with another model: kept aside
    stray = tmp_path / "stray" / "models"
    _legacy_version(stray / "AAPL" / "v0001", "AAPL", "v0001", "someone else's")
    (stray / "AAPL" / "champion.json").write_text(json.dumps({"version": "v0001", "history": []}))
    third = ModelRegistry(stray, journal)
    assert third.champion("AAPL").version == "v0003"  # the journal's champion stays
    assert (stray / "AAPL" / ".v0001.not-imported-1" / "model.keras").read_text() == "someone else's"
    assert third.materialise(third.get("AAPL", "v0001")).joinpath("model.keras").read_text() == "one"
