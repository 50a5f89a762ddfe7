"""One call from goal to plan or refusal, wiring validate, policy, SGS/CP-SAT and explanations.

The NATS service and the CLI call `plan_goal` and journal its Outcome; everything it calls is pure
except `solve`, the CP-SAT adapter. One wall-clock deadline covers the whole call: the solve, the
conflict search of a refusal and the failure anticipation share `options.time_limit_s`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, assert_never

import msgspec

from maestro.anticipate import Anticipation, Rng, anticipate
from maestro.explain import explain, static_reasons
from maestro.goal import Goal, Offer, validate
from maestro.plan import Plan
from maestro.policy import Policy, check, eligibility
from maestro.problem import Problem, Progress, from_goal
from maestro.solve import Deadline, SolveOptions, find_conflict, solve
from streams.replies import Refusal

__all__ = ["Outcome", "plan_goal"]

Decision = Literal["planned", "awaiting_ratification", "refused"]


class Outcome(msgspec.Struct, frozen=True):
    """A plan (possibly empty) and the reasons it is refused or waits; `problem` for rendering;
    `anticipation` (backups, retry slack, p(on time)) for a plan that is not refused."""

    decision: Decision
    plan: Plan
    reasons: tuple[Refusal, ...]
    problem: Problem | None = None
    anticipation: Anticipation | None = None


def _cap(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


# Monte Carlo cost per (sample, task), with a 2x margin over the ~0.4 us measured: the solve's
# deadline leaves this much of the limit for the anticipation that follows it.
ANTICIPATE_S_PER_TASK_SAMPLE = 1e-6


def _foresee(problem: Problem, plan: Plan, rng: Rng | None, samples: int) -> Anticipation | None:
    return None if rng is None else anticipate(problem, plan, rng, samples=samples)


def _solve_deadline(
    whole: Deadline, limit: float, problem: Problem, rng: Rng | None, samples: int
) -> Deadline:
    reserve = 0.0 if rng is None else samples * len(problem.tasks) * ANTICIPATE_S_PER_TASK_SAMPLE
    return whole.earlier(min(reserve, limit / 2))


def plan_goal(
    goal: Goal,
    offers: Sequence[Offer],
    *,
    policy: Policy | None = None,
    options: SolveOptions | None = None,
    excluded: Iterable[str] = (),
    progress: Iterable[Progress] = (),
    now_ms: int = 0,
    rng: Rng | None = None,
    samples: int = 1000,
) -> Outcome:
    """Plan a goal (or replan it, given progress and excluded executors) or refuse with reasons.

    With `rng` (a seeded generator from the shell) a plan that is not refused comes with its
    failure anticipation over `samples` Monte Carlo runs; without it, none is computed.
    """
    whole = Deadline((options or SolveOptions()).time_limit_s)
    invalid = validate(goal, offers)
    if invalid:
        return Outcome("refused", Plan(status="infeasible"), tuple(invalid))
    pol = policy or Policy()
    orgs, trust = eligibility(pol)
    problem = from_goal(
        goal,
        offers,
        excluded=excluded,
        progress=progress,
        now_ms=now_ms,
        allowed_organisations=orgs,
        min_trust=trust,
    )
    problem = msgspec.structs.replace(problem, budget_cost=_cap(problem.budget_cost, pol.max_cost))
    static = static_reasons(problem)
    if static:
        return Outcome("refused", Plan(status="infeasible"), tuple(static), problem)
    limit = (options or SolveOptions()).time_limit_s
    deadline = _solve_deadline(whole, limit, problem, rng, samples)
    plan = solve(problem, options, deadline=deadline)
    if plan.status == "infeasible":
        conflict = find_conflict(problem, options, deadline=deadline)
        return Outcome("refused", plan, tuple(explain(problem, plan, conflict)), problem)
    if plan.status == "unknown":
        return Outcome("refused", plan, tuple(explain(problem, plan)), problem)
    verdict = check(pol, plan, problem)
    match verdict.decision:
        case "approved":
            return Outcome("planned", plan, (), problem, _foresee(problem, plan, rng, samples))
        case "awaiting_ratification":
            return Outcome("awaiting_ratification", plan, verdict.reasons, problem,
                           _foresee(problem, plan, rng, samples))
        case "blocked":
            return Outcome("refused", plan, verdict.reasons, problem)
        case _:
            assert_never(verdict.decision)
