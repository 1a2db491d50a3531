"""The benchmarks (bench/) still run: tiny configurations through bench.run_all, checking the JSON they write.

No timing is asserted: the figures of a tiny run mean nothing; the point is that the code and its result shape
do not rot between benchmark runs.
"""

from __future__ import annotations

import json
import sys

import pytest

from bench import run_all
from bench.common import RESULT_KEYS, Target, make_result, percentile
from bench.training import run_child
from tests.data import require_bars


def _check_shape(path, name):
    res = json.loads(path.read_text())
    assert res["error"] is None, res["error"]
    assert set(RESULT_KEYS) <= set(res) and res["name"] == name
    assert res["figures"] and all(isinstance(v, (int, float)) for v in res["figures"].values())
    assert set(res["meets_target"]) == set(res["targets"]) and all(t in res["figures"] for t in res["targets"])
    assert res["run"]["machine"]["cpus"] >= 1 and res["run"]["wall_s"] > 0
    return res


def test_run_all_lists_the_benchmarks():
    assert {"backtest", "features_scale", "journal_scale", "training"} <= set(run_all.available())
    assert run_all.main(["no_such_benchmark"]) == 2


@pytest.mark.needs_data
def test_features_and_backtest_tiny(tmp_path):
    require_bars("1h/AAPL.csv", "1h/TSLA.csv", "daily/SMH.csv", "daily/VIX.csv")
    run_all.run_one("features_scale", {"sizes": (2, 4), "repeats": 1, "bars_per_symbol": 700}, tmp_path)
    feats = _check_shape(tmp_path / "features_scale.json", "features_scale")
    assert feats["figures"]["symbols"] == 4 and feats["config"]["bars_per_symbol"] == 700
    run_all.run_one("backtest", {"repeats": 1}, tmp_path)
    bt = _check_shape(tmp_path / "backtest.json", "backtest")
    assert bt["figures"]["sessions"] > 3000  # the whole daily history, not a slice
    assert "backtest" in run_all.table([bt]) and "simulation_s" in run_all.table([bt])


def test_journal_tiny(tmp_path):
    options = {"signals": 3000, "executions": 400, "view_repeats": 2, "writes": 2, "workers": 2,
               "writes_per_worker": 2}
    run_all.run_one("journal_scale", options, tmp_path)
    res = _check_shape(tmp_path / "journal_scale.json", "journal_scale")
    f = res["figures"]
    assert (f["signals_rows"], f["executions_rows"], f["orders_rows"]) == (3000, 400, 400)
    assert f["v_round_trips_rows"] > 100 and f["v_daily_pnl_rows"] > 10
    assert f["empty_2proc_tx_per_s"] > 0 and f["big_2proc_tx_per_s"] > 0


def test_a_failing_benchmark_is_recorded_not_raised(tmp_path):
    res = run_all.run_one("backtest", {"no_such_option": 1}, tmp_path)
    assert "no_such_option" in res["error"]
    assert json.loads((tmp_path / "backtest.json").read_text())["error"] == res["error"]


def test_child_process_figures():
    code, out, wall, peak_mb, cpu_s = run_child(
        [sys.executable, "-c", "b = bytearray(64 * 2**20); print('done'); raise SystemExit(3)"], {}, None, 60)
    assert (code, out.strip()) == (3, "done") and wall > 0 and cpu_s > 0
    assert peak_mb > 64  # the child's own peak, which held 64 MiB


def test_targets_and_percentiles():
    assert Target("<=", 1.0).met_by(1.0) and not Target("<=", 1.0).met_by(float("nan"))
    assert Target(">=", 5).met_by(6) and not Target(">=", 5).met_by(4)
    assert percentile([1, 2, 3, 4, 5], 50) == 3 and percentile([1, 2], 95) == pytest.approx(1.95)
    with pytest.raises(KeyError, match="unmeasured"):
        make_result("x", "", {"a": 1.0}, {"b": Target("<=", 1)}, {})


@pytest.mark.needs_data
def test_schedule_to_action_tiny(tmp_path):
    """A real prefect server, the served deployments (the real flows through their timed entrypoints), one
    measured ema-entry run: the served path works end to end (it once crashed every run at the flow's import);
    then one through a real process worker (short query and prefetch, to keep it cheap; Prefect's defaults' arm
    skipped: it only adds waiting)."""
    require_bars("5m/SMH.csv", "daily/SMH.csv", "daily/VIX.csv")
    run_all.run_one("schedule_to_action", {"runs": 1, "cold_runs": 0, "mtf_runs": 0, "prefetch_seconds": 3.0,
                                           "worker_runs": 1, "worker_query_seconds": 1.0,
                                           "worker_prefetch_seconds": 3.0, "default_worker_runs": 0,
                                           "run_timeout": 300.0}, tmp_path)  # no timing: a loaded machine is slow
    res = _check_shape(tmp_path / "schedule_to_action.json", "schedule_to_action")
    f = res["figures"]
    for prefix in ("ema_entry", "worker_ema_entry"):
        assert f[f"{prefix}_runs"] == 1 and f[f"{prefix}_process_to_action_p50_s"] > 0
        assert sum(f[f"{prefix}_{k}_share"] for k in ("pickup", "python_prefect", "flow_imports", "engine", "broker",
                                                      "decision", "journal", "other")) == pytest.approx(1.0, abs=1e-3)
    assert "worker_defaults_ema_entry_runs" not in f and res["config"]["worker_prefetch_seconds"] == 3.0


@pytest.mark.needs_data
def test_mtf_signal_scale_tiny(tmp_path):
    require_bars("1h/AAPL.csv", "1h/TSLA.csv", "5m/AAPL.csv", "5m/TSLA.csv")
    run_all.run_one("mtf_signal_scale", {"sizes": (2, 3)}, tmp_path)
    res = _check_shape(tmp_path / "mtf_signal_scale.json", "mtf_signal_scale")
    f = res["figures"]
    assert (f["s2_decisions"], f["s3_decisions"]) == (2, 3)
    assert f["s3_historical_requests"] == 3  # steady state: one request a symbol
    assert f["cold_requests_per_symbol"] > 1


@pytest.mark.needs_data
@pytest.mark.timeout(1800)
def test_retrain_fanout_tiny(tmp_path):
    """Two symbols, one epoch, on one and then two Dask worker hosts (network namespaces: root only)."""
    from tests.hosts_support import hosts_available

    require_bars("1h/AAPL.csv", "1h/TSLA.csv")
    if hosts_available():
        pytest.skip(hosts_available())
    run_all.run_one("retrain_fanout", {"symbols": 2, "epochs": 1, "lstm_units": (4,), "wf_epochs": 1}, tmp_path)
    f = _check_shape(tmp_path / "retrain_fanout.json", "retrain_fanout")["figures"]
    assert f["one_host_tasks_a"] == 2 and f["two_hosts_tasks_a"] + f["two_hosts_tasks_b"] == 2
    assert f["speedup"] == pytest.approx(f["one_host_s"] / f["two_hosts_s"], rel=1e-3)
