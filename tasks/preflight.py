"""The pre-open check's I/O: gather `core.preflight.PreflightFacts` from the broker, the journal, the model
registry, the kill switch, the state directory's disk and the Prefect server (each step a Prefect task)."""

from __future__ import annotations

import datetime as dt
import shutil

from prefect import task
from prefect.cache_policies import NONE

from core.broker import BrokerError
from core.preflight import PreflightFacts, QuoteFact
from core.strategies.ema import VixInfo, choose_leverage
from models.registry import ModelRegistry
from tasks.runtime import FlowRun, client_id_offset


@task(name="broker-facts", cache_policy=NONE)
def broker_facts(run: FlowRun, facts: PreflightFacts) -> None:
    """Connection, account, a quote per symbol, account values and the EMA entry's leverage, into `facts`;
    a failed connection is recorded in `facts.connect_error`, not raised."""
    s = run.settings
    try:
        with run.broker() as broker:
            facts.account = broker.account
            for symbol in [s.ema_symbol, *s.mtf_symbols]:
                try:
                    q = broker.current_price(symbol)
                    facts.quotes.append(QuoteFact(symbol, q.price, q.delayed))
                except BrokerError as exc:
                    facts.quotes.append(QuoteFact(symbol, error=f"{type(exc).__name__}: {exc}"))
            values = broker.account_values()
            facts.net_liquidation, facts.buying_power = values.net_liquidation, values.buying_power
            try:
                vix: float | None = broker.vix()
            except BrokerError:
                vix = None
            if vix is None:
                # no VIX: check the worst case, the table's highest leverage
                facts.leverage = max([lev for _, lev in s.vix_leverage] + [s.default_leverage])
                facts.leverage_reason = "VIX unavailable: the highest leverage of the table"
            else:
                choice = choose_leverage(VixInfo(current=vix, last_close=None), s.vix_leverage, s.default_leverage)
                facts.leverage, facts.leverage_reason = choice.leverage, f"VIX {vix:.2f}"
    except BrokerError as exc:
        facts.connect_error = f"{type(exc).__name__}: {exc}"
        facts.quotes = [QuoteFact(sym) for sym in [s.ema_symbol, *s.mtf_symbols]]


@task(name="local-facts", cache_policy=NONE)
def local_facts(run: FlowRun, facts: PreflightFacts) -> None:
    """MTF champions, kill switch, open breaks, free disk of the state directory, into `facts`."""
    s = run.settings
    registry = ModelRegistry(s.models_dir, run.journal)
    for symbol in s.mtf_symbols:
        champ = registry.champion(symbol)
        facts.champions[symbol] = None if champ is None else (
            champ.version, dt.datetime.fromisoformat(champ.metadata["created_at"]))
    halt = run.kill_switch.current()
    facts.halt = None if halt is None else (halt.who, halt.reason, halt.at.isoformat() if halt.at else "unknown")
    with run.journal.transaction() as tx:
        facts.open_breaks = sorted({b["symbol"] for b in tx.open_breaks()})
    s.state_dir.mkdir(parents=True, exist_ok=True)
    facts.free_bytes = shutil.disk_usage(s.state_dir).free


@task(name="schedule-window", cache_policy=NONE)
def schedule_window() -> dt.date | None:
    """The earliest date the deployed schedules stop firing (None when nothing is deployed or the server does
    not answer: a replay or an ad hoc run outside a deployment)."""
    from deployments.deploy import deployed_ends, run as run_coro

    try:
        ends = [d for d in run_coro(deployed_ends()).values() if d is not None]
    except Exception:  # noqa: BLE001 - no server to ask: not deployed
        return None
    return min(ends) if ends else None


def new_facts(run: FlowRun) -> PreflightFacts:
    s = run.settings
    return PreflightFacts(host=s.ibkr_host, port=s.ibkr_port,
                          client_id=s.ibkr_client_id + client_id_offset(run.deployment),
                          trading_mode=s.trading_mode, live_account=s.live_account)
