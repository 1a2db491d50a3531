"""Run the benchmarks, print a table of their figures against their targets, write one JSON file each.

Usage (from the project folder)::

    uv run python -m bench.run_all                 # every benchmark
    uv run python -m bench.run_all backtest journal_scale
    uv run python -m bench.run_all --list

A benchmark is any module ``bench/<name>.py`` with a function ``run() -> dict`` returning
`bench.common.make_result`'s shape; dropping in a new module is all it takes to add one (this file lists the
package). Each result goes to ``bench/results/<name>.json`` (git ignores them: figures belong to a machine and a
moment), with the machine, the load average before and after, and the wall time of the benchmark.

Exit codes: 0 every benchmark ran and met its targets; 1 a target was missed; 2 a benchmark failed (its JSON
holds the error) or an unknown name was given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bench

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NOT_BENCHMARKS = {"common", "run_all"}


def available() -> list[str]:
    """Names of the benchmark modules of the `bench` package, sorted (modules defining ``run``)."""
    names = []
    for info in pkgutil.iter_modules(bench.__path__):
        if info.name in NOT_BENCHMARKS or info.name.startswith("_"):
            continue
        if callable(getattr(importlib.import_module(f"bench.{info.name}"), "run", None)):
            names.append(info.name)
    return sorted(names)


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU count, platform, Python, and the 1-minute load average now."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_1min": os.getloadavg()[0],
    }


def run_one(name: str, options: dict[str, Any] | None = None, out_dir: Path = RESULTS_DIR) -> dict[str, Any]:
    """Run benchmark ``name`` with ``options`` (keyword arguments of its ``run``), write
    ``<out_dir>/<name>.json`` and return what was written.

    A benchmark that raises is recorded with ``"error"`` (the traceback) and empty figures, not re-raised.
    """
    module = importlib.import_module(f"bench.{name}")
    before = machine()
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pandas 3 deprecations inside duckdb's .df()
            warnings.filterwarnings("ignore", message=".*inplace keyword.*")
            result = module.run(**(options or {}))
        result["error"] = None
    except Exception:
        result = {"name": name, "figures": {}, "targets": {}, "meets_target": {}, "error": traceback.format_exc()}
    result["run"] = {
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - t0, 3),
        "options": options or {},
        "machine": before,
        "load_avg_1min_after": os.getloadavg()[0],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def table(results: Sequence[dict[str, Any]]) -> str:
    """The results as text: one line a figure, its target and whether it is met ("ok" / "MISSED")."""
    lines = [f"{'benchmark':<16}{'figure':<44}{'value':>14}  {'target':<12}{'':<6}"]
    for res in results:
        if res.get("error"):
            lines.append(f"{res['name']:<16}FAILED: {res['error'].strip().splitlines()[-1]}")
            continue
        for fig, value in res["figures"].items():
            target = res["targets"].get(fig)
            tgt = f"{target['op']} {_fmt(target['value'])}" if target else ""
            met = ("ok" if res["meets_target"][fig] else "MISSED") if target else ""
            lines.append(f"{res['name']:<16}{fig:<44}{_fmt(value):>14}  {tgt:<12}{met:<6}")
        lines.append(f"{res['name']:<16}{'(benchmark wall time, s)':<44}{_fmt(res['run']['wall_s']):>14}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (module docstring); returns the exit code."""
    names = available()
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all: {names})")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"results folder (default {RESULTS_DIR})")
    args = parser.parse_args(argv)
    if args.list:
        for name in names:
            doc = (importlib.import_module(f"bench.{name}").__doc__ or "").strip().splitlines()
            print(f"{name:<16}{doc[0] if doc else ''}")
        return 0
    unknown = [n for n in args.names if n not in names]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {names}", file=sys.stderr)
        return 2
    results = []
    for name in args.names or names:
        print(f"running {name} ...", flush=True)
        results.append(run_one(name, out_dir=args.out))
    print()
    print(table(results))
    print(f"\nresults: {args.out}/<name>.json")
    if any(r.get("error") for r in results):
        return 2
    return 0 if all(all(r["meets_target"].values()) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
