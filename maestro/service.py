"""MAESTRO as a service: plan, ratify, allocate (dispatch to MOON), and replan on deviations.

The shell: it reads the clock, talks to NATS and MOON, journals every decision on PLANS and
logs. What a plan is and when it may change are decided by `planner.plan_goal` and `plans`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import assert_never

import msgspec
import structlog
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js import api

from envelope.client import Client
from envelope.keys import KeyRing, Signer
from envelope.registry import Registry
from maestro import plans
from maestro.allocation import (
    Allocated,
    Market,
    check_plan_id,
    progress,
    rates,
    refused_allocation,
    steps_for,
)
from maestro.anticipate import Anticipation
from maestro.board import Award, Bid, award, awarded_offers, call_for_bids, refresh_offers, tender
from maestro.goal import Goal, Offer
from maestro.journals import PlanEntry, SignedPlans, deviation_at, open_deviations, read_workflow
from maestro.orders import BindingOrder, sign_order
from maestro.plan import Plan
from maestro.planner import Outcome, plan_goal
from maestro.policy import Policy
from maestro.solve import SolveOptions
from moon.effects import Effects
from moon.gateway import DispatchReply
from streams import metrics, subjects, telemetry
from streams.codec import Codec
from streams.config import DEVIATIONS, PLANS
from streams.decider import Decided, Decider, Runner
from streams.moon_events import (
    Compensate,
    Deviation,
    Replan,
)
from streams.plan_events import (
    AllocationRefused,
    PlanAllocated,
    PlanBatch,
    PlanEvent,
    PlanProposed,
    PlanRatified,
    PlanRefused,
    PlanRevised,
    RevisionRefused,
    plan_kind,
)
from streams.replies import Reason, Refusal
from streams.store import Layout
from streams.subjects import Space
from streams.tracing import Parent, derive_span_id, dispatch_span, workflow_parent

__all__ = [
    "ADMIN",
    "REPLAN_ON",
    "REPLAN_TIME_LIMIT_S",
    "Allocated",
    "Maestro",
    "Market",
    "check_plan_id",
    "steps_for",
]

log = structlog.get_logger("maestro")
REPLAN_ON = {"failed", "executor_lost", "late"}
# Acts on any plan, whoever created it: operators (their `*` grant covers it), never a tenant
# holding `maestro:*` (which does not).
ADMIN = "admin:maestro"
BATCHES: Codec[PlanBatch] = Codec(PlanBatch)
MAX_DELIVERIES = 5  # a genuine deviation whose replan keeps failing is dropped after this
PLAN_DECIDER: Decider[plans.Record, PlanEvent, plans.PlanState] = Decider(
    decide=plans.decide, evolve=plans.evolve, initial=plans.initial
)


def now_ms() -> int:
    return int(time.time() * 1000)


# A deviation wants an answer now: the SGS plan is there in milliseconds and CP-SAT gets a short
# budget to improve it (the plan the goal was first given had the full `options`). The limit is
# CP-SAT deterministic time with a 2x wall-clock cap, so a loaded machine waits at most 0.2 s;
# on the 30-step, 10-executor goal of benchmarks/replan.py it still proves most revisions
# optimal, and every one matched a 5 s solve's cost and makespan.
REPLAN_TIME_LIMIT_S = 0.1
_BIDS = msgspec.json.Decoder(list[Bid])
_AWARDS = msgspec.json.Decoder(list[Award])
_ANTICIPATION = msgspec.json.Decoder(Anticipation)


@dataclass
class Maestro:
    nc: Nats
    signer: Signer
    grant: bytes  # lets MAESTRO call moon.dispatch on its own authority
    moon_did: str
    offers: Callable[[], Awaitable[Sequence[Offer]]]
    space: Space = field(default_factory=Space)
    policy: Policy = field(default_factory=Policy)
    options: SolveOptions = field(default_factory=SolveOptions)
    clock_ms: Callable[[], int] = now_ms
    # The latest revisions this process made (demo, tests); bounded for a long-running service.
    replans: deque[PlanRevised] = field(default_factory=lambda: deque(maxlen=1_000))
    replan_count: int = 0
    consuming: bool = False  # the replanner's consumer is subscribed: what `health` reports
    market: Market = field(default_factory=Market)
    replan_options: SolveOptions | None = None  # None: `options` with a REPLAN_TIME_LIMIT_S cap
    anticipation_samples: int = 1000
    # The executor registry: bids and award acknowledgements count only when signed by the key
    # registered for their executor. None: no call for bids (nothing could be verified).
    registry: Registry | None = None
    # Whose MOON journal messages are believed (default: `moon_did`), and who writes PLANS
    # (default: this MAESTRO's own key; replicas sharing PLANS name each other).
    engines: frozenset[str] | None = None
    planners: frozenset[str] | None = None
    keys: KeyRing = field(default_factory=KeyRing)
    forged_deviations: int = 0  # journal messages on the deviation subjects that did not verify

    def __post_init__(self) -> None:
        self.js = self.nc.jetstream()
        space = self.space
        layout = Layout(
            stream=space.stream(PLANS.name),
            subject=lambda plan, kind: space.subject(subjects.plan_event(plan, kind)),
            filter=lambda plan: space.subject(subjects.plan_events(plan)),
        )
        self._engines = self.engines if self.engines is not None else frozenset({self.moon_did})
        self.plans = SignedPlans(self.js, layout, self.signer, keys=self.keys, planners=(
            self.planners if self.planners is not None else frozenset({self.signer.did})))
        self.runner: Runner[plans.Record, PlanEvent, plans.PlanState, PlanEntry] = Runner(
            decider=PLAN_DECIDER, store=self.plans,
            pack=lambda cmd, events: PlanBatch(command_id=cmd.command_id, events=list(events)),
            apply=plans.apply, kind=lambda events: plan_kind(list(events)),
        )
        self.moon = Client(self.nc, self.signer, {"moon": self.moon_did}, grant=(self.grant,),
                           space=space, timeout_s=10)
        self.effects = Effects(self.js, space, self.signer)
        self._stopping = asyncio.Event()
        self.revised = asyncio.Condition()

    def new_plan_id(self, caller: str, request_id: str) -> str:
        """A plan id nobody can take first: derived from the caller and its request id under
        MAESTRO's key (ed25519 signatures are deterministic), so a retried request names the
        same plan and no one without the key can compute it."""
        mark = self.signer.sign(b"maestro.plan-id\0" + caller.encode() + b"\0" +
                                request_id.encode())
        return "p-" + hashlib.sha256(mark).hexdigest()[:32]

    async def _record(self, plan_id: str, command_id: str, *events: PlanEvent,
                      caller: str = "", admin: bool = True
                      ) -> Decided[PlanEvent, plans.PlanState] | Refusal:
        if (refused := check_plan_id(plan_id)) is not None:
            return refused
        record = plans.Record(command_id, events, caller=caller, admin=admin)
        return await self.runner.handle(plan_id, record, key=command_id)

    # --- maestro.plan / ratify / allocate ------------------------------------------------------

    async def plan(self, goal: Goal, *, plan_id: str, command_id: str | None = None,
                   caller: str | None = None) -> Outcome:
        """Tender the steps, plan at the refreshed prices, journal the plan with its bids.

        `caller` becomes the plan's owner (None: MAESTRO itself, e.g. the demo); a plan id that
        exists already is refused before any tender or solve."""
        # Emitted only when the plan is journaled now: a refused or repeated request adds none.
        with telemetry.timed("maestro.plan", derive_span_id("maestro.plan", plan_id), None,
                             attributes={"maestro.plan_id": plan_id}) as span:
            return await self._plan(goal, plan_id, command_id, caller, span)

    async def _plan(self, goal: Goal, plan_id: str, command_id: str | None, caller: str | None,
                    span: telemetry.Timed) -> Outcome:
        owner = caller or self.signer.did
        if (refused := check_plan_id(plan_id)) is not None:
            return Outcome("refused", Plan(status="unknown"), (refused,))
        _, existing = await self.runner.load(plan_id)
        if existing.status != "none":
            refusal = plans.may_act(existing, owner, admin=False) or Refusal(
                Reason.ALREADY_EXISTS, plan_id)
            return Outcome("refused", Plan(status="unknown"), (refusal,))
        board = tuple(await self.offers())
        bids = await self._call_for_bids(plan_id, goal, board)
        at = self.clock_ms()
        strict = self.market.require_bid and self.market.bid_timeout_s > 0
        offers = refresh_offers(board, bids, require_bid=strict, now_ms=at)
        planned_with = {o.executor for o in offers}
        used = tuple(b for b in bids if b.executor in planned_with and b.valid_until_ms >= at)
        # Seeded from the solver's seed: the estimate is reproducible, and journaled anyway.
        with telemetry.timed("maestro.solve", derive_span_id("maestro.solve", plan_id),
                             None) as solve:
            outcome = await asyncio.to_thread(
                plan_goal, goal, offers, policy=self.policy, options=self.options,
                rng=random.Random(self.options.seed), samples=self.anticipation_samples)
        at = self.clock_ms()
        journaled_bids = msgspec.json.encode(used) if used else b""
        event: PlanEvent
        if outcome.decision == "refused":
            event = PlanRefused(at_ms=at, plan_id=plan_id, reasons=outcome.reasons,
                                goal=msgspec.json.encode(goal), bids=journaled_bids, owner=owner)
        else:
            foreseen = outcome.anticipation
            event = PlanProposed(
                at_ms=at, plan_id=plan_id, goal=msgspec.json.encode(goal),
                offers=msgspec.json.encode(offers), plan=msgspec.json.encode(outcome.plan),
                awaiting_ratification=outcome.decision == "awaiting_ratification",
                reasons=outcome.reasons, bids=journaled_bids,
                anticipation=msgspec.json.encode(foreseen) if foreseen is not None else b"",
                owner=owner,
            )
        recorded = await self._record(plan_id, command_id or f"plan-{plan_id}", event,
                                      caller=owner, admin=False)
        metrics.PLANS.labels(outcome.decision if not isinstance(recorded, Refusal)
                             else "refused").inc()
        if isinstance(recorded, Refusal):
            return Outcome("refused", outcome.plan, (recorded,), outcome.problem)
        if not recorded.duplicate:
            solve.end(attributes={"maestro.status": outcome.plan.status})
            span.end(attributes={"maestro.decision": outcome.decision})
        log.info("planned", plan=plan_id, decision=outcome.decision, status=outcome.plan.status,
                 makespan=outcome.plan.makespan, cost=outcome.plan.cost, bids=len(used))
        return outcome

    async def _call_for_bids(self, plan_id: str, goal: Goal, board: Sequence[Offer]
                             ) -> tuple[Bid, ...]:
        """The bids that arrived in time, sorted by executor (so the journal is stable)."""
        if self.market.bid_timeout_s <= 0 or self.registry is None:
            return ()  # without the registry no bid can be told from a forgery
        wanted = {s.capability for s in goal.steps}
        expected = sum(o.bids and any(c.capability in wanted for c in o.capabilities)
                       for o in board)
        if expected == 0:
            return ()
        bids = await call_for_bids(self.nc, self.space, tender(plan_id, goal),
                                   self.market.bid_timeout_s, expected=expected,
                                   registry=self.registry, signer=self.signer, keys=self.keys)
        return tuple(sorted(bids, key=lambda b: b.executor))

    async def ratify(self, plan_id: str, *, approved: bool, by: str, command_id: str,
                     admin: bool = False) -> plans.PlanState | Refusal:
        """`by` ratifies: the plan's owner, or an admin."""
        recorded = await self._record(plan_id, command_id, PlanRatified(
            at_ms=self.clock_ms(), plan_id=plan_id, approved=approved, by=by),
            caller=by, admin=admin)
        return recorded if isinstance(recorded, Refusal) else recorded.state

    async def allocate(self, plan_id: str, *, command_id: str | None = None,
                       caller: str | None = None, admin: bool = False) -> Allocated | Refusal:
        """Binding awards to the bidders, signed orders journaled on PLANS, then MOON dispatch.

        An executor that refuses its award refuses the allocation: the refusal is journaled and
        nothing is dispatched. Awards already acknowledged by others stay on record as evidence
        (the Bidder protocol has no release; with no work order they lead to no work).
        `caller` must own the plan (None: MAESTRO itself) unless `admin`.
        """
        if (refused := check_plan_id(plan_id)) is not None:
            return refused
        _, state = await self.runner.load(plan_id)
        if state.status == "none":
            return Refusal(Reason.UNKNOWN_PLAN, plan_id)
        who, admin = (caller, admin) if caller is not None else (self.signer.did, True)
        if (refused := plans.may_act(state, who, admin=admin)) is not None:
            return refused
        goal = msgspec.json.decode(state.goal, type=Goal)
        plan = msgspec.json.decode(state.plan, type=Plan)
        if state.status == "allocated":
            # Journaled but perhaps never dispatched (a crash in between): MOON answers a resent
            # dispatch request id with its first answer, so asking again is safe.
            return await self._dispatch(goal, plan, plan_id, state.workflow_id, orders=0,
                                        awards=0)
        if (refused := plans.may_allocate(state)) is not None:
            return refused
        key = command_id or f"allocate-{plan_id}"
        acked, refusals = await self._award(plan_id, goal, plan, _BIDS.decode(state.bids)
                                            if state.bids else [])
        awards = msgspec.json.encode(acked) if acked else b""
        if refusals:
            log.warning("award_refused", plan=plan_id, refusals=[r.detail for r in refusals])
            await self._record(plan_id, f"refuse-{key}", AllocationRefused(
                at_ms=self.clock_ms(), plan_id=plan_id, reasons=tuple(refusals), awards=awards))
            return refused_allocation(plan_id, refusals)
        workflow_id = f"wf-{plan_id}"
        offers = msgspec.json.decode(state.offers, type=tuple[Offer, ...])
        priced = rates(goal, awarded_offers(offers, acked), plan)
        backups = ({b.step: b.executor for b in _ANTICIPATION.decode(state.anticipation).backups}
                   if state.anticipation else {})
        orders = tuple(sign_order(self.signer, BindingOrder(
            plan_id=plan_id, revision=0, workflow_id=workflow_id, step=a.step,
            executor=a.executor, start_ms=a.start, end_ms=a.end, rate=priced.get(a.step, 0),
            idempotency_key=f"{workflow_id}/{a.step}", backup=backups.get(a.step),
        )) for a in plan.assignments)
        recorded = await self._record(plan_id, key, PlanAllocated(
            at_ms=self.clock_ms(), plan_id=plan_id, workflow_id=workflow_id, orders=orders,
            awards=awards))
        if isinstance(recorded, Refusal):
            return recorded
        return await self._dispatch(goal, plan, plan_id, workflow_id, orders=len(orders),
                                    awards=len(acked))

    async def _award(self, plan_id: str, goal: Goal, plan: Plan, bids: Sequence[Bid]
                     ) -> tuple[list[Award], list[Refusal]]:
        """Award each chosen executor that bid its steps at its bid terms, all at once."""
        by = {b.executor: b for b in bids}
        capability = {s.id: s.capability for s in goal.steps}
        steps_of: dict[str, list[str]] = {}
        for a in plan.assignments:
            if a.executor in by:
                steps_of.setdefault(a.executor, []).append(a.step)

        async def one(executor: str, steps: list[str]) -> Award | Refusal:
            wanted = {capability[s] for s in steps}
            quotes = tuple(q for q in by[executor].quotes if q.capability in wanted)
            assert self.registry is not None  # only bidders get awards, and bids need it
            got = await award(self.nc, self.space, plan_id, executor, steps, quotes=quotes,
                              timeout_s=self.market.award_timeout_s, registry=self.registry,
                              signer=self.signer, keys=self.keys)
            if isinstance(got, Award):
                return got
            return Refusal(got.reason, f"{executor} refused its award for {', '.join(steps)}: "
                           f"{got.detail}", retryable=got.retryable,
                           evidence={**got.evidence, "plan": plan_id, "executor": executor,
                                     "steps": ",".join(steps)})

        answers = await asyncio.gather(*(one(e, s) for e, s in sorted(steps_of.items())))
        return ([a for a in answers if isinstance(a, Award)],
                [r for r in answers if isinstance(r, Refusal)])

    async def _dispatch(self, goal: Goal, plan: Plan, plan_id: str, workflow_id: str, *,
                        orders: int, awards: int) -> Allocated | Refusal:
        # Only the limits the goal sets: the gate reads a present budget as {tokens, deadline}.
        limits = {"tokens": goal.budget.tokens, "deadline_ms": goal.deadline_ms}
        budget = {k: v for k, v in limits.items() if v is not None}
        body = {
            "steps": list(steps_for(goal, plan)), "workflow_id": workflow_id,
            "plan_id": plan_id, "intent": goal.name, **({"budget": budget} if budget else {}),
        }
        reply = await self.moon.call("moon.dispatch", body, request_id=f"dispatch-{plan_id}")
        if isinstance(reply, Refusal):
            return reply
        answer = reply.result(DispatchReply)
        log.info("allocated", plan=plan_id, workflow=answer.workflow_id, orders=orders,
                 awards=awards)
        return Allocated(plan_id=plan_id, workflow_id=answer.workflow_id, orders=orders,
                         audit=reply.audit, awards=awards)

    # --- replan on deviation --------------------------------------------------------------------

    async def on_deviation(self, deviation: Deviation) -> PlanRevised | Refusal | None:
        """Re-solve what is left; done steps fixed, running ones pinned, the culprit excluded."""
        started = time.perf_counter()
        answer = await self._on_deviation(deviation)
        match answer:
            case PlanRevised():
                metrics.REPLANS.labels("revised").inc()
                metrics.REPLAN_SECONDS.observe(time.perf_counter() - started)
            case Refusal():
                metrics.REPLANS.labels("refused").inc()
                metrics.REPLAN_SECONDS.observe(time.perf_counter() - started)
            case None:
                pass
            case _:
                assert_never(answer)
        return answer

    async def replan(self, workflow_id: str, seq: int, *, caller: str, admin: bool = False
                     ) -> PlanRevised | Refusal | None:
        """`maestro.replan`: act on the deviation journaled at MOON `seq` for `workflow_id`,
        read back and verified as the engine's; only the owner of the plan the workflow runs
        (or an admin) may ask. Nothing about the deviation is taken from the caller."""
        found = await deviation_at(self.js, self.space, workflow_id, seq,
                                   engines=self._engines, keys=self.keys)
        if isinstance(found, Refusal):
            return found
        plan_id = found.deviation.plan_id
        if not plan_id or check_plan_id(plan_id) is not None:
            return Refusal(Reason.UNKNOWN_PLAN, f"workflow {workflow_id} runs no plan")
        _, pstate = await self.runner.load(plan_id)
        if pstate.status == "none" or pstate.workflow_id != workflow_id:
            return Refusal(Reason.UNKNOWN_PLAN,
                           f"workflow {workflow_id} runs no plan MAESTRO allocated")
        if (refused := plans.may_act(pstate, caller, admin=admin)) is not None:
            return refused
        return await self.on_deviation(found.deviation)

    async def _on_deviation(self, deviation: Deviation) -> PlanRevised | Refusal | None:
        """`deviation` is the engine's (the caller verified it); whether it still matters and
        which plan it is about are read here, from journals that verify."""
        if deviation.kind not in REPLAN_ON or not deviation.plan_id:
            return None
        if check_plan_id(deviation.plan_id) is not None:
            return None
        wf = deviation.workflow_id
        state = (await read_workflow(self.js, self.space, wf, engines=self._engines,
                                     keys=self.keys)).state
        step = state.steps.get(deviation.step)
        # Stale or already handled: the workflow ended, moved to a newer revision, or recovered.
        if state.status != "running" or state.plan_revision != deviation.plan_revision:
            return None
        if deviation.kind == "late" and (step is None or step.status == "completed"):
            return None
        _, pstate = await self.runner.load(deviation.plan_id)
        if pstate.status != "allocated":
            return None
        if pstate.workflow_id != wf:
            # Anyone may dispatch a workflow naming any plan id: its deviations are its own.
            log.warning("deviation_of_another_plan", plan=deviation.plan_id, workflow=wf,
                        runs=pstate.workflow_id)
            return None
        goal = msgspec.json.decode(pstate.goal, type=Goal)
        previous = msgspec.json.decode(pstate.plan, type=Plan)
        excluded = {deviation.executor} if deviation.executor else set()
        # No call for bids here: a deviation cannot wait for a tender. Executors that were
        # awarded steps are held to the terms they acknowledged; the rest price at the board.
        awarded = _AWARDS.decode(pstate.awards) if pstate.awards else []
        live = [o for o in await self.offers() if o.executor not in excluded]
        offers = awarded_offers(live, awarded)
        assert state.dispatched is not None
        elapsed = self.clock_ms() - state.dispatched.at_ms
        revision = pstate.revision + 1
        # Beside the engine's spans, under the workflow's dispatch; emitted once the revision
        # is journaled (another MAESTRO that lost the race emits none).
        trace = workflow_parent(wf, state.dispatched.traceparent)
        replan = Parent(trace.trace_id, dispatch_span(wf), trace.sampled)
        with telemetry.timed("maestro.replan", derive_span_id(
                "maestro.replan", deviation.plan_id, revision), replan, attributes={
                "maestro.plan_id": deviation.plan_id, "maestro.revision": revision,
                "moon.workflow_id": wf, "moon.deviation": deviation.kind}) as span, \
                telemetry.timed("maestro.solve", derive_span_id(
                    "maestro.solve", deviation.plan_id, revision), None) as solve:
            outcome = await asyncio.to_thread(
                plan_goal, goal, offers, policy=self.policy, options=self._replan_options(),
                excluded=excluded, progress=progress(state, excluded), now_ms=max(elapsed, 0))
        why = f"{deviation.kind} of {deviation.step} on {deviation.executor}: {deviation.detail}"
        key = f"revise-{deviation.plan_id}-{revision}"
        if outcome.decision != "planned":
            await self._record(deviation.plan_id, key, RevisionRefused(
                at_ms=self.clock_ms(), plan_id=deviation.plan_id, workflow_id=wf, why=why,
                reasons=outcome.reasons))
            await self.effects.send_command(Compensate(
                command_id=f"compensate-{key}", workflow_id=wf, at_ms=self.clock_ms(),
                reason=f"no plan fits after {why}"))
            log.warning("replan_refused", plan=deviation.plan_id, workflow=wf, why=why)
            return outcome.reasons[0] if outcome.reasons else Refusal(Reason.SOLVER_TIMEOUT)
        done = {n for n, s in state.steps.items() if s.status == "completed"}
        assignments = {a.step: a.executor for a in outcome.plan.assignments if a.step not in done}
        old = {a.step: a.executor for a in previous.assignments}
        moved = {s: f"{old.get(s)} -> {e}" for s, e in assignments.items() if old.get(s) != e}
        revised = PlanRevised(
            at_ms=self.clock_ms(), plan_id=deviation.plan_id, revision=revision, workflow_id=wf,
            why=why, moved=moved, plan=msgspec.json.encode(outcome.plan), previous=pstate.plan)
        recorded = await self._record(deviation.plan_id, key, revised)
        if isinstance(recorded, Refusal):
            return None  # another MAESTRO instance revised first
        if not recorded.duplicate:
            solve.end(attributes={"maestro.status": outcome.plan.status})
            span.end(attributes={"maestro.moved": len(moved)})
        await self.effects.send_command(Replan(
            command_id=f"replan-{deviation.plan_id}-{revision}", workflow_id=wf,
            at_ms=self.clock_ms(), plan_id=deviation.plan_id, revision=revision,
            assignments=assignments, reason=why))
        log.info("replanned", plan=deviation.plan_id, workflow=wf, revision=revision, moved=moved,
                 why=why)
        self.replans.append(revised)
        self.replan_count += 1
        async with self.revised:
            self.revised.notify_all()
        return revised

    def _replan_options(self) -> SolveOptions:
        if self.replan_options is not None:
            return self.replan_options
        limit = min(self.options.time_limit_s, REPLAN_TIME_LIMIT_S)
        return msgspec.structs.replace(self.options, time_limit_s=limit)

    def _workflow_of(self, subject: str) -> str:
        parts = self.space.unprefix(subject).split(".")
        return parts[2] if len(parts) == 4 and parts[:2] == ["moon", "wf"] else ""

    async def _on_journal(self, msg: Msg) -> None:
        """Act only on an engine-signed decision holding deviations of the subject's workflow;
        anything else is named, counted and acked (never acted on, never redelivered)."""
        wf = self._workflow_of(msg.subject)
        found = (open_deviations(msg.data, wf, engines=self._engines, keys=self.keys) if wf
                 else Refusal(Reason.WRONG_SUBJECT, msg.subject[:120]))
        if isinstance(found, Refusal):
            self.forged_deviations += 1
            log.warning("deviation_rejected", subject=msg.subject[:120],
                        seq=msg.metadata.sequence.stream, reason=found.reason.value,
                        detail=found.detail)
            await msg.ack()
            return
        for event in found:
            try:
                await self.on_deviation(event)
            except Exception:
                log.exception("replan_failed", workflow=event.workflow_id)
                if msg.metadata.num_delivered < MAX_DELIVERIES:
                    await msg.nak(delay=1)
                    return
                log.error("deviation_dropped", workflow=event.workflow_id,
                          seq=msg.metadata.sequence.stream)
        await msg.ack()

    async def run_replanner(self, *, ready: asyncio.Event | None = None) -> None:
        """A durable consumer on `moon.wf.*.deviation`, copied from the journal into the
        DEVIATIONS stream (where no one else may make consumers): nothing else is read."""
        durable = self.space.consumer("maestro-replanner")
        sub = await self.js.subscribe(
            self.space.subject(subjects.deviations()), stream=self.space.stream(DEVIATIONS.name),
            durable=durable, queue=durable, cb=self._on_journal, manual_ack=True,
            config=api.ConsumerConfig(ack_wait=60, max_deliver=-1))
        self.consuming = True
        if ready is not None:
            ready.set()
        try:
            await self._stopping.wait()
        finally:
            self.consuming = False
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def stop(self) -> None:
        self._stopping.set()

    async def wait_for_replan(self, count: int = 1) -> list[PlanRevised]:
        async with self.revised:
            await self.revised.wait_for(lambda: self.replan_count >= count)
        return list(self.replans)
