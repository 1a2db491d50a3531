"""Evaluation of an MTF model on a held-out window: classification metrics and the decision rules simulated.

Classification (:func:`classification_metrics`): accuracy, precision, recall (class "up", threshold 0.5), ROC AUC
and log loss of P(up), next to the majority-class baseline: the class that was more frequent in the TRAINING
labels, predicted for every test sample (its log loss uses the training base rate as a constant probability).

Decision rules (:func:`simulate_rules`, strategies.md "Decisions, each 5-minute run"), on hourly bars, with the
live flow's own rule function (:func:`core.strategies.mtf.decide`). The live system decides every 5 minutes;
here a decision is taken once per base bar, at its close, with that bar's P(up), filling at that close:
- entry: flat and P(up) >= 0.52: buy floor(10,000 USD / close) shares;
- exit: long and (held >= 24 runs, or held >= 2 runs and P(up) < 0.50).
Runs are mapped to bars by elapsed session time: one hourly bar = 12 five-minute runs, so the 24-run (2-hour)
limit is reached at the close of the 2nd bar after entry, and the 2-run minimum hold is met from the 1st bar
after entry (one bar = 12 runs >= 2): from then on a bar with P(up) < 0.50 exits. A 30-minute bar (IB's 09:30 bar,
yfinance's 15:30 bar) counts as 12 runs too (a simplification: bar end times are not in the data). Runs only
happen in the session, so a position open at the close is carried overnight and its count continues at the
next session (as the live rules would do).
- daily loss limit: when the day's P&L (realized + unrealized, marked at bar closes, from the previous session's
  last close) is at or below -2,000 USD, no new entries for the rest of that session (it latches, as live);
  exits still run.
- after an exit no entry on the same bar (one decision per run: a run either manages the position or enters).
- costs (`core.costs`, as in the EMA backtest): IB fixed commission per order, 0.005 USD a share, min 1.00 USD,
  max 1 % of the trade value, and adverse slippage on each fill (``slippage``, default 5 bp, the setting
  `backtest_slippage_fraction`). No margin interest: a 10,000 USD position is not modelled as borrowed (the
  account's cash is not simulated). A position open at the end of the window is closed at the last close.
Reported: return = total P&L / 10,000 USD (the position size, the capital the rule puts at risk), win rate = share
of round trips with P&L > 0 after costs, trades = round trips, Sharpe = mean / std (ddof=1) of the daily P&L
(in units of the 10,000 USD), times sqrt(252), over every session of the window (flat days count as 0).
Buy and hold: floor(10,000 / first close) shares bought at the first bar's close, sold at the last, same costs;
its Sharpe from the daily marks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, log_loss, precision_score, recall_score, roc_auc_score

from core.costs import ib_fixed_commission
from core.strategies.mtf import MtfRules, decide, loss_limit_reached

SOURCE_FIGURES = {
    "AAPL": {"accuracy": 0.626, "return": 0.2523, "win_rate": 0.614, "trades": 57, "sharpe": 4.30},
    "TSLA": {"accuracy": 0.576, "return": 0.6947, "win_rate": 0.582, "trades": 55, "sharpe": 4.96},
}
"""What the source system reported out of sample (reference/strategies.md); its test window and rules are unknown."""


def classification_metrics(y_true: np.ndarray, p_up: np.ndarray, y_train: np.ndarray) -> dict[str, dict[str, float]]:
    """Metrics of P(up) against labels, and of the majority-class baseline.

    Args:
        y_true: (n,) 0/1 labels of the evaluated window. p_up: (n,) P(up). y_train: training labels (baseline).

    Returns:
        {"model": {accuracy, precision, recall, roc_auc, log_loss, n, up_rate},
         "baseline": {same keys; precision/recall of always predicting the majority class}}.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.clip(np.asarray(p_up, dtype="float64"), 1e-7, 1 - 1e-7)
    pred = (p >= 0.5).astype(int)
    base_rate = float(np.mean(y_train))
    majority = int(base_rate >= 0.5)
    bpred = np.full_like(y, majority)
    bprob = np.full(len(y), min(max(base_rate, 1e-7), 1 - 1e-7))
    two = len(np.unique(y)) == 2

    def m(pr: np.ndarray, prob: np.ndarray) -> dict[str, float]:
        return {
            "accuracy": float(accuracy_score(y, pr)),
            "precision": float(precision_score(y, pr, zero_division=0)),
            "recall": float(recall_score(y, pr, zero_division=0)),
            "roc_auc": float(roc_auc_score(y, prob)) if two else float("nan"),
            "log_loss": float(log_loss(y, prob, labels=[0, 1])),
            "n": int(len(y)),
            "up_rate": float(np.mean(y)),
        }

    return {"model": m(pred, p), "baseline": m(bpred, bprob) | {"majority_class": majority}}


@dataclass(frozen=True)
class RuleParams(MtfRules):
    """The decision rules (:class:`core.strategies.mtf.MtfRules`) plus what a simulation on hourly bars adds:
    5-minute runs per bar, IB fixed commission (USD a share, minimum USD an order, maximum fraction of the trade
    value) and adverse slippage (fraction of the price, per fill)."""

    runs_per_bar: int = 12  # hourly bars, 5-minute runs
    commission_per_share: float = 0.005
    commission_min: float = 1.0
    commission_max_fraction: float = 0.01
    slippage: float = 0.0005

    @classmethod
    def from_settings(cls, s) -> "RuleParams":
        return cls(**asdict(MtfRules.from_settings(s)), commission_per_share=s.commission_per_share,
                   commission_min=s.commission_min, commission_max_fraction=s.commission_max_fraction,
                   slippage=s.backtest_slippage_fraction)


def commission(shares: int, price: float, r: RuleParams) -> float:
    """IB fixed pricing for one order, USD (`core.costs.ib_fixed_commission`; 0 for no shares)."""
    if shares <= 0:
        return 0.0
    return ib_fixed_commission(shares, price, per_share=r.commission_per_share, minimum=r.commission_min,
                               max_fraction=r.commission_max_fraction)


@dataclass
class SimResult:
    """Outcome of a simulation (fractions, not percent)."""

    total_return: float
    win_rate: float
    trades: int
    sharpe: float
    pnl_usd: float
    sessions: int
    exposure: float  # share of bars with a position

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _sharpe(daily: np.ndarray) -> float:
    if len(daily) < 2 or np.std(daily, ddof=1) == 0:
        return float("nan")
    return float(np.mean(daily) / np.std(daily, ddof=1) * math.sqrt(252))


def simulate_rules(index: pd.DatetimeIndex, close: np.ndarray, p_up: np.ndarray,
                   r: RuleParams = RuleParams()) -> tuple[SimResult, list[dict]]:
    """Simulate the decision rules on consecutive hourly bars (see the module docstring).

    Args:
        index: (n,) bar start times (tz-aware); close: (n,) USD; p_up: (n,) P(up) known at each bar's close.

    Returns:
        (summary, trades): trades are dicts entry_time, exit_time, shares, entry, exit, pnl (USD after costs), reason.
    """
    close = np.asarray(close, dtype="float64")
    p = np.asarray(p_up, dtype="float64")
    day = np.asarray(index.tz_convert("America/New_York").normalize().asi8)
    n = len(close)
    shares = 0
    entry_px = 0.0
    runs = 0
    cash = 0.0  # realized P&L, USD
    trades: list[dict] = []
    equity = np.zeros(n)
    limit_hit = False
    day_start_equity = 0.0
    held_bars = 0
    for i in range(n):
        if i == 0 or day[i] != day[i - 1]:
            day_start_equity = equity[i - 1] if i > 0 else 0.0
            limit_hit = False
        px = close[i]
        if shares > 0:
            runs += r.runs_per_bar
            held_bars += 1
        equity[i] = cash + shares * (px - entry_px)
        limit_hit = loss_limit_reached(equity[i] - day_start_equity, r.daily_loss_limit_usd, limit_hit)
        d = decide(shares, runs if shares else None, float(p[i]), px * (1 + r.slippage), limit_hit, r)
        if d.action == "SELL":
            fill = px * (1 - r.slippage)
            pnl = shares * (fill - entry_px) - commission(shares, fill, r)
            cash += pnl
            trades[-1].update(exit_time=index[i], exit=fill, pnl=trades[-1]["pnl"] + pnl,
                              reason="max hold" if d.code == "max_hold" else "p<exit")
            shares = 0
            equity[i] = cash
        elif d.action == "BUY":
            fill = px * (1 + r.slippage)
            fee = commission(d.quantity, fill, r)
            cash -= fee
            shares, entry_px, runs = d.quantity, fill, 0
            trades.append({"entry_time": index[i], "shares": d.quantity, "entry": fill, "pnl": -fee})
            equity[i] = cash
    if shares > 0:  # close at the end of the window
        fill = close[-1] * (1 - r.slippage)
        pnl = shares * (fill - entry_px) - commission(shares, fill, r)
        cash += pnl
        trades[-1].update(exit_time=index[-1], exit=fill, pnl=trades[-1]["pnl"] + pnl, reason="end of window")
        equity[-1] = cash
    daily_end = pd.Series(equity).groupby(day).last().to_numpy()
    daily_pnl = np.diff(np.r_[0.0, daily_end]) / r.position_usd
    wins = [t["pnl"] > 0 for t in trades]
    return (
        SimResult(total_return=cash / r.position_usd, win_rate=float(np.mean(wins)) if wins else float("nan"),
                  trades=len(trades), sharpe=_sharpe(daily_pnl), pnl_usd=cash, sessions=len(daily_end),
                  exposure=held_bars / n if n else 0.0),
        trades,
    )


def buy_and_hold(index: pd.DatetimeIndex, close: np.ndarray, r: RuleParams = RuleParams()) -> SimResult:
    """Buy floor(10,000 / first fill) shares at the first close, hold to the last close (same costs: commission
    and slippage on both fills)."""
    close = np.asarray(close, dtype="float64")
    buy, sell = close[0] * (1 + r.slippage), close[-1] * (1 - r.slippage)
    q = int(r.position_usd // buy)
    fees = commission(q, buy, r) + commission(q, sell, r)
    day = np.asarray(index.tz_convert("America/New_York").normalize().asi8)
    marks = q * (close - buy)
    marks[-1] = q * (sell - buy) - fees
    daily_end = pd.Series(marks).groupby(day).last().to_numpy()
    daily = np.diff(np.r_[0.0, daily_end]) / r.position_usd
    pnl = float(marks[-1])
    return SimResult(total_return=pnl / r.position_usd, win_rate=float(pnl > 0), trades=1, sharpe=_sharpe(daily),
                     pnl_usd=pnl, sessions=len(daily_end), exposure=1.0)


# --------------------------------------------------------------------------------------------------------------
# champion against challenger on the same out-of-sample window (the monthly retrain)


def evaluate_window(predictor, bars: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp, horizon: int,
                    r: RuleParams = RuleParams()) -> dict:
    """A model's metrics on the bars that start in ``[start, end)``, through the numpy predictor the live flow uses.

    Features are computed on the bars before ``end`` (nothing after the window is read). Labels: close H bars
    ahead above the close now (:func:`models.mtf.make_labels`); the window's last H bars have none and only
    count in the rule simulation. The majority-class baseline takes its class and base rate from the labels
    before ``start``, so champion and challenger share one baseline.

    Args:
        predictor: a :class:`models.inference.NumpyLSTMModel` (its ``lookback`` L).
        bars: hourly bars reaching back far enough for the feature warm-up and L rows before ``start``.
        start, end: the window (aware). horizon: H, base bars.

    Returns:
        {"classification": classification_metrics(...), "rules": SimResult dict, "buy_hold": SimResult dict,
         "first": ISO, "last": ISO, "bars": int, "curve": {"y": labels 0/1, "p_up": P(up)} of the labelled
         bars (for the ROC and calibration chart)}.

    Raises:
        ValueError: no bar in the window, or window rows still in the feature warm-up (too little history).
    """
    from core.features import compute_features
    from models.mtf import make_labels

    bars = bars[bars.index < end]
    feats = compute_features(bars)
    x = feats.to_numpy()
    y = make_labels(bars["close"].to_numpy(dtype="float64"), horizon)
    rows = np.flatnonzero(np.asarray(bars.index >= start))
    if len(rows) == 0:
        raise ValueError(f"no bar between {start} and {end}")
    lookback = predictor.lookback
    if rows[0] < lookback - 1:
        raise ValueError(f"the window starts {rows[0]} bars into the data; the model reads {lookback}")
    p = predictor.predict_windows(np.stack([x[i - lookback + 1 : i + 1] for i in rows]))
    labelled = ~np.isnan(y[rows])
    before = y[: rows[0]]
    reference = before[~np.isnan(before)]
    idx, close = bars.index[rows], bars["close"].to_numpy(dtype="float64")[rows]
    sim, _ = simulate_rules(idx, close, p, r)
    return {
        "classification": classification_metrics(y[rows][labelled], p[labelled],
                                                 reference if len(reference) else y[rows][labelled]),
        "rules": sim.as_dict(),
        "buy_hold": buy_and_hold(idx, close, r).as_dict(),
        "first": idx[0].isoformat(),
        "last": idx[-1].isoformat(),
        "bars": int(len(rows)),
        "curve": {"y": y[rows][labelled].astype(int).tolist(), "p_up": p[labelled].astype(float).tolist()},
    }


@dataclass(frozen=True)
class PromotionRule:
    """When a challenger replaces the champion (both evaluated on the same out-of-sample window).

    Promote when the symbol has no champion, or when the champion cannot be evaluated (its files are damaged:
    it could not trade either), or when all of:
    - the window has at least ``min_samples`` labelled samples;
    - challenger ROC AUC > champion ROC AUC + ``min_auc_gain`` (ranking: what the thresholds act on);
    - challenger log loss <= champion log loss + ``max_log_loss_increase`` (its probabilities are not worse
      calibrated by more than that; P(up) is compared with fixed thresholds, so calibration matters).
    Otherwise the champion stays. A tie keeps the champion.
    """

    min_auc_gain: float = 0.0
    max_log_loss_increase: float = 0.01
    min_samples: int = 50


def promotion_decision(champion: dict | None, challenger: dict, rule: PromotionRule = PromotionRule(),
                       champion_error: str | None = None) -> tuple[bool, str]:
    """(promote?, reason) from the two models' ``classification_metrics(...)["model"]`` blocks.

    Args:
        champion: the champion's block, or None when the symbol has no champion.
        challenger: the challenger's block.
        champion_error: why the champion could not be evaluated (then ``champion`` is ignored).
    """
    if champion_error:
        return True, f"the champion could not be evaluated ({champion_error})"
    if champion is None:
        return True, "no champion"
    n = int(challenger.get("n", 0))
    if n < rule.min_samples:
        return False, f"{n} labelled samples in the window < {rule.min_samples}: too few to judge"
    auc_c, auc_k = challenger["roc_auc"], champion["roc_auc"]
    ll_c, ll_k = challenger["log_loss"], champion["log_loss"]
    if math.isnan(auc_c):
        return False, "the challenger's ROC AUC is undefined on the window (one class only)"
    auc_ok = math.isnan(auc_k) or auc_c > auc_k + rule.min_auc_gain
    ll_ok = ll_c <= ll_k + rule.max_log_loss_increase
    text = (f"ROC AUC {auc_c:.4f} vs {auc_k:.4f} (needs > champion + {rule.min_auc_gain:g}), log loss {ll_c:.4f} "
            f"vs {ll_k:.4f} (needs <= champion + {rule.max_log_loss_increase:g})")
    return (auc_ok and ll_ok), ("challenger better: " if auc_ok and ll_ok else "champion stays: ") + text
