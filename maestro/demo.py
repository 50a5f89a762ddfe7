"""`maestro demo`: the whole system in one process on the embedded broker, for a newcomer.

Plans examples/goal.yaml against examples/executors.yaml, shows the Gantt, runs it through MOON
with one injected executor failure so the replan is visible, then prints the audit trail and
the verified replay of the journal. The data dir stays behind for `moon tail`/`moon replay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from envelope.local import local_trust
from envelope.registry import Registry
from maestro.board import Bid, Bidder
from maestro.gantt import anticipation_table, gantt
from maestro.goal import Goal, Offer, load_goal, load_offers
from maestro.plan import Plan
from maestro.planner import Outcome
from maestro.service import Allocated, Maestro
from moon import replay
from moon.engine import Engine
from moon.gateway import moon_gate
from moon.journal import journal
from moon.local import local_registry, local_walls, register_local_executor
from moon.service import running
from moon.worker import Handler, NonRetryable, Result, StepContext, Worker
from streams.audit import AuditRecord
from streams.broker import connect, provision_executor
from streams.codec import Undecodable
from streams.config import Topology, ensure_streams
from streams.jetstream_store import last_sequence, ordered_read
from streams.replies import Refusal
from streams.roles import executor_role
from streams.subjects import Space

__all__ = ["run_demo"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SPEED = 400  # demo executors run the plan's durations this many times faster
BUSY = "acme-writer"  # bids with a surcharge: it reports one job in flight at capacity 1


def _handler(offer: Offer, goal: Goal, fail_once: set[str]) -> Handler:
    durations = {c.capability: c.duration_ms for c in offer.capabilities}
    tokens = {s.id: s.tokens for s in goal.steps}
    estimates = {s.id: s.duration_ms for s in goal.steps}

    async def run(ctx: StepContext) -> Result:
        step = ctx.order.step
        if not ctx.order.compensation and f"{offer.executor}/{step}" in fail_once:
            fail_once.discard(f"{offer.executor}/{step}")
            raise NonRetryable(f"{offer.executor}: model quota exceeded (injected failure)")
        planned = durations.get(ctx.order.capability) or estimates.get(step, 1000)
        await asyncio.sleep(planned / 1000 / SPEED)
        verb = "undid" if ctx.order.compensation else "did"
        return Result(output=f"{offer.executor} {verb} {step}".encode(), tokens=tokens.get(step, 0))

    return run


async def _progress(console: Console, store: Any, wf: str, done: asyncio.Event) -> None:
    async for item in store.subscribe(store.layout.filter(wf), from_seq=1):
        if isinstance(item, Undecodable):
            continue
        for event in item.value.events:
            name = type(event).__name__
            step = getattr(event, "step", "")
            extra = getattr(event, "executor", None) or getattr(event, "kind", "") or ""
            style = "bold red" if name == "Deviation" else "bold green" if "Workflow" in name \
                else "cyan" if "Replan" in name else "dim" if "Heartbeat" in name else ""
            console.print(f"  #{item.seq:<4} {name:<22} {step:<16} {extra}", style=style,
                          markup=False)
        if done.is_set():
            return


async def _audit_trail(console: Console, js: Any, space: Space) -> None:
    stream = space.stream("AUDIT")
    end = await last_sequence(js, stream, space.subject("audit.>"))
    table = Table(title="audit trail (AUDIT stream)", title_justify="left")
    for column in ("seq", "subject", "outcome", "caller", "reason", "record"):
        table.add_column(column)
    for seq, subject, _, data in await ordered_read(js, stream, space.subject("audit.>"),
                                                    after=0, upto=end):
        record = msgspec.json.decode(data, type=AuditRecord)
        table.add_row(str(seq), subject, record.outcome, record.caller[-12:] or "(unverified)",
                      record.reason.value if record.reason else "", record.ref)
    console.print(table)


@contextlib.asynccontextmanager
async def _registry(js: Any, space: Space, trust: Any) -> AsyncIterator[Registry]:
    registry = await local_registry(js, space, trust)
    try:
        yield registry
    finally:
        await registry.stop()


async def run_demo(data_dir: Path, *, console: Console | None = None) -> int:
    console = console or Console()
    goal = load_goal(EXAMPLES / "goal.yaml")
    listed = load_offers(EXAMPLES / "executors.yaml")
    assert not isinstance(goal, Refusal) and not isinstance(listed, Refusal)
    # Every demo executor runs a Bidder below, and its board offer says so.
    offers = tuple(msgspec.structs.replace(o, bids=True) for o in listed)
    space = Space()
    trust = local_trust(data_dir)
    stamp = time.strftime("%H%M%S")
    plan_id = f"demo-{stamp}"
    console.rule(f"[bold]MAESTRO + MOON demo[/] — embedded broker in {data_dir}")
    # Every part of the story connects as its own broker user, with only its role's rights:
    # the engine, MAESTRO, each executor, and this console as the operator.
    async with connect(data_dir=data_dir, name="maestro-demo", role="operator",
                       start=True) as nc, \
            contextlib.AsyncExitStack() as market:
        js = nc.jetstream()
        await ensure_streams(js, Topology(space=space))

        async def as_role(role: str, name: str) -> Any:
            return await market.enter_async_context(connect(data_dir=data_dir, name=name,
                                                            role=role))

        engine_nc = await as_role("engine", "moon-engine")
        maestro_nc = await as_role("maestro", "maestro")
        walls = local_walls(trust, writer=True)
        registry = await market.enter_async_context(_registry(engine_nc.jetstream(), space,
                                                              trust))
        engine = Engine(engine_nc, walls=walls, registry=registry, space=space)

        async def live_offers() -> tuple[Offer, ...]:
            return offers

        maestro = Maestro(maestro_nc, trust.maestro, trust.maestro_grant, trust.moon.did,
                          live_offers, space=space, registry=registry)
        gate = moon_gate(engine_nc, engine, signer=trust.moon, trust=trust.trust_for(trust.moon))
        console.print(f"goal [bold]{goal.name}[/]: {len(goal.steps)} steps, deadline "
                      f"{(goal.deadline_ms or 0) / 1000:g}s, budget {goal.budget.cost} cost units")
        # Every demo executor answers calls for bids; MAESTRO plans at the prices they bid.
        fail_once: set[str] = set()
        handlers_of, signers, links = {}, {}, {}
        for o in offers:
            handlers_of[o.executor] = ({c.capability: _handler(o, goal, fail_once)
                                        for c in o.capabilities} | _undo(o, goal, fail_once))
            signers[o.executor] = await register_local_executor(
                js, space, trust, data_dir, o.executor, capabilities=handlers_of[o.executor],
                trust_level=o.trust)
            if (data_dir / "auth.conf").is_file():  # our embedded broker: a user of its own
                await asyncio.to_thread(provision_executor, data_dir, o.executor,
                                        list(handlers_of[o.executor]))
            links[o.executor] = await as_role(executor_role(o.executor), o.executor)
        for o in offers:
            await market.enter_async_context(
                Bidder(links[o.executor], space, o,
                       load=(lambda: 1) if o.executor == BUSY else (lambda: 0),
                       signer=signers[o.executor], planners=trust.planners))
        outcome = await maestro.plan(goal, plan_id=plan_id)
        if outcome.decision != "planned":
            for reason in outcome.reasons:
                console.print(f"refused: {reason.reason.value}: {reason.detail}", style="red")
            return 2
        await _show_plan(console, maestro, plan_id=plan_id, goal=goal, offers=offers,
                         outcome=outcome)
        victim = _victim(outcome.plan, goal, offers)
        fail_once.add(f"{victim[1]}/{victim[0]}")
        console.print(f"injecting one failure: [red]{victim[1]}[/] will fail step "
                      f"[bold]{victim[0]}[/]; MAESTRO must replan around it")
        workers = [Worker(links[o.executor], executor_id=o.executor,
                          handlers=handlers_of[o.executor],
                          signer=signers[o.executor], engines=trust.engines, space=space,
                          watts=o.watts,
                          capacity=o.capacity) for o in offers]
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(running(lambda r: engine.run(ready=r), engine.stop))
            await stack.enter_async_context(gate.serving())
            await stack.enter_async_context(
                running(lambda r: maestro.run_replanner(ready=r), maestro.stop))
            for w in workers:
                await stack.enter_async_context(running(w.run_until_ready, w.stop))
            allocated = await maestro.allocate(plan_id)
            if not isinstance(allocated, Allocated):
                console.print(f"allocation refused: {allocated}", style="red")
                return 2
            wf = allocated.workflow_id
            console.print(f"{allocated.awards} executors acknowledged their binding awards; "
                          f"allocated {allocated.orders} signed work orders; dispatched as "
                          f"[bold]{wf}[/] (audit {allocated.audit})")
            done = asyncio.Event()
            follower = asyncio.ensure_future(
                _progress(console, journal(js, space, walls), wf, done))
            final = await engine.wait_terminal(wf, 120)
            done.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(follower, 2)
            follower.cancel()
        for revised in maestro.replans:
            console.print(f"replan r{revised.revision}: {revised.why}", style="cyan")
            for step, move in revised.moved.items():
                console.print(f"   {step}: {move}", style="cyan")
        await _audit_trail(console, js, space)
        loaded = await journal(js, space, walls).read(wf)
        decisions = [i.value for i in loaded.items]
        mismatches = replay.verify(decisions)
        replayed = replay.fold(decisions)
        console.print(f"replay: folded {len(decisions)} journal messages up to #{loaded.version}; "
                      f"state equals live: {replayed == final}; re-decided with "
                      f"{len(mismatches)} mismatches")
        console.print(f"workflow [bold]{final.status}[/]: {final.usage.tokens} tokens, "
                      f"{final.usage.joules:.1f} J. The journal stays: start `maestro up` "
                      f"(its broker serves it) and try `moon status {wf}`, "
                      f"`moon replay {wf} --verify`, `moon tail 'audit.>'`")
        ok = final.status == "completed" and replayed == final and not mismatches
        return 0 if ok else 1


async def _show_plan(console: Console, maestro: Maestro, *, plan_id: str, goal: Goal,
                     offers: tuple[Offer, ...], outcome: Outcome) -> None:
    """The bids the plan was made with, the Gantt and the failure anticipation."""
    _, state = await maestro.runner.load(plan_id)
    bids = msgspec.json.decode(state.bids, type=list[Bid]) if state.bids else []
    board = {(o.executor, c.capability): c.rate for o in offers for c in o.capabilities}
    console.print(f"call for bids: {len(bids)} of {len(offers)} executors bid "
                  "(an executor that does not bid keeps its board price)")
    for bid in bids:
        quotes = ", ".join(
            f"{q.capability} {q.rate}" + (f" (board {board[bid.executor, q.capability]})"
                                          if board.get((bid.executor, q.capability)) != q.rate
                                          else "")
            for q in bid.quotes)
        console.print(f"  {bid.executor:<18} {quotes}", markup=False)
    console.print(gantt(outcome.plan, deadline=goal.deadline_ms, title="the plan"))
    if outcome.anticipation is not None:
        console.print(anticipation_table(outcome.plan, outcome.anticipation))


def _victim(plan: Plan, goal: Goal, offers: tuple[Offer, ...]) -> tuple[str, str]:
    """The step to fail: a middle one that another eligible executor could take over."""
    steps = {s.id: s for s in goal.steps}
    order = sorted(plan.assignments, key=lambda a: a.start)

    def has_peer(step: str, executor: str) -> bool:
        want = steps[step]
        return any(
            o.executor != executor and o.trust >= want.min_trust
            and (not goal.organisations or o.organisation in goal.organisations)
            and any(c.capability == want.capability for c in o.capabilities)
            for o in offers
        )

    candidates = [a for a in order[1:] if has_peer(a.step, a.executor)] or order
    middle = candidates[len(candidates) // 2]
    return middle.step, middle.executor


def _undo(offer: Offer, goal: Goal, fail_once: set[str]) -> dict[str, Handler]:
    """Compensation capabilities named in the goal, served by executors of the step's kind."""
    mine = {c.capability for c in offer.capabilities}
    return {s.compensation: _handler(offer, goal, fail_once)
            for s in goal.steps if s.compensation and s.capability in mine}
