"""Revocation: the gate follows the revocation bucket itself, under a watchdog, so a revoked
grant is refused (and audited) by every service with no change at its call site."""

from __future__ import annotations

import asyncio
import json
import os

from nats.aio.client import Client as Nats
from nats.js import JetStreamContext
from typer.testing import CliRunner

from envelope.cli import keys_app
from envelope.client import Reply
from envelope.grants import grant_ref
from envelope.revocations import REVOKED_BUCKET, revoke
from streams.broker import open_connection
from streams.config import Topology, ensure_streams
from streams.replies import Reason, Refusal
from streams.subjects import Space
from tests.envelope.gate_world import BODY, Moon, audit_records, eventually


async def test_a_grant_revoked_in_the_bucket_is_refused_with_an_audit_record(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    world = Moon(nc, space)  # as every service builds its gate: no watcher of its own
    async with world.gate.serving():
        assert isinstance(await world.client.call("moon.dispatch", BODY), Reply)
        ref = grant_ref(world.grant)
        await revoke(js, ref, space=space)

        async def known() -> bool:
            return ref in world.gate.trust.revoked

        assert await eventually(known), "the gate never learnt of the revocation"
        refused = await world.client.call("moon.dispatch", BODY)
        assert isinstance(refused, Refusal) and refused.reason is Reason.GRANT_REVOKED
    records = await audit_records(js, space)
    assert [r.outcome for r in records] == ["accepted", "refused"]
    assert records[1].reason is Reason.GRANT_REVOKED and records[1].caller_verified
    assert world.runs == 1


async def test_a_grant_revoked_before_the_gate_starts_is_refused_on_the_first_request(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    world = Moon(nc, space)
    await revoke(js, grant_ref(world.grant), space=space)
    async with world.gate.serving():  # ready only once the revocations are loaded
        assert world.gate.revocations_live
        refused = await world.client.call("moon.dispatch", BODY)
        assert isinstance(refused, Refusal) and refused.reason is Reason.GRANT_REVOKED


async def test_a_deleted_watch_consumer_is_restarted_and_revocations_still_arrive(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    world = Moon(nc, space, revocation_check_s=0.05)
    stream = f"KV_{space.bucket(REVOKED_BUCKET)}"
    async with world.gate.serving():
        watchdog = world.gate.revocations
        assert watchdog is not None and world.gate.revocations_live
        for info in await js._jsm.consumers_info(stream):  # an attacker's (or a bug's) doing
            await js.delete_consumer(stream, info.name)

        async def restarted() -> bool:
            return watchdog.restarts >= 1 and world.gate.revocations_live

        assert await eventually(restarted)
        await revoke(js, grant_ref(world.grant), space=space)
        assert await eventually(lambda: _has(world, grant_ref(world.grant)))
        refused = await world.client.call("moon.dispatch", BODY)
        assert isinstance(refused, Refusal) and refused.reason is Reason.GRANT_REVOKED


async def _has(world: Moon, ref: bytes) -> bool:
    return ref in world.gate.trust.revoked


async def test_while_the_revocation_list_cannot_be_followed_the_gate_fails_closed(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    world = Moon(nc, space, revocation_check_s=0.05, revocation_grace_ms=0)
    async with world.gate.serving():
        assert isinstance(await world.client.call("moon.dispatch", BODY), Reply)
        await js.delete_key_value(space.bucket(REVOKED_BUCKET))

        async def down() -> bool:
            return not world.gate.revocations_live

        assert await eventually(down)
        refused = await world.client.call("moon.dispatch", BODY)
        assert isinstance(refused, Refusal) and refused.reason is Reason.UNAVAILABLE
        assert refused.retryable
        [_, record] = await audit_records(js, space)
        assert record.reason is Reason.UNAVAILABLE and record.caller_verified
        assert world.runs == 1


def test_keys_revoke_writes_the_ref_every_gate_follows(nats_url: str) -> None:
    space = Space(f"cli{os.getpid()}")

    async def prepare() -> bytes:
        nc = await open_connection(nats_url)
        try:
            await ensure_streams(nc.jetstream(), Topology(space=space))
        finally:
            await nc.close()
        return b"\x07" * 32

    ref = asyncio.run(prepare())
    done = CliRunner().invoke(keys_app, ["revoke", ref.hex(), "--url", nats_url,
                                         "--space", space.prefix, "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["revoked"] == ref.hex()

    async def stored() -> bytes | None:
        nc = await open_connection(nats_url)
        try:
            kv = await nc.jetstream().key_value(space.bucket(REVOKED_BUCKET))
            return (await kv.get(ref.hex())).value
        finally:
            await nc.close()

    assert asyncio.run(stored()) == b"revoked"
