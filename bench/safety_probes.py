"""Issue 19's probes, re-run against today's code: `uv run python -m bench.safety_probes`.

The issue's original 103 probes are not in the repository; its text names about 30 of them (findings 1-7 and the
smaller points of finding 6). Each runs here on a fresh state directory under /tmp (removed afterwards) against the
project's own parts: the paper exchange in-process (as tests/conftest.py's `exchange` fixture starts it), the real
journal (its writer process, a real DuckDB file), `python -m deployments.cli ...` as a user types it, one real
Prefect server (`deployments.processes.LocalServer` with an auth string, as `tradeflow up` starts it) for the
flows and the API probes, and a small tmpfs for the full / read-only disk probes (when `mount` works as root).

Outcome of each: handled (refused or done right, with a clear message), unclear (no harm, but a traceback or a
misleading message), silently_wrong (harm or a wrong answer without a word), data_lost (journal rows or the file
gone); not_run (with the reason) and probe_error (the probe itself broke: a bug in this script or the set-up).
Writes bench/results/safety_probes.json (one row a probe) and prints the counts.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from core.settings import PROJECT_ROOT, get_settings, load_settings

OUT = Path(__file__).parent / "results" / "safety_probes.json"
CLASSES = ("handled", "unclear", "silently_wrong", "data_lost")
PROBES: list[tuple[str, str, object]] = []
TABLES = ("signals", "orders", "executions", "controls")


def probe(pid: str, tried: str):
    def register(fn):
        PROBES.append((pid, tried, fn))
        return fn
    return register


class Box:
    """One probe's fresh state: `tmp` (removed afterwards), `state` (TRADEFLOW_STATE_DIR), `mp` (env changes, undone
    afterwards), `cleanup` (callables run at the end, last first)."""

    def __init__(self, tmp: Path, mp: pytest.MonkeyPatch):
        self.tmp, self.mp, self.state, self.cleanup = tmp, mp, tmp / "state", []
        self.state.mkdir()

    @property
    def journal(self):
        from core.journal import Journal
        return Journal(self.state / "journal.duckdb")

    def counts(self) -> dict:
        try:
            return {t: int(self.journal.query(f"SELECT count(*) AS n FROM {t}")["n"][0]) for t in TABLES}
        except Exception as exc:  # noqa: BLE001  (evidence, not control flow)
            return {"unreadable": first(str(exc))}

    def cli(self, *args: str, env: dict | None = None, timeout: float = 180) -> tuple[int, str, str]:
        e = {**os.environ, "TRADEFLOW_STATE_DIR": str(self.state)}  # fresh() cleared stray TRADEFLOW_*
        e.update(env or {})
        done = subprocess.run([sys.executable, "-m", "deployments.cli", *args], cwd=PROJECT_ROOT, env=e,
                              capture_output=True, text=True, timeout=timeout)
        return done.returncode, done.stdout, done.stderr

    def tmpfs(self, size: str) -> Path:
        mnt = self.tmp / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True,
                       capture_output=True)

        def unmount():
            if (mnt / "journal.duckdb").exists():
                self.journal.__class__(mnt / "journal.duckdb").stop_writer()
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        self.cleanup.append(unmount)
        return mnt

    def exchange(self, **config):
        from core.paper_exchange import EngineConfig, PaperExchange
        from tests.broker_support import START, require_data

        start = config.pop("start", START)
        server = {k: config.pop(k) for k in ("max_connections", "handshake_timeout") if k in config}
        ex = PaperExchange(require_data(), start=start, state_file=self.tmp / "paper-exchange.json",
                           config=EngineConfig(**config), **server).start()
        self.cleanup.append(ex.stop)
        for k, v in {"IBKR_HOST": "127.0.0.1", "IBKR_PORT": str(ex.port), "TRADEFLOW_DATA_DIR": str(require_data())}.items():
            self.mp.setenv(k, v)
        get_settings.cache_clear()
        return ex


def first(text: str) -> str:
    """The first non-empty line (with the next one when it ends in a colon: "invalid settings:")."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def said(rc: int, out: str, err: str) -> dict:
    return {"exit": rc, "message": first(err) or first(out), "traceback": "Traceback" in err + out, "_all": err + out}


@contextmanager
def fresh(pid: str):
    import core.ib_broker as ib_broker

    tmp = Path(tempfile.mkdtemp(prefix="probe-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        box = Box(tmp, mp)
        for k in [k for k in os.environ if k.startswith("TRADEFLOW_") and k != "TRADEFLOW_JOURNAL_IDLE_SECONDS"]:
            mp.delenv(k)
        mp.setenv("TRADEFLOW_STATE_DIR", str(box.state))
        mp.setattr(ib_broker, "_historical_pacers", {})
        mp.delenv("TRADING_MODE", raising=False)
        get_settings.cache_clear()
        try:
            yield box
        finally:
            for path in box.state.rglob("journal.duckdb"):
                try:
                    box.journal.__class__(path).stop_writer()
                except Exception:  # noqa: BLE001
                    pass
            for fn in reversed(box.cleanup):
                fn()
            get_settings.cache_clear()
            shutil.rmtree(tmp, ignore_errors=True)


def refusal(ev: dict, ok: bool, words: str) -> str:
    """handled when the harm did not happen and the message says `words`, unclear when only the harm is avoided."""
    if not ok:
        return "silently_wrong"
    return "handled" if words.lower() in ev.get("_all", ev["message"]).lower() and not ev["traceback"] else "unclear"


# ---- finding 1: the live guard on every broker action ----------------------------------------------------------
def _live(box: Box):
    from tests.test_live_guard import LIVE, OPEN, _set_up_opted_in

    ex = box.exchange(account=LIVE, start=OPEN)
    _set_up_opted_in(ex)
    return ex


def _guarded(box: Box, action) -> tuple[str, dict]:
    from core.broker import LiveTradingRefusedError
    from core.ib_broker import IBBroker
    from tests.test_live_guard import _account_state

    ex = _live(box)
    before = _account_state(ex)
    try:
        with IBBroker(client_id=7, settings=get_settings()) as b:
            action(b)
        msg = "no refusal"
    except LiveTradingRefusedError as exc:
        msg = first(str(exc))
    same = _account_state(ex) == before
    ev = {"message": msg, "traceback": False, "account_unchanged": same, "open_orders": len(ex.engine.open_orders())}
    return refusal(ev, same and msg != "no refusal", "REFUSED"), ev


def _own(b):
    return next(o.order_id for o in b.open_orders() if o.order_ref == "typed-in-tws")


@probe("1a live guard on cancel", "non-opted-in live account: cancel the trader's own AAPL stop")
def p1a(box):
    return _guarded(box, lambda b: b.cancel_order(_own(b)))


@probe("1b live guard on global cancel", "non-opted-in live account: reqGlobalCancel")
def p1b(box):
    return _guarded(box, lambda b: b.cancel_all_orders())


@probe("1c live guard on modify", "non-opted-in live account: re-place the trader's stop at 140 (a modify)")
def p1c(box):
    from core.broker import OrderRequest
    return _guarded(box, lambda b: b.place_order(OrderRequest("AAPL", "SELL", 10, "typed-in-tws", "STP",
                                                              stop_price=140.0, tif="GTC")))


@probe("1d live guard on place", "non-opted-in live account: a market sell")
def p1d(box):
    from core.broker import OrderRequest
    return _guarded(box, lambda b: b.place_order(OrderRequest("AAPL", "SELL", 10, "manual-sell")))


@probe("1e flatten on a non-opted-in live account", "`tradeflow flatten --yes` with TRADING_MODE unset, live port")
def p1e(box):
    from tests.test_live_guard import _account_state

    ex = _live(box)
    before = _account_state(ex)
    ev = said(*box.cli("flatten", "--yes", "--reason", "probe", "--who", "probe"))
    ev["account_unchanged"] = _account_state(ex) == before
    ev["journal_after"] = box.counts()
    return refusal(ev, ev["account_unchanged"] and ev["exit"] != 0, "REFUSED tradeflow flatten"), ev


@probe("1f 09:30 stop swap on a non-opted-in live account", "the equity-snapshot flow with yesterday's EMA stop working")
def p1f(box):
    from flows.equity_snapshot import equity_snapshot
    from tests.test_live_guard import OPEN, _account_state

    ex = _live(box)
    before = _account_state(ex)
    state = equity_snapshot(OPEN, return_state=True)
    kept = any(o.order_ref == "ema-SMH-20250527-entry-stop" for o in ex.engine.open_orders())
    ev = {"message": first(state.message or ""), "traceback": False, "failed": state.is_failed(),
          "old_stop_working": kept, "account_unchanged": _account_state(ex) == before}
    ok = kept and ev["account_unchanged"]
    return ("handled" if ok and "LiveTradingRefused" in state.message else "unclear" if ok else "silently_wrong"), ev


# ---- finding 2: no entry without its stop -------------------------------------------------------------------
@probe("2a journal held after the entry was sent", "ema-entry at 15:55 with another process taking the journal's "
       "file lock the moment the exchange accepts the entry")
def p2a(box):
    from core.paper_exchange import AdminClient
    from flows.ema_entry import ema_entry
    from tests.fault_support import on_order_accepted
    from tests.test_order_protection import ENTRY, ENTRY_REF, JournalHolder, _stops

    ex = box.exchange()
    box.mp.setenv("TRADEFLOW_JOURNAL_LOCK_TIMEOUT_SECONDS", "2")
    box.mp.setenv("TRADEFLOW_EMA_FILL_TIMEOUT_SECONDS", "10")
    get_settings.cache_clear()
    AdminClient(ex.admin_port).set_clock(ENTRY)
    holder = JournalHolder(get_settings().journal_path)  # started now: taking the lock later costs no start-up
    holders: list = []
    box.cleanup.append(holder.release)
    on_order_accepted(ex, box.mp, ENTRY_REF, lambda o: holders.append(holder.hold()))
    state = ema_entry(as_of=ENTRY, return_state=True)
    pos = ex.engine.positions.get("SMH")
    held = pos.quantity if pos else 0
    stops = [s.quantity for s in _stops(ex)]
    ev = {"message": first(state.message or ""), "traceback": False, "held": held, "stops": stops,
          "journal_held": bool(holders)}
    holder.release()
    ev["journal_after"] = box.counts()
    if holders != ["held"]:
        return "probe_error", ev
    ok = held > 0 and stops == [held]
    return refusal(ev, ok, "ORDERS SENT, JOURNAL BEHIND"), ev


@probe("2b 09:30 stop swap with the journal held", "long SMH with yesterday's stop; the 09:30 equity-snapshot "
       "with the journal's file lock taken the moment the exchange accepts today's stop")
def p2b(box):
    from flows.ema_entry import ema_entry
    from flows.equity_snapshot import equity_snapshot
    from tests.fault_support import on_order_accepted
    from tests.test_ema_flows import at
    from tests.test_order_protection import JournalHolder, _stops

    box.mp.setenv("TRADEFLOW_EMA_FILL_TIMEOUT_SECONDS", "10")
    box.mp.setenv("TRADEFLOW_JOURNAL_LOCK_TIMEOUT_SECONDS", "2")
    ex = box.exchange(start=at(2025, 5, 27, 15, 55), account_type="portfolio_margin")
    ema_entry(as_of=at(2025, 5, 27, 15, 55))
    from core.paper_exchange import AdminClient
    AdminClient(ex.admin_port).set_clock(at(2025, 5, 28, 9, 30))
    holder = JournalHolder(get_settings().journal_path)
    box.cleanup.append(holder.release)
    seen: list = []
    on_order_accepted(ex, box.mp, "ema-SMH-20250528-stop",
                      lambda o: seen.append((len(_stops(ex)), holder.hold())))  # stops working then, the new one too
    state = equity_snapshot(as_of=at(2025, 5, 28, 9, 30), return_state=True)
    holder.release()
    held = ex.engine.positions["SMH"].quantity
    stops = [(s.order_ref, s.quantity) for s in _stops(ex)]
    ev = {"message": first(state.message or "") if state.is_failed() else "completed", "traceback": False,
          "held": held, "stops_when_new_accepted": seen[0][0] if seen else None, "stops_after": stops,
          "journal_after": box.counts()}
    if not seen:
        return "probe_error", ev
    ok = sum(q for _, q in stops) == held and ev["stops_when_new_accepted"] >= 2  # the new one and the old
    return refusal(ev, ok, "JOURNAL BEHIND") if state.is_failed() else ("handled" if ok else "silently_wrong"), ev


# ---- finding 3: the Prefect API ------------------------------------------------------------------------------
SERVER: dict = {}


def _api(pid: str, tried: str, check):
    @probe(pid, tried)
    def run(box):
        if "error" in SERVER:
            return "not_run", {"reason": SERVER["error"]}
        return check(SERVER["server"].ui_url, SERVER["good"])
    return run


def _status(expect: int):
    def judge(r) -> tuple[str, dict]:
        return ("handled" if r.status_code == expect else "silently_wrong"), {"status": r.status_code,
                                                                              "message": first(r.text)[:120]}
    return judge


_api("3a unauthenticated API read", "GET /api/deployments/filter without the auth string",
     lambda ui, good: _status(401)(httpx.post(f"{ui}/api/deployments/filter", json={}, timeout=10)))
_api("3b pull-step injection", "POST /api/deployments/ with a run_shell_script pull step, no auth",
     lambda ui, good: _status(401)(httpx.post(f"{ui}/api/deployments/", json=__import__(
         "tests.test_up", fromlist=["x"]).PULL_STEP_INJECTION, timeout=10)))
_api("3c alert block read", "POST /api/block_documents/filter (the alert URL), no auth",
     lambda ui, good: _status(401)(httpx.post(f"{ui}/api/block_documents/filter", json={}, timeout=10)))
_api("3d DNS rebinding Host header", "an authenticated request with Host: attacker.example",
     lambda ui, good: _status(400)(httpx.post(f"{ui}/api/flows/filter", json={}, timeout=10,
                                              headers={**good, "Host": "attacker.example"})))


@probe("3e CORS for a foreign origin", "a preflight from Origin: http://attacker.example")
def p3e(box):
    if "error" in SERVER:
        return "not_run", {"reason": SERVER["error"]}
    r = httpx.options(f"{SERVER['server'].api_url}/flows/filter", timeout=10,
                      headers={"Origin": "http://attacker.example", "Access-Control-Request-Method": "POST"})
    allowed = r.headers.get("access-control-allow-origin")
    return ("handled" if allowed is None else "silently_wrong"), {"status": r.status_code, "allow_origin": allowed}


@probe("3f plain webhook URL in a secret field", "the alert block for TRADEFLOW_ALERT_URL=https://hooks.example/s3cret")
def p3f(box):
    from deployments.alerts import notification_block

    block = notification_block("https://hooks.example/s3cret-token")
    shown = block.model_dump_json()
    ev = {"block": type(block).__name__, "secret_in_dump": "s3cret-token" in shown, "url_field": str(block.url)}
    return ("silently_wrong" if ev["secret_in_dump"] or "s3cret" in ev["url_field"] else "handled"), ev


# ---- finding 4: tradeflow sql ----------------------------------------------------------------------------------
def _sql(box: Box, sql: str, harm) -> tuple[str, dict]:
    from tests.test_journal_server import _signal

    _signal(box.journal, 0)
    box.journal.sync()
    size = box.journal.path.stat().st_size
    before = box.counts()
    ev = said(*box.cli("sql", sql.format(state=box.state, journal=box.journal.path)))
    ev.update(journal_before=before, journal_after=box.counts(), size_before=size,
              size_after=box.journal.path.stat().st_size)
    if ev["journal_after"] != before or ev["size_after"] < 4096:
        return "data_lost", ev
    if ev["exit"] == 0 or harm(ev):
        return "silently_wrong", ev
    return refusal(ev, True, "tradeflow sql:"), ev


def _sql_probe(pid: str, sql: str, harm=lambda ev: False):
    probe(pid, f"tradeflow sql \"{sql}\"")(lambda box: _sql(box, sql, harm))


_sql_probe("4a ATTACH the live file read-write, DELETE",
           "ATTACH '{journal}' AS live (READ_WRITE); DELETE FROM live.signals")
_sql_probe("4b COPY TO the live file", "COPY (SELECT 'x') TO '{journal}'")
_sql_probe("4c ATTACH the live file read-only", "ATTACH '{journal}' AS live (READ_ONLY); SELECT count(*) FROM live.signals")
_sql_probe("4d INSTALL httpfs", "INSTALL httpfs")
_sql_probe("4e read_csv of any file", "SELECT * FROM read_csv('/etc/passwd')", lambda ev: "root" in ev["message"])


@probe("4f a long tradeflow sql query against the flows' writes", "a 3e9-row sum in `tradeflow sql` while a flow writes")
def p4f(box):
    from tests.test_journal_server import _signal

    _signal(box.journal, 0)
    box.journal.sync()
    e = {**os.environ, "TRADEFLOW_STATE_DIR": str(box.state)}
    q = subprocess.Popen([sys.executable, "-m", "deployments.cli", "sql", "SELECT sum(i) FROM range(3000000000) t(i)"],
                         cwd=PROJECT_ROOT, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    box.cleanup.append(lambda: (q.poll() is None and q.kill(), q.wait()))
    time.sleep(3)  # the query's process is past its start-up and scanning (a benchmark probe, not a test)
    t0 = time.monotonic()
    _signal(box.journal, 1)
    box.journal.sync()
    took = time.monotonic() - t0
    ev = {"message": f"write + sync took {took:.1f} s while the query ran", "traceback": False,
          "query_running": q.poll() is None, "journal_after": box.counts()}
    return ("handled" if took < 15 else "silently_wrong"), ev


# ---- finding 5: settings ------------------------------------------------------------------------------------------
def _setting(pid: str, name: str, value: str, words: str):
    @probe(pid, f"{name}={value} then `tradeflow schedule`")
    def run(box):
        ev = said(*box.cli("schedule", "--from", "2026-11-23", "--to", "2026-11-23", env={name: value}))
        return refusal(ev, ev["exit"] != 0, words), ev


_setting("5a MTF position 1e9", "TRADEFLOW_MTF_POSITION_USD", "1e9", "TRADEFLOW_MTF_POSITION_USD")
_setting("5b MTF position inf", "TRADEFLOW_MTF_POSITION_USD", "inf", "TRADEFLOW_MTF_POSITION_USD")
_setting("5c leverage 50", "TRADEFLOW_DEFAULT_LEVERAGE", "50", "TRADEFLOW_DEFAULT_LEVERAGE")
_setting("5d daily loss limit 1e12", "TRADEFLOW_MTF_DAILY_LOSS_LIMIT_USD", "1e12", "TRADEFLOW_MTF_DAILY_LOSS_LIMIT_USD")
_setting("5e misspelled TRADEFLOW_EMA_SPAN_FAST", "TRADEFLOW_EMA_SPAN_FAST", "10", "TRADEFLOW_EMA_SPAN_FAST")
_setting("5f misspelled TRADEFLOW_MTF_ENTRY_TRESHOLD", "TRADEFLOW_MTF_ENTRY_TRESHOLD", "0.6", "did you mean")
_setting("5g MTF symbols not JSON", "TRADEFLOW_MTF_SYMBOLS", "AAPL", "TRADEFLOW_MTF_SYMBOLS")


@probe("5h MTF sizing checks funds", "an MTF entry larger than the account's funds")
def p5h(box):
    return "not_run", {"reason": "needs a trained MTF champion and a full mtf-signal run (too heavy here); "
                                 "the code has it: flows/mtf_signal.py sizes BUYs by IB's what-if (tasks.margin.fit_entry)"}


# ---- finding 6: the smaller points --------------------------------------------------------------------------------
def _fill(mnt: Path, leave: int) -> None:
    """Fill the tmpfs at `mnt` until `leave` bytes are free."""
    with open(mnt / "filler", "wb") as f:
        try:
            while shutil.disk_usage(mnt).free > leave:
                f.write(b"\0" * min(65536, max(4096, shutil.disk_usage(mnt).free - leave)))
                f.flush()
        except OSError:
            pass


def attempt(fn) -> str:
    try:
        out = fn()
        return "ok" if out is None else f"ok: {out}"
    except Exception as exc:  # noqa: BLE001  (evidence)
        return f"{type(exc).__name__}: {first(str(exc))}"[:300]


@probe("6a full disk during the snapshot copy", "journal on a 16 MB tmpfs with 256 KB free (less than a copy needs): "
       "a write, a sync, a read once the disk is freed, a read after the writer restarts")
def p6a(box):
    from core.journal import Journal
    from tests.test_journal_server import _signal

    mnt = box.tmpfs("16m")
    j = Journal(mnt / "journal.duckdb")
    _signal(j, 0)
    j.sync()
    _fill(mnt, 256 * 1024)
    count = lambda: int(j.query("SELECT count(*) AS n FROM signals")["n"][0])  # noqa: E731
    ev = {"traceback": False, "write": attempt(lambda: _signal(j, 1, "written while the disk is full")),
          "sync": attempt(lambda: j.sync(timeout=30))}
    ev["tmp_left_while_full"] = [p.name for p in mnt.iterdir() if p.name.endswith(".tmp")]
    (mnt / "filler").unlink()
    ev["read_after_freeing"] = attempt(count)
    ev["write_after_freeing"] = attempt(lambda: _signal(j, 2, "written after the disk was freed"))
    j.stop_writer()
    ev["read_after_writer_restart"] = attempt(count)
    ev["tmp_left"] = [p.name for p in mnt.iterdir() if p.name.endswith(".tmp")]
    ev["message"] = ev["sync"]
    n = int(ev["read_after_writer_restart"].split(": ")[1]) if ev["read_after_writer_restart"].startswith("ok:") else -1
    wrote = (ev["write"] == "ok") + (ev["write_after_freeing"] == "ok")
    if n < 1 + wrote:
        return "data_lost", ev
    if n > 1 + wrote:
        return "silently_wrong", ev  # a committed write reported as failed
    if ev["tmp_left"] or not ev["read_after_freeing"].startswith("ok") or ev["write_after_freeing"] != "ok":
        return "unclear", ev
    return "handled", ev


@probe("6b snapshot after a large transaction", "2,000 signals in one transaction, then a read")
def p6b(box):
    import datetime as dt

    from tests.test_journal_server import T0, DAY

    j = box.journal
    with j.transaction() as tx:
        for n in range(2000):
            tx.record_signal("mtf", "AAPL", T0 + dt.timedelta(minutes=n), DAY, "NO_TRADE", "bulk")
    n = box.counts()
    return ("handled" if n.get("signals") == 2000 else "silently_wrong"), {"journal_after": n, "message": ""}


@probe("6c writer SIGKILLed just after a commit", "5 writes, SIGKILL the writer, read at once")
def p6c(box):
    from tests.test_journal_server import _gone, _signal, _writer_pid

    for n in range(5):
        _signal(box.journal, n)
    pid = _writer_pid(box.journal)
    os.kill(pid, signal.SIGKILL)
    _gone(pid)
    n = box.counts()
    return ("handled" if n.get("signals") == 5 else "data_lost" if n.get("signals", 0) < 5 else "unclear"), {
        "journal_after": n, "message": ""}


@probe("6d tradeflow sql while the live file is corrupt", "zero the live file's headers, then `tradeflow sql`")
def p6d(box):
    from tests.test_journal_server import _signal

    _signal(box.journal, 0)
    box.journal.stop_writer()
    with open(box.journal.path, "r+b") as f:
        f.write(b"\0" * 12288)
    ev = said(*box.cli("sql", "SELECT count(*) AS n FROM signals"))
    return ("silently_wrong" if ev["exit"] == 0 else refusal(ev, True, "cannot open")), ev


def _halt(box: Box, state: Path) -> dict:
    from core.controls import KillSwitch

    ev = said(*box.cli("halt", "--reason", "probe", "--who", "probe", env={"TRADEFLOW_STATE_DIR": str(state)}))
    ev["halted"] = KillSwitch(state).current() is not None
    ev["left_behind"] = [p.name for p in state.iterdir() if p.name.endswith(".tmp")]
    return ev


@probe("6e tradeflow halt on a full state directory", "state dir on a tmpfs filled to 0 bytes free")
def p6e(box):
    mnt = box.tmpfs("16m")
    j = box.journal.__class__(mnt / "journal.duckdb")
    j.ensure()
    j.stop_writer()
    _fill(mnt, 0)
    ev = _halt(box, mnt)
    (mnt / "filler").unlink()
    ev["journal_controls"] = int(j.query("SELECT count(*) AS n FROM controls")["n"][0])
    j.stop_writer()
    if ev["halted"] != (ev["exit"] == 0) or ev["journal_controls"] and not ev["halted"]:
        return "silently_wrong", ev
    return refusal(ev, not ev["left_behind"], "halt"), ev


@probe("6f tradeflow halt on a read-only state directory", "the state dir bind-mounted read-only")
def p6f(box):
    box.journal.ensure()
    box.journal.stop_writer()
    ro = box.tmp / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(box.state), str(ro)], check=True, capture_output=True)
    box.cleanup.append(lambda: subprocess.run(["umount", "-l", str(ro)], capture_output=True))
    subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True, capture_output=True)
    ev = _halt(box, ro)
    ev["journal_after"] = box.counts()
    if ev["halted"] != (ev["exit"] == 0) or ev["journal_after"].get("controls") and not ev["halted"]:
        return "silently_wrong", ev
    return refusal(ev, True, "NOT halted"), ev


@probe("6g tradeflow halt with the journal held", "another process holds the journal's file lock")
def p6g(box):
    from tests.test_order_protection import JournalHolder

    box.mp.setenv("TRADEFLOW_JOURNAL_LOCK_TIMEOUT_SECONDS", "1")
    box.journal.ensure()
    box.journal.stop_writer()
    holder = JournalHolder(box.journal.path)
    holder.hold()
    try:
        ev = _halt(box, box.state)
    finally:
        holder.release()
    ev["journal_after"] = box.counts()
    if ev["halted"] and ev["exit"] == 0 and ev["journal_after"].get("controls") == 0:
        return "silently_wrong", ev  # halted, its journal row never written, and not a word
    return refusal(ev, ev["halted"], "journal"), ev


@probe("6h train with a symbol that has no bars", "`tradeflow train --symbols NOSUCH AAPL --epochs 1`")
def p6h(box):
    models = box.tmp / "models"
    ev = said(*box.cli("train", "--symbols", "NOSUCH", "AAPL", "--epochs", "1", "--models-dir", str(models),
                       "--as-of", "2026-03-02T18:00:00-05:00", timeout=240))
    ev["trained"] = sorted(p.name for p in models.iterdir()) if models.exists() else []
    return refusal(ev, ev["trained"] == ["AAPL"], "NOSUCH: skipped"), ev


def _closed_probe(box: Box, send, **server) -> tuple[str, dict]:
    from tests.test_paper_exchange_conformance import _closed, _raw

    ex = box.exchange(**server)
    s = _raw(ex.port)
    t0 = time.monotonic()
    send(s, ex)
    closed = _closed(s, timeout=15)
    ev = {"message": f"closed after {time.monotonic() - t0:.1f} s" if closed else "still open after 15 s",
          "traceback": False, "connections": len(ex.status()["connections"])}
    return ("handled" if closed else "silently_wrong"), ev


@probe("6i paper exchange: a 1 GB length prefix", "a client announces a 2^30-byte message after its handshake")
def p6i(box):
    import struct

    from tests.test_paper_exchange_conformance import _handshake

    return _closed_probe(box, lambda s, ex: (_handshake(s, 81), s.sendall(struct.pack(">I", 1 << 30) + b"x" * 16)))


@probe("6j paper exchange: a half handshake", "a client sends API\\0 and nothing more (default timeout)")
def p6j(box):
    return _closed_probe(box, lambda s, ex: s.sendall(b"API\0"))


@probe("6k paper exchange: connections beyond the cap", "32 raw connections, then a 33rd (default cap)")
def p6k(box):
    from tests.broker_support import wait_until
    from tests.test_paper_exchange_conformance import _closed, _raw

    ex = box.exchange()
    socks = [_raw(ex.port) for _ in range(32)]
    box.cleanup.append(lambda: [s.close() for s in socks])
    wait_until(lambda: len(ex.status()["connections"]) == 32, 10, "32 connections")
    closed = _closed(_raw(ex.port), timeout=5)
    ev = {"message": "the 33rd closed" if closed else "the 33rd kept open", "traceback": False,
          "first_still_open": not _closed(socks[0], timeout=0.2)}
    return ("handled" if closed and ev["first_still_open"] else "silently_wrong"), ev


@probe("6l paper exchange: admin command without the token", "move the clock through the admin port with a wrong token")
def p6l(box):
    from core.paper_exchange import AdminClient, AdminError
    from tests.broker_support import NY

    ex = box.exchange()
    before = ex.now()
    try:
        AdminClient(ex.admin_port, token="guess").set_clock(datetime(2026, 3, 3, 10, 0, tzinfo=NY))
        msg = "accepted"
    except AdminError as exc:
        msg = first(str(exc))
    ev = {"message": msg, "traceback": False, "clock_unchanged": ex.now() == before}
    return refusal(ev, ev["clock_unchanged"] and msg != "accepted", "admin token required"), ev


# ---- finding 7: the EMA backstop without the MTF strategy ----------------------------------------------------------
@probe("7a EMA backstop with the MTF champion missing", "mtf-signal at 15:40, no MTF model, SMH long without its "
       "stop and equity under 0.98 E0")
def p7a(box):
    from core.paper_exchange import AdminClient, EngineConfig  # noqa: F401
    from flows.mtf_signal import mtf_signal
    from tests.test_ema_flows import Market, at, long_without_its_stop

    box.mp.setenv("TRADEFLOW_EMA_CLOSE_SETTLE_SECONDS", "0")
    box.mp.setenv("TRADEFLOW_EMA_FILL_TIMEOUT_SECONDS", "10")

    def market(when, account_type="portfolio_margin"):
        ex = box.exchange(start=when, account_type=account_type)
        return Market(ex, AdminClient(ex.admin_port))

    m, snap = long_without_its_stop(market)
    m.to(at(2025, 5, 28, 15, 40))
    held = m.position()
    state = mtf_signal(as_of=at(2025, 5, 28, 15, 40), return_state=True)
    ev = {"message": first(state.message or ""), "traceback": False, "held_before": held, "held_after": m.position(),
          "stop2_orders": len(m.orders("ema-SMH-20250528-stop2"))}
    return refusal(ev, held > 0 and ev["held_after"] == 0, "EMA stop second line"), ev


# ---- running them --------------------------------------------------------------------------------------------------
def start_server(tmp: Path) -> None:
    from deployments.prefect_auth import ensure_auth
    from deployments.processes import LocalServer, free_port

    try:
        home = tmp / "prefect"
        server = LocalServer(home, free_port(), tmp / "server.log", ui=False, auth_string=ensure_auth(home)).start(240)
    except Exception as exc:  # noqa: BLE001
        SERVER["error"] = f"the Prefect server did not start: {first(str(exc))}"
        return
    auth = server.auth_string
    SERVER.update(server=server, good={"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()})
    os.environ.update(PREFECT_API_URL=server.api_url, PREFECT_API_AUTH_STRING=auth)


def main() -> int:
    os.environ["TRADEFLOW_JOURNAL_IDLE_SECONDS"] = "5"
    only = sys.argv[1:]
    base = Path(tempfile.mkdtemp(prefix="probes-prefect-", dir="/tmp"))
    start_server(base)
    from prefect import Flow
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    import flows.ema_entry, flows.equity_snapshot, flows.mtf_signal  # noqa: E401,F401
    for name, module in list(sys.modules.items()):  # retries without their minutes between attempts
        if module and name.startswith(("flows.", "strategies.", "tests.")):
            for value in list(vars(module).values()):
                if isinstance(value, Flow) and value.retries and value.retry_delay_seconds:
                    value.retry_delay_seconds = 0
    rows = []
    try:
        with temporary_settings({PREFECT_API_URL: os.environ.get("PREFECT_API_URL"),
                                 PREFECT_API_AUTH_STRING: os.environ.get("PREFECT_API_AUTH_STRING")}):
            for pid, tried, fn in PROBES:
                if only and not any(pid.startswith(o) for o in only):
                    continue
                t0 = time.monotonic()
                try:
                    with fresh(pid) as box:
                        outcome, ev = fn(box)
                except Exception as exc:  # noqa: BLE001
                    outcome, ev = "probe_error", {"error": f"{type(exc).__name__}: {first(str(exc))}",
                                                  "where": traceback.format_exc().splitlines()[-3:]}
                ev.pop("traceback", None) if ev.get("traceback") is False else None
                ev.pop("_all", None)
                rows.append({"id": pid, "tried": tried, "outcome": outcome, "evidence": ev,
                             "seconds": round(time.monotonic() - t0, 1)})
                print(f"{outcome:15} {pid}: {ev.get('message', ev.get('reason', ev.get('error', '')))}"[:200], flush=True)
    finally:
        if "server" in SERVER:
            SERVER["server"].stop()
        shutil.rmtree(base, ignore_errors=True)
    counts = {c: sum(r["outcome"] == c for r in rows) for c in (*CLASSES, "not_run", "probe_error")}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"when": datetime.now().astimezone().isoformat(timespec="seconds"),
                               "counts": counts, "probes": rows}, indent=1, default=str) + "\n")
    print("\n" + "  ".join(f"{k}: {v}" for k, v in counts.items()) + f"\n(written to {OUT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
