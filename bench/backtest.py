"""The EMA 25/125 SMH backtest over the full daily history in <= 1 s (as `tradeflow backtest ema` runs it).

Data: shared/data/bars/daily/SMH.csv (2011-03-17 .. 2026-03-13) and VIX.csv (1990 .. 2026). The window is the
longest the bars allow (`core.backtest.ema.default_window`): the first 250 sessions (2011-03 .. 2012-03) warm the
EMAs up, every later session is simulated. Settings as `deployments/cmd_backtest.py` reads them.

Measured, each the median (and the max) of ``repeats`` runs in this process after one untimed run:
- ``simulation``: `run_ema_backtest` alone (what `tradeflow backtest` prints as "simulation");
- ``with_load``: reading both CSV files through `core.bars` plus the simulation.
The report files (CSV, PNG) are not part of either.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.common import Target, data_dir, make_result

NAME = "backtest"


def run(repeats: int = 5) -> dict[str, Any]:
    """Time the full-history EMA backtest; the target (<= 1 s) applies to ``with_load_s`` (the stricter one).

    Returns:
        The result dict of `bench.common.make_result`.
    """
    from core.backtest.ema import EmaBacktestConfig, run_ema_backtest
    from core.bars import load_daily_bars
    from core.settings import load_settings

    settings = load_settings()
    config = EmaBacktestConfig.from_settings(settings)
    folder = data_dir()
    symbol = settings.ema_symbol

    def load():
        return load_daily_bars(folder, symbol), load_daily_bars(folder, "VIX")

    def simulate(smh, vix):
        return run_ema_backtest(smh, vix, None, None, config)

    smh, vix = load()
    result = simulate(smh, vix)  # untimed: imports and caches
    sim, total, sim_cpu = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        smh, vix = load()
        t1, c1 = time.perf_counter(), time.process_time()
        result = simulate(smh, vix)
        t2, c2 = time.perf_counter(), time.process_time()
        sim.append(t2 - t1)
        total.append(t2 - t0)
        sim_cpu.append(c2 - c1)
    sessions = len(result.equity)
    sim_s, total_s = statistics.median(sim), statistics.median(total)
    figures = {
        "sessions": sessions,
        "years": sessions / 252,
        "simulation_s": sim_s,
        "simulation_max_s": max(sim),
        "simulation_cpu_s": statistics.median(sim_cpu),
        "with_load_s": total_s,
        "with_load_max_s": max(total),
        "load_share": (total_s - sim_s) / total_s,
        "sessions_per_s": sessions / sim_s,
        "round_trips_closed": result.metrics.round_trips,
    }
    return make_result(
        NAME,
        f"EMA {config.params.fast}/{config.params.slow} {symbol} backtest, "
        f"{result.equity.index[0].date()} .. {result.equity.index[-1].date()}",
        figures,
        {"simulation_s": Target("<=", 1.0), "with_load_s": Target("<=", 1.0)},
        {"repeats": repeats, "symbol": symbol, "smh_bars": len(smh), "vix_bars": len(vix),
         "warmup_sessions": result.warmup_sessions},
        ["median of `repeats` runs after one untimed run; load = core.bars CSV reads of SMH and VIX",
         "load_share = the fraction of with_load_s spent reading the files",
         "simulation_cpu_s: CPU time of the simulation; other processes' load hardly changes it"],
    )
