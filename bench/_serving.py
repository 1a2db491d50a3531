"""Serve deployments for a benchmark, in a process of its own: `python -m bench._serving NAME ENTRYPOINT...`.

Each entrypoint (`path/to/file.py:flow`) becomes a deployment `<flow name>/NAME` served by one Prefect Runner
(`prefect.serve`) polling the API (PREFECT_API_URL) every `--query-seconds` for runs scheduled at most
`--prefetch-seconds` ahead; each run is a process of its own, as with a worker. Not a benchmark (no `run`).
"""

from __future__ import annotations

import argparse

from prefect import serve
from prefect.deployments.runner import RunnerDeployment


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._serving")
    parser.add_argument("name")
    parser.add_argument("entrypoints", nargs="+")
    parser.add_argument("--query-seconds", type=float, default=1.0)
    parser.add_argument("--prefetch-seconds", type=float, default=0.0)
    args = parser.parse_args(argv)
    deployments = [RunnerDeployment.from_entrypoint(ep, name=args.name) for ep in args.entrypoints]
    serve(*deployments, print_starting_message=False, query_seconds=args.query_seconds,
          prefetch_seconds=args.prefetch_seconds)


if __name__ == "__main__":
    main()
