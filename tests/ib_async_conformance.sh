#!/usr/bin/env bash
# Run the paper-exchange conformance tests with a client other than the project's ib_insync, in a throwaway
# environment:
#   TRADEFLOW_CONFORMANCE_CLIENT=ib_async (default): ib_async 2.1 runs tests/test_paper_exchange_conformance.py
#     with TRADEFLOW_IB_LIBRARY=ib_async (the switch in core/ib_broker.py): the production broker on ib_async.
#   TRADEFLOW_CONFORMANCE_CLIENT=ibapi: IB's official client from the package index (ibapi 9.81.1.post1, server
#     versions up to 157) runs tests/ibapi_conformance.py, an EWrapper/EClient app, with no ib_insync at all.
#
# Neither is ever installed next to ib_insync (ib_async and ib_insync both ship the top-level `eventkit` package
# and overwrite each other's files), so this makes a separate venv, installs the client plus the few packages the
# tests need (at the versions of uv.lock where the lock has them), puts the project on PYTHONPATH and runs pytest.
#
# Usage: tests/ib_async_conformance.sh [pytest args...]
# Exit codes: pytest's, or 3 when the environment could not be made (e.g. the package index is unreachable).
# TRADEFLOW_IB_ASYNC_VENV=DIR (or TRADEFLOW_IBAPI_VENV=DIR) reuses/keeps a venv there instead of a temporary one.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
CLIENT="${TRADEFLOW_CONFORMANCE_CLIENT:-ib_async}"
case "$CLIENT" in
  ib_async) VENV="${TRADEFLOW_IB_ASYNC_VENV:-$WORK/venv}"; PKGS=("ib_async==2.1.0" "aeventkit<3")
            MODULE=tests/test_paper_exchange_conformance.py ;;
  ibapi) VENV="${TRADEFLOW_IBAPI_VENV:-$WORK/venv}"; PKGS=("ibapi==9.81.1.post1")
         MODULE=tests/ibapi_conformance.py ;;
  *) echo "TRADEFLOW_CONFORMANCE_CLIENT must be ib_async or ibapi, not $CLIENT" >&2; exit 2 ;;
esac
PY="$VENV/bin/python"
export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-true}"  # as ./run: TLS through the platform's certificate store

setup() {
  [ -x "$PY" ] || uv venv -q --python 3.11 "$VENV" || return 1
  (cd "$ROOT" && uv export -q --frozen --no-hashes --no-emit-project --all-groups) \
    | grep -E '^(pandas|numpy|pydantic|pydantic-core|pydantic-settings|python-dotenv|typing-extensions|typing-inspection|annotated-types|python-dateutil|six|pytest|pytest-timeout|pluggy|iniconfig|packaging|pygments|nest-asyncio|pandas-market-calendars|exchange-calendars|korean-lunar-calendar|pyluach|toolz|pytz)==' \
    > "$WORK/constraints.txt" || return 1
  uv pip install -q --python "$PY" -c "$WORK/constraints.txt" \
    "${PKGS[@]}" pandas numpy pydantic pydantic-settings pandas-market-calendars \
    pytest pytest-timeout tzdata || return 1
  if "$PY" -c "import ib_insync" 2>/dev/null; then
    echo "ib_insync is importable in the $CLIENT environment: refusing to mix them" >&2
    return 1
  fi
}

if ! setup; then
  echo "conformance ($CLIENT): could not make the $CLIENT environment" >&2
  exit 3
fi
if [ "$CLIENT" = ib_async ]; then
  "$PY" -c "import ib_async, sys; print('ib_async', ib_async.__version__, 'python', sys.version.split()[0])"
else
  "$PY" -c "import importlib.metadata as m, sys; print('ibapi', m.version('ibapi'), 'python', sys.version.split()[0])"
fi
cd "$ROOT"
TRADEFLOW_IB_LIBRARY="$CLIENT" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
  "$PY" -m pytest -q -p no:cacheprovider "$MODULE" "$@"
