"""Tests of the MTF model: splits, scaler, registry, numpy inference vs Keras, rule simulation, a tiny training run."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.bars import load_hourly_bars
from core.journal import Journal
from core.settings import PROJECT_ROOT
from models.evaluate import RuleParams, buy_and_hold, classification_metrics, commission, simulate_rules
from models.mtf import TrainConfig, chronological_split, fit_scaler, make_labels, windows
from models.registry import ModelRegistry, RegistryError
from tests.data import DATA_DIR, require_bars

AS_OF = datetime(2026, 3, 12, 21, 0, tzinfo=timezone.utc)


# ------------------------------------------------------------------------------------------------------------
# splits, labels, scaler


@pytest.mark.parametrize("n, L, H", [(1000, 24, 4), (3421, 24, 4), (500, 10, 7)])
def test_splits_are_chronological_with_a_gap_of_h(n, L, H):
    sp = chronological_split(n, L, H, 0.7, 0.15)
    for a in (sp.train, sp.val, sp.test):
        assert (np.diff(a) == 1).all()  # contiguous, ascending
    assert sp.train[0] == L - 1  # a full look-back for the first sample
    assert sp.test[-1] == n - 1 - H  # the last sample still has a label
    # exactly H sample rows left out between splits, so the last label of a split (row i + H) is before the next
    assert sp.val[0] - sp.train[-1] == H + 1 and sp.test[0] - sp.val[-1] == H + 1
    assert sp.train[-1] + H < sp.val[0] and sp.val[-1] + H < sp.test[0]
    total = len(sp.train) + len(sp.val) + len(sp.test) + 2 * H
    assert total == n - (L - 1) - H
    assert abs(len(sp.train) / total - 0.7) < 0.01


def test_split_too_small_raises():
    with pytest.raises(ValueError, match="too few"):
        chronological_split(30, 24, 4)


def test_labels_look_h_bars_ahead():
    close = np.array([10, 11, 9, 12, 12, 13], dtype=float)
    y = make_labels(close, 2)
    np.testing.assert_array_equal(y[:4], [0, 1, 1, 1])  # 9>10? 12>11 12>9 13>12
    assert np.isnan(y[4:]).all()


def test_scaler_is_fitted_on_the_training_window_only():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 45))
    sp = chronological_split(len(x), 24, 4)
    s1 = fit_scaler(x, sp)
    x2 = x.copy()
    x2[sp.train[-1] + 1 :] += 1000.0  # anything after the training window
    s2 = fit_scaler(x2, sp)
    np.testing.assert_array_equal(s1.mean_, s2.mean_)
    np.testing.assert_array_equal(s1.scale_, s2.scale_)
    np.testing.assert_allclose(s1.mean_, x[: sp.train[-1] + 1].mean(axis=0))


def test_windows_end_at_their_row():
    x = np.arange(50 * 3, dtype=float).reshape(50, 3)
    w = windows(x, np.array([4, 49]), 5)
    assert w.shape == (2, 5, 3) and w.dtype == np.float32
    np.testing.assert_array_equal(w[0], x[0:5])
    np.testing.assert_array_equal(w[1], x[45:50])


# ------------------------------------------------------------------------------------------------------------
# registry (stub models: no TensorFlow needed)


class _StubModel:
    def __init__(self, tag: str):
        self.tag = tag

    def save(self, path):
        Path(path).write_text(self.tag)


def _weights() -> dict:
    return {"layers": np.array(["dense"]), "activations": np.array(["sigmoid"]), "w0_kernel": np.zeros((45, 1)),
            "w0_bias": np.zeros(1), "scaler_mean": np.zeros(45), "scaler_scale": np.ones(45),
            "features": np.array([f"f{i}" for i in range(45)]), "lookback": np.array(1)}


def test_registry_versions_champion_promote_rollback(tmp_path):
    from sklearn.preprocessing import StandardScaler

    reg = ModelRegistry(tmp_path / "models", Journal(tmp_path / "journal.duckdb"))
    assert reg.list_versions("AAPL") == [] and reg.champion("AAPL") is None
    v1 = reg.register("AAPL", _StubModel("one"), StandardScaler(), _weights(), {"metrics": {"a": 1}}, AS_OF)
    v2 = reg.register("aapl", _StubModel("two"), StandardScaler(), _weights(), {"metrics": {"a": 2}}, AS_OF)
    v3 = reg.register("AAPL", _StubModel("three"), StandardScaler(), _weights(), {}, AS_OF)
    assert [v.version for v in reg.list_versions("AAPL")] == ["v0001", "v0002", "v0003"]
    assert (v2.path / "model.keras").read_text() == "two"
    assert {p.name for p in v1.path.iterdir()} == {"model.keras", "scaler.joblib", "weights.npz", "metadata.json"}
    meta = json.loads((v1.path / "metadata.json").read_text())
    assert meta["version"] == "v0001" and meta["symbol"] == "AAPL" and meta["created_at"] == AS_OF.isoformat()
    assert reg.champion("AAPL") is None  # registering does not promote

    reg.promote("AAPL", "v0001")
    assert reg.champion("AAPL").version == "v0001"
    reg.promote("AAPL", "v0003")
    reg.promote("AAPL", "v0002")
    assert reg.champion("AAPL").version == "v0002"
    assert reg.rollback("AAPL").version == "v0003"
    assert reg.rollback("AAPL").version == "v0001"
    assert reg.champion("AAPL").version == "v0001"
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback("AAPL")
    with pytest.raises(RegistryError, match="no version"):
        reg.promote("AAPL", "v0042")
    assert reg.champion("TSLA") is None  # per symbol
    assert not list((tmp_path / "models").glob("**/.*"))  # no temporary leftovers
    with pytest.raises(ValueError, match="timezone-aware"):
        reg.register("AAPL", _StubModel("x"), StandardScaler(), _weights(), {}, datetime(2026, 1, 1))
    assert reg.load_predictor("AAPL").lookback == 1
    assert reg.symbols() == ["AAPL"]


def test_registry_without_champion_cannot_give_a_predictor(tmp_path):
    with pytest.raises(RegistryError, match="no champion"):
        ModelRegistry(tmp_path / "models", Journal(tmp_path / "journal.duckdb")).load_predictor("TSLA")


# ------------------------------------------------------------------------------------------------------------
# evaluation and the decision rules


def test_classification_metrics_and_majority_baseline():
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.4])
    m = classification_metrics(y, p, y_train=np.array([1, 1, 1, 0]))
    assert m["model"]["accuracy"] == pytest.approx(3 / 5)
    assert m["model"]["precision"] == pytest.approx(2 / 3) and m["model"]["recall"] == pytest.approx(2 / 3)
    assert m["baseline"]["accuracy"] == pytest.approx(3 / 5) and m["baseline"]["majority_class"] == 1
    assert m["baseline"]["roc_auc"] == 0.5


NO_SLIP = RuleParams(slippage=0.0)
"""The rules without slippage: these tests check prices and sizes exactly."""


def _hours(n: int, start="2025-03-03 09:30") -> pd.DatetimeIndex:
    idx = pd.date_range(start, periods=n, freq="h", tz="America/New_York")
    return idx


def test_rules_max_hold_is_two_bars_and_threshold_exit_after_one():
    idx = _hours(7)
    close = np.full(7, 100.0)
    sim, trades = simulate_rules(idx, close, np.full(7, 0.6), NO_SLIP)  # always confident: exits on max hold (24 runs)
    assert [(t["entry_time"], t["exit_time"], t["reason"]) for t in trades[:2]] == [
        (idx[0], idx[2], "max hold"), (idx[3], idx[5], "max hold")]
    assert trades[0]["shares"] == 100
    p = np.array([0.55, 0.45, 0.53, 0.51, 0.49, 0.3, 0.3])
    sim, trades = simulate_rules(idx, close, p, NO_SLIP)
    # entry at 0 (>= 0.52), exit at 1 (12 runs >= 2 and P < 0.5); no re-entry on the exit bar; entry at 2
    # (0.53); 0.51 holds; exit at 4 (0.49)
    assert [(t["entry_time"], t["exit_time"]) for t in trades] == [(idx[0], idx[1]), (idx[2], idx[4])]
    assert sim.trades == 2 and sim.win_rate == 0.0  # flat prices: commissions only
    assert sim.pnl_usd == pytest.approx(-4 * commission(100, 100.0, RuleParams()))


def test_rules_pnl_sharpe_and_buy_and_hold():
    idx = _hours(21)  # 3 "sessions" of 7 bars on consecutive days is not needed: one long synthetic day
    close = np.linspace(100, 110, 21)
    sim, trades = simulate_rules(idx, close, np.full(21, 0.9), NO_SLIP)
    assert sim.trades == 7 and sim.win_rate == 1.0
    gross = sum(t["shares"] * (t["exit"] - t["entry"]) for t in trades)
    assert sim.pnl_usd == pytest.approx(gross - 14 * 1.0)
    bh = buy_and_hold(idx, close, NO_SLIP)
    assert bh.total_return == pytest.approx((100 * 10 - 2.0) / 10_000)


def test_daily_loss_limit_blocks_new_entries_that_day():
    idx = _hours(6)
    close = np.array([100.0, 70.0, 70.0, 70.0, 70.0, 70.0])  # -3,000 USD on the first trade
    p = np.array([0.9, 0.1, 0.9, 0.9, 0.9, 0.9])
    sim, trades = simulate_rules(idx, close, p, NO_SLIP)
    assert len(trades) == 1 and sim.pnl_usd < -2000
    idx2 = idx[:3].append(_hours(3, "2025-03-04 09:30"))  # the next day entries are allowed again
    sim2, trades2 = simulate_rules(idx2, close, p, NO_SLIP)
    assert len(trades2) == 2 and trades2[1]["entry_time"] == idx2[3]


# ------------------------------------------------------------------------------------------------------------
# inference module: no TensorFlow


def test_importing_inference_does_not_import_tensorflow(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "import models.inference, models.registry\n"
        "from models.inference import NumpyLSTMModel\n"
        "assert not any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules), 'TF imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_numpy_lstm_equals_keras_for_stacked_layers():
    """Two LSTM layers (return_sequences) + Dense, random weights: the numpy forward pass equals Keras."""
    import keras

    from models.inference import NumpyLSTMModel
    from models.mtf import build_model, export_weights

    keras.utils.set_random_seed(3)
    model = build_model(12, 45, TrainConfig(lookback=12, lstm_units=(16, 8)))
    x = np.random.default_rng(1).normal(size=(64, 12, 45)).astype(np.float32)

    class Identity:
        mean_ = np.zeros(45)
        scale_ = np.ones(45)

    np_model = NumpyLSTMModel(export_weights(model, Identity(), 12))
    ref = model.predict(x, verbose=0).reshape(-1)
    np.testing.assert_allclose(np_model.predict_windows(x), ref, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# a tiny training run on real bars (and numpy P(up) == Keras P(up) on real sequences)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    require_bars("1h/TSLA.csv")
    from models.pipeline import train_and_register

    bars = load_hourly_bars(DATA_DIR, "TSLA").iloc[-2600:]  # about 1,450 feature rows after the warm-up
    work = tmp_path_factory.mktemp("registry")
    reg = ModelRegistry(work / "models", Journal(work / "journal.duckdb"))
    cfg = TrainConfig(lookback=24, horizon=4, lstm_units=(16,), epochs=2, patience=1)
    seen = []
    out = train_and_register("TSLA", bars, reg, AS_OF, cfg, progress=lambda *a: seen.append(a))
    return reg, out, bars, seen


@pytest.mark.needs_data
def test_tiny_training_run_registers_a_champion(tiny_run):
    reg, out, bars, seen = tiny_run
    assert out.became_champion and reg.champion("TSLA").version == out.version.version == "v0001"
    assert len(seen) == out.result.epochs_run >= 1
    meta = out.version.metadata
    assert meta["features"] == list(__import__("core.features", fromlist=["FEATURES"]).FEATURES)
    assert meta["lookback"] == 24 and meta["horizon"] == 4 and meta["splits"]["gap_bars"] == 4
    from models.mtf import bars_fingerprint

    assert meta["data"]["fingerprint_sha256"] == bars_fingerprint(bars)
    assert meta["data"]["bars_first"] == bars.index[0].isoformat()
    for key in ("accuracy", "precision", "recall", "roc_auc", "log_loss"):
        assert 0 <= meta["metrics"]["test"]["model"][key] < 10
        assert key in meta["metrics"]["test"]["baseline"]
    for key in ("total_return", "win_rate", "trades", "sharpe"):
        assert key in meta["metrics"]["rules_test"] and key in meta["metrics"]["buy_hold_test"]
    assert meta["splits"]["train"]["last"] < meta["splits"]["val"]["first"] < meta["splits"]["test"]["first"]


@pytest.mark.needs_data
def test_numpy_inference_equals_keras_on_real_sequences(tiny_run):
    reg, out, _bars, _ = tiny_run
    res = out.result
    mv = reg.champion("TSLA")
    keras_model = reg.load_keras_model(mv)
    scaler = reg.load_scaler(mv)
    rows = np.r_[res.split.val, res.split.test]
    x_scaled = windows(scaler.transform(res.dataset.features), rows, 24)
    ref = keras_model.predict(x_scaled, verbose=0).reshape(-1)
    np.testing.assert_allclose(ref[len(res.split.val):], res.p_test, atol=1e-6)  # the saved model is the trained one
    predictor = reg.load_predictor("TSLA")
    raw = np.stack([res.dataset.features[i - 23 : i + 1] for i in rows])
    np_p = predictor.predict_windows(raw)
    assert np.max(np.abs(np_p - ref)) <= 1e-5
    # and from a feature frame, the way a signal run would call it
    from core.features import compute_features

    feats = compute_features(_bars)
    last = float(keras_model.predict(windows(scaler.transform(feats.to_numpy()), np.array([len(feats) - 1]), 24),
                                     verbose=0)[0, 0])
    assert abs(predictor.predict_latest(feats) - last) <= 1e-5


def test_rules_simulation_pays_slippage_by_default():
    """The test-window simulation uses the backtest's costs: 5 bp of slippage per fill on top of commissions."""
    idx = _hours(3)
    close = np.full(3, 100.0)
    r = RuleParams()
    assert r.slippage == 0.0005
    sim, trades = simulate_rules(idx, close, np.full(3, 0.6))
    q = trades[0]["shares"]
    assert q == int(10_000 // (100.0 * 1.0005)) and trades[0]["entry"] == pytest.approx(100.05)
    assert trades[0]["exit"] == pytest.approx(99.95)
    assert sim.pnl_usd == pytest.approx(q * (99.95 - 100.05) - commission(q, 100.05, r) - commission(q, 99.95, r))
