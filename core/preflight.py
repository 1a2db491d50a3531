"""The pre-open checklist (`preflight`, 09:00 New York every session): what must be true for the day's runs to
do their job, each item green, amber (worth knowing, not blocking) or red (the run fails naming it).

The facts are gathered by the flow (`tasks/preflight.py`: broker, journal, registry, disk, Prefect); this
module only decides. Items, in order:

| item | red when |
|---|---|
| connection | TWS / IB Gateway does not answer at host:port with the client id |
| account | paper mode on an account that is not a paper account (IB paper ids start with "D"), or live mode on
  another account than TRADEFLOW_LIVE_ACCOUNT |
| market data <SYMBOL> | no usable price, or delayed data (the EMA flows refuse delayed prices) |
| buying power | BuyingPower below the EMA entry's planned notional: NetLiquidation x L (L from VIX, strategies.md) |
| model <SYMBOL> | no MTF champion, or one older than `max_model_age_days` |
| kill switch | trading is halted (who, why, since when) |
| position breaks | an unresolved break blocks orders for a symbol |
| disk | free space in the state directory below `min_free_mb` |
| schedule window | the deployed schedules end within `min_schedule_days` (amber: not deployed, e.g. a replay) |

Nothing here reads the clock: `as_of` is the run's (aware) time.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["green", "amber", "red"]


@dataclass(frozen=True)
class CheckItem:
    """One line of the checklist: `name`, `status` and `detail` (what was seen, and for red why it blocks)."""

    name: str
    status: Status
    detail: str


@dataclass(frozen=True)
class QuoteFact:
    """A symbol's current price as the broker gave it (`price` USD, None when none), `delayed` data or not, or
    the `error` the request raised."""

    symbol: str
    price: float | None = None
    delayed: bool = False
    error: str | None = None


@dataclass
class PreflightFacts:
    """What the flow gathered. Broker fields are None when the connection failed (`connect_error`).

    Attributes:
        host, port, client_id: where the connection went.
        connect_error: the connection's error message, or None when connected.
        trading_mode, live_account: the settings.
        account: the account id the broker reported.
        quotes: one per symbol (EMA symbol and the MTF symbols).
        net_liquidation, buying_power: USD, from the broker's account values.
        leverage, leverage_reason: the EMA entry's L for today (from VIX) and why.
        champions: MTF symbol -> (version, created_at aware) or None when the registry has no champion.
        halt: (who, reason, at ISO) when halted, else None.
        open_breaks: symbols with an unresolved position break.
        free_bytes: free space of the state directory's file system, bytes.
        schedule_ends: the date the deployed schedules stop firing (None: not deployed / unknown).
    """

    host: str
    port: int
    client_id: int
    trading_mode: str
    live_account: str | None = None
    connect_error: str | None = None
    account: str | None = None
    quotes: list[QuoteFact] = field(default_factory=list)
    net_liquidation: float | None = None
    buying_power: float | None = None
    leverage: float | None = None
    leverage_reason: str = ""
    champions: dict[str, tuple[str, dt.datetime] | None] = field(default_factory=dict)
    halt: tuple[str, str, str] | None = None
    open_breaks: list[str] = field(default_factory=list)
    free_bytes: int | None = None
    schedule_ends: dt.date | None = None


@dataclass(frozen=True)
class PreflightLimits:
    """Thresholds: `min_free_mb` (MiB free in the state dir), `max_model_age_days` (days since a champion was
    trained, as_of of its training), `min_schedule_days` (days left in the deployed schedule window)."""

    min_free_mb: float = 500.0
    max_model_age_days: float = 45.0
    min_schedule_days: int = 30


def evaluate(facts: PreflightFacts, as_of: dt.datetime, limits: PreflightLimits = PreflightLimits()) -> list[CheckItem]:
    """The checklist for `facts` at `as_of` (aware), in the order of the module docstring.

    Raises:
        ValueError: `as_of` is naive.
    """
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    items: list[CheckItem] = []
    where = f"{facts.host}:{facts.port} client id {facts.client_id}"
    connected = facts.connect_error is None
    if connected:
        items.append(CheckItem("connection", "green", f"connected to {where}"))
    else:
        items.append(CheckItem("connection", "red", f"no connection to {where}: {facts.connect_error}"))
    not_checked = "not checked: no broker connection"

    if not connected or facts.account is None:
        items.append(CheckItem("account", "red", not_checked))
    elif facts.trading_mode == "live":
        ok = facts.account == facts.live_account
        items.append(CheckItem("account", "green" if ok else "red",
                               f"live trading on {facts.account}" if ok else
                               f"live mode but the broker's account {facts.account} is not TRADEFLOW_LIVE_ACCOUNT "
                               f"{facts.live_account}"))
    else:
        ok = facts.account.upper().startswith("D")
        items.append(CheckItem("account", "green" if ok else "red",
                               f"paper trading on {facts.account}" if ok else
                               f"paper mode but {facts.account} is not a paper account (IB paper ids start with D)"))

    for q in facts.quotes:
        name = f"market data {q.symbol}"
        if not connected:
            items.append(CheckItem(name, "red", not_checked))
        elif q.error or q.price is None or not math.isfinite(q.price) or q.price <= 0:
            items.append(CheckItem(name, "red", f"no usable price: {q.error or q.price!r}"))
        elif q.delayed:
            items.append(CheckItem(name, "red", f"delayed data ({q.price:.2f} USD): the EMA flows refuse delayed "
                                                "prices; subscribe to live data"))
        else:
            items.append(CheckItem(name, "green", f"live, {q.price:.2f} USD"))

    if not connected or facts.net_liquidation is None or facts.buying_power is None or facts.leverage is None:
        items.append(CheckItem("buying power", "red", not_checked))
    else:
        planned = facts.net_liquidation * facts.leverage
        text = (f"BuyingPower {facts.buying_power:,.0f} USD for the EMA entry's planned {planned:,.0f} USD "
                f"(NetLiquidation {facts.net_liquidation:,.0f} x L {facts.leverage:g}: {facts.leverage_reason})")
        items.append(CheckItem("buying power", "green" if facts.buying_power >= planned else "red",
                               text if facts.buying_power >= planned else text + ": the entry would be sized down"))

    for symbol, champ in facts.champions.items():
        name = f"model {symbol}"
        if champ is None:
            items.append(CheckItem(name, "red", "no MTF champion in the registry: mtf-signal fails and trades nothing "
                                                f"for {symbol} (./run train --symbols {symbol})"))
            continue
        version, created = champ
        age = (as_of - created).total_seconds() / 86400
        ok = age <= limits.max_model_age_days
        items.append(CheckItem(name, "green" if ok else "red",
                               f"champion {version}, trained {created.date()} ({age:.0f} days ago)"
                               + ("" if ok else f", older than {limits.max_model_age_days:g} days: did retrain run?")))

    if facts.halt is None:
        items.append(CheckItem("kill switch", "green", "not halted"))
    else:
        who, reason, at = facts.halt
        items.append(CheckItem("kill switch", "red", f"halted by {who} at {at}: {reason} (./run resume --reason ...)"))

    if facts.open_breaks:
        items.append(CheckItem("position breaks", "red", "unresolved breaks block orders for "
                               + ", ".join(facts.open_breaks) + " (./run resolve SYMBOL --note ...)"))
    else:
        items.append(CheckItem("position breaks", "green", "none open"))

    if facts.free_bytes is None:
        items.append(CheckItem("disk", "red", "free space of the state directory unknown"))
    else:
        free_mb = facts.free_bytes / 2**20
        ok = free_mb >= limits.min_free_mb
        items.append(CheckItem("disk", "green" if ok else "red", f"{free_mb:,.0f} MiB free in the state directory"
                               + ("" if ok else f", under {limits.min_free_mb:g} MiB: the journal may fail to write")))

    if facts.schedule_ends is None:
        items.append(CheckItem("schedule window", "amber", "no deployed schedule found (not deployed, or a replay)"))
    else:
        days = (facts.schedule_ends - as_of.date()).days
        ok = days >= limits.min_schedule_days
        items.append(CheckItem("schedule window", "green" if ok else "red",
                               f"deployed schedules end {facts.schedule_ends} ({days} days left)"
                               + ("" if ok else ": run ./run deploy")))
    return items


def red_items(items: list[CheckItem]) -> list[CheckItem]:
    return [i for i in items if i.status == "red"]


def checklist_markdown(items: list[CheckItem], as_of: dt.datetime) -> str:
    """The checklist artifact: a heading (green / red with the count) and one table row per item."""
    red = red_items(items)
    icon = {"green": "OK", "amber": "note", "red": "RED"}
    head = (f"### preflight {as_of.isoformat()}: "
            + ("all green" if not red else f"{len(red)} red: {', '.join(i.name for i in red)}"))
    rows = "\n".join(f"| {icon[i.status]} | {i.name} | {i.detail.replace('|', '/')} |" for i in items)
    return f"{head}\n\n| status | item | detail |\n|---|---|---|\n{rows}\n"


def failure_message(items: list[CheckItem]) -> str:
    """One line per red item, 'item: why' (the run's error, which the alert quotes)."""
    return "preflight red: " + "; ".join(f"{i.name}: {i.detail}" for i in red_items(items))


def as_table(items: list[CheckItem]) -> list[dict[str, Any]]:
    return [{"status": i.status, "item": i.name, "detail": i.detail} for i in items]
