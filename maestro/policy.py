"""Plan policy as data and a pure check, so governance limits are audited values, not code paths.

A policy narrows who may run what before solving (`eligibility`) and judges the plan after
(`check`): blocked, awaiting ratification above a cost threshold, or approved.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from maestro.plan import Plan
from maestro.problem import Problem
from streams.replies import Reason, Refusal

__all__ = ["Decision", "Policy", "StepTrust", "Verdict", "check", "eligibility"]

Decision = Literal["approved", "awaiting_ratification", "blocked"]


class StepTrust(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Step `step` may only run on executors trusted at least `min_trust`."""

    step: str
    min_trust: float


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Limits set by whoever governs the planner; empty/None means no limit."""

    max_cost: int | None = None
    allowed_organisations: tuple[str, ...] = ()
    step_trust: tuple[StepTrust, ...] = ()
    ratification_cost: int | None = None


class Verdict(msgspec.Struct, frozen=True):
    decision: Decision
    reasons: tuple[Refusal, ...] = ()


def eligibility(policy: Policy) -> tuple[tuple[str, ...] | None, dict[str, float]]:
    """(allowed organisations or None, per-step minimum trust) for `problem.from_goal`."""
    orgs = policy.allowed_organisations or None
    return orgs, {s.step: s.min_trust for s in policy.step_trust}


def check(policy: Policy, plan: Plan, problem: Problem) -> Verdict:
    """Judge a plan against the policy. Blocking reasons win over ratification."""
    blocked: list[Refusal] = []
    tasks = {t.id: t for t in problem.tasks}
    needs = {s.step: s.min_trust for s in policy.step_trust}
    for a in plan.assignments:
        mode = next((m for m in tasks[a.step].modes if m.id == a.executor), None)
        if mode is None:
            continue
        if policy.allowed_organisations and mode.organisation not in policy.allowed_organisations:
            blocked.append(
                Refusal(
                    reason=Reason.POLICY_BLOCK,
                    detail=f"step {a.step} runs at {mode.organisation}, outside the allowed "
                    f"organisations {', '.join(policy.allowed_organisations)}",
                    evidence={"step": a.step, "organisation": mode.organisation},
                )
            )
        if a.step in needs and mode.trust < needs[a.step]:
            blocked.append(
                Refusal(
                    reason=Reason.POLICY_BLOCK,
                    detail=f"step {a.step} needs trust >= {needs[a.step]:g}; "
                    f"{a.executor} has {mode.trust:g}",
                    evidence={"step": a.step, "executor": a.executor},
                )
            )
    cost = plan.cost or 0
    if policy.max_cost is not None and cost > policy.max_cost:
        blocked.append(
            Refusal(
                reason=Reason.POLICY_BLOCK,
                detail=f"the plan costs {cost}, above the policy maximum of {policy.max_cost}",
                evidence={"cost": str(cost), "max_cost": str(policy.max_cost)},
            )
        )
    if blocked:
        return Verdict("blocked", tuple(blocked))
    if policy.ratification_cost is not None and cost > policy.ratification_cost:
        return Verdict(
            "awaiting_ratification",
            (
                Refusal(
                    reason=Reason.AWAITING_RATIFICATION,
                    detail=f"the plan costs {cost}, above the ratification threshold of "
                    f"{policy.ratification_cost}: it waits for a human to ratify it",
                    retryable=True,
                    evidence={"cost": str(cost), "threshold": str(policy.ratification_cost)},
                ),
            ),
        )
    return Verdict("approved")
