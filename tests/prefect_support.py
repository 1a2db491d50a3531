"""A real Prefect server for the tests that need one (Prefect's server app, as `tradeflow up` starts it
but without its auth string: `deployments.prefect_server`, loopback, free port, SQLite in a
temporary PREFECT_HOME, the scheduler looping every 2 s and holding `deployments.processes.HOLD_AHEAD` of runs,
as `tradeflow up`'s server does). Loaded as a pytest plugin by conftest.py, so one server serves the session.

- `prefect_server`: the `deployments.processes.LocalServer` (api_url, ui_url, log_path).
- `prefect_api`: points this test's Prefect client at it (PREFECT_API_URL, temporary settings) and yields its URL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# imports of Prefect and the project happen in the fixtures: conftest loads this module in every environment,
# including tests/ib_async_conformance.sh's, which has neither


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator["LocalServer"]:  # noqa: F821
    from deployments.processes import LocalServer, free_port

    home = tmp_path_factory.mktemp("prefect-home")
    server = LocalServer(home, free_port(), home / "server.log", ui=False,
                         extra_env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"})
    server.start(timeout=300)  # creating its database took more than 120 s under a load average of 12
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefect_api(prefect_server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_server.api_url)
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server.api_url
