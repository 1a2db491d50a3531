"""Walk-forward evaluation (models/walkforward.py) and the edge gate's verdict (models/gate.py).

The folds are checked on their row numbers (no training or validation label may reach a test bar); the whole
evaluation runs on synthetic hourly bars with a planted, learnable signal (it must clear the gate) and on the same
bars with shuffled training labels (a null model: it must fail).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models.gate import GateRule, edge_gate, evidence_from_metrics, evidence_metrics
from models.mtf import TrainConfig
from models.walkforward import WalkForwardConfig, block_bootstrap_auc, run_walk_forward, walk_forward_folds
from tests.mtf_support import model_templates, models  # noqa: F401


@pytest.mark.parametrize("n_rows, lookback, horizon, n_folds, embargo",
                         [(3000, 24, 4, 4, None), (800, 5, 7, 3, 0), (5000, 24, 4, 6, 12), (400, 10, 1, 2, None)])
def test_folds_never_train_on_a_bar_whose_label_horizon_reaches_the_test_bars(n_rows, lookback, horizon, n_folds,
                                                                              embargo):
    folds = walk_forward_folds(n_rows, lookback, horizon, n_folds, embargo=embargo)
    emb = horizon if embargo is None else embargo
    assert len(folds) == n_folds
    previous_test_end = None
    for f in folds:
        sp = f.split
        fitted = np.concatenate([sp.train, sp.val])
        # a sample i's label reads close[i + horizon]: none may be a test bar, nor within the embargo before it
        assert fitted.max() + horizon + emb < sp.test.min()
        assert (fitted + horizon < sp.test.min()).all()
        # the validation window is purged from the training window the same way
        assert sp.train.max() + horizon < sp.val.min()
        # every sample has a full look-back and a label
        assert fitted.min() >= lookback - 1 and sp.test.max() + horizon < n_rows
        # test blocks are contiguous and tile the end of the history, in time order
        assert (np.diff(sp.test) == 1).all()
        if previous_test_end is not None:
            assert sp.test.min() == previous_test_end + 1
            # expanding: this fold fits on more history than the previous one
            assert len(fitted) > previous_fitted
        previous_test_end, previous_fitted = sp.test.max(), len(fitted)
    assert folds[-1].split.test.max() == n_rows - horizon - 1


def test_too_few_rows_for_the_folds_is_refused():
    with pytest.raises(ValueError, match="too few"):
        walk_forward_folds(60, 24, 4, n_folds=4)


def test_block_bootstrap_interval_covers_the_auc_and_is_nan_for_one_class():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 600)
    p = np.clip(0.5 + 0.2 * (y - 0.5) + rng.normal(0, 0.2, 600), 0, 1)
    lo, hi = block_bootstrap_auc(y, p, n_boot=300, block=24)
    from sklearn.metrics import roc_auc_score

    assert lo < roc_auc_score(y, p) < hi and 0.5 < lo
    assert all(math.isnan(x) for x in block_bootstrap_auc(np.ones(50), p[:50]))


# --- the gate's verdict ---------------------------------------------------------------------------------------


def _evidence(auc_low=0.55, ret=0.05, trades=40, majority=0.0, buy_hold=0.02, logistic=0.08):
    return {"lstm": {"roc_auc_low": auc_low, "roc_auc": auc_low + 0.03, "return": ret, "trades": trades},
            "baselines": {"majority": {"return": majority}, "buy_hold": {"return": buy_hold},
                          "logistic": {"return": logistic}}, "n_folds": 4}


def test_gate_passes_only_when_every_check_passes():
    assert edge_gate(_evidence()).passed
    assert not edge_gate(None).passed and "no walk-forward evidence" in edge_gate(None).reason
    low = edge_gate(_evidence(auc_low=0.49))
    assert not low.passed and "AUC lower bound 0.490 <= 0.5" in low.reason
    assert not edge_gate(_evidence(ret=-0.01)).passed
    below_bh = edge_gate(_evidence(ret=0.01, buy_hold=0.02))
    assert not below_bh.passed and "buy_hold" in below_bh.reason
    assert not edge_gate(_evidence(trades=3)).passed
    # the logistic regression is reported; it is part of the bar only when the rule names it
    assert edge_gate(_evidence(logistic=0.5)).passed
    assert not edge_gate(_evidence(logistic=0.5), GateRule(baselines=("majority", "buy_hold", "logistic"))).passed
    # a NaN figure is no evidence
    assert not edge_gate(_evidence(auc_low=float("nan"))).passed
    with pytest.raises(ValueError, match="unknown gate baselines"):
        GateRule(baselines=("coin",))


def test_gate_reads_the_same_verdict_back_from_the_journal_form():
    ev = _evidence()
    values, baselines = evidence_metrics(ev)
    back = evidence_from_metrics({k: (v, baselines.get(k)) for k, v in values.items()})
    assert edge_gate(back).passed == edge_gate(ev).passed
    assert edge_gate(back).reason == edge_gate(ev).reason
    assert evidence_from_metrics({}) is None


# --- whole runs on synthetic bars -----------------------------------------------------------------------------


def planted_bars(sessions: int = 420, seed: int = 3) -> pd.DataFrame:
    """Hourly RTH bars (09:30 … 15:30, 7 a session, America/New_York) with a planted signal: each bar is a
    high-volume bar (3x) or not, at random, and a high-volume bar is followed by four bars that drift up 0.3 % each,
    a normal one by four that drift down as much; noise 0.25 % a bar. The label (close 4 bars ahead above the close
    now) is then mostly the volume of the bar now, which the features show (relative volume)."""
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2024-01-02", periods=sessions)
    idx = pd.DatetimeIndex([pd.Timestamp(f"{d.date()} {h:02d}:30", tz="America/New_York")
                            for d in days for h in range(9, 16)])
    n = len(idx)
    high = rng.random(n) < 0.5
    drift = np.zeros(n)
    for lag in range(1, 5):
        drift[lag:] += np.where(high[:-lag], 0.003, -0.003)
    rets = drift + rng.normal(0, 0.0025, n)
    close = 100 * np.exp(np.cumsum(rets))
    open_ = np.r_[100.0, close[:-1]]
    spread = np.abs(rng.normal(0, 0.001, n)) * close
    return pd.DataFrame({"open": open_, "high": np.maximum(open_, close) + spread,
                         "low": np.minimum(open_, close) - spread, "close": close,
                         "volume": np.where(high, 3e6, 1e6) * rng.uniform(0.9, 1.1, n)}, index=idx)


FAST = WalkForwardConfig(n_folds=2, min_train_frac=0.5, n_boot=200,
                         train=TrainConfig(lookback=8, lstm_units=(16,), epochs=6, patience=2, learning_rate=3e-3))


_runs: dict[str, object] = {}


def walk(kind: str):
    """The planted ('good') or shuffled-label ('null') walk-forward run on the planted bars, run once a session."""
    if kind not in _runs:
        cfg = FAST if kind == "good" else WalkForwardConfig(**{**FAST.__dict__, "shuffle_labels": 11})
        _runs[kind] = run_walk_forward("SYN", planted_bars(), cfg)
    return _runs[kind]


def test_a_planted_signal_clears_the_gate_and_shuffled_labels_do_not():
    good = walk("good")
    ev = good.evidence()
    assert ev["lstm"]["roc_auc_low"] > 0.6, good.pooled
    assert ev["lstm"]["return"] > 0 and ev["lstm"]["trades"] >= 10
    verdict = edge_gate(ev)
    assert verdict.passed, verdict.reason
    # the tables: one row per fold and model, and the pooled rows; the folds' windows do not overlap
    assert len(good.folds) == 2 * 4 and good.pooled["model"].tolist() == ["lstm", "logistic", "majority", "buy_hold"]
    lstm = good.folds[good.folds["model"] == "lstm"]
    assert (pd.to_datetime(lstm["train_last"], utc=True) < pd.to_datetime(lstm["test_first"], utc=True)).all()
    assert len(good.calibration) > 0 and good.calibration["n"].sum() == ev["lstm"]["n"]

    null = walk("null")
    nev = null.evidence()
    assert nev["lstm"]["roc_auc_low"] < 0.55, null.pooled
    assert not edge_gate(nev).passed


# --- the gate in mtf-signal (paper exchange, real flow runs, real journal) -------------------------------------


def _record(version_id_symbol: str, version: str, evidence: dict) -> None:
    """Record ``evidence`` as the champion's walk-forward evidence and withdraw the test fixture's allowance."""
    from datetime import datetime, timezone

    from core.journal import Journal
    from core.settings import get_settings
    from models.records import record_walk_forward
    from models.registry import ModelRegistry

    mv = ModelRegistry(get_settings().models_dir, Journal(get_settings().journal_path)).get(version_id_symbol, version)
    with Journal(get_settings().journal_path).transaction() as tx:
        tx.record_model_allowance(version_id_symbol, False, "tests", "the gate decides",
                                  datetime(2026, 2, 28, tzinfo=timezone.utc))
        record_walk_forward(tx, mv, evidence, datetime(2026, 2, 28, tzinfo=timezone.utc))


def cli(main, argv: list[str]) -> tuple[int, str]:
    """(exit code, stdout) of a `tradeflow` command run in this process."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


def _signal_rows():
    import json

    from core.journal import Journal
    from core.settings import get_settings

    rows = Journal(get_settings().journal_path).query(
        "SELECT as_of, symbol, decision, order_ref, reason, inputs FROM signals WHERE strategy = 'mtf' "
        "ORDER BY as_of, symbol").to_dict("records")
    for r in rows:
        r["inputs"] = json.loads(r["inputs"])
    return rows


def test_a_null_model_journals_decisions_and_sends_no_order_until_allowed_or_proven(
        exchange, prefect_harness, models):  # noqa: F811
    from datetime import datetime

    from core.calendar import NY
    from core.paper_exchange import AdminClient
    from deployments.cli import main
    from flows.mtf_signal import mtf_signal

    admin = AdminClient(exchange.admin_port)

    def run(hour, minute):
        as_of = datetime(2026, 3, 2, hour, minute, tzinfo=NY)
        admin.set_clock(as_of)
        return mtf_signal(as_of=as_of)

    aapl = models.champion("AAPL", 0.9)  # the rules want to buy at every run
    tsla = models.champion("TSLA", 0.1)
    _record("AAPL", aapl, walk("null").evidence())  # shuffled labels: the gate is closed
    _record("TSLA", tsla, walk("null").evidence())

    out = run(10, 5)
    by = {r["symbol"]: r for r in out["decisions"]}
    assert by["AAPL"]["decision"] == "NO_TRADE" and "edge gate closed" in by["AAPL"]["reason"]
    assert "the rules would buy" in by["AAPL"]["reason"]
    assert not out["edge_gate"]["AAPL"]["open"] and out["edge_gate"]["AAPL"]["source"] == "evidence"
    out = run(10, 10)
    assert exchange.engine.orders == {}  # nothing reached the exchange
    rows = _signal_rows()
    assert [(r["symbol"], r["decision"], r["order_ref"]) for r in rows] == [
        ("AAPL", "NO_TRADE", None), ("TSLA", "NO_TRADE", None)] * 2  # every decision journaled
    assert rows[0]["inputs"]["code"] == "edge_gate" and not rows[0]["inputs"]["edge_gate"]["open"]
    assert rows[1]["inputs"]["code"] == "below_entry"  # TSLA would not have entered anyway

    # `models list` says so, and an operator's allowance opens the gate for that symbol only
    # (stdout captured by hand: pytest's capsys closes a stream that Prefect's log handler still holds)
    assert cli(main, ["models", "list"])[0] == 0
    assert "edge gate: CLOSED (evidence)" in cli(main, ["models", "list"])[1]
    assert cli(main, ["models", "allow", "AAPL", "--reason", "paper trial of the null model", "--who", "ops"])[0] == 0
    assert "edge gate: OPEN (operator): allowed by ops" in cli(main, ["models", "list", "--symbols", "AAPL"])[1]
    out = run(10, 15)
    assert out["decisions"][0]["decision"] == "BUY"
    assert [(o.symbol, o.action) for o in exchange.engine.orders.values()] == [("AAPL", "BUY")]
    assert out["edge_gate"]["AAPL"]["source"] == "operator"


def test_a_proven_model_trades(exchange, prefect_harness, models):  # noqa: F811
    from datetime import datetime

    from core.calendar import NY
    from core.paper_exchange import AdminClient
    from flows.mtf_signal import mtf_signal

    from datetime import timezone

    from core.journal import Journal
    from core.settings import get_settings

    aapl = models.champion("AAPL", 0.9)
    models.champion("TSLA", 0.1)
    _record("AAPL", aapl, walk("good").evidence())  # the planted signal's evidence clears the bar
    with Journal(get_settings().journal_path).transaction() as tx:  # TSLA: no allowance, no evidence
        tx.record_model_allowance("TSLA", False, "tests", "the gate decides", datetime(2026, 2, 28, tzinfo=timezone.utc))
    as_of = datetime(2026, 3, 2, 10, 5, tzinfo=NY)
    AdminClient(exchange.admin_port).set_clock(as_of)
    out = mtf_signal(as_of=as_of)
    assert out["edge_gate"]["AAPL"]["open"] and out["edge_gate"]["AAPL"]["source"] == "evidence"
    assert not out["edge_gate"]["TSLA"]["open"]  # no evidence recorded for TSLA's champion
    assert out["decisions"][0]["decision"] == "BUY"
    assert [(o.symbol, o.action) for o in exchange.engine.orders.values()] == [("AAPL", "BUY")]


def test_evaluate_command_prints_the_tables_writes_them_and_records_the_evidence(state_dir, tmp_path):
    """`tradeflow evaluate mtf` on synthetic hourly bars: tables printed and written; with a champion in the
    registry the evidence lands in the journal and `models list` reports the gate."""
    from core.journal import Journal
    from core.settings import get_settings
    from deployments.cli import main
    from tests.mtf_support import register_constant
    from core.journal import Journal
    from models.registry import ModelRegistry

    data = tmp_path / "data"
    (data / "1h").mkdir(parents=True)
    bars = planted_bars(sessions=400)
    out = bars.copy()
    out.index = out.index.map(lambda t: t.isoformat())
    out.to_csv(data / "1h" / "SYN.csv", index_label="timestamp")
    registry = ModelRegistry(get_settings().models_dir, Journal(get_settings().journal_path))
    registry.promote("SYN", register_constant(registry, "SYN", 0.6))

    code, text = cli(main, ["evaluate", "mtf", "--symbols", "SYN", "--folds", "2", "--epochs", "1", "--bootstrap",
                            "50", "--data-dir", str(data), "--out", str(tmp_path / "out"),
                            "--as-of", "2026-03-01T00:00:00+00:00"])
    assert code == 0, text
    for label in ("per fold:", "pooled over the folds' test samples:", "AUC 95% CI", "logistic", "majority",
                  "buy_hold", "calibration of the LSTM", "edge gate on this evidence:", "SYN/v0001"):
        assert label in text
    for name in ("SYN_folds.csv", "SYN_pooled.csv", "SYN_calibration.csv", "SYN_walkforward.json"):
        assert (tmp_path / "out" / name).is_file()
    folds = pd.read_csv(tmp_path / "out" / "SYN_folds.csv")
    assert sorted(set(folds["fold"])) == [1, 2] and set(folds["model"]) == {"lstm", "logistic", "majority", "buy_hold"}
    rows = Journal(get_settings().journal_path).query(
        "SELECT eval_window, metric FROM model_metrics WHERE version = 'SYN/v0001' ORDER BY 1, 2")
    assert {"walkforward", "walkforward:fold1", "walkforward:fold2"} == set(rows["eval_window"])
    assert {"roc_auc_low", "sim_return", "sim_return_buy_hold"} <= set(rows[rows.eval_window == "walkforward"].metric)
    code, listed = cli(main, ["models", "list", "--symbols", "SYN"])
    assert code == 0 and "edge gate:" in listed
