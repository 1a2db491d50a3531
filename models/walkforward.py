"""Walk-forward evaluation of the MTF model over the whole hourly history, with baselines on the same folds.

**Folds** (:func:`walk_forward_folds`): an *expanding* window. The sample end rows with a full look-back and a
label (as in :func:`models.mtf.chronological_split`) are ordered in time; the first ``min_train_frac`` (default
40 %) are only ever trained on, the rest is cut into ``n_folds`` (default 4) contiguous test blocks of equal
size, each a step of about a fifth of the history (on the sample data: about 500 hourly bars, 3.5 months). Fold
k trains a new model on every sample before its test block, so the step between refits is one test block.
- **purged**: a training or validation sample ``i`` reads the close ``H`` bars ahead (its label), so only samples
  with ``i + H < t0`` (t0 = the fold's first test row) are kept: no label's horizon reaches a test bar;
- **embargoed**: ``embargo`` further rows (default ``H``) before the test block are dropped as well, so the
  last training label ends at least ``embargo`` bars before the first test bar (serially correlated features and
  overlapping labels do not bridge the boundary);
- inside the training part, the last ``val_frac`` of the samples are the early-stopping validation window, with
  ``H`` samples left out between them (the same purge), and the scaler is fitted on the training rows only.
Test blocks tile the end of the history, so fold k's test bars are in fold k+1's training data (that is what an
expanding refit does) and the pooled test samples are every sample after the first training window, once.

**Models on the same folds**: the LSTM (:func:`models.mtf.fit_split`, the production architecture, with fewer
epochs for time: ``epochs``, default 8, patience 3); a logistic regression (scikit-learn, L2, C = 1) on the same 45
features of the sample's end row, scaled by the same training-only scaler; the majority class of the fold's
training labels (its probability: the training base rate); and buy-and-hold of the test block.

**Figures**, per fold and pooled over all test samples: accuracy (threshold 0.5), ROC AUC with a moving-block
bootstrap 95 % interval (blocks of ``block`` samples, default 24, about 3.5 sessions, because neighbouring hourly
labels overlap; ``n_boot`` resamples, default 1000, fixed seed), log loss, Brier score, the expected calibration
error (10 equal-width bins of P(up)) and, pooled, the calibration table (mean P(up) and share up per bin); and
the decision rules (:func:`models.evaluate.simulate_rules`: the live rules, IB commission and the slippage of
:class:`models.evaluate.RuleParams`) fed with each model's P(up): return (P&L / 10,000 USD), Sharpe, round trips
and win rate after costs. The pooled rule simulation runs over the pooled test bars in one pass (a position open
at a fold boundary carries on).

Nothing here reads the clock or imports Prefect; TensorFlow is imported by :func:`models.mtf.fit_split`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from models.evaluate import RuleParams, buy_and_hold, simulate_rules
from models.mtf import Dataset, ProgressFn, Split, TrainConfig, build_dataset, fit_split

__all__ = [
    "MODELS",
    "Fold",
    "WalkForwardConfig",
    "WalkForwardResult",
    "block_bootstrap_auc",
    "calibration_table",
    "format_table",
    "run_walk_forward",
    "walk_forward_folds",
    "write_walk_forward_files",
]

MODELS = ("lstm", "logistic", "majority", "buy_hold")
"""The rows of each table: the model under test and its three baselines."""


@dataclass(frozen=True)
class WalkForwardConfig:
    """Walk-forward parameters (module docstring). ``train`` is the LSTM's configuration for every refit.

    ``shuffle_labels`` (a seed, default None) makes a null model: each fold's training and validation labels are
    permuted among themselves before fitting (the test labels stay true), so whatever the figures show is what
    chance and costs give; such evidence must fail the edge gate."""

    n_folds: int = 4
    min_train_frac: float = 0.4
    val_frac: float = 0.15
    embargo: int | None = None  # rows; None = the label horizon H
    n_boot: int = 1000
    block: int = 24
    seed: int = 7
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=8, patience=3))
    shuffle_labels: int | None = None  # a permutation check: train on labels shuffled with this seed

    def __post_init__(self) -> None:
        if self.n_folds < 1:
            raise ValueError(f"n_folds must be >= 1, got {self.n_folds}")
        if not 0 < self.min_train_frac < 1 or not 0 < self.val_frac < 1:
            raise ValueError("min_train_frac and val_frac must be fractions in (0, 1)")
        if self.embargo is not None and self.embargo < 0:
            raise ValueError(f"embargo must be >= 0 rows, got {self.embargo}")
        if self.n_boot < 0 or self.block < 1:
            raise ValueError("n_boot must be >= 0 and block >= 1")


@dataclass(frozen=True)
class Fold:
    """One fold: its number (1-based) and its split (sample end rows; ``split.gap`` = the purge, H rows)."""

    number: int
    split: Split
    embargo: int


def walk_forward_folds(n_rows: int, lookback: int, horizon: int, n_folds: int = 4, min_train_frac: float = 0.4,
                       val_frac: float = 0.15, embargo: int | None = None) -> list[Fold]:
    """The expanding, purged and embargoed folds over ``n_rows`` feature rows (module docstring).

    Returns:
        ``n_folds`` folds in time order; for each, every training and validation row ``i`` has
        ``i + horizon + embargo < split.test[0]``, and validation rows follow training rows by more than
        ``horizon``.

    Raises:
        ValueError: too few samples for the folds (a window would be empty).
    """
    emb = horizon if embargo is None else embargo
    cand = np.arange(lookback - 1, n_rows - horizon)
    m = len(cand)
    first_test = int(m * min_train_frac)
    blocks = np.array_split(cand[first_test:], n_folds)
    folds = []
    for k, test in enumerate(blocks, start=1):
        if len(test) == 0:
            raise ValueError(f"{m} samples are too few for {n_folds} test folds")
        usable = cand[cand + horizon + emb < test[0]]
        n_val = int(len(usable) * val_frac)
        n_train = len(usable) - n_val - horizon
        train, val = usable[:n_train], usable[n_train + horizon:]
        if n_train <= 0 or len(val) == 0:
            raise ValueError(f"fold {k}: {len(usable)} samples before its test block are too few to train")
        folds.append(Fold(k, Split(train=train, val=val, test=test, gap=horizon), emb))
    return folds


# --------------------------------------------------------------------------------------------------------------
# figures


def block_bootstrap_auc(y: np.ndarray, p: np.ndarray, n_boot: int = 1000, block: int = 24, seed: int = 7,
                        level: float = 0.95) -> tuple[float, float]:
    """(low, high) of a moving-block bootstrap interval of ROC AUC (percentile method).

    Resamples ``ceil(n / block)`` blocks of ``block`` consecutive samples with replacement; resamples with one
    class only are skipped. (NaN, NaN) when ``n_boot`` is 0 or the labels have one class.
    """
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    n = len(y)
    if n_boot == 0 or n < 2 or len(np.unique(y)) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    b = min(block, n)
    k = math.ceil(n / b)
    starts = rng.integers(0, n - b + 1, size=(n_boot, k))
    idx = (starts[:, :, None] + np.arange(b)[None, None, :]).reshape(n_boot, -1)[:, :n]
    aucs = []
    for row in idx:
        yy = y[row]
        if yy.min() != yy.max():
            aucs.append(roc_auc_score(yy, p[row]))
    if not aucs:
        return math.nan, math.nan
    alpha = (1 - level) / 2
    return float(np.quantile(aucs, alpha)), float(np.quantile(aucs, 1 - alpha))


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Reliability table: per equal-width bin of P(up), `n`, `mean_p` and `share_up` (empty bins left out)."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            rows.append({"bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}", "n": int(sel.sum()),
                         "mean_p": float(p[sel].mean()), "share_up": float(y[sel].mean())})
    return pd.DataFrame(rows, columns=["bin", "n", "mean_p", "share_up"])


def _ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    t = calibration_table(y, p, bins)
    return float((t["n"] * (t["mean_p"] - t["share_up"]).abs()).sum() / max(len(y), 1))


def _classification(y: np.ndarray, p: np.ndarray, cfg: WalkForwardConfig, ci: bool) -> dict[str, float]:
    y = np.asarray(y, dtype=int)
    pc = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    two = len(np.unique(y)) == 2
    lo, hi = block_bootstrap_auc(y, pc, cfg.n_boot, cfg.block, cfg.seed) if ci and two else (math.nan, math.nan)
    return {"n": int(len(y)), "up_rate": float(y.mean()), "accuracy": float(np.mean((pc >= 0.5) == y)),
            "roc_auc": float(roc_auc_score(y, pc)) if two else math.nan, "roc_auc_low": lo, "roc_auc_high": hi,
            "log_loss": float(log_loss(y, pc, labels=[0, 1])), "brier": float(brier_score_loss(y, pc)),
            "ece": _ece(y, pc)}


def _rules(idx: pd.DatetimeIndex, close: np.ndarray, p: np.ndarray | None, r: RuleParams) -> dict[str, float]:
    sim = buy_and_hold(idx, close, r) if p is None else simulate_rules(idx, close, p, r)[0]
    return {"return": sim.total_return, "sharpe": sim.sharpe, "trades": sim.trades, "win_rate": sim.win_rate,
            "exposure": sim.exposure}


# --------------------------------------------------------------------------------------------------------------
# the run


@dataclass
class WalkForwardResult:
    """What a walk-forward run produced for one symbol.

    Attributes:
        symbol: the symbol.
        folds: one row per (fold, model): `fold`, `model` (:data:`MODELS`), `train_first`, `train_last`,
            `test_first`, `test_last` (bar start times, ISO), `n_train`, then the classification figures
            (`n`, `up_rate`, `accuracy`, `roc_auc`, `roc_auc_low`, `roc_auc_high`, `log_loss`, `brier`, `ece`:
            NaN for buy-and-hold) and the rules' (`return`, `sharpe`, `trades`, `win_rate`, `exposure`).
        pooled: the same figures over every fold's test samples, one row per model (`fold` = 'pooled').
        calibration: the LSTM's pooled reliability table (:func:`calibration_table`).
        config: the configuration used; rules: the rule parameters and costs used.
        data: the bars' first / last start time and count.
    """

    symbol: str
    folds: pd.DataFrame
    pooled: pd.DataFrame
    calibration: pd.DataFrame
    config: WalkForwardConfig
    rules: RuleParams
    data: dict[str, Any]

    def pooled_figures(self, model: str = "lstm") -> dict[str, float]:
        """One model's pooled row as a dict (the edge gate's evidence reads it)."""
        row = self.pooled.set_index("model").loc[model]
        return {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v) for k, v in row.items()}

    def evidence(self) -> dict[str, Any]:
        """JSON-able evidence for the edge gate, the journal and the retrain artifact: the pooled row of the LSTM
        and of each baseline, per fold the LSTM's AUC (with its interval), return and round trips beside
        buy-and-hold's return, the folds' count and the data (see :mod:`models.gate`)."""
        folds = []
        for fold in sorted(set(self.folds["fold"]), key=int):
            rows = self.folds[self.folds["fold"] == fold].set_index("model")
            lstm = rows.loc["lstm"]
            folds.append({"fold": int(fold), "test_first": lstm["test_first"], "test_last": lstm["test_last"],
                          "roc_auc": float(lstm["roc_auc"]), "roc_auc_low": float(lstm["roc_auc_low"]),
                          "roc_auc_high": float(lstm["roc_auc_high"]), "return": float(lstm["return"]),
                          "trades": int(lstm["trades"]), "buy_hold_return": float(rows.loc["buy_hold", "return"]),
                          "logistic_roc_auc": float(rows.loc["logistic", "roc_auc"])})
        return _no_nan({"symbol": self.symbol, "n_folds": self.config.n_folds, "window": self.data,
                        "lstm": self.pooled_figures("lstm"),
                        "baselines": {m: self.pooled_figures(m) for m in MODELS if m != "lstm"}, "folds": folds})


def _no_nan(o: Any) -> Any:
    """The same structure with NaN floats as None (valid JSON for the journal and the registry)."""
    if isinstance(o, dict):
        return {k: _no_nan(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_no_nan(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return None if math.isnan(float(o)) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    return o


def run_walk_forward(symbol: str, bars: pd.DataFrame, config: WalkForwardConfig = WalkForwardConfig(),
                     rules: RuleParams = RuleParams(), progress: ProgressFn | None = None,
                     fold_progress: Any = None) -> WalkForwardResult:
    """Walk-forward evaluation of ``symbol``'s MTF model on its hourly ``bars`` (module docstring).

    Args:
        bars: hourly bars as for :func:`core.features.compute_features` (the whole history to evaluate).
        config: folds, bootstrap and the LSTM's training configuration.
        rules: the decision rules and costs for the simulations.
        progress: per epoch, as for :func:`models.mtf.fit_split`; fold_progress(fold, n_folds): per fold.

    Raises:
        core.features.FeatureInputError, ValueError: bad bars, or too few for the folds.
    """
    tc = config.train
    ds = build_dataset(bars, tc.lookback, tc.horizon)
    folds = walk_forward_folds(len(ds.features), tc.lookback, tc.horizon, config.n_folds, config.min_train_frac,
                               config.val_frac, config.embargo)
    rows: list[dict[str, Any]] = []
    pooled_p: dict[str, list[np.ndarray]] = {m: [] for m in ("lstm", "logistic", "majority")}
    for fold in folds:
        if fold_progress is not None:
            fold_progress(fold.number, len(folds))
        preds = _fit_fold(symbol, _shuffled(ds, fold.split, config.shuffle_labels), fold.split, tc,
                                  progress)
        sp = fold.split
        y = ds.labels[sp.test]
        idx, close = ds.index[sp.test], ds.close[sp.test]
        base = {"fold": str(fold.number), "train_first": ds.index[sp.train[0]].isoformat(),
                "train_last": ds.index[sp.val[-1]].isoformat(), "test_first": idx[0].isoformat(),
                "test_last": idx[-1].isoformat(), "n_train": int(len(sp.train) + len(sp.val))}
        for name, p in preds.items():
            pooled_p[name].append(p)
            rows.append(base | {"model": name} | _classification(y, p, config, ci=name != "majority")
                        | _rules(idx, close, p, rules))
        rows.append(base | {"model": "buy_hold"} | _rules(idx, close, None, rules))
    test_rows = np.concatenate([f.split.test for f in folds])
    y_all = ds.labels[test_rows]
    idx_all, close_all = ds.index[test_rows], ds.close[test_rows]
    pooled_rows = []
    head = {"fold": "pooled", "train_first": ds.index[folds[0].split.train[0]].isoformat(),
            "train_last": ds.index[folds[-1].split.val[-1]].isoformat(), "test_first": idx_all[0].isoformat(),
            "test_last": idx_all[-1].isoformat(), "n_train": None}
    for name, parts in pooled_p.items():
        p = np.concatenate(parts)
        pooled_rows.append(head | {"model": name} | _classification(y_all, p, config, ci=name != "majority")
                           | _rules(idx_all, close_all, p, rules))
    pooled_rows.append(head | {"model": "buy_hold"} | _rules(idx_all, close_all, None, rules))
    columns = ["fold", "model", "train_first", "train_last", "test_first", "test_last", "n_train", "n", "up_rate",
               "accuracy", "roc_auc", "roc_auc_low", "roc_auc_high", "log_loss", "brier", "ece", "return", "sharpe",
               "trades", "win_rate", "exposure"]
    return WalkForwardResult(
        symbol=symbol.upper(), folds=pd.DataFrame(rows, columns=columns), pooled=pd.DataFrame(pooled_rows,
                                                                                              columns=columns),
        calibration=calibration_table(y_all, np.concatenate(pooled_p["lstm"])), config=config, rules=rules,
        data={"bars_first": bars.index[0].isoformat(), "bars_last": bars.index[-1].isoformat(),
              "n_bars": int(len(bars)), "fingerprint_sha256": ds.fingerprint})


def _shuffled(ds: Dataset, split: Split, seed: int | None) -> Dataset:
    """``ds`` with the labels of the split's training and validation rows permuted (seed None: ``ds`` itself)."""
    if seed is None:
        return ds
    rows = np.concatenate([split.train, split.val])
    labels = ds.labels.copy()
    labels[rows] = np.random.default_rng(seed).permutation(labels[rows])
    return dataclasses.replace(ds, labels=labels)


def _fit_fold(symbol: str, ds: Dataset, split: Split, tc: TrainConfig,
              progress: ProgressFn | None) -> dict[str, np.ndarray]:
    """P(up) of the fold's test samples from the LSTM, the logistic regression and the majority class."""
    res = fit_split(symbol, ds, split, tc, progress)
    scaled = np.nan_to_num(res.scaler.transform(ds.features))
    fit_rows = np.concatenate([split.train, split.val])  # the logistic regression needs no early stopping
    y_fit = ds.labels[fit_rows].astype(int)
    logit = LogisticRegression(C=1.0, max_iter=2000).fit(scaled[fit_rows], y_fit)
    p_logit = logit.predict_proba(scaled[split.test])[:, 1]
    p_major = np.full(len(split.test), float(np.mean(ds.labels[split.train])))
    return {"lstm": res.p_test, "logistic": p_logit, "majority": p_major}


# --------------------------------------------------------------------------------------------------------------
# files and text


def write_walk_forward_files(result: WalkForwardResult, out_dir: Path | str) -> dict[str, Path]:
    """Write `<SYMBOL>_folds.csv`, `<SYMBOL>_pooled.csv`, `<SYMBOL>_calibration.csv` and `<SYMBOL>_walkforward.json`
    (evidence, configuration, costs) into ``out_dir`` (created). Returns the paths keyed folds/pooled/calibration/json.

    Raises:
        OSError: the folder cannot be written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sym = result.symbol
    paths = {"folds": out / f"{sym}_folds.csv", "pooled": out / f"{sym}_pooled.csv",
             "calibration": out / f"{sym}_calibration.csv", "json": out / f"{sym}_walkforward.json"}
    result.folds.to_csv(paths["folds"], index=False, float_format="%.6f")
    result.pooled.to_csv(paths["pooled"], index=False, float_format="%.6f")
    result.calibration.to_csv(paths["calibration"], index=False, float_format="%.6f")
    cfg = dataclasses.asdict(result.config)
    cfg["train"]["lstm_units"] = list(result.config.train.lstm_units)
    doc = {"evidence": result.evidence(), "config": cfg, "rules": dataclasses.asdict(result.rules)}
    paths["json"].write_text(json.dumps(doc, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if math.isnan(float(o)) else float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _f(x: Any, fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return fmt.format(x)


def format_table(frame: pd.DataFrame) -> str:
    """A folds or pooled table as aligned text (one line per fold and model)."""
    head = (f"{'fold':<7}{'model':<10}{'test window':<25}{'n':>6}{'acc':>7}{'AUC':>7}{'AUC 95% CI':>15}"
            f"{'logloss':>9}{'Brier':>7}{'ECE':>7}{'return':>9}{'Sharpe':>8}{'trades':>7}{'win':>7}")
    lines = [head]
    for _, r in frame.iterrows():
        ci = ("-" if pd.isna(r["roc_auc_low"]) else f"{r['roc_auc_low']:.3f}..{r['roc_auc_high']:.3f}")
        window = f"{str(r['test_first'])[:10]}..{str(r['test_last'])[:10]}"
        lines.append(f"{r['fold']:<7}{r['model']:<10}{window:<25}{_f(r['n'], '{:.0f}'):>6}"
                     f"{_f(r['accuracy'], '{:.3f}'):>7}{_f(r['roc_auc'], '{:.3f}'):>7}{ci:>15}"
                     f"{_f(r['log_loss'], '{:.4f}'):>9}{_f(r['brier'], '{:.4f}'):>7}{_f(r['ece'], '{:.3f}'):>7}"
                     f"{_f(100 * r['return'], '{:+.2f}%'):>9}{_f(r['sharpe'], '{:.2f}'):>8}"
                     f"{_f(r['trades'], '{:.0f}'):>7}{_f(100 * r['win_rate'] if pd.notna(r['win_rate']) else None, '{:.0f}%'):>7}")
    return "\n".join(lines)
