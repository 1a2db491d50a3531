"""TWS API wire format: framing, field encoding and the server-to-client messages the paper exchange sends.

Every message is a 4-byte big-endian length followed by UTF-8 fields, each terminated by NUL. Field lists are
those of ib_insync 0.9.86 / ib_async 2.1.0 decoders at server versions 157 and 176 (see
`shared/reference/tws-protocol.md`). Messages the decoders unpack with an exact field count (position,
execDetails, commissionReport, tickPrice, portfolioValue, nextValidId, managedAccounts) must keep that count:
one field too many or too few and the client silently drops the message.

Nothing here does I/O; `encode_*` functions return lists of string fields and `frame` turns them into bytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

SUPPORTED_SERVER_VERSIONS = (157, 176)
MIN_CLIENT_VERSION = 157
UNSET_INTEGER = 2**31 - 1
UNSET_DOUBLE = 1.7976931348623157e308


def fmt(v: Any) -> str:
    """One field as the TWS API writes it: None -> '', bool -> '1'/'0', float without exponent noise."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        if math.isinf(v):
            return "Infinite"
        if v == int(v) and abs(v) < 1e15:
            return str(int(v)) if v != 0 else "0"
        return repr(round(v, 8))
    return str(v)


def frame(fields: list[Any]) -> bytes:
    """Encode `fields` as one length-prefixed message."""
    body = "".join(fmt(f) + "\0" for f in fields).encode("utf-8")
    return struct.pack(">I", len(body)) + body


def split_fields(body: bytes) -> list[str]:
    """Split a message body into its fields (the trailing NUL's empty element removed)."""
    fields = body.decode("utf-8", errors="backslashreplace").split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    return fields


@dataclass(frozen=True)
class Instrument:
    """A contract the exchange knows: a SMART/USD stock or an index.

    conId is stable for a symbol; `sec_type` is 'STK' or 'IND'; `exchange` is where orders route (SMART for
    stocks, the listing exchange for indices).
    """

    symbol: str
    con_id: int
    sec_type: str = "STK"
    exchange: str = "SMART"
    primary_exchange: str = "NASDAQ"
    currency: str = "USD"
    long_name: str = ""

    def c11(self) -> list[Any]:
        """conId, symbol, secType, lastTrade, strike, right, multiplier, exchange, currency, localSymbol,
        tradingClass: the contract block of openOrder, completedOrder and execDetails."""
        return [self.con_id, self.symbol, self.sec_type, "", "0", "", "", self.exchange, self.currency,
                self.symbol, self.symbol if self.sec_type == "STK" else ""]


# ----------------------------------------------------------------------------------------------------------------
# server -> client messages


def handshake(server_version: int, time_str: str) -> list[Any]:
    """The 2-field reply to the client's version range."""
    return [server_version, time_str]


def managed_accounts(accounts: list[str]) -> list[Any]:
    return [15, 1, ",".join(accounts)]


def next_valid_id(order_id: int) -> list[Any]:
    return [9, 1, order_id]


def error(sv: int, req_id: int, code: int, message: str) -> list[Any]:
    fields: list[Any] = [4, 2, req_id, code, message]
    if sv >= 166:
        fields.append("")
    return fields


def current_time(epoch: int) -> list[Any]:
    return [49, 1, epoch]


def contract_details(sv: int, req_id: int, ins: Instrument) -> list[Any]:
    """contractDetails (10) for a stock or index, version-gated at 164."""
    f: list[Any] = [10]
    if sv < 164:
        f.append(8)
    f += [req_id, ins.symbol, ins.sec_type, "", "0", "", ins.exchange, ins.currency, ins.symbol,
          ins.symbol if ins.sec_type == "STK" else "", ins.symbol if ins.sec_type == "STK" else "",
          ins.con_id, 0.01]
    if sv < 164:
        f.append(1)  # mdSizeMultiplier
    f += ["" if ins.sec_type == "IND" else "",  # multiplier
          "LMT,MKT,STP" if ins.sec_type == "STK" else "",  # orderTypes
          "SMART," + ins.primary_exchange,  # validExchanges
          1, 0, ins.long_name or ins.symbol, ins.primary_exchange, "", "", "", "",
          "US/Eastern", "", "", "", "", 0,  # timeZoneId, tradingHours, liquidHours, evRule, evMultiplier, secIds
          1, "", "", "26" if ins.sec_type == "STK" else "", "", "COMMON" if ins.sec_type == "STK" else ""]
    if sv >= 164:
        f += [1, 1, 100]
    return f


def contract_details_end(req_id: int) -> list[Any]:
    return [52, 1, req_id]


@dataclass
class OrderView:
    """What the encoders need to know of an order (see engine.Order)."""

    order_id: int
    client_id: int
    perm_id: int
    action: str
    quantity: float
    order_type: str
    lmt_price: float | None
    aux_price: float | None
    tif: str
    account: str
    order_ref: str
    outside_rth: bool
    status: str
    filled: float
    avg_fill_price: float
    last_fill_price: float
    completed_time: str = ""
    completed_status: str = ""
    parent_id: int = 0
    oca_group: str = ""
    oca_type: int = 0
    good_till_date: str = ""
    what_if: bool = False
    margin: "OrderMargin | None" = None  # what-if replies: the order's margin impact
    why_held: str = ""


@dataclass(frozen=True)
class OrderMargin:
    """The OrderState of a what-if reply (USD): margin and equity with loan before, change, after; commission."""

    init_before: float
    maint_before: float
    equity_before: float
    init_change: float
    maint_change: float
    equity_change: float
    init_after: float
    maint_after: float
    equity_after: float
    commission: float
    warning: str = ""

    def fields(self) -> list[Any]:
        """openOrder fields 87..100 (initMarginBefore .. warningText)."""
        return [self.init_before, self.maint_before, self.equity_before, self.init_change, self.maint_change,
                self.equity_change, self.init_after, self.maint_after, self.equity_after, self.commission,
                "", "", "USD", self.warning]


def open_order(sv: int, ins: Instrument, o: OrderView) -> list[Any]:
    """openOrder (5): 120 fields at sv 157, 128 at 170-176 for a plain order."""
    f: list[Any] = [5, o.order_id, *ins.c11(), o.action, o.quantity, o.order_type,
                    o.lmt_price, o.aux_price, o.tif, o.oca_group, o.account, "", 0, o.order_ref, o.client_id,
                    o.perm_id, o.outside_rth, False, "", "", "",  # hidden, discretionaryAmt, goodAfterTime, shAlloc
                    "", "", "", "", "", o.good_till_date, "",  # 31..37 faGroup..modelCode, goodTillDate, rule80A
                    ]
    # f now ends at index 37 (rule80A); continue 38 percentOffset .. 63 deltaNeutralAuxPrice
    f += ["", "", "0", "", -1, "", "", "", "", "", "",  # 38..48
          "", False, False, False, "", o.oca_type, False, False, "",  # 49..57 (54 ocaType)
          o.parent_id, 0, "", "", "", ""]  # 58 parentId .. 63
    f += ["", "", "", "", "", "", ""]  # 64..70
    f += [0, 0, 0]  # 71..73 combo legs, order combo legs, smart combo params
    f += ["", "", ""]  # 74..76 scale
    f += [""]  # 77 hedgeType
    f += [False, "", "", False]  # 78..81
    f += [0]  # 82 dncPresent
    f += [""]  # 83 algoStrategy
    state = o.margin.fields() if o.margin else [""] * 14  # 87..100 OrderState margin fields
    f += [False, o.what_if, o.status, *state, False, False]  # 84..102
    f += [0]  # 103 conditions
    f += ["", "", "", "", "", "", "", 0, "", "", "", "", False, False, False, False]  # 104..119
    if sv >= 159:
        f.append("")  # duration
    if sv >= 160:
        f.append("")  # postToAts
    if sv >= 162:
        f.append(False)  # autoCancelParent
    if sv >= 170:
        f += ["", "", "", "", ""]
    return f


def completed_order(sv: int, ins: Instrument, o: OrderView) -> list[Any]:
    """completedOrder (101): 92 fields at sv 157, 97 at 170-176."""
    f: list[Any] = [101, *ins.c11(), o.action, o.quantity, o.order_type, o.lmt_price, o.aux_price, o.tif,
                    o.oca_group, o.account, "", 0, o.order_ref, o.perm_id, o.outside_rth, False, "", "",  # ..27
                    "", "", "", "", "", o.good_till_date, "", "", "", "", "", -1,  # 28..39 (33 goodTillDate)
                    "", "", "", "", "", "", False, False, "", o.oca_type, 0, "", "", "", ""]  # 40..54 (49 ocaType)
    f += ["", "", "", "", ""]  # 55..59
    f += [0, 0, 0]  # 60..62
    f += ["", "", ""]  # 63..65
    f += [""]  # 66 hedgeType
    f += ["", "", False, 0]  # 67..70
    f += [""]  # 71 algoStrategy
    f += [False, o.status, False, False]  # 72..75
    f += [0]  # 76 conditions
    f += ["", "", "", False, False, "", o.filled, "", False, "", False, False, "", o.completed_time,
          o.completed_status]  # 77..91
    if sv >= 170:
        f += ["", "", "", "", ""]
    return f


def order_status(o: OrderView) -> list[Any]:
    """orderStatus (3), 12 fields."""
    return [3, o.order_id, o.status, o.filled, o.quantity - o.filled, o.avg_fill_price, o.perm_id, o.parent_id,
            o.last_fill_price, o.client_id, o.why_held, 0.0]


@dataclass
class ExecView:
    """One execution as execDetails/commissionReport carry it."""

    exec_id: str
    order_id: int
    client_id: int
    perm_id: int
    time_str: str  # 'YYYYMMDD HH:MM:SS America/New_York'
    account: str
    side: str  # BOT / SLD
    shares: float
    price: float
    cum_qty: float
    avg_price: float
    order_ref: str
    commission: float
    realized_pnl: float
    liquidation: bool = False


def exec_details(req_id: int, ins: Instrument, e: ExecView) -> list[Any]:
    """execDetails (11): exactly 31 fields, no version field."""
    exch = "ISLAND" if ins.sec_type == "STK" else ins.exchange
    return [11, req_id, e.order_id, *ins.c11(), e.exec_id, e.time_str, e.account, exch, e.side, e.shares,
            e.price, e.perm_id, e.client_id, 1 if e.liquidation else 0, e.cum_qty, e.avg_price, e.order_ref, "", "", "", 1]


def commission_report(e: ExecView) -> list[Any]:
    """commissionReport (59): exactly 8 fields."""
    return [59, 1, e.exec_id, round(e.commission, 6), "USD", round(e.realized_pnl, 6), "", ""]


def exec_details_end(req_id: int) -> list[Any]:
    return [55, 1, req_id]


def position(account: str, ins: Instrument, qty: float, avg_cost: float) -> list[Any]:
    """position (61): exactly 16 fields."""
    return [61, 3, account, *ins.c11(), qty, round(avg_cost, 8)]


def position_end() -> list[Any]:
    return [62, 1]


def account_value(key: str, value: str, currency: str, account: str) -> list[Any]:
    return [6, 2, key, value, currency, account]


def portfolio_value(ins: Instrument, qty: float, price: float, avg_cost: float, unrealized: float,
                    realized: float, account: str) -> list[Any]:
    """portfolioValue (7): exactly 20 fields (primaryExchange in place of exchange)."""
    c = ins.c11()
    c[7] = ins.primary_exchange
    return [7, 8, *c, qty, price, round(qty * price, 6), round(avg_cost, 8), round(unrealized, 6),
            round(realized, 6), account]


def account_time(hhmm: str) -> list[Any]:
    return [8, 1, hhmm]


def account_download_end(account: str) -> list[Any]:
    return [54, 1, account]


def account_summary(req_id: int, account: str, tag: str, value: str, currency: str) -> list[Any]:
    return [63, 1, req_id, account, tag, value, currency]


def account_summary_end(req_id: int) -> list[Any]:
    return [64, 1, req_id]


def account_update_multi(req_id: int, account: str, key: str, value: str, currency: str) -> list[Any]:
    return [73, 1, req_id, account, "", key, value, currency]


def account_update_multi_end(req_id: int) -> list[Any]:
    return [74, 1, req_id]


def open_order_end() -> list[Any]:
    return [53, 1]


def completed_orders_end() -> list[Any]:
    return [102]


def historical_data(req_id: int, start: str, end: str, bars: list[tuple]) -> list[Any]:
    """historicalData (17): bars are (date_str, open, high, low, close, volume, wap, count)."""
    f: list[Any] = [17, req_id, start, end, len(bars)]
    for b in bars:
        f.extend(b)
    return f


def market_data_type(req_id: int, md_type: int) -> list[Any]:
    return [58, 1, req_id, md_type]


def tick_price(req_id: int, tick_type: int, price: float, size: float) -> list[Any]:
    """tickPrice (1): exactly 7 fields."""
    return [1, 6, req_id, tick_type, price, size, 0]


def tick_size(req_id: int, tick_type: int, size: float) -> list[Any]:
    return [2, 6, req_id, tick_type, size]


def tick_snapshot_end(req_id: int) -> list[Any]:
    return [57, 1, req_id]


def historical_data_update(req_id: int, bar: tuple) -> list[Any]:
    """historicalDataUpdate (90) of a keepUpToDate request: bar is (date_str, open, high, low, close, volume,
    wap, count); the wire order is barCount, date, open, close, high, low, wap, volume."""
    ds, o, h, l, c, v, wap, n = bar
    return [90, req_id, n, ds, o, c, h, l, wap, v]


def pnl(req_id: int, daily: float, unrealized: float, realized: float) -> list[Any]:
    """pnl (94): the account's daily, unrealized and realized P&L (USD)."""
    return [94, req_id, round(daily, 4), round(unrealized, 4), round(realized, 4)]


def pnl_single(req_id: int, position: float, daily: float, unrealized: float, realized: float,
               value: float) -> list[Any]:
    """pnlSingle (95): one position's shares, daily/unrealized/realized P&L and market value (USD)."""
    return [95, req_id, position, round(daily, 4), round(unrealized, 4), round(realized, 4), round(value, 4)]


def head_timestamp(req_id: int, stamp: str) -> list[Any]:
    """headTimestamp (88): the earliest bar's time."""
    return [88, req_id, stamp]


def symbol_samples(sv: int, req_id: int, found: list[Instrument]) -> list[Any]:
    """symbolSamples (79) of reqMatchingSymbols; sv >= 176 adds description and issuerId."""
    f: list[Any] = [79, req_id, len(found)]
    for ins in found:
        f += [ins.con_id, ins.symbol, ins.sec_type, ins.primary_exchange, ins.currency, 0]
        if sv >= 176:
            f += [ins.long_name or ins.symbol, ""]
    return f


def market_rule(rule_id: int, increments: list[tuple[float, float]]) -> list[Any]:
    """marketRule (93): (lowEdge, increment) pairs."""
    f: list[Any] = [93, rule_id, len(increments)]
    for low, inc in increments:
        f += [low, inc]
    return f


# ----------------------------------------------------------------------------------------------------------------
# client -> server parsing


@dataclass
class ContractRef:
    """The C12 contract block a client sends."""

    con_id: int
    symbol: str
    sec_type: str
    exchange: str
    primary_exchange: str
    currency: str

    @classmethod
    def parse(cls, f: list[str], i: int) -> "ContractRef":
        return cls(con_id=int(f[i] or 0), symbol=f[i + 1], sec_type=f[i + 2], exchange=f[i + 7],
                   primary_exchange=f[i + 8], currency=f[i + 9])


@dataclass
class PlaceOrderRequest:
    """The fields of placeOrder (3) the exchange acts on (indices of the reference, walked as
    `Client.placeOrder` writes them). `unsupported` names a feature the exchange rejects (combo, conditions,
    algo, ...) or is ''."""

    order_id: int
    contract: ContractRef
    action: str
    quantity: float
    order_type: str
    lmt_price: float | None
    aux_price: float | None
    tif: str
    account: str
    order_ref: str
    transmit: bool
    outside_rth: bool
    what_if: bool
    parent_id: int = 0
    oca_group: str = ""
    oca_type: int = 0
    good_till_date: str = ""
    good_after_time: str = ""
    unsupported: str = ""


def _opt_float(s: str) -> float | None:
    if s in ("", None):
        return None
    v = float(s)
    return None if v >= UNSET_DOUBLE else v


def _opt_int(s: str) -> int:
    if s in ("", None):
        return 0
    v = int(float(s))
    return 0 if v >= UNSET_INTEGER else v


def parse_place_order(f: list[str], sv: int) -> PlaceOrderRequest:
    """Parse placeOrder (3) at server version `sv` by walking its sections in the order `Client.placeOrder`
    writes them (combo legs, delta-neutral, scale, hedge, algo parameters) up to `whatIf`. Combos (BAG) and
    conditions are not walked further: `unsupported` says so and the server rejects the order."""
    unsupported = ""
    what_if = False
    good_after = good_till = ""
    oca_type = 0
    i = 35
    if f[4].upper() == "BAG":
        unsupported = "combo (BAG) orders"
    else:
        try:
            # 35 sharesAllocation, 36 discretionaryAmt, 37 goodAfterTime, 38 goodTillDate, 39..42 fa*, 43 modelCode,
            # 44 shortSaleSlot, 45 designatedLocation, 46 exemptCode, 47 ocaType, ... 65 deltaNeutralOrderType
            good_after, good_till, oca_type = f[37], f[38], _opt_int(f[47])
            dn_type = f[65]
            i = 67 + (8 if dn_type else 0)
            # continuousUpdate, referencePriceType, trailStopPrice, trailingPercent, scaleInit, scaleSubs, scaleIncr
            scale_incr = _opt_float(f[i + 6]) or 0.0
            i += 7 + (7 if scale_incr > 0 else 0)
            hedge_type = f[i + 3]  # scaleTable, activeStartTime, activeStopTime, hedgeType
            i += 4 + (1 if hedge_type else 0)
            i += 4  # optOutSmartRouting, clearingAccount, clearingIntent, notHeld
            i += 4 if f[i] == "1" else 1  # deltaNeutralContract
            algo = f[i]
            i += 1
            if algo:
                unsupported = unsupported or f"algo orders ({algo})"
                n = _opt_int(f[i])
                i += 1 + 2 * n
            what_if = f[i + 1] == "1"  # algoId, whatIf
            if dn_type:
                unsupported = unsupported or "delta-neutral orders"
            if hedge_type:
                unsupported = unsupported or "hedge orders"
            if scale_incr > 0:
                unsupported = unsupported or "scale orders"
            k = i + 6  # orderMiscOptions, solicited, randomizeSize, randomizePrice
            if f[18].upper() in ("PEG BENCH", "PEGBENCH"):
                k += 5
            if _opt_int(f[k]):
                unsupported = unsupported or "conditional orders"
        except (IndexError, ValueError):
            unsupported = "a placeOrder message the exchange could not read"
    return PlaceOrderRequest(
        order_id=int(f[1]), contract=ContractRef.parse(f, 2), action=f[16].upper(),
        quantity=float(f[17] or 0), order_type=f[18].upper(), lmt_price=_opt_float(f[19]),
        aux_price=_opt_float(f[20]), tif=(f[21] or "DAY").upper(), account=f[23], order_ref=f[26],
        transmit=f[27] != "0", outside_rth=f[33] == "1", what_if=what_if, parent_id=_opt_int(f[28]),
        oca_group=f[22], oca_type=oca_type, good_till_date=good_till, good_after_time=good_after,
        unsupported=unsupported)
