"""Strategy rules as pure functions of state and data (no clock, no I/O, no Prefect).

- `core.strategies.ema`: EMA 25/125 on SMH with VIX-scaled leverage and a daily equity stop
  (shared/reference/strategies.md).
"""
