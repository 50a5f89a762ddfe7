"""Every refusal reason the planner can give is reachable, and says what to change."""

from __future__ import annotations

from maestro.explain import explain
from maestro.goal import Budget, Goal, Step
from maestro.plan import Plan
from maestro.planner import plan_goal
from maestro.policy import Policy, StepTrust
from maestro.problem import from_goal
from maestro.solve import SolveOptions
from streams.replies import Reason
from tests.maestro.conftest import SLOW_FAST, chain, offer

FAST = SolveOptions(time_limit_s=2.0, workers=2)


def only(goal: Goal, offers=SLOW_FAST, **kw):  # type: ignore[no-untyped-def]
    outcome = plan_goal(goal, offers, options=FAST, **kw)
    assert outcome.decision == "refused"
    return outcome.reasons


def test_a_capability_without_a_trusted_executor_names_the_best_trust_offered() -> None:
    """NO_ELIGIBLE_EXECUTOR says the trust needed and the best on offer."""
    goal = Goal("g", (Step("audit", "review", min_trust=0.9),))
    (r,) = only(goal, [offer("cheap", ("review", 5, 1), trust=0.7)])
    assert r.reason == Reason.NO_ELIGIBLE_EXECUTOR
    assert "trust >= 0.9 needed, best offered 0.7 by cheap" in r.detail


def test_a_deadline_shorter_than_the_critical_path_names_the_path() -> None:
    """DEADLINE_INFEASIBLE: fastest modes give 10 ms against 8 ms."""
    (r,) = only(chain(deadline_ms=8))
    assert r.reason == Reason.DEADLINE_INFEASIBLE
    assert "0.01 s" in r.detail
    assert r.evidence["critical_path"] == "a -> b"


def test_a_step_deadline_before_its_earliest_finish_is_refused() -> None:
    """A per-step deadline is checked on its own."""
    goal = Goal("g", (Step("a", "work"), Step("b", "work", needs=("a",), deadline_ms=7)))
    (r,) = only(goal)
    assert r.reason == Reason.DEADLINE_INFEASIBLE
    assert r.evidence["step"] == "b"


def test_cost_and_token_budgets_below_the_cheapest_plan_are_refused() -> None:
    """OVER_BUDGET for cost, BUDGET_EXHAUSTED for tokens, each with the least possible."""
    goal = Goal(
        "g",
        (Step("a", "work", tokens=100), Step("b", "work", tokens=100)),
        budget=Budget(tokens=150, cost=1),
    )
    reasons = {r.reason: r for r in only(goal)}
    assert reasons[Reason.OVER_BUDGET].evidence == {"cheapest": "2", "budget": "1"}
    assert reasons[Reason.BUDGET_EXHAUSTED].evidence == {"tokens": "200", "budget": "150"}


def test_deadline_against_budget_is_named_as_a_conflict() -> None:
    """Each limit alone is fine; together (15 ms needs cost 11, budget 5) they conflict."""
    (r,) = only(chain(deadline_ms=15, cost=5))
    assert r.reason == Reason.CONFLICTING_CONSTRAINTS
    assert r.evidence["constraints"] == "budget.cost,deadline"
    assert "the cost budget of 5" in r.detail


def test_deadline_against_an_executor_capacity_is_named_as_a_conflict() -> None:
    """Two 10 ms steps on one single-slot executor cannot both end by 15 ms."""
    goal = Goal("g", (Step("a", "work"), Step("b", "work")), deadline_ms=15)
    (r,) = only(goal, [offer("x", ("work", 10, 0))])
    assert r.evidence["constraints"] == "capacity:x,deadline"
    assert "executor x capacity of 1" in r.detail


def test_a_timeout_is_not_reported_as_infeasibility() -> None:
    """SOLVER_TIMEOUT is its own, retryable, reason."""
    problem = from_goal(chain(), SLOW_FAST)
    (r,) = explain(problem, Plan(status="unknown", solve_time_s=2.0))
    assert r.reason == Reason.SOLVER_TIMEOUT
    assert r.retryable


def test_structural_defects_are_refused_before_solving() -> None:
    """CYCLE, UNKNOWN_DEPENDENCY, UNKNOWN_CAPABILITY and INVALID_GOAL come from validation."""
    cyclic = Goal("g", (Step("a", "work", needs=("b",)), Step("b", "work", needs=("a",))))
    assert {r.reason for r in only(cyclic)} == {Reason.CYCLE}
    dangling = Goal("g", (Step("a", "work", needs=("ghost",)),))
    assert {r.reason for r in only(dangling)} == {Reason.UNKNOWN_DEPENDENCY}
    unknown = Goal("g", (Step("a", "dance"),))
    assert {r.reason for r in only(unknown)} == {Reason.UNKNOWN_CAPABILITY}
    negative = Goal("g", (Step("a", "work", duration_ms=-5),))
    assert {r.reason for r in only(negative)} == {Reason.INVALID_GOAL}


def test_policy_limits_narrow_the_choice_before_solving() -> None:
    """A policy trust floor removes executors, so the refusal names the trust gap."""
    policy = Policy(step_trust=())
    assert plan_goal(chain(), SLOW_FAST, policy=policy, options=FAST).decision == "planned"
    goal = Goal("g", (Step("a", "work"),))
    low = [offer("x", ("work", 1, 1), trust=0.5)]
    (r,) = only(goal, low, policy=Policy(step_trust=(StepTrust("a", 0.6),)))
    assert r.reason == Reason.NO_ELIGIBLE_EXECUTOR


def test_a_costly_plan_waits_for_ratification() -> None:
    """Above the ratification threshold the plan is kept but waits."""
    outcome = plan_goal(chain(), SLOW_FAST, policy=Policy(ratification_cost=1), options=FAST)
    assert outcome.decision == "awaiting_ratification"
    assert outcome.plan.cost == 2
    assert outcome.reasons[0].reason == Reason.AWAITING_RATIFICATION
