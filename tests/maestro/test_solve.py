"""CP-SAT and SGS on small goals with hand-checked optimal plans, replans and determinism."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from maestro.goal import Budget, Goal, Pool, Step, load_goal, load_offers
from maestro.plan import Plan
from maestro.problem import (
    Done,
    Edge,
    Mode,
    Problem,
    Resource,
    Running,
    Task,
    from_goal,
    violations,
)
from maestro.sgs import serial_sgs, sgs_plan
from maestro.solve import SolveOptions, solve
from tests.maestro.conftest import EXAMPLES, SLOW_FAST, chain, offer

FAST = SolveOptions(time_limit_s=2.0, workers=2, seed=0)


def schedule_of(plan: Plan) -> dict[str, tuple[str, int, int]]:
    return {a.step: (a.executor, a.start, a.end) for a in plan.assignments}


def test_one_executor_runs_parallel_steps_one_after_another() -> None:
    """a (10) and b (20) feed c (5): one executor of capacity 1 gives 35, capacity 2 gives 25."""
    goal = Goal(
        "fan-in",
        (
            Step("a", "w", duration_ms=10),
            Step("b", "w", duration_ms=20),
            Step("c", "w", needs=("a", "b"), duration_ms=5),
        ),
        objective="makespan",
    )
    x = offer("x", ("w", None, 0))  # type: ignore[arg-type]
    one = solve(from_goal(goal, [x]), FAST)
    assert (one.status, one.makespan) == ("optimal", 35)
    two = solve(from_goal(goal, [msgspec.structs.replace(x, capacity=2)]), FAST)
    assert (two.status, two.makespan) == ("optimal", 25)
    assert schedule_of(two) == {"a": ("x", 0, 10), "b": ("x", 0, 20), "c": ("x", 20, 25)}


def test_lexicographic_meets_the_deadline_then_spends_least() -> None:
    """slow costs 1 for 10 ms, fast 10 for 5 ms: deadline 15 forces exactly one fast step."""
    plan = solve(from_goal(chain(deadline_ms=15), SLOW_FAST), FAST)
    assert (plan.status, plan.cost, plan.makespan) == ("optimal", 11, 15)
    assert 11 == plan.objective == plan.bound
    assert plan.gap == 0.0


def test_without_a_deadline_the_cheapest_plan_wins_and_makespan_breaks_ties() -> None:
    """No deadline: both steps on slow (cost 2, makespan 20)."""
    plan = solve(from_goal(chain(), SLOW_FAST), FAST)
    assert (plan.cost, plan.makespan) == (2, 20)
    assert schedule_of(plan) == {"a": ("slow", 0, 10), "b": ("slow", 10, 20)}


def test_makespan_objective_buys_speed() -> None:
    """Objective makespan: both on fast (makespan 10, cost 20)."""
    plan = solve(from_goal(chain(objective="makespan"), SLOW_FAST), FAST)
    assert (plan.makespan, plan.cost) == (10, 20)


def test_pools_limit_concurrency_across_executors() -> None:
    """Two executors but a pool of 1: the two independent steps run one after the other."""
    goal = Goal(
        "pooled",
        (Step("a", "w", duration_ms=10), Step("b", "w", duration_ms=10)),
        pools=(Pool("rate", 1, capabilities=("w",)),),
        objective="makespan",
    )
    offers = [offer("x", ("w", 10, 0)), offer("y", ("w", 10, 0))]
    assert solve(from_goal(goal, offers), FAST).makespan == 20


def test_trust_and_treaty_filter_the_modes() -> None:
    """Only executors with enough trust, inside the treaty and not excluded become modes."""
    goal = Goal("g", (Step("a", "w", min_trust=0.8),), organisations=("acme",))
    offers = [
        offer("low", ("w", 1, 0), trust=0.5),
        offer("foreign", ("w", 1, 0), org="other"),
        offer("banned", ("w", 1, 0)),
        offer("ok", ("w", 1, 0)),
    ]
    task = from_goal(goal, offers, excluded={"banned"}).tasks[0]
    assert [m.id for m in task.modes] == ["ok"]
    assert {("low", "trust"), ("foreign", "organisation"), ("banned", "excluded")} == {
        (r.executor, r.why) for r in task.rejected
    }


def test_a_replan_keeps_done_steps_and_pinned_running_steps() -> None:
    """Done a stays where it ran; running b keeps its executor and start; c starts after now."""
    goal = Goal(
        "replan",
        (
            Step("a", "w", duration_ms=10),
            Step("b", "w", needs=("a",), duration_ms=10),
            Step("c", "w", duration_ms=10),
        ),
        objective="makespan",
    )
    offers = [offer("x", ("w", 10, 0), capacity=2), offer("y", ("w", 10, 0))]
    problem = from_goal(
        goal,
        offers,
        progress=[Done("a", "y", 0, 12), Running("b", "x", 12)],
        now_ms=15,
        excluded={"y"},
    )
    plan = solve(problem, FAST)
    got = schedule_of(plan)
    assert got["a"] == ("y", 0, 12)
    assert got["b"] == ("x", 12, 22)
    assert got["c"] == ("x", 15, 25)


def test_same_input_seed_and_workers_give_the_same_plan() -> None:
    """Determinism: two solves of the example goal are identical apart from the wall time."""
    goal = load_goal(EXAMPLES / "goal.yaml")
    offers = load_offers(EXAMPLES / "executors.yaml")
    assert isinstance(goal, Goal)
    assert isinstance(offers, tuple)
    plans = [
        msgspec.structs.replace(solve(from_goal(goal, offers), FAST), solve_time_s=0.0)
        for _ in range(2)
    ]
    assert plans[0] == plans[1]
    assert plans[0].status == "optimal"


def test_sgs_gives_a_feasible_plan_the_solver_can_only_improve() -> None:
    """The SGS plan is valid and CP-SAT's primary value is never worse."""
    goal = load_goal(EXAMPLES / "goal.yaml")
    offers = load_offers(EXAMPLES / "executors.yaml")
    assert isinstance(goal, Goal)
    assert isinstance(offers, tuple)
    problem = from_goal(goal, offers)
    heuristic = sgs_plan(problem)
    assert heuristic.status == "feasible"
    assert heuristic.objective is not None
    best = solve(problem, FAST)
    assert best.objective is not None
    assert best.objective <= heuristic.objective


def test_a_proven_infeasible_problem_says_infeasible() -> None:
    """Deadline 5 against a 10 ms step is infeasible, not unknown."""
    goal = Goal("g", (Step("a", "w"),), deadline_ms=5, budget=Budget())
    assert solve(from_goal(goal, [offer("x", ("w", 10, 0))]), FAST).status == "infeasible"


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    n = draw(st.integers(2, 8))
    caps = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))
    tasks = []
    for i in range(n):
        modes = tuple(
            Mode(
                id=str(k),
                duration=draw(st.integers(0, 6)),
                demands=tuple(draw(st.integers(0, c)) for c in caps),
            )
            for k in range(draw(st.integers(1, 2)))
        )
        tasks.append(Task(id=str(i), modes=modes))
    edges = tuple(
        Edge(i, j) for j in range(n) for i in range(j) if draw(st.booleans()) and i + 3 > j
    )
    resources = tuple(Resource(f"R{k}", c) for k, c in enumerate(caps))
    return Problem("random", tuple(tasks), edges, resources, objective="makespan", unit="period")


@settings(max_examples=30, deadline=None)
@given(problems())
def test_sgs_schedules_never_break_a_constraint(problem: Problem) -> None:
    """Property: whatever the DAG and capacities, the SGS schedule passes the checker."""
    schedule = serial_sgs(problem)
    assert schedule is not None
    assert violations(problem, schedule) == []
