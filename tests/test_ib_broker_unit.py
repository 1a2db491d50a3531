"""IBBroker behaviour that needs no exchange: connection failures, backoff, typed errors, orders' validation."""

from __future__ import annotations

import logging
import socket

import pytest

from core.broker import (
    BrokerConnectionError,
    IBError,
    MarketDataError,
    OrderRejectedError,
    OrderRequest,
    PacingViolationError,
    UnknownContractError,
    empty_bars,
)
from core.ib_broker import IBBroker, _Pacer, typed_error
from core.settings import load_settings


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connection_retries_with_backoff_then_says_what_to_check(caplog):
    b = IBBroker("127.0.0.1", closed_port(), 5, settings=load_settings(), connect_attempts=3, backoff=0.01,
                 connect_timeout=1)
    with caplog.at_level(logging.WARNING, logger="tradeflow.broker"), pytest.raises(BrokerConnectionError) as exc:
        b.connect()
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert [r.getMessage().split("retrying in ")[1] for r in retries] == ["0.01 s", "0.02 s"]  # exponential
    for hint in ("TWS or IB Gateway", "API is enabled", "7497 paper", "client id"):
        assert hint in str(exc.value)
    assert b.client_id is None  # the id was given back


@pytest.mark.parametrize("code,cls", [(200, UnknownContractError), (201, OrderRejectedError),
                                      (162, PacingViolationError), (354, MarketDataError), (321, IBError)])
def test_ib_errors_become_typed_exceptions_with_code_and_message(code, cls):
    msg = "Historical Market Data Service error message:API historical data query cancelled: pacing violation" \
        if code == 162 else "something"
    err = typed_error(code, msg)
    assert type(err) is cls and err.code == code and err.message == msg and str(code) in str(err)


def test_pacer_allows_a_window_of_requests():
    p = _Pacer(2, 10.0)
    assert p.wait_time(0.0) == 0.0
    p.record(0.0)
    p.record(1.0)
    assert p.wait_time(2.0) == pytest.approx(8.0)
    assert p.wait_time(10.0) == 0.0


def test_order_requests_are_validated():
    with pytest.raises(ValueError, match="order_ref"):
        OrderRequest("SMH", "BUY", 1, "")
    with pytest.raises(ValueError, match="limit_price"):
        OrderRequest("SMH", "BUY", 1, "r", "LMT")
    with pytest.raises(ValueError, match="whole"):
        OrderRequest("SMH", "BUY", 1.5, "r")  # type: ignore[arg-type]
    assert list(empty_bars().columns) == ["open", "high", "low", "close", "volume"]
    assert str(empty_bars().index.tz) == "America/New_York"


def test_the_broker_module_imports_in_a_thread_without_an_event_loop():
    """Prefect imports a deployment's flow module in a worker thread (no event loop there): the library's import
    asked for one and every served or worker run of a flow crashed before starting."""
    import subprocess
    import sys

    code = ("import threading\nerrors = []\n"
            "def load():\n"
            "    try:\n        import core.ib_broker\n"
            "    except Exception as exc:\n        errors.append(repr(exc))\n"
            "t = threading.Thread(target=load)\nt.start()\nt.join()\nprint(errors or 'ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stdout + out.stderr
