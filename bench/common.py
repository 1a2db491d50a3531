"""What every benchmark shares: the result shape, targets, percentiles and the data folder.

A benchmark is a module of this package with a function ``run(**options) -> dict`` (its defaults are the full
benchmark; smaller options make the quick configuration the smoke test uses). It returns :func:`make_result`'s
dict:

    {"name": str, "description": str,
     "figures": {figure: number},                       # measured in this run; units in the figure's name
     "targets": {figure: {"op": "<=" | ">=", "value": number}},
     "meets_target": {figure: bool},                    # one per target
     "config": {...},                                   # what was measured (sizes, repeats, data used)
     "notes": [str]}                                    # how the inputs were built, what a figure means

`bench.run_all` adds the machine and the run time and writes it to ``bench/results/<name>.json``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT_KEYS = ("name", "description", "figures", "targets", "meets_target", "config", "notes")


@dataclass(frozen=True)
class Target:
    """A target for one figure: ``figure op value``, e.g. ``Target("<=", 10.0)`` for "at most 10 s"."""

    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in ("<=", ">="):
            raise ValueError(f"a target's op is '<=' or '>=', got {self.op!r}")

    def met_by(self, measured: float) -> bool:
        """True when ``measured`` meets the target (a NaN or missing figure never does)."""
        if measured is None or measured != measured:
            return False
        return measured <= self.value if self.op == "<=" else measured >= self.value


def make_result(
    name: str,
    description: str,
    figures: Mapping[str, float],
    targets: Mapping[str, Target],
    config: Mapping[str, Any],
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The result dict of one benchmark (the shape in the module docstring).

    Raises:
        KeyError: a target names a figure that was not measured.
    """
    missing = [k for k in targets if k not in figures]
    if missing:
        raise KeyError(f"{name}: targets for unmeasured figure(s) {missing}")
    return {
        "name": name,
        "description": description,
        "figures": {k: _plain(v) for k, v in figures.items()},
        "targets": {k: {"op": t.op, "value": t.value} for k, t in targets.items()},
        "meets_target": {k: t.met_by(figures[k]) for k, t in targets.items()},
        "config": dict(config),
        "notes": list(notes),
    }


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers (for JSON), floats rounded to 6 significant digits."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values``, linear interpolation between closest ranks.

    Raises:
        ValueError: no values, or q outside 0..100.
    """
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in 0..100, got {q}")
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def time_calls(fn: Callable[[], Any], repeats: int) -> tuple[list[float], list[float]]:
    """Call ``fn`` ``repeats`` times; per call the wall time and the CPU time of this process (all its threads,
    ``time.process_time``), in seconds. CPU time hardly moves when other processes load the machine; wall
    time does."""
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def summary_ms(name: str, seconds: Sequence[float]) -> dict[str, float]:
    """``{name_p50_ms, name_p95_ms, name_max_ms}`` of durations given in seconds."""
    return {
        f"{name}_p50_ms": 1000 * statistics.median(seconds),
        f"{name}_p95_ms": 1000 * percentile(seconds, 95),
        f"{name}_max_ms": 1000 * max(seconds),
    }


def data_dir() -> Path:
    """The bars folder of the settings (TRADEFLOW_DATA_DIR, `.env`, else ../shared/data/bars)."""
    from core.settings import load_settings

    return Path(load_settings().data_dir)
