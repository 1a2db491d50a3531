"""Stand-ins for the seven flows, for replay tests (entrypoints `tests/replay_flows.py:<name>`): each is a real
Prefect flow using the real runtime and broker; it journals the broker's clock beside its as_of and publishes
an artifact, so a test can see that the replay moved the exchange's clock to every event."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from tasks.runtime import flow_run


def _probe(deployment: str):
    @flow(name=deployment)
    def probe(as_of: datetime | None = None) -> dict:
        with flow_run(deployment, as_of) as run:
            with run.broker() as broker:
                clock = broker.current_time()
            run.details = {"broker_clock": clock.isoformat()}
            run.outcome = "probe"
            run.publish(f"### {deployment} probe\n\nas_of {run.as_of.isoformat()}, broker clock {clock.isoformat()}\n")
            return run.details

    probe.__name__ = deployment.replace("-", "_")
    return probe


preflight = _probe("preflight")
equity_snapshot = _probe("equity-snapshot")
mtf_signal = _probe("mtf-signal")
ema_entry = _probe("ema-entry")
ema_update = _probe("ema-update")
reconciliation = _probe("reconciliation")
retrain = _probe("retrain")

ENTRYPOINTS = {name: f"tests/replay_flows.py:{name.replace('-', '_')}"
               for name in ("preflight", "equity-snapshot", "mtf-signal", "ema-entry", "ema-update", "reconciliation", "retrain")}
