"""`tradeflow train --symbols AAPL TSLA` in a child process: wall time and peak memory.

The command runs exactly as a person runs it (`deployments/cmd_train.py`: TensorFlow import, features, training
with early stopping, evaluation, registration), in a new Python process so the TensorFlow import is included,
with ``TRADEFLOW_STATE_DIR`` set to a temporary folder (the models registered there are deleted afterwards) and
the data folder of this process's settings. ``--as-of`` is fixed so that runs are alike.

Figures: ``wall_s`` (process start to exit), the command's own "total wall time" line, the TensorFlow import
time it prints, ``cpu_s`` (the child's user + system CPU seconds) and ``peak_rss_mb``: the child's maximum
resident set size (``os.wait4`` rusage ``ru_maxrss``, KiB on Linux), the peak of that one process, not of this
one or of other benchmarks' children.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import data_dir, make_result

NAME = "training"
AS_OF = "2026-03-12T00:00:00+00:00"


def run_child(argv: list[str], env: dict[str, str], cwd: Path | None,
              timeout: float) -> tuple[int, str, float, float, float]:
    """Run ``argv`` to completion; returns (exit code, stdout+stderr text, wall seconds, peak RSS in MiB, CPU
    seconds, user + system, of the child and the children it waited for).

    Raises:
        TimeoutError: the child ran longer than ``timeout`` seconds (it is killed).
    """
    with tempfile.TemporaryFile(mode="w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True)
        reaped: list[tuple[int, int, Any]] = []
        # os.wait4 gives this child's own rusage, but has no timeout: it waits in a thread joined with one
        waiter = threading.Thread(target=lambda: reaped.append(os.wait4(proc.pid, 0)), daemon=True)
        waiter.start()
        waiter.join(timeout)
        if not reaped:
            proc.kill()
            waiter.join()
            proc.returncode = -9
            raise TimeoutError(f"{argv[:3]}... ran longer than {timeout} s")
        wall = time.perf_counter() - t0
        _pid, status, usage = reaped[0]
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        log.seek(0)
        return proc.returncode, log.read(), wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def run(symbols: tuple[str, ...] = ("AAPL", "TSLA"), epochs: int | None = None,
        timeout: float = 600.0) -> dict[str, Any]:
    """Train ``symbols`` through `tradeflow train` in a child process (``epochs``: the command's --epochs).

    Returns:
        The result dict of `bench.common.make_result` (no target: the figures are for the record).

    Raises:
        RuntimeError: the command exited non-zero (the message holds the end of its output).
    """
    argv = [sys.executable, "-m", "deployments.cli", "train", "--symbols", *symbols,
            "--data-dir", str(data_dir()), "--as-of", AS_OF]
    if epochs is not None:
        argv += ["--epochs", str(epochs)]
    project = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        env = os.environ | {"TRADEFLOW_STATE_DIR": str(Path(tmp) / "state"), "PYTHONUNBUFFERED": "1"}
        code, out, wall, peak_mb, cpu_s = run_child(argv, env, project, timeout)
    if code != 0:
        raise RuntimeError(f"tradeflow train exited {code}:\n{out[-2000:]}")
    figures: dict[str, float] = {"wall_s": wall, "cpu_s": cpu_s, "peak_rss_mb": peak_mb, "symbols": len(symbols)}
    total = re.search(r"total wall time ([\d.]+) s", out)
    ready = re.search(r"ready in ([\d.]+) s", out)
    if total:
        figures["command_total_s"] = float(total.group(1))
    if ready:
        figures["tensorflow_import_s"] = float(ready.group(1))
    figures["epochs_run"] = len(re.findall(r" epoch +\d+/", out))
    figures["wall_s_per_symbol"] = wall / len(symbols)
    return make_result(
        NAME,
        f"tradeflow train --symbols {' '.join(symbols)} in a child process",
        figures,
        {},
        {"argv": argv[1:], "epochs": epochs, "state_dir": "temporary"},
        ["wall_s includes interpreter start and the TensorFlow import (tensorflow_import_s); cpu_s is the"
         " child's user + system CPU time (all its threads), which other processes' load hardly changes",
         "peak_rss_mb: ru_maxrss of the child process (os.wait4), MiB",
         "epochs_run: epochs over all symbols (early stopping on validation loss)"],
    )
