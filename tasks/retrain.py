"""The I/O steps of the monthly `retrain` flow (flows/retrain.py): the bar store, training, the journal."""

from __future__ import annotations

import datetime as dt

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from core.bar_store import BarStore, StoreUpdate, complete_bars, store_root
from core.broker import Broker
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
def retrain_one(run: FlowRun, symbol: str, cutoff: dt.datetime, window: EvaluationMonth, config: TrainConfig,
                rule: PromotionRule, walk_forward: WalkForwardConfig) -> RetrainOutcome:
    """Train the challenger on the stored bars before the window, walk it forward on those bars, evaluate both on
    the window, promote by ``rule`` and the edge gate (settings `TRADEFLOW_MTF_GATE_*`).

    Raises:
        ValueError: too few stored bars to train, or none in the window.
    """
    logger = get_run_logger()
    bars = complete_bars(BarStore(store_root(run.settings.state_dir)).load(symbol), cutoff)

    def progress(sym: str, epoch: int, total: int, logs: dict) -> None:
        logger.info("%s epoch %d/%d loss %.4f val_loss %.4f", sym, epoch, total, logs.get("loss", float("nan")),
                    logs.get("val_loss", float("nan")))

    return retrain_symbol(symbol, bars, ModelRegistry(run.settings.models_dir, run.journal), run.as_of, window, config,
                          RuleParams.from_settings(run.settings), rule, progress, walk_forward,
                          GateRule.from_settings(run.settings))


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
