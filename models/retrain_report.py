"""The monthly retrain's report (`flows/retrain.py`): each symbol's result as plain values, the artifact's
table and markdown (the comparison, the walk-forward tables, the edge gate). No Prefect, no clock."""

from __future__ import annotations

import math
from typing import Any

from core.bar_store import StoreUpdate
from models.retrain import RetrainOutcome


def retrain_result(o: RetrainOutcome, update: StoreUpdate) -> dict[str, Any]:
    """One symbol's line of the run's result and flow event details (plain JSON values): versions, decision and
    reason, both evaluations on the window, the edge gate, the walk-forward evidence and what the bar store did."""
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


def retrain_row(r: dict[str, Any]) -> dict[str, Any]:
    """One symbol's row of the artifact's table (formatted strings)."""
    ch, ck = r["challenger_oos"] or {}, r["champion_oos"] or {}
    return {"symbol": r["symbol"], "challenger": r["challenger"], "champion": r["champion"] or "-",
            "challenger ROC AUC": _fmt(ch.get("roc_auc")), "champion ROC AUC": _fmt(ck.get("roc_auc")),
            "challenger log loss": _fmt(ch.get("log_loss")), "champion log loss": _fmt(ck.get("log_loss")),
            "baseline log loss": _fmt(r["baseline_oos"].get("log_loss")), "promoted": r["promoted"],
            "reason": r["reason"]}


def retrain_markdown(label: str, results: list[dict], failures: list[str]) -> str:
    """The run's artifact: the comparison table, each challenger's walk-forward tables and gate, the failures."""
    lines = [f"### retrain, evaluation window {label}", "",
             "| symbol | challenger | champion | AUC chall. | AUC champ. | log loss chall. | log loss champ. | "
             "promoted | reason |", "|---|---|---|---|---|---|---|---|---|"]
    for r in map(retrain_row, results):
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
