"""A 3-node JetStream cluster of embedded nats-servers on loopback, for failover tests.

Each node is an `EmbeddedBroker` with a cluster block: its own client and route ports, its own
store, routes to the others. Streams on it are created with replicas=3 (`Topology.replicas`), so
an acknowledged append lives on a majority before the ack and survives one node's kill -9.

Routes are authenticated: a route carries every account's traffic with none of the accounts'
rights, so a server that could join unasked would read and write every stream. Each node
requires the cluster's route password, kept 0600 beside the role seeds (`route.secret`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client
from nats.js import JetStreamContext

from streams.broker import (
    EmbeddedBroker,
    find_server_binary,
    free_port,
    open_connection,
    provision_executor,
)
from streams.credentials import creds_dir, write_private
from streams.roles import executor_role
from streams.subjects import Space

__all__ = [
    "CLUSTER_NAME", "ClusterNode", "EmbeddedCluster", "cluster_config_text", "render_routes",
    "route_secret",
]

CLUSTER_NAME = "maestro-test"
# As deploy/nats-cluster-*.conf: with R3 an acked write is on two stores already; fsync on every
# append would only slow a test whose kills are process kills (the page cache survives them).
SYNC_INTERVAL = "10s"
ROUTE_USER = "route"


def route_secret(creds: Path) -> str:
    """The cluster's route password: made once, kept with the seeds so a restart keeps it."""
    path = creds / "route.secret"
    if not path.is_file():
        creds.mkdir(parents=True, exist_ok=True)
        write_private(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def render_routes(secret: str | None, routes: Sequence[str]) -> str:
    """A cluster block's `authorization` and `routes` (each `host:port`): with a `secret`, a
    route in either direction must present it; None leaves the route port open (tests of the
    defence only)."""
    login = "" if secret is None else f"{ROUTE_USER}:{secret}@"
    lines = [] if secret is None else [
        "authorization {", f"  user: {ROUTE_USER}", f'  password: "{secret}"', "  timeout: 2",
        "}",
    ]
    lines += ["routes: [", *(f"  nats-route://{login}{route}" for route in routes), "]"]
    return "\n".join(lines) + "\n"


def cluster_config_text(
    *, name: str, port: int, cluster_port: int, routes: list[int], store_dir: Path,
    secret: str | None,
) -> str:
    """One node's config: loopback client and route ports, routes to every other node."""
    block = render_routes(secret, [f"127.0.0.1:{p}" for p in routes])
    return "\n".join([
        f"server_name: {name}",
        f"listen: 127.0.0.1:{port}",
        "max_payload: 8MB",
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        f"  sync_interval: {SYNC_INTERVAL}",
        "}",
        "cluster {",
        f"  name: {CLUSTER_NAME}",
        f"  listen: 127.0.0.1:{cluster_port}",
        *(f"  {line}" for line in block.splitlines()),
        "}",
    ]) + "\n"


@dataclass
class ClusterNode(EmbeddedBroker):
    """One member: the embedded broker's start/stop/kill, with a cluster block in its config."""

    name: str = "maestro-0"
    cluster_port: int = 0
    routes: list[int] = field(default_factory=list)
    route_secret: str | None = field(default=None, repr=False)

    def config_text(self) -> str:
        return cluster_config_text(
            name=self.name, port=self.port, cluster_port=self.cluster_port, routes=self.routes,
            store_dir=self.store_dir.resolve(), secret=self.route_secret,
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class EmbeddedCluster:
    """`size` nodes under `data_dir/n<i>`; ports are picked once, so a restart keeps them."""

    data_dir: Path
    size: int = 3
    nodes: list[ClusterNode] = field(default_factory=list)
    # As EmbeddedBroker: auth on, one set of role seeds for every node.
    auth: bool = True
    space: Space | None = None
    creds: Path | None = None

    def __post_init__(self) -> None:
        binary = find_server_binary()
        cluster_ports = [free_port() for _ in range(self.size)]
        self.creds = self.creds or creds_dir(self.data_dir)
        secret = route_secret(self.creds)
        self.nodes = [
            ClusterNode(
                data_dir=self.data_dir / f"n{i}", port=free_port(), sync_always=False,
                auth=self.auth, space=self.space, creds=self.creds,
                binary=binary, name=f"maestro-{i}", cluster_port=cluster_ports[i],
                routes=[p for j, p in enumerate(cluster_ports) if j != i], route_secret=secret,
            )
            for i in range(self.size)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node, comma-separated: what NATS_URL holds for a cluster."""
        return ",".join(self.urls)

    def start(self, timeout_s: float = 30.0) -> EmbeddedCluster:
        """Start every node, then wait until JetStream answers on each. Blocking, like
        `EmbeddedBroker.start`: async code calls it through `asyncio.to_thread`."""
        for node in self.nodes:
            node.start()
        # A loop of its own in a thread of its own: callable whether or not a loop runs here.
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, self.wait_ready(timeout_s)).result()
        return self

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Every running node answers JetStream requests: the meta group has a leader and every
        node has caught up with it (before that, creating an R3 stream can fail)."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            if not node.running:
                continue
            nc = await open_connection(node.url, name="cluster-probe",
                                       credentials_file=self.seed("admin") if self.auth else None)
            try:
                while not await _jetstream_answers(nc):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{node.name}: JetStream not ready in {timeout_s}s")
                    await asyncio.sleep(0.1)
            finally:
                await nc.close()

    def seed(self, role: str = "admin") -> Path:
        return self.nodes[0].seed(role)

    def client_env(self, role: str = "admin") -> dict[str, str]:
        """As `EmbeddedBroker.client_env`, with every node's URL in NATS_URL."""
        return {**self.nodes[0].client_env(role), "NATS_URL": self.url}

    def provision_executor(self, executor_id: str, capabilities: list[str]) -> str:
        """Add the executor's user to every running node (one seed, each node reloaded)."""
        for node in self.nodes:
            if node.running:
                provision_executor(node.data_dir, executor_id, capabilities, creds=self.creds)
        return executor_role(executor_id)

    def kill(self, index: int) -> None:
        """kill -9 one node: no flush, no goodbye to its peers."""
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        """Start a node again on its ports and store; it catches up from its peers."""
        self.nodes[index].start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def index_of(self, server_name: str) -> int:
        return next(i for i, node in enumerate(self.nodes) if node.name == server_name)

    async def stream_leader(self, js: JetStreamContext, stream: str) -> int | None:
        """The index of the node leading `stream`'s RAFT group, or None while it has none."""
        info = await js.stream_info(stream)
        leader = info.cluster.leader if info.cluster is not None else None
        return None if leader is None else self.index_of(leader)

    async def in_sync(self, js: JetStreamContext, stream: str) -> bool:
        """`stream` (replicated on every node) has a leader and every other replica is online and
        current: after a restart, the node has caught up."""
        cluster = (await js.stream_info(stream)).cluster
        if cluster is None or cluster.leader is None:
            return False
        peers = cluster.replicas or []
        return len(peers) == self.size - 1 and all(p.current and not p.offline for p in peers)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


async def _jetstream_answers(nc: Client) -> bool:
    """`$JS.API.INFO` answered without an error: this node's JetStream is usable."""
    with contextlib.suppress(Exception):
        reply = await nc.request("$JS.API.INFO", b"", timeout=1)
        return "error" not in json.loads(reply.data)
    return False
