"""A cluster's route port admits only servers that hold the cluster's route password.

A route carries every account's messages and none of the accounts' rights: a server that could
join unasked would read every stream's traffic and publish as any account. A real nats-server
node of the test cluster is dialled by a rogue server that names the same cluster and routes
to it without the password, and by a member that has it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import find_server_binary, free_port
from streams.cluster import ClusterNode, EmbeddedCluster, route_secret


@pytest.fixture
def node(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    cluster = EmbeddedCluster(tmp_path / "cluster", size=2, auth=False)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _joiner(tmp_path: Path, name: str, target: int, secret: str | None) -> ClusterNode:
    return ClusterNode(data_dir=tmp_path / name, port=free_port(), sync_always=False,
                       auth=False, binary=find_server_binary(), name=name,
                       cluster_port=free_port(), routes=[target], route_secret=secret)


def _wait_for_line(log: Path, *needles: str, timeout_s: float = 20.0) -> str:
    """The first of `needles` the server writes to its log (it logs each route it makes or is
    refused): the event this test waits on, not a sleep."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.is_file() else ""
        for needle in needles:
            if needle in text:
                return needle
        time.sleep(0.05)
    raise TimeoutError(f"none of {needles} in {log}")


def _dial(tmp_path: Path, name: str, target: int, secret: str | None) -> str:
    """What a server routing to `target` is told first: refused, or its route made."""
    joiner = _joiner(tmp_path, name, target, secret)
    joiner.start()
    try:
        return _wait_for_line(joiner.data_dir / "nats-server.log",
                              "Authorization Violation", "Route connection created")
    finally:
        joiner.stop()


def test_a_server_without_the_route_password_cannot_join_and_one_with_it_can(
    node: EmbeddedCluster, tmp_path: Path
) -> None:
    target = node.nodes[0].cluster_port
    assert _dial(tmp_path, "rogue", target, secret=None) == "Authorization Violation"
    secret = route_secret(node.creds or tmp_path)
    assert _dial(tmp_path, "member", target, secret=secret) == "Route connection created"
