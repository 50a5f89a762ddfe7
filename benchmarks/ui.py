"""The web UI's answers against its 200 ms target: a workflow of 1,000 steps, a list of 10,000.

Run: .venv/bin/python benchmarks/ui.py (or -m benchmarks.ui)
    [--steps 1000] [--workflows 10000] [--n 30]

One embedded nats-server in this process. The data is real and signed: a 1,000-step workflow's
journal (dispatch, then a start and a completion per step, one failed attempt retried; decided
by the engine's own `decide` and signed with the engine's key, as the engine writes it), its
plan in PLANS (signed as MAESTRO's), and 10,000 index entries in the `moon_workflows` KV. The
surfaces' HTTP app (with the UI) serves on a loopback uvicorn; a client times each endpoint
`--n` times over HTTP. The first (cold) request of a page is reported apart: it verifies the
whole journal once; later ones read only what is new.
"""

from __future__ import annotations

# ruff: noqa: E402 - sys.path is fixed before the packages are imported
import sys
from pathlib import Path

# Run as a file, this folder would be first on sys.path and benchmarks/envelope.py would
# shadow the envelope package: drop the folder (as benchmarks/moon.py does).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import argparse
import asyncio
import logging
import statistics
import tempfile
import time

import httpx
import msgspec
import structlog
import uvicorn
from nats.js import JetStreamContext
from starlette.applications import Starlette

from envelope.local import LocalTrust, local_trust
from maestro.journals import SignedPlans
from maestro.plan import Assignment, Plan
from moon.index import WorkflowSummary
from moon.journal import journal
from moon.local import local_walls
from moon.workflow import apply, decide, initial
from streams import subjects
from streams.broker import EmbeddedBroker, free_port, open_connection
from streams.config import PLANS, WORKFLOWS, Topology, ensure_streams
from streams.moon_events import (
    CompleteStep,
    Decision,
    Dispatch,
    FailStep,
    FireTimer,
    MoonCommand,
    RetryPolicy,
    StartStep,
    StepSpec,
    significant_kind,
)
from streams.plan_events import PlanBatch, PlanProposed
from streams.store import Appended, Layout
from streams.subjects import Space
from surfaces.forward import Gateway
from surfaces.http import http_routes
from surfaces.reads import Reads

TARGET_MS = 200.0
WIDTH = 50  # steps per layer of the DAG: each step needs one step of the layer before


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def write_workflow(js: JetStreamContext, space: Space, trust: LocalTrust, workflow_id: str,
                         *, plan_id: str, steps: int) -> int:
    """A finished workflow of `steps` steps, journaled message by message as the engine does."""
    store = journal(js, space, local_walls(trust, writer=True))
    specs = tuple(StepSpec(id=f"s{k:04d}", capability="work",
                           needs=(f"s{k - WIDTH:04d}",) if k >= WIDTH else (),
                           retry=RetryPolicy(maximum_attempts=3, initial_interval_ms=0))
                  for k in range(steps))
    t = 1_000_000_000_000
    state, version, n = initial, 0, 0

    async def submit(command: MoonCommand) -> None:
        nonlocal state, version, n
        events = decide(command, state)
        assert isinstance(events, list), events
        decision = Decision(command=command, events=events)
        appended = await store.append(workflow_id, decision, expected=version,
                                      key=command.command_id, kind=significant_kind(events))
        assert isinstance(appended, Appended), appended  # one writer: never a conflict
        version, state, n = appended.seq, apply(state, decision), n + 1

    await submit(Dispatch(command_id="d", workflow_id=workflow_id, at_ms=t, steps=specs,
                          plan_id=plan_id, deadline_ms=t + steps * 1000))
    for k, spec in enumerate(specs):
        t += 10
        attempt = state.steps[spec.id].attempt
        if k == steps // 2:  # one failed attempt, retried
            await submit(StartStep(command_id=f"f{k}", workflow_id=workflow_id, at_ms=t,
                                   step=spec.id, attempt=attempt, executor="x1"))
            await submit(FailStep(command_id=f"e{k}", workflow_id=workflow_id, at_ms=t + 5,
                                  step=spec.id, attempt=attempt, error="injected"))
            t += 10
            attempt = state.steps[spec.id].attempt
            if state.steps[spec.id].status == "backoff":  # the retry timer fires at once
                await submit(FireTimer(command_id=f"r{k}", workflow_id=workflow_id, at_ms=t,
                                       kind="retry_backoff", step=spec.id,
                                       attempt=state.steps[spec.id].attempt + 1))
                attempt = state.steps[spec.id].attempt
        await submit(StartStep(command_id=f"s{k}", workflow_id=workflow_id, at_ms=t,
                               step=spec.id, attempt=attempt, executor=f"x{k % 4}"))
        await submit(CompleteStep(command_id=f"c{k}", workflow_id=workflow_id, at_ms=t + 8,
                                  step=spec.id, attempt=attempt,
                                  result=f"did {spec.id}".encode()))
    assert state.status == "completed", state.status
    kv = await js.key_value(space.bucket(WORKFLOWS.name))
    await kv.put(workflow_id, msgspec.json.encode(WorkflowSummary(
        workflow_id=workflow_id, status="completed", steps=steps, completed=steps,
        version=version, updated_ms=t, plan_id=plan_id)))
    plans = SignedPlans(js, Layout(
        stream=space.stream(PLANS.name),
        subject=lambda plan, kind: space.subject(subjects.plan_event(plan, kind)),
        filter=lambda plan: space.subject(subjects.plan_events(plan)),
    ), trust.maestro, planners=trust.planners)  # fmt: skip
    plan = Plan(status="optimal", makespan=steps * 10, assignments=tuple(
        Assignment(step=s.id, executor=f"x{k % 4}", start=k * 10, end=k * 10 + 8)
        for k, s in enumerate(specs)))
    await plans.append(plan_id, PlanBatch(command_id="plan-1", events=[PlanProposed(
        at_ms=t, plan_id=plan_id, goal=b"{}", offers=b"[]", plan=msgspec.json.encode(plan))]),
        expected=0, key="plan-1", kind="proposed")
    return n


async def write_index(js: JetStreamContext, space: Space, count: int) -> None:
    kv = await js.key_value(space.bucket(WORKFLOWS.name))
    statuses = ("completed", "completed", "completed", "failed", "running")
    for start in range(0, count, 500):
        await asyncio.gather(*(kv.put(f"bench-{k:05d}", msgspec.json.encode(WorkflowSummary(
            workflow_id=f"bench-{k:05d}", status=statuses[k % 5], steps=8, completed=8,
            version=k + 1, updated_ms=1_700_000_000_000 + k * 1000,
            plan_id=f"plan-{k % 100}"))) for k in range(start, min(start + 500, count))))


async def browser_timings(base: str, steps: int, n: int) -> None:
    """Navigation to the page drawn (the list's rows, the workflow's Gantt), in Chromium."""
    import shutil  # noqa: PLC0415

    from playwright.async_api import async_playwright  # noqa: PLC0415

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        print("no chromium: browser timings skipped")
        return
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    pages = {"list page (browser)": ("/ui/", "#workflows tbody tr"),
             f"workflow {steps} steps (browser)": ("/ui/workflows/big", "#gantt")}
    async with async_playwright() as play:
        browser = await play.chromium.launch(executable_path=path, args=flags)
        page = await browser.new_page(viewport={"width": 1500, "height": 1000})
        for name, (url, selector) in pages.items():
            took = []
            for _ in range(n):
                t = time.perf_counter()
                await page.goto(base + url)
                await page.wait_for_selector(selector, timeout=60_000)
                took.append((time.perf_counter() - t) * 1000)
            median = statistics.median(took)
            print(f"{name:<34}{'':>1}{median:>9.1f}{max(took):>9.1f}{median / TARGET_MS:>8.2f}"
                  "  (median, max: navigation to drawn)")
        await browser.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--n", type=int, default=30, help="timed requests per endpoint")
    parser.add_argument("--browser", action="store_true",
                        help="also time the pages drawn in headless Chromium (playwright)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    space = Space("uibench")
    with tempfile.TemporaryDirectory(prefix="ui-bench-") as tmp:
        broker = EmbeddedBroker(data_dir=Path(tmp) / "nats").start()
        nc = await open_connection(broker.url, name="ui-bench")
        server = None
        try:
            js = nc.jetstream()
            await ensure_streams(js, Topology(space=space))
            trust = local_trust(Path(tmp) / "home")
            began = time.perf_counter()
            messages = await write_workflow(js, space, trust, "big", plan_id="big-plan",
                                            steps=args.steps)
            await write_index(js, space, args.workflows)
            print(f"wrote a {args.steps}-step workflow ({messages} signed journal messages) and "
                  f"{args.workflows} index entries in {time.perf_counter() - began:.1f}s")
            reads = Reads(js, space, engines=trust.engines, planners=trust.planners)
            app = Starlette(routes=http_routes(Gateway(nc, trust.services, space=space), reads))
            port = free_port()
            server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                   log_level="warning"))
            task = asyncio.ensure_future(server.serve())
            while not server.started:  # noqa: ASYNC110 - uvicorn has no started event
                await asyncio.sleep(0.02)
            endpoints = {
                "list page 1 (10k)": "/ui/api/workflows",
                "list filtered": "/ui/api/workflows?status=failed&plan=plan-8&page=2&per_page=5",
                "list search": "/ui/api/workflows?q=bench-0999",
                "list last page": "/ui/api/workflows?page=200",
                f"workflow ({args.steps} steps)": "/ui/api/workflows/big",
                "journal (last 300)": "/ui/api/workflows/big/events?last=1&limit=300",
                "plan": "/ui/api/plans/big-plan",
                "page shell": "/ui/workflows/big",
            }
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                print(f"{'endpoint':<26}{'cold ms':>9}{'median':>9}{'p99':>9}{'/200ms':>8}"
                      f"{'bytes':>10}")
                for name, path in endpoints.items():
                    t = time.perf_counter()
                    first = await http.get(path)
                    cold = (time.perf_counter() - t) * 1000
                    assert first.status_code == 200, (path, first.text[:300])
                    took = []
                    for _ in range(args.n):
                        t = time.perf_counter()
                        answer = await http.get(path)
                        took.append((time.perf_counter() - t) * 1000)
                        assert answer.status_code == 200
                    median = statistics.median(took)
                    print(f"{name:<26}{cold:>9.1f}{median:>9.1f}{pct(took, 0.99):>9.1f}"
                          f"{median / TARGET_MS:>8.2f}{len(first.content):>10}")
            if args.browser:
                await browser_timings(f"http://127.0.0.1:{port}", args.steps, max(3, args.n // 5))
            server.should_exit = True
            await task
        finally:
            await nc.close()
            broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
