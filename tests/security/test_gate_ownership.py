"""Ownership of ids: the first verified caller to name a workflow or plan id owns it; another
caller naming it is refused not_owner, with an audit record, on every replica."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext

from envelope.client import Reply
from envelope.ownership import OWNERS
from envelope.seal import Opened
from streams.config import ensure_bucket
from streams.replies import Reason, Refusal
from streams.subjects import Space
from tests.envelope.gate_world import BODY, Dispatch, Dispatched, Moon, audit_records, key


class Owned(Moon):
    """The toy service with the call a real gateway makes before it acts on an id."""

    async def dispatch(self, opened: Opened) -> Dispatched | Refusal:
        body = msgspec.msgpack.decode(opened.body, type=Dispatch)
        workflow_id = body.workflow_id or f"wf-{opened.request_id}"
        if (refused := await self.gate.own("workflow", workflow_id, opened.caller)) is not None:
            return refused
        self.runs += 1
        return Dispatched(workflow_id=workflow_id)


@pytest.fixture
async def moon(nc: Nats, js: JetStreamContext, space: Space) -> AsyncIterator[Owned]:
    await ensure_bucket(js, space, OWNERS)
    world = Owned(nc, space)
    async with world.gate.serving():
        yield world


async def test_an_id_claimed_first_by_one_caller_is_refused_to_another(
    moon: Owned, nc: Nats, js: JetStreamContext, space: Space
) -> None:
    mallory = moon.client_for(nc, key("mallory"), space)
    squat = await mallory.call("moon.dispatch", {**BODY, "workflow_id": "pv"})
    assert isinstance(squat, Reply)
    victim = await moon.client.call("moon.dispatch", {**BODY, "workflow_id": "pv"})
    assert isinstance(victim, Refusal) and victim.reason is Reason.NOT_OWNER
    mine = await moon.client.call("moon.dispatch", {**BODY, "workflow_id": "pv-alice"})
    assert isinstance(mine, Reply)
    again = await moon.client.call("moon.dispatch", {**BODY, "workflow_id": "pv-alice"})
    assert isinstance(again, Reply), "the owner may name its own id again"
    hijack = await mallory.call("moon.dispatch", {**BODY, "workflow_id": "pv-alice"})
    assert isinstance(hijack, Refusal) and hijack.reason is Reason.NOT_OWNER
    records = await audit_records(js, space)
    refused = [r for r in records if r.reason is Reason.NOT_OWNER]
    assert len(records) == 5 and len(refused) == 2
    assert {r.caller for r in refused} == {moon.caller.did, key("mallory").did}


@pytest.mark.parametrize("bad", ["pv.evil", "wf.*", ">", "a b", "x" * 65, ""])
async def test_an_id_with_subject_characters_is_refused_before_any_kv_use(
    moon: Owned, js: JetStreamContext, space: Space, bad: str
) -> None:
    refused = await moon.client.call("moon.dispatch", {**BODY, "workflow_id": bad or None})
    if not bad:  # no id: the service makes one from the request id, which the gate checked
        assert isinstance(refused, Reply)
        return
    assert isinstance(refused, Refusal) and refused.reason is Reason.INVALID_ID
    [record] = await audit_records(js, space)
    assert record.reason is Reason.INVALID_ID and moon.runs == 0


async def test_ownership_is_checked_without_claiming_for_acting_on_an_existing_id(
    moon: Owned, nc: Nats, space: Space
) -> None:
    assert await moon.gate.own("plan", "p1", moon.caller.did) is None
    assert await moon.gate.own("plan", "p1", moon.caller.did, claim=False) is None
    other = await moon.gate.own("plan", "p1", key("mallory").did, claim=False)
    assert isinstance(other, Refusal) and other.reason is Reason.NOT_OWNER
    unknown = await moon.gate.own("plan", "p2", moon.caller.did, claim=False)
    assert isinstance(unknown, Refusal) and unknown.reason is Reason.NOT_OWNER
    assert await moon.gate.owners.owner("plan", "p1") == moon.caller.did
    # namespaces do not collide: a workflow and a plan may share an id
    assert await moon.gate.own("workflow", "p1", key("mallory").did) is None


async def test_two_replicas_agree_on_the_first_owner(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    await ensure_bucket(js, space, OWNERS)
    one, two = Owned(nc, space), Owned(nc, space)
    async with one.gate.serving(), two.gate.serving():
        assert await one.gate.own("workflow", "w", "did:key:zA") is None
        refused = await two.gate.own("workflow", "w", "did:key:zB")
        assert isinstance(refused, Refusal) and refused.reason is Reason.NOT_OWNER
