"""The signals strategy (seed 004) as a unit: its rules alone (rule file, same-side/opposite signals, limits, the
daily loss halt, ATR stops), its signal source (key, protocol), and a replayed session on AAPL, TSLA and SMH of the
shared 5-minute bars through the real flow, the paper exchange and the evening reconciliation: entries placed as IB
brackets (stop-loss and take-profit children of the entry, one OCA group), stop-losses and take-profits filled with
their siblings cancelled, scale-ins changing the children's quantity, a reversal, no break, reruns sending nothing
twice."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest

from core.calendar import NY, session_on
from core.settings import PROJECT_ROOT
from strategies.signals.rules import (Bracket, Limits, RuleFileError, Signal, TickerState, halted_reason,
                                      load_rules, plan_ticker, position_from_fills, session_pnl)
from strategies.signals.source import LocalSignalSource, SignalSourceError, fetch_signals, momentum_signal

RULES = load_rules((PROJECT_ROOT / "strategies/signals/rules.yaml").read_text())
LIMITS = Limits(position_usd=10_000, max_position_usd=15_000, max_positions=2, max_daily_loss_usd=500)
PAIR = Bracket("signals-AAPL-20260303T1000-sl", "signals-AAPL-20260303T1000-tp", 50, 196.0, 204.0)


def _state(position=0, avg=0.0, price=200.0, pair=None, symbol="AAPL"):
    return TickerState(symbol, position, avg, price, 1.0, pair)


# --- the rules alone ---------------------------------------------------------------------------------------------

def test_a_buy_opens_a_bracket_a_same_side_signal_is_ignored_and_the_opposite_reverses():
    plan = plan_ticker(_state(), Signal("AAPL", "BUY", 0.9), RULES, LIMITS, open_positions=0)
    (step,) = plan.steps
    assert (plan.decision, step.kind, step.action, step.quantity) == ("BUY", "open", "BUY", 50)
    assert (step.stop, step.target) == (198.8, 201.6)  # 0.6 % and 0.8 % of 200
    same = plan_ticker(_state(50, 200.0, pair=PAIR), Signal("AAPL", "BUY", 0.99), RULES, LIMITS, open_positions=1)
    assert same.decision == "HOLD" and not same.steps and "ignored" in same.reason
    rev = plan_ticker(_state(50, 200.0, pair=PAIR), Signal("AAPL", "SHORT", 0.9), RULES, LIMITS, open_positions=1)
    assert [(s.kind, s.action, s.quantity) for s in rev.steps] == [("close", "SELL", 50), ("open", "SELL", 50)]
    assert rev.steps[1].stop == 203.0 and rev.steps[1].target == 196.0  # ATR 1.0 x 3 above, x 4 below
    out = plan_ticker(_state(50, 200.0, pair=PAIR), Signal("AAPL", "SELL", 0.6), RULES, LIMITS, open_positions=1)
    assert [(s.kind, s.action) for s in out.steps] == [("close", "SELL")]
    short_pair = Bracket(PAIR.stop_ref, PAIR.target_ref, 50, 204.0, 196.0)
    kept = plan_ticker(_state(-50, 200.0, pair=short_pair), Signal("AAPL", "SELL", 0.9), RULES, LIMITS,
                       open_positions=1)
    assert kept.decision == "HOLD" and not kept.steps  # SELL says nothing about a short
    low = plan_ticker(_state(), Signal("AAPL", "BUY", 0.5), RULES, LIMITS, open_positions=0)
    assert low.decision == "HOLD" and low.reason == "no rule matched"


def test_limits_scale_in_and_the_pair_kept_in_step():
    full = plan_ticker(_state(), Signal("AAPL", "BUY", 0.9), RULES, LIMITS, open_positions=2)
    assert full.decision == "NO_TRADE" and "limit is 2" in full.reason
    halted = plan_ticker(_state(50, 200.0, pair=PAIR), Signal("AAPL", "SHORT", 0.9), RULES, LIMITS,
                         open_positions=1, halted="daily loss limit")
    assert [s.kind for s in halted.steps] == ["close"] and "no new position (daily loss limit)" in halted.reason
    up = plan_ticker(_state(50, 199.0, price=200.0, pair=PAIR), None, RULES, LIMITS, open_positions=1)
    assert [(s.kind, s.quantity, s.stop, s.target) for s in up.steps] == [("scale_in", 25, 196.0, 204.0)]
    same = plan_ticker(_state(50, 199.0, price=200.0, pair=PAIR), Signal("AAPL", "BUY", 0.9), RULES, LIMITS,
                       open_positions=1)
    assert [s.kind for s in same.steps] == ["scale_in"]  # the same-side signal is ignored, the profit rule acts
    capped = plan_ticker(_state(70, 199.0, price=200.0, pair=Bracket(PAIR.stop_ref, PAIR.target_ref, 70, 196.0,
                                                                     204.0)), None, RULES, LIMITS, open_positions=1)
    assert capped.steps[0].quantity == 5  # 15,000 USD at 200: 75 shares at most
    partial = plan_ticker(_state(75, 199.0, price=199.5, pair=PAIR), None, RULES, LIMITS, open_positions=1)
    assert [(s.kind, s.quantity) for s in partial.steps] == [("resize", 75)]
    naked = plan_ticker(_state(75, 199.0, pair=None), None, RULES, LIMITS, open_positions=1)
    assert naked.decision == "NO_TRADE" and "without its stop-loss" in naked.reason
    with pytest.raises(ValueError, match="not a positive number"):
        plan_ticker(_state(price=float("nan")), None, RULES, LIMITS, open_positions=0)


def test_pnl_positions_and_the_daily_halt():
    fills = [{"symbol": "AAPL", "shares": 50, "price": 200.0, "commission": 1.0},
             {"symbol": "AAPL", "shares": -50, "price": 190.0, "commission": 1.0},
             {"symbol": "TSLA", "shares": -10, "price": 300.0, "commission": 1.0}]
    assert session_pnl(fills, {"AAPL": 191.0, "TSLA": 310.0}) == pytest.approx(-500 - 100 - 3)
    assert halted_reason(-603.0, LIMITS, None).startswith("daily loss limit")
    assert halted_reason(100.0, LIMITS, "daily loss limit: earlier") == "daily loss limit: earlier"
    assert halted_reason(-499.0, LIMITS, None) is None
    assert position_from_fills(fills[:1] + [{"shares": 25, "price": 206.0}]) == (75, 202.0)
    assert position_from_fills(fills[:2]) == (0, 0.0)
    assert position_from_fills([{"shares": 10, "price": 5.0}, {"shares": -30, "price": 6.0}]) == (-20, 6.0)


def test_a_malformed_rule_file_is_refused_naming_the_rule():
    with pytest.raises(RuleFileError, match=r"rule 1 \(x\): give stop_loss_pct and take_profit_pct"):
        load_rules("rules:\n  - name: x\n    condition: {type: signal, signal: BUY}\n"
                   "    action: {type: create_position, side: BUY, stop_loss_pct: 0.01}\n")
    with pytest.raises(RuleFileError, match="min_confidence"):
        load_rules("rules:\n  - condition: {type: signal, signal: BUY, min_confidence: 2}\n    action: {type: close}\n")
    with pytest.raises(RuleFileError, match="condition.signal"):
        load_rules("rules:\n  - condition: {type: signal, signal: HOLD}\n    action: {type: close}\n")


def test_the_rules_import_no_prefect():
    code = "import sys, strategies.signals.rules, strategies.signals; assert 'prefect' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)


# --- the signal source -------------------------------------------------------------------------------------------

def test_the_local_source_serves_the_momentum_rule_and_wants_its_key(tmp_path):
    from tests.data import require_bars

    data = require_bars("5m/AAPL.csv")
    assert momentum_signal([100.0] * 6 + [100.3], "X") == Signal("X", "BUY", 0.8)
    assert momentum_signal([100.0] * 6 + [99.5], "X").side == "SHORT"
    assert momentum_signal([100.0] * 6 + [99.7], "X").side == "SELL"
    assert momentum_signal([100.0] * 6 + [100.1], "X") is None and momentum_signal([1.0], "X") is None
    source = LocalSignalSource(data, "k3y").start()
    try:
        at = dt.datetime(2026, 3, 3, 11, 0, tzinfo=NY)
        got = fetch_signals(source.url, "k3y", ["AAPL", "TSLA", "SMH"], at)
        assert set(got) <= {"AAPL", "TSLA", "SMH"} and all(0.5 <= s.confidence <= 0.99 for s in got.values())
        assert got == {s["symbol"]: Signal(s["symbol"], s["signal"], s["confidence"])
                       for s in source.signals(["AAPL", "TSLA", "SMH"], at)}
        with pytest.raises(SignalSourceError, match="HTTP 401.*TRADEFLOW_SIGNALS_API_KEY") as err:
            fetch_signals(source.url, "wrong", ["AAPL"], at)
        assert "wrong" not in str(err.value)
    finally:
        source.stop()
    with pytest.raises(SignalSourceError, match="did not answer"):
        fetch_signals(source.url, "k3y", ["AAPL"], at, timeout=2)


# --- a replayed session through the real flow ---------------------------------------------------------------------

DAY = dt.date(2026, 3, 3)
SYMBOLS = ["AAPL", "TSLA", "SMH"]


@pytest.fixture
def market(tmp_path, state_dir, monkeypatch, prefect_api):
    from core.paper_exchange import PaperExchange
    from core.settings import get_settings
    from strategies.signals.settings import get_signals_settings
    from tests.broker_support import require_data

    data = require_data()
    session = session_on(DAY)
    ex = PaperExchange(data, start=session.open - dt.timedelta(minutes=5),
                       state_file=tmp_path / "paper-exchange.json").start()
    source = LocalSignalSource(data, "test-key").start()
    for k, v in {"IBKR_HOST": "127.0.0.1", "IBKR_PORT": str(ex.port), "TRADEFLOW_DATA_DIR": str(data),
                 "TRADEFLOW_PAPER_ADMIN_PORT": str(ex.admin_port), "TRADEFLOW_STRATEGIES": "signals",
                 "TRADEFLOW_SIGNALS_API_URL": source.url, "TRADEFLOW_SIGNALS_API_KEY": "test-key",
                 "TRADEFLOW_SIGNALS_SYMBOLS": ",".join(SYMBOLS)}.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    get_signals_settings.cache_clear()
    try:
        yield ex, source
    finally:
        get_signals_settings.cache_clear()
        source.stop()
        ex.stop()


@pytest.mark.prefect_server
@pytest.mark.timeout(1800)
def test_a_replayed_session_on_three_tickers(market, monkeypatch):
    from core.journal import Journal
    from core.settings import get_settings
    from deployments.replay import get_replay_flow
    from strategies.signals.flow import signals

    exchange, source = market
    state = get_replay_flow()(DAY, DAY, 1, None, False, False, ["signals", "reconciliation"], return_state=True)
    assert state.is_completed(), state.message
    journal = Journal(get_settings().journal_path)
    q = journal.query
    orders = q("SELECT order_ref, symbol, intent, order_type, status, quantity FROM orders WHERE strategy = 'signals' "
               "ORDER BY order_ref")
    decisions = q("SELECT as_of, symbol, decision, signal, probability, reason, inputs FROM signals "
                  "WHERE strategy = 'signals' ORDER BY as_of, symbol")
    assert set(orders["symbol"]) == set(SYMBOLS)
    stops = orders[orders.intent == "stop"]
    targets = orders[orders.intent == "target"]
    assert len(stops) and len(stops) == len(targets)
    at_exchange = {x.order_ref: x for x in exchange.engine.orders.values()}
    # each entry is an IB bracket at the exchange: its stop-loss and take-profit are its children (parentId = the
    # entry's orderId, same client), one OCA group, GTC, for the entry's shares
    entries = orders[orders.intent == "entry"]
    assert len(entries) and all(ref[:-6] + "-sl" in set(stops["order_ref"]) for ref in entries["order_ref"])
    for ref in stops["order_ref"]:
        o, t = at_exchange[ref], at_exchange[ref[:-3] + "-tp"]
        assert o.oca_group == t.oca_group == ref[:-3] + "-oca" and o.oca_type == t.oca_type == 2
        assert o.tif == t.tif == "GTC" and o.order_type == "STP" and t.order_type == "LMT"
        if ref.endswith("-p-sl"):  # a pair of its own, for an entry filled in part
            continue
        parent = at_exchange[ref[:-3] + "-entry"]
        assert o.parent_id == t.parent_id == parent.order_id and not parent.parent_id
        assert o.client_id == t.client_id == parent.client_id and o.action == t.action != parent.action
        assert parent.status == "Filled" and max(o.quantity, t.quantity) >= parent.quantity  # OCA: 0 when cancelled
    filled_stop = stops[stops.status == "Filled"]
    filled_target = targets[targets.status == "Filled"]
    assert len(filled_stop) >= 1 and len(filled_target) >= 1
    for ref in list(filled_stop["order_ref"]) + list(filled_target["order_ref"]):
        sibling = ref[:-3] + ("-tp" if ref.endswith("-sl") else "-sl")
        assert orders.set_index("order_ref").loc[sibling, "status"] == "Cancelled"
    reversals = [json.loads(i) for i in decisions["inputs"]
                 if [s["kind"] for s in json.loads(i)["plan"]["steps"]] == ["close", "open"]]
    assert reversals, "no reversal"
    assert all({"close", "entry", "stop", "target", "parent", "oca_group", "replaces"} <= set(r["orders"])
               for r in reversals)
    scale_ins = [(a, json.loads(i)) for a, i in zip(decisions["as_of"], decisions["inputs"], strict=True)
                 if [s["kind"] for s in json.loads(i)["plan"]["steps"]] == ["scale_in"]]
    assert scale_ins, "no scale-in"
    for _, i in scale_ins:  # the working children changed (IB's modify) to the whole position, still attached
        assert {"scale", "resizes"} <= set(i["orders"]) and "stop" not in i["orders"]
        total = int(abs(i["position"])) + i["plan"]["steps"][0]["quantity"]
        for ref in i["orders"]["resizes"]:
            changes = q("SELECT quantity_after, reason FROM order_changes WHERE order_ref = ?", [ref])
            assert [total, f"scale-in {i['orders']['scale']}"] in changes.values.tolist(), ref
            if not ref.endswith("-p-sl") and not ref.endswith("-p-tp"):
                assert at_exchange[ref].parent_id == at_exchange[ref[:-3] + "-entry"].order_id
    links = q("SELECT order_ref, parent_ref, parent_order_id, oca_group FROM order_links")
    assert len(links) == 2 * len(entries)
    for ref, parent_ref, parent_id, oca in links.itertuples(index=False):  # the journal links them as the exchange
        assert at_exchange[ref].parent_id == parent_id == at_exchange[parent_ref].order_id
        assert oca == at_exchange[ref].oca_group and parent_ref == ref[:-3] + "-entry"
    breaks = q("SELECT * FROM position_breaks")
    assert breaks.empty
    # a rerun of the runs that reversed a position (allowed to start late) follows its journaled plan: it sends
    # nothing, and leaves every order as it was
    monkeypatch.setenv("TRADEFLOW_LATE_RUN_MAX_MINUTES", "390")
    get_settings.cache_clear()
    sent = {o.order_ref: (o.status, o.quantity) for o in exchange.engine.orders.values()}
    reversed_at = sorted({a for a, i in zip(decisions["as_of"], decisions["inputs"], strict=True)
                          if [s["kind"] for s in json.loads(i)["plan"]["steps"]] == ["close", "open"]})
    for as_of in reversed_at[:3]:
        again = signals(as_of=as_of.astimezone(NY), return_state=True)
        assert again.is_completed(), again.message
    assert {o.order_ref: (o.status, o.quantity) for o in exchange.engine.orders.values()} == sent


# --- the bracket steps at the paper exchange ----------------------------------------------------------------------

def test_a_bracket_entry_a_scale_in_changing_its_children_and_a_partly_filled_entry_protected(exchange):
    from dataclasses import asdict

    from core.ib_broker import IBBroker
    from core.journal import Journal
    from core.paper_exchange import AdminClient
    from core.settings import get_settings
    from strategies.signals.rules import Step
    from strategies.signals.steps import Refs, SignalsStepError, execute
    from tasks.runtime import FlowRun
    from tests.broker_support import START

    settings = get_settings()
    journal = Journal(settings.journal_path)

    def run_at(minutes: int) -> FlowRun:
        at = START + dt.timedelta(minutes=minutes)
        return FlowRun("signals", at, f"test-{minutes}", settings, journal, session_on(at.date()))

    def at_exchange() -> dict:
        return {o.order_ref: o for o in exchange.engine.orders.values()}

    first, second, third = run_at(0), run_at(15), run_at(30)
    with IBBroker(client_id=61, settings=settings) as broker:
        done = execute(first, broker, first.gateway(broker), "AAPL", [asdict(Step("open", "BUY", 10, 1.0, 9999.0))],
                       0, None, 10)
        refs = Refs.of("AAPL", first.as_of)
        ex = at_exchange()
        assert ex[refs.entry].status == "Filled" and "bracket BUY 10" in done[0]
        assert ex[refs.stop].parent_id == ex[refs.target].parent_id == ex[refs.entry].order_id
        assert ex[refs.stop].status == ex[refs.target].status == "Submitted"  # working once the entry filled
        pair = Bracket(refs.stop, refs.target, 10, 1.0, 9999.0)
        done = execute(second, broker, second.gateway(broker), "AAPL",
                       [asdict(Step("scale_in", "BUY", 5, 1.0, 9999.0))], 10, pair, 10)
        ex = at_exchange()
        assert ex[refs.stop].quantity == ex[refs.target].quantity == 15 and "changed to cover 15" in done[0]
        assert ex[refs.stop].parent_id == ex[refs.entry].order_id and ex[refs.stop].oca_group == refs.oca
        assert not [r for r in ex if "-p-" in r]  # kept in step by a modify: no other pair
        # an entry filled in part: its rest is cancelled, the children with it, the 5 shares get a pair of their own
        AdminClient(exchange.admin_port).partial_fill(0.5)
        with pytest.raises(SignalsStepError, match="5 of 10 shares filled"):
            execute(third, broker, third.gateway(broker), "TSLA", [asdict(Step("open", "BUY", 10, 1.0, 9999.0))],
                    0, None, 2)
        t = Refs.of("TSLA", third.as_of)
        ex = at_exchange()
        assert (ex[t.entry].status, ex[t.entry].filled) == ("Cancelled", 5)
        assert ex[t.stop].status == ex[t.target].status == "Cancelled"
        assert [(ex[r].status, ex[r].quantity, ex[r].oca_group) for r in (t.protect_stop, t.protect_target)] == \
            [("Submitted", 5, t.protect_oca)] * 2
    assert {s: p.quantity for s, p in exchange.engine.positions.items() if p.quantity} == {"AAPL": 15, "TSLA": 5}


def test_a_rerun_of_a_scale_in_changes_and_places_nothing_once_the_pair_has_moved_on(exchange):
    from dataclasses import asdict

    from core.ib_broker import IBBroker
    from core.journal import Journal
    from core.settings import get_settings
    from strategies.signals.rules import Step
    from strategies.signals.steps import Refs, execute
    from tasks.runtime import FlowRun
    from tests.broker_support import START

    settings = get_settings()
    journal = Journal(settings.journal_path)
    first = FlowRun("signals", START, "t-0", settings, journal, session_on(START.date()))
    later = FlowRun("signals", START + dt.timedelta(minutes=15), "t-15", settings, journal, first.session)
    scale = [asdict(Step("scale_in", "BUY", 5, 1.0, 9999.0))]
    with IBBroker(client_id=62, settings=settings) as broker:
        execute(first, broker, first.gateway(broker), "AAPL", [asdict(Step("open", "BUY", 10, 1.0, 9999.0))], 0,
                None, 10)
        refs = Refs.of("AAPL", START)
        pair = Bracket(refs.stop, refs.target, 10, 1.0, 9999.0)
        execute(later, broker, later.gateway(broker), "AAPL", scale, 10, pair, 10)
        again = execute(later, broker, later.gateway(broker), "AAPL", scale, 10, pair, 10, rerun=True)
        assert "changed before by this run" in again[0]
        working = {o.order_ref: o for o in broker.open_orders()}
        for ref in (refs.stop, refs.target):  # the pair moves on (the operator, another run): a rerun leaves it
            broker.cancel_order(working[ref].order_id)
        before = {o.order_ref: (o.status, o.quantity) for o in exchange.engine.orders.values()}
        with journal.transaction() as tx:
            tx.con.execute("DELETE FROM order_changes")  # even without the record of its own change
        again = execute(later, broker, later.gateway(broker), "AAPL", scale, 10, pair, 10, rerun=True)
        assert "left to the next run" in again[0]
        assert {o.order_ref: (o.status, o.quantity) for o in exchange.engine.orders.values()} == before
