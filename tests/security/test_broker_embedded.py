"""The embedded default (`connect()` with no NATS_URL): auth from the first start, streams made
by the admin, each process connected as its role; provisioning and rotation on a live server."""

from __future__ import annotations

import asyncio

import nats
import pytest

from streams.broker import connect, open_connection, provision_executor
from streams.cluster import EmbeddedCluster
from streams.config import Topology, ensure_streams
from streams.credentials import CREDS_ENV, main, seed_file
from streams.subjects import Space


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh data dir with its own credentials (not the suite's shared MAESTRO_CREDS)."""
    for name in (CREDS_ENV, "NATS_URL", "NATS_NKEY", "MAESTRO_SPACE", "MAESTRO_HOME"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


async def test_the_embedded_default_starts_with_auth_and_roles(home):
    # `start`: the embedded default as `maestro up`/`demo` start it (nothing else starts one).
    async with connect(data_dir=home, name="moon-engine", role="engine", start=True) as engine:
        # The admin made the streams before the engine connected: it only checks them.
        assert await ensure_streams(engine.jetstream(), Topology(space=Space())) == []
        url = (home / "nats.url").read_text()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(url, max_reconnect_attempts=0, allow_reconnect=False)
        # Another process on the same data dir attaches, as its own role.
        async with connect(data_dir=home, name="moon-tail", role="operator") as operator:
            info = await operator.jetstream().stream_info("AUDIT")
            assert info.config.name == "AUDIT"
        # An executor provisioned while the server runs can connect at once.
        seed = await asyncio.to_thread(provision_executor, home, "x1", ["work"])
        assert seed == seed_file(home / "creds", "executor:x1")
        async with connect(data_dir=home, name="moon-worker-x1", role="executor:x1") as x1:
            kv = await x1.jetstream().key_value("maestro_board")
            await kv.put("x1", b"offer")
        assert engine.is_connected  # the reload kept the engine's connection
    assert (home / "creds").stat().st_mode & 0o777 == 0o700


async def test_rotating_a_role_on_a_running_embedded_server(home):
    async with connect(data_dir=home, role="auditor", start=True):
        old = seed_file(home / "creds", "auditor").read_text()
        assert await asyncio.to_thread(main, ["--data-dir", str(home), "rotate", "auditor"]) == 0
        url = (home / "nats.url").read_text()
        # The reload is applied asynchronously: the old key is refused once it is.
        for _ in range(100):
            try:
                nc = await nats.connect(url, nkeys_seed_str=old, max_reconnect_attempts=0,
                                        allow_reconnect=False)
            except nats.errors.Error as error:
                assert "Authorization Violation" in str(error)
                break
            except ConnectionResetError:  # closed mid-handshake (the reload): ask again
                await asyncio.sleep(0.05)
                continue
            await nc.close()
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the rotated key was still accepted")
        async with connect(data_dir=home, role="auditor") as fresh:
            await fresh.flush()


@pytest.mark.slow
async def test_a_cluster_runs_with_roles_and_provisions_on_every_node(tmp_path):
    """A 3-node cluster: one set of seeds, each node's users rendered for the space; an
    executor provisioned on the live cluster is accepted by every node."""
    space = Space("c1")
    cluster = EmbeddedCluster(tmp_path / "cluster", space=space, creds=tmp_path / "creds")
    await asyncio.to_thread(cluster.start)
    try:
        admin = await open_connection(cluster.urls, role="admin",
                                      credentials_file=cluster.seed("admin"))
        await ensure_streams(admin.jetstream(), Topology(space=space, replicas=3))
        role = await asyncio.to_thread(cluster.provision_executor, "x1", ["work"])
        for url in cluster.urls:
            x1 = await open_connection(url, role=role, credentials_file=cluster.seed(role))
            kv = await x1.jetstream().key_value(space.bucket("maestro_board"))
            await kv.put("x1", b"offer")
            await x1.close()
        assert cluster.client_env("engine")["NATS_URL"] == cluster.url
        await admin.close()
    finally:
        await asyncio.to_thread(cluster.stop)
