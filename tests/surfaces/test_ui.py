"""The web UI's JSON, its event stream and its actions, against a real nats-server, a running
MOON behind its gate and MAESTRO with its replanner: a plan whose executor fails one step, so
the journal holds a deviation and a replan the page must show."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import msgspec
from starlette.applications import Starlette

from maestro.gateway import maestro_gate
from maestro.goal import Budget, CapabilityOffer, Goal, Offer, Step
from maestro.service import Maestro
from moon.engine import WorkflowSummary
from moon.gateway import moon_gate
from moon.service import running
from moon.worker import NonRetryable, Result, StepContext
from streams.config import WORKFLOWS
from surfaces.forward import Caller, Gateway, result_of
from surfaces.http import http_routes
from surfaces.reads import Reads
from surfaces.serve import serve_surfaces
from surfaces.ui.app import STREAM_LIFETIME_S
from surfaces.ui.cache import _ThreadedJournal

from .. import walls as tw
from ..moon.engine_world import engine, worker
from .world import free_port, restricted, serving, step

UI = {"X-Maestro-UI": "1", "Content-Type": "application/json"}

GOAL = Goal(
    name="chain", deadline_ms=60_000, budget=Budget(tokens=10_000, cost=100),
    steps=(Step(id="a", capability="work", duration_ms=300),
           Step(id="b", capability="work", needs=("a",), duration_ms=300),
           Step(id="c", capability="work", needs=("b",), duration_ms=300)),
)
OFFERS = [
    Offer(executor="x1", organisation="acme", capacity=2,
          capabilities=(CapabilityOffer(capability="work", duration_ms=300, rate=1),)),
    Offer(executor="x2", organisation="acme", capacity=2,
          capabilities=(CapabilityOffer(capability="work", duration_ms=300, rate=5),)),
]


@dataclass
class Stack:
    trust: object
    gateway: Gateway
    reads: Reads
    maestro: Maestro
    engine: object

    @property
    def operator(self) -> Caller:
        return Caller(self.trust.operator, (self.trust.operator_grant,))  # type: ignore[attr-defined]

    def app(self, *, caller: Caller | None = None, actions: bool = False) -> Starlette:
        return Starlette(routes=http_routes(self.gateway, self.reads, caller=caller,
                                            ui_actions=actions))


@contextlib.asynccontextmanager
async def stack(nc, space) -> AsyncIterator[Stack]:
    """MOON and MAESTRO behind their gates; x1 (cheap) fails step b once for good, x2 works."""
    trust = tw.trust_for(space)
    failed: set[str] = set()

    async def cheap(ctx: StepContext) -> Result:
        if ctx.order.step == "b" and "b" not in failed:
            failed.add("b")
            raise NonRetryable("x1: model quota exceeded (injected failure)")
        return Result(output=f"x1 did {ctx.order.step}".encode(), tokens=3)

    async def backup(ctx: StepContext) -> Result:
        return Result(output=f"x2 did {ctx.order.step}".encode(), tokens=5)

    async def offers() -> list[Offer]:
        return OFFERS

    maestro = Maestro(nc, trust.maestro, trust.maestro_grant, trust.moon.did, offers, space=space)
    async with engine(nc, space) as eng, worker(nc, space, {"work": cheap}, executor_id="x1"), \
            worker(nc, space, {"work": backup}, executor_id="x2"):
        moon = moon_gate(nc, eng, signer=trust.moon, trust=trust.trust_for(trust.moon))
        planner = maestro_gate(nc, maestro, signer=trust.maestro,
                               trust=trust.trust_for(trust.maestro))
        async with moon.serving(), planner.serving(), running(
                lambda ready: maestro.run_replanner(ready=ready), maestro.stop):
            yield Stack(trust, Gateway(nc, trust.services, space=space),
                        Reads(nc.jetstream(), space, engines=trust.engines,
                              planners=trust.planners), maestro, eng)


async def _run_goal(s: Stack, plan_id: str) -> str:
    """Planned and allocated through MAESTRO's gate, as a caller does; run to the end."""
    planned = await s.gateway.call(s.operator, "maestro.plan", msgspec.msgpack.encode(
        {"goal": msgspec.to_builtins(GOAL), "plan_id": plan_id}))
    assert planned.accepted, planned.refusal
    allocated = await s.gateway.call(s.operator, "maestro.allocate",
                                     msgspec.msgpack.encode({"plan_id": plan_id}))
    assert allocated.accepted, allocated.refusal
    workflow_id = result_of(allocated)["workflow_id"]
    final = await s.engine.wait_terminal(workflow_id, 60)  # type: ignore[attr-defined]
    assert final.status == "completed"
    return str(workflow_id)


async def test_the_workflow_page_shows_plan_versus_actual_the_deviation_and_the_replan(
        nc, js, space):
    async with stack(nc, space) as s, serving(s.app()) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as http:
        wf = await _run_goal(s, "p1")
        page = await http.get("/ui/api/workflows/" + wf)
        assert page.status_code == 200, page.text
        view = page.json()
        assert view["status"] == "completed" and view["plan_id"] == "p1"
        assert [x["id"] for x in view["steps"]] == ["a", "b", "c"]
        steps = {x["id"]: x for x in view["steps"]}
        assert steps["b"]["executor"] == "x2" and steps["b"]["result"] == "x2 did b"
        assert steps["a"]["usage"]["tokens"] == 3
        # The failed attempt on x1 and the one that replaced it on x2, each with its times.
        tries = [(a["executor"], a["outcome"]) for a in view["attempts"] if a["step"] == "b"]
        assert tries[0] == ("x1", "failed") and tries[-1] == ("x2", "completed")
        assert all(a["started_at"] <= a["ended_at"] for a in view["attempts"])
        assert [d["step"] for d in view["deviations"]] == ["b"]
        assert [r["revision"] for r in view["replans"]] == [1]
        # Planned bars: the first plan (all on x1), and revision 1's bars where it differs.
        planned = {(b["revision"], b["step"]): b["executor"] for b in view["planned"]}
        assert planned[0, "a"] == planned[0, "b"] == "x1"
        assert planned[1, "b"] == "x2"
        assert view["deadline"] == 60_000 and view["axis"]["span"] >= 60_000
        # Every journal message with its sequence number; the audit records of its requests.
        events = (await http.get(f"/ui/api/workflows/{wf}/events")).json()
        assert events["total"] == view["events"] == len(events["items"])
        seqs = [e["seq"] for e in events["items"]]
        assert seqs == sorted(seqs) and seqs[-1] == view["version"]
        assert events["items"][0]["command"] == "dispatch"
        methods = {(r["service"], r["method"]) for r in view["audit"]}
        assert {("moon", "dispatch"), ("maestro", "plan"), ("maestro", "allocate")} <= methods
        assert view["plan"]["revisions"][0]["moved"]["b"] == "x1 -> x2"
        # The plan page: the proposal, and the revision with the plan it replaced kept.
        plan = (await http.get("/ui/api/plans/p1")).json()
        assert plan["status"] == "allocated" and plan["workflow_id"] == wf
        revision = plan["revisions"][0]
        assert {a["step"]: a["executor"] for a in revision["dissent"]["assignments"]}["b"] == "x1"
        assert {a["step"]: a["executor"] for a in revision["plan"]["assignments"]}["b"] == "x2"
        assert plan["goal"]["name"] == "chain"
        assert {r["method"] for r in plan["audit"]} >= {"plan", "allocate"}
        listed = (await http.get("/ui/api/workflows", params={"plan": "p1"})).json()
        assert [r["workflow_id"] for r in listed["items"]] == [wf]
        assert (await http.get("/ui/api/workflows/nope")).status_code == 404
        assert (await http.get("/ui/api/workflows/no.pe")).json()["reason"] == "invalid_id"
        # The pages and their assets come from the package; / leads to the UI.
        home = await http.get("/", follow_redirects=False)
        assert home.status_code == 307 and home.headers["location"] == "/ui/"
        shell = await http.get(f"/ui/workflows/{wf}")
        assert shell.status_code == 200 and "/ui/static/app.js" in shell.text
        script = await http.get("/ui/static/app.js")
        assert script.status_code == 200 and "EventSource" in script.text
        again = await http.get("/ui/static/app.js",
                               headers={"If-None-Match": script.headers["etag"]})
        assert again.status_code == 304


async def _sse(http: httpx.AsyncClient, path: str, until: str,
               headers: dict[str, str] | None = None) -> list[dict]:
    """The events of a stream up to the first whose data contains `until`."""
    got = []
    async with http.stream("GET", path, headers=headers) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        event: dict = {}
        async for line in answer.aiter_lines():
            if not line:
                if event:
                    got.append(event)
                    if until in event.get("data", ""):
                        return got
                event = {}
                continue
            name, _, value = line.partition(": ")
            event[name] = value
    return got


async def test_the_event_stream_follows_the_journal_live_and_resumes_after_an_id(nc, js, space):
    async with stack(nc, space) as s, serving(s.app()) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as http:
        # Subscribed before the workflow exists: each message arrives as it is journaled, in
        # order, from the first (the stream starts at the id after the one given, 0 here).
        follow = asyncio.ensure_future(_sse(http, "/ui/api/workflows/live-1/stream",
                                            "workflow.completed"))
        _, sealed = s.gateway.seal(s.operator, "moon.dispatch", msgspec.msgpack.encode(
            {"steps": [step("s1"), step("s2", ("s1",))], "workflow_id": "live-1"}))
        answer = await s.gateway.forward("moon.dispatch", sealed)
        assert answer.accepted, answer.refusal
        events = [e for e in await asyncio.wait_for(follow, 30) if e.get("event") == "journal"]
        rows = [json.loads(e["data"]) for e in events]
        assert rows[0]["command"] == "dispatch"
        assert [int(e["id"]) for e in events] == [r["seq"] for r in rows]
        assert rows == (await http.get("/ui/api/workflows/live-1/events")).json()["items"]
        # A reconnecting browser sends the last id it saw and gets only what follows.
        resumed = await _sse(http, "/ui/api/workflows/live-1/stream", "workflow.completed",
                             headers={"Last-Event-ID": str(rows[0]["seq"])})
        assert [json.loads(e["data"]) for e in resumed if e.get("event") == "journal"] == \
            rows[1:]


async def test_actions_are_refused_when_the_ui_is_read_only(nc, js, space):
    async with stack(nc, space) as s, serving(s.app(caller=s.operator)) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as http:
        wf = await _dispatch_stuck(s, "ro-1")
        assert (await http.get("/ui/api/config")).json()["actions"] is False
        refused = await http.post(f"/ui/api/workflows/{wf}/actions/cancel", headers=UI,
                                  json={"reason": "test"})
        assert refused.status_code == 403
        assert refused.json()["reason"] == "policy_block", refused.json()
        # Nothing reached the gate: no audit record of a cancel, and the workflow still runs.
        assert not [r for r in await s.reads.audit(limit=1000) if r.method == "cancel"]
        assert (await s.reads.summary(wf)).status == "running"  # type: ignore[union-attr]


async def test_actions_go_through_the_gate_which_refuses_what_the_grant_does_not_cover(
        nc, js, space):
    async with stack(nc, space) as s:
        wf = await _dispatch_stuck(s, "act-1")
        reader = restricted(s.trust, "moon:read")  # type: ignore[arg-type]
        async with serving(s.app(caller=reader, actions=True)) as url, \
                httpx.AsyncClient(base_url=url, timeout=30) as http:
            config = (await http.get("/ui/api/config")).json()
            assert config["actions"] is True and config["available"] == []  # buttons off
            refused = await http.post(f"/ui/api/workflows/{wf}/actions/cancel", headers=UI,
                                      json={})
            assert refused.status_code == 403, refused.text
            body = refused.json()
            assert body["reason"] == "no_capability" and body["audit"].startswith("max://record/")
            records = [r for r in await s.reads.audit(limit=1000) if r.method == "cancel"]
            assert [(r.caller, r.outcome) for r in records] == [(reader.signer.did, "refused")]
        async with serving(s.app(caller=s.operator, actions=True)) as url, \
                httpx.AsyncClient(base_url=url, timeout=30) as http:
            # Not from the UI's own page: no header, another origin, or another site's DNS
            # name rebound to this address; each refused before the gate.
            bare = await http.post(f"/ui/api/workflows/{wf}/actions/cancel", json={})
            assert bare.status_code == 403 and "X-Maestro-UI" in bare.json()["detail"]
            foreign = await http.post(f"/ui/api/workflows/{wf}/actions/cancel", json={},
                                      headers=UI | {"Origin": "http://evil.test"})
            assert foreign.status_code == 403 and "cross-origin" in foreign.json()["detail"]
            rebound = await http.post(f"/ui/api/workflows/{wf}/actions/cancel", json={},
                                      headers=UI | {"Host": "evil.test:8470",
                                                    "Origin": "http://evil.test:8470"})
            assert rebound.status_code == 403 and "not this server" in rebound.json()["detail"]
            assert not [r for r in await s.reads.audit(limit=1000)
                        if r.method == "cancel" and r.caller == s.trust.operator.did]
            assert (await http.get("/ui/api/config")).json()["available"] == [
                "cancel", "compensate", "fork"]
            done = await http.post(f"/ui/api/workflows/{wf}/actions/cancel", json={},
                                   headers=UI | {"Origin": url})
            assert done.status_code == 200, done.text
            assert done.json()["result"]["status"] == "cancelled"
            forked = await http.post(f"/ui/api/workflows/{wf}/actions/fork", headers=UI,
                                     json={"at_seq": 1, "new_workflow_id": "act-1-fork"})
            assert forked.status_code == 200, forked.text
            view = (await http.get("/ui/api/workflows/act-1-fork")).json()
            assert view["forked_from"] == wf
            assert (await http.post(f"/ui/api/workflows/{wf}/actions/fork", headers=UI,
                                    json={"at_seq": "x"})).status_code == 400


async def _dispatch_stuck(s: Stack, workflow_id: str) -> str:
    """A workflow that waits for ever: its one step needs a capability nobody serves."""
    _, sealed = s.gateway.seal(s.operator, "moon.dispatch", msgspec.msgpack.encode(
        {"steps": [{"id": "a", "capability": "nobody"}], "workflow_id": workflow_id}))
    answer = await s.gateway.forward("moon.dispatch", sealed)
    assert answer.accepted, answer.refusal
    return workflow_id


async def test_the_list_filters_searches_and_pages_the_index(nc, js, space):
    kv = await js.key_value(space.bucket(WORKFLOWS.name))
    for k in range(120):
        await kv.put(f"wf-{k:03d}", msgspec.json.encode(WorkflowSummary(
            workflow_id=f"wf-{k:03d}", status="failed" if k % 10 == 0 else "completed",
            steps=3, completed=3, version=k + 1, updated_ms=1_000_000 + k,
            plan_id="px" if k < 5 else None)))
    trust = tw.trust_for(space)
    reads = Reads(js, space, engines=trust.engines, planners=trust.planners)
    app = Starlette(routes=http_routes(Gateway(nc, trust.services, space=space), reads))
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        first = (await http.get("/ui/api/workflows", params={"per_page": 50})).json()
        assert first["total"] == 120 and first["pages"] == 3 and len(first["items"]) == 50
        assert first["items"][0]["workflow_id"] == "wf-119"  # newest first
        assert first["counts"] == {"completed": 108, "failed": 12}
        last = (await http.get("/ui/api/workflows", params={"per_page": 50, "page": 3})).json()
        assert [r["workflow_id"] for r in last["items"]][-1] == "wf-000"
        failed = (await http.get("/ui/api/workflows", params={"status": "failed"})).json()
        assert failed["total"] == 12 and {r["status"] for r in failed["items"]} == {"failed"}
        assert (await http.get("/ui/api/workflows", params={"q": "WF-04"})).json()["total"] == 10
        assert (await http.get("/ui/api/workflows", params={"plan": "px"})).json()["total"] == 5
        since = (await http.get("/ui/api/workflows",
                                params={"since": 1_000_100, "until": 1_000_109})).json()
        assert since["total"] == 10
        # The index is read forward from where it was: a change shows, a delete goes.
        await kv.put("wf-000", msgspec.json.encode(WorkflowSummary(
            workflow_id="wf-000", status="running", steps=3, completed=1, version=200,
            updated_ms=2_000_000)))
        await kv.delete("wf-001")
        now = (await http.get("/ui/api/workflows", params={"per_page": 1})).json()
        assert now["items"][0]["workflow_id"] == "wf-000" and now["total"] == 119
        # The index stream names what changed, after the cursor the list answered with.
        follow = asyncio.ensure_future(_sse(http, f"/ui/api/stream?after={now['cursor']}",
                                            "wf-050"))
        await kv.put("wf-050", msgspec.json.encode(WorkflowSummary(
            workflow_id="wf-050", status="running", steps=3, completed=0, version=1,
            updated_ms=3_000_000)))
        got = await asyncio.wait_for(follow, 30)
        assert [json.loads(e["data"])["workflow_id"] for e in got if e.get("event")] == ["wf-050"]


async def test_a_server_that_stops_ends_its_open_event_streams(nc, js, space):
    """uvicorn waits for open responses before it stops: a browser tab following a workflow
    must not hold `maestro up` open (the stream would otherwise last STREAM_LIFETIME_S)."""
    trust = tw.trust_for(space)
    port = free_port()
    ready = asyncio.Event()
    served = asyncio.ensure_future(serve_surfaces(nc, services=trust.services, caller=None,
                                                  space=space, port=port, ready=ready))
    await asyncio.wait_for(ready.wait(), 30)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http, \
            http.stream("GET", "/ui/api/workflows/nobody-yet/stream") as answer:
        lines = answer.aiter_lines()
        assert await anext(lines) == "retry: 1000"  # the stream is open
        began = asyncio.get_running_loop().time()
        served.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(served, STREAM_LIFETIME_S / 2)
        assert asyncio.get_running_loop().time() - began < STREAM_LIFETIME_S / 2


async def test_a_message_the_engine_did_not_sign_is_shown_as_a_quarantine_not_as_history(
        nc, js, space, monkeypatch):
    """The UI reads the journal verified: a well-formed decision signed by another key (here
    claiming the step completed) stops the fold where it sits, and the page says so."""
    import os  # noqa: PLC0415

    from envelope.keys import signer_from_seed  # noqa: PLC0415
    from envelope.statement import DECISION, sign_statement  # noqa: PLC0415
    from streams import subjects  # noqa: PLC0415
    from streams.moon_events import CompleteStep, Decision, StepCompleted  # noqa: PLC0415

    async with stack(nc, space) as s, serving(s.app()) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as http:
        wf = await _dispatch_stuck(s, "forged-1")
        before = (await http.get(f"/ui/api/workflows/{wf}")).json()  # cached up to here
        forged = Decision(command=CompleteStep(command_id="x", workflow_id=wf, at_ms=1,
                                               step="a", attempt=1),
                          events=[StepCompleted(at_ms=1, step="a", attempt=1)])
        data = sign_statement(signer_from_seed(os.urandom(32)), DECISION,
                              msgspec.json.encode(forged))
        ack = await js.publish(space.subject(subjects.workflow_event(wf, "step.completed")),
                               data)
        view = (await http.get(f"/ui/api/workflows/{wf}")).json()
        assert view["quarantined"]["seq"] == ack.seq and view["shown_status"] == "quarantined"
        assert view["steps"][0]["status"] != "completed"
        assert view["version"] == before["version"]  # nothing after the forgery is folded
        events = (await http.get(f"/ui/api/workflows/{wf}/events")).json()
        assert ack.seq not in [e["seq"] for e in events["items"]]
    # A cold read verifies in threads, in parts: the same verdict, the same place.
    monkeypatch.setattr(_ThreadedJournal, "CHUNK", 1)
    async with serving(Starlette(routes=http_routes(
            s.gateway, s.reads))) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        cold = (await http.get(f"/ui/api/workflows/{wf}")).json()
        assert cold["quarantined"]["seq"] == ack.seq and cold["version"] == before["version"]
