"""`retrain` with its per-symbol work on a real Dask cluster (TRADEFLOW_DASK_SCHEDULER, Prefect's DaskTaskRunner):
a scheduler and one worker started as their own processes on 127.0.0.1 (`deployments.processes`'s argv builders),
the same bar store and champions as tests/test_retrain.py, and the same decisions as the in-process run.
"""

from __future__ import annotations

import shutil

import pytest

from core.journal import Journal
from core.settings import Settings, get_settings
from deployments.processes import (Child, dask_scheduler_argv, dask_tasks_executed, dask_worker_argv, free_port,
                                   port_open, stop_all, wait_for, wait_for_dask_workers)
from models.registry import ModelRegistry
from tests.broker_support import START
from tests.mtf_support import event_loop_for_ib, register_known_champions, retrain_store  # noqa: F401

SMALL = {"history_months": 13, "epochs": 1, "lstm_units": [8], "wf_folds": 2, "wf_epochs": 1}
"""As small as the decisions allow: the champions are of known quality (tests/mtf_support.register_known_champions)."""


def test_dask_scheduler_setting_is_an_address_to_reach():
    assert Settings(dask_scheduler=None).dask_scheduler is None
    assert Settings(dask_scheduler="").dask_scheduler is None
    assert Settings(dask_scheduler=" tcp://10.0.0.5:8786 ").dask_scheduler == "tcp://10.0.0.5:8786"
    for bad, why in (("10.0.0.5:8786", "not tcp://HOST:PORT"), ("tcp://10.0.0.5", "not tcp://HOST:PORT"),
                     ("tcp://host:99999", "not tcp://HOST:PORT"), ("tcp://0.0.0.0:8786", "wildcard")):
        with pytest.raises(ValueError, match=why):
            Settings(dask_scheduler=bad)


def test_cluster_commands_bind_one_address():
    argv = dask_scheduler_argv("10.231.4.2", 8786)
    assert argv[1:3] == ["-m", "distributed.cli.dask_scheduler"] and ["--host", "10.231.4.2"] == argv[3:5]
    assert "--no-dashboard" in argv and argv[argv.index("--port") + 1] == "8786"
    assert argv[argv.index("--dashboard-address") + 1] == "10.231.4.2:0"  # its HTTP routes: not on 0.0.0.0
    worker = dask_worker_argv("tcp://10.231.4.2:8786", 1, "10.231.4.3")
    assert worker[3] == "tcp://10.231.4.2:8786" and worker[worker.index("--host") + 1] == "10.231.4.3"
    assert worker[worker.index("--nthreads") + 1] == "1" and "--no-dashboard" in worker
    assert worker[worker.index("--dashboard-address") + 1] == "10.231.4.3:0"
    for host in ("0.0.0.0", "", "::"):
        with pytest.raises(ValueError, match="never every interface"):
            dask_scheduler_argv(host, 8786)
        with pytest.raises(ValueError, match="never every interface"):
            dask_worker_argv("tcp://10.231.4.2:8786", 1, host)


@pytest.fixture
def dask_cluster(tmp_path, prefect_harness):
    """A Dask scheduler and one single-threaded worker, each its own process on 127.0.0.1; yields the address."""
    import os

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ)
    scheduler = Child("dask scheduler", dask_scheduler_argv("127.0.0.1", port), tmp_path / "dask-scheduler.log",
                      env=env).start()
    children = [scheduler]
    try:
        wait_for(lambda: port_open("127.0.0.1", port) or not scheduler.alive(), 60, "the Dask scheduler")
        assert scheduler.alive(), scheduler.log_tail()
        children.append(Child("dask worker", dask_worker_argv(address, 1, "127.0.0.1", "worker-1"),
                              tmp_path / "dask-worker.log", env=env).start())
        wait_for_dask_workers(address, 1, timeout=120)
        assert _listening(children) and all(a.startswith("127.0.0.1:") for a in _listening(children))
        yield address
    finally:
        stop_all(children)


def _listening(children: list[Child]) -> list[str]:
    """Every address the children and their descendants (a worker under its nanny) listen on."""
    import psutil

    procs = [psutil.Process(c.pid) for c in children]
    procs += [d for p in list(procs) for d in p.children(recursive=True)]
    return [f"{c.laddr.ip}:{c.laddr.port}" for p in procs for c in p.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN]


def _decisions(out: dict) -> list[tuple]:
    return [(r["symbol"], r["challenger"], r["champion"], r["promoted"], r["reason"].split(":")[0],
             r["edge_gate"]["passed"]) for r in out["results"]]


@pytest.mark.timeout(1800)  # two retrains and the worker's TensorFlow import: minutes, many more on a loaded machine
def test_retrain_on_a_dask_cluster_decides_as_in_process(exchange, prefect_harness, retrain_store, dask_cluster,
                                                         state_dir, tmp_path, monkeypatch):  # noqa: F811
    from flows.retrain import retrain

    # the champion comparison is what is compared (as tests/test_retrain.py): a bar every challenger clears
    for name, value in (("MIN_AUC_LOW", "0"), ("MIN_RETURN", "-1"), ("BASELINES", "[]"), ("MIN_TRADES", "0")):
        monkeypatch.setenv(f"TRADEFLOW_MTF_GATE_{name}", value)
    get_settings.cache_clear()
    register_known_champions(ModelRegistry(get_settings().models_dir, Journal(get_settings().journal_path)),
                             retrain_store)
    local_state = tmp_path / "state-in-process"
    # the same start, for the in-process run: the bar store, and the same champions in its own journal (the
    # registry lives in the journal; a copied models folder is only a cache)
    shutil.copytree(state_dir, local_state, ignore=shutil.ignore_patterns("journal.duckdb*", "models"))

    monkeypatch.setenv("TRADEFLOW_DASK_SCHEDULER", dask_cluster)
    get_settings.cache_clear()
    on_dask = retrain(as_of=START, **SMALL)
    assert dask_tasks_executed(dask_cluster) == {"worker-1": 2}  # both symbols trained on the worker

    monkeypatch.delenv("TRADEFLOW_DASK_SCHEDULER")
    monkeypatch.setenv("TRADEFLOW_STATE_DIR", str(local_state))
    get_settings.cache_clear()
    register_known_champions(ModelRegistry(get_settings().models_dir, Journal(get_settings().journal_path)),
                             retrain_store)
    in_process = retrain(as_of=START, **SMALL)
    assert dask_tasks_executed(dask_cluster) == {"worker-1": 2}  # nothing more went to the cluster

    assert _decisions(on_dask) == _decisions(in_process) == [
        ("AAPL", "v0002", "v0001", False, "champion stays", True),
        ("TSLA", "v0002", "v0001", True, "challenger better", True)]
    registry = ModelRegistry(state_dir / "models", Journal(state_dir / "journal.duckdb"))
    assert registry.champion("AAPL").version == "v0001" and registry.champion("TSLA").version == "v0002"
    journal = Journal(state_dir / "journal.duckdb")  # written by the flow's process, not by the worker
    assert journal.query("SELECT version, status FROM models ORDER BY version").values.tolist() == [
        ["AAPL/v0001", "champion"], ["AAPL/v0002", "challenger"], ["TSLA/v0001", "retired"],
        ["TSLA/v0002", "champion"]]
    own = journal.query("SELECT DISTINCT eval_window FROM model_metrics WHERE version = 'AAPL/v0002' ORDER BY 1")
    assert own["eval_window"].tolist() == ["oos:2026-02", "test", "val", "walkforward", "walkforward:fold1",
                                           "walkforward:fold2"]
    done = journal.query("SELECT details FROM flow_events WHERE deployment = 'retrain' AND event = 'completed'")
    assert len(done) == 1
