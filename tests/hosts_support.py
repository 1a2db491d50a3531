"""Several hosts on one machine for the multi-host tests and benchmarks ("Beyond one box", issue #15), and a real
PostgreSQL cluster for them.

`TestNet` makes a private subnet: a bridge in the root namespace (which takes the subnet's first address, so
loopback-bound tools in the root namespace stay apart) and one network namespace per host, each joined to the
bridge by a veth pair and given its own address. The subnet has no route beyond itself: no traffic leaves the test's
own addresses (the namespaces have no default route; the bridge forwards only between them). Everything the net
made is removed by `close()`, and a run that died before it is cleaned up by the next (`TestNet.sweep`).

    with TestNet.create(["server", "a", "b"]) as net:
        proc = net["a"].popen([sys.executable, "-m", "http.server", "--bind", net["a"].address, "0"], log)
        net["a"].kill_all()     # SIGKILL every process in host a's namespace (a host that dies)
        net["a"].cut()          # or take its link down (a host whose network is cut)

`PostgresCluster` is PostgreSQL 15's own server (Debian's `postgresql-15`: `initdb`, `pg_ctl`), initialised in a
temporary folder and listening on one address and a free port, trusting local connections (a test cluster).

Both need root (network namespaces) and the PostgreSQL binaries; `require_hosts()` skips the calling test with
the reason when either is missing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUBNET_PREFIX = "10.231"
"""Test subnets are 10.231.N.0/24, N from the net's tag: a range no host of this machine's network uses."""
_NAME_PREFIX = "tf"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def hosts_available() -> str | None:
    """None when this machine can hold test hosts; else why not (for a skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    probe = f"{_NAME_PREFIX}probe{os.getpid() % 10000}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip("netns", "delete", probe, check=False)
    return None


def pg_bin_dir() -> Path | None:
    """The folder of PostgreSQL's server binaries (initdb, pg_ctl), newest version first; None when missing."""
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / "initdb").exists() and (root / "pg_ctl").exists():
            return root
    return None


def require_hosts() -> None:
    """Skip the calling test when test hosts or PostgreSQL cannot be had here, saying why."""
    import pytest

    why = hosts_available()
    if why:
        pytest.skip(why)
    if pg_bin_dir() is None:
        pytest.skip("PostgreSQL's server binaries are not installed (Debian's postgresql-15; .ci/run installs it)")


def free_port_on(address: str, netns: str | None = None) -> int:
    """A port free on `address` (inside `netns` when given: probed there with a short Python)."""
    if netns is None:
        with socket.socket() as s:
            s.bind((address, 0))
            return s.getsockname()[1]
    out = subprocess.run(["ip", "netns", "exec", netns, "python3", "-c",
                          "import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 0)); "
                          "print(s.getsockname()[1])", address], check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


@dataclass
class Host:
    """One test host: a network namespace `netns` with `address` on the net's bridge."""

    name: str
    netns: str
    veth: str
    address: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` as run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def popen(self, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None) -> subprocess.Popen:
        """Start `argv` on this host (its own process group), output to `log`."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            proc = subprocess.Popen(self.argv(argv), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run `argv` on this host to its end; its output is returned (not checked)."""
        return subprocess.run(self.argv(argv), env=dict(env) if env is not None else None, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)

    def pids(self) -> list[int]:
        """Every process in this host's namespace."""
        out = _ip("netns", "pids", self.netns, check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def kill_all(self) -> list[int]:
        """SIGKILL every process in this host's namespace (the host dies); returns their pids."""
        killed = []
        for _ in range(5):  # a dying parent may still fork
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - reported by the next sweep
                pass
        return killed

    def cut(self) -> None:
        """Take this host's link down: its processes live on but reach nobody, and nobody reaches them."""
        _ip("netns", "exec", self.netns, "ip", "link", "set", "eth0", "down")


@dataclass
class TestNet:
    """A bridge and one namespace per host on 10.231.N.0/24 (module docstring)."""

    __test__ = False  # not a pytest test class

    tag: int
    bridge: str
    hosts: dict[str, Host]

    @property
    def gateway_address(self) -> str:
        """The bridge's own address (the root namespace's, on this subnet)."""
        return f"{SUBNET_PREFIX}.{self.tag}.1"

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    @classmethod
    def create(cls, names: Iterable[str], tag: int | None = None) -> "TestNet":
        """Make the bridge and the hosts (named `names`, addresses .2, .3, … in that order).

        Raises:
            subprocess.CalledProcessError: an `ip` command failed (its stderr says why); what was made is removed.
        """
        cls.sweep()
        tag = tag if tag is not None else 1 + secrets.randbelow(250)
        token = f"{os.getpid() % 100000}"
        bridge = f"{_NAME_PREFIX}br{token}"
        net = cls(tag=tag, bridge=bridge, hosts={})
        try:
            _ip("link", "add", bridge, "type", "bridge")
            _ip("addr", "add", f"{net.gateway_address}/24", "dev", bridge)
            _ip("link", "set", bridge, "up")
            for i, name in enumerate(names):
                netns = f"{_NAME_PREFIX}{token}{name}"
                veth = f"{_NAME_PREFIX}{token}{i}"
                address = f"{SUBNET_PREFIX}.{tag}.{i + 2}"
                _ip("netns", "add", netns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
                _ip("link", "set", veth, "master", bridge)
                _ip("link", "set", veth, "up")
                _ip("netns", "exec", netns, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
                _ip("netns", "exec", netns, "ip", "link", "set", "eth0", "up")
                _ip("netns", "exec", netns, "ip", "link", "set", "lo", "up")
                net.hosts[name] = Host(name, netns, veth, address)
        except BaseException:
            net.close()
            raise
        return net

    def close(self) -> None:
        """Kill every process on the hosts and remove the namespaces, the veth pairs and the bridge."""
        for host in self.hosts.values():
            host.kill_all()
            _ip("link", "delete", host.veth, check=False)
            _ip("netns", "delete", host.netns, check=False)
        _ip("link", "delete", self.bridge, check=False)

    def __enter__(self) -> "TestNet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def sweep() -> None:
        """Remove the namespaces and bridges of test nets whose process is gone (a run that was killed)."""
        for line in _ip("netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.strip() else ""
            token = name[len(_NAME_PREFIX):].rstrip("abcdefghijklmnopqrstuvwxyz-_") if name.startswith(_NAME_PREFIX) else ""
            if token.isdigit() and not _pid_alive_with_token(token):
                for pid in _ip("netns", "pids", name, check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                _ip("netns", "delete", name, check=False)
        for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith(f"{_NAME_PREFIX}br") and not _pid_alive_with_token(name[len(_NAME_PREFIX) + 2:]):
                _ip("link", "delete", name, check=False)


def _pid_alive_with_token(token: str) -> bool:
    """True when a process whose pid ends in `token` (pid % 100000) runs: the net's maker may still be alive."""
    try:
        wanted = int(token)
    except ValueError:
        return False
    return any(int(p) % 100000 == wanted for p in os.listdir("/proc") if p.isdigit())


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster in `data_dir`, listening on `address`:`port` (module docstring).

    `url(database, driver)` gives a SQLAlchemy URL, e.g. ``postgresql+asyncpg://postgres@10.231.7.2:5433/prefect``
    for Prefect's PREFECT_API_DATABASE_CONNECTION_URL.
    """

    data_dir: Path
    address: str
    port: int
    host: Host | None = None
    """The test host it runs on (its namespace), or None for the root namespace."""

    @property
    def _bin(self) -> Path:
        found = pg_bin_dir()
        if found is None:
            raise RuntimeError("PostgreSQL's server binaries are not installed (Debian's postgresql-15)")
        return found

    def _as_postgres(self, argv: Sequence[str]) -> list[str]:
        # initdb and the server refuse to run as root: run them as the postgres user (Debian's package makes it)
        inner = list(argv)
        cmd = ["runuser", "-u", "postgres", "--", *inner] if os.geteuid() == 0 else inner
        return self.host.argv(cmd) if self.host else cmd

    def start(self, timeout: float = 60.0) -> "PostgresCluster":
        """initdb (trust authentication, UTF-8) when the folder is new, then start the server and wait for it.

        Raises:
            RuntimeError: initdb or the server failed (with their output).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
            self.data_dir.chmod(0o700)
            parent = self.data_dir.parent
            parent.chmod(parent.stat().st_mode | 0o011)  # postgres must reach its folder
            for up in parent.parents:
                if up == Path("/"):
                    break
                up.chmod(up.stat().st_mode | 0o001)
        if not (self.data_dir / "PG_VERSION").exists():
            out = subprocess.run(self._as_postgres([str(self._bin / "initdb"), "-D", str(self.data_dir), "-A", "trust",
                                                    "-U", "postgres", "-E", "UTF8", "--no-sync"]),
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"initdb failed: {out.stdout}{out.stderr}")
            with open(self.data_dir / "pg_hba.conf", "a") as fh:  # the test subnet's hosts, trusted
                fh.write("host all all samenet trust\n")
        log = self.data_dir / "server.log"
        opts = f"-c listen_addresses={self.address} -c port={self.port} -c unix_socket_directories={self.data_dir} " \
               "-c fsync=on -c max_connections=200"
        out = subprocess.run(self._as_postgres([str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-l", str(log),
                                                "-o", opts, "-w", "-t", str(int(timeout)), "start"]),
                             capture_output=True, text=True)
        if out.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {out.stdout}{out.stderr}\n{tail}")
        return self

    def create_database(self, name: str) -> None:
        """CREATE DATABASE `name` (through the server's own psql)."""
        psql = shutil.which("psql") or str(self._bin / "psql")
        cmd = [psql, "-h", self.address, "-p", str(self.port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-c",
               f'CREATE DATABASE "{name}"']
        out = subprocess.run(self.host.argv(cmd) if self.host else cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"CREATE DATABASE {name} failed: {out.stderr}")

    def url(self, database: str, driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://postgres@{self.address}:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server (fast shutdown); nothing when it is not running."""
        subprocess.run(self._as_postgres([str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
                                          "stop"]), capture_output=True, text=True)
