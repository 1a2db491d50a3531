"""Model versions and their metrics in the journal (tables `models` and `model_metrics`).

Registry versions are numbered per symbol (AAPL v0001, TSLA v0001), while the journal's `models.version` is the
table's key, so the journal names a version ``<SYMBOL>/<version>`` (e.g. ``AAPL/v0003``): :func:`journal_id`.

`models.status`: 'champion' (the registry's champion), 'challenger' (registered, never promoted, or passed over
by a retrain), 'retired' (a former champion: `tradeflow models promote` brings any back, `rollback` the one the
current champion replaced).

`model_metrics` rows, per version and evaluation window (``val`` and ``test``: the training run's own windows;
``oos:YYYY-MM``: the retrain's out-of-sample month), metric names:
- classification: ``accuracy``, ``precision``, ``recall``, ``roc_auc``, ``log_loss``, ``n``, ``up_rate``, each
  with the majority-class baseline's value in ``baseline``;
- the decision rules simulated on the window: ``sim_return``, ``sim_win_rate``, ``sim_trades``, ``sim_sharpe``,
  ``sim_exposure`` (fractions; baseline: buy and hold where it has the same measure).
A metric that is not a finite number (ROC AUC with one class, Sharpe with no trades) is left out.

``walkforward`` (:data:`models.gate.EVIDENCE_WINDOW`): the pooled walk-forward evidence the edge gate reads
(:func:`models.gate.evidence_metrics` names them), and ``walkforward:fold<k>``: each fold's ``roc_auc``,
``roc_auc_low``, ``roc_auc_high``, ``sim_return`` (baseline: buy and hold), ``sim_trades``. A new walk-forward
run for the same version replaces them.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from core.journal import JournalTx
from models.registry import ModelVersion

CLASSIFICATION_KEYS = ("accuracy", "precision", "recall", "roc_auc", "log_loss", "n", "up_rate")
RULE_KEYS = {"total_return": "sim_return", "win_rate": "sim_win_rate", "trades": "sim_trades",
             "sharpe": "sim_sharpe", "exposure": "sim_exposure"}


def journal_id(mv: ModelVersion) -> str:
    """The journal's name of a version: ``<SYMBOL>/<version>``."""
    return f"{mv.symbol}/{mv.version}"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(float(x))


def metric_rows(classification: dict | None = None, rules: dict | None = None,
                buy_hold: dict | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """(values, baselines) for `JournalTx.record_model_metrics` from a ``classification_metrics`` result and the
    rule / buy-and-hold simulation dicts (module docstring for the names)."""
    values: dict[str, float] = {}
    baselines: dict[str, float] = {}
    if classification:
        for k in CLASSIFICATION_KEYS:
            v, b = classification["model"].get(k), classification["baseline"].get(k)
            if _finite(v):
                values[k] = float(v)
                if _finite(b):
                    baselines[k] = float(b)
    if rules:
        for k, name in RULE_KEYS.items():
            v, b = rules.get(k), (buy_hold or {}).get(k)
            if _finite(v):
                values[name] = float(v)
                if _finite(b):
                    baselines[name] = float(b)
    return values, baselines


def record_version(tx: JournalTx, mv: ModelVersion, status: str) -> bool:
    """Record a version in `models` (or move its status)."""
    meta = mv.metadata
    data = meta.get("data", {})
    return tx.record_model(
        journal_id(mv), mv.symbol, status, path=str(mv.path), lookback=meta.get("lookback"),
        horizon=meta.get("horizon"), data_start=_time(data.get("bars_first")), data_end=_time(data.get("bars_last")),
        data_fingerprint=data.get("fingerprint_sha256"),
        metadata={k: meta.get(k) for k in ("created_at", "splits", "config", "epochs_run", "keras_version",
                                           "retrain") if k in meta})


def record_training_metrics(tx: JournalTx, mv: ModelVersion, evaluated_at: datetime) -> int:
    """Record the training run's own validation and test metrics (metadata ``metrics``); returns rows new."""
    m = mv.metadata.get("metrics") or {}
    count = 0
    for window, rules, buy_hold in (("val", None, None), ("test", m.get("rules_test"), m.get("buy_hold_test"))):
        if m.get(window):
            values, baselines = metric_rows(m[window], rules, buy_hold)
            count += tx.record_model_metrics(journal_id(mv), window, values, evaluated_at, baselines)
    return count


def record_evaluation(tx: JournalTx, mv: ModelVersion, window: str, evaluation: dict, evaluated_at: datetime) -> int:
    """Record an :func:`models.evaluate.evaluate_window` result under the window name ``window``."""
    values, baselines = metric_rows(evaluation["classification"], evaluation["rules"], evaluation["buy_hold"])
    return tx.record_model_metrics(journal_id(mv), window, values, evaluated_at, baselines)


def record_champion_change(tx: JournalTx, new: ModelVersion, previous: ModelVersion | None) -> None:
    """Statuses after a promotion or rollback: ``new`` champion, ``previous`` (if another version) retired."""
    if previous is not None and previous.version != new.version:
        record_version(tx, previous, "retired")
    record_version(tx, new, "champion")


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def record_walk_forward(tx: JournalTx, mv: ModelVersion, evidence: dict, evaluated_at: datetime) -> int:
    """Record walk-forward evidence (:meth:`models.walkforward.WalkForwardResult.evidence`) as ``mv``'s edge-gate
    evidence, replacing an earlier walk-forward of the same version; returns the rows recorded."""
    from models.gate import EVIDENCE_WINDOW, evidence_metrics

    vid = journal_id(mv)
    values, baselines = evidence_metrics(evidence)
    tx.clear_model_metrics(vid, EVIDENCE_WINDOW)
    count = tx.record_model_metrics(vid, EVIDENCE_WINDOW, values, evaluated_at, baselines)
    for f in evidence.get("folds") or []:
        window = f"{EVIDENCE_WINDOW}:fold{f['fold']}"
        vals = {k: float(f[k]) for k in ("roc_auc", "roc_auc_low", "roc_auc_high", "return", "trades")
                if _finite(f.get(k))}
        vals = {("sim_" + k if k in ("return", "trades") else k): v for k, v in vals.items()}
        base = {"sim_return": float(f["buy_hold_return"])} if _finite(f.get("buy_hold_return")) else {}
        tx.clear_model_metrics(vid, window)
        count += tx.record_model_metrics(vid, window, vals, evaluated_at, base)
    return count
