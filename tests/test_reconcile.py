"""Reconciliation: the pure decisions (linking, external orders, order states, breaks, daily P&L) on hand-made
snapshots, then against the paper exchange with the real IBBroker and journal: a fill whose journal write never
happened, orders of another client, a break blocking its symbol until `tradeflow resolve`, `--export`."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt

import pytest

from core.broker import Execution, OrderInfo, OrderRequest, Position
from core.calendar import NY
from core.controls import KillSwitch, operator
from core.ib_broker import IBBroker
from core.journal import Journal
from core.orders import OrderGateway, PositionBreakError
from core.reconcile import (
    BrokerState,
    Fill,
    JournalExecution,
    JournalOrder,
    JournalState,
    daily_pnl,
    plan_reconciliation,
    positions_to_mark,
)
from core.settings import get_settings
from deployments.cli import main
from core.paper_exchange import AdminClient
from tasks.reconcile import reconcile_account
from tests.broker_support import START

DAY = START.date()
EVENING = dt.datetime(2026, 3, 2, 17, 0, tzinfo=NY)


# --------------------------------------------------------------------------------------------------------------
# pure decisions


def _exec(exec_id, perm_id, ref, symbol="AAPL", side="BUY", shares=10.0, price=100.0, commission=1.0,
          when=START) -> Execution:
    return Execution(exec_id=exec_id, order_id=1, perm_id=perm_id, order_ref=ref, symbol=symbol, side=side,
                     shares=shares, price=price, time=when, commission=commission, realized_pnl=0.0, account="DU1")


def _info(perm_id, ref, status="Filled", symbol="AAPL", action="BUY", quantity=10.0, filled=10.0) -> OrderInfo:
    return OrderInfo(order_id=1, perm_id=perm_id, order_ref=ref, symbol=symbol, action=action, quantity=quantity,
                     order_type="MKT", limit_price=None, stop_price=None, status=status, filled=filled,
                     remaining=quantity - filled, avg_fill_price=100.0 if filled else 0.0, commission=1.0)


def _order(ref, perm_id=None, status="Created", symbol="AAPL", quantity=10.0, as_of=START, filled=0.0):
    return JournalOrder(order_ref=ref, perm_id=perm_id, order_id=None, strategy="mtf", symbol=symbol, action="BUY",
                        quantity=quantity, status=status, external=False, session=as_of.date(), as_of=as_of,
                        filled=filled)


def _broker(executions=(), positions=(), open_orders=(), completed=(), when=EVENING) -> BrokerState:
    return BrokerState(time=when, account="DU1", positions=tuple(positions), open_orders=tuple(open_orders),
                       completed_orders=tuple(completed), executions=tuple(executions))


def test_a_fill_is_linked_by_order_ref_and_takes_its_orders_strategy():
    broker = _broker([_exec("e1", 501, "mtf-AAPL-x-entry")], [Position("DU1", "AAPL", 10, 100.1)],
                     completed=[_info(501, "mtf-AAPL-x-entry")])
    plan = plan_reconciliation(broker, JournalState(orders=(_order("mtf-AAPL-x-entry"),)), as_of=EVENING)
    [e] = plan.executions
    assert (e.order_ref, e.strategy, e.external, e.side, e.commission, e.new) == \
        ("mtf-AAPL-x-entry", "mtf", False, "BOT", 1.0, True)
    [s] = plan.statuses
    assert (s.status, s.filled, s.perm_id) == ("Filled", 10.0, 501)
    assert not plan.external_orders and not plan.disagreements and plan.failure() is None


def test_a_fill_with_an_unknown_order_is_external_and_a_known_one_only_gets_its_missing_commission():
    broker = _broker([_exec("e1", 501, "mtf-ref"), _exec("e2", 777, "typed-in-tws", side="SELL", shares=4)],
                     [Position("DU1", "AAPL", 6, 100.0)], completed=[_info(777, "typed-in-tws", action="SELL",
                                                                           quantity=4, filled=4)])
    journal = JournalState(
        orders=(_order("mtf-ref", perm_id=501, status="Filled", filled=10),),
        executions={"e1": JournalExecution("e1", "AAPL", "BOT", 10, START, commission=None)},
        quantities={"AAPL": 10.0})
    plan = plan_reconciliation(broker, journal, as_of=EVENING)
    by_id = {e.exec_id: e for e in plan.executions}
    assert not by_id["e1"].new and by_id["e1"].commission == 1.0  # only the commission is filled in
    assert by_id["e2"].new and by_id["e2"].external and by_id["e2"].strategy == "external"
    [x] = plan.external_orders
    assert (x.order_ref, x.order.action, x.order.quantity, x.order.order_ref) == \
        ("external-777", "SELL", 4, "typed-in-tws")
    assert [p.agrees for p in plan.positions] == [True]


def test_an_order_never_sent_is_closed_after_its_session_and_left_alone_before():
    order = _order("mtf-AAPL-never-sent")
    after = plan_reconciliation(_broker(), JournalState(orders=(order,)), as_of=EVENING)
    assert [(s.order_ref, s.status) for s in after.statuses] == [("mtf-AAPL-never-sent", "Inactive")]
    during = plan_reconciliation(_broker(when=START + dt.timedelta(hours=1)), JournalState(orders=(order,)),
                                 as_of=START)
    assert not during.statuses and "not known to the broker" in during.warnings[0]


def test_a_final_state_is_kept_and_the_brokers_different_one_goes_to_its_history():
    cancelled = _order("mtf-AAPL-x-exit", perm_id=501, status="Cancelled")
    broker = _broker([_exec("e1", 501, "mtf-AAPL-x-exit")], [Position("DU1", "AAPL", 10, 100.0)],
                     completed=[_info(501, "mtf-AAPL-x-exit")])  # the fill won the race with the cancel
    plan = plan_reconciliation(broker, JournalState(orders=(cancelled,)), as_of=EVENING)
    assert [(s.order_ref, s.status) for s in plan.statuses] == [("mtf-AAPL-x-exit", "Filled")]
    assert "the recorded state is kept" in plan.warnings[0] and [e.new for e in plan.executions] == [True]


def test_a_disagreement_is_a_break_once_per_session_and_a_fill_between_the_reads_asks_for_a_fresh_read():
    broker = _broker(positions=[Position("DU1", "TSLA", 5, 300.0)])
    plan = plan_reconciliation(broker, JournalState(), as_of=EVENING)
    assert [(b.symbol, b.broker_quantity, b.journal_quantity) for b in plan.new_breaks] == [("TSLA", 5.0, 0.0)]
    assert "TSLA broker 5 vs journal 0" in plan.failure()
    recorded = {"symbol": "TSLA", "detected_session": DAY, "broker_quantity": 5.0, "journal_quantity": 0.0,
                "resolved_at": None}
    again = plan_reconciliation(broker, JournalState(breaks=(recorded,)), as_of=EVENING)
    assert not again.new_breaks and "TSLA" in again.open_breaks
    # the journal has a fill of the day that the broker's snapshot lacks: a fill landed between the reads
    racing = JournalState(executions={"late": JournalExecution("late", "TSLA", "BOT", 5, EVENING, 1.0)},
                          quantities={"TSLA": 5.0})
    assert plan_reconciliation(_broker(), racing, as_of=EVENING).retry


def _fill(strategy, shares, price, hour, day=DAY, commission=1.0, symbol="AAPL"):
    when = dt.datetime.combine(day, dt.time(hour), NY)
    return Fill(strategy, symbol, shares, price, commission, when, f"{strategy}{day}{hour}{shares}")


def test_daily_pnl_average_cost_partial_exits_flips_and_shorts():
    fills = [_fill("mtf", 10, 100, 10), _fill("mtf", 10, 110, 11),      # avg cost 105
             _fill("mtf", -5, 120, 12),                                  # realized 5 x 15 = 75
             _fill("mtf", -25, 100, 13),                                 # realized 15 x -5 = -75, then short 10 @ 100
             _fill("ema", -4, 50, 10, symbol="SMH"), _fill("ema", 4, 45, 11, symbol="SMH")]  # short: +20
    pnl = daily_pnl(fills, DAY, {"AAPL": 98.0}, {})
    assert pnl["mtf"].realized == pytest.approx(0.0)
    assert pnl["mtf"].holdings["AAPL"].quantity == -10 and pnl["mtf"].unrealized == pytest.approx(20.0)
    assert pnl["mtf"].commissions == 4 and pnl["mtf"].net == pytest.approx(16.0)
    assert pnl["ema"].realized == pytest.approx(20.0) and pnl["ema"].net == pytest.approx(18.0)
    assert pnl["external"].net == 0 and pnl["external"].fills == 0  # always reported


def test_daily_pnl_of_a_position_held_over_days_adds_up_to_its_round_trip():
    day2 = DAY + dt.timedelta(days=1)
    fills = [_fill("ema", 100, 50.0, 15), _fill("ema", -100, 53.0, 10, day=day2)]
    assert positions_to_mark(fills, DAY) == ({"AAPL"}, set())
    assert positions_to_mark(fills, day2) == (set(), {"AAPL"})
    first = daily_pnl(fills, DAY, {"AAPL": 51.5}, {})["ema"]
    second = daily_pnl(fills, day2, {}, {"AAPL": 51.5})["ema"]
    assert (first.net, second.net) == (pytest.approx(150.0 - 1), pytest.approx(300.0 - 150.0 - 1))
    assert first.net + second.net == pytest.approx((53.0 - 50.0) * 100 - 2)
    with pytest.raises(ValueError, match="AAPL"):
        daily_pnl(fills, DAY, {}, {})  # an open position needs its close


# --------------------------------------------------------------------------------------------------------------
# against the paper exchange


def journal_tables(journal: Journal) -> dict[str, list[tuple]]:
    """Every row of every table of the journal (to prove a second run changes nothing)."""
    with journal.reader() as con:
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' ORDER BY 1").fetchall()]
        return {n: sorted((con.execute(f'SELECT * FROM "{n}"').fetchall()), key=repr) for n in names}


class DiesAfterSending(IBBroker):
    """An IBBroker whose process 'dies' right after the order went out: nothing after the send is journaled."""

    def place_order(self, request: OrderRequest):
        super().place_order(request)
        raise KeyboardInterrupt("process killed after sending")


@pytest.fixture
def parts(exchange):  # noqa: F811
    settings = get_settings()
    journal = Journal(settings.journal_path)
    with IBBroker(client_id=21, settings=settings) as broker:
        yield broker, journal, OrderGateway(broker, journal, KillSwitch(settings.state_dir), run_id="test-run"), \
            AdminClient(exchange.admin_port)


def test_a_fill_whose_journal_write_never_happened_is_found_once(parts, exchange):  # noqa: F811
    broker, journal, _, admin = parts
    ref = "mtf-TSLA-20260302T1000-entry"
    with DiesAfterSending(client_id=31) as dying:
        gateway = OrderGateway(dying, journal, KillSwitch(get_settings().state_dir), run_id="dead-run")
        with pytest.raises(KeyboardInterrupt):
            gateway.submit(OrderRequest("TSLA", "BUY", 10, ref), strategy="mtf", intent="entry", session=DAY,
                           as_of=START)
    before = journal.query("SELECT status, perm_id FROM orders WHERE order_ref = ?", [ref])
    assert before["status"][0] == "Created" and before["perm_id"].isna().all()  # journaled, then "killed"
    assert journal.query("SELECT count(*) AS n FROM executions")["n"][0] == 0
    admin.set_clock(EVENING)
    [sent] = [e for e in exchange.engine.executions if e.order_ref == ref]

    first = reconcile_account(broker, journal, EVENING, run_id="recon-1")
    assert first.recorded["executions"] == 1 and first.failure is None
    row = journal.query("SELECT e.*, o.status AS order_status, o.perm_id AS order_perm FROM executions e "
                        "JOIN orders o USING (order_ref) WHERE order_ref = ?", [ref]).iloc[0]
    assert (row["exec_id"], row["strategy"], row["commission"], row["shares"]) == \
        (sent.exec_id, "mtf", sent.commission, 10.0)
    assert row["order_status"] == "Filled" and row["order_perm"] == row["perm_id"] == sent.perm_id
    assert not row["external"]
    tables = journal_tables(journal)

    second = reconcile_account(broker, journal, EVENING, run_id="recon-1")
    assert journal_tables(journal) == tables
    assert not any(second.recorded.values())


def test_orders_of_another_client_are_recorded_as_external(parts, exchange):  # noqa: F811
    broker, journal, gateway, admin = parts
    gateway.submit(OrderRequest("AAPL", "BUY", 10, "mtf-AAPL-20260302T1000-entry"), strategy="mtf",
                   intent="entry", session=DAY, as_of=START)
    with IBBroker(client_id=77) as other:  # someone trading the account from elsewhere
        filled = other.place_order(OrderRequest("SMH", "BUY", 3, "typed-in-tws"))
        working = other.place_order(OrderRequest("AAPL", "BUY", 1, "cheap-bid", order_type="LMT", limit_price=1.0,
                                                 tif="GTC"))
    admin.set_clock(EVENING)
    result = reconcile_account(broker, journal, EVENING)
    assert result.failure is None
    orders = journal.query("SELECT order_ref, perm_id, strategy, intent, external, status, symbol FROM orders "
                           "ORDER BY order_ref").set_index("order_ref")
    smh, bid = f"external-{filled.perm_id}", f"external-{working.perm_id}"
    assert list(orders.loc[smh, ["strategy", "intent", "external", "status", "symbol"]]) == \
        ["external", "external", True, "Filled", "SMH"]
    assert list(orders.loc[bid, ["external", "status"]]) == [True, "Submitted"]
    assert not orders.loc["mtf-AAPL-20260302T1000-entry", "external"]
    fills = journal.query("SELECT order_ref, strategy, external, commission FROM executions ORDER BY order_ref")
    assert fills.to_dict("records") == [
        {"order_ref": smh, "strategy": "external", "external": True, "commission": 1.0},
        {"order_ref": "mtf-AAPL-20260302T1000-entry", "strategy": "mtf", "external": False, "commission": 1.0}]
    msg = journal.query("SELECT message FROM order_events WHERE order_ref = ?", [smh])["message"][0]
    assert "typed-in-tws" in msg
    assert journal.query("SELECT * FROM v_journal_positions WHERE symbol = 'SMH'")["quantity"][0] == 3


def test_a_break_blocks_its_symbol_until_resolved(parts, exchange, capsys):  # noqa: F811
    broker, journal, gateway, admin = parts
    with IBBroker(client_id=77) as other:  # bought on a day nobody reconciled: IB forgets it at midnight
        other.place_order(OrderRequest("AAPL", "BUY", 5, "forgotten"))
    next_day = dt.datetime(2026, 3, 3, 10, 0, tzinfo=NY)
    admin.set_clock(next_day)
    result = reconcile_account(broker, journal, next_day)
    assert result.failure and "AAPL broker 5 vs journal 0" in result.failure
    with journal.transaction() as tx:
        breaks = tx.open_breaks()
    assert [(b["symbol"], b["detected_session"], b["broker_quantity"], b["journal_quantity"]) for b in breaks] == \
        [("AAPL", next_day.date(), 5.0, 0.0)]
    entry = OrderRequest("AAPL", "BUY", 1, "mtf-AAPL-20260303T1000-entry")
    with pytest.raises(PositionBreakError, match="tradeflow resolve AAPL"):
        gateway.submit(entry, strategy="mtf", intent="entry", session=next_day.date(), as_of=next_day)
    assert not [o for o in exchange.engine.orders.values() if o.order_ref == entry.order_ref]
    tsla = OrderRequest("TSLA", "BUY", 1, "mtf-TSLA-20260303T1000-entry")
    assert gateway.submit(tsla, strategy="mtf", intent="entry", session=next_day.date(), as_of=next_day).order_id

    assert main(["resolve", "AAPL", "--note", "bought by hand on 03-02; position confirmed in TWS"]) == 0
    assert "adjustment +5 shares" in capsys.readouterr().out
    control = journal.query("SELECT action, who, reason, symbol FROM controls").to_dict("records")
    assert control == [{"action": "resolve", "who": operator(), "symbol": "AAPL",
                        "reason": "bought by hand on 03-02; position confirmed in TWS"}]
    assert journal.query("SELECT quantity FROM v_journal_positions WHERE symbol = 'AAPL'")["quantity"][0] == 5
    assert gateway.submit(entry, strategy="mtf", intent="entry", session=next_day.date(), as_of=next_day).order_id
    admin.set_clock(next_day + dt.timedelta(minutes=5))
    after = reconcile_account(broker, journal, next_day + dt.timedelta(minutes=5))
    assert after.failure is None and not after.plan.new_breaks
    assert main(["resolve", "AAPL", "--note", "again"]) == 1  # nothing left to resolve


def test_the_broker_connects_after_asyncio_run_left_the_thread_without_a_loop(exchange):  # noqa: F811
    asyncio.run(asyncio.sleep(0))  # as a Prefect client call does (tests/test_prefect_server.py)
    with IBBroker(client_id=23) as broker:
        assert broker.current_time() == START


def test_export_writes_the_three_files(parts, exchange, tmp_path, capsys):  # noqa: F811
    broker, journal, gateway, admin = parts
    gateway.submit(OrderRequest("AAPL", "BUY", 10, "mtf-AAPL-20260302T1000-entry"), strategy="mtf",
                   intent="entry", session=DAY, as_of=START)
    admin.partial_fill(0.5)
    gateway.submit(OrderRequest("TSLA", "BUY", 4, "mtf-TSLA-20260302T1000-entry"), strategy="mtf",
                   intent="entry", session=DAY, as_of=START)
    admin.set_clock(START + dt.timedelta(minutes=30))
    assert main(["reconcile", "--export", str(tmp_path / "day.csv")]) == 0
    out = capsys.readouterr().out
    assert "RESULT: the journal agrees with the broker" in out and "computed, not recorded" not in out
    assert "before the close" in out  # 10:30: P&L so far, not recorded

    def read(name):
        with (tmp_path / f"day_{name}.csv").open(newline="") as fh:
            return list(csv.reader(fh))

    positions, orders, executions = read("positions"), read("orders"), read("executions")
    assert positions[0][:4] == ["symbol", "broker_quantity", "broker_avg_cost", "journal_quantity"]
    assert sorted(r[0] for r in positions[1:]) == sorted(p.symbol for p in broker.positions()) == ["AAPL", "TSLA"]
    assert orders[0][0] == "order_ref" and len(orders) == 1 + 2
    assert executions[0][0] == "exec_id" and len(executions) == 1 + len(broker.executions()) == 1 + 3
    assert journal.query("SELECT count(*) AS n FROM daily_pnl")["n"][0] == 0  # by hand: never the day's P&L
