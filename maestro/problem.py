"""The solver-facing problem: tasks with alternative modes, lags, resources and limits, as data.

Goals (with executor offers) and PSPLIB instances both become a Problem, so one SGS and one
CP-SAT model serve the product and the benchmarks. Replans reuse it through Done/Running progress.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, assert_never

import msgspec

from maestro.goal import CapabilityOffer, Goal, Objective, Offer, Step

__all__ = [
    "Done",
    "Edge",
    "Mode",
    "Problem",
    "Progress",
    "Rejection",
    "Resource",
    "Schedule",
    "Task",
    "Unit",
    "from_goal",
    "horizon",
    "schedule_cost",
    "schedule_makespan",
    "schedule_tokens",
    "violations",
]

Unit = Literal["ms", "period"]
# One (mode index, start) per task, in task order: what SGS and CP-SAT both produce.
Schedule = tuple[tuple[int, int], ...]


class Mode(msgspec.Struct, frozen=True):
    """One way to run a task: on an executor (goals) or a PSPLIB mode.

    `demands` is aligned with Problem.resources and `consumes` with Problem.nonrenewables.
    """

    id: str
    duration: int
    demands: tuple[int, ...] = ()
    consumes: tuple[int, ...] = ()
    cost: int = 0
    tokens: int = 0
    organisation: str = ""
    trust: float = 1.0
    reliability: float = 1.0


class Rejection(msgspec.Struct, frozen=True):
    """Why an executor offering the capability is not a mode of the task (kept for refusals)."""

    executor: str
    why: Literal["trust", "organisation", "excluded"]
    trust: float


class Task(msgspec.Struct, frozen=True):
    """A step to schedule. `start`/`end` set means fixed (done); `start` alone means pinned."""

    id: str
    modes: tuple[Mode, ...]
    deadline: int | None = None
    release: int = 0
    start: int | None = None
    end: int | None = None
    capability: str = ""
    min_trust: float = 0.0
    compensation: str | None = None
    rejected: tuple[Rejection, ...] = ()


class Edge(msgspec.Struct, frozen=True):
    """start[succ] >= (start if start_to_start else end)[pred] + lag.

    A maximum lag d from i to j (RCPSP/max) is the start-to-start edge j -> i with lag -d.
    """

    pred: int
    succ: int
    lag: int = 0
    start_to_start: bool = False


class Resource(msgspec.Struct, frozen=True):
    """A renewable capacity (executor, pool, PSPLIB R k) or a non-renewable limit (PSPLIB N k)."""

    name: str
    capacity: int


class Problem(msgspec.Struct, frozen=True):
    """Everything the SGS and the CP-SAT model need; times are integers in `unit`."""

    name: str
    tasks: tuple[Task, ...]
    edges: tuple[Edge, ...]
    resources: tuple[Resource, ...]
    nonrenewables: tuple[Resource, ...] = ()
    deadline: int | None = None
    budget_cost: int | None = None
    budget_tokens: int | None = None
    objective: Objective = "lexicographic"
    unit: Unit = "ms"


class Done(msgspec.Struct, frozen=True, tag="done"):
    """A step that has finished: its place in the plan is history."""

    step: str
    executor: str
    start_ms: int
    end_ms: int


class Running(msgspec.Struct, frozen=True, tag="running"):
    """A step that has started: its executor and start are fixed, its end is estimated."""

    step: str
    executor: str
    start_ms: int


Progress = Done | Running


def _mode(
    step: Step, offer: Offer, terms: CapabilityOffer, n_resources: int, slots: Iterable[int]
) -> Mode:
    duration = step.duration_ms if terms.duration_ms is None else terms.duration_ms
    demands = [0] * n_resources
    for r in slots:
        demands[r] = 1
    return Mode(
        id=offer.executor,
        duration=duration,
        demands=tuple(demands),
        cost=terms.rate + math.ceil(terms.rate_per_s * duration / 1000),
        tokens=math.ceil(step.tokens * terms.tokens_factor),
        organisation=offer.organisation,
        trust=offer.trust,
        reliability=offer.reliability,
    )


def _terms(offer: Offer, capability: str) -> CapabilityOffer | None:
    return next((c for c in offer.capabilities if c.capability == capability), None)


def from_goal(
    goal: Goal,
    offers: Sequence[Offer],
    *,
    excluded: Iterable[str] = (),
    progress: Iterable[Progress] = (),
    now_ms: int = 0,
    allowed_organisations: Iterable[str] | None = None,
    min_trust: Mapping[str, float] | None = None,
) -> Problem:
    """One mode per eligible (step, executor): capability offered, trust, treaty, not excluded.

    Assumes `validate(goal)` passed. Done steps are fixed, running steps pinned, and nothing else
    starts before `now_ms`. `allowed_organisations` and `min_trust` let a policy narrow the choice.
    """
    banned = set(excluded)
    orgs = set(goal.organisations)
    if allowed_organisations is not None:
        allowed = set(allowed_organisations)
        orgs = orgs & allowed if orgs else allowed
    extra_trust = dict(min_trust or {})
    executors = [o for o in offers if o.executor not in banned]
    resources = [Resource(o.executor, o.capacity) for o in executors]
    exec_index = {o.executor: i for i, o in enumerate(executors)}
    pool_base = len(resources)
    resources += [Resource(f"pool:{p.name}", p.capacity) for p in goal.pools]
    n_res = len(resources)
    index = {s.id: i for i, s in enumerate(goal.steps)}
    state: dict[str, Progress] = {p.step: p for p in progress}
    tasks: list[Task] = []
    for step in goal.steps:
        pools = [
            pool_base + k
            for k, p in enumerate(goal.pools)
            if step.id in p.steps or step.capability in p.capabilities
        ]
        need = max(step.min_trust, extra_trust.get(step.id, 0.0))
        modes: list[Mode] = []
        rejected: list[Rejection] = []
        for offer in offers:
            terms = _terms(offer, step.capability)
            if terms is None:
                continue
            if offer.executor in banned:
                rejected.append(Rejection(offer.executor, "excluded", offer.trust))
            elif offer.trust < need:
                rejected.append(Rejection(offer.executor, "trust", offer.trust))
            elif orgs and offer.organisation not in orgs:
                rejected.append(Rejection(offer.executor, "organisation", offer.trust))
            else:
                slots = [exec_index[offer.executor], *pools]
                modes.append(_mode(step, offer, terms, n_res, slots))
        base = Task(
            id=step.id,
            modes=tuple(modes),
            deadline=step.deadline_ms,
            release=now_ms,
            capability=step.capability,
            min_trust=need,
            compensation=step.compensation,
            rejected=tuple(rejected),
        )
        tasks.append(
            _apply_progress(
                base,
                state.get(step.id),
                step=step,
                offers=offers,
                exec_index=exec_index,
                pools=pools,
                n_res=n_res,
            )
        )
    edges = tuple(Edge(index[d], index[s.id]) for s in goal.steps for d in s.needs if d in index)
    return Problem(
        name=goal.name,
        tasks=tuple(tasks),
        edges=edges,
        resources=tuple(resources),
        deadline=goal.deadline_ms,
        budget_cost=goal.budget.cost,
        budget_tokens=goal.budget.tokens,
        objective=goal.objective,
        unit="ms",
    )


def _apply_progress(
    task: Task,
    state: Progress | None,
    *,
    step: Step,
    offers: Sequence[Offer],
    exec_index: Mapping[str, int],
    pools: Sequence[int],
    n_res: int,
) -> Task:
    if state is None:
        return task
    offer = next((o for o in offers if o.executor == state.executor), None)
    terms = None if offer is None else _terms(offer, step.capability)
    match state:
        case Done(executor=executor, start_ms=start, end_ms=end):
            # History consumes no capacity: what ran, ran, even if it overlapped a limit.
            mode = Mode(id=executor, duration=end - start, demands=(0,) * n_res)
            if offer is not None and terms is not None:
                mode = msgspec.structs.replace(
                    _mode(step, offer, terms, n_res, ()), duration=end - start
                )
            return msgspec.structs.replace(task, modes=(mode,), start=start, end=end, release=0)
        case Running(executor=executor, start_ms=start):
            if offer is not None and terms is not None:
                slots = [*([exec_index[executor]] if executor in exec_index else []), *pools]
                mode = _mode(step, offer, terms, n_res, slots)
            else:
                mode = Mode(id=executor, duration=step.duration_ms, demands=(0,) * n_res)
            return msgspec.structs.replace(task, modes=(mode,), start=start, release=0)
        case _:
            assert_never(state)


def horizon(problem: Problem) -> int:
    """A time by which some schedule ends if any does (ignoring deadlines): serial placement."""
    return (
        max((t.end or 0 for t in problem.tasks), default=0)
        + max((t.start or 0 for t in problem.tasks), default=0)
        + max((t.release for t in problem.tasks), default=0)
        + sum(max((m.duration for m in t.modes), default=0) for t in problem.tasks)
        + sum(max(e.lag, 0) for e in problem.edges)
    )


def _end(problem: Problem, i: int, mode: int, start: int) -> int:
    task = problem.tasks[i]
    if task.end is not None:
        return task.end
    return start + task.modes[mode].duration


def schedule_makespan(problem: Problem, schedule: Schedule) -> int:
    """Latest end over all tasks (0 for an empty problem)."""
    return max((_end(problem, i, m, s) for i, (m, s) in enumerate(schedule)), default=0)


def schedule_cost(problem: Problem, schedule: Schedule) -> int:
    return sum(problem.tasks[i].modes[m].cost for i, (m, _) in enumerate(schedule))


def schedule_tokens(problem: Problem, schedule: Schedule) -> int:
    return sum(problem.tasks[i].modes[m].tokens for i, (m, _) in enumerate(schedule))


def violations(problem: Problem, schedule: Schedule) -> list[str]:
    """Every constraint the schedule breaks, in words; empty means feasible.

    An independent checker: tests and the SGS fallback trust it, not the producer.
    """
    out: list[str] = []
    tasks = problem.tasks
    if len(schedule) != len(tasks):
        return [f"schedule has {len(schedule)} entries for {len(tasks)} tasks"]
    ends = [_end(problem, i, m, s) for i, (m, s) in enumerate(schedule)]
    for i, (t, (m, s)) in enumerate(zip(tasks, schedule, strict=True)):
        if not 0 <= m < len(t.modes):
            return [f"task {t.id} has no mode {m}"]
        if t.start is not None and s != t.start:
            out.append(f"task {t.id} must start at {t.start}")
        if t.start is None and s < t.release:
            out.append(f"task {t.id} starts at {s} before its release {t.release}")
        if t.deadline is not None and ends[i] > t.deadline:
            out.append(f"task {t.id} ends at {ends[i]} after its deadline {t.deadline}")
    for e in problem.edges:
        ref = schedule[e.pred][1] if e.start_to_start else ends[e.pred]
        if schedule[e.succ][1] < ref + e.lag:
            out.append(f"{tasks[e.succ].id} starts before {tasks[e.pred].id} allows (lag {e.lag})")
    if problem.deadline is not None and schedule_makespan(problem, schedule) > problem.deadline:
        out.append(f"makespan exceeds the deadline {problem.deadline}")
    if problem.budget_cost is not None and schedule_cost(problem, schedule) > problem.budget_cost:
        out.append(f"cost exceeds the budget {problem.budget_cost}")
    tokens = schedule_tokens(problem, schedule)
    if problem.budget_tokens is not None and tokens > problem.budget_tokens:
        out.append(f"tokens exceed the budget {problem.budget_tokens}")
    for k, res in enumerate(problem.nonrenewables):
        used = sum(tasks[i].modes[m].consumes[k] for i, (m, _) in enumerate(schedule))
        if used > res.capacity:
            out.append(f"{res.name} uses {used} of {res.capacity}")
    for r, res in enumerate(problem.resources):
        running = [
            (s, ends[i], tasks[i].modes[m].demands[r])
            for i, (m, s) in enumerate(schedule)
            if tasks[i].modes[m].demands and tasks[i].modes[m].demands[r] > 0 and ends[i] > s
        ]
        for t0 in {s for s, _, _ in running}:
            load = sum(d for s, e, d in running if s <= t0 < e)
            if load > res.capacity:
                out.append(f"{res.name} is over capacity at {t0}: {load} > {res.capacity}")
                break
    return out
