"""`tradeflow up` as a user runs it: a fresh state directory, no TWS; it starts the Prefect server (SQLite in the
state directory), the paper exchange, the deployments and the worker, prints where the UI is, and on SIGINT
stops every process it started and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from core.settings import PROJECT_ROOT
from deployments.processes import free_port, wait_for
from tests.broker_support import require_data

pytestmark = pytest.mark.prefect_server


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    tree, out, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_up_starts_everything_and_ctrl_c_stops_it_all(tmp_path: Path):
    data = require_data()
    state = tmp_path / "state"
    api_port, ib_port, admin_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"TRADEFLOW_STATE_DIR": str(state), "TRADEFLOW_DATA_DIR": str(data),
                "PREFECT_SERVER_API_PORT": str(api_port), "IBKR_HOST": "127.0.0.1", "IBKR_PORT": str(ib_port),
                "TRADEFLOW_PAPER_PORT": str(ib_port), "TRADEFLOW_PAPER_ADMIN_PORT": str(admin_port),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    env.pop("TRADEFLOW_ALERT_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "deployments.cli", "up", "--replay-sessions", "0"],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    ui = f"http://127.0.0.1:{api_port}"
    started: set[int] = set()
    try:
        wait_for(lambda: proc.poll() is not None or any("tradeflow is up" in line for line in lines), 300,
                 "tradeflow up to say it is up")
        assert proc.poll() is None, "".join(lines)
        assert httpx.get(ui, timeout=10).status_code == 200  # the UI answers
        assert httpx.get(f"{ui}/api/deployments/name/ema-entry/ema-entry", timeout=10).status_code == 200
        assert any(f"Prefect UI: {ui}" in line for line in lines)
        assert (state / "prefect" / "prefect.db").exists()  # SQLite in the state directory
        started = descendants(proc.pid)
        names = " ".join(Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ") for p in started if alive(p))
        assert "prefect server start" in names and "paper-exchange" in names and "worker start" in names
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
        reader.join(10)
    assert code == 0, "".join(lines)
    left = [p for p in started if alive(p)]
    assert not left, f"still running after up exited: {left}\n{''.join(lines)}"
    assert "tradeflow up: stopped" in lines[-1]
