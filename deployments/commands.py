"""The subcommands of `tradeflow`, one `register_*` function each.

A register function adds its subparser and sets `handler` (a function of the parsed arguments returning the
exit code). Heavy imports (Prefect, TensorFlow, ib_insync) happen inside handlers, so `tradeflow --help` and
the quick commands stay fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

REGISTRY: list[Callable[[argparse._SubParsersAction], None]] = []

from deployments.cmd_broker import register_paper_exchange, register_validate_connection  # noqa: E402

REGISTRY += [register_paper_exchange, register_validate_connection]
