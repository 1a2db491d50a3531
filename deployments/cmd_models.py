"""`tradeflow models list | promote SYMBOL VERSION | rollback SYMBOL | allow SYMBOL --reason ...`: the MTF model
registry by hand.

Versions are numbered per symbol (AAPL v0001 and TSLA v0001 are different models), so `promote` takes the symbol
and the version. The registry is in the journal (models/registry.py), so a change made on one host is the champion
on every host. `promote` and `rollback` change the champion only if it is still the one this command read: when
another host or person changed it meanwhile they change nothing and say what it is now (exit code 1). Every
change is also recorded in the journal's `models` table (the new champion 'champion', the one it replaced
'retired'), as the monthly retrain records its own. The signal flow picks the new champion up at its
next run (it loads the champion at the start of each run).

`list` shows each champion's edge gate (`models.gate`): open or closed, and why. `allow SYMBOL --reason ...` lets
the symbol's champion send entries although its walk-forward evidence does not clear the bar (an operator's
explicit decision, journaled in `model_allowances` with who and why); `allow SYMBOL --revoke --reason ...`
withdraws it. Either takes effect at the next `mtf-signal` run.
"""

from __future__ import annotations

import argparse
import math
import sys


def register_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the MTF model versions; promote or roll back a champion",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    ls = cmds.add_parser("list", help="versions per symbol with their data, test metrics and the champion")
    ls.add_argument("--symbols", nargs="+", default=None, help="default: every symbol in the registry")
    pr = cmds.add_parser("promote", help="make VERSION the champion of SYMBOL (the old one can be rolled back)")
    pr.add_argument("symbol")
    pr.add_argument("version", help="e.g. v0003 (see `tradeflow models list`)")
    rb = cmds.add_parser("rollback", help="make the previous champion of SYMBOL the champion again")
    rb.add_argument("symbol")
    al = cmds.add_parser("allow", help="let SYMBOL's champion trade past the edge gate (journaled, with a reason)")
    al.add_argument("symbol")
    al.add_argument("--reason", required=True, help="why (journaled)")
    al.add_argument("--revoke", action="store_true", help="withdraw the allowance: the evidence decides again")
    al.add_argument("--who", default=None, help="the operator (default: the login name)")
    p.set_defaults(handler=_handle)


def _num(x, fmt: str = "{:.3f}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _gate_lines(journal_path, registry, symbols: list[str]) -> dict[str, str]:
    from core.journal import Journal
    from core.settings import get_settings
    from models.gate import GateRule, champion_gates

    gates = champion_gates(Journal(journal_path), registry, symbols, GateRule.from_settings(get_settings()))
    return {sym: f"  edge gate: {'OPEN' if st.open else 'CLOSED'} ({st.source}): {st.reason}"
            for sym, st in gates.items()}


def _allow(args: argparse.Namespace, journal_path, registry) -> int:
    import datetime as dt

    from core.controls import operator
    from core.journal import Journal

    sym = args.symbol.upper()
    reason = args.reason.strip()
    if not reason:
        print("tradeflow models allow: --reason must say why", file=sys.stderr)
        return 2
    champ = registry.champion(sym)
    who = args.who or operator()
    with Journal(journal_path).transaction() as tx:
        tx.record_model_allowance(sym, not args.revoke, who, reason, dt.datetime.now(dt.timezone.utc),
                                  version=f"{sym}/{champ.version}" if champ else None)
    what = "withdrawn: the walk-forward evidence decides again" if args.revoke else (
        "allowed: its champion sends entries whatever the walk-forward evidence says")
    print(f"{sym}: {what} (by {who}: {reason}); recorded in the journal")
    return 0


def _list(registry, symbols: list[str], gates: dict[str, str] | None = None) -> int:
    if not symbols:
        print("no models in the registry (train some: `tradeflow train --symbols AAPL TSLA`)")
        return 0
    for sym in symbols:
        champ = registry.champion(sym)
        history = registry.champion_history(sym)
        print(f"{sym}: champion {champ.version if champ else 'none'}"
              + (f"; rollback to {history[-1]}" if history else ""))
        if gates and sym in gates:
            print(gates[sym])
        print(f"  {'':2}{'version':<8}{'created':<18}{'bars':<24}{'test AUC':>9}{'base AUC':>9}"
              f"{'log loss':>9}{'base LL':>8}  retrain window")
        for v in registry.list_versions(sym):
            m = v.metadata
            test = (m.get("metrics") or {}).get("test") or {}
            model, base = test.get("model", {}), test.get("baseline", {})
            data = m.get("data") or {}
            bars = f"{data.get('bars_first', '')[:10]}..{data.get('bars_last', '')[:10]}" if data else "-"
            mark = "* " if champ and v.version == champ.version else "  "
            print(f"  {mark}{v.version:<8}{str(m.get('created_at', ''))[:16]:<18}{bars:<24}"
                  f"{_num(model.get('roc_auc')):>9}{_num(base.get('roc_auc')):>9}{_num(model.get('log_loss')):>9}"
                  f"{_num(base.get('log_loss')):>8}  {(m.get('retrain') or {}).get('window', '')}")
    print("(* champion; test = the version's own held-out window; OOS comparisons of retrains: "
          "`tradeflow sql \"SELECT * FROM model_metrics WHERE eval_window LIKE 'oos:%'\"`)")
    return 0


def _handle(args: argparse.Namespace) -> int:
    from core.journal import Journal
    from core.settings import get_settings
    from models.records import record_champion_change
    from models.registry import ModelRegistry, RegistryError

    s = get_settings()
    registry = ModelRegistry(s.models_dir, Journal(s.journal_path))
    if args.models_command == "list":
        syms = [x.upper() for x in (args.symbols or registry.symbols())]
        return _list(registry, syms, _gate_lines(s.journal_path, registry, syms) if syms else None)
    if args.models_command == "allow":
        return _allow(args, s.journal_path, registry)
    sym = args.symbol.upper()
    try:
        before = registry.champion(sym)
        expected = before.version if before else None
        if args.models_command == "promote":
            after = registry.promote(sym, args.version, expected=expected)
        else:
            after = registry.rollback(sym, expected=expected)
    except RegistryError as exc:
        print(f"tradeflow models {args.models_command}: {exc}", file=sys.stderr)
        return 1
    with Journal(s.journal_path).transaction() as tx:
        record_champion_change(tx, after, before)
    print(f"{sym}: champion {after.version} (was {before.version if before else 'none'}); recorded in the journal")
    return 0
