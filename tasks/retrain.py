"""The I/O steps of the monthly `retrain` flow (flows/retrain.py): the bar store, training (in process or on a Dask
cluster), the journal."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from core.bar_store import BarStore, StoreUpdate, complete_bars, store_root
from core.broker import Broker
from core.journal import Journal
from models.evaluate import PromotionRule, RuleParams
from models.gate import GateRule
from models.mtf import TrainConfig
from models.records import (record_champion_change, record_evaluation, record_training_metrics, record_version,
                            record_walk_forward)
from models.walkforward import WalkForwardConfig
from models.registry import ModelRegistry
from models.retrain import EvaluationMonth, RetrainOutcome, retrain_symbol
from tasks.runtime import FlowRun


@task(cache_policy=NONE)
def update_bar_store(run: FlowRun, broker: Broker, symbol: str, cutoff: dt.datetime, need_from: dt.datetime,
                     max_requests: int) -> StoreUpdate:
    """Bring one symbol's hourly bar store up to ``cutoff``, back to ``need_from`` (core.bar_store)."""
    return BarStore(store_root(run.settings.state_dir)).update(broker, symbol, cutoff, need_from, max_requests)


@task(cache_policy=NONE)
def retrain_one(symbol: str, bars: pd.DataFrame, models_dir: str, journal_path: str, as_of: dt.datetime, window: EvaluationMonth,
                config: TrainConfig, rules: RuleParams, rule: PromotionRule, walk_forward: WalkForwardConfig,
                gate_rule: GateRule) -> RetrainOutcome:
    """Train the challenger on ``bars`` (the symbol's stored hourly bars, aware index) before the window, walk it
    forward on those bars, evaluate both on the window, promote by ``rule`` and the edge gate ``gate_rule``
    (`models.retrain.retrain_symbol`), in the registry of the journal at ``journal_path`` (its cache ``models_dir``).

    Plain values in and out (dataclasses, a DataFrame, path strings): it runs in the flow's process or, pickled,
    on a Dask worker (`retrain_symbols`), which reaches the same journal (on one machine its writer for that path;
    on a worker host of several, the journal server its TRADEFLOW_JOURNAL_SERVER names).

    Raises:
        ValueError: too few bars to train, or none in the window.
    """
    logger = get_run_logger()

    def progress(sym: str, epoch: int, total: int, logs: dict) -> None:
        logger.info("%s epoch %d/%d loss %.4f val_loss %.4f", sym, epoch, total, logs.get("loss", float("nan")),
                    logs.get("val_loss", float("nan")))

    return retrain_symbol(symbol, bars, ModelRegistry(models_dir, Journal(journal_path)), as_of, window, config, rules, rule, progress,
                          walk_forward, gate_rule)


def retrain_symbols(run: FlowRun, symbols: list[str], cutoff: dt.datetime, window: EvaluationMonth,
                    config: TrainConfig, rule: PromotionRule,
                    walk_forward: WalkForwardConfig) -> Iterator[tuple[str, RetrainOutcome | ValueError]]:
    """Each symbol's `retrain_one` on its stored bars up to ``cutoff``, yielded as (symbol, outcome) in the order
    of ``symbols``; a symbol that cannot be retrained yields its ValueError instead (the others go on).

    Where it runs: with `settings.dask_scheduler` unset, in this process, one symbol after another (each yielded
    before the next starts); set, every symbol is submitted at once to that Dask scheduler through Prefect's
    `DaskTaskRunner` (prefect-dask), and each is yielded when its worker is done. The workers need what the task
    reaches: the Prefect API of the flow's settings (task run states and logs) and the journal (the registry lives
    in it: `retrain_one`); the bars go with the task; the bar store and the flow's journal records stay here. A worker
    that dies mid-task: Dask's scheduler gives its task to another worker (distributed's allowed-failures).

    Raises:
        ConnectionError: the Dask scheduler cannot be reached (naming it and the setting).
    """
    store = BarStore(store_root(run.settings.state_dir))
    common = {"models_dir": str(run.settings.models_dir), "journal_path": str(run.settings.journal_path), "as_of": run.as_of, "window": window, "config": config,
              "rules": RuleParams.from_settings(run.settings), "rule": rule, "walk_forward": walk_forward,
              "gate_rule": GateRule.from_settings(run.settings)}

    def parameters(sym: str) -> dict:
        return {"symbol": sym, "bars": complete_bars(store.load(sym), cutoff), **common}

    address = run.settings.dask_scheduler
    if address is None:
        for sym in symbols:
            yield sym, _outcome(lambda: retrain_one(**parameters(sym)))
        return
    from prefect_dask import DaskTaskRunner

    with DaskTaskRunner(address=address) as runner:
        futures = []
        for sym in symbols:
            try:
                params = parameters(sym)
            except ValueError as exc:
                futures.append((sym, exc))
                continue
            try:
                futures.append((sym, runner.submit(retrain_one, params)))
            except OSError as exc:  # distributed's connect timeout is an OSError as well
                raise ConnectionError(f"the Dask scheduler {address} (TRADEFLOW_DASK_SCHEDULER) cannot be reached: "
                                      f"{exc}") from exc
        for sym, future in futures:
            yield sym, future if isinstance(future, ValueError) else _outcome(future.result)


def _outcome(call: Callable[[], RetrainOutcome]) -> RetrainOutcome | ValueError:
    try:
        return call()
    except ValueError as exc:
        return exc


@task(cache_policy=NONE)
def journal_retrain(run: FlowRun, outcome: RetrainOutcome, window: EvaluationMonth) -> None:
    """Both versions in `models`, the challenger's training metrics and both evaluations in `model_metrics`
    (window `oos:YYYY-MM`), the challenger's walk-forward evidence (window `walkforward`), and the statuses after
    a promotion."""
    with run.journal.transaction() as tx:
        record_version(tx, outcome.challenger, "challenger")
        record_training_metrics(tx, outcome.challenger, run.as_of)
        if outcome.evidence:
            record_walk_forward(tx, outcome.challenger, outcome.evidence, run.as_of)
        record_evaluation(tx, outcome.challenger, window.label, outcome.challenger_eval, run.as_of)
        if outcome.champion is not None:
            record_version(tx, outcome.champion, "champion")
            if outcome.champion_eval is not None:
                record_evaluation(tx, outcome.champion, window.label, outcome.champion_eval, run.as_of)
        if outcome.promoted:
            record_champion_change(tx, outcome.challenger, outcome.champion)
