"""The embedded default (`connect()` with no NATS_URL): auth from the first start, streams made
by the admin, each process connected as its role; provisioning and rotation on a live server."""

from __future__ import annotations

import asyncio

import nats
import pytest

from streams.broker import connect, provision_executor
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
    async with connect(data_dir=home, name="moon-engine", role="engine") as engine:
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
    async with connect(data_dir=home, role="auditor"):
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
            await nc.close()
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the rotated key was still accepted")
        async with connect(data_dir=home, role="auditor") as fresh:
            await fresh.flush()
