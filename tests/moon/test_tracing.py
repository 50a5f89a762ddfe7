"""A workflow's spans read off its journal, without a broker: ids, mapping, the once-only hook."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from moon import tracing
from moon.journal import DECIDER, DECISIONS, _kind, _pack
from moon.workflow import apply, initial, work_orders
from streams import telemetry
from streams.decider import Decided, Runner
from streams.moon_events import (
    Cancel,
    Compensate,
    CompleteStep,
    Decision,
    Dispatch,
    FailStep,
    FireTimer,
    MoonCommand,
    Replan,
    RetryPolicy,
    StartStep,
    StepSpec,
)
from streams.store import Layout, MemoryStore
from streams.tracing import (
    Parent,
    attempt_span,
    derive_span_id,
    derive_trace_id,
    dispatch_span,
    parse_traceparent,
)

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE, CALLER_SPAN = CALLER[3:35], CALLER[36:52]
WF = "wf-t"


def chain(**retry: int) -> tuple[StepSpec, ...]:
    policy = RetryPolicy(initial_interval_ms=0, **retry)
    return (StepSpec(id="a", capability="work", retry=policy),
            StepSpec(id="b", capability="work", needs=("a",), retry=policy),
            StepSpec(id="c", capability="work", needs=("b",), retry=policy))


def runner() -> Runner[MoonCommand, object, object, Decision]:
    layout = Layout(stream="MOON", subject=lambda wf, kind: f"moon.wf.{wf}.{kind}",
                    filter=lambda wf: f"moon.wf.{wf}.>")
    return Runner(decider=DECIDER, store=MemoryStore(layout, DECISIONS), pack=_pack,
                  apply=apply, kind=_kind, journaled=tracing.journaled)  # type: ignore[arg-type]


async def run(r: Runner, command: MoonCommand) -> Decided:  # type: ignore[type-arg]
    outcome = await r.handle(WF, command, key=command.command_id)
    assert isinstance(outcome, Decided), outcome
    return outcome


async def run_chain(r: Runner, *, traceparent: str | None = CALLER,  # type: ignore[type-arg]
                    fail_b_once: bool = False) -> None:
    at = 1_000
    await run(r, Dispatch(command_id="d1", workflow_id=WF, at_ms=at, steps=chain(),
                          traceparent=traceparent))
    for step in ("a", "b", "c"):
        attempts = 2 if (fail_b_once and step == "b") else 1
        for attempt in range(1, attempts + 1):
            at += 10
            await run(r, StartStep(command_id=f"s/{step}/{attempt}", workflow_id=WF, at_ms=at,
                                   step=step, attempt=attempt, executor="x1"))
            at += 100
            if attempt < attempts:
                await run(r, FailStep(command_id=f"f/{step}/{attempt}", workflow_id=WF,
                                      at_ms=at, step=step, attempt=attempt, error="boom"))
                await run(r, FireTimer(command_id=f"t/{step}/{attempt}", workflow_id=WF,
                                       at_ms=at, kind="retry_backoff", step=step,
                                       attempt=attempt + 1))
            else:
                await run(r, CompleteStep(command_id=f"c/{step}/{attempt}", workflow_id=WF,
                                          at_ms=at, step=step, attempt=attempt))


async def journal_of(r: Runner) -> list[tuple[int, Decision]]:  # type: ignore[type-arg]
    return [(item.seq, item.value) for item in (await r.store.read(WF)).items]


# --- ids -----------------------------------------------------------------------------------


def test_ids_are_derived_from_what_they_stand_for():
    assert derive_span_id("a", 1) == derive_span_id("a", 1)
    assert derive_span_id("a", "b/c") != derive_span_id("a/b", "c")
    assert len(derive_span_id("x")) == 16 and len(derive_trace_id("x")) == 32
    assert int(derive_span_id("x"), 16) != 0
    assert attempt_span(WF, "a", 1) != attempt_span(WF, "a", 2) != attempt_span("wf-u", "a", 2)


def test_a_traceparent_is_parsed_strictly():
    assert parse_traceparent(CALLER) == Parent(TRACE, CALLER_SPAN, sampled=True)
    assert parse_traceparent(CALLER[:-2] + "00") == Parent(TRACE, CALLER_SPAN, sampled=False)
    assert parse_traceparent(CALLER.upper()) is None
    assert parse_traceparent("00-" + "0" * 32 + "-b7ad6b7169203331-01") is None
    assert parse_traceparent("ff" + CALLER[2:]) is None
    assert parse_traceparent("") is None and parse_traceparent(None) is None


# --- the mapping ---------------------------------------------------------------------------


async def test_a_three_step_chain_is_one_trace_under_the_caller():
    r = runner()
    with telemetry.recording() as emitted:
        await run_chain(r)
    names = [s.name for s in emitted]
    assert names == ["moon.dispatch", "moon.attempt", "moon.attempt", "moon.attempt",
                     "moon.workflow"]
    assert {s.trace_id for s in emitted} == {TRACE}
    dispatch = emitted[0]
    assert dispatch.span_id == dispatch_span(WF) and dispatch.parent_id == CALLER_SPAN
    attempts = emitted[1:4]
    assert [s.span_id for s in attempts] == [attempt_span(WF, x, 1) for x in "abc"]
    assert all(s.parent_id == dispatch.span_id for s in emitted[1:])
    a = attempts[0]
    # Scheduled at the dispatch (1000), started at 1010, completed at 1110.
    assert (a.start_ns, a.end_ns) == (1_000 * 10**6, 1_110 * 10**6)
    assert [(n.name, n.at_ns) for n in a.notes] == [("started", 1_010 * 10**6)]
    assert a.attributes["moon.step"] == "a" and a.attributes["moon.executor"] == "x1"
    assert emitted[-1].attributes["moon.status"] == "completed"
    assert len({s.span_id for s in emitted}) == len(emitted)


async def test_the_journal_rebuilds_exactly_the_spans_that_were_emitted():
    r = runner()
    with telemetry.recording() as emitted:
        await run_chain(r, fail_b_once=True)
    assert tracing.of_journal(await journal_of(r)) == emitted
    failed = [s for s in emitted if s.error]
    assert [(s.name, s.attributes["moon.step"], s.attributes["moon.attempt"], s.error)
            for s in failed] == [("moon.attempt", "b", 1, "boom")]
    assert [s.attributes["moon.will_retry"] for s in failed] == [True]


async def test_a_deviation_hangs_under_the_attempt_it_is_about():
    r = runner()
    await run(r, Dispatch(command_id="d1", workflow_id=WF, at_ms=1, steps=chain(
        maximum_attempts=1), traceparent=CALLER))
    await run(r, StartStep(command_id="s", workflow_id=WF, at_ms=2, step="a", attempt=1,
                           executor="x1"))
    with telemetry.recording() as emitted:
        await run(r, FailStep(command_id="f", workflow_id=WF, at_ms=3, step="a", attempt=1,
                              error="boom"))
    by_name = {s.name: s for s in emitted}
    assert by_name["moon.attempt"].error == "boom"
    deviation = by_name["moon.deviation"]
    assert deviation.parent_id == attempt_span(WF, "a", 1)
    assert deviation.attributes["moon.deviation"] == "failed"


async def test_replaying_and_redelivering_add_no_span():
    r = runner()
    with telemetry.recording() as emitted:
        await run_chain(r)
    with telemetry.recording() as again:
        # A fold of the journal (replay, verify, another engine's load) calls no hook.
        state = initial
        for _, decision in await journal_of(r):
            state = apply(state, decision)
        assert state.status == "completed"
        await r.load(WF, use_cache=False)
        # The same commands again: seen, so decided as nothing.
        await run(r, CompleteStep(command_id="c/c/1", workflow_id=WF, at_ms=9_999, step="c",
                                  attempt=1))
        await run(r, Dispatch(command_id="d1", workflow_id=WF, at_ms=1_000, steps=chain(),
                              traceparent=CALLER))
        # A handling that died after its append: the store holds the key, the runner reads back.
        r.cache.clear()
        fresh = runner()
        fresh.store = r.store
        dup = await fresh.store.append(WF, _pack(StartStep(
            command_id="s/a/1", workflow_id=WF, at_ms=1, step="a", attempt=1, executor="x1"),
            []), expected=0, key="s/a/1", kind="step.started")
        assert dup.duplicate  # type: ignore[union-attr]
    assert again == []
    assert len(emitted) == 5


async def test_a_dispatch_resent_in_another_trace_gets_the_first_answer():
    r = runner()
    await run(r, Dispatch(command_id="d1", workflow_id=WF, at_ms=1, steps=chain(),
                          traceparent=CALLER))
    with telemetry.recording() as emitted:
        other = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
        resent = await run(r, Dispatch(command_id="d2", workflow_id=WF, at_ms=2, steps=chain(),
                                       traceparent=other))
    assert resent.events == [] and emitted == []
    assert resent.state.dispatched.traceparent == CALLER


async def test_without_a_traceparent_the_trace_is_derived_from_the_workflow():
    r = runner()
    with telemetry.recording() as emitted:
        await run_chain(r, traceparent=None)
    assert {s.trace_id for s in emitted} == {derive_trace_id("workflow", WF)}
    assert emitted[0].parent_id == ""


async def test_work_orders_carry_the_attempt_as_the_executor_parent():
    r = runner()
    decided = await run(r, Dispatch(command_id="d1", workflow_id=WF, at_ms=1, steps=chain(),
                                    traceparent=CALLER))
    (order,) = work_orders(decided.state, decided.events)
    assert order.traceparent == f"00-{TRACE}-{attempt_span(WF, 'a', 1)}-01"


async def test_an_executor_step_is_a_child_of_its_attempt():
    r = runner()
    decided = await run(r, Dispatch(command_id="d1", workflow_id=WF, at_ms=1, steps=chain(),
                                    traceparent=CALLER))
    (order,) = work_orders(decided.state, decided.events)

    async def work() -> str:
        assert telemetry.current() == Parent(TRACE, tracing.step_span(WF, "a", 1))
        return "done"

    with telemetry.recording() as emitted:
        assert await tracing.run_step(order, "x1", work()) == "done"

        async def broken() -> None:
            raise RuntimeError("no")

        with pytest.raises(RuntimeError):
            await tracing.run_step(order, "x1", broken())
    ok, bad = emitted
    assert ok.name == "moon.step" and ok.parent_id == attempt_span(WF, "a", 1)
    assert ok.trace_id == TRACE and not ok.error and bad.error == "RuntimeError: no"
    assert telemetry.current() is None


async def test_the_sdk_exports_the_derived_ids_and_parentage():
    exporter = InMemorySpanExporter()
    telemetry.install(SimpleSpanProcessor(exporter), service_name="test")
    try:
        await run_chain(runner())
    finally:
        telemetry.shutdown()
    finished = exporter.get_finished_spans()
    assert finished[0].name == "moon.dispatch"
    by_name = {s.name: s for s in finished}
    dispatch = by_name["moon.dispatch"]
    assert f"{dispatch.context.trace_id:032x}" == TRACE
    assert f"{dispatch.context.span_id:016x}" == dispatch_span(WF)
    assert f"{dispatch.parent.span_id:016x}" == CALLER_SPAN
    for span in finished[1:]:
        assert span.parent.span_id == dispatch.context.span_id
        assert span.context.trace_id == dispatch.context.trace_id
    assert finished[1].events[0].name == "started"
    assert dispatch.resource.attributes["service.name"] == "test"
    assert not telemetry.enabled()


async def test_an_unsampled_caller_is_honoured():
    exporter = InMemorySpanExporter()
    telemetry.install(SimpleSpanProcessor(exporter))
    try:
        await run_chain(runner(), traceparent=CALLER[:-2] + "00")
    finally:
        telemetry.shutdown()
    assert exporter.get_finished_spans() == ()


async def test_compensation_and_a_second_end_are_spans_of_their_own():
    r = runner()
    undoable = (StepSpec(id="a", capability="work", compensation="undo"),)
    await run(r, Dispatch(command_id="d1", workflow_id=WF, at_ms=1, steps=undoable,
                          traceparent=CALLER))
    await run(r, StartStep(command_id="s1", workflow_id=WF, at_ms=2, step="a", attempt=1,
                           executor="x1"))
    with telemetry.recording() as emitted:
        await run(r, CompleteStep(command_id="c1", workflow_id=WF, at_ms=3, step="a",
                                  attempt=1))
        await run(r, Compensate(command_id="k", workflow_id=WF, at_ms=4, reason="undo it"))
        await run(r, StartStep(command_id="s2", workflow_id=WF, at_ms=5, step="a", attempt=2,
                               executor="x1"))
        await run(r, CompleteStep(command_id="c2", workflow_id=WF, at_ms=6, step="a",
                                  attempt=2))
    assert [(s.name, s.attributes.get("moon.status", "")) for s in emitted] == [
        ("moon.attempt", ""), ("moon.workflow", "completed"), ("moon.compensation", ""),
        ("moon.compensation.attempt", ""), ("moon.workflow", "compensated")]
    undo = emitted[3]
    assert undo.span_id == attempt_span(WF, "a", 2) and undo.attributes["moon.capability"] == "undo"
    assert len({s.span_id for s in emitted}) == len(emitted)
    assert tracing.of_journal(await journal_of(r))[1:] == emitted


async def test_a_replan_ends_the_attempt_it_moves_and_a_cancel_those_in_flight():
    r = runner()
    await run(r, Dispatch(command_id="d1", workflow_id=WF, at_ms=1, steps=chain(),
                          traceparent=CALLER, plan_id="p"))
    await run(r, StartStep(command_id="s1", workflow_id=WF, at_ms=2, step="a", attempt=1,
                           executor="x1"))
    with telemetry.recording() as emitted:
        await run(r, Replan(command_id="r1", workflow_id=WF, at_ms=3, plan_id="p", revision=1,
                            assignments={"a": "x2"}, reason="x1 is slow"))
        await run(r, Cancel(command_id="k", workflow_id=WF, at_ms=4))
    replan, moved, cut, ended = emitted
    assert replan.name == "moon.replan" and replan.attributes["moon.plan_revision"] == 1
    assert (moved.span_id, moved.error) == (attempt_span(WF, "a", 1), "superseded by attempt 2")
    assert (cut.span_id, cut.error) == (attempt_span(WF, "a", 2),
                                        "abandoned: the workflow was cancelled")
    assert ended.attributes["moon.status"] == "cancelled"
    assert tracing.of_journal(await journal_of(r))[1:] == emitted
