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


def open_order(sv: int, ins: Instrument, o: OrderView) -> list[Any]:
    """openOrder (5): 120 fields at sv 157, 128 at 170-176 for a plain order."""
    f: list[Any] = [5, o.order_id, *ins.c11(), o.action, o.quantity, o.order_type,
                    o.lmt_price, o.aux_price, o.tif, "", o.account, "", 0, o.order_ref, o.client_id, o.perm_id,
                    o.outside_rth, False, "", "", "",  # hidden, discretionaryAmt, goodAfterTime, sharesAllocation
                    "", "", "", "", "", "", "",  # 31..37 faGroup, faMethod, faPct, faProfile, modelCode, GTD, rule80A
                    ]
    # f now ends at index 37 (rule80A); continue 38 percentOffset .. 63 deltaNeutralAuxPrice
    f += ["", "", "0", "", -1, "", "", "", "", "", "",  # 38..48
          "", False, False, False, "", "", False, False, "",  # 49..57
          0, 0, "", "", "", ""]  # 58 parentId .. 63
    f += ["", "", "", "", "", "", ""]  # 64..70
    f += [0, 0, 0]  # 71..73 combo legs, order combo legs, smart combo params
    f += ["", "", ""]  # 74..76 scale
    f += [""]  # 77 hedgeType
    f += [False, "", "", False]  # 78..81
    f += [0]  # 82 dncPresent
    f += [""]  # 83 algoStrategy
    f += [False, False, o.status, "", "", "", "", "", "", "", "", "", "", "", "", "", "", False, False]  # 84..102
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
    f: list[Any] = [101, *ins.c11(), o.action, o.quantity, o.order_type, o.lmt_price, o.aux_price, o.tif, "",
                    o.account, "", 0, o.order_ref, o.perm_id, o.outside_rth, False, "", "",  # ..27
                    "", "", "", "", "", "", "", "", "", "", "", -1,  # 28..39
                    "", "", "", "", "", "", False, False, "", "", 0, "", "", "", ""]  # 40..54
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
    return [3, o.order_id, o.status, o.filled, o.quantity - o.filled, o.avg_fill_price, o.perm_id, 0,
            o.last_fill_price, o.client_id, "", 0.0]


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


def exec_details(req_id: int, ins: Instrument, e: ExecView) -> list[Any]:
    """execDetails (11): exactly 31 fields, no version field."""
    exch = "ISLAND" if ins.sec_type == "STK" else ins.exchange
    return [11, req_id, e.order_id, *ins.c11(), e.exec_id, e.time_str, e.account, exch, e.side, e.shares,
            e.price, e.perm_id, e.client_id, 0, e.cum_qty, e.avg_price, e.order_ref, "", "", "", 1]


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
    """The fields of placeOrder (3) the exchange acts on (non-BAG prefix; indices of the reference)."""

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


def _opt_float(s: str) -> float | None:
    if s in ("", None):
        return None
    v = float(s)
    return None if v >= UNSET_DOUBLE else v


def parse_place_order(f: list[str], sv: int) -> PlaceOrderRequest:
    """Parse placeOrder (3). `what_if` is read from its fixed offset from the end for plain orders (no
    conditions, not PEG BENCH); conditional orders are rejected by the server before that matters."""
    what_if = False
    # tail after whatIf: orderMiscOptions, solicited, randomizeSize, randomizePrice, nConditions(0),
    # 19 adjusted/mifid/... fields, then version-gated extras
    extras = 0
    if sv >= 158:
        extras += 1
    if sv >= 160:
        extras += 1
    if sv >= 162:
        extras += 1
    if sv >= 166:
        extras += 1
    if sv >= 169:
        extras += 1
    try:
        idx = len(f) - (1 + 4 + 1 + 19 + extras)
        what_if = f[idx] == "1"
    except IndexError:  # pragma: no cover - malformed
        pass
    return PlaceOrderRequest(
        order_id=int(f[1]), contract=ContractRef.parse(f, 2), action=f[16].upper(),
        quantity=float(f[17] or 0), order_type=f[18].upper(), lmt_price=_opt_float(f[19]),
        aux_price=_opt_float(f[20]), tif=f[21] or "DAY", account=f[23], order_ref=f[26],
        transmit=f[27] != "0", outside_rth=f[33] == "1", what_if=what_if)
