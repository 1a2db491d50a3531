"""Train -> evaluate -> register, for one symbol: what `tradeflow train` and the monthly retrain run.

Nothing here reads the clock: ``as_of`` (tz-aware) is recorded as the version's creation time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from core.features import FEATURES
from models.evaluate import SOURCE_FIGURES, RuleParams, buy_and_hold, classification_metrics, simulate_rules
from models.mtf import ProgressFn, TrainConfig, TrainResult, config_dict, export_weights, train_model
from models.registry import ChampionChanged, ModelRegistry, ModelVersion


def evaluate_result(result: TrainResult, rules: RuleParams) -> dict[str, Any]:
    """Validation and test metrics (model vs majority baseline) and the rules vs buy and hold on the test window.

    Returns a JSON-able dict: {"val": {...}, "test": {...}, "rules_test": {...}, "buy_hold_test": {...},
    "source": {...} or None}.
    """
    ds, sp = result.dataset, result.split
    y_train = ds.labels[sp.train]
    out: dict[str, Any] = {
        "val": classification_metrics(ds.labels[sp.val], result.p_val, y_train),
        "test": classification_metrics(ds.labels[sp.test], result.p_test, y_train),
    }
    idx = ds.index[sp.test]
    sim, _trades = simulate_rules(idx, ds.close[sp.test], result.p_test, rules)
    out["rules_test"] = sim.as_dict()
    out["buy_hold_test"] = buy_and_hold(idx, ds.close[sp.test], rules).as_dict()
    out["source"] = SOURCE_FIGURES.get(result.symbol.upper())
    return out


def metadata_for(result: TrainResult, metrics: dict[str, Any]) -> dict[str, Any]:
    """The metadata.json content of a version (feature list, L, H, data range, fingerprint, metrics, config)."""
    ds, sp = result.dataset, result.split

    def rng(rows: np.ndarray) -> dict[str, str]:
        return {"first": ds.index[int(rows[0])].isoformat(), "last": ds.index[int(rows[-1])].isoformat(),
                "samples": int(len(rows))}

    import keras  # already imported by training; only for its version

    return {
        "features": list(FEATURES),
        "n_features": len(FEATURES),
        "lookback": ds.lookback,
        "horizon": ds.horizon,
        "label": f"close[t + {ds.horizon}] > close[t] (hourly base bars)",
        "data": {
            "bars_first": ds.bars_first.isoformat(),
            "bars_last": ds.bars_last.isoformat(),
            "n_bars": ds.n_bars,
            "fingerprint_sha256": ds.fingerprint,
            "first_feature_row": ds.index[0].isoformat(),
        },
        "splits": {"train": rng(sp.train), "val": rng(sp.val), "test": rng(sp.test), "gap_bars": sp.gap},
        "scaler": "sklearn StandardScaler fitted on the training window's feature rows",
        "config": config_dict(result.config),
        "epochs_run": result.epochs_run,
        "history": result.history,
        "metrics": metrics,
        "keras_version": keras.__version__,
    }


@dataclass
class TrainOutcome:
    symbol: str
    version: ModelVersion
    metrics: dict[str, Any]
    became_champion: bool
    result: TrainResult


def train_and_register(symbol: str, bars: pd.DataFrame, registry: ModelRegistry, as_of: datetime,
                       config: TrainConfig = TrainConfig(), rules: RuleParams = RuleParams(),
                       progress: ProgressFn | None = None, promote_if_none: bool = True,
                       extra_metadata: dict[str, Any] | None = None) -> TrainOutcome:
    """Train a model for ``symbol``, evaluate it, register it, and make it champion when there is none
    (``promote_if_none``). ``extra_metadata`` is added to the version's metadata (e.g. the retrain's window).

    Raises:
        core.features.FeatureInputError, ValueError: bad or too few bars.
    """
    result = train_model(symbol, bars, config, progress)
    metrics = evaluate_result(result, rules)
    weights = export_weights(result.model, result.scaler, config.lookback)
    mv = registry.register(symbol, result.model, result.scaler, weights,
                           metadata_for(result, metrics) | (extra_metadata or {}), as_of)
    became = False
    if promote_if_none and registry.champion(symbol) is None:
        try:
            registry.promote(symbol, mv.version, expected=None)
            became = True
        except ChampionChanged:  # another host made a champion meanwhile: this version stays a challenger
            pass
    return TrainOutcome(symbol.upper(), mv, metrics, became, result)
