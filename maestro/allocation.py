"""What an allocation is made of, as pure values and functions: the plan as a MOON DAG, the
agreed price of each step, the progress a replan keeps, and how plan ids are checked."""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from maestro.goal import Goal, Offer
from maestro.plan import Plan
from maestro.problem import Done, Progress, Running
from moon.workflow import WorkflowState
from streams.ids import check_id
from streams.moon_events import RetryPolicy, StepSpec
from streams.replies import Reason, Refusal

__all__ = [
    "Allocated",
    "Market",
    "check_plan_id",
    "progress",
    "rates",
    "refused_allocation",
    "steps_for",
]


def check_plan_id(plan_id: object) -> Refusal | None:
    """A plan id is one subject token, short enough that its workflow id (`wf-<plan>`) is one."""
    if (refused := check_id(plan_id, "plan id")) is not None:
        return refused
    assert isinstance(plan_id, str)
    if len(plan_id) > 61:
        return Refusal(Reason.INVALID_ID, f"plan id {plan_id[:80]!r} is longer than 61 "
                                          "characters (its workflow is wf-<plan id>)")
    return None


class Allocated(msgspec.Struct, frozen=True):
    plan_id: str
    workflow_id: str
    orders: int
    audit: str = ""
    awards: int = 0  # how many executors acknowledged a binding award


class Market(msgspec.Struct, frozen=True):
    """How MAESTRO tenders a plan's steps (contract net) and binds the winners.

    `plan` calls for bids on `maestro.cfp.<plan>` and listens `bid_timeout_s` (less when every
    executor on the board with a wanted capability has bid). An executor that does not bid in
    time keeps its board offer: the offer it keeps alive on the board is a standing quote, and
    an executor that runs no Bidder (a plain `moon worker`) must stay plannable. `require_bid`
    is the strict contract net instead: only executors that bid are planned.

    `allocate` sends a binding award to each chosen executor that bid, for its steps at its bid
    terms; one refusal refuses the allocation. Executors that did not bid get no award (nobody
    would answer it): the signed work order at the board price is what binds them.
    `bid_timeout_s = 0` turns the call off: board prices, no awards.
    """

    bid_timeout_s: float = 0.3
    award_timeout_s: float = 2.0
    require_bid: bool = False


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


def progress(state: WorkflowState, excluded: set[str]) -> list[Progress]:
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


def rates(goal: Goal, offers: Sequence[Offer], plan: Plan) -> dict[str, int]:
    """The agreed price of each step: its executor's terms (bid, award or board) for the step's
    capability over the planned duration, as the model priced it."""
    capability = {s.id: s.capability for s in goal.steps}
    terms = {(o.executor, c.capability): c for o in offers for c in o.capabilities}
    out: dict[str, int] = {}
    for a in plan.assignments:
        term = terms.get((a.executor, capability.get(a.step, "")))
        if term is not None:
            out[a.step] = term.rate + math.ceil(term.rate_per_s * (a.end - a.start) / 1000)
    return out


def refused_allocation(plan_id: str, refusals: Sequence[Refusal]) -> Refusal:
    """One refusal for the caller: the first executor's reason, every executor's detail."""
    first = refusals[0]
    if len(refusals) == 1:
        return first
    return Refusal(first.reason, "; ".join(r.detail for r in refusals),
                   retryable=all(r.retryable for r in refusals),
                   evidence={"plan": plan_id, "executors": ",".join(
                       r.evidence.get("executor", "") for r in refusals)})
