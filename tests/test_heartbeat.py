"""The dead-man's switch: every run that ends pings TRADEFLOW_HEARTBEAT_URL, a failed one at URL/fail (as
healthchecks takes it), at a local HTTP receiver; the runs are the test probes on the real flow runtime."""

from __future__ import annotations

import pytest

from core.heartbeat import ping, ping_url
from deployments.processes import free_port
from tests.alert_support import Receiver


def test_the_failure_url_is_the_path_plus_fail_and_keeps_the_query():
    assert ping_url("https://hc-ping.com/abc", failed=False) == "https://hc-ping.com/abc"
    assert ping_url("https://hc-ping.com/abc/", failed=True) == "https://hc-ping.com/abc/fail"
    assert ping_url("http://kuma:3001/api/push/tok?status=up", failed=True) == \
        "http://kuma:3001/api/push/tok/fail?status=up"
    with pytest.raises(ValueError, match="scheme 'ftp'"):
        ping_url("ftp://x/secret-token", failed=False)


def test_a_ping_that_cannot_be_delivered_is_logged_without_the_url(caplog):
    url = f"http://127.0.0.1:{free_port()}/secret-token-123"
    assert ping(url, failed=True, timeout=2) is False
    assert "heartbeat ping (fail) failed" in caplog.text and "secret-token-123" not in caplog.text


@pytest.mark.prefect_server
def test_completed_and_failed_runs_ping_the_heartbeat(prefect_harness, state_dir, monkeypatch, capfd, caplog):
    from tests.deploy_flows import alert_probe, late_probe

    receiver = Receiver()
    try:
        monkeypatch.setenv("TRADEFLOW_HEARTBEAT_URL", f"{receiver.base}/ping/check-uuid")
        monkeypatch.setenv("IBKR_HOST", "127.0.0.1")
        monkeypatch.setenv("IBKR_PORT", str(free_port()))  # nothing listens: the probe fails
        skipped = late_probe(return_state=True)
        assert receiver.pings == ["/ping/check-uuid"]
        # a skip reads as a skip: a Completed state named SkippedLate, its reason logged, no engine traceback
        assert skipped.is_completed() and skipped.name == "SkippedLate"
        logs = "".join(capfd.readouterr()) + caplog.text  # Prefect's console handler, or pytest's capture
        assert "skipped, nothing done: started 12.0 minutes" in logs
        assert "Engine execution exited" not in logs and "CancelledRun" not in logs
        state = alert_probe(as_of="2026-03-02T15:55:00-05:00", return_state=True)
        assert state.is_failed()
        assert receiver.pings == ["/ping/check-uuid", "/ping/check-uuid/fail"]
    finally:
        receiver.close()
