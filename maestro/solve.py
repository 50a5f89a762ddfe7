"""The CP-SAT adapter: the only module that imports ortools.

It turns a Problem into an optional-interval model, seeds it with the best heuristic plan (serial
SGS, forward-backward improvement, the genetic algorithm: heuristic.py), and returns a Plan
value (never an exception for an expected outcome). `find_conflict` names a minimal set of
conflicting constraint groups with CP-SAT assumptions, for refusals.

The time limit is a wall-clock promise: one deadline is fixed when the call starts, every phase
(heuristic, model, CP-SAT) is budgeted from what is left of it, and a timer thread stops CP-SAT's
search at the deadline, because neither `max_time_in_seconds` nor deterministic time alone bounds
wall time on a loaded machine (presolve, LNS sub-solves and the 2x net overran: 18.1 s for 8 s).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import assert_never

import msgspec
from ortools.sat.python import cp_model

from maestro import fbi, jit
from maestro.heuristic import GA_SHARE, first_plan, genetic
from maestro.options import Deadline, SolveOptions, available_workers
from maestro.plan import Plan, Source, Status, plan_from_schedule, primary_value
from maestro.problem import Problem, Schedule, horizon, schedule_makespan, violations

__all__ = ["Deadline", "SolveOptions", "available_workers", "find_conflict", "solve"]

# What the call may take beyond the solver's stop: extracting and checking the plan, and CP-SAT
# joining its workers after a stop (measured well under 0.1 s with a busy process per core).
STOP_MARGIN_S = 0.05


# Share of the limit for the first CP-SAT round, before the genetic algorithm.
QUICK_SHARE = 0.1
# Up to this many tasks a CP-SAT round runs beside the GA (not in deterministic mode). Measured
# at 8 s on hard subsets, load 1-5: j60 mean gap 1.76 -> 1.64 % with it (CP-SAT proves and
# finds more there), j120 5.26 -> 5.77 % (the GA is the stronger search there and loses CPU).
BESIDE_MAX_TASKS = 80
# Up to this many tasks the side round runs to the deadline (no restart): on the j30 needles
# (j3013_2, j3013_5, j3029_8) a restart lost the search that found the optimum.
ONE_ROUND_MAX_TASKS = 40


class _Model(msgspec.Struct, frozen=True):
    model: cp_model.CpModel
    starts: list[cp_model.IntVar]
    presence: list[list[cp_model.IntVar]]
    makespan: cp_model.IntVar
    cost: cp_model.IntVar
    tokens: cp_model.IntVar
    makespan_ub: int
    groups: dict[str, cp_model.IntVar]


class _Tasks(msgspec.Struct, frozen=True):
    starts: list[cp_model.IntVar]
    ends: list[cp_model.LinearExprT]
    presence: list[list[cp_model.IntVar]]
    # (interval, mode index) per task, for the cumulatives
    intervals: list[list[tuple[cp_model.IntervalVar, int]]]
    top: int


def _task_vars(m: cp_model.CpModel, problem: Problem, h: int) -> _Tasks:
    """One start per task, one optional interval per mode sharing it, exactly one mode chosen."""
    out = _Tasks([], [], [], [], h)
    top = h
    for i, t in enumerate(problem.tasks):
        durations = [md.duration for md in t.modes]
        lo = t.start if t.start is not None else t.release
        hi = t.start if t.start is not None else max(h - min(durations), lo)
        s = m.new_int_var(lo, hi, f"s{i}")
        out.starts.append(s)
        if t.end is not None:
            # done: history, with its real duration, whatever the mode said
            out.ends.append(t.end)
            out.presence.append([m.new_constant(1)])
            out.intervals.append([(m.new_interval_var(s, t.end - lo, t.end, f"x{i}"), 0)])
            top = max(top, t.end)
        elif len(t.modes) == 1:
            out.ends.append(s + durations[0])
            out.presence.append([m.new_constant(1)])
            out.intervals.append([(m.new_fixed_size_interval_var(s, durations[0], f"x{i}"), 0)])
            top = max(top, hi + durations[0])
        else:
            e = m.new_int_var(lo + min(durations), hi + max(durations), f"e{i}")
            lits = [m.new_bool_var(f"p{i}_{k}") for k in range(len(t.modes))]
            m.add_exactly_one(lits)
            out.ends.append(e)
            out.presence.append(lits)
            # One start variable per mode, tied to the task's when the mode is chosen. Optional
            # intervals that share (s, e) across modes made CP-SAT 9.15 claim OPTIMAL above the
            # true optimum on PSPLIB mm_j20 (j2013_8: 37, 36 or 35 with 1, 2 or 8 workers;
            # published 35); with this form it answered 35 for all three.
            modes = []
            for k, (d, lit) in enumerate(zip(durations, lits, strict=True)):
                s_k = m.new_int_var(lo, hi, f"s{i}_{k}")
                m.add(s_k == s).only_enforce_if(lit)
                m.add(e == s + d).only_enforce_if(lit)
                modes.append((m.new_optional_fixed_size_interval_var(s_k, d, lit, f"x{i}_{k}"), k))
            out.intervals.append(modes)
            top = max(top, hi + max(durations))
    return msgspec.structs.replace(out, top=top)


def _cumulatives(
    m: cp_model.CpModel,
    problem: Problem,
    tv: _Tasks,
    guard: Callable[[str], cp_model.IntVar | None],
) -> None:
    for r, res in enumerate(problem.resources):
        ivs: list[cp_model.IntervalVar] = []
        dem: list[int] = []
        for i, t in enumerate(problem.tasks):
            for iv, k in tv.intervals[i]:
                d = t.modes[k].demands[r] if t.modes[k].demands else 0
                if d > 0:
                    ivs.append(iv)
                    dem.append(d)
        if not ivs:
            continue
        lit = guard(f"capacity:{res.name}")
        if lit is None:
            m.add_cumulative(ivs, dem, res.capacity)
        else:
            # A capacity variable lets one literal switch the whole cumulative off.
            cap = m.new_int_var(res.capacity, max(res.capacity, sum(dem)), f"cap{r}")
            m.add(cap <= res.capacity).only_enforce_if(lit)
            m.add_cumulative(ivs, dem, cap)


def _total(
    m: cp_model.CpModel, tv: _Tasks, values: Sequence[Sequence[int]], name: str
) -> cp_model.IntVar:
    var = m.new_int_var(0, max(sum(max(v, default=0) for v in values), 0), name)
    m.add(
        var
        == sum(
            v * p
            for vs, ps in zip(values, tv.presence, strict=True)
            for v, p in zip(vs, ps, strict=True)
            if v
        )
    )
    return var


def _build(problem: Problem, *, soft: bool, makespan_ub: int | None = None) -> _Model:
    """The CP-SAT model. With `soft`, each deadline, budget and capacity is guarded by a named
    literal so assumptions can switch it off and name a conflict.
    """
    m = cp_model.CpModel()
    groups: dict[str, cp_model.IntVar] = {}

    def guard(name: str) -> cp_model.IntVar | None:
        if not soft:
            return None
        lit = m.new_bool_var(name)
        groups[name] = lit
        return lit

    def limit(name: str, expr: cp_model.LinearExprT, value: int) -> None:
        lit = guard(name)
        c = m.add(expr <= value)
        if lit is not None:
            c.only_enforce_if(lit)

    tv = _task_vars(m, problem, horizon(problem) if makespan_ub is None else makespan_ub)
    for edge in problem.edges:
        ref = tv.starts[edge.pred] if edge.start_to_start else tv.ends[edge.pred]
        m.add(tv.starts[edge.succ] >= ref + edge.lag)
    _cumulatives(m, problem, tv, guard)
    makespan = m.new_int_var(0, tv.top, "makespan")
    for e_i in tv.ends:
        m.add(makespan >= e_i)
    if problem.deadline is not None:
        limit("deadline", makespan, problem.deadline)
    for i, t in enumerate(problem.tasks):
        if t.deadline is not None:
            limit(f"deadline:{t.id}", tv.ends[i], t.deadline)
    cost = _total(m, tv, [[md.cost for md in t.modes] for t in problem.tasks], "cost")
    tokens = _total(m, tv, [[md.tokens for md in t.modes] for t in problem.tasks], "tokens")
    if problem.budget_cost is not None:
        limit("budget.cost", cost, problem.budget_cost)
    if problem.budget_tokens is not None:
        limit("budget.tokens", tokens, problem.budget_tokens)
    for k, res in enumerate(problem.nonrenewables):
        used = _total(m, tv, [[md.consumes[k] for md in t.modes] for t in problem.tasks], f"n{k}")
        limit(f"limit:{res.name}", used, res.capacity)
    return _Model(m, tv.starts, tv.presence, makespan, cost, tokens, tv.top, groups)


def _objective(problem: Problem, built: _Model) -> int:
    """Set the objective; returns the weight of cost in it (1 unless lexicographic).

    Lexicographic is one weighted objective, cost * (makespan_ub + 1) + makespan: since makespan
    never exceeds makespan_ub, one unit of cost outweighs any makespan, so this is exactly "least
    cost, then earliest finish" in a single solve (a two-phase solve would split the time limit
    and lose the hint between phases). The deadline is a hard constraint either way.
    """
    m = built.model
    match problem.objective:
        case "makespan":
            m.minimize(built.makespan)
            return 1
        case "cost":
            m.minimize(built.cost)
            return 1
        case "lexicographic":
            weight = built.makespan_ub + 1
            m.minimize(built.cost * weight + built.makespan)
            return weight
        case _:
            assert_never(problem.objective)


def _params(
    solver: cp_model.CpSolver,
    options: SolveOptions,
    seconds: float,
    workers: int | None = None,
    dtime: float | None = None,
) -> None:
    """CP-SAT limits: `seconds` of wall time at most, whatever the mode."""
    p = solver.parameters
    chosen = workers if workers is not None else options.workers
    p.num_workers = max(1, chosen if chosen is not None else available_workers())
    p.random_seed = options.seed
    p.max_time_in_seconds = max(0.001, seconds)
    if options.deterministic:
        p.interleave_search = True
        p.max_deterministic_time = options.time_limit_s if dtime is None else max(0.01, dtime)


def _run(
    solver: cp_model.CpSolver, model: cp_model.CpModel, deadline: Deadline
) -> cp_model.CpSolverStatus:
    """Solve, with a timer that stops the search at the deadline if CP-SAT's own limit has not."""
    timer = threading.Timer(max(0.0, deadline.left()), solver.stop_search)
    timer.daemon = True
    timer.start()
    try:
        return solver.solve(model)
    finally:
        timer.cancel()


def _hint(built: _Model, problem: Problem, schedule: Schedule) -> None:
    for i, (mode, start) in enumerate(schedule):
        built.model.add_hint(built.starts[i], start)
        if len(built.presence[i]) > 1:
            for k, lit in enumerate(built.presence[i]):
                built.model.add_hint(lit, 1 if k == mode else 0)
    built.model.add_hint(built.makespan, schedule_makespan(problem, schedule))


def _extract(solver: cp_model.CpSolver, built: _Model) -> Schedule:
    out: list[tuple[int, int]] = []
    for s, lits in zip(built.starts, built.presence, strict=True):
        mode = (
            next(k for k, lit in enumerate(lits) if solver.boolean_value(lit))
            if len(lits) > 1
            else 0
        )
        out.append((mode, solver.value(s)))
    return tuple(out)


_STATUS: Mapping[cp_model.CpSolverStatus, Status] = {
    cp_model.OPTIMAL: "optimal",
    cp_model.FEASIBLE: "feasible",
    cp_model.INFEASIBLE: "infeasible",
    cp_model.UNKNOWN: "unknown",
}


class _Round(msgspec.Struct, frozen=True):
    status: Status
    schedule: Schedule | None
    bound: int | None


def _cp_round(
    problem: Problem,
    opts: SolveOptions,
    hint: Schedule | None,
    lb: int,
    *,
    until: Deadline,
    dtime: float,
    seed: int = 0,
) -> _Round | None:
    """One CP-SAT solve hinted (and, for makespan, bounded) by `hint`; None if no time is left."""
    ub = schedule_makespan(problem, hint) if hint is not None else None
    built = _build(problem, soft=False, makespan_ub=ub if problem.objective == "makespan" else None)
    if lb:
        built.model.add(built.makespan >= lb)
    weight = _objective(problem, built)
    if hint is not None and opts.hint:
        _hint(built, problem, hint)
    left = until.left() - STOP_MARGIN_S
    if left <= 0:
        return None
    solver = cp_model.CpSolver()
    _params(solver, opts, left, dtime=dtime)
    # each round its own seed: a restart on the same seed tends to retrace the same search
    solver.parameters.random_seed = opts.seed + seed
    code = _run(solver, built.model, until)
    status = _STATUS.get(code)
    if status is None:
        raise RuntimeError(f"CP-SAT rejected the model: {solver.status_name(code)}")
    bound: int | None = None
    if status in ("optimal", "feasible") or (status == "unknown" and hint is not None):
        raw = math.ceil(solver.best_objective_bound - 1e-6)
        bound = max(raw // weight, lb) if lb else raw // weight
    schedule: Schedule | None = None
    if status in ("optimal", "feasible"):
        schedule = _extract(solver, built)
        broken = violations(problem, schedule)
        if broken:
            raise RuntimeError(f"CP-SAT plan breaks the problem: {broken[:3]}")
    return _Round(status, schedule, bound)


_State = tuple[Schedule, Source, int | None, Status]


def _merge(problem: Problem, r: _Round | None, state: _State) -> _State:
    """Fold one CP-SAT round into (best plan, its source, bound, status) so far."""
    best, source, bound, status = state
    if r is None:
        return best, source, bound, status
    if r.bound is not None:
        bound = max(bound or 0, r.bound)
    if r.schedule is not None and primary_value(problem, r.schedule) <= primary_value(
        problem, best
    ):
        best, source = r.schedule, "cp-sat"
    return best, source, bound, "optimal" if r.status == "optimal" else status


class _Beside:
    """A CP-SAT round in a thread, hinted by `hint`, stopped at `until` like any round."""

    def __init__(
        self, problem: Problem, opts: SolveOptions, hint: Schedule, lb: int, until: Deadline
    ) -> None:
        self.finished = threading.Event()
        self.result: _Round | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = _cp_round(problem, opts, hint, lb, until=until, dtime=1e9, seed=1)
            except BaseException as exc:  # re-raised in join()
                self.error = exc
            finally:
                self.finished.set()

        self.thread = threading.Thread(target=run, daemon=True, name="cp-sat-beside")
        self.thread.start()

    def join(self) -> _Round | None:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result


def solve(
    problem: Problem, options: SolveOptions | None = None, *, deadline: Deadline | None = None
) -> Plan:
    """Plan with CP-SAT, hinted by the heuristic plan, which is returned ("feasible") when CP-SAT
    finds nothing better in time. "infeasible" is proven; "unknown" means the time ran out.

    Two rounds for makespan problems the heuristic applies to: a quick CP-SAT round (most
    instances end here, proven), then, if unproven, the genetic algorithm from the best plan so
    far (beside a CP-SAT round, unless deterministic) and a last CP-SAT round hinted by the
    better result for the rest of the limit.
    Returns within `options.time_limit_s` (or by `deadline`, when the caller shares one across
    phases) plus STOP_MARGIN_S of wall time, with the best plan found and its bound.
    """
    opts = options or SolveOptions()
    t0 = time.perf_counter()
    end = deadline if deadline is not None else Deadline(opts.time_limit_s)
    if any(not t.modes for t in problem.tasks):
        return Plan(status="infeasible", source="none", unit=problem.unit)
    first = first_plan(problem, opts, end)
    lb = fbi.lower_bound(problem) if problem.objective == "makespan" else 0

    def done(schedule: Schedule, status: Status, bound: int | None, source: Source) -> Plan:
        return plan_from_schedule(problem, schedule, status, bound=bound,
                                  solve_time_s=time.perf_counter() - t0, source=source)

    if first is not None and problem.objective == "makespan" \
            and schedule_makespan(problem, first) <= lb:
        return done(first, "optimal", lb, "sgs")  # at the lower bound: nothing to search
    two = first is not None and problem.objective == "makespan" and fbi.applies(problem)
    quick = QUICK_SHARE * opts.time_limit_s
    r1_until = end.earlier(max(0.0, end.left() - quick)) if two else end
    r1 = _cp_round(problem, opts, first, lb, until=r1_until,
                   dtime=quick if two else opts.time_limit_s)
    best = first
    source: Source = "sgs"
    if r1 is not None and r1.schedule is not None and (
        best is None or primary_value(problem, r1.schedule) <= primary_value(problem, best)
    ):
        best, source = r1.schedule, "cp-sat"
    bound = r1.bound if r1 is not None else (lb or None)
    status: Status = r1.status if r1 is not None else "unknown"
    if two and status in ("feasible", "unknown") and best is not None and end.left() > 0:
        # Compiled in the background from the first plan that needs the GA (a service starts it
        # when it starts): the GA begins on the Python kernels and switches when they are ready.
        # A problem the quick round proves never pays for a compile, nor a CLI for its wait.
        jit.start()
        rounds: list[_Round | None] = []
        if len(problem.tasks) <= BESIDE_MAX_TASKS and not opts.deterministic:
            # The GA (Python, one core) and a CP-SAT round (its own threads; it releases the
            # GIL) search side by side for GA_SHARE of the limit, then CP-SAT goes on from the
            # better of the two. Sequential in deterministic mode, so replays stay equal.
            mid = (
                end
                if len(problem.tasks) <= ONE_ROUND_MAX_TASKS
                else end.earlier(max(0.0, end.left() - GA_SHARE * opts.time_limit_s))
            )
            side = _Beside(problem, opts, best, lb, mid)
            better = genetic(problem, opts, mid, best, halt=side.finished.is_set)
            rounds.append(side.join())
        else:
            better = genetic(problem, opts, end, best)
        if primary_value(problem, better) < primary_value(problem, best):
            best, source = better, "sgs"
        for r in rounds:
            best, source, bound, status = _merge(problem, r, (best, source, bound, status))
        if status != "optimal" and (bound is None or primary_value(problem, best) > bound):
            r2 = _cp_round(problem, opts, best, lb, until=end, dtime=opts.time_limit_s - quick,
                           seed=2)
            best, source, bound, status = _merge(problem, r2, (best, source, bound, status))
    if status == "infeasible":
        return Plan(status="infeasible", solve_time_s=time.perf_counter() - t0,
                    source="cp-sat", unit=problem.unit)
    if best is None:
        return Plan(status="unknown", solve_time_s=time.perf_counter() - t0, source="none",
                    unit=problem.unit)
    if status != "optimal" and bound is not None and primary_value(problem, best) <= bound:
        status = "optimal"
    return done(best, "optimal" if status == "optimal" else "feasible", bound, source)


def find_conflict(
    problem: Problem, options: SolveOptions | None = None, *, deadline: Deadline | None = None
) -> list[str] | None:
    """A minimal set of constraint groups that cannot hold together, or None if none was proven.

    Group names: "deadline", "deadline:<step>", "budget.cost", "budget.tokens", "limit:<N>",
    "capacity:<resource>". An empty list means the precedence/lags/pins alone conflict.
    Uses one worker because CP-SAT reports the assumption core from a single search. All the
    sub-solves share one deadline (the time limit); when it passes mid-filter, the set found so
    far is returned (it conflicts, but may not be minimal).
    """
    opts = options or SolveOptions()
    end = deadline if deadline is not None else Deadline(opts.time_limit_s)
    built = _build(problem, soft=True)
    names = sorted(built.groups)

    def infeasible(subset: Sequence[str]) -> tuple[bool, list[str]] | None:
        left = end.left() - STOP_MARGIN_S
        if left <= 0:
            return None
        m = built.model
        m.clear_assumptions()
        m.add_assumptions([built.groups[n] for n in subset])
        solver = cp_model.CpSolver()
        _params(solver, opts, left, workers=1)
        code = _run(solver, m, end)
        if code == cp_model.INFEASIBLE:
            core = solver.sufficient_assumptions_for_infeasibility()
            by_index = {built.groups[n].index: n for n in subset}
            return True, sorted(by_index[c] for c in core if c in by_index)
        if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return False, []
        return None

    first = infeasible(names)
    if first is None or not first[0]:
        return None
    core = first[1]
    if not core:
        structural = infeasible([])
        if structural is not None and structural[0]:
            return []
        core = names
    # Deletion filter: drop each group whose removal keeps the rest infeasible.
    for name in list(core):
        if name not in core:
            continue
        rest = [n for n in core if n != name]
        answer = infeasible(rest)
        if answer is not None and answer[0]:
            core = [n for n in answer[1] if n in rest] if answer[1] else rest
    return core
