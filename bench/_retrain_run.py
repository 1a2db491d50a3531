"""One `retrain` run in this process, timed: `python -m bench._retrain_run AS_OF SYMBOLS OPTIONS_JSON` (SYMBOLS
comma-separated, OPTIONS_JSON the flow's other parameters). The environment names the exchange, the state
directory, the Prefect API and, for the fan-out, TRADEFLOW_DASK_SCHEDULER. Prints one JSON line: the final state,
the flow's wall time (imports excluded) and each symbol's decision. Not a benchmark (no `run`)."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime


def main(argv: list[str]) -> int:
    from flows.retrain import retrain

    as_of, symbols, options = datetime.fromisoformat(argv[0]), argv[1].split(","), json.loads(argv[2])
    t0 = time.perf_counter()
    state = retrain(as_of=as_of, symbols=symbols, return_state=True, **options)
    flow_s = time.perf_counter() - t0
    result = state.result(raise_on_failure=False) if state.is_completed() else None
    decisions = [{k: r[k] for k in ("symbol", "challenger", "promoted", "trained")}
                 for r in (result or {}).get("results", [])]
    print(json.dumps({"type": state.type.value, "message": state.message, "flow_s": flow_s,
                      "decisions": decisions}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
