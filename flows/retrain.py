"""`retrain`: the MTF model's monthly retrain (18:00 on the last session of each month).

One run, for `as_of` (default: its scheduled start):

1. The evaluation month (`models.retrain.evaluation_month`): the last calendar month whose last session had closed
   by `as_of` (at 18:00 on the last session of February: February).
2. The hourly bar store (`core.bar_store`, `<state dir>/bars/1h/<SYMBOL>.csv`) is brought up to date from the
   Broker: only what is missing is requested (the bars since the last stored one; history back to
   `history_months` before the evaluation month in `1 M` chunks), at most `max_requests` historical requests in
   the run, shared by the symbols (default 56: below IB's 60 in 10 minutes; IBBroker paces as well). A first run
   with an empty store backfills; later runs make about one request per symbol.
3. Per symbol: a challenger is trained on the stored bars before the evaluation month (same model and splits as
   `tradeflow train`) and registered; its walk-forward evidence is computed on the same bars
   (`models.walkforward`: `wf_folds` expanding, purged folds, at most `wf_epochs` epochs a refit, baselines);
   champion and challenger are evaluated on the evaluation month with the numpy predictor; the challenger
   replaces a champion only by the rule of `models.evaluate.PromotionRule` (ROC AUC above the champion's +
   `min_auc_gain` and log loss at most the champion's + `max_log_loss_increase`, on at least `min_samples`
   labelled hours) AND when its evidence clears the edge gate (`models.gate`, settings `TRADEFLOW_MTF_GATE_*`);
   a symbol without a champion gets it anyway (its gate keeps it from sending entries).
4. The journal gets both versions (`models`, named `<SYMBOL>/<version>`), the challenger's own validation/test
   metrics, its walk-forward evidence (window `walkforward`) and both evaluations (`model_metrics`, window
   `oos:YYYY-MM`, with the majority-class and buy-and-hold baselines); the flow event's details hold each decision
   and its reason. An artifact shows the comparison, the walk-forward tables and the gate.

A rerun for the same `as_of` reuses the challenger it registered (no second training) and reaches the same
decision. A symbol that cannot be trained (too few bars) fails the run after the others are done.
`tradeflow models list | promote SYMBOL VERSION | rollback SYMBOL` manage the registry by hand.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime
from typing import Any

import pandas as pd
from prefect import flow

from models.evaluate import PromotionRule
from models.mtf import TrainConfig
from models.retrain import evaluation_month
from models.walkforward import WalkForwardConfig
from tasks.retrain import journal_retrain, retrain_one, update_bar_store
from tasks.run_policy import run_policy
from tasks.runtime import flow_run
from tasks.ui import publish_retrain_chart, run_name

DEPLOYMENT = "retrain"


@flow(name=DEPLOYMENT, flow_run_name=run_name(DEPLOYMENT), **run_policy(DEPLOYMENT))
def retrain(as_of: datetime | None = None, symbols: list[str] | None = None, history_months: int = 24,
            max_requests: int = 56, epochs: int | None = None, lstm_units: list[int] | None = None,
            min_auc_gain: float = PromotionRule.min_auc_gain,
            max_log_loss_increase: float = PromotionRule.max_log_loss_increase,
            min_samples: int = PromotionRule.min_samples, wf_folds: int = 4, wf_epochs: int = 8) -> dict[str, Any]:
    """The monthly retrain (module docstring).

    Args:
        as_of: the run's time (aware); default its scheduled start.
        symbols: default `settings.mtf_symbols`.
        history_months: months of hourly bars before the evaluation month the store must hold (training data).
        max_requests: historical data requests this run may make, shared by the symbols.
        epochs, lstm_units: training overrides (default `models.mtf.TrainConfig`).
        min_auc_gain, max_log_loss_increase, min_samples: the promotion rule (`PromotionRule`).
        wf_folds, wf_epochs: the challenger's walk-forward (test folds; maximum epochs a refit).

    Returns:
        {"as_of", "window", "results": [{symbol, challenger, champion, promoted, reason, metrics...}]}.

    Raises:
        RuntimeError: a symbol could not be retrained (the others were).
    """
    with flow_run(DEPLOYMENT, as_of) as run:
        s = run.settings
        syms = [x.upper() for x in (symbols or s.mtf_symbols)]
        window = evaluation_month(run.as_of)
        need_from = window.start - pd.DateOffset(months=history_months)
        config = TrainConfig(lookback=s.mtf_lookback, horizon=s.mtf_horizon)
        if epochs:
            config = dataclasses.replace(config, epochs=epochs)
        if lstm_units:
            config = dataclasses.replace(config, lstm_units=tuple(lstm_units))
        rule = PromotionRule(min_auc_gain, max_log_loss_increase, min_samples)
        walk_forward = WalkForwardConfig(n_folds=wf_folds, train=dataclasses.replace(
            config, epochs=min(config.epochs, wf_epochs), patience=min(config.patience, 3)))
        with run.broker() as broker:
            cutoff = min(run.as_of, broker.current_time())
            # never more than the pacing window allows now: what is left is fetched by next month's run, and the
            # challenger trains on the bars the store has (the promotion rule judges it like any other)
            available = broker.historical_requests_available()
            budget = max_requests if available is None else min(max_requests, available)
            updates = {sym: update_bar_store(run, broker, sym, cutoff, need_from.to_pydatetime(),
                                             budget // len(syms)) for sym in syms}
        results, failures = [], []
        for sym in syms:
            try:
                outcome = retrain_one(run, sym, cutoff, window, config, rule, walk_forward)
            except ValueError as exc:
                failures.append(f"{sym}: {exc} (store: {updates[sym].note or 'up to date'})")
                continue
            journal_retrain(run, outcome, window)
            results.append(_result(outcome, updates[sym]))
            publish_retrain_chart(run, outcome, window.label)
        run.details = {"window": window.label, "results": results, "failures": failures}
        run.outcome = "; ".join(f"{r['symbol']} promoted {r['challenger']}" if r["promoted"] else
                                f"{r['symbol']} kept {r['champion']}" for r in results) or "nothing retrained"
        run.publish(_markdown(window.label, results, failures), [_row(r) for r in results])
        if failures:
            raise RuntimeError(f"retrain {run.as_of.isoformat()}: " + "; ".join(failures))
        return {"as_of": run.as_of.isoformat(), "window": window.label, "results": results}


def _result(o, update) -> dict[str, Any]:
    def cls(ev):
        return ev["classification"]["model"] if ev else None

    return {"symbol": o.symbol, "challenger": o.challenger.version,
            "champion": o.champion.version if o.champion else None, "promoted": o.promoted, "reason": o.reason,
            "trained": o.trained, "challenger_oos": cls(o.challenger_eval), "champion_oos": cls(o.champion_eval),
            "baseline_oos": o.challenger_eval["classification"]["baseline"],
            "champion_in_sample": (o.champion_eval or {}).get("champion_in_sample"),
            "champion_error": o.champion_error,
            "edge_gate": {"passed": o.gate.passed, "reason": o.gate.reason} if o.gate else None,
            "walk_forward": o.evidence,
            "store": {"requests": update.requests, "added": update.added, "note": update.note,
                      "first": update.first.isoformat() if update.first else None}}


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _row(r: dict[str, Any]) -> dict[str, Any]:
    ch, ck = r["challenger_oos"] or {}, r["champion_oos"] or {}
    return {"symbol": r["symbol"], "challenger": r["challenger"], "champion": r["champion"] or "-",
            "challenger ROC AUC": _fmt(ch.get("roc_auc")), "champion ROC AUC": _fmt(ck.get("roc_auc")),
            "challenger log loss": _fmt(ch.get("log_loss")), "champion log loss": _fmt(ck.get("log_loss")),
            "baseline log loss": _fmt(r["baseline_oos"].get("log_loss")), "promoted": r["promoted"],
            "reason": r["reason"]}


def _markdown(label: str, results: list[dict], failures: list[str]) -> str:
    lines = [f"### retrain, evaluation window {label}", "",
             "| symbol | challenger | champion | AUC chall. | AUC champ. | log loss chall. | log loss champ. | "
             "promoted | reason |", "|---|---|---|---|---|---|---|---|---|"]
    for r in map(_row, results):
        lines.append(f"| {r['symbol']} | {r['challenger']} | {r['champion']} | {r['challenger ROC AUC']} | "
                     f"{r['champion ROC AUC']} | {r['challenger log loss']} | {r['champion log loss']} | "
                     f"{'yes' if r['promoted'] else 'no'} | {r['reason']} |")
    for r in results:
        lines += ["", *_walk_forward_lines(r)]
    if failures:
        lines += ["", "**Failures:** " + "; ".join(failures)]
    return "\n".join(lines) + "\n"


def _walk_forward_lines(r: dict[str, Any]) -> list[str]:
    """The challenger's walk-forward tables (pooled per model, then per fold) and its edge gate, as markdown."""
    ev, gate = r.get("walk_forward"), r.get("edge_gate")
    if not ev:
        return [f"#### {r['symbol']} {r['challenger']}: no walk-forward evidence"]
    lines = [f"#### {r['symbol']} {r['challenger']}: walk-forward, {ev['n_folds']} folds "
             f"({ev['window']['bars_first'][:10]} .. {ev['window']['bars_last'][:10]})", "",
             "| model | AUC | AUC 95 % CI | accuracy | log loss | Brier | return | Sharpe | trades | win rate |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in [("lstm", ev["lstm"]), *ev["baselines"].items()]:
        ci = f"{_fmt(m.get('roc_auc_low'))} .. {_fmt(m.get('roc_auc_high'))}"
        lines.append(f"| {name} | {_fmt(m.get('roc_auc'))} | {ci} | {_fmt(m.get('accuracy'))} | "
                     f"{_fmt(m.get('log_loss'))} | {_fmt(m.get('brier'))} | {_fmt(m.get('return'))} | "
                     f"{_fmt(m.get('sharpe'))} | {m.get('trades')} | {_fmt(m.get('win_rate'))} |")
    lines += ["", "| fold | test bars | LSTM AUC | 95 % CI | return | trades | buy & hold |", "|---|---|---|---|---|---|---|"]
    for f in ev.get("folds") or []:
        lines.append(f"| {f['fold']} | {f['test_first'][:10]} .. {f['test_last'][:10]} | {_fmt(f['roc_auc'])} | "
                     f"{_fmt(f['roc_auc_low'])} .. {_fmt(f['roc_auc_high'])} | {_fmt(f['return'])} | {f['trades']} | "
                     f"{_fmt(f['buy_hold_return'])} |")
    if gate:
        lines += ["", f"Edge gate: {'**pass**' if gate['passed'] else '**fail**'}: {gate['reason']}"]
    return lines
