"""Tiny flows that tests deploy and run through a real process worker (entrypoints `tests/deploy_flows.py:...`).
They use the real flow runtime (`tasks.runtime.flow_run`), so they journal and fail the way the real flows do."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from tasks.runtime import flow_run


@flow(name="alert-probe")
def alert_probe(as_of: datetime | None = None) -> dict:
    """Connects to the broker the settings name (IBKR_HOST:IBKR_PORT); fails when nothing listens there."""
    with flow_run("alert-probe", as_of) as run:
        with run.broker() as broker:
            return {"connected": broker.account}


@flow(name="late-probe")
def late_probe(as_of: datetime | None = None):
    """Ends as the Completed state named SkippedLate, as an order flow started too late does."""
    with flow_run("late-probe", as_of) as run:
        return run.skip("started 12.0 minutes after its scheduled time (test)")


@flow(name="stuck-probe")
def stuck_probe(release: str) -> str:
    """Runs until the file `release` exists (at most 5 minutes): a stuck run, for concurrency tests."""
    import time
    from pathlib import Path

    deadline = time.monotonic() + 300
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # polling the test's condition
    return "released"


@flow(name="mtf-signal")
def mtf_signal_probe(as_of: datetime | None = None):
    """Stands in for mtf-signal in the late-run alert test: a run started after its time skips, as the real one."""
    with flow_run("mtf-signal", as_of) as run:
        return run.skip("started after its scheduled time (probe)")


@flow(name="ema-entry")
def ema_entry_probe(as_of: datetime | None = None):
    """Stands in for ema-entry in the late-run alert test (see mtf_signal_probe)."""
    with flow_run("ema-entry", as_of) as run:
        return run.skip("started after its scheduled time (probe)")
