"""Strategy rules as pure functions of state and data (no clock, no I/O, no Prefect).

- `core.strategies.ema`: EMA 25/125 on SMH with VIX-scaled leverage and a daily equity stop
  (shared/reference/strategies.md).
- `core.strategies.mtf`: the MTF LSTM's entry, exit and daily-loss-limit rules, shared by the 5-minute flow and
  the hourly backtest.
"""
