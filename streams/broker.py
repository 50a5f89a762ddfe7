"""Connecting to the broker: NATS_URL when set, else the embedded server on the data dir.

A laptop needs no pre-started NATS: `connect()` uses NATS_URL when set and otherwise attaches to
(or, with `start`, starts) the embedded nats-server of streams/embedded.py, re-exported here.

The embedded server runs with authentication: one NKey per role (streams/credentials.py), each
user holding only the rights of its role (streams/roles.py). `connect(role=...)` picks the
role's seed up; `provision_executor` adds an executor's user to a running server (SIGHUP).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from streams import credentials
from streams.credentials import creds_dir, seed_file
from streams.embedded import (
    _LOCAL,
    DEFAULT_DATA_DIR,
    MIN_SERVER_VERSION,
    EmbeddedBroker,
    ServerTooOld,
    _running_embedded,
    _space_of,
    check_server_version,
    find_server_binary,
    free_port,
    provision_executor,
)
from streams.roles import Role, executor_role, inbox_prefix

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

# Seconds, not the nats-py default of 120 s: a half-open link must be noticed quickly (#671).
PING_INTERVAL_S = 5


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



async def _close(nc: Client) -> None:
    """Flush what we published, then close: our services stop their own subscriptions first,
    and a drain that waits on a forgotten one would only delay the exit."""
    with contextlib.suppress(Exception):
        await nc.flush(timeout=2)
    await nc.close()


def home_dir() -> Path:
    """The data dir: MAESTRO_HOME, else .maestro in the working directory."""
    return Path(os.environ.get("MAESTRO_HOME", DEFAULT_DATA_DIR))



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
