"""Where a host's journal lives when it is not this host's (issue #15, "Beyond one box").

On one machine every process reaches the journal through a writer it starts on loopback (`core.journal.store`).
On a worker host of several, the journal is the server host's: its writer runs there for good
(`tradeflow up --role server`), listens on that host's address and asks every client for a shared token. A host
names it with two settings, read here from the environment (`core.settings.Settings` declares and checks the same
names, and lists them in `tradeflow config`):

- ``TRADEFLOW_JOURNAL_SERVER``: ``HOST:PORT`` of the server host's journal writer;
- ``TRADEFLOW_JOURNAL_TOKEN``: the token it asks for (any secret string; the same on every host).

Read at each `Journal` construction, not once per process: a host that names a server never opens, nor starts a
writer for, a journal file of its own, so no code path can split the journal between hosts. What goes over the
network: every transaction, `sync`, the read snapshot (copied to a cache beside the host's would-be journal
path, fetched again only when the server's snapshot has changed), and the kill switch's file (`core.controls`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SERVER_ENV = "TRADEFLOW_JOURNAL_SERVER"
TOKEN_ENV = "TRADEFLOW_JOURNAL_TOKEN"


@dataclass(frozen=True)
class JournalServer:
    """A journal writer on another host: `host` (name or address), `port` (TCP), `token` (None: none asked)."""

    host: str
    port: int
    token: str | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port).

    Raises:
        ValueError: not HOST:PORT with a port in 1..65535 (the message names TRADEFLOW_JOURNAL_SERVER).
    """
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{SERVER_ENV} must be HOST:PORT (e.g. 10.0.0.5:4300), got {text!r}")
    return host.strip("[]"), int(port)


def configured() -> JournalServer | None:
    """The journal server this host's environment names, or None (this host keeps the journal itself).

    Raises:
        ValueError: TRADEFLOW_JOURNAL_SERVER is not HOST:PORT.
    """
    text = os.environ.get(SERVER_ENV, "").strip()
    if not text:
        return None
    host, port = parse_address(text)
    return JournalServer(host, port, os.environ.get(TOKEN_ENV) or None)
