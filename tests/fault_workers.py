"""Runs one flow as a real Prefect flow run in this (child) process, for the fault tests: `python -m
tests.fault_workers FLOW AS_OF`. The environment says where the exchange (IBKR_PORT), the state dir
(TRADEFLOW_STATE_DIR) and the Prefect API (PREFECT_API_URL) are. Prints one JSON line: the final state's type,
name and message, and the flow's result when it completed; exits 0 whatever the flow did (the test judges)."""

from __future__ import annotations

import importlib
import json
import sys
from datetime import datetime

FLOWS = {
    "equity-snapshot": "flows.equity_snapshot:equity_snapshot",
    "ema-entry": "flows.ema_entry:ema_entry",
    "ema-update": "flows.ema_update:ema_update",
    "reconciliation": "flows.reconciliation:reconciliation",
    "mtf-signal": "flows.mtf_signal:mtf_signal",
}


def flow_of(name: str):
    """The flow object of deployment `name` (a key of FLOWS)."""
    module, attr = FLOWS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def main(argv: list[str]) -> int:
    name, as_of = argv[0], datetime.fromisoformat(argv[1])
    state = flow_of(name)(as_of=as_of, return_state=True)
    result = state.result(raise_on_failure=False) if state.is_completed() else None
    print(json.dumps({"flow": name, "run_id": str(state.state_details.flow_run_id), "type": state.type.value,
                      "name": state.name, "message": state.message,
                      "result": result if isinstance(result, dict) else None}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
