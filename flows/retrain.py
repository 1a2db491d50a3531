"""`retrain`: the MTF model's monthly retrain (18:00 on the last session of each month).

One run, for `as_of` (default: its scheduled start):

1. The evaluation month (`models.retrain.evaluation_month`): the last calendar month whose last session had closed
   by `as_of` (at 18:00 on the last session of February: February).
2. The hourly bar store (`core.bar_store`, `<state dir>/bars/1h/<SYMBOL>.csv`) is brought up to date from the
   Broker: only what is missing is requested (the bars since the last stored one; history back to
   `history_months` before the evaluation month in `1 M` chunks), at most `max_requests` historical requests in
   the run, shared by the symbols (default 56: below IB's 60 in 10 minutes; IBBroker paces as well). A first run
   with an empty store backfills; later runs make about one request per symbol.
3. Per symbol (in this process one after another, or all at once on the Dask cluster that `TRADEFLOW_DASK_SCHEDULER`
   names: `tasks.retrain.retrain_symbols`): a challenger is trained on the stored bars before the evaluation month
   (same model and splits as `tradeflow train`) and registered; its walk-forward evidence is computed on the same
   bars (`models.walkforward`: `wf_folds` expanding, purged folds, at most `wf_epochs` epochs a refit, baselines);
   champion and challenger are evaluated on the evaluation month with the numpy predictor; the challenger replaces a
   champion only by the rule of `models.evaluate.PromotionRule` (ROC AUC above the champion's + `min_auc_gain` and
   log loss at most the champion's + `max_log_loss_increase`, on at least `min_samples` labelled hours) AND when its
   evidence clears the edge gate (`models.gate`, settings `TRADEFLOW_MTF_GATE_*`); a symbol without a champion gets
   it anyway (its gate keeps it from sending entries).
4. The journal gets both versions (`models`, named `<SYMBOL>/<version>`), the challenger's own validation/test
   metrics, its walk-forward evidence (window `walkforward`) and both evaluations (`model_metrics`, window
   `oos:YYYY-MM`, with the majority-class and buy-and-hold baselines); the flow event's details hold each decision
   and its reason. An artifact shows the comparison, the walk-forward tables and the gate.

A rerun for the same `as_of` reuses the challenger it registered (no second training) and reaches the same
decision. A symbol that cannot be trained (too few bars) fails the run after the others are done.
`tradeflow models list | promote SYMBOL VERSION | rollback SYMBOL` manage the registry by hand.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
from prefect import flow

from models.evaluate import PromotionRule
from models.retrain import evaluation_month, retrain_configs
from models.retrain_report import retrain_markdown, retrain_result, retrain_row
from tasks.retrain import journal_retrain, retrain_symbols, update_bar_store
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
        ConnectionError: `TRADEFLOW_DASK_SCHEDULER` is set and that scheduler cannot be reached.
    """
    with flow_run(DEPLOYMENT, as_of) as run:
        s = run.settings
        syms = [x.upper() for x in (symbols or s.mtf_symbols)]
        window = evaluation_month(run.as_of)
        need_from = window.start - pd.DateOffset(months=history_months)
        config, walk_forward = retrain_configs(s.mtf_lookback, s.mtf_horizon, epochs, lstm_units, wf_folds, wf_epochs)
        rule = PromotionRule(min_auc_gain, max_log_loss_increase, min_samples)
        with run.broker() as broker:
            cutoff = min(run.as_of, broker.current_time())
            # never more than the pacing window allows now: what is left is fetched by next month's run, and the
            # challenger trains on the bars the store has (the promotion rule judges it like any other)
            available = broker.historical_requests_available()
            budget = max_requests if available is None else min(max_requests, available)
            updates = {sym: update_bar_store(run, broker, sym, cutoff, need_from.to_pydatetime(),
                                             budget // len(syms)) for sym in syms}
        results, failures = [], []
        for sym, outcome in retrain_symbols(run, syms, cutoff, window, config, rule, walk_forward):
            if isinstance(outcome, ValueError):
                failures.append(f"{sym}: {outcome} (store: {updates[sym].note or 'up to date'})")
                continue
            journal_retrain(run, outcome, window)
            results.append(retrain_result(outcome, updates[sym]))
            publish_retrain_chart(run, outcome, window.label)
        run.details = {"window": window.label, "results": results, "failures": failures}
        run.outcome = "; ".join(f"{r['symbol']} promoted {r['challenger']}" if r["promoted"] else
                                f"{r['symbol']} kept {r['champion']}" for r in results) or "nothing retrained"
        run.publish(retrain_markdown(window.label, results, failures), [retrain_row(r) for r in results])
        if failures:
            raise RuntimeError(f"retrain {run.as_of.isoformat()}: " + "; ".join(failures))
        return {"as_of": run.as_of.isoformat(), "window": window.label, "results": results}
