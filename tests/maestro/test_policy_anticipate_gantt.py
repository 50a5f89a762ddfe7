"""Policy checks, failure anticipation and the plan's two renderings."""

from __future__ import annotations

import io
import json
import random

from rich.console import Console

from maestro.anticipate import anticipate
from maestro.gantt import anticipation_table, gantt_text, to_json
from maestro.goal import Goal, Step
from maestro.policy import Policy, StepTrust, check
from maestro.problem import from_goal
from maestro.solve import SolveOptions, solve
from streams.replies import Reason, Refusal
from tests.maestro.conftest import chain, offer

FAST = SolveOptions(time_limit_s=2.0, workers=2)
OFFERS = (
    offer("home", ("work", 10, 1), org="acme", trust=0.6, reliability=0.5),
    offer("away", ("work", 12, 5), org="globex", trust=0.9, reliability=0.99),
)


def planned():  # type: ignore[no-untyped-def]
    problem = from_goal(chain(deadline_ms=100), OFFERS)
    return problem, solve(problem, FAST)


def test_policy_blocks_foreign_organisations_low_trust_and_high_cost() -> None:
    """Each breach is its own POLICY_BLOCK reason."""
    problem, plan = planned()
    assert {a.executor for a in plan.assignments} == {"home"}
    verdict = check(
        Policy(max_cost=1, allowed_organisations=("globex",), step_trust=(StepTrust("a", 0.8),)),
        plan,
        problem,
    )
    assert verdict.decision == "blocked"
    assert len(verdict.reasons) == 4
    assert {r.reason for r in verdict.reasons} == {Reason.POLICY_BLOCK}


def test_policy_approves_a_plan_within_limits() -> None:
    """No limit breached, no threshold crossed: approved."""
    problem, plan = planned()
    assert check(Policy(max_cost=10, ratification_cost=10), plan, problem).decision == "approved"


def test_anticipation_names_backups_slack_and_a_seeded_on_time_probability() -> None:
    """Unreliable 'home' gets 'away' as backup and retry slack; same seed, same estimate."""
    problem, plan = planned()
    first = anticipate(problem, plan, random.Random(7), samples=4000)
    again = anticipate(problem, plan, random.Random(7), samples=4000)
    assert first == again
    assert {(b.step, b.executor) for b in first.backups} == {("a", "away"), ("b", "away")}
    assert {s.step for s in first.retry_slack} == {"a", "b"}
    # both fail-once-then-retry paths fit in 100 ms; only a double failure (p = 0.5 * 0.01) fails
    assert abs(first.p_on_time - 0.99) < 0.01


def test_anticipation_provisions_compensations_in_reverse_order() -> None:
    """Compensations come from the goal, last step first."""
    goal = Goal(
        "g",
        (
            Step("a", "work", compensation="undo-a"),
            Step("b", "work", needs=("a",), compensation="undo-b"),
        ),
    )
    problem = from_goal(goal, OFFERS)
    plan = solve(problem, FAST)
    found = anticipate(problem, plan, random.Random(0), samples=10)
    assert [(c.step, c.action) for c in found.compensations] == [("b", "undo-b"), ("a", "undo-a")]


def test_plan_json_has_exactly_the_contract_keys() -> None:
    """{status, makespan, bound, cost, steps, reasons, anticipation} and it serialises."""
    problem, plan = planned()
    out = to_json(plan, [Refusal(reason=Reason.POLICY_BLOCK, detail="x")])
    keys = ["status", "makespan", "bound", "cost", "steps", "reasons", "anticipation"]
    assert list(out) == keys
    assert out["steps"][0] == {"id": "a", "executor": "home", "start": 0, "end": 10}
    assert out["reasons"][0]["reason"] == "policy_block"
    assert out["anticipation"] is None  # none computed
    foreseen = to_json(plan, (), anticipate(problem, plan, random.Random(7), samples=100))
    shown = foreseen["anticipation"]
    assert list(shown) == ["p_on_time", "p_success", "samples", "steps", "compensations"]
    assert shown["steps"][0] == {"id": "a", "executor": "home", "backup": "away",
                                 "retry_slack": 12}
    json.dumps(foreseen)


def test_anticipation_table_names_backups_and_the_on_time_probability() -> None:
    """The text view: a row per step with its backup, p(on time) in the caption."""
    problem, plan = planned()
    found = anticipate(problem, plan, random.Random(7), samples=100)
    buf = io.StringIO()
    Console(file=buf, width=120, color_system=None).print(anticipation_table(plan, found))
    text = buf.getvalue()
    assert "away" in text
    assert f"p(on time) {found.p_on_time:.1%}" in text


def test_gantt_draws_a_row_per_executor_and_marks_the_deadline() -> None:
    """The text chart has the executor, the step labels and the deadline marker."""
    _, plan = planned()
    text = gantt_text(plan, deadline=30, width=30)
    assert "home" in text
    assert "a─" in text
    assert "|" in text
    assert "deadline 0.03s" in text
