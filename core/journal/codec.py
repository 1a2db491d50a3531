"""Values over the journal server's wire: JSON, with dates, times and decimals tagged so they come back typed.

A message is one JSON object on one line (UTF-8). `encode` turns parameters and result rows into JSON-able
values; `decode` turns them back: ``{"$t": iso}`` a datetime (its UTC offset kept), ``{"$d": iso}`` a date,
``{"$h": iso}`` a time, ``{"$s": seconds}`` a timedelta, ``{"$b": base64}`` bytes (a BLOB: the model registry's
files); a Decimal travels as a float, a UUID as a string.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import uuid
from typing import Any


def encode(value: Any) -> Any:
    """`value` as JSON-able data (see the module docstring). Raises TypeError for a type it cannot carry."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$b": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dt.datetime):
        return {"$t": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$d": value.isoformat()}
    if isinstance(value, dt.time):
        return {"$h": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"$s": value.total_seconds()}
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {"$o": {str(k): encode(v) for k, v in value.items()}}
    if hasattr(value, "item"):  # numpy scalars
        return encode(value.item())
    raise TypeError(f"the journal server cannot carry a {type(value).__name__}: {value!r}")


def decode(value: Any) -> Any:
    """The inverse of `encode`."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if "$t" in value:
            return dt.datetime.fromisoformat(value["$t"])
        if "$d" in value:
            return dt.date.fromisoformat(value["$d"])
        if "$h" in value:
            return dt.time.fromisoformat(value["$h"])
        if "$s" in value:
            return dt.timedelta(seconds=value["$s"])
        if "$b" in value:
            return base64.b64decode(value["$b"])
        if "$o" in value:
            return {k: decode(v) for k, v in value["$o"].items()}
    return value


def dumps(message: dict[str, Any]) -> bytes:
    """One message as a line of JSON."""
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def loads(line: bytes) -> dict[str, Any]:
    """One line of JSON as a message."""
    return json.loads(line)
