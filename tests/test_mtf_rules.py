"""The MTF decision rules (core.strategies.mtf), hourly bar timing and freshness (core.bar_store), and the
promotion rule (models.evaluate): pure functions, no broker, no TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta

import pandas as pd
import pytest

from core.bar_store import bar_ends, bars_problem, complete_bars, session_time_between
from core.calendar import NY, sessions
from core.settings import PROJECT_ROOT, load_settings
from core.strategies.mtf import Fill, MtfRules, day_pnl, decide, loss_limit_reached, open_position, runs_held
from models.evaluate import PromotionRule, RuleParams, promotion_decision

R = MtfRules()


def t(day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 3, day, hh, mm, tzinfo=NY)


# ------------------------------------------------------------------------------------------------------------
# decide


@pytest.mark.parametrize("p, price, limit, action, qty, code", [
    (0.52, 250.0, False, "BUY", 40, "entry"),  # at the threshold; floor(10,000 / 250)
    (0.519, 250.0, False, "NO_TRADE", 0, "below_entry"),
    (0.9, 333.0, False, "BUY", 30, "entry"),  # floor(30.03)
    (0.9, 250.0, True, "NO_TRADE", 0, "loss_limit"),
    (0.9, None, False, "NO_TRADE", 0, "no_price"),
    (None, 250.0, False, "NO_TRADE", 0, "no_probability"),
    (0.9, 20_000.0, False, "NO_TRADE", 0, "too_small"),
])
def test_decisions_when_flat(p, price, limit, action, qty, code):
    d = decide(0, None, p, price, limit, R)
    assert (d.action, d.quantity, d.code) == (action, qty, code)
    assert d.reason


@pytest.mark.parametrize("runs, p, action, code", [
    (1, 0.1, "HOLD", "min_hold"),  # below the exit threshold but not held 2 runs yet
    (2, 0.1, "SELL", "exit_threshold"),
    (2, 0.5, "HOLD", "hold"),  # 0.50 is not below 0.50
    (2, 0.4999, "SELL", "exit_threshold"),
    (23, 0.9, "HOLD", "hold"),
    (24, 0.9, "SELL", "max_hold"),
    (30, None, "SELL", "max_hold"),  # time alone: no P(up) needed
    (5, None, "HOLD", "no_probability"),
])
def test_decisions_when_long(runs, p, action, code):
    d = decide(37, runs, p, 250.0, True, R)  # the loss limit never stops an exit
    assert (d.action, d.code) == (action, code)
    assert d.quantity == (37 if action == "SELL" else 0)


def test_blocked_closed_and_short_send_nothing():
    assert decide(37, 30, 0.1, 250.0, False, R, blocked="order working").action == "HOLD"
    assert decide(0, None, 0.9, 250.0, False, R, blocked="order working").code == "blocked"
    assert decide(37, 30, 0.1, 250.0, False, R, market_open=False).action == "HOLD"
    assert decide(0, None, 0.9, 250.0, False, R, market_open=False).code == "closed"
    assert decide(-5, None, 0.9, 250.0, False, R).code == "short"
    assert decide(0, None, 0.9, 250.0, True, R, loss_limit_reason="P&L unknown").reason.startswith("P&L unknown")


@pytest.mark.parametrize("kwargs, match", [
    ({"p_up": float("nan")}, "p_up must be a finite"), ({"p_up": 1.2}, "probability"),
    ({"price": 0.0}, "price must be a finite number > 0"), ({"position": 5, "runs": None}, "runs held"),
])
def test_bad_inputs_are_named(kwargs, match):
    args = {"position": 0, "runs": None, "p_up": 0.9, "price": 100.0, "loss_limit": False} | kwargs
    with pytest.raises(ValueError, match=match):
        decide(**args)


def test_rules_come_from_the_settings():
    s = load_settings(mtf_entry_threshold=0.6, mtf_max_hold_runs=12, mtf_position_usd=5000)
    r = MtfRules.from_settings(s)
    assert (r.entry_threshold, r.max_hold_runs, r.position_usd) == (0.6, 12, 5000)
    assert RuleParams.from_settings(s).max_hold_runs == 12


def test_loss_limit_latches():
    assert not loss_limit_reached(-1999.99, 2000)
    assert loss_limit_reached(-2000, 2000)
    assert loss_limit_reached(500, 2000, hit_earlier=True)
    with pytest.raises(ValueError, match="day_pnl_usd"):
        loss_limit_reached(float("nan"), 2000)


# ------------------------------------------------------------------------------------------------------------
# runs held, position, P&L


def test_runs_held_counts_scheduled_runs_after_the_fill():
    days = sessions("2026-03-02", "2026-03-03")
    entry = t(2, 10, 5)  # filled at the 10:05 run's time
    assert runs_held(entry, t(2, 10, 5), days) == 0
    assert runs_held(entry, t(2, 10, 15), days) == 2
    assert runs_held(entry, t(2, 12, 5), days) == 24
    assert runs_held(entry + timedelta(seconds=1), t(2, 12, 5), days) == 24  # a fill a second later: same
    assert runs_held(entry, t(2, 10, 13), days) == 1  # an ad hoc run between slots
    # carried overnight: 15:35 … 16:00 (6 runs), then 09:35 … 10:00 (6 runs) the next session
    assert runs_held(t(2, 15, 30), t(3, 10, 0), days) == 12
    with pytest.raises(ValueError, match="timezone-aware"):
        runs_held(datetime(2026, 3, 2, 10, 5), t(2, 11), days)


def test_runs_held_skips_holidays_and_follows_early_closes():
    days = sessions("2025-11-26", "2025-11-28")  # Thanksgiving closed; the Friday closes at 13:00
    entry, as_of = datetime(2025, 11, 26, 15, 30, tzinfo=NY), datetime(2025, 11, 28, 13, 0, tzinfo=NY)
    assert runs_held(entry, as_of, days) == 6 + 42


def test_open_position_and_entry_time():
    fills = [Fill("AAPL", 10, 100, 1, t(2, 10, 5)), Fill("AAPL", -10, 101, 1, t(2, 11, 0)),
             Fill("AAPL", 20, 102, 1, t(2, 12, 0)), Fill("AAPL", 5, 103, 1, t(2, 12, 30))]
    assert open_position(fills) == (25, t(2, 12, 0))
    assert open_position(fills[:2]) == (0, None)
    assert open_position([]) == (0, None)


def test_day_pnl_realized_unrealized_and_carried_positions():
    fills = [Fill("TSLA", 10, 400.0, 1.0, t(2, 15, 0)),  # yesterday: carried 10 TSLA into today
             Fill("AAPL", 40, 250.0, 1.0, t(3, 10, 5)), Fill("AAPL", -40, 245.0, 1.0, t(3, 11, 0)),
             Fill("AAPL", 40, 246.0, 1.0, t(3, 12, 0))]
    pnl = day_pnl(fills, t(3, 9, 30), {"AAPL": 247.0, "TSLA": 390.0}, {"TSLA": 405.0})
    realized = 40 * (245 - 250)
    unrealized = 40 * (247 - 246) + 10 * (390 - 405)
    assert pnl == pytest.approx(realized + unrealized - 3.0)
    with pytest.raises(ValueError, match="no current price for AAPL"):
        day_pnl(fills, t(3, 9, 30), {"TSLA": 390.0}, {"TSLA": 405.0})
    with pytest.raises(ValueError, match="no previous close for TSLA"):
        day_pnl(fills, t(3, 9, 30), {"AAPL": 247.0, "TSLA": 390.0}, {})
    assert day_pnl([], t(3, 9, 30), {}, {}) == 0.0


# ------------------------------------------------------------------------------------------------------------
# hourly bars: ends, completeness, freshness


def _bars(starts: list[datetime]) -> pd.DataFrame:
    idx = pd.DatetimeIndex(starts, name="timestamp")
    return pd.DataFrame({"open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0}, index=idx)


def test_bar_ends_on_both_grids_and_early_closes():
    yf = [t(2, 9, 30), t(2, 10, 30), t(2, 15, 30)]
    assert bar_ends(yf) == [t(2, 10, 30), t(2, 11, 30), t(2, 16, 0)]
    ib = [t(2, 9, 30), t(2, 10, 0), t(2, 15, 0)]
    assert bar_ends(ib) == [t(2, 10, 0), t(2, 11, 0), t(2, 16, 0)]
    early = [datetime(2025, 11, 28, 12, 30, tzinfo=NY)]
    assert bar_ends(early) == [datetime(2025, 11, 28, 13, 0, tzinfo=NY)]
    with pytest.raises(ValueError, match="not in an NYSE session"):
        bar_ends([t(1, 10, 0)])  # a Sunday


def test_the_bar_in_progress_is_dropped_even_a_second_before_its_end():
    bars = _bars([t(2, 14, 30), t(2, 15, 30), t(3, 9, 30), t(3, 10, 30)])
    assert list(complete_bars(bars, t(3, 10, 30)).index) == [t(2, 14, 30), t(2, 15, 30), t(3, 9, 30)]
    early = t(3, 10, 30) - timedelta(seconds=1)  # a run that starts a second before its as_of
    assert list(complete_bars(bars, early).index) == [t(2, 14, 30), t(2, 15, 30)]


def test_freshness_in_session_time():
    days = sessions("2026-03-02", "2026-03-03")
    assert session_time_between(t(2, 16, 0), t(3, 10, 5), days) == timedelta(minutes=35)
    fresh = _bars([t(2, 15, 30)])
    assert bars_problem(fresh, t(3, 10, 5)) is None  # the previous close, 35 session minutes ago
    assert bars_problem(fresh, t(3, 10, 40)) is None  # 70 minutes: still allowed
    assert "stale bars" in bars_problem(fresh, t(3, 10, 45))
    assert bars_problem(_bars([]), t(3, 10, 5)) == "no complete hourly bar"


# ------------------------------------------------------------------------------------------------------------
# promotion rule


def _m(auc: float, ll: float, n: int = 120) -> dict:
    return {"roc_auc": auc, "log_loss": ll, "n": n}


def test_promotion_rule():
    rule = PromotionRule()
    assert promotion_decision(None, _m(0.4, 0.9), rule) == (True, "no champion")
    assert promotion_decision(_m(0.5, 0.69), _m(0.55, 0.695), rule)[0]  # better AUC, log loss within 0.01
    assert not promotion_decision(_m(0.5, 0.69), _m(0.55, 0.71), rule)[0]  # log loss worse by 0.02
    assert not promotion_decision(_m(0.55, 0.69), _m(0.55, 0.60), rule)[0]  # a tie in AUC keeps the champion
    assert not promotion_decision(_m(0.5, 0.69), _m(0.6, 0.6, n=20), rule)[0]  # too few samples
    assert not promotion_decision(_m(0.5, 0.69), _m(float("nan"), 0.6), rule)[0]
    assert promotion_decision(_m(0.9, 0.3), _m(0.5, 0.7), rule, champion_error="weights unreadable")[0]


def test_the_signal_path_imports_no_tensorflow():
    code = ("import sys\nimport flows.mtf_signal, tasks.mtf_signal, core.bar_store, core.strategies.mtf\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'})\n"
            "assert not bad, bad\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_closed_edge_gate_bars_entries_only():
    from core.strategies.mtf import decide

    d = decide(0, None, 0.9, 100.0, False, entry_barred="edge gate closed: no evidence")
    assert (d.action, d.quantity, d.code) == ("NO_TRADE", 0, "edge_gate")
    assert d.reason.startswith("edge gate closed: no evidence; the rules would buy 100")
    # below the entry threshold the gate changes nothing; a long position still exits
    assert decide(0, None, 0.4, 100.0, False, entry_barred="closed").code == "below_entry"
    assert decide(50, 30, 0.9, 100.0, False, entry_barred="closed").action == "SELL"
