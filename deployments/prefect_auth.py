"""The secret of the local Prefect server `tradeflow up` starts: a Basic auth string (`tradeflow:<random>`) kept
in `<state dir>/prefect/api-auth`, mode 0600, created on the first `up`.

The server requires it on every API request (Prefect 3.8's `PREFECT_SERVER_API_AUTH_STRING`; /health and /ready
stay open); its clients send it (`PREFECT_API_AUTH_STRING`): the worker and the flow runs it starts, the replay,
and every `tradeflow` command that talks to the API (`deployments.cli.main` exports it from the file unless
PREFECT_API_AUTH_STRING is set or PREFECT_API_URL names another host). The UI asks for it at its login page.
The `prefect` CLI in another shell: `export PREFECT_API_AUTH_STRING="$(cat state/prefect/api-auth)"`.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from urllib.parse import urlsplit

AUTH_FILE = "api-auth"
USER = "tradeflow"
CLIENT_VARIABLE = "PREFECT_API_AUTH_STRING"


class AuthFileError(RuntimeError):
    """The auth file cannot be read or written, or others may read it; the message says what to fix."""


def auth_path(prefect_home: Path) -> Path:
    """Where the local server's auth string is kept."""
    return Path(prefect_home) / AUTH_FILE


def read_auth(prefect_home: Path) -> str | None:
    """The auth string, or None when there is no file.

    Raises:
        AuthFileError: the file can be read by others than its owner (group/other bits), or is empty.
    """
    path = auth_path(prefect_home)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthFileError(f"{path} (the Prefect server's password) can be read by others (mode "
                            f"{stat.S_IMODE(mode):o}): `chmod 600 {path}`")
    value = path.read_text().strip()
    if ":" not in value:
        raise AuthFileError(f"{path} does not hold a 'user:password' auth string: delete it and run `tradeflow up` "
                            "again (a new one is made; restart the server with it)")
    return value


def ensure_auth(prefect_home: Path) -> str:
    """The auth string, created (mode 0600, never readable by others for a moment) when there is none.

    Raises:
        AuthFileError: as `read_auth`, or the state directory cannot be written.
    """
    existing = read_auth(prefect_home)
    if existing is not None:
        return existing
    path = auth_path(prefect_home)
    value = f"{USER}:{secrets.token_urlsafe(32)}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
    except FileExistsError:  # another `up` made it meanwhile
        return read_auth(prefect_home) or value
    except OSError as exc:
        raise AuthFileError(f"cannot write the Prefect server's password to {path}: {exc}") from exc
    return value


def export_client_auth(prefect_home: Path, create: bool = False) -> str | None:
    """Put the local server's auth string in this process's environment (`PREFECT_API_AUTH_STRING`) for the
    Prefect client and every child process, unless it is set already or PREFECT_API_URL names a server on
    another host (their auth comes from the environment). Call it before Prefect is imported: Prefect reads its
    settings then.
    Returns the string exported, or None."""
    if os.environ.get(CLIENT_VARIABLE):
        return None  # the environment's own (a server of the operator's)
    url = urlsplit(os.environ.get("PREFECT_API_URL", ""))
    if url.hostname not in (None, "127.0.0.1", "localhost"):
        return None
    value = ensure_auth(prefect_home) if create else read_auth(prefect_home)
    if value is not None:
        os.environ[CLIENT_VARIABLE] = value
    return value
