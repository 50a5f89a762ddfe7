"""Traces against a real nats-server: the example chain planned, allocated, dispatched and run
through both gates, MAESTRO, the engine and an executor, seen by the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import http.server
import subprocess
import sys
import threading

import structlog
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from maestro.gateway import maestro_gate
from maestro.service import Allocated, Maestro
from moon import replay, tracing
from moon.authority import FromExecutor
from moon.gateway import moon_gate
from moon.journal import journal
from moon.service import running
from moon.worker import NonRetryable, Result
from streams import telemetry
from streams.moon_events import CompleteStep, Dispatch
from streams.replies import Refusal
from streams.tracing import SpanRecord, attempt_span, dispatch_span, gate_span

from .. import walls as tw
from ..maestro.test_replan import GOAL, offers
from ..moon.engine_world import engine, worker
from ..moon.fault_world import ROOT

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE, CALLER_SPAN = CALLER[3:35], CALLER[36:52]
log = structlog.get_logger("test.executor")


class Collected(SpanExporter):
    """The SDK's in-memory exporter, plus an event to await a span by name."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.arrived = asyncio.Event()
        self.wanted = ""

    def export(self, spans):  # type: ignore[no-untyped-def]
        self.spans.extend(spans)
        if any(s.name == self.wanted for s in spans):
            self.arrived.set()
        return SpanExportResult.SUCCESS

    async def wait_for(self, name: str) -> None:
        self.wanted = name
        if not any(s.name == name for s in self.spans):
            await asyncio.wait_for(self.arrived.wait(), 30)


def ids(span: ReadableSpan) -> tuple[str, str, str]:
    parent = f"{span.parent.span_id:016x}" if span.parent else ""
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}", parent


async def test_one_dispatch_of_the_example_goal_is_one_trace_and_replays_add_nothing(
    nc, js, space
):
    trust = tw.trust_for(space)
    exporter = Collected()
    telemetry.install(SimpleSpanProcessor(exporter), service_name="test")

    async def handler(ctx):
        log.info("working", key=ctx.key)
        return Result(output=ctx.order.step.encode())

    async def live_offers():
        return [o for o in offers() if o.executor == "x1"]

    maestro = Maestro(nc, trust.maestro, trust.maestro_grant, trust.moon.did, live_offers,
                      space=space)
    try:
        with structlog.testing.capture_logs(processors=[
                structlog.contextvars.merge_contextvars, telemetry.add_trace_ids]) as logs:
            async with engine(nc, space) as eng, worker(nc, space, {"work": handler}):
                moon = moon_gate(nc, eng, signer=trust.moon, trust=trust.trust_for(trust.moon))
                planner = maestro_gate(nc, maestro, signer=trust.maestro,
                                       trust=trust.trust_for(trust.maestro))
                async with moon.serving(), planner.serving():
                    client = tw.operator_client(nc, space)
                    planned = await client.call("maestro.plan", {"goal": GOAL, "plan_id": "t1"},
                                                request_id="plan-t1", traceparent=CALLER)
                    assert not isinstance(planned, Refusal), planned
                    allocated = await client.call("maestro.allocate", {"plan_id": "t1"},
                                                  request_id="alloc-t1", traceparent=CALLER)
                    assert not isinstance(allocated, Refusal), allocated
                    wf = allocated.result(Allocated).workflow_id
                    final = await eng.wait_terminal(wf, 30)
                    assert final.status == "completed"
                    await exporter.wait_for("moon.workflow")
                    first = list(exporter.spans)

                    # Again, every way a fact can come back: the caller's retry (the gate
                    # answers from its store), the journal's commands redelivered to the
                    # engine, a replay with verification (re-decides every command).
                    again = await client.call("maestro.allocate", {"plan_id": "t1"},
                                              request_id="alloc-t1", traceparent=CALLER)
                    assert not isinstance(again, Refusal), again
                    loaded = await journal(js, space, tw.walls_for(space, writer=False)).read(wf)
                    decisions = [item.value for item in loaded.items]
                    x1 = await eng.registry.fetch("x1")
                    assert x1 is not None
                    for decision in decisions:
                        command = decision.command
                        source = None if isinstance(command, Dispatch) else FromExecutor(x1)
                        if isinstance(command, Dispatch | CompleteStep):
                            outcome = await eng.submit(command, source=source, redelivered=True)
                            assert not isinstance(outcome, Refusal), outcome
                            assert outcome.events == [] or outcome.duplicate
                    assert replay.verify(decisions) == []
                    replay.fold(decisions)
                    await eng.state(wf)
                    await nc.flush()
                    assert exporter.spans == first, [s.name for s in exporter.spans[len(first):]]
    finally:
        telemetry.shutdown()

    spans = {ids(s)[1]: s for s in first}
    assert len(spans) == len(first), "a span id was emitted twice"
    assert {ids(s)[0] for s in first} == {TRACE}, "one trace, the caller's"
    by_name: dict[str, list[ReadableSpan]] = {}
    for s in first:
        by_name.setdefault(s.name, []).append(s)
    assert sorted((n, len(v)) for n, v in by_name.items()) == sorted([
        ("maestro/plan", 1), ("maestro.plan", 1), ("maestro.solve", 1), ("maestro/allocate", 1),
        ("moon/dispatch", 1), ("moon.dispatch", 1), ("moon.attempt", 3), ("moon.step", 3),
        ("moon.workflow", 1)])

    def parent_name(span: ReadableSpan) -> str:
        parent = ids(span)[2]
        return "caller" if parent == CALLER_SPAN else spans[parent].name

    assert {s.name: parent_name(s) for s in first if s.name != "moon.step"} == {
        "maestro/plan": "caller", "maestro.plan": "maestro/plan", "maestro.solve": "maestro.plan",
        "maestro/allocate": "caller", "moon/dispatch": "maestro/allocate",
        "moon.dispatch": "moon/dispatch", "moon.attempt": "moon.dispatch",
        "moon.workflow": "moon.dispatch"}
    assert ids(by_name["moon/dispatch"][0])[1] == gate_span("moon", f"dispatch-{'t1'}")
    assert ids(by_name["moon.dispatch"][0])[1] == dispatch_span(wf)
    for step_run in by_name["moon.step"]:
        step, attempt = step_run.attributes["moon.step"], step_run.attributes["moon.attempt"]
        assert ids(step_run)[2] == attempt_span(wf, str(step), int(attempt))  # type: ignore[arg-type]
    assert sorted(s.attributes["moon.step"] for s in by_name["moon.attempt"]) == ["a", "b", "c"]
    # The engine's spans are exactly those its journal rebuilds (same ids, same times).
    rebuilt = tracing.of_journal((item.seq, item.value) for item in loaded.items)
    engine_spans = [s for s in first if s.name.startswith("moon.") and s.name != "moon.step"]
    assert sorted(r.span_id for r in rebuilt) == sorted(ids(s)[1] for s in engine_spans)

    # Logs name the trace and the workflow: the executor's own lines inside a step.
    working = [e for e in logs if e["event"] == "working"]
    assert len(working) == 3
    assert all(e["trace_id"] == TRACE and e["workflow_id"] == wf for e in working)
    # ...and the engine's line per step transition.
    said = [e for e in logs if e["event"] in ("step_started", "step_completed")
            and e.get("workflow") == wf]
    assert len(said) == 6 and all(e["trace_id"] == TRACE for e in said), said


async def test_a_failure_replanned_is_in_the_same_trace(nc, js, space):
    """The example chain with one injected failure: b fails for good on x1, MAESTRO replans
    b and c onto x2; the deviation, both revisions' spans and the new attempt join the trace."""
    trust = tw.trust_for(space)
    exporter = Collected()
    telemetry.install(SimpleSpanProcessor(exporter), service_name="test")

    async def flaky(ctx):
        if ctx.order.step == "b":
            raise NonRetryable("injected")
        return Result(output=b"ok")

    async def steady(ctx):
        return Result(output=b"ok")

    async def live_offers():
        return offers()

    maestro = Maestro(nc, trust.maestro, trust.maestro_grant, trust.moon.did, live_offers,
                      space=space)
    try:
        async with engine(nc, space) as eng, worker(nc, space, {"work": flaky}), \
                worker(nc, space, {"work": steady}, executor_id="x2"):
            moon = moon_gate(nc, eng, signer=trust.moon, trust=trust.trust_for(trust.moon))
            planner = maestro_gate(nc, maestro, signer=trust.maestro,
                                   trust=trust.trust_for(trust.maestro))
            async with moon.serving(), planner.serving(), running(
                    lambda ready: maestro.run_replanner(ready=ready), maestro.stop):
                client = tw.operator_client(nc, space)
                for method, body in (("maestro.plan", {"goal": GOAL, "plan_id": "t2"}),
                                     ("maestro.allocate", {"plan_id": "t2"})):
                    reply = await client.call(method, body, traceparent=CALLER)
                    assert not isinstance(reply, Refusal), reply
                wf = reply.result(Allocated).workflow_id
                final = await eng.wait_terminal(wf, 60)
                await exporter.wait_for("moon.workflow")
    finally:
        telemetry.shutdown()
    assert final.status == "completed" and final.steps["b"].executor == "x2"
    assert {ids(s)[0] for s in exporter.spans} == {TRACE}
    spans = {ids(s)[1]: s for s in exporter.spans}
    assert len(spans) == len(exporter.spans)

    def named(name: str) -> list[ReadableSpan]:
        return [s for s in exporter.spans if s.name == name]

    def parent(span: ReadableSpan) -> str:
        return spans[ids(span)[2]].name

    (deviation,) = named("moon.deviation")
    assert deviation.attributes["moon.deviation"] == "failed"
    assert ids(deviation)[2] == attempt_span(wf, "b", 1)
    (revised,) = named("maestro.replan")
    assert parent(revised) == "moon.dispatch" and revised.attributes["maestro.revision"] == 1
    assert sorted(parent(s) for s in named("maestro.solve")) == ["maestro.plan", "maestro.replan"]
    (applied,) = named("moon.replan")
    assert parent(applied) == "moon.dispatch"
    attempts = {(s.attributes["moon.step"], s.attributes["moon.attempt"]): s
                for s in named("moon.attempt")}
    assert sorted(attempts) == [("a", 1), ("b", 1), ("b", 2), ("c", 1)]
    assert attempts[("b", 1)].status.description == "injected"
    assert attempts[("b", 2)].attributes["moon.executor"] == "x2"
    runs = {(s.attributes["moon.step"], s.attributes["moon.attempt"]): s
            for s in named("moon.step")}
    assert sorted(runs) == sorted(attempts)
    assert runs[("b", 1)].status.description == "NonRetryable: injected"


class _Collector(http.server.BaseHTTPRequestHandler):
    bodies: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.bodies.append((self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_otlp_export_goes_where_the_environment_says(monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert telemetry.configure("otlp-test")
        telemetry.emit([SpanRecord(name="moon.dispatch", trace_id=TRACE, span_id="1" * 16,
                                   parent_id=CALLER_SPAN, start_ns=1, end_ns=2)])
        telemetry.shutdown()  # flushes the batch
    finally:
        server.shutdown()
    ((path, body),) = _Collector.bodies
    assert path == "/v1/traces"
    request = ExportTraceServiceRequest.FromString(body)
    (span,) = request.resource_spans[0].scope_spans[0].spans
    assert span.span_id.hex() == "1" * 16 and span.trace_id.hex() == TRACE
    assert span.parent_span_id.hex() == CALLER_SPAN


def test_without_an_endpoint_nothing_is_imported_or_exported():
    code = (
        "import sys\n"
        "from streams import telemetry\n"
        "import moon.engine, moon.worker, envelope.gate, maestro.service\n"
        "assert not telemetry.configure('x')\n"
        "assert not telemetry.enabled()\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk',"
        " 'opentelemetry.exporter', 'streams.otel'))]\n"
        "assert not loaded, loaded\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          check=False, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
