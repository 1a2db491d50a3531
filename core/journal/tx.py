"""`JournalTx`: the writes and named reads of one journal transaction, all table families together."""

from __future__ import annotations

from core.journal.account import AccountTx
from core.journal.controls import ControlsTx
from core.journal.decisions import DecisionsTx
from core.journal.models import ModelsTx
from core.journal.orders import OrdersTx
from core.journal.reconciliation import ReconciliationTx


class JournalTx(OrdersTx, DecisionsTx, AccountTx, ModelsTx, ControlsTx, ReconciliationTx):
    """The writes of one journal transaction. Obtain it from `Journal.transaction()`; every ``record_*`` method
    is idempotent on its natural key and returns True when it recorded something new; the named reads see the
    live journal, this transaction's own writes included.

    ``con`` is the transaction's connection. Bulk loads (an import, bench/journal_scale.py) use
    `Journal.bulk()` instead, whose ``con`` is the DuckDB connection itself."""
