"""Why no plan exists, in terms a user can act on: which executor, deadline or budget to change.

Cheap proofs come first (no eligible executor, critical path, cheapest cost, least tokens); only
when none applies does the caller pay for a CP-SAT conflict (`solve.find_conflict`).
"""

from __future__ import annotations

from collections.abc import Sequence

from maestro.plan import Plan
from maestro.problem import Problem, Task
from maestro.sgs import forward_order
from streams.replies import Reason, Refusal

__all__ = ["describe_group", "earliest_finish", "explain", "static_reasons"]


def _t(problem: Problem, value: float) -> str:
    if problem.unit == "ms":
        return f"{value / 1000:g} s"
    return f"{value:g} periods"


def earliest_finish(problem: Problem) -> tuple[list[int], list[int]] | None:
    """Earliest finish per task with its fastest mode, ignoring capacity, and each task's
    critical predecessor (-1 for none). None when the min-lag edges have a cycle.
    """
    order = forward_order(problem)
    if order is None:
        return None
    n = len(problem.tasks)
    start = [0] * n
    finish = [0] * n
    via = [-1] * n
    incoming: list[list[int]] = [[] for _ in range(n)]
    for k, e in enumerate(problem.edges):
        if e.lag >= 0:
            incoming[e.succ].append(k)
    for j in order:
        t = problem.tasks[j]
        s = t.start if t.start is not None else t.release
        for k in incoming[j]:
            e = problem.edges[k]
            ready = (start[e.pred] if e.start_to_start else finish[e.pred]) + e.lag
            if t.start is None and ready > s:
                s, via[j] = ready, e.pred
        start[j] = s
        fastest = min((m.duration for m in t.modes), default=0)
        finish[j] = t.end if t.end is not None else s + fastest
    return finish, via


def _no_executor(task: Task) -> Refusal:
    best = max(task.rejected, key=lambda r: r.trust, default=None)
    evidence = {
        "step": task.id,
        "capability": task.capability,
        "needed_trust": f"{task.min_trust:g}",
    }
    if best is None:
        detail = f"no executor offers capability {task.capability!r} (step {task.id})"
    else:
        whys = sorted({r.why for r in task.rejected})
        detail = (
            f"no eligible executor for capability {task.capability!r} (step {task.id}): "
            f"trust >= {task.min_trust:g} needed, best offered {best.trust:g} by {best.executor}"
            f"; rejected for {', '.join(whys)}"
        )
        evidence["best_trust"] = f"{best.trust:g}"
        evidence["best_executor"] = best.executor
    return Refusal(reason=Reason.NO_ELIGIBLE_EXECUTOR, detail=detail, evidence=evidence)


def static_reasons(problem: Problem) -> list[Refusal]:
    """Refusals provable without search; empty when only a solver can tell."""
    out = [_no_executor(t) for t in problem.tasks if not t.modes]
    if out:
        return out
    ef = earliest_finish(problem)
    if ef is not None:
        finish, via = ef
        if problem.deadline is not None and max(finish, default=0) > problem.deadline:
            last = max(range(len(finish)), key=finish.__getitem__)
            path = [last]
            while via[path[-1]] >= 0:
                path.append(via[path[-1]])
            names = " -> ".join(problem.tasks[i].id for i in reversed(path))
            out.append(
                Refusal(
                    reason=Reason.DEADLINE_INFEASIBLE,
                    detail=(
                        f"the critical path takes {_t(problem, finish[last])} with the fastest "
                        f"eligible executors, against a deadline of {_t(problem, problem.deadline)}"
                        f": {names}"
                    ),
                    evidence={
                        "critical_path": names,
                        "length": str(finish[last]),
                        "deadline": str(problem.deadline),
                    },
                )
            )
        for i, t in enumerate(problem.tasks):
            if t.deadline is not None and finish[i] > t.deadline:
                out.append(
                    Refusal(
                        reason=Reason.DEADLINE_INFEASIBLE,
                        detail=(
                            f"step {t.id} cannot finish before {_t(problem, finish[i])}, "
                            f"after its deadline of {_t(problem, t.deadline)}"
                        ),
                        evidence={"step": t.id, "earliest_finish": str(finish[i])},
                    )
                )
    cheapest = sum(min(m.cost for m in t.modes) for t in problem.tasks)
    if problem.budget_cost is not None and cheapest > problem.budget_cost:
        out.append(
            Refusal(
                reason=Reason.OVER_BUDGET,
                detail=(
                    f"the cheapest possible plan costs {cheapest} "
                    f"against a budget of {problem.budget_cost}"
                ),
                evidence={"cheapest": str(cheapest), "budget": str(problem.budget_cost)},
            )
        )
    fewest = sum(min(m.tokens for m in t.modes) for t in problem.tasks)
    if problem.budget_tokens is not None and fewest > problem.budget_tokens:
        out.append(
            Refusal(
                reason=Reason.BUDGET_EXHAUSTED,
                detail=(
                    f"the plan needs at least {fewest} tokens "
                    f"against a token budget of {problem.budget_tokens}"
                ),
                evidence={"tokens": str(fewest), "budget": str(problem.budget_tokens)},
            )
        )
    for k, res in enumerate(problem.nonrenewables):
        least = sum(min(m.consumes[k] for m in t.modes) for t in problem.tasks)
        if least > res.capacity:
            out.append(
                Refusal(
                    reason=Reason.OVER_BUDGET,
                    detail=f"{res.name} needs at least {least} against a limit of {res.capacity}",
                    evidence={"limit": res.name},
                )
            )
    return out


def describe_group(problem: Problem, name: str) -> str:
    """A constraint group name from `find_conflict` in words."""
    kind, _, arg = name.partition(":")
    match kind:
        case "deadline" if arg:
            task = next(t for t in problem.tasks if t.id == arg)
            return f"step {arg} deadline of {_t(problem, task.deadline or 0)}"
        case "deadline":
            return f"the deadline of {_t(problem, problem.deadline or 0)}"
        case "budget.cost":
            return f"the cost budget of {problem.budget_cost}"
        case "budget.tokens":
            return f"the token budget of {problem.budget_tokens}"
        case "capacity":
            res = next(r for r in problem.resources if r.name == arg)
            what = f"pool {arg[5:]}" if arg.startswith("pool:") else f"executor {arg}"
            return f"{what} capacity of {res.capacity} at a time"
        case "limit":
            return f"the {arg} limit"
        case _:
            return name


def explain(problem: Problem, plan: Plan, conflict: Sequence[str] | None = None) -> list[Refusal]:
    """Refusals for a plan that is not optimal/feasible; empty when there is a plan.

    `conflict` is `solve.find_conflict(problem)` for proven infeasibility (None if not run or
    not proven).
    """
    if plan.status in ("optimal", "feasible"):
        return []
    static = static_reasons(problem)
    if static:
        return static
    if plan.status == "unknown":
        return [
            Refusal(
                reason=Reason.SOLVER_TIMEOUT,
                detail=(
                    f"no plan found within the time limit ({plan.solve_time_s:.2f} s) and none "
                    "proven impossible; retry with more time or looser limits"
                ),
                retryable=True,
            )
        ]
    if conflict is None:
        return [
            Refusal(
                reason=Reason.CONFLICTING_CONSTRAINTS,
                detail="the constraints cannot all hold (no smaller conflict was isolated)",
            )
        ]
    if not conflict:
        return [
            Refusal(
                reason=Reason.CONFLICTING_CONSTRAINTS,
                detail="the dependencies, time lags and fixed steps alone cannot all hold",
            )
        ]
    words = [describe_group(problem, g) for g in conflict]
    return [
        Refusal(
            reason=Reason.CONFLICTING_CONSTRAINTS,
            detail="these cannot all hold together: " + "; ".join(words),
            evidence={"constraints": ",".join(conflict)},
        )
    ]
