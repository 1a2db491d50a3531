"""Each deployment's timeout and retries, in one table (the flows' `@flow(..., **run_policy(name))`).

- Every flow has a timeout, so a hung run cannot hold its deployment's one slot (concurrency limit 1) for hours:
  Prefect fails it as *TimedOut* (a Failed state; the failure alert fires). Each is well above the run's normal
  length: mtf-signal below its 5-minute cadence, ema-update above TRADEFLOW_EMA_CLOSE_MAX_WAIT_SECONDS (1800 s
  by default) that it may wait for the day's final bar.
- The flows that are safe to rerun (idempotent on the journal's natural keys, sending no order) retry: a TWS /
  IB Gateway restart or a journal held by another process usually passes within minutes. Prefect shows each
  attempt (AwaitingRetry, then Running again) in the UI; the failure alert fires only when the last attempt
  fails. Prefect 3.8 flows have no retry condition: a failure of the check itself (a position break, a red
  preflight item) is retried too, harmlessly, and alerts after the last attempt.
- The order flows (equity-snapshot arms a stop, mtf-signal and ema-entry trade) never retry: a rerun minutes
  later is a late run, and the late guard decides that (`FlowRun.refuse_if_late`).
"""

from __future__ import annotations

from typing import Any

POLICIES: dict[str, dict[str, Any]] = {
    "preflight": {"timeout_seconds": 600, "retries": 2, "retry_delay_seconds": 60},
    "equity-snapshot": {"timeout_seconds": 600, "retries": 0},
    "mtf-signal": {"timeout_seconds": 240, "retries": 0},
    "ema-entry": {"timeout_seconds": 600, "retries": 0},
    "ema-update": {"timeout_seconds": 3600, "retries": 1, "retry_delay_seconds": 120},
    "reconciliation": {"timeout_seconds": 1800, "retries": 2, "retry_delay_seconds": 120},
    "retrain": {"timeout_seconds": 7200, "retries": 1, "retry_delay_seconds": 300},
}


def run_policy(deployment: str) -> dict[str, Any]:
    """The `@flow` keyword arguments (timeout_seconds, retries, retry_delay_seconds) of `deployment`.

    Raises:
        KeyError: a deployment with no policy (every deployment must have one).
    """
    return dict(POLICIES[deployment])
