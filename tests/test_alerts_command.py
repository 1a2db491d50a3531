"""`./run alerts test` sends one notification through TRADEFLOW_ALERT_URL to a local receiver and says which
kind of target it went to, never printing the URL (a secret), also when delivery fails. The secret lives in a
secret field of the block (what the Blocks page shows has no URL)."""

from __future__ import annotations

import os
import subprocess

from core.settings import PROJECT_ROOT
from deployments.processes import free_port, wait_for
from tests.alert_support import Receiver


def _alerts_test(url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRADEFLOW_ALERT_URL": url}
    return subprocess.run([str(PROJECT_ROOT / "run"), "alerts", "test"], capture_output=True, text=True, env=env,
                          cwd=PROJECT_ROOT, timeout=300)


def test_alerts_test_delivers_one_message_through_apprise_and_a_webhook_without_printing_the_url():
    receiver = Receiver()
    try:
        port = receiver.server.server_address[1]
        done = _alerts_test(f"json://127.0.0.1:{port}/secret-path-apprise")
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: len(receiver.bodies) == 1, 30, "the Apprise test message")
        assert "Apprise (json)" in done.stdout and "tradeflow: alert test" in receiver.texts()[0]
        done = _alerts_test(f"{receiver.base}/secret-path-webhook")
        assert done.returncode == 0 and "webhook (http)" in done.stdout, done.stdout + done.stderr
        wait_for(lambda: len(receiver.bodies) == 2, 30, "the webhook test message")
        for out in (done.stdout, done.stderr):
            assert "secret-path" not in out and str(port) not in out
    finally:
        receiver.close()
    failed = _alerts_test(f"http://127.0.0.1:{free_port()}/secret-path-dead")
    assert failed.returncode == 1 and "delivery to the webhook (http) target failed" in failed.stdout
    assert "secret-path" not in failed.stdout + failed.stderr


def test_the_webhook_block_keeps_its_url_in_a_secret_field():
    from deployments.alerts import notification_block

    block = notification_block("https://hooks.example.com/services/T000/SECRET")
    shown = block.model_dump(mode="json")  # what the API and the Blocks page get: secrets masked
    assert "SECRET" not in str(shown) and block.url == "{{url}}"
    assert block.secrets.get_secret_value()["url"].endswith("/SECRET")
