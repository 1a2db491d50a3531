"""The EMA flows (`equity-snapshot`, `ema-entry`, `ema-update`) and the stop's second line, as real Prefect flow
runs (a temporary Prefect API) against the paper exchange (the production IBBroker over loopback) fed with the
real SMH and VIX bars, with a real DuckDB journal.

Sessions used (EMA 25/125 of the real daily SMH closes, as the paper exchange serves them):
- 2025-05-27 and 2025-05-28: BULL (the signal turned BULL on 2025-05-23); on 2025-05-28 SMH fell from 245.11 at
  the open to 241.90, through the day's stop at 243.47 (15:35 bar), and the 15:55 decision was BULL again.
- 2025-05-21 and 2025-05-22: BEAR (the whole of 2025-04-24 .. 2025-05-22 is BEAR; the data hold no BULL-to-BEAR
  turn after the 5-minute bars start, so the position the BEAR exits sell is bought by the test the same day,
  as a position carried from an earlier BULL period would be).
- 2025-12-26: BULL, VIX opened at 14.12 (the paper exchange's "current" VIX at 15:55 is the day's open: its
  VIX data are daily) and closed at 13.47 on 2025-12-24: L 3.0 from the current value, 3.25 from the latest
  close when the current value is missing, 3.0 by default when VIX is missing altogether.
- 2025-11-28: early close (13:00): the decision at 12:55, the update at 13:00.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prefect import flow
from prefect.states import StateType

from core.broker import OrderRequest
from core.controls import KillSwitch
from core.ib_broker import IBBroker
from core.journal import Journal
from core.paper_exchange import EngineConfig, PaperExchange
from core.paper_exchange.admin import AdminClient
from core.settings import get_settings
from core.strategies.ema import ema_series, init_ema_state
from flows.ema_entry import ema_entry
from flows.ema_update import ema_update
from flows.equity_snapshot import equity_snapshot
from tasks.ema_stop import ema_stop_second_line
from tasks.runtime import flow_run
from tests.broker_support import require_data

NY = ZoneInfo("America/New_York")
README = Path(__file__).resolve().parents[1] / "README.md"


def at(y: int, m: int, d: int, hh: int, mm: int) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=NY)


@dataclass
class Market:
    """A paper exchange on loopback whose clock the test moves, and the journal of the test's state dir."""

    exchange: PaperExchange
    admin: AdminClient

    def to(self, when: datetime) -> None:
        self.admin.set_clock(when)

    @property
    def journal(self) -> Journal:
        return Journal(get_settings().journal_path)

    def q(self, sql: str, params: list | None = None):
        return self.journal.query(sql, params)

    def orders(self, ref: str | None = None) -> list:
        return [o for o in self.exchange.engine.orders.values() if ref is None or o.order_ref == ref]

    def position(self, symbol: str = "SMH") -> float:
        pos = self.exchange.engine.positions.get(symbol)
        return pos.quantity if pos else 0.0

    def buy(self, qty: int, ref: str) -> None:
        """An order outside the strategy (a position carried from before), through its own client id."""
        with IBBroker(client_id=95, settings=get_settings()) as broker:
            broker.place_order(OrderRequest(symbol="SMH", action="BUY", quantity=qty, order_ref=ref))


@pytest.fixture
def market(tmp_path, state_dir, monkeypatch, prefect_harness):  # noqa: F811
    """`market(start)` starts a paper exchange with its clock at `start` and points the flows at it."""
    data = require_data()
    require_data_file = data / "daily" / "VIX.csv"
    if not require_data_file.exists():
        pytest.skip(f"no daily VIX bars at {require_data_file}")
    started: list[PaperExchange] = []
    monkeypatch.setenv("TRADEFLOW_EMA_CLOSE_SETTLE_SECONDS", "0")
    monkeypatch.setenv("TRADEFLOW_EMA_FILL_TIMEOUT_SECONDS", "10")

    def start(when: datetime, account_type: str = "portfolio_margin") -> Market:
        ex = PaperExchange(data, start=when, state_file=tmp_path / "paper-exchange.json",
                           config=EngineConfig(account_type=account_type)).start()
        started.append(ex)
        monkeypatch.setenv("IBKR_HOST", "127.0.0.1")
        monkeypatch.setenv("IBKR_PORT", str(ex.port))
        monkeypatch.setenv("TRADEFLOW_DATA_DIR", str(data))
        get_settings.cache_clear()
        return Market(ex, AdminClient(ex.admin_port))

    yield start
    for ex in started:
        ex.stop()


@flow(name="mtf-signal")
def second_line(as_of: datetime) -> dict:
    """What mtf-signal does with the second line each 5 minutes (issue 5 builds the real flow)."""
    with flow_run("mtf-signal", as_of) as run, run.broker() as broker:
        return ema_stop_second_line(run, broker)


def explain_sql() -> str:
    """The README's one query that explains every EMA fill."""
    text = README.read_text()
    m = re.search(r"<!-- explain-ema-trades -->\s*```sql\n(.*?)```", text, re.S)
    assert m, "README lost the EMA trade explanation query"
    return m.group(1)


# --------------------------------------------------------------------------------------------------------------
# entry, stop, re-entry


def test_bull_entry_stop_hit_then_re_entry_and_one_query_explains_every_fill(market):
    m = market(at(2025, 5, 27, 15, 55))
    out = ema_entry(as_of=at(2025, 5, 27, 15, 55))
    assert out["decision"] == "BUY"
    assert out["fill_price"] == pytest.approx(244.45)  # the 15:55 bar's open, also the decision's price
    sig = m.q("SELECT * FROM signals WHERE strategy = 'ema'").iloc[0]
    inputs = json.loads(sig["inputs"])
    assert sig["signal"] == "BULL" and inputs["final_signal"] == "BULL" and inputs["state_source"] == "initialised"
    assert inputs["vix_source"] == "current" and inputs["leverage"] == 3.0 and inputs["vix_used"] == 20.63
    assert out["shares"] == math.floor(1_000_000 * 3.0 / 244.45) == inputs["target_shares"]
    for key in ("price", "ema_fast", "ema_slow", "final_ema_fast", "final_ema_slow", "leverage_reason", "e0",
                "equity", "available_funds", "order_ref", "reason"):
        assert key in inputs, key
    # the EMA state was initialised from >= 250 sessions of the broker's daily bars, and journaled whole
    n = m.q("SELECT count(*) AS n, max(session) AS last FROM ema_state").iloc[0]
    assert n["n"] >= 250 and str(n["last"])[:10] == "2025-05-23"
    stop = out["stop"]
    assert stop["e0_source"].startswith("NetLiquidation")  # no snapshot that day: E0 = NetLiquidation at 15:55
    assert stop["stop_price"] == pytest.approx(math.ceil((244.45 - 0.02 * 1_000_000 / out["shares"]) * 100) / 100)

    m.to(at(2025, 5, 27, 16, 0))
    assert ema_update(as_of=at(2025, 5, 27, 16, 0))["signal"] == "BULL"

    m.to(at(2025, 5, 28, 9, 30))
    snap = equity_snapshot(as_of=at(2025, 5, 28, 9, 30))
    e0, qty = snap["e0"], snap["position_qty"]
    assert qty == out["shares"] and snap["stop"]["p_ref"] == 245.11  # SMH at the snapshot: the 09:30 bar's open
    p_stop = 245.11 - 0.02 * e0 / qty
    assert snap["stop"]["stop_price"] == pytest.approx(math.ceil(p_stop * 100) / 100) == 243.47
    working = [o for o in m.orders() if o.is_open]
    assert [o.order_ref for o in working] == ["ema-SMH-20250528-stop"]  # yesterday's entry stop was replaced
    assert m.orders("ema-SMH-20250527-entry-stop")[0].status == "Cancelled"

    m.to(at(2025, 5, 28, 15, 45))  # the 15:35 bar fell to 243.11: the stop order filled at 243.47
    assert m.position() == 0
    assert second_line(at(2025, 5, 28, 15, 45))["action"] == "none"  # the stop order did it

    m.to(at(2025, 5, 28, 15, 55))
    again = ema_entry(as_of=at(2025, 5, 28, 15, 55))
    assert again["decision"] == "BUY" and again["filled"] > 0  # stopped out, BULL at 15:55: in again
    assert again["stop"]["order_ref"] == "ema-SMH-20250528-entry-stop" and again["stop"]["e0"] == e0
    # the re-entered position is not sold by the second line although equity is below 0.98 E0 since the stop
    second = second_line(at(2025, 5, 28, 15, 55))
    assert second["action"] == "none" and second["reference"] == "entry", second
    assert second["equity"] <= 0.98 * e0

    trades = m.q(explain_sql())
    assert list(trades["order_ref"]) == ["ema-SMH-20250527-entry", "ema-SMH-20250528-stop",
                                         "ema-SMH-20250528-entry"]
    assert list(trades["side"]) == ["BOT", "SLD", "BOT"]
    assert trades["reason"].notna().all() and trades["inputs"].notna().all()
    stop_row = trades.iloc[1]
    assert stop_row["price"] == 243.47 and "equity reaches 0.98 x E0" in stop_row["reason"]
    assert json.loads(stop_row["inputs"])["e0"] == e0
    assert trades.iloc[2]["signal"] == "BULL" and trades.iloc[2]["leverage"] == 3.0


def long_without_its_stop(market) -> tuple[Market, dict]:
    """Bought SMH on 2025-05-27 at 15:55, the 2025-05-28 09:30 snapshot and stop, then the stop order lost at the
    exchange: (the market, the snapshot's summary)."""
    m = market(at(2025, 5, 27, 15, 55))
    ema_entry(as_of=at(2025, 5, 27, 15, 55))
    m.to(at(2025, 5, 28, 9, 30))
    snap = equity_snapshot(as_of=at(2025, 5, 28, 9, 30))
    stop = m.orders("ema-SMH-20250528-stop")[0]
    m.exchange.engine.cancel(stop.client_id, stop.order_id, m.exchange.now())  # the stop order is lost
    return m, snap


def test_second_line_exits_when_the_stop_order_is_gone(market):
    m, snap = long_without_its_stop(market)
    m.to(at(2025, 5, 28, 11, 0))
    assert second_line(at(2025, 5, 28, 11, 0))["action"] == "none"  # equity above 0.98 E0
    m.to(at(2025, 5, 28, 15, 40))  # SMH 243.11 (the 15:40 bar's open): equity below 0.98 E0
    out = second_line(at(2025, 5, 28, 15, 40))
    again = second_line(at(2025, 5, 28, 15, 40))
    assert out["action"] == "exit" and out["equity"] <= 0.98 * snap["e0"] and out["reference"] == "day_start"
    assert again["action"] == "none" and m.position() == 0
    assert len(m.orders("ema-SMH-20250528-stop2")) == 1
    row = m.q("SELECT decision, order_ref, inputs FROM signals WHERE strategy = 'ema_stop2'").iloc[0]
    assert row["decision"] == "SELL" and json.loads(row["inputs"])["e0"] == snap["e0"]
    assert "outside the session" in second_line(at(2025, 5, 28, 16, 0))["reason"]


# --------------------------------------------------------------------------------------------------------------
# leverage from VIX


def test_bull_entry_leverage_from_the_current_vix(market):
    m = market(at(2025, 12, 26, 15, 55))
    out = ema_entry(as_of=at(2025, 12, 26, 15, 55))
    inputs = json.loads(m.q("SELECT inputs FROM signals WHERE strategy = 'ema'")["inputs"][0])
    assert out["decision"] == "BUY" and inputs["vix_source"] == "current" and inputs["vix_used"] == 14.12
    assert inputs["leverage"] == 3.0 and "VIX 14.12 (current) >= 14" in inputs["leverage_reason"]
    assert out["shares"] == math.floor(inputs["net_liquidation"] * 3.0 / inputs["price"])


@pytest.mark.parametrize("account_type", ["reg_t_margin", "portfolio_margin"])
def test_the_1555_entry_at_3x_is_sized_to_what_the_account_may_hold_overnight(market, account_type):
    """Reg T allows 2x overnight (50 % initial margin after IB's 15:50 check): the 3x entry is cut to it, the
    journal says so with the what-if numbers, and the close liquidates nothing. Portfolio Margin (about 15 %)
    takes the 3x entry unchanged."""
    m = market(at(2025, 12, 26, 15, 55), account_type)
    out = ema_entry(as_of=at(2025, 12, 26, 15, 55))
    [row] = m.q("SELECT decision, quantity, reason, inputs FROM signals WHERE strategy = 'ema'").to_dict("records")
    inputs = json.loads(row["inputs"])
    nlv, price = inputs["net_liquidation"], inputs["price"]
    target = math.floor(nlv * 3.0 / price)
    assert inputs["leverage"] == 3.0 and inputs["target_shares"] == target and inputs["margin_requested_shares"] == \
        target
    assert row["decision"] == out["decision"] == "BUY" and row["quantity"] == out["shares"] == m.position()
    if account_type == "reg_t_margin":
        assert inputs["margin_capped"] and out["shares"] < target
        assert out["shares"] * price <= 2.0 * nlv  # what Reg T allows overnight
        assert out["shares"] * price >= 1.95 * nlv  # and not much less
        assert inputs["whatif_init_margin_after"] > inputs["whatif_equity_with_loan_after"]
        assert inputs["whatif_init_margin_after"] == pytest.approx(0.5 * target * price, rel=0.01)
        assert f"sized down from {target} to {out['shares']} shares by IB's what-if" in row["reason"]
    else:
        assert not inputs["margin_capped"] and out["shares"] == target
        assert inputs["whatif_init_margin_after"] == pytest.approx(0.15 * target * price, rel=0.01)
    held = m.position()
    m.to(at(2025, 12, 26, 16, 5))  # the close: the overnight check
    assert m.position() == held
    assert not [e for e in m.exchange.engine.executions if e.liquidation]


def test_missing_current_vix_uses_the_latest_daily_close(market):
    m = market(at(2025, 12, 26, 15, 55))
    m.admin.no_data("VIX", quotes=True, history=False)
    out = ema_entry(as_of=at(2025, 12, 26, 15, 55))
    inputs = json.loads(m.q("SELECT inputs FROM signals WHERE strategy = 'ema'")["inputs"][0])
    assert inputs["vix_source"] == "last_close" and inputs["vix_used"] == 13.47
    assert inputs["vix_last_close_session"] == "2025-12-24" and inputs["leverage"] == 3.25
    assert out["shares"] == math.floor(inputs["net_liquidation"] * 3.25 / inputs["price"])
    assert any("VIX current value unavailable" in n for n in inputs["vix_notes"])


def test_missing_vix_gives_leverage_3_and_says_why(market):
    m = market(at(2025, 12, 26, 15, 55))
    m.admin.no_data("VIX")
    out = ema_entry(as_of=at(2025, 12, 26, 15, 55))
    row = m.q("SELECT inputs FROM signals WHERE strategy = 'ema'").iloc[0]
    inputs = json.loads(row["inputs"])
    assert inputs["vix_source"] == "default" and inputs["leverage"] == 3.0 and inputs["vix_used"] is None
    assert inputs["leverage_reason"].startswith("VIX unavailable") and "default leverage L 3" in inputs[
        "leverage_reason"]
    assert len(inputs["vix_notes"]) == 2 and "354" in inputs["vix_notes"][0] and "162" in inputs["vix_notes"][1]
    assert out["shares"] == math.floor(inputs["net_liquidation"] * 3.0 / inputs["price"])


# --------------------------------------------------------------------------------------------------------------
# BEAR exits


def test_bear_while_long_at_1555_cancels_the_stop_and_sells(market):
    m = market(at(2025, 5, 21, 9, 30))
    m.buy(4000, "carried-position")
    snap = equity_snapshot(as_of=at(2025, 5, 21, 9, 30))
    assert snap["position_qty"] == 4000 and m.orders("ema-SMH-20250521-stop")[0].is_open
    m.to(at(2025, 5, 21, 15, 55))
    out = ema_entry(as_of=at(2025, 5, 21, 15, 55))
    assert out["decision"] == "SELL" and out["shares"] == 4000 and out["fill_price"] == 241.79
    assert m.position() == 0 and not [o for o in m.orders() if o.is_open]
    assert m.orders("ema-SMH-20250521-stop")[0].status == "Cancelled"  # cancelled BEFORE the sell
    row = m.q("SELECT signal, reason, inputs FROM signals WHERE strategy = 'ema'").iloc[0]
    assert row["signal"] == "BEAR" and "sell all 4000" in row["reason"]


def test_final_bear_while_long_exits_at_the_next_open(market):
    m = market(at(2025, 5, 21, 15, 55))
    m.buy(4000, "carried-position")  # no 15:55 EMA decision sold it: long at the close while BEAR
    m.to(at(2025, 5, 21, 16, 0))
    out = ema_update(as_of=at(2025, 5, 21, 16, 0))
    assert out["signal"] == "BEAR" and out["decision"] == "SELL" and out["order_ref"] == "ema-SMH-20250521-exit-open"
    exit_order = m.orders("ema-SMH-20250521-exit-open")[0]
    assert exit_order.is_open and exit_order.order_type == "MKT" and exit_order.tif == "DAY"
    assert m.position() == 4000  # nothing fills after the close
    again = ema_update(as_of=at(2025, 5, 21, 16, 0))  # rerun: nothing new
    assert again["rerun"] and len(m.orders("ema-SMH-20250521-exit-open")) == 1
    assert m.q("SELECT count(*) AS n FROM ema_state WHERE session = '2025-05-21'")["n"][0] == 1
    m.to(at(2025, 5, 22, 9, 30))
    snap = equity_snapshot(as_of=at(2025, 5, 22, 9, 30))
    assert snap["exit_at_open"]["filled"] == 4000 and snap["position_qty"] == 0 and snap["stop"]["status"] == "none"
    fill = m.q("SELECT price, exec_time FROM executions WHERE order_ref = 'ema-SMH-20250521-exit-open'").iloc[0]
    assert fill["price"] == 241.03  # the open of 2025-05-22
    trades = m.q(explain_sql())
    assert trades.iloc[-1]["decided_by"] == "ema" and "exit at the next session's open" in trades.iloc[-1]["reason"]


# --------------------------------------------------------------------------------------------------------------
# early close


def test_early_close_decides_at_1255_and_folds_the_1300_close(market):
    m = market(at(2025, 11, 28, 12, 55))
    with pytest.raises(ValueError, match="outside"):
        ema_entry(as_of=at(2025, 11, 28, 15, 55))  # after the early close: not a decision time
    out = ema_entry(as_of=at(2025, 11, 28, 12, 55))
    assert out["decision"] == "BUY" and out["fill_price"] == 351.26  # the 12:55 bar's open
    m.to(at(2025, 11, 28, 13, 0))
    upd = ema_update(as_of=at(2025, 11, 28, 13, 0))
    assert upd["close"] == 352.5 and upd["signal"] == "BULL"  # the 12:55 bar's close is the day's close


def test_update_waits_for_the_final_bar_and_fails_clearly_when_it_never_comes(market, monkeypatch):
    monkeypatch.setenv("TRADEFLOW_EMA_CLOSE_SETTLE_SECONDS", "120")
    monkeypatch.setenv("TRADEFLOW_EMA_CLOSE_MAX_WAIT_SECONDS", "0.3")
    monkeypatch.setenv("TRADEFLOW_EMA_CLOSE_RETRY_SECONDS", "0.1")
    m = market(at(2025, 5, 27, 16, 0))
    state = ema_update(as_of=at(2025, 5, 27, 16, 0), return_state=True)
    assert state.type == StateType.FAILED
    failed = m.q("SELECT outcome FROM flow_events WHERE event = 'failed'")["outcome"][0]
    assert "not final" in failed and "+ 120 s settling" in failed
    assert m.q("SELECT count(*) AS n FROM ema_state WHERE session = '2025-05-27'")["n"][0] == 0
    m.to(at(2025, 5, 27, 16, 2))
    assert ema_update(as_of=at(2025, 5, 27, 16, 0))["close"] == 245.0


# --------------------------------------------------------------------------------------------------------------
# reruns, late runs, half-known state


def test_reruns_send_nothing_twice_and_write_no_second_snapshot(market):
    m = market(at(2025, 5, 27, 15, 55))
    first = ema_entry(as_of=at(2025, 5, 27, 15, 55))
    second = ema_entry(as_of=at(2025, 5, 27, 15, 55))
    assert not first["rerun"] and second["rerun"] and second["decision"] == "BUY"
    assert len(m.orders("ema-SMH-20250527-entry")) == 1 and len(m.orders("ema-SMH-20250527-entry-stop")) == 1
    assert m.position() == first["shares"]
    assert m.q("SELECT count(*) AS n FROM signals")["n"][0] == 2  # the decision and its stop, once each
    m.to(at(2025, 5, 28, 9, 30))
    one = equity_snapshot(as_of=at(2025, 5, 28, 9, 30))
    m.to(at(2025, 5, 28, 9, 31))  # a minute later NetLiquidation differs; E0 and the stop do not
    two = equity_snapshot(as_of=at(2025, 5, 28, 9, 30))
    assert one["snapshot_new"] and not two["snapshot_new"] and two["e0"] == one["e0"]
    assert m.q("SELECT count(*) AS n FROM equity_snapshots")["n"][0] == 1
    assert len(m.orders("ema-SMH-20250528-stop")) == 1 and two["stop"]["stop_price"] == one["stop"]["stop_price"]


def test_an_entry_partly_filled_in_time_is_cancelled_and_what_was_bought_is_protected(market, monkeypatch):
    monkeypatch.setenv("TRADEFLOW_EMA_FILL_TIMEOUT_SECONDS", "1")
    m = market(at(2025, 5, 27, 15, 55))
    m.admin.partial_fill(0.5)  # half fills at 15:55; the rest would wait for the next bar: the next session
    state = ema_entry(as_of=at(2025, 5, 27, 15, 55), return_state=True)
    assert state.type == StateType.FAILED
    entry = m.orders("ema-SMH-20250527-entry")[0]
    assert entry.status == "Cancelled" and 0 < entry.filled < entry.quantity
    [stop] = m.orders("ema-SMH-20250527-entry-stop")
    assert stop.is_open and stop.quantity == entry.filled == m.position()
    assert "not done within" in m.q("SELECT outcome FROM flow_events WHERE event = 'failed'")["outcome"][0]
    assert m.q("SELECT status FROM orders WHERE order_ref = 'ema-SMH-20250527-entry'")["status"][0] == "Cancelled"


def test_a_halt_keeps_yesterdays_stop_working(market):
    m = market(at(2025, 5, 27, 15, 55))
    ema_entry(as_of=at(2025, 5, 27, 15, 55))
    KillSwitch(get_settings().state_dir).halt(m.journal, "tester", "testing", at(2025, 5, 27, 17, 0))
    m.to(at(2025, 5, 28, 9, 30))
    state = equity_snapshot(as_of=at(2025, 5, 28, 9, 30), return_state=True)
    assert state.type == StateType.FAILED
    assert "TradingHaltedError" in m.q("SELECT outcome FROM flow_events WHERE event = 'failed'")["outcome"][0]
    assert m.orders("ema-SMH-20250527-entry-stop")[0].is_open and not m.orders("ema-SMH-20250528-stop")


def test_a_late_entry_does_not_trade_and_says_why(market):
    m = market(at(2025, 5, 27, 15, 59))
    state = ema_entry(as_of=at(2025, 5, 27, 15, 55), return_state=True)
    assert state.type == StateType.COMPLETED and state.name == "SkippedLate"
    assert not m.orders() and m.q("SELECT count(*) AS n FROM signals")["n"][0] == 0
    skipped = m.q("SELECT outcome FROM flow_events WHERE event = 'skipped' AND deployment = 'ema-entry'")
    assert "4.0 minutes after its scheduled time" in skipped["outcome"][0]
    late = equity_snapshot(as_of=at(2025, 5, 27, 9, 30), return_state=True)
    assert late.type == StateType.COMPLETED and late.name == "SkippedLate"


def test_no_price_means_no_stop_and_a_clear_failure(market):
    m = market(at(2025, 5, 21, 9, 30))
    m.buy(100, "carried-position")
    m.admin.no_data("SMH", quotes=True, history=False)
    state = equity_snapshot(as_of=at(2025, 5, 21, 9, 30), return_state=True)
    assert state.type == StateType.FAILED
    outcome = m.q("SELECT outcome FROM flow_events WHERE event = 'failed'")["outcome"][0]
    assert "SMH" in outcome and "354" in outcome
    assert m.q("SELECT count(*) AS n FROM equity_snapshots")["n"][0] == 1  # E0 is known; the stop is not placed
    assert not [o for o in m.orders() if o.order_type == "STP"]
    m.admin.clear_faults()  # a rerun once the price is back places the stop with the E0 first recorded
    assert equity_snapshot(as_of=at(2025, 5, 21, 9, 30))["stop"]["status"] == "Submitted"


# --------------------------------------------------------------------------------------------------------------
# EMA state: daily updates equal a full recomputation


def test_state_after_daily_updates_equals_full_recomputation(market):
    days = [(2025, 6, d) for d in (2, 3, 4, 5, 6, 9, 10)]
    m = market(at(*days[0], 16, 0))
    for i, d in enumerate(days):
        if i == 4:
            continue  # a missed update: the next one catches it up from the broker's daily bars
        m.to(at(*d, 16, 0))
        ema_update(as_of=at(*d, 16, 0))
    rows = m.q("SELECT session, close, ema_fast, ema_slow, closes_seen FROM ema_state ORDER BY session")
    assert list(rows["closes_seen"]) == list(range(1, len(rows) + 1))
    assert str(rows["session"].iloc[-1])[:10] == "2025-06-10"
    fast, slow = ema_series(list(rows["close"]), 25), ema_series(list(rows["close"]), 125)
    assert rows["ema_fast"].iloc[-1] == pytest.approx(fast[-1], rel=1e-12)
    assert rows["ema_slow"].iloc[-1] == pytest.approx(slow[-1], rel=1e-12)
    assert list(rows["ema_fast"]) == pytest.approx(fast, rel=1e-12)
    # and the same closes from the broker give the same state
    with IBBroker(client_id=96, settings=get_settings()) as broker:
        bars = broker.historical_bars("SMH", "1 day", "4 Y")
    closes = bars["close"][[ts.date() >= rows["session"].iloc[0].date() for ts in bars.index]]
    full = init_ema_state(zip([ts.date() for ts in closes.index], closes, strict=True), min_history=1)
    assert full.session.isoformat() == "2025-06-10" and full.count == len(rows)
    assert full.ema_fast == pytest.approx(rows["ema_fast"].iloc[-1], rel=1e-12)
    assert full.ema_slow == pytest.approx(rows["ema_slow"].iloc[-1], rel=1e-12)
