"""The journal's writer: one long-lived process that owns the DuckDB file and takes every process's transactions.

Why (DESIGN.md, issue #14): DuckDB lets one process open a file read-write, or several read-only, never both;
opening a 120 MB journal costs about 20 ms and a checkpoint another 20 ms, and copying the whole file for
readers after each write cost hundreds. The writer opens the file once; a transaction costs what its own
statements cost (a commit appends to DuckDB's write-ahead log, which is fsynced: a committed write survives a
SIGKILL of any process), whatever the journal's size.

* **Start.** The first process that needs the journal while no writer runs starts one
  (``python -m core.journal.server PATH``; `core.journal.store` does it under a spawn lock), detached from it,
  so killing that process does not kill the writer. The writer holds ``journal.duckdb.server.lock`` (an OS file
  lock the kernel drops when it dies), opens and migrates the file, refreshes the read snapshot, listens on
  127.0.0.1 on an ephemeral port and publishes ``{"pid", "host", "port"}`` in ``journal.duckdb.server.json``.
  When the file cannot be opened (a person holds it with the DuckDB CLI, it is corrupt) it writes the reason to
  ``journal.duckdb.server.error`` and exits: the clients raise it (DuckDB's message names the PID holding it).
* **Transactions** come one line of JSON at a time over TCP (`core.journal.codec`): ``begin``, ``exec`` (SQL
  and parameters; the rows come back), ``commit`` or ``rollback``. They run one at a time, in the order they
  begin (the same serial order as the file lock before): a client that disconnects inside one (killed, or its
  connection lost) has it rolled back. This wire is the seam for a server backend ("Beyond one box"): a client
  on another host speaks the same messages to a writer whose storage is PostgreSQL.
* **The read snapshot** (``journal.read.duckdb``) is refreshed in a thread after commits: once writes pause
  for `SNAPSHOT_QUIET_S`, at most `SNAPSHOT_MAX_LAG_S` after a commit, or at once for a reader's ``sync``:
  CHECKPOINT (between transactions), then copy the file while later transactions go on appending to the
  write-ahead log (no checkpoint runs during the copy, and DuckDB writes the file itself only at a checkpoint
  and into free blocks, which the copy's header does not reference), then open the copy read-only to check it,
  then replace the snapshot atomically (``os.replace``). A failed copy (a full disk) leaves no ``.tmp``, keeps
  the previous snapshot and fails ``sync`` requests, never a committed write. ``journal.read.json`` records what
  the snapshot holds (the commit sequence number and the live file's size and mtime after its checkpoint).
* ``sync`` answers once the snapshot holds every transaction committed before it was asked (`Journal.query`,
  `tradeflow sql` ask first, so a new query sees every completed write).
* **Other hosts** (`tradeflow up --role server`, `core.journal.remote`): started with ``--bind ADDRESS --port
  PORT --idle 0`` it listens on that host's address and asks every connection first for the token
  (TRADEFLOW_JOURNAL_TOKEN; ``hello``; required on any address but loopback). Clients on other hosts also ask for
  ``snapshot`` (the read snapshot's bytes after a header line, or ``same`` when their copy is current) and the
  kill switch's file beside the journal (``halt_get``, ``halt_put``, ``halt_remove``), so one HALT file serves
  every host.
* **Stop.** After ``idle`` seconds without a request (TRADEFLOW_JOURNAL_IDLE_SECONDS, default 60; 0: never),
  when its folder is gone, or on SIGTERM, it closes the file, refreshes the snapshot from it and exits. A client
  whose kept connection finds it gone starts a new writer.
"""

from __future__ import annotations

import argparse
import hmac
import json
import secrets
import logging
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from core.journal import codec
from core.journal.base import JournalError
from core.journal.schema import _STORAGE, migrate

log = logging.getLogger("tradeflow.journal.server")

SNAPSHOT_QUIET_S = 0.5
"""The snapshot is refreshed once no transaction has committed for this many seconds (a burst of writes, as at
15:55, costs one copy, after it, instead of slowing it down), ..."""
SNAPSHOT_MAX_LAG_S = 5.0
"""... or once the oldest commit it lacks is this many seconds old (writes that never pause), or at once when a
reader asks (`sync`)."""


@dataclass(frozen=True)
class JournalFiles:
    """The files beside the live journal `path` (all in its folder)."""

    path: Path

    def _beside(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    @property
    def snapshot(self) -> Path:
        """The read snapshot people open (the DuckDB CLI with -readonly, Python read_only=True)."""
        return self.path.with_name(self.path.stem + ".read" + self.path.suffix)

    @property
    def snapshot_meta(self) -> Path:
        return self.path.with_name(self.path.stem + ".read.json")

    @property
    def wal(self) -> Path:
        return self._beside(".wal")

    @property
    def server_lock(self) -> Path:
        return self._beside(".server.lock")

    @property
    def server_info(self) -> Path:
        return self._beside(".server.json")

    @property
    def server_error(self) -> Path:
        return self._beside(".server.error")

    @property
    def server_log(self) -> Path:
        return self._beside(".server.log")

    @property
    def spawn_lock(self) -> Path:
        return self._beside(".spawn.lock")

    def snapshot_is_current(self) -> bool:
        """Whether ``journal.read.json`` says the snapshot was copied from the live file as it is now (checkpointed:
        no write-ahead log left)."""
        try:
            meta = json.loads(self.snapshot_meta.read_text())
            stamp = self.live_stamp()
        except (OSError, ValueError):
            return False
        return (self.snapshot.exists() and stamp["wal"] == 0
                and all(meta.get(k) == stamp[k] for k in ("size", "mtime_ns")))

    def live_stamp(self) -> dict[str, int]:
        """The live file's size and mtime (ns), and its write-ahead log's size: what a snapshot was taken of."""
        st = self.path.stat()
        wal = self.wal.stat().st_size if self.wal.exists() else 0
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "wal": wal}


HALT_FILE = "HALT"
"""The kill switch's file in the state directory beside the journal (`core.controls`)."""


_HALT_WRITE = threading.Lock()


@dataclass(frozen=True)
class HaltFile:
    """The kill switch's file (`core.controls.KillSwitch` reads and writes it; on a worker host, through the
    journal server's ``halt_*`` requests, so every host shares the server host's one switch)."""

    path: Path

    def read(self) -> str | None:
        """Its text, or None when there is no halt. Raises OSError when it exists but cannot be read."""
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None

    def write(self, text: str) -> None:
        """Replace it atomically (a temporary file ``HALT.<pid>.tmp``, then os.replace; one write at a time in a
        process: the journal server's connections are threads). Raises OSError (nothing left behind)."""
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        with _HALT_WRITE:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(text)
                os.replace(tmp, self.path)
            except OSError:
                tmp.unlink(missing_ok=True)
                raise

    def remove(self) -> None:
        """Remove it (nothing when absent). Raises OSError."""
        self.path.unlink(missing_ok=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def copy_snapshot(files: JournalFiles, stamp: dict[str, int], seq: int) -> None:
    """Copy the live file to the snapshot (with ``cp``, in a child process): to a temporary file, checked by
    opening it read-only, then atomically
    replacing the snapshot, then recording `stamp` and `seq` in ``journal.read.json``.

    Raises:
        OSError: the copy failed (e.g. a full disk); the temporary file is removed, the snapshot is unchanged.
        duckdb.Error: the copy does not open as a journal; likewise nothing changed.
    """
    tmp = files.snapshot.with_name(files.snapshot.name + f".{os.getpid()}.tmp")
    try:
        # in a child process: closing any descriptor of the live file in this process would drop the POSIX lock
        # DuckDB holds on it (fcntl locks belong to the process), letting another process open it meanwhile
        done = subprocess.run(["cp", "-T", "--reflink=auto", str(files.path), str(tmp)], capture_output=True, text=True)
        if done.returncode != 0:
            raise OSError(f"copying {files.path} to {tmp}: {done.stderr.strip()}")
        check = duckdb.connect(str(tmp), read_only=True)
        try:
            check.execute("SELECT max(version) FROM schema_version").fetchone()
        finally:
            check.close()
        os.replace(tmp, files.snapshot)
    finally:
        if tmp.is_file():
            tmp.unlink()
    _write_json(files.snapshot_meta, {**stamp, "seq": seq})


def _fatal(exc: BaseException) -> bool:
    """Whether DuckDB gave up on the open database (a checkpoint failing on a full disk is one): after that every
    statement fails ("database has been invalidated ... must be restarted") until the file is opened again."""
    text = str(exc)
    return isinstance(exc, duckdb.FatalException) or "FATAL Error" in text or "has been invalidated" in text


class Writer:
    """The open journal and the state the connection handlers share (one instance a server process).

    A fatal DuckDB error (`_fatal`) stops the writer: the request that met it fails, and the next client starts a
    fresh writer, which opens the file again (its WAL holds every commit), rather than this one answering every
    later request with the same error."""

    def __init__(self, files: JournalFiles, idle: float):
        self.files = files
        self.idle = idle
        self.epoch = secrets.token_hex(8)  # names this writer's snapshots for the clients' cached copies
        self.halt_file = HaltFile(files.path.parent / HALT_FILE)
        self.con = duckdb.connect(str(files.path), config={**_STORAGE})
        self.con.execute("SET wal_autocheckpoint = '1TB'")  # checkpoints only from the snapshot thread
        migrate(self.con)
        self.tx_lock = threading.Lock()
        self.state = threading.Condition()
        self.commit_seq = 0  # transactions committed with changes
        self.snapshot_seq = -1  # commit_seq the snapshot holds
        self.snapshot_error: str | None = None
        self.attempts = 0  # refreshes tried, failed or not
        self.clients = 0
        self.last_activity = time.monotonic()
        self.stopping = threading.Event()
        self.refresh_wanted = threading.Event()
        self.urgent = threading.Event()  # a reader waits (sync): refresh now
        self.last_commit = self.first_unrefreshed = 0.0  # time.monotonic() of those commits
        if self.files.snapshot_is_current():
            self.snapshot_seq = 0  # the last writer left it current: no copy at start
        else:
            self.refresh_wanted.set()  # the first refresh makes the snapshot match the file as opened

    # ---- the snapshot -----------------------------------------------------------------------------------------

    def _refresh_once(self) -> None:
        with self.tx_lock:
            with self.state:
                seq = self.commit_seq
                if seq == self.snapshot_seq and self.snapshot_error is None:
                    return  # nothing committed since the last refresh
            self.con.execute("CHECKPOINT")
            stamp = self.files.live_stamp()
        try:
            copy_snapshot(self.files, stamp, seq)
        except (OSError, duckdb.Error) as exc:
            log.error("read snapshot not refreshed: %s", exc)
            self.check_fatal(exc)
            with self.state:
                self.snapshot_error = f"the read snapshot could not be refreshed: {exc}"
                self.attempts += 1
                self.state.notify_all()
            return
        with self.state:
            self.snapshot_seq, self.snapshot_error = seq, None
            self.attempts += 1
            self.state.notify_all()

    def check_fatal(self, exc: BaseException) -> None:
        """Stop this writer when `exc` is fatal to the open database (class docstring)."""
        if _fatal(exc):
            log.error("the journal's database is invalidated (%s): this writer exits, the next client starts a "
                      "fresh one", exc)
            self.stopping.set()

    def snapshot_loop(self) -> None:
        while not self.stopping.is_set():
            if not self.refresh_wanted.wait(0.5):
                continue
            while not self.urgent.is_set() and not self.stopping.is_set():
                now = time.monotonic()
                if now - self.last_commit >= SNAPSHOT_QUIET_S or now - self.first_unrefreshed >= SNAPSHOT_MAX_LAG_S:
                    break
                self.urgent.wait(0.05)
            self.urgent.clear()
            self.refresh_wanted.clear()
            try:
                self._refresh_once()
            except Exception as exc:  # a checkpoint failed: retried at the next commit; sync reports it
                log.exception("read snapshot refresh failed")
                self.check_fatal(exc)
                with self.state:
                    self.snapshot_error = f"the read snapshot could not be refreshed: {exc}"
                    self.attempts += 1
                    self.state.notify_all()
                time.sleep(0.5)

    def sync(self, timeout: float) -> None:
        """Wait until the snapshot holds every commit made so far. Raises JournalError on a refresh failure or
        after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.state:
            target, attempts = self.commit_seq, self.attempts
            if self.snapshot_seq < target:
                self.refresh_wanted.set()
                self.urgent.set()
            while self.snapshot_seq < target:
                if self.snapshot_error and self.attempts > attempts:  # a refresh tried after this request failed
                    raise JournalError(self.snapshot_error)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise JournalError(f"the read snapshot was not refreshed within {timeout:g} s")
                if self.attempts > attempts:  # that refresh began before this request's commits: one more
                    attempts = self.attempts
                    self.refresh_wanted.set()
                    self.urgent.set()
                self.state.wait(min(left, 0.5))

    def committed(self, changed: bool) -> None:
        if changed:
            now = time.monotonic()
            with self.state:
                if self.commit_seq == self.snapshot_seq:
                    self.first_unrefreshed = now
                self.commit_seq += 1
                self.last_commit = now
            self.refresh_wanted.set()

    # ---- lifetime ---------------------------------------------------------------------------------------------

    def idle_loop(self, server: socketserver.BaseServer) -> None:
        while not self.stopping.wait(0.5):
            gone = not self.files.path.parent.exists()
            quiet = (self.idle > 0 and not self.tx_lock.locked()
                     and time.monotonic() - self.last_activity > self.idle)
            if gone or quiet:
                self.stopping.set()
        server.shutdown()

    def close(self) -> None:
        """Close the file (DuckDB checkpoints it) and refresh the snapshot from the closed file."""
        with self.tx_lock:
            try:
                self.con.close()
            except duckdb.Error as exc:  # an invalidated database: its WAL is read again by the next writer
                log.error("journal closed with an error: %s", exc)
            try:
                if self.files.path.exists():
                    copy_snapshot(self.files, self.files.live_stamp(), self.commit_seq)
            except (OSError, duckdb.Error) as exc:
                log.error("read snapshot not refreshed at exit: %s", exc)


class Handler(socketserver.StreamRequestHandler):
    """One client connection: its transactions, one at a time."""

    server: Any

    def _reply(self, **data: Any) -> None:
        self.wfile.write(codec.dumps({"ok": True, **data}))
        self.wfile.flush()

    def _fail(self, exc: BaseException) -> None:
        kind = "value" if isinstance(exc, ValueError) else "journal" if isinstance(exc, JournalError) else "sql"
        self.wfile.write(codec.dumps({"ok": False, "kind": kind, "error": f"{exc}"}))
        self.wfile.flush()

    def _authenticated(self) -> bool:
        """With a token (a journal server other hosts reach), the first message must be ``hello`` with it."""
        token = self.server.token
        if not token:
            return True
        line = self.rfile.readline()
        try:
            msg = codec.loads(line) if line else {}
        except ValueError:
            msg = {}
        given = str(msg.get("token", "")) if msg.get("op") == "hello" else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            log.warning("refused a journal client from %s: wrong or missing token", self.client_address[0])
            self._fail(JournalError("the journal server refused this client: wrong or missing "
                                    "TRADEFLOW_JOURNAL_TOKEN"))
            return False
        self._reply()
        return True

    def _send_snapshot(self, writer: "Writer", have: str | None, timeout: float) -> None:
        """Bring the snapshot up to date, then send it (a header line ``{"key", "bytes"}`` and the file's bytes),
        or ``{"same": true}`` when the client's copy `have` is that snapshot already."""
        writer.sync(timeout)
        with open(writer.files.snapshot, "rb") as fh:  # opened first: the key read after it is never newer
            with writer.state:
                key = f"{writer.epoch}:{writer.snapshot_seq}"
            if have == key:
                self._reply(same=True, key=key)
                return
            size = os.fstat(fh.fileno()).st_size
            self._reply(key=key, bytes=size)
            self.connection.sendfile(fh)

    def handle(self) -> None:
        writer: Writer = self.server.writer
        if not self._authenticated():
            return
        cur = writer.con.cursor()
        in_tx = False
        with writer.state:
            writer.clients += 1
        try:
            for line in self.rfile:
                writer.last_activity = time.monotonic()
                msg = codec.loads(line)
                op = msg.get("op")
                try:
                    if op == "begin":
                        if not writer.tx_lock.acquire(timeout=float(msg.get("timeout", 60))):
                            raise JournalError(f"another writer held the journal for more than {msg.get('timeout')} s")
                        in_tx = True
                        cur.execute("BEGIN TRANSACTION")
                        wal0 = writer.files.wal.stat().st_size if writer.files.wal.exists() else 0
                        self._reply()
                    elif op == "exec":
                        result = cur.execute(msg["sql"], codec.decode(msg.get("params") or []))
                        columns = [d[0] for d in result.description] if result.description else []
                        rows = result.fetchall() if result.description else []
                        self._reply(columns=columns, rows=codec.encode(rows))
                    elif op in ("commit", "rollback"):
                        if not in_tx:
                            raise JournalError(f"{op} without a transaction")
                        try:
                            cur.execute("COMMIT" if op == "commit" else "ROLLBACK")
                        finally:
                            in_tx = False
                            wal1 = writer.files.wal.stat().st_size if writer.files.wal.exists() else 0
                            writer.tx_lock.release()
                        writer.committed(op == "commit" and wal1 != wal0)
                        self._reply()
                    elif op == "sync":
                        writer.sync(float(msg.get("timeout", 60)))
                        self._reply()
                    elif op == "snapshot":
                        self._send_snapshot(writer, msg.get("have"), float(msg.get("timeout", 60)))
                    elif op == "halt_get":
                        self._reply(halt=writer.halt_file.read())
                    elif op == "halt_put":
                        writer.halt_file.write(str(msg["text"]))
                        self._reply()
                    elif op == "halt_remove":
                        writer.halt_file.remove()
                        self._reply()
                    elif op == "ping":
                        self._reply(pid=os.getpid(), path=str(writer.files.path))
                    else:
                        raise JournalError(f"unknown request {op!r}")
                except OSError as exc:  # the HALT file or the snapshot could not be read or written
                    self._fail(JournalError(f"on the journal server: {exc.strerror or exc}"))
                except (duckdb.Error, JournalError, ValueError, TypeError, KeyError) as exc:
                    self._fail(exc)
                    writer.check_fatal(exc)
        except (ConnectionError, OSError):
            pass
        finally:
            if in_tx:  # the client went away inside a transaction: nothing of it is kept
                try:
                    cur.execute("ROLLBACK")
                except duckdb.Error:
                    pass
                writer.tx_lock.release()
            cur.close()
            with writer.state:
                writer.clients -= 1
            writer.last_activity = time.monotonic()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True  # a fixed port (the server role's) binds again at once after a restart (TIME_WAIT);
    # on Linux a second live listener on it is still refused (that would need SO_REUSEPORT)


def serve(path: Path, idle: float, bind: str = "127.0.0.1", port: int = 0, token: str | None = None) -> int:
    """Run the writer for the journal at `path` until idle or told to stop (module docstring). Returns the exit
    status: 0 done (or another writer already runs), 3 the file could not be opened (reason in .server.error).

    `bind`/`port`: where it listens (loopback and an ephemeral port unless the server role names them); `token`:
    the secret every client must present first (required on any address but loopback: anyone who reaches the
    port could otherwise run SQL on the journal)."""
    if bind not in ("127.0.0.1", "::1", "localhost") and not token:
        raise JournalError(f"a journal server on {bind} needs a token (TRADEFLOW_JOURNAL_TOKEN): every host "
                           "that reaches it could otherwise write the journal")
    from filelock import FileLock, Timeout

    files = JournalFiles(Path(path))
    lock = FileLock(str(files.server_lock))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return 0  # another writer runs: the clients find it
    try:
        files.server_error.unlink(missing_ok=True)
        for stale in files.path.parent.glob(files.snapshot.name + ".*.tmp"):  # a killed writer's half copy
            stale.unlink(missing_ok=True)
        try:
            writer = Writer(files, idle)
        except (duckdb.Error, JournalError) as exc:
            files.server_error.write_text(f"{exc}")
            return 3
        server = _Server((bind, port), Handler)
        server.writer = writer  # type: ignore[attr-defined]
        server.token = token  # type: ignore[attr-defined]
        signal.signal(signal.SIGTERM, lambda *_: writer.stopping.set())
        threading.Thread(target=writer.snapshot_loop, name="snapshot", daemon=True).start()
        threading.Thread(target=writer.idle_loop, args=(server,), name="idle", daemon=True).start()
        host, port = server.server_address[:2]
        _write_json(files.server_info, {"pid": os.getpid(), "host": host, "port": port})
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            files.server_info.unlink(missing_ok=True)
            server.server_close()
            writer.stopping.set()
            writer.close()
        return 0
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the journal's writer process (started by the journal's clients)")
    p.add_argument("path", type=Path)
    p.add_argument("--idle", type=float, default=float(os.environ.get("TRADEFLOW_JOURNAL_IDLE_SECONDS", "60")),
                   help="exit after this many seconds without clients (0: never)")
    p.add_argument("--bind", default="127.0.0.1", help="the address to listen on (the server role: its host's)")
    p.add_argument("--port", type=int, default=0, help="the port to listen on (0: an ephemeral one)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    socket.setdefaulttimeout(None)
    try:
        return serve(args.path, args.idle, args.bind, args.port, os.environ.get("TRADEFLOW_JOURNAL_TOKEN") or None)
    except JournalError as exc:
        print(f"journal server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
