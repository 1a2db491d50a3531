"""The 45 MTF features (core.features) for 100 symbols over 2 years of hourly bars; target <= 10 s in total.

The 100 symbols are built from the real hourly AAPL and TSLA bars (shared/data/bars/1h, 2023-07 .. 2026-03,
4,585 bars each), not from random walks: symbol k takes AAPL (k even) or TSLA (k odd), a window of
``bars_per_symbol`` consecutive real bars (3,528 = 2 years of 252 sessions x 7 bars) ending
``3 * (k // 2)`` sessions before the file's end (so no two symbols of one source share a window), with open,
high, low and close multiplied by ``0.5 * 4 ** (k / 99)`` (0.5 to 2.0) and volume by ``1 + k % 7``. Timestamps are
the real ones, so every session, early close and week boundary is real. Scaling leaves the ratio features
unchanged; the windows make the inputs differ.

Measured, one process, symbols one after another (what a retrain or a signal run does per symbol):
``compute_features`` for 10, 25, 50 and 100 symbols (the median of ``repeats`` runs each), rows a second, and a
least-squares fit ``time = a + b * symbols`` (``b`` = seconds a symbol, R^2) plus the log-log slope (1.0 means
the cost grows linearly with the number of symbols).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import numpy as np
import pandas as pd

from bench.common import Target, data_dir, make_result

NAME = "features_scale"
SESSION_BARS = 7  # hourly bars of a full session on this grid (09:30 .. 15:30)
TWO_YEARS_BARS = 2 * 252 * SESSION_BARS


def synthetic_universe(n_symbols: int, bars_per_symbol: int = TWO_YEARS_BARS) -> list[pd.DataFrame]:
    """``n_symbols`` hourly bar frames made from the real AAPL/TSLA bars (see the module docstring).

    Returns:
        A list of DataFrames (``bars_per_symbol`` rows; open, high, low, close in USD, volume in shares;
        index = real bar start times, America/New_York).

    Raises:
        ValueError: the real series are too short for ``n_symbols`` distinct windows of that length.
        core.bars.BarsError: the hourly files are missing.
    """
    from core.bars import load_hourly_bars

    sources = [load_hourly_bars(data_dir(), s) for s in ("AAPL", "TSLA")]
    out = []
    for k in range(n_symbols):
        real = sources[k % 2]
        end = len(real) - 3 * SESSION_BARS * (k // 2)
        start = end - bars_per_symbol
        if start < 0:
            raise ValueError(
                f"symbol {k}: {len(real)} real bars cannot hold a window of {bars_per_symbol} ending at bar {end}"
            )
        window = real.iloc[start:end].copy()
        window[["open", "high", "low", "close"]] *= 0.5 * 4 ** (k / 99)
        window["volume"] *= 1 + k % 7
        out.append(window)
    return out


def _fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least squares ``y = a + b x`` (a, b, R^2) and the slope of log y on log x."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    b, a = np.polyfit(x, y, 1)
    pred = a + b * x
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan
    loglog = float(np.polyfit(np.log(x), np.log(y), 1)[0])
    return {"fit_intercept_s": float(a), "fit_s_per_symbol": float(b), "fit_r2": r2, "loglog_slope": loglog}


def run(sizes: tuple[int, ...] = (10, 25, 50, 100), repeats: int = 3,
        bars_per_symbol: int = TWO_YEARS_BARS) -> dict[str, Any]:
    """Time ``compute_features`` over the universe at each size; see the module docstring.

    Args:
        sizes: numbers of symbols (the largest is the target's; at least two sizes for the fit).
        repeats: runs per size; the median is reported.
        bars_per_symbol: hourly bars per symbol (default 2 years).

    Returns:
        The result dict of `bench.common.make_result`; the target applies to ``total_s`` (the largest size).
    """
    from core.features import FEATURES, compute_features

    if len(sizes) < 2:
        raise ValueError("need at least two sizes to fit time against symbols")
    universe = synthetic_universe(max(sizes), bars_per_symbol)
    compute_features(universe[0])  # first call pays pandas' lazy imports; not part of the figure
    per_size: dict[int, float] = {}
    cpu_largest: list[float] = []
    for n in sorted(sizes):
        runs = []
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            for bars in universe[:n]:
                feats = compute_features(bars)
            runs.append(time.perf_counter() - t0)
            if n == max(sizes):
                cpu_largest.append(time.process_time() - c0)
        per_size[n] = statistics.median(runs)
    assert feats.shape == (bars_per_symbol, len(FEATURES))
    largest = max(sizes)
    total = per_size[largest]
    rows = largest * bars_per_symbol
    figures = {
        "symbols": largest,
        "total_s": total,
        "total_cpu_s": statistics.median(cpu_largest),
        "rows_per_s": rows / total,
        "ms_per_symbol": 1000 * total / largest,
        "feature_values_per_s": rows * len(FEATURES) / total,
        **{f"time_s_{n}_symbols": t for n, t in sorted(per_size.items())},
        **_fit(list(per_size), list(per_size.values())),
        "target_headroom_ratio": 10.0 / total,
    }
    return make_result(
        NAME,
        f"45 features for {largest} symbols x {bars_per_symbol} hourly bars, one process",
        figures,
        {"total_s": Target("<=", 10.0)},
        {"sizes": list(sizes), "repeats": repeats, "bars_per_symbol": bars_per_symbol,
         "source": "real 1h AAPL/TSLA windows, scaled (bench/features_scale.py docstring)"},
        [
            "each figure is the median of `repeats` runs; the first compute_features call is made before timing",
            "target_headroom_ratio = 10 s / total_s (> 1 means under the target)",
            "total_cpu_s: CPU time of this process for total_s's runs; other processes' load hardly changes it",
        ],
    )
