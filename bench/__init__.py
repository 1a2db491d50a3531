"""Benchmarks of tradeflow's building blocks (issue 8): run them with `uv run python -m bench.run_all`.

Not part of the installed package and not run by the tests (tests/test_bench_smoke.py runs a tiny configuration
to keep them working). Each module is one benchmark; `bench.common` says the shape they share.
"""
