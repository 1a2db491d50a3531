"""Helpers for the MTF flow tests: real registered models whose P(up) is known.

`constant_model`: a real Keras LSTM (built by `models.mtf.build_model`) whose final Dense layer has a zero kernel
and the bias logit(p), so its P(up) is p for every input; registered through the real registry (model.keras,
scaler, weights.npz, metadata: into the journal) and read back by the signal flow through `ModelRegistry.load_predictor`, like any
trained model. Building them imports TensorFlow once per test session (session fixture `model_templates`).
"""

from __future__ import annotations

import math
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from core.calendar import NY
from models.registry import ModelRegistry

CREATED = datetime(2026, 2, 27, 23, 0, tzinfo=timezone.utc)
PROBABILITIES = (0.9, 0.1, 0.51)
"""P(up) of the template versions: enters, exits / stays out, holds (between the exit and entry thresholds)."""


def constant_model(p_up: float, lookback: int = 24):
    """(Keras model, fitted scaler, exported weights) of an LSTM whose output is ``p_up`` for every input."""
    from sklearn.preprocessing import StandardScaler

    from core.features import FEATURES
    from models.mtf import TrainConfig, build_model, export_weights

    model = build_model(lookback, len(FEATURES), TrainConfig(lookback=lookback, lstm_units=(4,)))
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    dense.set_weights([np.zeros_like(kernel), np.full_like(bias, math.log(p_up / (1 - p_up)))])
    scaler = StandardScaler().fit(np.random.default_rng(0).normal(size=(100, len(FEATURES))))
    return model, scaler, export_weights(model, scaler, lookback)


def register_constant(registry: ModelRegistry, symbol: str, p_up: float) -> str:
    """Register a constant-P(up) version of ``symbol``; returns its version name."""
    from core.features import FEATURES

    model, scaler, weights = constant_model(p_up)
    meta = {"features": list(FEATURES), "lookback": 24, "horizon": 4, "note": f"test model: P(up) = {p_up}"}
    return registry.register(symbol, model, scaler, weights, meta, CREATED).version


_templates: list[tuple[Path, dict[tuple[str, float], str]]] = []


@pytest.fixture(scope="session")
def model_templates(tmp_path_factory) -> tuple[Path, dict[tuple[str, float], str]]:
    """A registry's cache folder with AAPL and TSLA versions of each P(up) in PROBABILITIES, and their version
    names (built once per test session, also when several modules import this fixture). A test's registry imports
    a copy of the folder as a registry folder made before the journal held the registry (`models` fixture)."""
    from core.journal import Journal

    if not _templates:
        work = tmp_path_factory.mktemp("model-templates")
        root = work / "models"
        reg = ModelRegistry(root, Journal(work / "journal.duckdb"))
        versions = {(sym, p): register_constant(reg, sym, p) for sym in ("AAPL", "TSLA") for p in PROBABILITIES}
        _templates.append((root, versions))
    return _templates[0]


class Models:
    """The test's registry (a copy of the templates in the state directory) and a way to pick champions."""

    def __init__(self, registry: ModelRegistry, versions: dict[tuple[str, float], str]):
        self.registry = registry
        self.versions = versions

    def champion(self, symbol: str, p_up: float) -> str:
        """Make the constant-``p_up`` version the champion of ``symbol``; returns the version."""
        version = self.versions[(symbol, p_up)]
        self.registry.promote(symbol, version)
        return version


@pytest.fixture
def models(state_dir: Path, model_templates) -> Models:
    """The template registry in the test's state directory (its folder copied there, imported into the test's
    journal on first use, as an upgrade imports a registry folder), with AAPL and TSLA allowed past the edge gate
    (constant-P(up) models have no walk-forward evidence; the tests using them are about the rules, the broker
    and the journal; tests/test_edge_gate.py tests the gate itself)."""
    from core.journal import Journal

    root, versions = model_templates
    shutil.copytree(root, state_dir / "models")
    journal = Journal(state_dir / "journal.duckdb")
    with journal.transaction() as tx:
        for sym in ("AAPL", "TSLA"):
            tx.record_model_allowance(sym, True, "tests", "constant-P(up) test models trade by design", CREATED)
    return Models(ModelRegistry(state_dir / "models", journal), versions)


@pytest.fixture
def event_loop_for_ib() -> None:
    """A current asyncio event loop in the main thread for an IBBroker used outside a flow: an earlier test's
    `asyncio.run` (tests/test_prefect_server.py) leaves the thread without one, and ib_insync's blocking API
    then fails with "There is no current event loop" (a process running one flow never meets this)."""
    import asyncio

    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


def fitted_model(bars, start, end, invert: bool = False, lookback: int = 24, horizon: int = 4):
    """(model, scaler, weights) of an LSTM fitted ON the hours in [start, end) themselves (many epochs, no
    dropout): in sample it ranks those hours far better than any honest model, so a retrain evaluated on that
    window must keep it. ``invert`` flips its output (P -> 1 - P): then it is far worse than chance there.
    Test scaffolding for a champion of known quality, not a way to train."""
    import keras
    from sklearn.preprocessing import StandardScaler

    from core.features import FEATURES, compute_features, first_complete_row
    from models.mtf import TrainConfig, build_model, export_weights, make_labels, windows

    keras.utils.set_random_seed(7)
    bars = bars[bars.index < end]
    frame = compute_features(bars)
    feats = frame.to_numpy()
    y = make_labels(bars["close"].to_numpy(), horizon)
    rows = np.flatnonzero((bars.index >= start) & ~np.isnan(y))
    scaler = StandardScaler().fit(feats[first_complete_row(frame):])
    x = windows(np.nan_to_num(scaler.transform(feats)), rows, lookback)
    model = build_model(lookback, len(FEATURES), TrainConfig(lookback=lookback, lstm_units=(32,), dropout=0.0,
                                                             learning_rate=0.01))
    model.fit(x, y[rows].astype(np.float32), epochs=60, batch_size=32, verbose=0)
    if invert:
        dense = model.layers[-1]
        kernel, bias = dense.get_weights()
        dense.set_weights([-kernel, -bias])
    return model, scaler, export_weights(model, scaler, lookback)


FEB = datetime(2026, 2, 1, tzinfo=NY)
MAR = datetime(2026, 3, 1, tzinfo=NY)
HISTORY_FROM = datetime(2025, 1, 1, tzinfo=NY)
"""The retrain tests' evaluation month (February 2026, as of tests.broker_support.START) and the start of the 13
months of hourly bars before it that their bar store holds."""


@pytest.fixture
def retrain_store(exchange, event_loop_for_ib):
    """The bar store of AAPL and TSLA, filled through the real IBBroker from the paper exchange (13 months back
    from February 2026, `HISTORY_FROM`); a second update asks the Broker nothing."""
    from core.bar_store import BarStore, store_root
    from core.ib_broker import IBBroker
    from core.settings import get_settings
    from tests.broker_support import START

    bs = BarStore(store_root(get_settings().state_dir))
    with IBBroker(client_id=61) as broker:
        for sym in ("AAPL", "TSLA"):
            first = bs.update(broker, sym, START, HISTORY_FROM, max_requests=25)
            assert first.complete and first.first <= HISTORY_FROM and first.requests <= 16
            again = bs.update(broker, sym, START, HISTORY_FROM, max_requests=25)
            assert (again.requests, again.added) == (0, 0)  # no new bar can have ended: the Broker is not asked
    return bs


def register_known_champions(registry: ModelRegistry, store) -> None:
    """AAPL's champion fitted on February itself (far better there than any honest challenger: it must stay) and
    TSLA's that model inverted (far worse than chance: a challenger must replace it)."""
    from core.bar_store import complete_bars
    from tests.broker_support import START

    for sym, invert in (("AAPL", False), ("TSLA", True)):
        bars = complete_bars(store.load(sym), START)
        model, scaler, weights = fitted_model(bars, FEB, MAR, invert=invert)
        meta = {"features": weights["features"].tolist(), "lookback": 24, "horizon": 4}
        registry.promote(sym, registry.register(sym, model, scaler, weights, meta, CREATED).version)
