"""`tradeflow up` as a user runs it: a fresh state directory, no TWS; it starts the Prefect server (SQLite in the
state directory), the paper exchange, the deployments and the worker, prints where the UI is, and on SIGINT
stops every process it started and exits 0."""

from __future__ import annotations

import base64
import os
import signal
import stat
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
        _the_api_is_locked(ui, state, lines)
        assert any(f"Prefect UI: {ui}" in line for line in lines)
        assert (state / "prefect" / "prefect.db").exists()  # SQLite in the state directory
        started = descendants(proc.pid)
        names = " ".join(Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ") for p in started if alive(p))
        assert "deployments.prefect_server" in names and "paper-exchange" in names and "worker start" in names
        # the worker takes runs 20 s ahead, asking every 2 s: a run's process is ready before its time
        worker, = [p for p in started if alive(p) and "worker start" in
                   Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")]
        environ = dict(kv.split("=", 1) for kv in Path(f"/proc/{worker}/environ").read_text().split("\0") if "=" in kv)
        assert (environ["PREFECT_WORKER_QUERY_SECONDS"], environ["PREFECT_WORKER_PREFETCH_SECONDS"]) == ("2", "20")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            for pid in [proc.pid, *started]:  # nothing of this test outlives it
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            code = None
        reader.join(10)
    assert code is not None, "up did not exit within 120 s of SIGINT (its processes were killed):\n" + "".join(lines)
    assert code == 0, "".join(lines)
    left = [p for p in started if alive(p)]
    assert not left, f"still running after up exited: {left}\n{''.join(lines)}"
    assert "tradeflow up: stopped" in lines[-1]


PULL_STEP_INJECTION = {
    "name": "pwned", "flow_id": "00000000-0000-0000-0000-000000000000", "work_pool_name": "tradeflow",
    "pull_steps": [{"prefect.deployments.steps.run_shell_script": {"script": "id > /tmp/pwned"}}],
}
"""A deployment whose pull step runs a shell command as the worker's user (issue 19, finding 3)."""


def _the_api_is_locked(ui: str, state: Path, lines: list[str]) -> None:
    """The server `up` started requires its auth string (kept 0600 in the state directory), answers only
    loopback Host headers and its own UI's origin; the worker (and `tradeflow` commands) use the string."""
    auth_file = state / "prefect" / "api-auth"
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
    auth = auth_file.read_text().strip()
    good = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    api = f"{ui}/api"
    deployment = f"{api}/deployments/name/ema-entry/ema-entry"
    assert httpx.get(deployment, timeout=10).status_code == 401  # no auth: refused
    wrong = {"Authorization": "Basic " + base64.b64encode(b"tradeflow:guess").decode()}
    assert httpx.get(deployment, headers=wrong, timeout=10).status_code == 401
    assert httpx.post(f"{api}/deployments/", json=PULL_STEP_INJECTION, timeout=10).status_code == 401
    assert httpx.post(f"{api}/block_documents/filter", json={}, timeout=10).status_code == 401  # the alert's URL
    assert httpx.get(deployment, headers=good, timeout=10).status_code == 200
    rebound = httpx.get(deployment, headers={**good, "Host": f"attacker.example:{ui.rsplit(':', 1)[1]}"}, timeout=10)
    assert rebound.status_code == 400  # DNS rebinding: a page whose own name resolves to 127.0.0.1
    evil = httpx.options(f"{api}/flows/filter", timeout=10,
                         headers={"Origin": "http://attacker.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in evil.headers
    own = httpx.options(f"{api}/flows/filter", timeout=10,
                        headers={"Origin": ui, "Access-Control-Request-Method": "POST"})
    assert own.headers.get("access-control-allow-origin") == ui
    assert not Path("/tmp/pwned").exists()
    assert any(f'PREFECT_API_AUTH_STRING="$(cat {auth_file})"' in line for line in lines)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"TRADEFLOW_STATE_DIR": str(state), "PREFECT_API_URL": api})
    listed = subprocess.run([sys.executable, "-m", "deployments.cli", "deploy", "--check"], cwd=PROJECT_ROOT,
                            env=env, capture_output=True, text=True, timeout=180)
    said = listed.stdout + listed.stderr  # `tradeflow` commands send the string from the state directory
    assert "ema-entry" in listed.stdout and "401" not in said and "Unauthorized" not in said, said
