"""The `mtf-signal` flow against the paper exchange (real IBBroker, real Prefect flow runs, a real journal file),
with real registered models whose P(up) is known (tests/mtf_support.py).

Days: 2026-03-02 and 2026-03-03 (5-minute and hourly bars served by the paper exchange). Every run's `as_of` is
a scheduled 5-minute run time; the exchange clock is moved there first (runs are on time).
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime

import pandas as pd
import pytest

from core.calendar import NY
from core.journal import Journal
from core.paper_exchange import AdminClient
from core.settings import get_settings
from tests.mtf_support import model_templates, models  # noqa: F401

DAY = datetime(2026, 3, 2, tzinfo=NY)


def at(hour: int, minute: int, day: datetime = DAY) -> datetime:
    return day.replace(hour=hour, minute=minute)


@pytest.fixture
def signal(exchange, prefect_harness, models):  # noqa: F811
    """run(as_of, **params): move the exchange clock to as_of and run the flow for it."""
    from flows.mtf_signal import mtf_signal

    admin = AdminClient(exchange.admin_port)

    def run(as_of: datetime, **params):
        if exchange.clock.now_dt() < as_of:
            admin.set_clock(as_of)
        return mtf_signal(as_of=as_of, **params)

    return run


def journal() -> Journal:
    return Journal(get_settings().journal_path)


def signals(sql_filter: str = "TRUE") -> list[dict]:
    """Journaled MTF decisions (NULL as None, inputs parsed), in time and symbol order."""
    frame = journal().query(f"SELECT * FROM signals WHERE strategy = 'mtf' AND {sql_filter} ORDER BY as_of, symbol")
    rows = [{k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in r.items()}
            for r in frame.to_dict("records")]
    for r in rows:
        r["inputs"] = json.loads(r["inputs"]) if r["inputs"] else {}
    return rows


def exchange_orders(exchange):  # noqa: F811
    return sorted(exchange.engine.orders.values(), key=lambda o: o.perm_id)


def test_entry_buys_10000_usd_and_journals_every_decision(signal, models, exchange):  # noqa: F811
    aapl = models.champion("AAPL", 0.9)
    models.champion("TSLA", 0.1)
    state = signal(at(10, 5), return_state=True)
    out = state.result()
    by = {r["symbol"]: r for r in out["decisions"]}
    assert by["AAPL"]["decision"] == "BUY" and by["TSLA"]["decision"] == "NO_TRADE"

    orders = exchange_orders(exchange)
    assert [(o.symbol, o.action, o.order_ref) for o in orders] == [("AAPL", "BUY", "mtf-AAPL-20260302T1005-entry")]
    price = exchange.engine.market.last_price("AAPL", int(at(10, 5).timestamp()))
    assert orders[0].quantity == math.floor(10_000 / price) == by["AAPL"]["quantity"]

    a, t = signals()
    assert (a["symbol"], a["decision"], a["order_ref"], a["quantity"]) == ("AAPL", "BUY", orders[0].order_ref,
                                                                           orders[0].quantity)
    assert a["probability"] == pytest.approx(0.9, abs=1e-6) and a["price"] == pytest.approx(price)
    assert (t["symbol"], t["decision"], t["order_ref"], t["quantity"]) == ("TSLA", "NO_TRADE", None, None)
    assert t["probability"] == pytest.approx(0.1, abs=1e-6) and "< 0.52" in t["reason"]
    inputs = a["inputs"]
    assert inputs["model"] == f"AAPL/{aapl}" and inputs["position"] == 0 and inputs["bars"] > 1000
    assert datetime.fromisoformat(inputs["last_bar"]) < at(10, 5)  # the bar in progress (09:30) is not used
    assert datetime.fromisoformat(inputs["last_bar"]) == datetime(2026, 2, 27, 15, 30, tzinfo=NY)

    fills = journal().query("SELECT symbol, side, shares, strategy, order_ref FROM executions")
    assert fills.values.tolist() == [["AAPL", "BOT", orders[0].quantity, "mtf", orders[0].order_ref]]
    order = journal().query("SELECT status, intent FROM orders").iloc[0]
    assert (order.status, order.intent) == ("Filled", "entry")

    table = artifact_table(state.state_details.flow_run_id)  # what the Prefect UI shows for the run
    assert [(r["symbol"], r["decision"]) for r in table] == [("AAPL", "BUY"), ("TSLA", "NO_TRADE")]
    assert table[0]["P(up)"] == pytest.approx(0.9, abs=1e-4) and table[0]["order"].startswith(orders[0].order_ref)
    assert "< 0.52" in table[1]["reason"]


def artifact_table(flow_run_id) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["table"])))
    assert len(found) == 1
    data = found[0].data
    return json.loads(data) if isinstance(data, str) else data


def test_exit_after_the_maximum_hold_counts_missed_runs(signal, models, exchange):  # noqa: F811
    """Entry at 10:05; no run between (missed runs still count); 12:00 is run 23: hold; 12:05 is run 24: sell."""
    models.champion("AAPL", 0.9)
    models.champion("TSLA", 0.1)
    signal(at(10, 5))
    qty = exchange_orders(exchange)[0].quantity
    held = signal(at(12, 0))["decisions"][0]
    assert held["decision"] == "HOLD" and "held 23 of 24 runs" in held["reason"]
    out = signal(at(12, 5))["decisions"][0]
    assert out["decision"] == "SELL" and out["quantity"] == qty and "24 runs >= 24" in out["reason"]
    orders = exchange_orders(exchange)
    assert [(o.action, o.order_ref) for o in orders] == [("BUY", "mtf-AAPL-20260302T1005-entry"),
                                                         ("SELL", "mtf-AAPL-20260302T1205-exit")]
    assert orders[1].quantity == qty
    assert exchange.engine.positions["AAPL"].quantity == 0
    trips = journal().query("SELECT closed, shares_bought, shares_sold FROM v_round_trips WHERE strategy = 'mtf'")
    assert trips.values.tolist() == [[True, qty, qty]]
    last = signals("symbol = 'AAPL'")[-1]
    assert last["inputs"]["runs_held"] == 24 and last["inputs"]["code"] == "max_hold"


def test_exit_below_the_threshold_after_the_minimum_hold(signal, models, exchange):  # noqa: F811
    models.champion("AAPL", 0.9)
    models.champion("TSLA", 0.51)  # between the thresholds: never enters
    signal(at(10, 5))
    models.champion("AAPL", 0.1)
    first = signal(at(10, 10))["decisions"][0]
    assert first["decision"] == "HOLD" and "held 1 runs < 2" in first["reason"]
    second = {r["symbol"]: r for r in signal(at(10, 15))["decisions"]}
    assert second["AAPL"]["decision"] == "SELL" and "P(up) 0.100 < 0.50 after 2 runs" in second["AAPL"]["reason"]
    assert second["TSLA"]["decision"] == "NO_TRADE" and "0.510 < 0.52" in second["TSLA"]["reason"]
    assert [o.order_ref for o in exchange_orders(exchange)] == ["mtf-AAPL-20260302T1005-entry",
                                                                 "mtf-AAPL-20260302T1015-exit"]
    assert exchange.engine.positions["AAPL"].quantity == 0


def test_daily_loss_limit_blocks_entries_and_exits_still_run(signal, models, exchange, monkeypatch):  # noqa: F811
    """500,000 USD positions (a setting) so that AAPL's 1.54 USD drop between 12:30 and 12:35 on 2026-03-03
    loses more than the default 2,000 USD limit."""
    monkeypatch.setenv("TRADEFLOW_MTF_POSITION_USD", "500000")
    day = datetime(2026, 3, 3, tzinfo=NY)
    models.champion("AAPL", 0.9)
    models.champion("TSLA", 0.1)
    signal(at(12, 30, day))
    qty = exchange_orders(exchange)[0].quantity
    models.champion("TSLA", 0.9)  # TSLA would now enter
    blocked = {r["symbol"]: r for r in signal(at(12, 35, day))["decisions"]}
    assert blocked["TSLA"]["decision"] == "NO_TRADE" and "daily loss limit" in blocked["TSLA"]["reason"]
    assert blocked["AAPL"]["decision"] == "HOLD"
    row = signals("symbol = 'TSLA'")[-1]["inputs"]
    assert row["loss_limit_reached"] is True and row["day_pnl"] <= -2_000
    fill = journal().query("SELECT price, commission FROM executions").iloc[0]
    mark = exchange.engine.market.last_price("AAPL", int(at(12, 35, day).timestamp()))
    assert row["day_pnl"] == pytest.approx(qty * (mark - fill.price) - fill.commission, abs=0.01)

    models.champion("AAPL", 0.1)
    later = {r["symbol"]: r for r in signal(at(12, 40, day))["decisions"]}
    assert later["AAPL"]["decision"] == "SELL"  # exits still run
    assert later["TSLA"]["decision"] == "NO_TRADE" and "daily loss limit" in later["TSLA"]["reason"]
    assert [o.symbol for o in exchange_orders(exchange)] == ["AAPL", "AAPL"]  # TSLA never entered
    assert all(o.symbol != "TSLA" for o in exchange_orders(exchange))


def test_a_rerun_for_the_same_as_of_sends_nothing_new(signal, models, exchange):  # noqa: F811
    models.champion("AAPL", 0.9)
    models.champion("TSLA", 0.1)
    first = signal(at(10, 5))
    before = signals()
    models.champion("TSLA", 0.9)  # even if the model changed meanwhile, the run's decision stands
    again = signal(at(10, 5))
    assert [o.order_ref for o in exchange_orders(exchange)] == ["mtf-AAPL-20260302T1005-entry"]
    assert signals() == before
    assert [r["decision"] for r in again["decisions"]] == [r["decision"] for r in first["decisions"]]
    assert all(r.get("rerun") for r in again["decisions"])
    assert again["decisions"][0]["order"]["existing"] is True
    assert journal().query("SELECT count(*) AS n FROM executions")["n"][0] == 1


def test_a_missing_or_unreadable_model_fails_the_run_and_trades_nothing(signal, models, exchange):  # noqa: F811
    from tasks.mtf_signal import ModelUnavailableError

    models.champion("AAPL", 0.9)  # TSLA has versions but no champion
    with pytest.raises(ModelUnavailableError, match=r"TSLA has no champion.*tradeflow models promote TSLA"):
        signal(at(10, 5))
    version = models.champion("TSLA", 0.9)
    damaged = b"not a model"  # the registry's own copy, in the journal (a damaged cached copy is fetched again)
    with journal().transaction() as tx:
        tx.fetch("UPDATE model_files SET content = ?, bytes = ?, sha256 = ? WHERE symbol = 'TSLA' AND version = ?"
                 " AND name = 'weights.npz'", [damaged, len(damaged), hashlib.sha256(damaged).hexdigest(), version])
    with pytest.raises(ModelUnavailableError, match=r"TSLA v\d+: .*weights.npz unreadable"):
        signal(at(10, 10))
    assert exchange_orders(exchange) == [] and signals() == []
    failed = journal().query("SELECT outcome FROM flow_events WHERE deployment = 'mtf-signal' AND event = 'failed'")
    assert len(failed) == 2 and all("no usable model" in o for o in failed["outcome"])


def test_stale_bars_trade_nothing_and_the_journal_says_why(signal, models, exchange):  # noqa: F811
    """The data end on 2026-03-11: at 11:35 the next day the last complete bar is 125 session minutes old."""
    models.champion("AAPL", 0.9)
    models.champion("TSLA", 0.9)
    out = signal(at(11, 35, datetime(2026, 3, 12, tzinfo=NY)))
    assert [r["decision"] for r in out["decisions"]] == ["NO_TRADE", "NO_TRADE"]
    assert exchange_orders(exchange) == []
    for row in signals():
        assert row["probability"] is None and row["reason"].startswith("stale bars")
        assert "2026-03-11T16:00:00-04:00" in row["reason"]


def test_a_late_run_is_skipped(signal, models, exchange):  # noqa: F811
    from flows.mtf_signal import mtf_signal

    models.champion("AAPL", 0.9)
    models.champion("TSLA", 0.9)
    AdminClient(exchange.admin_port).set_clock(at(10, 9))
    state = mtf_signal(as_of=at(10, 5), return_state=True)
    assert state.name == "SkippedLate" and "4.0 minutes after" in state.message
    assert exchange_orders(exchange) == [] and signals() == []


def test_bad_stored_bars_trade_nothing_and_the_journal_says_why(signal, models, exchange):  # noqa: F811
    from core.bar_store import BarStore, store_root

    models.champion("AAPL", 0.9)
    models.champion("TSLA", 0.9)
    signal(at(10, 5))  # enters both, and fills the bar store
    path = BarStore(store_root(get_settings().state_dir)).path("TSLA")
    lines = path.read_text().splitlines()
    lines[-3] = lines[-3].rsplit(",", 2)[0] + ",-1.0,100"  # a negative close
    path.write_text("\n".join(lines) + "\n")
    models.champion("AAPL", 0.1)
    models.champion("TSLA", 0.1)
    with pytest.raises(RuntimeError, match="TSLA: bar store damaged"):  # it needs a person: the run fails
        signal(at(10, 15))
    failed = journal().query("SELECT details FROM flow_events WHERE event = 'failed'")
    out = {r["symbol"]: r for r in json.loads(failed["details"][0])["decisions"]}
    assert out["AAPL"]["decision"] == "SELL"
    assert out["TSLA"]["decision"] == "HOLD" and "bar store damaged" in out["TSLA"]["reason"]
    assert "non-positive price" in out["TSLA"]["reason"]
    assert [o.symbol for o in exchange_orders(exchange)] == ["AAPL", "TSLA", "AAPL"]  # no TSLA exit on bad data
    assert signals("symbol = 'TSLA'")[-1]["probability"] is None


def test_a_halt_journals_the_decision_and_sends_nothing(signal, models, exchange):  # noqa: F811
    from core.controls import KillSwitch

    models.champion("AAPL", 0.9)
    models.champion("TSLA", 0.1)
    KillSwitch(get_settings().state_dir).halt(journal(), "tester", "testing the halt", at(10, 0))
    out = signal(at(10, 5))["decisions"][0]
    assert out["decision"] == "BUY" and "not sent: " in out["reason"] and "tester" in out["reason"]
    assert exchange_orders(exchange) == []
    row = signals("symbol = 'AAPL'")[0]
    assert row["decision"] == "BUY" and "not sent" in row["reason"]
    assert journal().query("SELECT count(*) AS n FROM orders")["n"][0] == 0


def test_an_entry_beyond_the_margin_is_sized_to_what_the_account_allows(signal, models, exchange,  # noqa: F811
                                                                        monkeypatch):
    """A 5,000,000 USD position size (the setting's bound) in a Reg T cash account of 1,000,000 USD: IB's what-if
    cuts the buy to what the account can pay for (100 % of the position), and the journal says so with the
    numbers."""
    exchange.engine.config.account_type = "reg_t_cash"
    monkeypatch.setenv("TRADEFLOW_MTF_POSITION_USD", "5000000")
    get_settings.cache_clear()
    models.champion("AAPL", 0.9)
    models.champion("TSLA", 0.1)
    out = signal(at(10, 5))
    aapl = next(r for r in out["decisions"] if r["symbol"] == "AAPL")
    price = exchange.engine.market.last_price("AAPL", int(at(10, 5).timestamp()))
    assert aapl["decision"] == "BUY" and 0 < aapl["quantity"] * price <= 1_000_000
    [row] = [s for s in signals() if s["symbol"] == "AAPL"]
    assert row["inputs"]["margin_capped"] and row["inputs"]["margin_requested_shares"] == math.floor(5e6 / price)
    assert row["inputs"]["whatif_init_margin_after"] > row["inputs"]["whatif_equity_with_loan_after"]
    assert "sized down from" in row["reason"] and row["quantity"] == aapl["quantity"]
    [order] = exchange_orders(exchange)
    assert order.quantity == aapl["quantity"] and order.status == "Filled"
