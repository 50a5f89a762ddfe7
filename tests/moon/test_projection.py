"""Young workflows (moon/projection.py): a workflow that ends young writes one index entry and
no wake-up; one whose engine dies young is projected by another engine from the journal."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import msgspec
import pytest
from nats.js import api
from nats.js.errors import NotFoundError

from envelope.keys import KeyRing
from envelope.seal import open_response
from moon.gateway import DispatchReply, moon_gate
from moon.index import WorkflowSummary
from moon.projection import Young
from moon.worker import Result, StepContext
from streams.audit import AuditRecord
from streams.config import WORKFLOWS
from streams.jetstream_store import last_sequence
from streams.moon_events import StepTimedOut
from streams.replies import Refusal

from .. import walls as tw
from . import fault_world as fw
from .engine_world import dispatch, engine, index_entry, step, worker


def test_young_workflows_come_due_in_order_and_the_mark_waits_for_the_oldest() -> None:
    young = Young(young_ms=1_000)
    young.add("a", seq=10, now_ms=0)
    young.add("b", seq=12, now_ms=500)
    young.add("a", seq=99, now_ms=600)  # a second decision keeps the first dispatch's place
    assert young.due(999) == [] and young.due(1_000) == ["a"]
    assert young.due(1_500) == ["a", "b"] and young.due(1_500, limit=1) == ["a"]
    assert young.floor(default=50) == 10
    young.postpone("a", now_ms=1_200)  # the broker was away: a again after b
    assert young.due(2_199) == ["b"] and young.due(2_200) == ["b", "a"]
    young.set_armed("b", 7_000)
    assert young.armed("b") == 7_000 and young.armed("a") is None
    young.drop("a")
    assert young.floor(default=50) == 12 and "a" not in young and len(young) == 1
    young.drop("b")
    assert young.floor(default=50) == 50


async def _index_puts(js, space) -> int:  # type: ignore[no-untyped-def]
    """How many index entries were put in this test's space (its own bucket, one workflow):
    the bucket's stream sequence moves by one per put, whatever history it keeps."""
    try:
        info = await js.stream_info(f"KV_{space.bucket(WORKFLOWS.name)}")
    except NotFoundError:
        return 0
    return int(info.state.last_seq)


async def _wake_up(js, space, wf: str):  # type: ignore[no-untyped-def]
    try:
        return await js.get_last_msg(space.stream("MOON_CMD"),
                                     space.subject(f"moon.timer.{wf}.wake"))
    except NotFoundError:
        return None


async def _next_wake_up(js, space, wf: str, timeout_s: float = 20.0):  # type: ignore[no-untyped-def]
    """The workflow's wake-up schedule once it is stored. Polled: MOON_CMD is a work queue, so
    a test's consumer on it would take the schedule away from the server."""
    return await fw.wait_for(lambda: _wake_up(js, space, wf), timeout_s, poll_s=0.02)


async def test_a_workflow_that_ends_young_arms_no_wake_up(nc, js, space):
    async def work(ctx: StepContext) -> Result:
        return Result(output=b"ok")

    # Young and held back for the whole test, so a busy machine that takes longer than
    # YOUNG_MS or INDEX_MS over the chain cannot make it write what it otherwise would not.
    async with engine(nc, space, young_ms=60_000) as eng, worker(nc, space, {"work": work}):
        eng.young.index_ms = 60_000
        command = dispatch([step("a"), step("b", needs=("a",)), step("c", needs=("b",))])
        await eng.submit(command)
        await eng.wait_terminal(command.workflow_id, 30)
        entry = await index_entry(js, space, command.workflow_id, lambda e: e.status == "completed")
        assert entry.completed == 3
        # Only how it ended: the running entry was held back (INDEX_MS) and never needed.
        assert await _index_puts(js, space) == 1
        assert await _wake_up(js, space, command.workflow_id) is None


async def test_a_young_workflow_still_running_is_listed_a_moment_after_its_dispatch(
    nc, js, space
):
    async with engine(nc, space, young_ms=60_000) as eng:  # young for the whole test
        eng.young.index_ms = 2_000  # long enough to read "held back" on a busy machine
        command = dispatch([step("a", capability="nobody-offers-this", timeout_ms=600_000)])
        await eng.submit(command)
        assert await _index_puts(js, space) == 0  # held back
        entry = await index_entry(js, space, command.workflow_id, lambda e: e.status == "running",
                                  timeout_s=15)
        assert (entry.steps, entry.completed) == (1, 0)
        assert command.workflow_id in eng.young  # listed, still young: its wake-up waits
        assert await _index_puts(js, space) == 1


async def test_a_workflow_still_running_when_it_grows_up_gets_its_wake_up(nc, js, space):
    async with engine(nc, space, young_ms=200) as eng:  # no executor: the step waits
        command = dispatch([step("a", capability="nobody-offers-this", timeout_ms=600_000)])
        wake = asyncio.ensure_future(_next_wake_up(js, space, command.workflow_id))
        await eng.submit(command)
        msg = await wake
        assert "Nats-Schedule" in (msg.headers or {})


async def test_a_timer_due_soon_is_armed_at_once_while_young(nc, js, space):
    async with engine(nc, space, young_ms=60_000) as eng:  # young for the whole test
        command = dispatch([step("a", capability="nobody-offers-this", timeout_ms=2_000)])
        wake = asyncio.ensure_future(_next_wake_up(js, space, command.workflow_id))
        await eng.submit(command)
        assert "Nats-Schedule" in ((await wake).headers or {})
        assert command.workflow_id in eng.young

        async def timed_out() -> bool:  # the timer fired, and its retry's timer was armed
            events = [e for d in await fw.decisions(js, space, command.workflow_id)
                      for e in d.events]
            return sum(isinstance(e, StepTimedOut) for e in events) >= 2

        await fw.wait_for(timed_out, 30)


@pytest.mark.slow
async def test_an_engine_killed_9_while_a_workflow_is_young_is_taken_over_by_another(
    nats_url, nc, js, space, tmp_path: Path
):
    """`moon serve` journals a dispatch and dies (kill -9) before the workflow grows up: a
    second engine finds the dead engine's mark stale and arms the workflow's wake-up from the
    journal (without it, a step whose executor never comes would wait for ever)."""
    proc = fw.spawn_engine(nats_url, space, tmp_path / "engine.log", young_ms=60_000)
    try:
        await fw.engine_bound(js, space)
        command = dispatch([step("a", capability="nobody-offers-this", timeout_ms=600_000)])
        await tw.send_dispatch(nc, space, command)

        async def journaled() -> bool:
            return bool(await fw.decisions(js, space, command.workflow_id))

        await fw.wait_for(journaled, 20, poll_s=0.01)
    finally:
        fw.kill9(proc)  # while young: no wake-up armed yet
    assert await _wake_up(js, space, command.workflow_id) is None
    wake = asyncio.ensure_future(_next_wake_up(js, space, command.workflow_id))
    async with engine(nc, space, stale_ms=1_500):
        msg = await wake
    assert "Nats-Schedule" in (msg.headers or {})


@pytest.mark.slow
async def test_an_engine_killed_9_before_a_dispatchs_audit_record_leaves_it_to_the_next(
    nats_url, nc, js, space, tmp_path: Path
):
    """A dispatch is answered after its journal append, which holds its audit evidence; the
    record is written after the answer. Here the broker refuses every AUDIT write (the stream
    is full and discards new messages) while `moon serve` answers a dispatch, and the engine
    is killed -9 with the record unwritten. Once AUDIT takes writes again, a second engine
    finds the dead one's mark stale (the mark stayed below the dispatch) and writes the record
    from the journal: the answer the caller got, sealed by MOON."""
    stream = space.stream("AUDIT")
    info = await js.stream_info(stream)
    await js.update_stream(dataclasses.replace(
        info.config, max_msgs=max(1, info.state.messages), discard=api.DiscardPolicy.NEW))
    if info.state.messages == 0:  # a message in it, so that it is full
        await js.publish(space.subject("audit.test.fill.refused"), b"{}")
    command = dispatch([step("a", capability="nobody-offers-this", timeout_ms=600_000)])
    proc = fw.spawn_engine(nats_url, space, tmp_path / "engine.log")
    try:
        await fw.engine_bound(js, space)
        reply = await tw.call_dispatch(nc, space, command)
    finally:
        fw.kill9(proc)
    assert not isinstance(reply, Refusal), reply  # answered while AUDIT refused the record
    await js.update_stream(info.config)
    accepted = space.subject("audit.moon.dispatch.accepted")
    records = await nc.subscribe(accepted)
    assert await last_sequence(js, stream, accepted) == 0
    trust = tw.trust_for(space)
    async with engine(nc, space, stale_ms=1_500) as second:
        moon_gate(nc, second, signer=trust.moon, trust=trust.trust_for(trust.moon))
        msg = await records.next_msg(timeout=20)
    record = msgspec.json.decode(msg.data, type=AuditRecord)
    assert (record.id, record.outcome, record.caller) == (
        command.command_id, "accepted", trust.operator.did)
    answer = open_response(record.answer, issuer=trust.moon.did, keys=KeyRing(),
                           caller=trust.operator.did, request_id=command.command_id,
                           request=b"")
    assert not isinstance(answer, Refusal)
    assert msgspec.msgpack.decode(answer.result, type=DispatchReply) == reply


async def test_an_entry_held_back_never_overwrites_a_newer_one(nc, js, space):
    """Another engine (or a quarantine) may list a workflow after this engine held its entry
    back: the held one, put late, must not take the index back to an older journal version."""
    async with engine(nc, space) as eng:
        newer = WorkflowSummary(workflow_id="wf-held", status="completed", steps=1,
                                completed=1, version=10, updated_ms=2)
        older = WorkflowSummary(workflow_id="wf-held", status="running", steps=1, completed=0,
                                version=5, updated_ms=1)
        await eng.put_listing(older, if_newer=True)  # none yet: created
        kv = await js.key_value(space.bucket(WORKFLOWS.name))
        assert msgspec.json.decode((await kv.get("wf-held")).value, type=WorkflowSummary) == older
        await eng.put_listing(newer)
        await eng.put_listing(older, if_newer=True)  # late: dropped
        assert msgspec.json.decode((await kv.get("wf-held")).value, type=WorkflowSummary) == newer
