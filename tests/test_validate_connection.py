"""`tradeflow validate-connection` against a running `tradeflow paper-exchange`, and against nothing."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from tests.broker_support import require_data
except ImportError:
    from broker_support import require_data

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_validate(port: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "IBKR_HOST": "127.0.0.1", "IBKR_PORT": str(port), "IBKR_CLIENT_ID": "7",
           "TRADING_MODE": "paper"}
    return subprocess.run([sys.executable, "-m", "deployments.cli", "validate-connection", "--timeout", "5",
                           "--attempts", "1", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def paper_exchange_process(tmp_path):
    """`tradeflow paper-exchange` as a separate process on free ports; yields (port, admin_port)."""
    data = require_data()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployments.cli", "paper-exchange", "--port", "0", "--admin-port", "0",
         "--data-dir", str(data), "--start", "2026-03-02T10:00:00-05:00", "--state-file",
         str(tmp_path / "px.json")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ports = None
    deadline = time.monotonic() + 60
    lines = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"TWS API on 127\.0\.0\.1:(\d+), admin on 127\.0\.0\.1:(\d+)", line)
        if m:
            ports = int(m.group(1)), int(m.group(2))
            break
    try:
        assert ports, "paper-exchange did not announce its ports:\n" + "".join(lines)
        yield ports
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert (tmp_path / "px.json").exists()  # the state file is kept


@pytest.mark.needs_data
def test_validate_connection_passes_against_a_running_paper_exchange(paper_exchange_process):
    port, _ = paper_exchange_process
    r = run_validate(port, "--order-test")
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("connection", "market data", "historical data", "account data", "positions", "order test",
                 "what-if"):
        assert re.search(rf"^PASS  {name}\s+\d+\.\d\d s ", r.stdout, re.M), r.stdout
    assert "7 passed, 0 failed" in r.stdout
    assert re.search(r"\(3x NetLiquidation\) fits: initial margin after [\d,.]+ USD", r.stdout), r.stdout


def test_validate_connection_fails_clearly_when_nothing_listens():
    r = run_validate(free_port())
    assert r.returncode == 1
    assert re.search(r"^FAIL  connection\s+\d+\.\d\d s ", r.stdout, re.M), r.stdout
    for hint in ("TWS or IB Gateway", "API is enabled", "port", "client id"):
        assert hint in r.stdout
    assert "0 passed, 5 failed" in r.stdout
