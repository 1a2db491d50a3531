"""Champion MTF models for the benchmarks that run `mtf-signal` (not a benchmark: no `run`).

`train_champions` trains real models (`tradeflow train`, in a child process as a person runs it: TensorFlow,
features, training, registration as champion) into a state directory; `clone_champions` registers a trained
version under other symbol names in another state directory's registry (a copy of its files, made champion), so
that a run over 50 symbols loads 50 real models without training 50.
"""

from __future__ import annotations

import os
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


def clone_champions(trained_state: Path, state: Path, names: dict[str, str]) -> None:
    """Register, in the registry of the state directory `state` (its journal, its models folder), the champion of
    each source symbol of `trained_state` under each name of `names` (name -> source symbol), and make it the
    name's champion.

    Raises:
        RuntimeError: a source has no champion.
    """
    from datetime import datetime

    from core.journal import Journal
    from models.registry import ModelRegistry

    src = ModelRegistry(trained_state / "models", Journal(trained_state / "journal.duckdb"))
    dst = ModelRegistry(state / "models", Journal(state / "journal.duckdb"))
    champions = {}
    for source in sorted(set(names.values())):
        champion = src.champion(source)
        if champion is None:
            raise RuntimeError(f"{source} has no champion in {trained_state}")
        folder = src.materialise(champion)
        files = {n: (folder / n).read_bytes() for n in ("model.keras", "scaler.joblib", "weights.npz")}
        champions[source] = (champion, files)
    for name, source in names.items():
        champion, files = champions[source]
        mv = dst.register_files(name, files, champion.metadata,
                                datetime.fromisoformat(champion.metadata["created_at"]))
        dst.promote(name, mv.version)
