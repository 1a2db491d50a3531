"""The monthly retrain of one symbol: a challenger, champion and challenger on the same out-of-sample month, and
the promotion rule (`flows/retrain.py` runs it for each symbol; nothing here imports Prefect or reads the clock).

Windows, for a retrain at ``as_of`` (scheduled 18:00 on the last session of a month):

- **evaluation month** (:func:`evaluation_month`): the last calendar month whose last session had closed by
  ``as_of``: at 18:00 on the last session of February, February. The window holds the bars that START in that
  month. It is out of sample for the challenger, and for a champion trained by an earlier retrain.
- **the challenger's data**: the bar store's bars that start before the evaluation month (through the end of the
  month before it), split chronologically into train / validation / test as `tradeflow train` does. No training
  label reaches into the evaluation month (the split leaves the last H bars without a sample).
- **the champion** is evaluated as it is; when its own training data overlapped the evaluation month (a model
  trained by hand on everything), its figures there are partly in sample, which favours keeping it: the
  evaluation's ``champion_in_sample`` flag says so.

Both are evaluated through the numpy predictor (`models.inference`), the code the signal flow uses, with the
labels of `settings.mtf_horizon` and one majority-class baseline (from the labels before the window).
The promotion rule is :class:`models.evaluate.PromotionRule`, **and** the edge gate (:mod:`models.gate`): the
challenger's walk-forward evidence (:mod:`models.walkforward`, run on the same bars it was trained on, so
entirely before the evaluation month) must clear the bar before it may replace a champion
(:func:`promotion_with_gate`), so two coin flips cannot promote each other. A symbol without a champion (or with
one whose files are damaged) still gets the challenger as champion: it journals its decisions, and its gate keeps
it from sending entries until the evidence clears the bar or an operator allows the symbol. The evidence is kept
with the version (`walkforward.json`) and recorded in the journal by the flow.

A rerun for the same ``as_of`` finds the challenger it registered (metadata ``retrain.as_of``) and evaluates it
again instead of training another.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from core.calendar import NY, sessions
from models.evaluate import PromotionRule, RuleParams, evaluate_window, promotion_decision
from models.gate import GateRule, GateVerdict, edge_gate
from models.mtf import ProgressFn, TrainConfig
from models.registry import ModelRegistry, ModelVersion, RegistryError
from models.walkforward import WalkForwardConfig


@dataclass(frozen=True)
class EvaluationMonth:
    """The out-of-sample month: bars starting in [start, end) (midnight New York); ``label`` e.g. 'oos:2026-02'."""

    start: dt.datetime
    end: dt.datetime
    label: str


def evaluation_month(as_of: dt.datetime) -> EvaluationMonth:
    """The last calendar month whose last NYSE session closed at or before ``as_of`` (aware).

    Raises:
        ValueError: a naive ``as_of``.
    """
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    local = as_of.astimezone(NY)
    first = local.date().replace(day=1)
    month_sessions = sessions(first, local.date())
    last_of_month = sessions(first, (pd.Timestamp(first) + pd.offsets.MonthEnd(0)).date())
    if not (month_sessions and last_of_month and month_sessions[-1] == last_of_month[-1]
            and last_of_month[-1].close <= as_of):
        first = (pd.Timestamp(first) - pd.offsets.MonthBegin(1)).date()
    start = dt.datetime.combine(first, dt.time(0), tzinfo=NY)
    end = dt.datetime.combine((pd.Timestamp(first) + pd.offsets.MonthBegin(1)).date(), dt.time(0), tzinfo=NY)
    return EvaluationMonth(start, end, f"oos:{first:%Y-%m}")


def retrain_configs(lookback: int, horizon: int, epochs: int | None = None, lstm_units: list[int] | None = None,
                    wf_folds: int = 4, wf_epochs: int = 8) -> tuple[TrainConfig, WalkForwardConfig]:
    """The challenger's training configuration (`TrainConfig` with L = ``lookback``, H = ``horizon`` rows and the
    ``epochs`` / ``lstm_units`` overrides when given) and its walk-forward's (``wf_folds`` test folds, each refit at
    most ``wf_epochs`` epochs with patience at most 3)."""
    config = TrainConfig(lookback=lookback, horizon=horizon)
    if epochs:
        config = replace(config, epochs=epochs)
    if lstm_units:
        config = replace(config, lstm_units=tuple(lstm_units))
    walk_forward = WalkForwardConfig(n_folds=wf_folds, train=replace(
        config, epochs=min(config.epochs, wf_epochs), patience=min(config.patience, 3)))
    return config, walk_forward


@dataclass
class RetrainOutcome:
    """One symbol's retrain: the versions, both evaluations, the decision."""

    symbol: str
    challenger: ModelVersion
    champion: ModelVersion | None
    challenger_eval: dict[str, Any]
    champion_eval: dict[str, Any] | None
    champion_error: str | None
    promoted: bool
    reason: str
    trained: bool  # False when a rerun reused the challenger registered before
    evidence: dict[str, Any] | None = None  # the challenger's walk-forward evidence (models.walkforward)
    gate: GateVerdict | None = None  # the edge gate on that evidence
    notes: list[str] = field(default_factory=list)


def promotion_with_gate(promote: bool, reason: str, gate: GateVerdict, has_champion: bool) -> tuple[bool, str]:
    """The promotion after the edge gate: a challenger that beats the champion replaces it only when its
    walk-forward evidence clears the bar; without a (usable) champion it is promoted whatever the gate says (the
    gate then keeps it from sending entries). Returns (promote?, reason)."""
    if not has_champion:
        return promote, f"{reason}; edge gate: {gate.reason}" + ("" if gate.passed else
                                                                 " (it sends no entry until the gate opens)")
    if promote and not gate.passed:
        return False, f"champion stays: the challenger beat it on the month but its {gate.reason}"
    return promote, f"{reason}; edge gate: {gate.reason}" if promote else reason


def retrain_symbol(symbol: str, bars: pd.DataFrame, registry: ModelRegistry, as_of: dt.datetime,
                   window: EvaluationMonth, config: TrainConfig, rules: RuleParams = RuleParams(),
                   rule: PromotionRule = PromotionRule(), progress: ProgressFn | None = None,
                   walk_forward: WalkForwardConfig | None = None, gate_rule: GateRule = GateRule()) -> RetrainOutcome:
    """Train (or find) the challenger, its walk-forward evidence, evaluate champion and challenger on ``window``,
    promote by ``rule`` and the edge gate (:func:`promotion_with_gate`).

    Args:
        walk_forward: the walk-forward configuration (default: ``WalkForwardConfig`` with ``config`` as its
            training configuration). gate_rule: the edge gate's bar.

    Args:
        bars: the symbol's hourly bars from the store, reaching at least to the window's end.

    Raises:
        ValueError: too few bars before the window to train, or none in it.
        models.registry.ChampionChanged: the champion changed (another host, a person) while this retrain
            evaluated the one before: nothing promoted; the challenger stays registered, a rerun evaluates it
            against the champion now.
    """
    from models.pipeline import train_and_register

    champion = registry.champion(symbol)
    decided_against = champion.version if champion else None  # promote only if it is still the champion
    tag = {"as_of": as_of.isoformat(), "window": window.label, "trained_through": window.start.isoformat()}
    challenger = next((v for v in registry.list_versions(symbol) if v.metadata.get("retrain") == tag), None)
    trained = challenger is None
    if trained:
        train_bars = bars[bars.index < window.start]
        challenger = train_and_register(symbol, train_bars, registry, as_of, config, rules, progress,
                                        promote_if_none=False, extra_metadata={"retrain": tag}).version
    evidence = registry.evidence(challenger)
    if evidence is None:  # a new challenger (or one whose evidence is lost): walk forward on its training bars
        from models.walkforward import run_walk_forward

        wf = walk_forward or WalkForwardConfig(train=config)
        evidence = run_walk_forward(symbol, bars[bars.index < window.start], wf, rules).evidence()
        registry.save_evidence(challenger, evidence)
    gate = edge_gate(evidence, gate_rule)
    if champion is not None and champion.version == challenger.version:  # a rerun after the promotion
        champion = _previous_champion(registry, symbol)
    evaluated = bars[bars.index < window.end]
    challenger_eval = evaluate_window(registry.load_predictor(symbol, challenger.version), evaluated, window.start,
                                      window.end, config.horizon, rules)
    champion_eval, champion_error = None, None
    if champion is not None:
        try:
            champion_eval = evaluate_window(registry.load_predictor(symbol, champion.version), evaluated,
                                            window.start, window.end, config.horizon, rules)
            champion_eval["champion_in_sample"] = _overlaps(champion, window)
        except (OSError, KeyError, ValueError, RegistryError) as exc:
            champion_error = f"{champion.version}: {exc}"
    promote, reason = promotion_decision(champion_eval["classification"]["model"] if champion_eval else None,
                                         challenger_eval["classification"]["model"], rule, champion_error)
    promote, reason = promotion_with_gate(promote, reason, gate, champion is not None and champion_error is None)
    if promote:
        registry.promote(symbol, challenger.version, expected=decided_against)
    return RetrainOutcome(symbol.upper(), challenger, champion, challenger_eval, champion_eval, champion_error,
                          promote, reason, trained, evidence, gate)


def _previous_champion(registry: ModelRegistry, symbol: str) -> ModelVersion | None:
    history = registry.champion_history(symbol)
    return registry.get(symbol, history[-1]) if history else None


def _overlaps(mv: ModelVersion, window: EvaluationMonth) -> bool:
    """Whether the version's training/validation data reached into the window."""
    val = (mv.metadata.get("splits") or {}).get("val") or {}
    last = val.get("last")
    return bool(last) and dt.datetime.fromisoformat(last) >= window.start


def latest_retrain_curves(registry: ModelRegistry, symbol: str, bars: pd.DataFrame, horizon: int,
                          rules: RuleParams = RuleParams()) -> tuple[str, tuple[str, dict], tuple[str, dict] | None]:
    """The last retrain of ``symbol`` evaluated again, for its chart (`tradeflow plot retrain`): the newest
    challenger a retrain registered (its ``retrain`` metadata names the window) and the champion it was judged
    against (the champion now, or the one it replaced when it was promoted), each evaluated on that window of
    ``bars`` (hourly, aware index).

    Returns:
        (window label, (challenger version, curve), (champion version, curve) or None), a curve being
        `evaluate_window`'s "curve" ({"y", "p_up"}).

    Raises:
        ValueError: no retrain registered a challenger for ``symbol``, or the bars do not cover its window.
    """
    retrained = [v for v in registry.list_versions(symbol) if v.metadata.get("retrain")]
    if not retrained:
        raise ValueError(f"no retrain has registered a challenger for {symbol} yet")
    challenger = retrained[-1]
    tag = challenger.metadata["retrain"]
    window = evaluation_month(dt.datetime.fromisoformat(tag["as_of"]))
    champion = registry.champion(symbol)
    if champion is not None and champion.version == challenger.version:
        champion = _previous_champion(registry, symbol)
    evaluated = bars[bars.index < window.end]

    def curve(mv: ModelVersion) -> dict:
        return evaluate_window(registry.load_predictor(symbol, mv.version), evaluated, window.start, window.end,
                               horizon, rules)["curve"]

    return window.label, (challenger.version, curve(challenger)), (
        (champion.version, curve(champion)) if champion is not None else None)
