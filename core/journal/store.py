"""Opening the journal: transactions through its writer process, reads on its read snapshot.

Concurrency (DESIGN.md: a DuckDB file is open by one process at a time while anything writes; flows are
separate processes that overlap at 15:55-16:00; people query while flows run):

* **Writes** go to the journal's writer (`core.journal.server`), one long-lived process that owns the file;
  `Journal.transaction()` starts it when none runs and talks to it over a loopback TCP connection that each
  process keeps for its later transactions. A transaction waits only for the one before it, and costs what its
  statements cost, whatever the journal's size.
* **Readers** never open the live file. They open the read snapshot (``journal.read.duckdb``) read-only, which
  the writer refreshes within a fraction of a second of each commit (it copies the file off the write path).
  `Journal.query`, `Journal.reader` and `tradeflow sql` first ask the writer to bring the snapshot up to date,
  so a new query sees every write completed before it started. A session held open (the DuckDB CLI, Python)
  keeps the snapshot as it was when it opened, for as long as it stays open, and blocks nobody.
* **Bulk loads** (an import, bench/journal_scale.py) use `Journal.bulk()`: the file opened directly while no
  writer may start.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
from filelock import FileLock, Timeout

from core.journal import codec
from core.journal.base import JournalError
from core.journal.remote import JournalServer, configured
from core.journal.schema import _STORAGE, migrate
from core.journal.server import HALT_FILE, HaltFile, JournalFiles
from core.journal.tx import JournalTx

if TYPE_CHECKING:
    import pandas as pd

SPAWN_TIMEOUT_S = 60.0
"""Seconds a client waits for a writer it started to listen (its start is about 1 s here; more under load)."""



class _FileHeld(Exception):
    """Another process holds the live file (DuckDB's message, with its PID)."""


class _Result:
    """What one remote statement returned, shaped like a DuckDB cursor's result."""

    def __init__(self, columns: list[str], rows: list[list[Any]]):
        self.description = [(c,) for c in columns] if columns else None
        self._rows = [tuple(r) for r in rows]

    def fetchall(self) -> list[tuple]:
        return self._rows

    def fetchone(self) -> tuple | None:
        return self._rows[0] if self._rows else None


class _Remote:
    """One TCP connection to the writer (kept by the process for its later transactions)."""

    def __init__(self, host: str, port: int, timeout: float, token: str | None = None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(None)
        self.rfile = self.sock.makefile("rb")
        if token:
            try:
                self.call("hello", token=token)
            except BaseException:
                self.close()
                raise

    def read_bytes(self, size: int, into: Path) -> None:
        """Read `size` raw bytes that follow a reply into the file `into`."""
        left = size
        with open(into, "wb") as fh:
            while left:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    raise ConnectionError("the journal server closed the connection in the middle of a snapshot")
                fh.write(chunk)
                left -= len(chunk)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        try:
            self.sock.sendall(codec.dumps({"op": op, **args}))
            line = self.rfile.readline()
        except OSError as exc:
            raise ConnectionError(f"the journal writer's connection broke: {exc}") from exc
        if not line:
            raise ConnectionError("the journal writer closed the connection (it stopped or was killed)")
        reply = codec.loads(line)
        if not reply.get("ok"):
            kind, error = reply.get("kind"), reply.get("error", "")
            if kind == "value":
                raise ValueError(error)
            if kind == "sql":
                raise duckdb.Error(error)
            raise JournalError(error)
        return reply

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> _Result:
        reply = self.call("exec", sql=sql, params=codec.encode(list(params or [])))
        return _Result(reply["columns"], codec.decode(reply["rows"]))

    def close(self) -> None:
        try:
            self.rfile.close()
            self.sock.close()
        except OSError:
            pass


class RemoteHaltFile:
    """The server host's HALT file, through its journal server (the `HaltFile` methods; `path` names it)."""

    def __init__(self, journal: "Journal"):
        self.journal = journal
        self.path = f"HALT on {journal.where}"

    def _call(self, op: str, **args: Any) -> dict[str, Any]:
        try:
            reply = self.journal._call(op, **args)
        except ConnectionError as exc:
            raise OSError(f"{self.journal.where}: {exc}") from exc
        except JournalError as exc:
            raise OSError(str(exc)) from exc
        assert reply is not None
        return reply

    def read(self) -> str | None:
        """The halt's text, or None. Raises OSError when the server cannot be reached or read it."""
        return self._call("halt_get").get("halt")

    def write(self, text: str) -> None:
        """Raises OSError when the server cannot be reached or write it."""
        self._call("halt_put", text=text)

    def remove(self) -> None:
        """Raises OSError when the server cannot be reached or remove it."""
        self._call("halt_remove")


_POOL: dict[tuple[int, str], _Remote] = {}
_POOL_LOCK = threading.Lock()


@dataclass
class Journal:
    """The journal at `path` (a DuckDB file): transactions through its writer, reads on its read snapshot.

    Args:
        path: the live DuckDB file, opened only by the journal's writer process.
        lock_timeout: seconds a transaction waits for the one before it (other flows writing) before
            `JournalError`; a flow's write normally waits milliseconds.
    """

    path: Path
    lock_timeout: float = 60.0
    server: JournalServer | None = field(default_factory=configured)
    files: JournalFiles = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.files = JournalFiles(self.path)

    @property
    def where(self) -> str:
        """The journal as messages name it: its path, or the journal server on another host."""
        return f"the journal server at {self.server}" if self.server else f"journal {self.path}"

    @property
    def snapshot_path(self) -> Path:
        """The read snapshot people query (`tradeflow sql`, the DuckDB CLI with `-readonly`); with a journal server,
        this host's copy of the server's (fetched by `sync_copy`)."""
        return self._remote_copy if self.server else self.files.snapshot

    @property
    def _remote_copy(self) -> Path:
        return self.path.with_name(self.path.name + ".remote-read.duckdb")

    # ---- the writer -------------------------------------------------------------------------------------------

    def _writer_address(self) -> tuple[str, int] | None:
        if self.server:
            return self.server.host, self.server.port
        try:
            info = json.loads(self.files.server_info.read_text())
            return info["host"], int(info["port"])
        except (OSError, ValueError, KeyError):
            return None

    def _try_connect(self) -> _Remote | None:
        address = self._writer_address()
        if address is None:
            return None
        try:
            return _Remote(*address, timeout=5.0, token=self.server.token if self.server else None)
        except OSError:
            return None

    def _start_writer(self, deadline: float) -> _Remote:
        """Start the writer unless one runs (under the spawn lock), and connect to it. While another process
        holds the live file, try again until `lock_timeout` has passed, then fail naming it."""
        held_until = time.monotonic() + self.lock_timeout
        delay = 0.05
        while True:
            try:
                return self._spawn(deadline)
            except _FileHeld as exc:
                if time.monotonic() + delay > held_until:
                    raise JournalError(f"journal {self.path}: cannot open for writing: {exc} (a DuckDB session "
                                       "on the live file? people open the read snapshot: `tradeflow sql --path`)"
                                       ) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _spawn(self, deadline: float) -> _Remote:
        if self.server:  # never a writer of this host's own: the journal is the server's
            raise JournalError(f"{self.where} cannot be reached (TRADEFLOW_JOURNAL_SERVER): is `tradeflow up "
                               "--role server` running there, and is this host's network up?")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(self.files.spawn_lock), timeout=max(0.1, deadline - time.monotonic())):
                remote = self._try_connect()
                if remote is not None:
                    return remote
                self.files.server_error.unlink(missing_ok=True)
                log = open(self.files.server_log, "ab")  # noqa: SIM115 - handed to the child
                try:
                    proc = subprocess.Popen(
                        [sys.executable, "-c", "import sys; from core.journal.server import main; sys.exit(main())",
                         str(self.path.resolve())],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                        cwd=str(Path(__file__).resolve().parents[2]))
                finally:
                    log.close()
                while time.monotonic() < deadline:
                    remote = self._try_connect()
                    if remote is not None:
                        return remote
                    code = proc.poll()
                    if code is not None:
                        if self.files.server_error.exists():
                            error = self.files.server_error.read_text().strip()
                            if "lock" in error.lower():
                                raise _FileHeld(error)
                            raise JournalError(f"journal {self.path}: cannot open: {error}")
                        remote = self._try_connect()  # another writer had started: ours gave way
                        if remote is not None:
                            return remote
                        if code != 0:
                            raise JournalError(f"journal {self.path}: its writer exited with status {code} "
                                               f"(see {self.files.server_log})")
                    time.sleep(0.02)
        except Timeout as exc:
            raise JournalError(f"journal {self.path}: another process kept starting its writer") from exc
        raise JournalError(f"journal {self.path}: its writer did not start within {SPAWN_TIMEOUT_S:g} s "
                           f"(see {self.files.server_log})")

    def _remote(self, *, start: bool = True) -> _Remote | None:
        key = (os.getpid(), str(self.path.resolve()))
        with _POOL_LOCK:
            remote = _POOL.pop(key, None)
        if remote is None:
            remote = self._try_connect()
        if remote is None and start:
            remote = self._start_writer(time.monotonic() + SPAWN_TIMEOUT_S)
        return remote

    def _give_back(self, remote: _Remote) -> None:
        key = (os.getpid(), str(self.path.resolve()))
        with _POOL_LOCK:
            old = _POOL.get(key)
            _POOL[key] = remote
        if old is not None and old is not remote:
            old.close()

    def _call(self, op: str, *, start: bool = True, **args: Any) -> dict[str, Any] | None:
        """One request outside a transaction; a stale pooled connection is replaced once."""
        for attempt in (1, 2):
            remote = self._remote(start=start)
            if remote is None:
                return None
            try:
                reply = remote.call(op, **args)
            except ConnectionError:
                remote.close()
                if attempt == 2:
                    raise
                continue
            self._give_back(remote)
            return reply
        return None

    @contextmanager
    def transaction(self) -> Iterator[JournalTx]:
        """One write: everything recorded inside commits together, or nothing does (an exception rolls back
        and propagates). A query started after it returns sees it.

        Raises:
            JournalError: the writer could not start (its message says why: e.g. another process, named by its
                PID, holds the file), the transaction before it held the journal for more than
                `lock_timeout` s, the writer went away during the transaction (nothing of it is kept, unless
                the commit itself was cut: then it is either wholly kept or wholly lost; a rerun is idempotent),
                or the file's schema is newer than this code.
        """
        remote = None
        for attempt in (1, 2):  # a pooled connection to a writer that has since stopped: start a new one
            remote = self._remote()
            try:
                remote.call("begin", timeout=self.lock_timeout)
                break
            except ConnectionError as exc:
                remote.close()
                if attempt == 2:
                    raise JournalError(f"{self.where}: {exc}") from exc
        assert remote is not None
        try:
            try:
                yield JournalTx(remote)
            except BaseException:
                remote.call("rollback")
                raise
            remote.call("commit")
        except ConnectionError as exc:
            remote.close()
            raise JournalError(f"{self.where}: {exc}") from exc
        except BaseException:
            self._give_back(remote)
            raise
        self._give_back(remote)

    def ensure(self) -> None:
        """Create or migrate the journal and its read snapshot (an empty write)."""
        with self.transaction():
            pass
        self.sync()

    def sync(self, timeout: float = 60.0) -> None:
        """Make the read snapshot hold every write completed so far (the writer refreshes it).

        Raises:
            JournalError: there is no journal at `path`; the live file cannot be opened (the message says why:
                corrupt, or held by another process); or the snapshot could not be refreshed (e.g. a full disk:
                the snapshot is older than the journal, and no answer from it is given).
        """
        if self.server:
            self._call("sync", timeout=timeout)
            return
        if not self.path.exists():
            raise JournalError(f"no journal at {self.path} yet: nothing has been recorded (a flow or "
                               "`tradeflow ...` that writes creates it)")
        reply = self._call("sync", start=False, timeout=timeout)
        if reply is not None:
            return
        if self.files.snapshot_is_current():
            return
        # no writer runs and the snapshot is behind the file (a writer was killed): a writer brings it forward
        self._call("sync", timeout=timeout)

    @contextmanager
    def bulk(self) -> Iterator[JournalTx]:
        """One transaction on the file itself, for bulk loads (``tx.con`` is a DuckDB connection: ``register``
        a DataFrame, ``INSERT ... SELECT``), skipping the checks of the ``record_*`` methods (the rows must meet
        them: aware times, finite prices, natural keys). The tables the writes keep (`core.journal.derived`) are
        rebuilt before the commit. No writer may run meanwhile; the snapshot is refreshed after.

        Raises:
            JournalError: a writer is running (stop it, or wait for it to go idle), or the file is held.
        """
        from core.journal.derived import rebuild_all
        from core.journal.server import copy_snapshot

        if self.server:
            raise JournalError(f"a bulk load opens the journal's file: run it on the server host, not here "
                               f"({self.where})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.files.server_lock))
        try:
            lock.acquire(timeout=0)
        except Timeout as exc:
            raise JournalError(f"journal {self.path}: its writer is running; a bulk load needs the file alone") \
                from exc
        try:
            con = duckdb.connect(str(self.path), config=_STORAGE)
            try:
                migrate(con)
                con.execute("BEGIN TRANSACTION")
                try:
                    yield JournalTx(con)
                    rebuild_all(con)
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            finally:
                con.close()
            copy_snapshot(self.files, self.files.live_stamp(), 0)
        finally:
            lock.release()

    def stop_writer(self, timeout: float = 30.0) -> None:
        """Stop the journal's writer if one runs (SIGTERM; it refreshes the snapshot and exits) and wait (nothing
        with a journal server: it is the server host's)."""
        if self.server:
            return
        try:
            pid = int(json.loads(self.files.server_info.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        lock = FileLock(str(self.files.server_lock))
        while time.monotonic() < deadline:
            try:
                lock.acquire(timeout=0.1)
                lock.release()
                return
            except Timeout:
                continue
        raise JournalError(f"journal writer {pid} did not stop within {timeout:g} s")

    # ---- reads ------------------------------------------------------------------------------------------------

    @contextmanager
    def reader(self, *, people: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection on the read snapshot, brought up to date first (`sync`), with TimeZone
        America/New_York. It holds nothing writers need, for as long as it stays open; it sees the writes
        completed before it opened. ``people=True``: also no file outside the journal and no configuration
        change (``enable_external_access=false``: no ATTACH, COPY, read_csv, INSTALL/LOAD; then
        ``lock_configuration=true``: no SET can undo it), for SQL a person types.

        Raises:
            JournalError: as `sync` (no journal yet, live file unusable, snapshot not refreshed).
        """
        if self.server:
            self.sync_copy()
        else:
            self.sync()
        con = duckdb.connect(str(self.snapshot_path), read_only=True,
                             config={"enable_external_access": False} if people else {})
        try:
            con.execute("SET TimeZone = 'America/New_York'")
            if people:
                con.execute("SET lock_configuration = true")
            yield con
        finally:
            con.close()

    def halt_file(self) -> "HaltFile | RemoteHaltFile":
        """The kill switch's file beside this journal: ``HALT`` in its folder, or, with a journal server, the
        server host's through it (`core.controls.KillSwitch`)."""
        return RemoteHaltFile(self) if self.server else HaltFile(self.path.parent / HALT_FILE)

    def sync_copy(self, timeout: float = 60.0) -> Path:
        """With a journal server: make this host's copy of its read snapshot current (fetched only when the
        server's has changed since) and return its path.

        Raises:
            JournalError: the server cannot be reached, or its snapshot could not be refreshed.
        """
        assert self.server is not None
        key_file = self._remote_copy.with_name(self._remote_copy.name + ".key")
        have = key_file.read_text() if key_file.exists() and self._remote_copy.exists() else None
        for attempt in (1, 2):
            remote = self._remote()
            assert remote is not None
            try:
                reply = remote.call("snapshot", have=have, timeout=timeout)
                if not reply.get("same"):
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = self._remote_copy.with_name(self._remote_copy.name + f".{os.getpid()}.tmp")
                    try:
                        remote.read_bytes(int(reply["bytes"]), tmp)
                        os.replace(tmp, self._remote_copy)
                    finally:
                        tmp.unlink(missing_ok=True)
                    key_file.write_text(str(reply["key"]))
            except ConnectionError as exc:
                remote.close()
                if attempt == 2:
                    raise JournalError(f"{self.where}: {exc}") from exc
                continue
            self._give_back(remote)
            break
        return self._remote_copy

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run one read query on the up-to-date snapshot and return its result (columns as the query names
        them).

        Raises:
            JournalError: as `sync`.
            duckdb.Error: the SQL is wrong, or tries to write (the snapshot is read-only).
        """
        with self.reader() as con:
            return con.execute(sql, list(params or [])).df()
