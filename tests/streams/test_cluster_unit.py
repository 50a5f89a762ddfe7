"""The pure parts of the cluster harness: each node's config and the list of servers a client
fails over between. The cluster itself runs in tests/test_cluster.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streams.broker import server_urls
from streams.cluster import EmbeddedCluster, cluster_config_text


def test_a_node_routes_to_every_other_node_and_listens_on_loopback_only():
    text = cluster_config_text(name="maestro-1", port=4001, cluster_port=6001,
                               routes=[6000, 6002], store_dir=Path("/data/n1/jetstream"),
                               secret="s3cret")
    assert "server_name: maestro-1" in text
    assert "listen: 127.0.0.1:4001" in text
    assert "listen: 127.0.0.1:6001" in text
    assert re.findall(r"nats-route://route:s3cret@([\d.]+):(\d+)", text) == [
        ("127.0.0.1", "6000"), ("127.0.0.1", "6002")
    ]
    assert re.search(r'authorization \{\s*user: route\s*password: "s3cret"', text)
    assert 'store_dir: "/data/n1/jetstream"' in text
    assert "sync_interval: 10s" in text  # as deploy/: R3 is the durability, not fsync


def test_three_nodes_get_distinct_ports_names_and_stores_and_no_route_to_themselves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("NATS_SERVER_BIN", "/nowhere/nats-server")  # nothing is started here
    cluster = EmbeddedCluster(tmp_path)
    nodes = cluster.nodes
    assert [n.name for n in nodes] == ["maestro-0", "maestro-1", "maestro-2"]
    ports = [n.port for n in nodes] + [n.cluster_port for n in nodes]
    assert len(set(ports)) == 6
    assert len({n.store_dir for n in nodes}) == 3
    for node in nodes:
        others = {n.cluster_port for n in nodes if n is not node}
        assert set(node.routes) == others
        assert node.config_text().count("nats-route://") == 2
    assert cluster.url == ",".join(n.url for n in nodes)
    assert cluster.index_of("maestro-2") == 2


def test_a_comma_separated_nats_url_names_every_server_of_the_pool():
    assert server_urls("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]
    assert server_urls("nats://a:1, nats://b:2,nats://c:3,") == [
        "nats://a:1", "nats://b:2", "nats://c:3"
    ]
    assert server_urls(["nats://a:1", "nats://b:2"]) == ["nats://a:1", "nats://b:2"]
