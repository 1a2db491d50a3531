"""`tradeflow evaluate mtf --symbols AAPL TSLA`: walk-forward evaluation of the MTF model, and the edge gate.

Reads ``<data_dir>/1h/<SYMBOL>.csv`` (the whole hourly history), runs `models.walkforward.run_walk_forward`
(expanding window, ``--folds`` test blocks after the first 40 % of the samples, purged and embargoed by the label
horizon; the LSTM refit on each fold with at most ``--epochs`` epochs; logistic regression, majority class and
buy-and-hold on the same folds; the rules after IB commission and slippage), prints the per-fold and pooled
tables, the pooled calibration table and the edge gate's verdict (`models.gate`, settings
`TRADEFLOW_MTF_GATE_*`), and writes the tables to ``--out`` (default ``<state_dir>/evaluations/mtf_<date>``):
``<SYMBOL>_folds.csv``, ``<SYMBOL>_pooled.csv``, ``<SYMBOL>_calibration.csv``, ``<SYMBOL>_walkforward.json``.

When the symbol has a champion in the registry, the evidence is recorded in the journal for it (`model_metrics`,
window ``walkforward``): from then on `mtf-signal` lets that champion send entries only when the evidence clears
the bar (or an operator allowed the symbol: `tradeflow models allow`). ``--no-record`` only prints and writes.

Exit codes: 0 done (whatever the gate decided); 1 a symbol could not be evaluated (the others were); 2 bad
arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["register_evaluate"]


def register_evaluate(sub: argparse._SubParsersAction) -> None:
    """Add `evaluate` (positional model: `mtf`) to the `tradeflow` subcommands."""
    p = sub.add_parser("evaluate", help="walk-forward evaluation of the MTF model with baselines; the edge gate",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=["mtf"], help="mtf: the multi-timeframe LSTM")
    p.add_argument("--symbols", nargs="+", default=None, help="symbols (default: settings mtf_symbols)")
    p.add_argument("--folds", type=int, default=4, help="test folds (default 4)")
    p.add_argument("--epochs", type=int, default=8, help="maximum epochs per refit (default 8; early stopping)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC interval")
    p.add_argument("--data-dir", type=Path, default=None, help="bars folder (default: settings data_dir)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <state_dir>/evaluations/...)")
    p.add_argument("--as-of", default=None, help="evaluation time for the journal, ISO 8601 with offset "
                   "(default: now, UTC)")
    p.add_argument("--no-record", action="store_true", help="do not record the evidence in the journal")
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    from core.settings import get_settings

    s = get_settings()
    if args.folds < 1 or args.epochs < 1 or args.bootstrap < 0:
        print("tradeflow evaluate: --folds and --epochs must be >= 1, --bootstrap >= 0", file=sys.stderr)
        return 2
    as_of = datetime.fromisoformat(args.as_of) if args.as_of else datetime.now(timezone.utc)
    if as_of.tzinfo is None:
        print("tradeflow evaluate: --as-of needs a UTC offset", file=sys.stderr)
        return 2
    symbols = [x.upper() for x in (args.symbols or s.mtf_symbols)]
    data_dir = args.data_dir or s.data_dir
    out = args.out or s.state_dir / "evaluations" / f"mtf_{as_of:%Y%m%dT%H%M}"

    from core.bars import load_hourly_bars
    from core.journal import Journal
    from models.evaluate import RuleParams
    from models.gate import GateRule, edge_gate, gate_status
    from models.mtf import TrainConfig
    from models.records import journal_id, record_walk_forward
    from models.registry import ModelRegistry
    from models.walkforward import WalkForwardConfig, format_table, run_walk_forward, write_walk_forward_files

    train = dataclasses.replace(TrainConfig(lookback=s.mtf_lookback, horizon=s.mtf_horizon), epochs=args.epochs,
                                patience=3)
    cfg = WalkForwardConfig(n_folds=args.folds, n_boot=args.bootstrap, train=train)
    rules, rule = RuleParams.from_settings(s), GateRule.from_settings(s)
    journal = Journal(s.journal_path)
    registry = ModelRegistry(s.models_dir, journal)
    print(f"walk-forward: expanding window, {cfg.n_folds} test folds after the first {cfg.min_train_frac:.0%} of "
          f"the samples, purge {train.horizon} bars (H) + embargo {cfg.embargo or train.horizon} bars; LSTM "
          f"L={train.lookback} H={train.horizon}, <= {train.epochs} epochs a refit; costs: IB commission, "
          f"{1e4 * rules.slippage:g} bp slippage a fill; gate: {rule.describe()}", flush=True)
    failed = 0
    verdicts = []
    for sym in symbols:
        t0 = time.perf_counter()
        try:
            bars = load_hourly_bars(data_dir, sym)
            result = run_walk_forward(sym, bars, cfg, rules,
                                      fold_progress=lambda k, n, sym=sym: print(f"  {sym} fold {k}/{n} …",
                                                                                flush=True))
        except (FileNotFoundError, ValueError) as exc:
            print(f"{sym}: not evaluated: {exc}", file=sys.stderr)
            failed += 1
            continue
        paths = write_walk_forward_files(result, out)
        verdict = edge_gate(result.evidence(), rule)
        print(f"\n=== {sym}: {result.data['n_bars']} hourly bars {result.data['bars_first'][:10]} .. "
              f"{result.data['bars_last'][:10]} ({time.perf_counter() - t0:.0f} s)")
        print("per fold:")
        print(format_table(result.folds))
        print("pooled over the folds' test samples:")
        print(format_table(result.pooled))
        print("calibration of the LSTM (pooled): " + "; ".join(
            f"{r.bin}: n {r.n}, P {r.mean_p:.3f}, up {r.share_up:.3f}" for r in result.calibration.itertuples()))
        print(f"edge gate on this evidence: {'PASS' if verdict.passed else 'FAIL'}: {verdict.reason}")
        champ = registry.champion(sym)
        if champ is not None and not args.no_record:
            with journal.transaction() as tx:
                record_walk_forward(tx, champ, result.evidence(), as_of)
                status = gate_status(tx, sym, journal_id(champ), rule)
            print(f"journal: recorded as the evidence of {journal_id(champ)}; mtf-signal: "
                  f"{'sends entries' if status.open else 'sends no entry'} ({status.reason})")
        elif champ is None:
            print(f"no champion of {sym} in the registry: nothing recorded (train one, then evaluate again)")
        print("wrote: " + ", ".join(str(p) for p in paths.values()))
        verdicts.append(f"{sym} {'PASS' if verdict.passed else 'FAIL'}")
    print("\nedge gate: " + ", ".join(verdicts))
    return 1 if failed else 0
