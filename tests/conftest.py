"""Shared fixtures: a real nats-server per session, a fresh stream namespace per test.

NATS_URL points the suite at a running server instead; without a nats-server binary the broker
tests skip and every pure test still runs.

Every broker the suite starts runs with authentication (streams/roles.py). One set of role
seeds serves them all (MAESTRO_CREDS, set for the session): clients in this process find the
admin's seed by URL, child processes through the variable. Tests that run as least-privilege
roles use `secured` (a private server whose users are rendered for the test's space).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext

from streams.broker import EmbeddedBroker, find_server_binary, open_connection
from streams.cluster import EmbeddedCluster
from streams.config import Topology, ensure_streams
from streams.credentials import CREDS_ENV, NKEY_ENV, ensure_credentials, seed_file
from streams.subjects import Space
from tests.security.world import Secured

_names = itertools.count(1)


@pytest.fixture(scope="session", autouse=True)
def plain_logs() -> Iterator[None]:
    """Log as the services do (streams/logs.py: exceptions as plain text). structlog's default
    dev renderer prints every local of every frame; at the rate a cluster failover makes the
    engine log handled exceptions, that blocked the event loop past the server's 10 s write
    deadline and the server cut the engine off as a slow consumer."""
    saved = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer()],
        cache_logger_on_first_use=False,
    )
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session", autouse=True)
def broker_credentials(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The role seeds of every broker the suite starts (0700 dir, 0600 files)."""
    directory = ensure_credentials(tmp_path_factory.mktemp("creds"))
    saved = {name: os.environ.get(name) for name in (CREDS_ENV, NKEY_ENV)}
    os.environ[CREDS_ENV] = str(directory)
    # The session broker's roles are rendered for the root namespace while each test works in
    # a namespace of its own, so a process that asks for a role without naming its seed (a CLI,
    # a service spawned by a test) connects with the admin's here. The least-privilege runs
    # name their seeds: tests/security (`secured`), the demo, the cluster and chaos tests.
    os.environ[NKEY_ENV] = str(seed_file(directory, "admin"))
    yield directory
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _skip_without_server() -> Path:
    """The nats-server binary, or this test skipped with the reason it is missing."""
    try:
        return find_server_binary()
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def server_binary() -> Path:
    """For a test that starts nats-server itself (a child process, `maestro up`, a cluster)."""
    return _skip_without_server()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("NATS_URL"):
        yield url
        return
    _skip_without_server()
    broker = EmbeddedBroker(data_dir=tmp_path_factory.mktemp("nats")).start()
    yield broker.url
    broker.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A private server for tests that kill or restart the broker."""
    _skip_without_server()
    server = EmbeddedBroker(data_dir=tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
async def secured(tmp_path: Path, space: Space) -> AsyncIterator[Secured]:
    """A private server with auth whose role users are rendered for this test's `space`, its
    streams made by the admin; `secured.connect(role)`, `secured.env(role)` for a child
    process, `secured.provision(executor_id, capabilities)` (tests/security/world.py)."""
    _skip_without_server()
    world = await Secured.start(tmp_path / "secured", space)
    try:
        yield world
    finally:
        await world.stop()


@pytest.fixture
def space() -> Space:
    """A namespace no other test uses: streams t<N>_MOON, subjects t<N>.moon.wf.…"""
    return Space(f"t{os.getpid()}x{next(_names)}")


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await open_connection(nats_url, name="pytest")
    yield client
    await client.close()


@pytest.fixture
async def js(nc: Client, space: Space) -> JetStreamContext:
    """A JetStream context whose namespace already holds every stream and bucket."""
    context = nc.jetstream()
    await ensure_streams(context, Topology(space=space))
    return context


def _docker_usable() -> bool:
    try:
        import docker  # noqa: PLC0415 - only the testcontainers path needs it

        docker.from_env().ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def container_nats_url() -> Iterator[str]:
    """The same server from a container image, where Docker works (never on our CI machines)."""
    if not _docker_usable():
        pytest.skip("Docker is not usable here: the embedded nats-server covers these tests")
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415

    with DockerContainer("nats:2.12-alpine").with_command("-js").with_exposed_ports(4222) as box:
        yield f"nats://{box.get_container_host_ip()}:{box.get_exposed_port(4222)}"


@pytest.fixture
def cluster(tmp_path: Path, space: Space, server_binary: Path) -> Iterator[EmbeddedCluster]:
    """A 3-node cluster on loopback (tests/test_cluster*.py), with rights rendered for the
    test's namespace, so every service runs with its role's alone."""
    nodes = EmbeddedCluster(tmp_path / "cluster", space=space,
                            creds=tmp_path / "creds").start()
    try:
        yield nodes
    finally:
        nodes.stop()
