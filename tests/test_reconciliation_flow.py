"""The `reconciliation` flow as a real Prefect flow run against the paper exchange: a scripted day (entries, a
partially filled exit, a position held over the close, another client's round trip) ends with P&L per strategy
equal to its round trips and the exchange's commissions, the end-of-day equity, and the artifacts; a break ends
the run Failed naming the symbol, after everything was recorded."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from core.broker import OrderRequest
from core.calendar import NY
from core.controls import KillSwitch
from core.ib_broker import IBBroker
from core.journal import Journal
from core.orders import OrderGateway
from core.paper_exchange import AdminClient
from core.settings import get_settings
from flows.reconciliation import reconciliation
from tests.broker_support import START

DAY = START.date()
EVENING = dt.datetime(2026, 3, 2, 17, 0, tzinfo=NY)


def _artifacts(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {a.key: str(a.data) for a in found}


def _at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(DAY, dt.time(hour, minute), NY)


def test_a_scripted_day_pnl_per_strategy_is_its_round_trips_and_commissions(exchange, prefect_harness):  # noqa: F811
    settings = get_settings()
    journal = Journal(settings.journal_path)
    admin = AdminClient(exchange.admin_port)
    with IBBroker(client_id=21) as broker, IBBroker(client_id=77) as other:
        gateway = OrderGateway(broker, journal, KillSwitch(settings.state_dir), run_id="scripted")
        with journal.transaction() as tx:  # what the 09:30 equity-snapshot run records
            tx.record_equity_snapshot(DAY, "day_start", broker.account_values().net_liquidation, START)

        def send(strategy, symbol, action, qty, when, intent):
            admin.set_clock(when)
            info = gateway.submit(OrderRequest(symbol, action, qty, f"{strategy}-{symbol}-{when:%H%M}-{intent}"),
                                  strategy=strategy, intent=intent, session=DAY, as_of=when)
            return info

        entry = send("mtf", "AAPL", "BUY", 20, _at(10), "entry")
        gateway.record_fills(broker.wait_for_fill(entry.order_id, 10), "mtf")  # the normal path journals it
        other.place_order(OrderRequest("TSLA", "BUY", 5, "by-hand-buy"))
        admin.partial_fill(0.5)
        send("mtf", "AAPL", "SELL", 20, _at(11), "exit")  # 10 shares at 11:00, 10 at 11:05; never journaled
        admin.set_clock(_at(14))
        other.place_order(OrderRequest("TSLA", "SELL", 5, "by-hand-sell"))
        send("ema", "SMH", "BUY", 10, _at(15, 55), "entry")  # held over the close
        admin.set_clock(EVENING)
        end_equity = broker.account_values().net_liquidation
        smh_close = float(broker.historical_bars("SMH", "1 day", "2 D").iloc[-1].close)

    state = reconciliation(as_of=EVENING, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["breaks"] == [] and summary["pnl_recorded"]

    strategy_of = {"mtf": "mtf", "ema": "ema", "by-hand": "external"}
    commissions: dict[str, float] = {}
    smh_price = None
    for e in exchange.engine.executions:
        name = next(v for k, v in strategy_of.items() if e.order_ref.startswith(k))
        commissions[name] = commissions.get(name, 0.0) + e.commission
        if e.symbol == "SMH":
            smh_price = e.price
    assert len([e for e in exchange.engine.executions if e.symbol == "AAPL"]) == 3  # the exit was partial
    trips = journal.query("SELECT strategy, sum(gross_pnl) AS gross FROM v_round_trips WHERE closed "
                          "GROUP BY strategy").set_index("strategy")["gross"]
    pnl = journal.query("SELECT * FROM daily_pnl WHERE session = ?", [DAY]).set_index("strategy")
    assert sorted(pnl.index) == ["account", "ema", "external", "mtf"]
    for name in ("mtf", "external"):  # flat at the close: net = round trips - commissions
        assert pnl.loc[name, "realized_pnl"] == pytest.approx(trips[name])
        assert pnl.loc[name, "commissions"] == pytest.approx(commissions[name])
        assert pnl.loc[name, "unrealized_pnl"] == 0
        assert pnl.loc[name, "net_pnl"] == pytest.approx(trips[name] - commissions[name])
    assert pnl.loc["ema", "realized_pnl"] == 0
    assert pnl.loc["ema", "unrealized_pnl"] == pytest.approx(10 * (smh_close - smh_price))
    assert pnl.loc["ema", "net_pnl"] == pytest.approx(10 * (smh_close - smh_price) - commissions["ema"])
    for column in ("realized_pnl", "unrealized_pnl", "commissions", "net_pnl"):
        assert pnl.loc["account", column] == pytest.approx(pnl.loc[["ema", "external", "mtf"], column].sum())
    assert pnl.loc["account", "end_equity"] == pytest.approx(end_equity)
    # the paper exchange marks at the same closes: the equity change is the account's P&L to the cent
    start = journal.query("SELECT net_liquidation FROM equity_snapshots WHERE kind = 'day_start'")
    assert end_equity - start["net_liquidation"][0] == pytest.approx(pnl.loc["account", "net_pnl"], abs=0.01)
    assert journal.query("SELECT net_liquidation FROM equity_snapshots WHERE kind = 'end_of_day'"
                         )["net_liquidation"][0] == pytest.approx(end_equity)

    artifacts = _artifacts(state.state_details.flow_run_id)
    assert {"reconciliation", "reconciliation-table", "reconciliation-equity-curve"} <= set(artifacts)
    assert "P&L of 2026-03-02" in artifacts["reconciliation"] and "external" in artifacts["reconciliation"]
    assert re.search(r"of which the strategies' P&L [+-][\d,.]+ and other \(.*?\) [+-]0\.00",
                     artifacts["reconciliation"])  # the equity change is explained to the cent
    assert "data:image/png;base64,iVBOR" in artifacts["reconciliation-equity-curve"]
    assert (settings.state_dir / "reports" / "equity-2026-03-02.png").read_bytes()[:4] == b"\x89PNG"


def test_a_break_ends_the_run_failed_naming_the_symbol_after_recording_it(exchange, prefect_harness):  # noqa: F811
    journal = Journal(get_settings().journal_path)
    with IBBroker(client_id=77) as other:  # bought on a day nobody reconciled: IB forgets it at midnight
        other.place_order(OrderRequest("AAPL", "BUY", 5, "by-hand"))
    next_evening = EVENING + dt.timedelta(days=1)
    AdminClient(exchange.admin_port).set_clock(next_evening)

    state = reconciliation(as_of=next_evening, return_state=True)
    assert state.is_failed() and "AAPL broker 5 vs journal 0" in state.message
    assert "tradeflow resolve" in state.message
    with journal.transaction() as tx:
        assert [b["symbol"] for b in tx.open_breaks()] == ["AAPL"]
    assert journal.query("SELECT count(*) AS n FROM daily_pnl WHERE session = ?",
                         [next_evening.date()])["n"][0] == 4  # the P&L went in before the run failed
    failed = journal.query("SELECT outcome FROM flow_events WHERE event = 'failed'")["outcome"][0]
    assert "PositionBreaksFound" in failed and "AAPL" in failed
    assert "AAPL" in _artifacts(state.state_details.flow_run_id)["reconciliation"]
