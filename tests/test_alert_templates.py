"""The per-run notice's subject, rendered by Prefect's own template renderer (the one its automations use): a run
whose orders went out while the journal could not record them says "ORDERS SENT, JOURNAL BEHIND" first."""

from __future__ import annotations

from types import SimpleNamespace

from prefect.server.utilities.user_templates import render_user_template_sync

from deployments.alerts import SUBJECT


def _subject(state_name: str, message: str | None) -> str:
    run = SimpleNamespace(name="ema-entry 2026-03-02 15:55", state=SimpleNamespace(name=state_name, message=message))
    return render_user_template_sync(SUBJECT, {"deployment": SimpleNamespace(name="ema-entry"), "flow_run": run})


def test_orders_sent_with_the_journal_behind_leads_the_subject():
    message = "JournalBehindError: ORDERS SENT, JOURNAL BEHIND: sent BUY 10 SMH (ema entry, ref ema-SMH-20260302-entry)"
    assert _subject("Failed", message) == \
        "ORDERS SENT, JOURNAL BEHIND: tradeflow: ema-entry run ema-entry 2026-03-02 15:55 Failed"


def test_other_failures_keep_the_plain_subject():
    assert _subject("Failed", "ConnectionRefusedError: 127.0.0.1:4002") == \
        "tradeflow: ema-entry run ema-entry 2026-03-02 15:55 Failed"
    assert _subject("Crashed", None) == "tradeflow: ema-entry run ema-entry 2026-03-02 15:55 Crashed"
