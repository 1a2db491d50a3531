"""The journal: a DuckDB file holding every decision, order, fill, equity snapshot, model and model metric.

This package is the only place the journal's SQL is written (except what people type at `tradeflow sql`):

* `store`: opening the journal, concurrency between processes, the read snapshot people query;
* `schema`: the tables and views, and the migrations that bring an older file forward on first open;
* one module per table family, each a mixin of the transaction with its ``record_*`` writes and named, typed
  reads: `orders` (orders, their status changes, executions), `decisions` (signals, EMA state, flow events),
  `account` (equity and position snapshots, daily P&L), `models` (the model registry: versions with their
  files, champions; the versions' statuses and metrics), `controls`
  (operator actions), `reconciliation` (position breaks and adjustments).

Writes are idempotent on natural keys: executions by `exec_id`, orders by `order_ref`, equity snapshots by
(session, kind), signals by (strategy, symbol, as_of), EMA state by (symbol, session), flow events by
(run_id, event). A repeated write changes nothing already recorded.
"""

import duckdb

from core.journal.base import JournalError
from core.journal.schema import MIGRATIONS, SCHEMA_VERSION
from core.journal.store import Journal
from core.journal.tx import JournalTx
from core.journal.views import *  # noqa: F401,F403 - the named reads of `tradeflow status` and the charts
from core.order_status import OrderStatus

TERMINAL_ORDER_STATUSES = OrderStatus.DONE
"""IB order statuses after which an order never changes again (`OrderStatus.DONE`)."""

UNAVAILABLE = (JournalError, OSError, duckdb.Error)
"""What a journal transaction raises when the journal cannot be written now: another process holds the file (the
DuckDB CLI on the live journal), a full or read-only disk, the writer gone. A caller that must go on whatever the
journal does (an order already sent must still get its stop) keeps the write and writes it when the journal is
back (`core.orders.OrderGateway.write_or_keep`)."""

__all__ = ["UNAVAILABLE", "MIGRATIONS", "SCHEMA_VERSION", "TERMINAL_ORDER_STATUSES", "Journal", "JournalError", "JournalTx",
           "OrderStatus"]
