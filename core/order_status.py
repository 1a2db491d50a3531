"""IB's order statuses, defined once for the broker, the paper exchange, the order gateway and the journal.

The names and their meaning are IB's (TWS API, `orderStatus`: "PendingSubmit", "PendingCancel", "PreSubmitted",
"Submitted", "ApiPending", "ApiCancelled", "Cancelled", "Filled", "Inactive"); ib_async's `OrderStatus` groups
them the same way (`DoneStates`, `ActiveStates`). `CREATED` is this system's own: an order recorded in the journal
before it was sent (or before the broker acknowledged it). The journal keeps the same vocabulary in its
`order_statuses` table, so SQL can say ``status IN (SELECT status FROM order_statuses WHERE done)``.
"""

from __future__ import annotations


class OrderStatus:
    """The statuses as constants, and the groups that decisions use."""

    CREATED = "Created"
    PENDING_SUBMIT = "PendingSubmit"
    PENDING_CANCEL = "PendingCancel"
    PRE_SUBMITTED = "PreSubmitted"
    SUBMITTED = "Submitted"
    API_PENDING = "ApiPending"
    API_CANCELLED = "ApiCancelled"
    CANCELLED = "Cancelled"
    FILLED = "Filled"
    INACTIVE = "Inactive"

    DONE: tuple[str, ...] = (FILLED, CANCELLED, API_CANCELLED, INACTIVE)
    """After any of these an order never changes again (ib_async's `DoneStates`)."""
    ENDED_UNFILLED: tuple[str, ...] = (CANCELLED, API_CANCELLED, INACTIVE)
    """Done without (further) fills: cancelled by anyone, or rejected/expired (`Inactive`)."""
    ACKNOWLEDGED: tuple[str, ...] = (PRE_SUBMITTED, SUBMITTED, FILLED, CANCELLED, API_CANCELLED, INACTIVE)
    """Statuses that prove the broker received the order."""

    DESCRIPTIONS: dict[str, str] = {
        CREATED: "recorded in the journal; not (yet known to be) acknowledged by the broker",
        PENDING_SUBMIT: "sent, not yet acknowledged by IB",
        PENDING_CANCEL: "a cancel was sent, not yet confirmed",
        PRE_SUBMITTED: "accepted by IB, held until its conditions are met (e.g. a stop not triggered)",
        SUBMITTED: "working at the exchange",
        API_PENDING: "placed with transmit=False, not yet transmitted",
        API_CANCELLED: "cancelled by the API before it reached IB's system",
        CANCELLED: "cancelled (by us, the trader, IB or the exchange; DAY orders at the close)",
        FILLED: "completely filled",
        INACTIVE: "rejected, or not working (e.g. outside trading hours, margin)",
    }
    """Every status, with what it means (IB's orderStatus documentation)."""


def is_done(status: str) -> bool:
    """Whether `status` is final (`OrderStatus.DONE`)."""
    return status in OrderStatus.DONE
