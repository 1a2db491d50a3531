"""Backtests on daily bars that call the same pure rule functions as the live flows.

- daily bars come from `core.bars`.
- `core.backtest.ema`: the EMA 25/125 SMH backtest (strategies.md, "Backtest on daily bars").
- `core.backtest.metrics`: CAGR, maximum drawdown, Sharpe, round trips a year, win rate, exposure; Sortino,
  Calmar, annual volatility and monthly returns from empyrical-reloaded (`tearsheet`).
- `core.backtest.report`: the trades CSV, the equity-curve CSV and the PNG chart.
"""
