"""Fault injection against a real nats-server: kill -9 the engine, the executor and the broker;
compensation, deadlines across an engine restart, and bad input that must be refused and audited.

Side effects are counted by idempotency key (`workflow/step/attempt`): a completed attempt never
runs twice; an attempt may run twice only if its first run never completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from moon import replay
from moon.clock import local_ms as now_ms
from moon.worker import NonRetryable, Result, StepContext
from streams.audit import AuditRecord
from streams.broker import open_connection
from streams.config import Topology, ensure_streams
from streams.moon_events import (
    Compensate,
    CompleteStep,
    Deviation,
    FailStep,
    RetryPolicy,
    StepCheckpointed,
    StepCompensated,
    StepCompleted,
    StepScheduled,
    StepTimedOut,
)
from streams.replies import Reason, Refusal

from .. import walls as tw
from . import fault_world as fw
from .engine_world import dispatch, engine, step, worker

FAST_RETRY = RetryPolicy(maximum_attempts=5, initial_interval_ms=10)


def completed_keys(decisions) -> set[str]:  # type: ignore[no-untyped-def]
    keys = set()
    for decision in decisions:
        for event in decision.events:
            if isinstance(event, StepCompleted):
                keys.add(f"{decision.command.workflow_id}/{event.step}/{event.attempt}")
    return keys


def events_of(decisions, kind):  # type: ignore[no-untyped-def]
    return [e for d in decisions for e in d.events if isinstance(e, kind)]


async def check_journal(js, space, wf: str, final) -> list:  # type: ignore[no-untyped-def]
    decisions = await fw.decisions(js, space, wf)
    assert replay.fold(decisions) == final
    assert replay.verify(decisions) == []
    return decisions


# --- kill -9 the engine -----------------------------------------------------------------------


@pytest.mark.slow
async def test_engine_killed_9_twenty_times_loses_nothing_and_reruns_nothing(
    nats_url, nc, js, space, tmp_path: Path
):
    rng = random.Random(20240601)
    await fw.short_ack_wait_engine_consumer(js, space, ack_wait_s=1.0)
    runs: Counter[str] = Counter()

    async def work(ctx: StepContext) -> Result:
        runs[ctx.key] += 1
        await asyncio.sleep(rng.uniform(0.005, 0.03))
        return Result(output=ctx.order.step.encode(), tokens=1)

    workflows: list[str] = []
    seen: dict[str, list[tuple[int, bytes]]] = {}
    log = tmp_path / "engine.log"
    async with worker(nc, space, {"work": work}, capacity=16):
        for cycle in range(20):
            for _ in range(4):  # new work arrives while engines die
                command = dispatch([step("a"), step("b", needs=("a",)), step("c", needs=("a",)),
                                    step("d", needs=("b", "c"))])
                await tw.send_dispatch(nc, space, command)  # acknowledged: must finish
                workflows.append(command.workflow_id)
            proc = fw.spawn_engine(nats_url, space, log)
            await asyncio.sleep(rng.uniform(0.6, 1.4))  # start-up is ~0.5 s: dies mid-work
            fw.kill9(proc)
            if cycle % 5 == 4:  # what a reader saw acknowledged, to compare at the end
                for wf in workflows:
                    seen[wf] = await fw.raw_journal(js, space, wf)
        proc = fw.spawn_engine(nats_url, space, log)
        try:
            finals = await fw.wait_all_terminal(js, space, workflows, timeout_s=60)
        finally:
            fw.kill9(proc)
    assert {s.status for s in finals.values()} == {"completed"}, log.read_text()[-2000:]
    for wf, final in finals.items():
        decisions = await check_journal(js, space, wf, final)
        now = await fw.raw_journal(js, space, wf)
        assert now[: len(seen.get(wf, []))] == seen.get(wf, [])  # no acknowledged event lost
        for key in completed_keys(decisions):
            assert runs[key] == 1, key
        for key, n in runs.items():
            if key.startswith(f"{wf}/") and n > 1:
                pytest.fail(f"{key} ran {n} times")


# --- kill the executor mid-step ---------------------------------------------------------------


@pytest.mark.slow
async def test_an_executor_killed_mid_step_is_retried_from_its_last_checkpoint(
    nats_url, nc, js, space, tmp_path: Path
):
    log = tmp_path / "effects.log"
    # Slow ticks and a roomy heartbeat: the kill must land mid-step (after 3 of 12 ticks are
    # journaled) even when a busy machine lags the test's reads by a second or two.
    long_step = step("long", capability="count", heartbeat_timeout_ms=3000, timeout_ms=60_000,
                     retry=FAST_RETRY)
    async with engine(nc, space) as eng:
        first = fw.spawn_counter(nats_url, space, log, executor="w1", ticks=12, tick_s=0.4)
        try:
            command = dispatch([long_step])
            await eng.submit(command)
            wf = command.workflow_id

            async def three_checkpoints() -> bool:
                return len(events_of(await fw.decisions(js, space, wf), StepCheckpointed)) >= 3

            await fw.wait_for(three_checkpoints, 20)
        finally:
            fw.kill9(first)
        killed_at = fw.counts(log, "tick")[f"{wf}/long/1"]
        assert 3 <= killed_at < 12
        # The supervisor restarts the executor under its id: the retry is bound to it (see the
        # xfail below for a pool retry after the executor never comes back).
        second = fw.spawn_counter(nats_url, space, log, executor="w1", ticks=12, tick_s=0.05)
        try:
            finals = await fw.wait_all_terminal(js, space, [wf], timeout_s=15)
        finally:
            fw.kill9(second)
    final = finals[wf]
    assert final.status == "completed"
    assert final.steps["long"].result == b"12"
    decisions = await check_journal(js, space, wf, final)
    timed_out = events_of(decisions, StepTimedOut)
    assert [(t.attempt, t.timer, t.will_retry) for t in timed_out] == [
        (1, "heartbeat_timeout", True)
    ]
    lost = [d for d in events_of(decisions, Deviation) if d.kind == "executor_lost"]
    assert lost and lost[0].step == "long"
    # the checkpoint the retry was given: the last one journaled before attempt 2 was scheduled
    last_ckpt = None
    for decision in decisions:
        for event in decision.events:
            if isinstance(event, StepCheckpointed) and event.attempt == 1:
                last_ckpt = event.state
            if isinstance(event, StepScheduled) and event.attempt == 2:
                break
        else:
            continue
        break
    begins = {p[1]: int(p[2]) for p in fw.lines(log) if p[0] == "begin"}
    assert begins[f"{wf}/long/1"] == 0
    assert last_ckpt is not None
    assert begins[f"{wf}/long/2"] == int(last_ckpt) >= 3  # ctx.resume_from of the retry
    retry_ticks = [int(p[2]) for p in fw.lines(log) if p[0] == "tick" and p[1] == f"{wf}/long/2"]
    assert retry_ticks == list(range(int(last_ckpt), 12))  # continues from there, not from 0
    assert fw.counts(log, "done") == Counter({f"{wf}/long/2": 1})


# --- kill -9 the broker -----------------------------------------------------------------------


@pytest.mark.slow
async def test_broker_killed_9_mid_run_restarts_on_its_store_and_every_workflow_finishes(
    broker, space
):
    client = await open_connection(broker.url, name="fault-broker")
    js = client.jetstream()
    await ensure_streams(js, Topology(space=space))
    runs: Counter[str] = Counter()
    done: set[str] = set()
    some_done = asyncio.Event()

    async def work(ctx: StepContext) -> Result:
        runs[ctx.key] += 1
        await asyncio.sleep(0.1)
        done.add(ctx.key)
        some_done.set()
        return Result(output=ctx.order.step.encode())

    workflows = []
    try:
        async with engine(client, space) as eng, worker(client, space, {"work": work},
                                                        capacity=4):
            for _ in range(24):
                command = dispatch([step("a"), step("b", needs=("a",)), step("c", needs=("b",))])
                await eng.submit(command)
                workflows.append(command.workflow_id)
            # Kill once a step has finished: 72 steps of 0.1 s at 4 at a time take >= 1.8 s,
            # so the broker dies mid-run however slowly the first one got going.
            await asyncio.wait_for(some_done.wait(), 30)
            seen = {wf: await fw.raw_journal(js, space, wf) for wf in workflows}
            assert 0 < len(done) < 3 * len(workflows)  # the broker dies mid-run
            await asyncio.to_thread(broker.kill)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(broker.start)
            finals = await fw.wait_all_terminal(js, space, workflows, timeout_s=60)
        assert {s.status for s in finals.values()} == {"completed"}
        for wf, final in finals.items():
            decisions = await check_journal(js, space, wf, final)
            now = await fw.raw_journal(js, space, wf)
            assert now[: len(seen[wf])] == seen[wf]
            for key in completed_keys(decisions):
                assert runs[key] == 1, key
    finally:
        await client.close()


# --- compensation -----------------------------------------------------------------------------


async def test_a_failure_after_three_steps_compensates_them_in_reverse_order(nc, js, space):
    undone: list[str] = []

    async def work(ctx: StepContext) -> Result:
        if ctx.order.step == "boom":
            raise NonRetryable("the fourth step cannot be done")
        return Result(output=ctx.order.step.encode())

    async def undo(ctx: StepContext) -> Result:
        undone.append(ctx.order.step)
        return Result(output=b"undone-" + ctx.order.step.encode())

    steps = [step("a", compensation="undo"), step("b", needs=("a",), compensation="undo"),
             step("c", needs=("b",), compensation="undo"), step("boom", needs=("c",))]
    async with engine(nc, space) as eng, worker(nc, space, {"work": work, "undo": undo}):
        command = dispatch(steps, on_failure="compensate")
        await eng.submit(command)
        final = await eng.wait_terminal(command.workflow_id, 30)
    assert final.status == "compensated"
    assert undone == ["c", "b", "a"]
    decisions = await check_journal(js, space, command.workflow_id, final)
    assert [e.step for e in events_of(decisions, StepCompensated)] == ["c", "b", "a"]
    assert {final.steps[s].status for s in "abc"} == {"compensated"}


async def test_a_failing_compensation_is_retried_then_reported_never_dropped(nc, js, space):
    tries: Counter[str] = Counter()

    async def work(ctx: StepContext) -> Result:
        return Result(output=ctx.order.step.encode())

    async def undo(ctx: StepContext) -> Result:
        tries[ctx.order.step] += 1
        if ctx.order.step == "b":
            raise RuntimeError("the refund service is down")
        return Result(output=b"ok")

    retry = RetryPolicy(maximum_attempts=3, initial_interval_ms=10)
    steps = [step("a", compensation="undo", retry=retry),
             step("b", needs=("a",), compensation="undo", retry=retry),
             step("c", needs=("b",), compensation="undo", retry=retry)]
    async with engine(nc, space) as eng, worker(nc, space, {"work": work, "undo": undo}):
        command = dispatch(steps)
        await eng.submit(command)

        async def all_done() -> bool:
            state = replay.fold(await fw.decisions(js, space, command.workflow_id))
            return state.status == "completed"

        await fw.wait_for(all_done, 20)
        await eng.submit(Compensate(command_id=f"comp-{command.workflow_id}",
                                    workflow_id=command.workflow_id, at_ms=now_ms(),
                                    reason="operator"))

        async def compensated():  # type: ignore[no-untyped-def]
            state = replay.fold(await fw.decisions(js, space, command.workflow_id))
            return state if state.status == "compensated" else None

        final = await fw.wait_for(compensated, 30)
    decisions = await check_journal(js, space, command.workflow_id, final)
    assert tries["b"] >= 2  # retried
    assert final.steps["b"].status == "compensation_failed"
    assert final.steps["a"].status == "compensated"
    assert final.steps["c"].status == "compensated"
    reported = [d for d in events_of(decisions, Deviation) if d.kind == "compensation_failed"]
    assert [d.step for d in reported] == ["b"]
    ended = decisions[-1].events[-1]
    assert getattr(ended, "failed", None) == ("b",)


# --- deadlines across an engine restart -------------------------------------------------------


@pytest.mark.slow
async def test_a_hanging_step_times_out_late_and_is_retried_or_failed_across_a_restart(
    nats_url, nc, js, space, tmp_path: Path
):
    await fw.short_ack_wait_engine_consumer(js, space)
    release = asyncio.Event()
    hanging: set[str] = set()

    async def work(ctx: StepContext) -> Result:
        if ctx.order.attempt == 1:
            hanging.add(ctx.order.workflow_id)
            await release.wait()  # hangs: only the step_timeout timer can settle it
        return Result(output=b"ok")

    log = tmp_path / "engine.log"
    async with worker(nc, space, {"work": work}, capacity=4):
        proc = fw.spawn_engine(nats_url, space, log)
        try:
            # Dispatched once the engine listens: on a loaded machine its start-up alone can
            # outlast the 1 s step timeout, and the order would reach the worker already due.
            await fw.engine_bound(js, space)
            retried = dispatch([step("s", timeout_ms=1000, retry=FAST_RETRY)])
            failing = dispatch(
                [step("s", timeout_ms=1000, retry=RetryPolicy(maximum_attempts=1))],
                on_failure="fail")
            for command in (retried, failing):
                await tw.send_dispatch(nc, space, command)

            async def both_taken() -> bool:  # claimed by the worker: nothing journals it
                return hanging == {retried.workflow_id, failing.workflow_id}

            await fw.wait_for(both_taken, 20)
        finally:
            fw.kill9(proc)
        await asyncio.sleep(2.0)  # the timers fire while no engine runs
        proc = fw.spawn_engine(nats_url, space, log)
        try:
            finals = await fw.wait_all_terminal(
                js, space, [retried.workflow_id, failing.workflow_id], timeout_s=30)
        finally:
            fw.kill9(proc)
            release.set()
    for command, status in ((retried, "completed"), (failing, "failed")):
        final = finals[command.workflow_id]
        assert final.status == status
        decisions = await check_journal(js, space, command.workflow_id, final)
        late = [d for d in events_of(decisions, Deviation) if d.kind == "late"]
        assert late and late[0].step == "s" and late[0].attempt == 1
        timed_out = events_of(decisions, StepTimedOut)
        assert timed_out[0].timer == "step_timeout"
        assert timed_out[0].will_retry is (status == "completed")
    # >= 2, not == 2: a retry decided on restart carries the timer's nominal time, so its
    # deadline may already have passed when the order is sent (see the xfail test below).
    assert finals[retried.workflow_id].steps["s"].attempt >= 2


# --- bad input --------------------------------------------------------------------------------


async def _audits(js, space, want: int, timeout_s: float = 10) -> list[tuple[str, AuditRecord]]:  # type: ignore[no-untyped-def]
    sub = await js.subscribe(space.subject("audit.moon.>"), ordered_consumer=True)
    found = []
    try:
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while len(found) < want:
                msg = await sub.next_msg(timeout=max(0.1, deadline - loop.time()))
                found.append((space.unprefix(msg.subject),
                              msgspec.json.decode(msg.data, type=AuditRecord)))
    finally:
        await sub.unsubscribe()
    return found


async def test_bad_input_is_refused_audited_and_the_engine_keeps_serving(nc, js, space):
    async def work(ctx: StepContext) -> Result:
        return Result(output=b"ok")

    async with engine(nc, space) as eng, worker(nc, space, {"work": work}) as w:
        good = dispatch([step("a")])
        await eng.submit(good)
        await eng.wait_terminal(good.workflow_id, 20)
        at = now_ms()
        unknown = await w.request(CompleteStep(
            command_id="bad-unknown-wf", workflow_id="no-such-workflow", at_ms=at, step="a",
            attempt=1))
        settled = await w.request(FailStep(
            command_id="bad-settled", workflow_id=good.workflow_id, at_ms=at, step="a",
            attempt=1, error="too late"))
        await js.publish(space.subject(f"moon.cmd.{good.workflow_id}.complete_step"),
                         b"\x00{not json at all")
        cyclic = await eng.submit(dispatch([step("x", needs=("y",)), step("y", needs=("x",))],
                                           workflow_id="cyclic"))
        dangling = await eng.submit(dispatch([step("x", needs=("ghost",))],
                                             workflow_id="dangling"))
        audits = await _audits(js, space, 3)
        after = dispatch([step("a"), step("b", needs=("a",))])  # still serving
        await eng.submit(after)
        final = await eng.wait_terminal(after.workflow_id, 20)
    assert final.status == "completed"
    assert (unknown.ok, unknown.reason) == (False, Reason.UNKNOWN_WORKFLOW.value)
    assert (settled.ok, settled.reason) == (False, Reason.ALREADY_SETTLED.value)
    # Straight to the engine a refused dispatch is a value; the gate audits it (test_gateway).
    assert isinstance(cyclic, Refusal) and cyclic.reason is Reason.CYCLE
    assert isinstance(dangling, Refusal) and dangling.reason is Reason.UNKNOWN_DEPENDENCY
    by_subject = Counter(subject for subject, _ in audits)
    assert by_subject == Counter({
        "audit.moon.complete_step.refused": 1, "audit.moon.fail_step.refused": 1,
        "audit.moon.command.refused": 1,
    }), audits
    reasons = {r.result_ref or r.method: r.reason for _, r in audits}
    assert reasons["moon.wf.no-such-workflow"] is Reason.UNKNOWN_WORKFLOW
    assert reasons[f"moon.wf.{good.workflow_id}"] is Reason.ALREADY_SETTLED
    assert reasons["command"] is Reason.WRONG_SUBJECT  # MOON_CMD takes no executor reports
    assert all(r.outcome == "refused" and r.detail for _, r in audits)
    assert await fw.decisions(js, space, "cyclic") == []
