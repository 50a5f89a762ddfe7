"""Trust inside the walls, against a real nats-server: what a client on the bus (or a registered
executor gone bad) can publish, and what MOON does with it. Each forgery is refused or
detected, named, audited, leaves the workflow as it was, and the engine keeps serving.

Before this, every one of these was obeyed: MOON_CMD and the journal took any bytes on the bus.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from envelope.keys import signer_from_seed
from envelope.statement import COMMAND, DECISION, SNAPSHOT, TIMER, sign_statement
from moon.claims import claim_key, sign_claim
from moon.effects import COMMANDS, seal_command
from moon.engine import Engine
from moon.journal import DECISIONS, STATE_VERSION
from moon.reports import seal_report
from moon.worker import Result, StepContext, Worker
from moon.workflow import WorkflowState
from streams.audit import AuditRecord
from streams.config import CLAIMS, SNAPSHOTS, WORKFLOWS
from streams.moon_events import (
    CarriedStep,
    Compensate,
    CompleteStep,
    Decision,
    Dispatch,
    FireTimer,
    Replan,
    WorkflowCompleted,
)
from streams.replies import Reason, Refusal
from streams.snapshots import schema_stamp
from streams.subjects import Space

from .. import walls as tw
from ..moon import fault_world as fw
from ..moon.engine_world import dispatch, engine, now_ms, step, worker


@dataclass
class Hold:
    """A handler that blocks until released: the attempt stays in flight while we attack it."""

    started: asyncio.Event
    release: asyncio.Event

    async def __call__(self, ctx: StepContext) -> Result:
        self.started.set()
        await self.release.wait()
        return Result(output=b"honest")


@pytest.fixture
def hold() -> Hold:
    return Hold(asyncio.Event(), asyncio.Event())


@pytest.fixture
async def moon(nc: Client, js: JetStreamContext, space: Space) -> AsyncIterator[Engine]:
    async with engine(nc, space) as eng:
        yield eng


async def refusals(js: JetStreamContext, space: Space, want: int,
                   timeout_s: float = 10) -> list[AuditRecord]:
    sub = await js.subscribe(space.subject("audit.moon.>"), ordered_consumer=True)
    found: list[AuditRecord] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(found) < want and loop.time() < deadline:
            try:
                msg = await sub.next_msg(timeout=max(0.1, deadline - loop.time()))
            except Exception:
                break
            record = msgspec.json.decode(msg.data, type=AuditRecord)
            if record.outcome == "refused":
                found.append(record)
    finally:
        await sub.unsubscribe()
    return found


async def journal_length(js: JetStreamContext, space: Space, wf: str) -> int:
    return len(await fw.decisions(js, space, wf))


def stranger() -> object:
    return signer_from_seed(os.urandom(32))


# --- MOON_CMD: only engine-signed timers and MAESTRO-signed commands ----------------------------


async def test_a_plain_client_cannot_complete_a_step_on_moon_cmd(
    moon: Engine, nc: Client, js: JetStreamContext, space: Space, hold: Hold
) -> None:
    async with worker(nc, space, {"work": hold}):
        command = dispatch([step("a")])
        await moon.submit(command)
        await asyncio.wait_for(hold.started.wait(), 10)
        before = await journal_length(js, space, command.workflow_id)
        forged = CompleteStep(command_id="forged", workflow_id=command.workflow_id,
                              at_ms=now_ms(), step="a", attempt=1, result=b"FORGED")
        # Unsigned, signed by a stranger as a command, and as a timer: all refused.
        for data in (COMMANDS.encode(forged), seal_command(stranger(), forged),  # type: ignore[arg-type]
                     sign_statement(stranger(), TIMER, COMMANDS.encode(forged))):  # type: ignore[arg-type]
            await js.publish(space.subject(f"moon.cmd.{command.workflow_id}.complete_step"), data)
        audits = await refusals(js, space, 3)
        assert [a.reason for a in audits] == [Reason.WRONG_SUBJECT] * 3
        assert await journal_length(js, space, command.workflow_id) == before
        hold.release.set()
        final = await moon.wait_terminal(command.workflow_id, 20)
    assert final.steps["a"].result == b"honest"


async def test_a_dispatch_with_carried_steps_on_the_bus_is_refused(
    moon: Engine, nc: Client, js: JetStreamContext, space: Space
) -> None:
    forged = Dispatch(command_id="raw", workflow_id="raw-wf", at_ms=now_ms(),
                      steps=(step("a"), step("b")),
                      completed=(CarriedStep(step="a"), CarriedStep(step="b")))
    await js.publish(space.subject("moon.cmd.raw-wf.dispatch"), COMMANDS.encode(forged))
    await js.publish(space.subject("moon.cmd.raw-wf.dispatch"),
                     seal_command(tw.trust_for(space).maestro, forged))
    audits = await refusals(js, space, 2)
    assert {a.reason for a in audits} == {Reason.WRONG_SUBJECT}
    assert await fw.decisions(js, space, "raw-wf") == []


async def test_only_maestros_key_replans_and_never_a_gate_caller_without_admin(
    moon: Engine, nc: Client, js: JetStreamContext, space: Space, hold: Hold
) -> None:
    async with worker(nc, space, {"work": hold}):
        command = dispatch([step("a"), step("b", needs=("a",))], budget_tokens=10,
                           plan_id="p1")
        await moon.submit(command)
        await asyncio.wait_for(hold.started.wait(), 10)
        raise_budget = Replan(command_id="evil-replan", workflow_id=command.workflow_id,
                              at_ms=now_ms(), plan_id="p1", revision=1,
                              assignments={"b": "evil"}, budget_tokens=10**12)
        subject = space.subject(f"moon.cmd.{command.workflow_id}.replan")
        await js.publish(subject, COMMANDS.encode(raise_budget))
        await js.publish(subject, seal_command(stranger(), raise_budget))  # type: ignore[arg-type]
        # A Compensate body on the replan subject, signed by MAESTRO: the kind must match.
        undo = Compensate(command_id="evil-undo", workflow_id=command.workflow_id,
                          at_ms=now_ms())
        await js.publish(subject, seal_command(tw.trust_for(space).maestro, undo))
        audits = await refusals(js, space, 3)
        assert sorted(a.reason.value for a in audits if a.reason) == sorted(
            [Reason.MALFORMED.value, Reason.FORGED.value, Reason.WRONG_SUBJECT.value])
        state = await moon.state(command.workflow_id)
        assert state.budget_tokens == 10 and state.steps["b"].assigned is None
        assert state.status == "running"
        hold.release.set()
        await moon.wait_terminal(command.workflow_id, 20)


# --- reports: signed by the executor the attempt is bound to ------------------------------------


async def test_a_pool_member_cannot_complete_an_order_another_member_took(
    moon: Engine, nc: Client, js: JetStreamContext, space: Space, hold: Hold
) -> None:
    """A pool attempt is bound by its first report, which must carry the claim token of the
    order it reports on: only the member that took the order has it."""
    async with worker(nc, space, {"work": hold}, executor_id="honest"):
        command = dispatch([step("a")])  # no executor: any member of the `work` pool
        await moon.submit(command)
        await asyncio.wait_for(hold.started.wait(), 10)
        rogue = Worker(nc, executor_id="rogue", handlers={}, space=space, engines=frozenset(),
                       signer=await tw.executor(js, space, "rogue", ["work"]))
        key = claim_key(command.workflow_id, "a", 1, compensation=False)
        for n, claim in enumerate((b"", sign_claim(rogue.signer, key))):  # none, its own
            forged = CompleteStep(command_id=f"rogue-done-{n}", workflow_id=command.workflow_id,
                                  at_ms=now_ms(), step="a", attempt=1, result=b"FORGED",
                                  claim=claim)
            answer = await rogue.request(forged)
            assert (answer.ok, answer.reason) == (False, Reason.NOT_ASSIGNED.value)
        audits = await refusals(js, space, 2)
        assert [a.reason for a in audits] == [Reason.NOT_ASSIGNED, Reason.NOT_ASSIGNED]
        assert (await moon.state(command.workflow_id)).steps["a"].status == "scheduled"
        hold.release.set()
        final = await moon.wait_terminal(command.workflow_id, 20)
    assert final.steps["a"].result == b"honest"
    assert final.steps["a"].executor == "honest"


async def test_a_registered_executor_cannot_report_for_another_executors_attempt(
    moon: Engine, nc: Client, js: JetStreamContext, space: Space, hold: Hold
) -> None:
    async with worker(nc, space, {"work": hold}, executor_id="honest"):
        command = dispatch([step("a", executor="honest")])
        await moon.submit(command)
        await asyncio.wait_for(hold.started.wait(), 10)
        rogue = Worker(nc, executor_id="rogue", handlers={}, space=space, engines=frozenset(),
                       signer=await tw.executor(js, space, "rogue", ["work"]))
        forged = CompleteStep(command_id="rogue-done", workflow_id=command.workflow_id,
                              at_ms=now_ms(), step="a", attempt=1, result=b"FORGED")
        answer = await rogue.request(forged)
        assert (answer.ok, answer.reason) == (False, Reason.NOT_ASSIGNED.value)
        # Nor can it claim to be the honest one: its key is not the one registered for it.
        impostor = Worker(nc, executor_id="honest", handlers={}, space=space, engines=frozenset(),
                          signer=rogue.signer)
        answer = await impostor.request(forged)
        assert (answer.ok, answer.reason) == (False, Reason.FORGED.value)
        # And an unregistered key gets nowhere.
        nobody = Worker(nc, executor_id="nobody", handlers={}, space=space, engines=frozenset(),
                        signer=stranger())  # type: ignore[arg-type]
        answer = await nobody.request(forged)
        assert (answer.ok, answer.reason) == (False, Reason.UNKNOWN_KEY.value)
        audits = await refusals(js, space, 3)
        assert {a.reason for a in audits} == {Reason.NOT_ASSIGNED, Reason.FORGED,
                                              Reason.UNKNOWN_KEY}
        hold.release.set()
        final = await moon.wait_terminal(command.workflow_id, 20)
    assert final.steps["a"].result == b"honest"


async def test_a_report_on_another_subject_than_its_own_is_refused(
    moon: Engine, nc: Client, js: JetStreamContext, space: Space, hold: Hold
) -> None:
    async with worker(nc, space, {"work": hold}, executor_id="x1") as w:
        command = dispatch([step("a")])
        await moon.submit(command)
        await asyncio.wait_for(hold.started.wait(), 10)
        forged = CompleteStep(command_id="moved", workflow_id=command.workflow_id,
                              at_ms=now_ms(), step="a", attempt=1, result=b"FORGED")
        data = seal_report(w.signer, forged)
        # Signed correctly, sent as another kind and for another workflow.
        for subject in (f"moon.report.x1.{command.workflow_id}.fail_step",
                        "moon.report.x1.other-wf.complete_step"):
            reply = await nc.request(space.subject(subject), data, timeout=5)
            assert b"wrong_subject" in reply.data
        hold.release.set()
        final = await moon.wait_terminal(command.workflow_id, 20)
    assert final.steps["a"].result == b"honest"


async def test_pre_claimed_keys_no_longer_stop_a_step(
    moon: Engine, nc: Client, js: JetStreamContext, space: Space
) -> None:
    """The claims bucket is gone from the path: the journaled start is the claim."""
    async def work(ctx: StepContext) -> Result:
        return Result(output=b"ran")

    command = dispatch([step("a")])
    kv = await js.key_value(space.bucket(CLAIMS.name))
    import hashlib  # noqa: PLC0415

    for attempt in (1, 2, 3):
        key = f"{command.workflow_id}/a/{attempt}"
        await kv.put(hashlib.sha256(key.encode()).hexdigest()[:40], b"squatter")
    async with worker(nc, space, {"work": work}):
        await moon.submit(command)
        final = await moon.wait_terminal(command.workflow_id, 20)
    assert final.status == "completed" and final.steps["a"].result == b"ran"


# --- the journal: a fold detects what the engine did not write ----------------------------------


async def test_garbage_or_a_forged_decision_quarantines_only_its_workflow(
    moon: Engine, nc: Client, js: JetStreamContext, space: Space, hold: Hold
) -> None:
    async with worker(nc, space, {"work": hold}):
        victims = [dispatch([step("a")]), dispatch([step("a")])]
        bystander = dispatch([step("a")])
        for command in (*victims, bystander):
            await moon.submit(command)
        await asyncio.wait_for(hold.started.wait(), 10)
        garbage_ack = await js.publish(
            space.subject(f"moon.wf.{victims[0].workflow_id}.step.completed"), b"\x00garbage")
        fake = Decision(command=victims[1], events=[WorkflowCompleted(at_ms=now_ms())])
        forged_ack = await js.publish(
            space.subject(f"moon.wf.{victims[1].workflow_id}.completed"),
            sign_statement(stranger(), DECISION, DECISIONS.encode(fake)))  # type: ignore[arg-type]
        hold.release.set()
        final = await moon.wait_terminal(bystander.workflow_id, 20)
        assert final.status == "completed"  # every other workflow goes on

        index = await js.key_value(space.bucket(WORKFLOWS.name))

        async def quarantined() -> bool:
            for command in victims:
                try:
                    entry = await index.get(command.workflow_id)
                except KeyNotFoundError:  # not listed yet: young entries are held back
                    return False
                if b'"quarantined"' not in (entry.value or b""):
                    return False
            return True

        await fw.wait_for(quarantined, 20)
        for command, ack in zip(victims, (garbage_ack, forged_ack), strict=True):
            entry = await index.get(command.workflow_id)
            assert f"journal seq {ack.seq}".encode() in entry.value
            refused = await moon.submit(dispatch([step("z")], workflow_id=command.workflow_id))
            assert isinstance(refused, Refusal) and refused.reason is Reason.QUARANTINED
    audits = await refusals(js, space, 2)
    assert {a.reason for a in audits} >= {Reason.QUARANTINED}


async def test_a_forged_snapshot_is_ignored(
    nc: Client, js: JetStreamContext, space: Space
) -> None:
    async def work(ctx: StepContext) -> Result:
        return Result(output=b"ok")

    async with engine(nc, space, ) as eng, worker(nc, space, {"work": work}):
        command = dispatch([step("a"), step("b", needs=("a",))])
        await eng.submit(command)
        live = await eng.wait_terminal(command.workflow_id, 20)
    # A snapshot claiming the workflow was cancelled, unsigned and signed by a stranger.
    lie = msgspec.structs.replace(live, status="cancelled")
    body = msgspec.json.encode({"version": 10**9, "stamp": schema_stamp(WorkflowState,
                                                                         STATE_VERSION),
                                "state": msgspec.json.decode(msgspec.json.encode(lie))})
    kv = await js.key_value(space.bucket(SNAPSHOTS.name))
    for data in (body, sign_statement(stranger(), SNAPSHOT, body)):  # type: ignore[arg-type]
        await kv.put(command.workflow_id, data)
        fresh = await tw.registry_for(js, space)
        restarted = Engine(nc, walls=tw.walls_for(space), registry=fresh, space=space)
        try:
            assert (await restarted.state(command.workflow_id)).status == "completed"
        finally:
            await fresh.stop()


# --- timers: the engine's own, never decided before they are due --------------------------------


async def test_a_timer_is_the_engines_own_and_never_fires_early(
    moon: Engine, nc: Client, js: JetStreamContext, space: Space, hold: Hold
) -> None:
    async with worker(nc, space, {"work": hold}):
        command = dispatch([step("a", timeout_ms=60_000)])
        await moon.submit(command)
        await asyncio.wait_for(hold.started.wait(), 10)
        early = FireTimer(command_id="early", workflow_id=command.workflow_id, at_ms=now_ms(),
                          kind="step_timeout", step="a", attempt=1)
        subject = space.subject(f"moon.cmd.{command.workflow_id}.fire_timer")
        await js.publish(subject, seal_command(stranger(), early))  # type: ignore[arg-type]
        await js.publish(subject, sign_statement(tw.trust_for(space).maestro, COMMAND,
                                                 COMMANDS.encode(early)))
        audits = await refusals(js, space, 2)
        assert [a.reason for a in audits] == [Reason.FORGED, Reason.FORGED]
        # Even the engine's own timer, fired a minute early, decides nothing.
        await js.publish(subject, seal_command(tw.trust_for(space).moon, early))
        # Taken and settled by the engine (nothing pending or unacked on its consumer), and
        # nothing decided: the attempt is still the first, in flight (taken, not reported).
        await fw.wait_for(lambda: _commands_settled(js, space), 10)
        state = await moon.state(command.workflow_id)
        assert state.steps["a"].status == "scheduled" and state.steps["a"].attempt == 1
        assert len(await fw.decisions(js, space, command.workflow_id)) == 1
        hold.release.set()
        await moon.wait_terminal(command.workflow_id, 20)


async def _commands_settled(js: JetStreamContext, space: Space) -> bool:
    from moon.engine import ENGINE_CONSUMER  # noqa: PLC0415

    info = await js.consumer_info(space.stream("MOON_CMD"), space.consumer(ENGINE_CONSUMER))
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_an_engine_clock_behind_the_broker_is_corrected_by_the_offset(
    nc: Client, js: JetStreamContext, space: Space, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine whose own clock is 25 s behind (inside the envelope's skew) still reads the
    broker's time, the clock schedules fire by."""
    import time  # noqa: PLC0415

    from moon import clock  # noqa: PLC0415

    monkeypatch.setattr(clock, "local_ms", lambda: time.time_ns() // 1_000_000 - 25_000)
    broker_clock = clock.BrokerClock(nc, f"$JS.API.STREAM.INFO.{space.stream('MOON_CMD')}")
    assert await broker_clock.sync()
    assert abs(broker_clock() - time.time_ns() // 1_000_000) < 1_000
    assert 24_000 < broker_clock.offset_ms < 26_000
    assert clock._parse_ts("2026-12-01T10:20:18.894854357Z") == 1796120418894


# --- bounds -------------------------------------------------------------------------------------


async def test_a_huge_dispatch_is_refused_and_the_engine_keeps_serving(
    moon: Engine, nc: Client, js: JetStreamContext, space: Space
) -> None:
    async def work(ctx: StepContext) -> Result:
        return Result(output=b"ok")

    huge = dispatch([step(f"s{i}", needs=(f"s{i - 1}",) if i else ()) for i in range(100_000)])
    refused = await moon.submit(huge)
    assert isinstance(refused, Refusal) and refused.reason is Reason.OVERSIZE
    async with worker(nc, space, {"work": work}):
        after = dispatch([step("a")])
        await moon.submit(after)
        assert (await moon.wait_terminal(after.workflow_id, 20)).status == "completed"


async def test_a_deleted_engine_consumer_is_made_again(
    moon: Engine, nc: Client, js: JetStreamContext, space: Space
) -> None:
    from moon.engine import ENGINE_CONSUMER  # noqa: PLC0415

    await js.delete_consumer(space.stream("MOON_CMD"), space.consumer(ENGINE_CONSUMER))

    async def back() -> bool:
        try:
            await js.consumer_info(space.stream("MOON_CMD"), space.consumer(ENGINE_CONSUMER))
        except Exception:
            return False
        return moon.consuming

    await fw.wait_for(back, 15)
    # And it takes commands again: an engine-signed timer for a workflow nobody knows.
    timer = FireTimer(command_id="t", workflow_id="nobody", at_ms=now_ms(), kind="step_timeout",
                      step="a", attempt=1)
    await js.publish(space.subject("moon.cmd.nobody.fire_timer"),
                     seal_command(tw.trust_for(space).moon, timer))
    audits = await refusals(js, space, 1)
    assert audits and audits[0].reason is Reason.UNKNOWN_WORKFLOW


async def test_a_work_order_the_engine_did_not_sign_is_never_run(
    moon: Engine, nc: Client, js: JetStreamContext, space: Space
) -> None:
    from moon.effects import ORDERS  # noqa: PLC0415
    from streams.moon_events import WorkOrder  # noqa: PLC0415

    ran: list[str] = []

    async def work(ctx: StepContext) -> Result:
        ran.append(ctx.key)
        return Result(output=b"ok")

    async with worker(nc, space, {"work": work}, executor_id="x1", capacity=1):
        forged = WorkOrder(workflow_id="evil", step="a", attempt=1, capability="work",
                           executor="x1", deadline_ms=now_ms() + 60_000, timeout_ms=60_000,
                           idempotency_key="evil/a/1", params=b"rm -rf /")
        subject = space.subject("work.exec.x1")
        await js.publish(subject, ORDERS.encode(forged), headers={"Nats-Msg-Id": "f1"})
        await js.publish(subject, sign_statement(stranger(), b"moon.order.v1",  # type: ignore[arg-type]
                                                 ORDERS.encode(forged)),
                         headers={"Nats-Msg-Id": "f2"})
        # Then a genuine workflow on the same executor, one order at a time: once it is done,
        # both forged orders have been taken and refused.
        genuine = dispatch([step("a", executor="x1")])
        await moon.submit(genuine)
        assert (await moon.wait_terminal(genuine.workflow_id, 20)).status == "completed"
    assert ran == [f"{genuine.workflow_id}/a/1"]
