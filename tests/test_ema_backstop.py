"""The EMA stop's second line (the 5-minute equity check inside `mtf-signal`) runs whatever happens to the MTF
strategy (issue 19, finding 7): the real `mtf-signal` flow with no MTF champion at all still exits SMH when the
stop order is gone and equity fell through 0.98 x E0 (2025-05-28, tests/test_ema_flows.py)."""

from __future__ import annotations

from flows.mtf_signal import mtf_signal
from tests.test_ema_flows import at, long_without_its_stop, market  # noqa: F401  (the fixture)


def test_the_ema_backstop_runs_when_the_mtf_champion_is_missing(market):  # noqa: F811
    m, snap = long_without_its_stop(market)
    m.to(at(2025, 5, 28, 15, 40))  # SMH 243.11: equity below 0.98 E0
    assert m.position() == snap["position_qty"] > 0

    state = mtf_signal(as_of=at(2025, 5, 28, 15, 40), return_state=True)  # no MTF model in the registry
    assert state.is_failed()
    assert "ModelUnavailableError" in state.message and "AAPL has no champion" in state.message
    assert "EMA stop second line (ran first): exit" in state.message, state.message
    assert m.position() == 0  # the backstop sold SMH
    assert len(m.orders("ema-SMH-20250528-stop2")) == 1
    assert m.q("SELECT decision FROM signals WHERE strategy = 'ema_stop2'")["decision"][0] == "SELL"
    assert m.q("SELECT count(*) AS n FROM signals WHERE strategy = 'mtf'")["n"][0] == 0  # MTF decided nothing
