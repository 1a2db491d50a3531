"""One `mtf-signal` run in this process, timed (bench/_flow_timing.py): `python -m bench._mtf_run AS_OF SYMBOLS`
(SYMBOLS comma-separated). The environment names the exchange, the state directory and the Prefect API. Prints
one JSON line: the final state, the flow's result and the timing record. Not a benchmark (no `run`)."""

from __future__ import annotations

import json
import sys
from datetime import datetime


def main(argv: list[str]) -> int:
    from bench._flow_timing import RECORD
    from bench._timed_mtf_signal import mtf_signal

    as_of, symbols = datetime.fromisoformat(argv[0]), argv[1].split(",")
    state = mtf_signal(as_of=as_of, symbols=symbols, return_state=True)
    result = state.result(raise_on_failure=False) if state.is_completed() else None
    print(json.dumps({"type": state.type.value, "message": state.message,
                      "result": result if isinstance(result, dict) else None, "record": RECORD}, default=str),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
