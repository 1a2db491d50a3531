"""`tradeflow train --symbols AAPL TSLA`: train, evaluate and register the MTF LSTM per symbol.

Reads ``<data_dir>/1h/<SYMBOL>.csv``, prints progress per epoch and one table per symbol (classification metrics
vs the majority-class baseline on validation and test; the decision rules vs buy and hold vs the source system's
reported figures on the test window), registers each model in the journal's model registry (cached on this host under
``settings.models_dir``: models/registry.py) and makes it champion when the symbol has none, and records each version and its validation/test metrics in the journal (tables
`models` and `model_metrics`, version named `<SYMBOL>/<version>`: see models/records.py). A symbol without usable
hourly bars (no file, a malformed one) is skipped with one line saying why, before TensorFlow loads; the others
train. Exit code 0 when every symbol trained, 1 when one was skipped or failed (the others still run).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the MTF LSTM per symbol, register it (champion if none)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--symbols", nargs="+", default=None, help="symbols (default: settings mtf_symbols)")
    p.add_argument("--data-dir", type=Path, default=None, help="bars folder (default: settings data_dir)")
    p.add_argument("--models-dir", type=Path, default=None, help="the registry's cache folder on this host (default: settings models_dir; the versions are in the journal)")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (early stopping on validation)")
    p.add_argument("--as-of", default=None, help="registration time, ISO 8601 with offset (default: now, UTC)")
    p.add_argument("--no-promote", action="store_true", help="never make the new version champion")
    p.set_defaults(handler=_handle)


def _pct(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:+.{digits}f} %" if digits == 2 else f"{100 * x:.{digits}f} %"


def _num(x: float | None, fmt: str = "{:.3f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return fmt.format(x)


def format_report(symbol: str, metrics: dict, meta: dict) -> str:
    """The per-symbol tables as text."""
    lines = []
    sp = meta["splits"]
    lines.append(f"\n=== {symbol}  (L={meta['lookback']}, H={meta['horizon']}, epochs run {meta['epochs_run']})")
    for name in ("train", "val", "test"):
        s = sp[name]
        lines.append(f"  {name:<5} {s['first'][:16]} .. {s['last'][:16]}  {s['samples']:>5} samples")
    lines.append(f"  gap between splits: {sp['gap_bars']} bars; data fingerprint {meta['data']['fingerprint_sha256'][:16]}")
    lines.append("")
    lines.append(f"  {'classification':<16}{'val model':>11}{'val base':>10}{'test model':>12}{'test base':>11}")
    v, t = metrics["val"], metrics["test"]
    for key, label in (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"),
                       ("roc_auc", "ROC AUC"), ("log_loss", "log loss"), ("up_rate", "share up")):
        f = (lambda x: _pct(x)) if key in ("accuracy", "precision", "recall", "up_rate") else _num
        lines.append(f"  {label:<16}{f(v['model'][key]):>11}{f(v['baseline'][key]):>10}"
                     f"{f(t['model'][key]):>12}{f(t['baseline'][key]):>11}")
    lines.append(f"  (baseline: always '{'up' if t['baseline'].get('majority_class') else 'down'}', the training "
                 f"majority class)")
    lines.append("")
    r, b, s = metrics["rules_test"], metrics["buy_hold_test"], metrics.get("source") or {}
    lines.append(f"  {'test window':<16}{'rules':>10}{'buy&hold':>10}{'source':>10}")
    lines.append(f"  {'accuracy':<16}{_pct(t['model']['accuracy']):>10}{'':>10}{_pct(s.get('accuracy')):>10}")
    lines.append(f"  {'return':<16}{_pct(r['total_return'], 2):>10}{_pct(b['total_return'], 2):>10}"
                 f"{_pct(s.get('return'), 2):>10}")
    lines.append(f"  {'win rate':<16}{_pct(r['win_rate']):>10}{'':>10}{_pct(s.get('win_rate')):>10}")
    lines.append(f"  {'trades':<16}{r['trades']:>10}{b['trades']:>10}{_num(s.get('trades'), '{:d}'):>10}")
    lines.append(f"  {'Sharpe':<16}{_num(r['sharpe'], '{:.2f}'):>10}{_num(b['sharpe'], '{:.2f}'):>10}"
                 f"{_num(s.get('sharpe'), '{:.2f}'):>10}")
    lines.append(f"  {'exposure':<16}{_pct(r['exposure']):>10}{_pct(1.0):>10}")
    lines.append(f"  (return = P&L / 10,000 USD after IB commissions and slippage; {r['sessions']} sessions; the "
                 "source's test window and rules are unknown)")
    return "\n".join(lines)


def _handle(args: argparse.Namespace) -> int:
    from core.settings import get_settings

    s = get_settings()
    symbols = [x.upper() for x in (args.symbols or s.mtf_symbols)]
    data_dir = args.data_dir or s.data_dir
    models_dir = args.models_dir or s.models_dir
    as_of = datetime.fromisoformat(args.as_of) if args.as_of else datetime.now(timezone.utc)
    if as_of.tzinfo is None:
        print("tradeflow train: --as-of needs a UTC offset", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    from core.bars import BarsError, load_hourly_bars

    usable: dict[str, object] = {}
    failed = 0
    for sym in symbols:  # every symbol's bars first: one without any is skipped, saying why, before TensorFlow
        try:
            usable[sym] = load_hourly_bars(data_dir, sym)
        except (BarsError, OSError) as exc:
            print(f"{sym}: skipped: no usable hourly bars ({exc})", file=sys.stderr, flush=True)
            failed += 1
    if not usable:
        print("tradeflow train: no symbol has usable hourly bars: nothing trained", file=sys.stderr)
        return 1
    print("loading TensorFlow/Keras …", flush=True)
    from core.journal import Journal
    from models.evaluate import RuleParams
    from models.mtf import TrainConfig
    from models.pipeline import train_and_register
    from models.records import journal_id, record_training_metrics, record_version
    from models.registry import ModelRegistry

    import keras  # noqa: F401  (pay the import once, visibly)

    print(f"  ready in {time.perf_counter() - t0:.1f} s", flush=True)
    cfg = TrainConfig(lookback=s.mtf_lookback, horizon=s.mtf_horizon)
    if args.epochs:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    rules = RuleParams.from_settings(s)
    journal = Journal(s.journal_path)
    registry = ModelRegistry(models_dir, journal)

    def progress(sym: str, epoch: int, total: int, logs: dict) -> None:
        print(f"  {sym} epoch {epoch:>2}/{total}  loss {logs.get('loss', float('nan')):.4f}  "
              f"val_loss {logs.get('val_loss', float('nan')):.4f}", flush=True)

    for sym, bars in usable.items():
        ts = time.perf_counter()
        print(f"\n{sym}: {len(bars)} hourly bars {bars.index[0]:%Y-%m-%d} .. {bars.index[-1]:%Y-%m-%d}; training",
              flush=True)
        try:
            out = train_and_register(sym, bars, registry, as_of, cfg, rules, progress,
                                     promote_if_none=not args.no_promote)
        except ValueError as exc:
            print(f"{sym}: training failed: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(format_report(sym, out.metrics, out.version.metadata))
        with journal.transaction() as tx:
            record_version(tx, out.version, "champion" if out.became_champion else "challenger")
            record_training_metrics(tx, out.version, as_of)
        print(f"  journal: models and model_metrics of {journal_id(out.version)}")
        champ = registry.champion(sym)
        print(f"  registered {sym} {out.version.version} in the journal (cached at {out.version.path})"
              f"{' -> champion (none before)' if out.became_champion else ''}; "
              f"champion: {champ.version if champ else 'none'}; {time.perf_counter() - ts:.1f} s")
    print("\nedge gate: a new champion sends no MTF entry until its walk-forward evidence clears the bar "
          "(`tradeflow evaluate mtf`) or an operator allows the symbol (`tradeflow models allow SYMBOL --reason ...`)")
    print(f"total wall time {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0
