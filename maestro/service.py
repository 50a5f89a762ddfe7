"""MAESTRO as a service: plan, ratify, allocate (dispatch to MOON), and replan on deviations.

The shell: it reads the clock, talks to NATS and MOON, journals every decision on PLANS and
logs. What a plan is and when it may change are decided by `planner.plan_goal` and `plans`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import structlog
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js import api

from envelope.client import Client
from envelope.keys import Signer
from maestro import plans
from maestro.goal import Goal, Offer
from maestro.orders import BindingOrder, sign_order
from maestro.plan import Plan
from maestro.planner import Outcome, plan_goal
from maestro.policy import Policy
from maestro.problem import Done, Progress, Running
from maestro.solve import SolveOptions
from moon import replay
from moon.effects import Effects
from moon.gateway import DispatchReply
from moon.journal import DECISIONS, journal
from moon.workflow import WorkflowState
from streams import subjects
from streams.codec import Codec, Undecodable
from streams.config import MOON, PLANS
from streams.decider import Decided, Decider, Runner
from streams.jetstream_store import JetStreamStore
from streams.moon_events import (
    Compensate,
    Deviation,
    Replan,
    RetryPolicy,
    StepSpec,
)
from streams.plan_events import (
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

__all__ = ["REPLAN_ON", "Allocated", "Maestro", "steps_for"]

log = structlog.get_logger("maestro")
REPLAN_ON = {"failed", "executor_lost", "late"}
BATCHES: Codec[PlanBatch] = Codec(PlanBatch)
PLAN_DECIDER: Decider[plans.Record, PlanEvent, plans.PlanState] = Decider(
    decide=plans.decide, evolve=plans.evolve, initial=plans.initial
)


def now_ms() -> int:
    return int(time.time() * 1000)


class Allocated(msgspec.Struct, frozen=True):
    plan_id: str
    workflow_id: str
    orders: int
    audit: str = ""


def steps_for(goal: Goal, plan: Plan, *, heartbeat_ms: int = 3_000) -> tuple[StepSpec, ...]:
    """The plan as a DAG MOON can run: each step bound to its executor, with time to finish."""
    where = {a.step: a for a in plan.assignments}
    out = []
    for step in goal.steps:
        a = where.get(step.id)
        planned = (a.end - a.start) if a else step.duration_ms
        out.append(StepSpec(
            id=step.id, capability=step.capability, needs=step.needs,
            executor=a.executor if a else None, compensation=step.compensation,
            # Room for a slow attempt, never less than the timer granularity (1 s) allows.
            timeout_ms=max(3 * planned, 5_000), heartbeat_timeout_ms=heartbeat_ms,
            retry=RetryPolicy(maximum_attempts=2, initial_interval_ms=200),
            tokens_estimate=step.tokens,
        ))
    return tuple(out)


def _progress(state: WorkflowState, excluded: set[str]) -> list[Progress]:
    assert state.dispatched is not None
    t0 = state.dispatched.at_ms
    out: list[Progress] = []
    for name, s in state.steps.items():
        if s.status == "completed" and s.executor:
            start = (s.started_at or t0) - t0
            out.append(Done(step=name, executor=s.executor, start_ms=start,
                            end_ms=start + max(s.usage.wall_ms, 1)))
        elif s.status == "running" and s.executor and s.executor not in excluded:
            out.append(Running(step=name, executor=s.executor,
                               start_ms=(s.started_at or t0) - t0))
    return out


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
    replans: list[PlanRevised] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.js = self.nc.jetstream()
        space = self.space
        layout = Layout(
            stream=space.stream(PLANS.name),
            subject=lambda plan, kind: space.subject(subjects.plan_event(plan, kind)),
            filter=lambda plan: space.subject(subjects.plan_events(plan)),
        )
        self.runner: Runner[plans.Record, PlanEvent, plans.PlanState, PlanBatch] = Runner(
            decider=PLAN_DECIDER, store=JetStreamStore(self.js, layout, BATCHES),
            pack=lambda cmd, events: PlanBatch(command_id=cmd.command_id, events=list(events)),
            apply=plans.apply, kind=lambda events: plan_kind(list(events)),
        )
        self.moon = Client(self.nc, self.signer, {"moon": self.moon_did}, grant=(self.grant,),
                           space=space, timeout_s=10)
        self.effects = Effects(self.js, space)
        self._stopping = asyncio.Event()
        self.revised = asyncio.Condition()

    async def _record(self, plan_id: str, command_id: str, *events: PlanEvent
                      ) -> Decided[PlanEvent, plans.PlanState] | Refusal:
        return await self.runner.handle(plan_id, plans.Record(command_id, events), key=command_id)

    # --- maestro.plan / ratify / allocate ------------------------------------------------------

    async def plan(self, goal: Goal, *, plan_id: str, command_id: str | None = None) -> Outcome:
        offers = tuple(await self.offers())
        outcome = await asyncio.to_thread(plan_goal, goal, offers, policy=self.policy,
                                          options=self.options)
        at = self.clock_ms()
        event: PlanEvent
        if outcome.decision == "refused":
            event = PlanRefused(at_ms=at, plan_id=plan_id, reasons=outcome.reasons,
                                goal=msgspec.json.encode(goal))
        else:
            event = PlanProposed(
                at_ms=at, plan_id=plan_id, goal=msgspec.json.encode(goal),
                offers=msgspec.json.encode(offers), plan=msgspec.json.encode(outcome.plan),
                awaiting_ratification=outcome.decision == "awaiting_ratification",
                reasons=outcome.reasons,
            )
        recorded = await self._record(plan_id, command_id or f"plan-{plan_id}", event)
        if isinstance(recorded, Refusal):
            return Outcome("refused", outcome.plan, (recorded,), outcome.problem)
        log.info("planned", plan=plan_id, decision=outcome.decision, status=outcome.plan.status,
                 makespan=outcome.plan.makespan, cost=outcome.plan.cost)
        return outcome

    async def ratify(self, plan_id: str, *, approved: bool, by: str, command_id: str
                     ) -> plans.PlanState | Refusal:
        recorded = await self._record(plan_id, command_id, PlanRatified(
            at_ms=self.clock_ms(), plan_id=plan_id, approved=approved, by=by))
        return recorded if isinstance(recorded, Refusal) else recorded.state

    async def allocate(self, plan_id: str, *, command_id: str | None = None
                       ) -> Allocated | Refusal:
        """Signed binding orders journaled on PLANS, then the plan dispatched to MOON."""
        _, state = await self.runner.load(plan_id)
        if state.status == "none":
            return Refusal(Reason.UNKNOWN_PLAN, plan_id)
        if state.status == "allocated":
            return Allocated(plan_id=plan_id, workflow_id=state.workflow_id, orders=0)
        goal = msgspec.json.decode(state.goal, type=Goal)
        plan = msgspec.json.decode(state.plan, type=Plan)
        workflow_id = f"wf-{plan_id}"
        orders = tuple(sign_order(self.signer, BindingOrder(
            plan_id=plan_id, revision=0, workflow_id=workflow_id, step=a.step,
            executor=a.executor, start_ms=a.start, end_ms=a.end, rate=0,
            idempotency_key=f"{workflow_id}/{a.step}",
        )) for a in plan.assignments)
        recorded = await self._record(plan_id, command_id or f"allocate-{plan_id}", PlanAllocated(
            at_ms=self.clock_ms(), plan_id=plan_id, workflow_id=workflow_id, orders=orders))
        if isinstance(recorded, Refusal):
            return recorded
        body = {
            "steps": list(steps_for(goal, plan)), "workflow_id": workflow_id,
            "plan_id": plan_id, "intent": goal.name,
            "budget": {"tokens": goal.budget.tokens, "deadline_ms": goal.deadline_ms},
        }
        reply = await self.moon.call("moon.dispatch", body, request_id=f"dispatch-{plan_id}")
        if isinstance(reply, Refusal):
            return reply
        answer = reply.result(DispatchReply)
        log.info("allocated", plan=plan_id, workflow=answer.workflow_id, orders=len(orders))
        return Allocated(plan_id=plan_id, workflow_id=answer.workflow_id, orders=len(orders),
                         audit=reply.audit)

    # --- replan on deviation --------------------------------------------------------------------

    async def on_deviation(self, deviation: Deviation) -> PlanRevised | Refusal | None:
        """Re-solve what is left; done steps fixed, running ones pinned, the culprit excluded."""
        if deviation.kind not in REPLAN_ON or not deviation.plan_id:
            return None
        wf = deviation.workflow_id
        loaded = await journal(self.js, self.space).read(wf)
        state = replay.fold(i.value for i in loaded.items)
        step = state.steps.get(deviation.step)
        # Stale or already handled: the workflow ended, moved to a newer revision, or recovered.
        if state.status != "running" or state.plan_revision != deviation.plan_revision:
            return None
        if deviation.kind == "late" and (step is None or step.status == "completed"):
            return None
        _, pstate = await self.runner.load(deviation.plan_id)
        if pstate.status != "allocated":
            return None
        goal = msgspec.json.decode(pstate.goal, type=Goal)
        previous = msgspec.json.decode(pstate.plan, type=Plan)
        excluded = {deviation.executor} if deviation.executor else set()
        offers = [o for o in await self.offers() if o.executor not in excluded]
        assert state.dispatched is not None
        elapsed = self.clock_ms() - state.dispatched.at_ms
        outcome = await asyncio.to_thread(
            plan_goal, goal, offers, policy=self.policy, options=self.options,
            excluded=excluded, progress=_progress(state, excluded), now_ms=max(elapsed, 0))
        revision = pstate.revision + 1
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
        await self.effects.send_command(Replan(
            command_id=f"replan-{deviation.plan_id}-{revision}", workflow_id=wf,
            at_ms=self.clock_ms(), plan_id=deviation.plan_id, revision=revision,
            assignments=assignments, reason=why))
        log.info("replanned", plan=deviation.plan_id, workflow=wf, revision=revision, moved=moved)
        self.replans.append(revised)
        async with self.revised:
            self.revised.notify_all()
        return revised

    async def _on_journal(self, msg: Msg) -> None:
        decision = DECISIONS.try_decode(msg.data)
        if not isinstance(decision, Undecodable):
            for event in decision.events:
                if isinstance(event, Deviation):
                    try:
                        await self.on_deviation(event)
                    except Exception:
                        log.exception("replan_failed", workflow=event.workflow_id)
                        await msg.nak(delay=1)
                        return
        await msg.ack()

    async def run_replanner(self, *, ready: asyncio.Event | None = None) -> None:
        """A durable consumer on `moon.wf.*.deviation`: nothing else of the journal is read."""
        durable = self.space.consumer("maestro-replanner")
        sub = await self.js.subscribe(
            self.space.subject(subjects.deviations()), stream=self.space.stream(MOON.name),
            durable=durable, queue=durable, cb=self._on_journal, manual_ack=True,
            config=api.ConsumerConfig(ack_wait=60, max_deliver=-1))
        if ready is not None:
            ready.set()
        try:
            await self._stopping.wait()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def stop(self) -> None:
        self._stopping.set()

    async def wait_for_replan(self, count: int = 1) -> list[PlanRevised]:
        async with self.revised:
            await self.revised.wait_for(lambda: len(self.replans) >= count)
        return self.replans
