"""The edge gate: an MTF model sends orders only when its walk-forward evidence clears a stated bar, or when an
operator allowed its symbol explicitly (`tradeflow models allow SYMBOL --reason ...`, journaled).

**The bar** (:class:`GateRule`, settings `TRADEFLOW_MTF_GATE_*`), on the pooled walk-forward figures of
:mod:`models.walkforward` (every fold's out-of-sample test samples):
- the lower bound of the LSTM's ROC AUC 95 % interval (moving-block bootstrap) above ``min_auc_low`` (0.5): its
  ranking is better than chance with the uncertainty counted;
- the decision rules' return after costs (IB commission and slippage) above ``min_return`` (0: positive);
- that return above each baseline's in ``baselines`` on the same folds (default: the majority class fed to the
  same rules, and buy-and-hold of the test bars: trading the model must beat not trading it and simply holding).
  The logistic regression on the same 45 features is always reported beside it, and can be added to the bar
  (``logistic``): it says whether the LSTM's complexity earns its keep, a different question from whether the
  model has an edge;
- at least ``min_trades`` round trips (a handful of lucky trades is no evidence).

**Where the evidence lives**: the journal's `model_metrics`, window ``walkforward`` (:data:`EVIDENCE_WINDOW`), for
the version (``<SYMBOL>/<version>``) the evaluation was recorded for: by `tradeflow evaluate mtf` (the champion at
that time) and by the monthly retrain (the challenger, on the bars it was trained on). The verdict is computed
when read, with the rule in force, so changing a threshold takes effect at the next run. A champion without
recorded evidence has not cleared the bar: the gate is closed.

**An allowance** (journal table `model_allowances`, the latest decision per symbol) opens the gate for the
symbol whatever the evidence says, until withdrawn (`tradeflow models allow SYMBOL --revoke --reason ...`).

What a closed gate stops: new entries. `mtf-signal` still decides and journals every run (the decision is
journaled as NO_TRADE, code ``edge_gate``, with what the rules would have done); an exit of a position opened
while the gate was open is still sent, since it only reduces risk.

:func:`gate_status` is the one call for the signal flow, the retrain and any pre-open check. Nothing here imports
Prefect or reads the clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from core.journal import Journal, JournalTx
    from core.settings import Settings
    from models.registry import ModelRegistry

__all__ = ["EVIDENCE_WINDOW", "GateRule", "GateStatus", "GateVerdict", "champion_gates", "edge_gate",
           "evidence_from_metrics", "evidence_metrics", "gate_status"]

EVIDENCE_WINDOW = "walkforward"
"""`model_metrics.eval_window` of the pooled walk-forward evidence."""

_BASELINES = ("logistic", "majority", "buy_hold")


@dataclass(frozen=True)
class GateRule:
    """The bar a model's pooled walk-forward evidence must clear (module docstring).

    Attributes:
        min_auc_low: the AUC interval's lower bound must exceed this (probability scale).
        min_return: the rules' pooled return after costs must exceed this (fraction of the 10,000 USD position).
        baselines: the return must also exceed these baselines' on the same folds (names among 'majority',
            'buy_hold', 'logistic').
        min_trades: at least this many round trips over the pooled test samples.
    """

    min_auc_low: float = 0.5
    min_return: float = 0.0
    baselines: tuple[str, ...] = ("majority", "buy_hold")
    min_trades: int = 10

    def __post_init__(self) -> None:
        unknown = set(self.baselines) - set(_BASELINES)
        if unknown:
            raise ValueError(f"unknown gate baselines {sorted(unknown)}: choose among {list(_BASELINES)}")

    @classmethod
    def from_settings(cls, s: Settings) -> GateRule:
        """TRADEFLOW_MTF_GATE_MIN_AUC_LOW, _MIN_RETURN, _BASELINES, _MIN_TRADES."""
        return cls(s.mtf_gate_min_auc_low, s.mtf_gate_min_return, tuple(s.mtf_gate_baselines),
                   s.mtf_gate_min_trades)

    def describe(self) -> str:
        """The bar in one sentence."""
        return (f"AUC 95 % lower bound > {self.min_auc_low:g}, return after costs > {100 * self.min_return:g} %"
                + (f" and above {', '.join(self.baselines)}" if self.baselines else "")
                + f", >= {self.min_trades} round trips")


@dataclass(frozen=True)
class GateVerdict:
    """Whether evidence clears the bar: ``passed`` and one reason per check that failed (or what passed)."""

    passed: bool
    reason: str


def edge_gate(evidence: dict[str, Any] | None, rule: GateRule = GateRule()) -> GateVerdict:
    """Judge pooled walk-forward evidence (:meth:`models.walkforward.WalkForwardResult.evidence`, or
    :func:`evidence_from_metrics`) against ``rule``.

    Args:
        evidence: {"lstm": {"roc_auc_low", "return", "trades", ...}, "baselines": {name: {"return", ...}}},
            or None when there is none.

    Returns:
        A :class:`GateVerdict`; a missing or NaN figure fails its check (no evidence is no edge).
    """
    if not evidence or not evidence.get("lstm"):
        return GateVerdict(False, "no walk-forward evidence recorded (run `tradeflow evaluate mtf`)")
    m = evidence["lstm"]
    fails: list[str] = []
    low, ret, trades = _num(m.get("roc_auc_low")), _num(m.get("return")), _num(m.get("trades"))
    if not low > rule.min_auc_low:
        fails.append(f"AUC lower bound {_fmt(low, '{:.3f}')} <= {rule.min_auc_low:g}")
    if not ret > rule.min_return:
        fails.append(f"return after costs {_fmt(ret, '{:+.2%}')} <= {rule.min_return:+.2%}")
    for name in rule.baselines:
        b = _num(((evidence.get("baselines") or {}).get(name) or {}).get("return"))
        if not ret > b:
            fails.append(f"return {_fmt(ret, '{:+.2%}')} <= {name} {_fmt(b, '{:+.2%}')}")
    if not trades >= rule.min_trades:
        fails.append(f"{_fmt(trades, '{:.0f}')} round trips < {rule.min_trades}")
    if fails:
        return GateVerdict(False, "walk-forward evidence below the bar: " + "; ".join(fails))
    return GateVerdict(True, f"walk-forward evidence clears the bar (AUC lower bound {low:.3f}, return "
                             f"{ret:+.2%} after costs, {trades:.0f} round trips)")


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def _fmt(x: float, fmt: str) -> str:
    return "n/a" if math.isnan(x) else fmt.format(x)


# --------------------------------------------------------------------------------------------------------------
# the journal's form of the evidence

_LSTM_KEYS = ("accuracy", "roc_auc", "roc_auc_low", "roc_auc_high", "log_loss", "brier", "ece", "n")
_RULE_KEYS = {"return": "sim_return", "sharpe": "sim_sharpe", "trades": "sim_trades", "win_rate": "sim_win_rate"}


def evidence_metrics(evidence: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(values, baselines) for `JournalTx.record_model_metrics` under :data:`EVIDENCE_WINDOW`.

    Names: the LSTM's pooled ``accuracy, roc_auc, roc_auc_low, roc_auc_high, log_loss, brier, ece, n`` (baseline:
    the logistic regression's), ``sim_return, sim_sharpe, sim_trades, sim_win_rate`` (baseline: buy-and-hold's),
    ``sim_return_<baseline>`` for each baseline, and ``folds``. Non-finite values are left out.
    """
    lstm, base = evidence["lstm"], evidence.get("baselines") or {}
    values: dict[str, float] = {}
    baselines: dict[str, float] = {}

    def put(name: str, v: Any, b: Any = None) -> None:
        fv = _num(v)
        if math.isfinite(fv):
            values[name] = fv
            fb = _num(b)
            if math.isfinite(fb):
                baselines[name] = fb

    for k in _LSTM_KEYS:
        put(k, lstm.get(k), (base.get("logistic") or {}).get(k))
    for k, name in _RULE_KEYS.items():
        put(name, lstm.get(k), (base.get("buy_hold") or {}).get(k))
    for b in _BASELINES:
        put(f"sim_return_{b}", (base.get(b) or {}).get("return"))
    put("folds", evidence.get("n_folds"))
    return values, baselines


def evidence_from_metrics(metrics: dict[str, tuple[float | None, float | None]]) -> dict[str, Any] | None:
    """The evidence :func:`edge_gate` reads, rebuilt from `JournalTx.model_metrics_of(version, EVIDENCE_WINDOW)`;
    None when nothing is recorded."""
    if not metrics:
        return None

    def v(name: str) -> float:
        x = metrics.get(name, (None, None))[0]
        return math.nan if x is None else float(x)

    lstm = {k: v(k) for k in _LSTM_KEYS} | {k: v(name) for k, name in _RULE_KEYS.items()}
    return {"lstm": lstm, "baselines": {b: {"return": v(f"sim_return_{b}")} for b in _BASELINES},
            "n_folds": v("folds")}


@dataclass(frozen=True)
class GateStatus:
    """Whether a symbol's champion may send orders now, and why.

    Attributes:
        symbol: the symbol. version: the champion's journal name (``<SYMBOL>/<version>``), or None.
        open: True when entries may be sent.
        source: 'evidence' (the walk-forward evidence decided) or 'operator' (an allowance decided).
        reason: one sentence for the journal, the artifact and a status line.
    """

    symbol: str
    version: str | None
    open: bool
    source: str
    reason: str


def gate_status(tx: JournalTx, symbol: str, version: str | None, rule: GateRule = GateRule()) -> GateStatus:
    """The edge gate of ``symbol``'s champion ``version`` (journal name), from the journal: an operator's
    allowance when there is one in force, else the version's walk-forward evidence judged by ``rule``.

    The call for `mtf-signal`, the retrain and a pre-open check (read-only; any transaction of the journal).
    """
    sym = symbol.upper()
    allowance = tx.model_allowance(sym)
    if allowance and allowance["allowed"]:
        return GateStatus(sym, version, True, "operator",
                          f"allowed by {allowance['who']} at {allowance['decided_at'].isoformat()}: "
                          f"{allowance['reason']}")
    verdict = edge_gate(evidence_from_metrics(tx.model_metrics_of(version, EVIDENCE_WINDOW)) if version else None,
                        rule)
    note = ""
    if allowance and not allowance["allowed"]:
        note = f" (allowance withdrawn by {allowance['who']}: {allowance['reason']})"
    return GateStatus(sym, version, verdict.passed, "evidence",
                      ("edge gate open: " if verdict.passed else "edge gate closed: ") + verdict.reason + note)


def champion_gates(journal: Journal, registry: ModelRegistry, symbols: list[str],
                   rule: GateRule = GateRule()) -> dict[str, GateStatus]:
    """The edge gate of each symbol's current champion (None version when it has none: closed), in one journal
    transaction: what a pre-open check or a status line calls (`tradeflow models list` does).

    Raises:
        models.registry.RegistryError: a damaged champion pointer.
        core.journal.JournalError: the journal cannot be read.
    """
    champions = {sym.upper(): registry.champion(sym) for sym in symbols}  # before: each is a transaction of its own
    out = {}
    with journal.transaction() as tx:
        for sym, champ in champions.items():
            out[sym] = gate_status(tx, sym, f"{champ.symbol}/{champ.version}" if champ else None, rule)
    return out
