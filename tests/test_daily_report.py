"""The daily report: after the evening reconciliation of a session traded on the paper exchange (an MTF round
trip, an EMA entry held over the close), one notification reaches a local receiver through the alerts block,
carrying the same P&L per strategy as `v_daily_pnl` / `daily_pnl`, the equity change, the open position, the
fills, no breaks and the link to the reconciliation artifact; TRADEFLOW_FILL_NOTIFICATIONS adds one per fill;
TRADEFLOW_DAILY_REPORT=false sends nothing. The real reconciliation flow on the session's Prefect server."""

from __future__ import annotations

import datetime as dt

import pytest

from core.broker import OrderRequest
from core.calendar import NY
from core.controls import KillSwitch
from core.ib_broker import IBBroker
from core.journal import Journal
from core.orders import OrderGateway
from core.paper_exchange import AdminClient
from core.settings import get_settings
from deployments.alerts import save_block
from deployments.deploy import run
from deployments.processes import wait_for
from tests.alert_support import Receiver
from tests.broker_support import START

pytestmark = pytest.mark.prefect_server

DAY = START.date()
EVENING = dt.datetime(2026, 3, 2, 17, 0, tzinfo=NY)


async def _saved(url: str):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await save_block(url, client)


def _at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(DAY, dt.time(hour, minute), NY)


def test_the_report_after_a_traded_session_carries_the_journal_pnl(exchange, prefect_harness, monkeypatch):
    from flows.reconciliation import reconciliation

    receiver = Receiver()
    run(_saved(receiver.url))  # the session's server may hold an Apprise block of that name from another test
    monkeypatch.setenv("TRADEFLOW_FILL_NOTIFICATIONS", "true")
    get_settings.cache_clear()
    settings = get_settings()
    journal = Journal(settings.journal_path)
    admin = AdminClient(exchange.admin_port)
    try:
        with IBBroker(client_id=21) as broker:
            gateway = OrderGateway(broker, journal, KillSwitch(settings.state_dir), run_id="scripted")
            with journal.transaction() as tx:
                tx.record_equity_snapshot(DAY, "day_start", broker.account_values().net_liquidation, START)
            for strategy, symbol, action, qty, when, intent in (
                    ("mtf", "AAPL", "BUY", 20, _at(10), "entry"), ("mtf", "AAPL", "SELL", 20, _at(11), "exit"),
                    ("ema", "SMH", "BUY", 10, _at(15, 55), "entry")):
                admin.set_clock(when)
                info = gateway.submit(OrderRequest(symbol, action, qty, f"{strategy}-{symbol}-{when:%H%M}-{intent}"),
                                      strategy=strategy, intent=intent, session=DAY, as_of=when)
                gateway.record_fills(broker.wait_for_fill(info.order_id, 10), strategy)
            admin.set_clock(EVENING)
        state = reconciliation(as_of=EVENING, return_state=True)
        assert state.is_completed(), state.message
        wait_for(lambda: receiver.about("daily report 2026-03-02") and len(receiver.bodies) >= 4, 60,
                 "the daily report and the three fill notices")
        monkeypatch.setenv("TRADEFLOW_DAILY_REPORT", "false")
        monkeypatch.setenv("TRADEFLOW_FILL_NOTIFICATIONS", "false")
        get_settings.cache_clear()
        again = reconciliation(as_of=EVENING, return_state=True)  # switched off: nothing more
        assert again.is_completed()
    finally:
        receiver.close()
    report, = receiver.about("daily report 2026-03-02")
    assert len(receiver.about("tradeflow: fill ")) == 3 and len(receiver.bodies) == 4
    view = journal.query("SELECT strategy, realized_net_pnl, commissions FROM v_daily_pnl WHERE session = ?",
                         [DAY]).set_index("strategy")
    pnl = journal.query("SELECT strategy, net_pnl FROM daily_pnl WHERE session = ?", [DAY]).set_index("strategy")
    # flat at the close: the MTF net is its round trip less commissions, as v_daily_pnl has it
    assert pnl.loc["mtf", "net_pnl"] == pytest.approx(view.loc["mtf", "realized_net_pnl"], abs=0.005)
    for name in ("mtf", "ema", "account"):
        assert f"{name:<10} net {pnl.loc[name, 'net_pnl']:+,.2f}" in report
    assert f"commissions {view.loc['mtf', 'commissions']:,.2f}" in report
    assert "Open positions: SMH 10 (ema" in report and "fills: 3" in report and "Breaks: none" in report
    assert "Equity (NetLiquidation):" in report and "/artifacts/key/reconciliation" in report
