"""Opening the journal: the writer lock, short-lived connections, the read snapshot."""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
from filelock import FileLock, Timeout

from core.journal.base import JournalError
from core.journal.schema import _STORAGE, migrate
from core.journal.tx import JournalTx


@dataclass
class Journal:
    """The journal at `path` (a DuckDB file), its read snapshot and its writer lock.

    Args:
        path: the live DuckDB file, written only through this class.
        lock_timeout: seconds a writer waits for the writer lock (other flows writing) before
            `JournalError`; a flow's write normally waits milliseconds.
    """

    path: Path
    lock_timeout: float = 60.0

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def snapshot_path(self) -> Path:
        """The read snapshot people query (`tradeflow sql`, the DuckDB CLI with `-readonly`)."""
        return self.path.with_name(self.path.stem + ".read" + self.path.suffix)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _connect_live(self, deadline: float) -> duckdb.DuckDBPyConnection:
        delay = 0.005
        while True:
            try:
                return duckdb.connect(str(self.path), config=_STORAGE)
            except duckdb.IOException as exc:
                # another process (not a journal writer: those hold our lock) has the file open
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise JournalError(f"journal {self.path}: cannot open for writing: {exc}") from exc
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.25)

    @property
    def _wal_path(self) -> Path:
        return self.path.with_name(self.path.name + ".wal")

    def _refresh_snapshot(self) -> Path | None:
        """Copy the live file to the snapshot and atomically replace it (the caller holds the writer lock).

        The previous snapshot is first hard-linked to ``<snapshot>.<pid>.retired`` so that ``os.replace`` does
        not free its blocks inside the lock (on ext4 that costs as much as the copy: about 50 ms for a 120 MB
        journal, bench/journal_scale.py); the caller unlinks it after releasing the lock (:meth:`_drop_retired`).
        Returns that link, or None when there was no snapshot or the file system has no hard links.
        """
        tmp = self.snapshot_path.with_name(self.snapshot_path.name + f".{os.getpid()}.tmp")
        shutil.copyfile(self.path, tmp)
        retired: Path | None = self.snapshot_path.with_name(self.snapshot_path.name + f".{os.getpid()}.retired")
        try:
            retired.unlink(missing_ok=True)
            os.link(self.snapshot_path, retired)
        except OSError:  # no snapshot yet, or no hard links here: os.replace frees the old one itself
            retired = None
        os.replace(tmp, self.snapshot_path)
        return retired

    def _drop_retired(self) -> None:
        """Unlink every retired snapshot link (this writer's, and any a crashed writer left), outside the lock.
        A reader that still has an old snapshot open keeps reading it: unlinking frees it only once closed."""
        for path in self.snapshot_path.parent.glob(self.snapshot_path.name + ".*.retired"):
            path.unlink(missing_ok=True)

    @contextmanager
    def transaction(self) -> Iterator[JournalTx]:
        """One write: everything recorded inside commits together, or nothing does (an exception rolls back
        and propagates). On exit the read snapshot shows it.

        Raises:
            JournalError: the writer lock or the file could not be had within `lock_timeout`, or the file's
                schema is newer than this code.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout
        try:
            lock = FileLock(str(self.lock_path), timeout=self.lock_timeout)
            lock.acquire(poll_interval=0.005)  # filelock polls; its 50 ms default starves waiting writers
        except Timeout as exc:
            raise JournalError(
                f"journal {self.path}: another writer held the lock for more than {self.lock_timeout} s"
            ) from exc
        try:
            con = self._connect_live(deadline)
            try:
                migrate(con)
                con.execute("BEGIN TRANSACTION")
                try:
                    yield JournalTx(con)
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
                # a transaction that changed nothing (a read through tx.fetch, a repeated idempotent write) leaves
                # no write-ahead log: then the checkpoint and the full-file snapshot copy are skipped
                changed = self._wal_path.exists() and self._wal_path.stat().st_size > 0
                if changed:
                    con.execute("CHECKPOINT")
            finally:
                con.close()
            retired = self._refresh_snapshot() if changed or not self.snapshot_path.exists() else None
        finally:
            lock.release()
        if retired is not None:
            self._drop_retired()

    def ensure(self) -> None:
        """Create or migrate the journal and its read snapshot (an empty write)."""
        with self.transaction():
            pass

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection on the read snapshot, with TimeZone America/New_York. It holds no lock
        that writers need, for as long as it stays open; it sees the writes completed before it opened."""
        if not self.snapshot_path.exists():
            self.ensure()
        con = duckdb.connect(str(self.snapshot_path), read_only=True)
        try:
            con.execute("SET TimeZone = 'America/New_York'")
            yield con
        finally:
            con.close()

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run one read query on the snapshot and return its result (columns as the query names them).

        Raises:
            duckdb.Error: the SQL is wrong, or tries to write (the snapshot is read-only).
        """
        with self.reader() as con:
            return con.execute(sql, list(params or [])).df()

