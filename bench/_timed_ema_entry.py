"""Entrypoint `bench/_timed_ema_entry.py:ema_entry`: the real `ema-entry` flow with the timers of
bench/_flow_timing.py (imported first, so that the flow's imports are timed)."""

from bench._flow_timing import instrument  # noqa: I001  (first: it notes when the imports began)

import flows.ema_entry as _module

instrument(_module, [(_module, "decide_before_close")])
ema_entry = _module.ema_entry
