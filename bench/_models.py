"""Champion MTF models for the benchmarks that run `mtf-signal` (not a benchmark: no `run`).

`train_champions` trains real models (`tradeflow train`, in a child process as a person runs it: TensorFlow,
features, training, registration as champion) into a state directory; `clone_champion` registers a trained
version under other symbol names (a copy of its folder, made champion), so that a run over 50 symbols loads 50
real models without training 50.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from bench.common import data_dir
from bench.training import AS_OF, run_child

ROOT = Path(__file__).resolve().parents[1]


def train_champions(state_dir: Path, symbols: tuple[str, ...] = ("AAPL", "TSLA"), epochs: int = 1,
                    timeout: float = 900.0) -> None:
    """Train and register `symbols` (champions) under `state_dir`/models, with `epochs` at most each.

    Raises:
        RuntimeError: `tradeflow train` failed (with the end of its output).
    """
    argv = [sys.executable, "-m", "deployments.cli", "train", "--symbols", *symbols, "--data-dir", str(data_dir()),
            "--as-of", AS_OF, "--epochs", str(epochs)]
    env = os.environ | {"TRADEFLOW_STATE_DIR": str(state_dir), "PYTHONUNBUFFERED": "1"}
    code, out, *_ = run_child(argv, env, ROOT, timeout)
    if code != 0:
        raise RuntimeError(f"tradeflow train exited {code}:\n{out[-2000:]}")


def clone_champion(models_dir: Path, source: str, names: list[str]) -> None:
    """Register the champion of `source` under each of `names` (its version folder copied) and make it their
    champion.

    Raises:
        RuntimeError: `source` has no champion.
    """
    from models.registry import ModelRegistry

    registry = ModelRegistry(models_dir)
    champion = registry.champion(source)
    if champion is None:
        raise RuntimeError(f"{source} has no champion in {models_dir}")
    for name in names:
        target = Path(models_dir) / name.upper() / champion.path.name
        if not target.exists():
            shutil.copytree(champion.path, target)
        registry.promote(name, champion.path.name)
