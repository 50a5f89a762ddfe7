"""The decider's rules that several commands share, and compensation. Pure.

moon/workflow.py decides each command; what follows from an attempt's outcome is here, because
completions, failures, timers and replans all lead to it: a retry or not (`backoff_ms`), a
deviation, the token budget, the workflow's on_failure policy, scheduling the steps whose
dependencies completed, and compensation in waves (dependants first). Each rule emits into an
`_Acc`, so later rules see the state earlier ones led to.
"""

from __future__ import annotations

from typing import assert_never

from moon.dag import reverse_topological
from moon.state import BUSY, StepState, WorkflowState, evolve
from streams.moon_events import (
    BudgetExhausted,
    CompensationFailed,
    CompensationScheduled,
    CompensationStarted,
    Deviation,
    DeviationKind,
    MoonEvent,
    RetryPolicy,
    RetryScheduled,
    StepScheduled,
    Usage,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowFailed,
)

__all__ = ["backoff_ms"]


class _Acc:
    """Events decided so far and the state they lead to: later rules see earlier effects."""

    def __init__(self, state: WorkflowState) -> None:
        self.state = state
        self.events: list[MoonEvent] = []

    def emit(self, event: MoonEvent) -> None:
        self.events.append(event)
        self.state = evolve(self.state, event)


# --- rules shared by several commands ----------------------------------------------------------


def _after_attempt_failure(acc: _Acc, s: StepState, at: int, will_retry: bool, error: str) -> None:
    if acc.state.status == "compensating":
        _progress_compensation(acc, at)
        return
    _check_budget(acc, at)
    if will_retry:
        _schedule_retry(acc, s.spec.id, at)
    elif acc.state.status == "running":
        _deviate(acc, at, "failed", s, error)
        _on_failure(acc, at, f"step {s.spec.id} failed: {error}")


def _compensation_failed(
    acc: _Acc, s: StepState, at: int, error: str, *, error_type: str, usage: Usage
) -> None:
    # A compensation is retried whatever the error: giving up on an undo is reported, not silent.
    will_retry = _attempts_left(s)
    acc.emit(
        CompensationFailed(
            at_ms=at,
            step=s.spec.id,
            attempt=s.attempt,
            error=error,
            error_type=error_type,
            usage=usage,
            will_retry=will_retry,
        )
    )
    if will_retry:
        _schedule_retry(acc, s.spec.id, at)
        return
    _deviate(acc, at, "compensation_failed", s, error)
    _progress_compensation(acc, at)


def backoff_ms(policy: RetryPolicy, failures: int) -> int:
    """Delay before the retry after the n-th failed attempt of a window (Temporal's formula)."""
    ceiling = (
        policy.maximum_interval_ms
        if policy.maximum_interval_ms is not None
        else 100 * policy.initial_interval_ms
    )
    delay = float(policy.initial_interval_ms)
    for _ in range(failures - 1):
        if delay >= ceiling:
            break
        delay *= policy.backoff_coefficient
    return int(min(delay, ceiling))


def _attempts_left(s: StepState) -> bool:
    limit = s.spec.retry.maximum_attempts
    return limit == 0 or s.attempt - s.window_start + 1 < limit


def _schedule_retry(acc: _Acc, step: str, at: int) -> None:
    s = acc.state.steps[step]
    delay = backoff_ms(s.spec.retry, s.attempt - s.window_start + 1)
    acc.emit(
        RetryScheduled(
            at_ms=at, step=step, attempt=s.attempt + 1, delay_ms=delay, due_ms=at + delay
        )
    )


def _deviate(acc: _Acc, at: int, kind: DeviationKind, s: StepState, detail: str) -> None:
    acc.emit(
        Deviation(
            at_ms=at,
            workflow_id=acc.state.workflow_id,
            kind=kind,
            step=s.spec.id,
            attempt=s.attempt,
            executor=s.executor,
            detail=detail,
            plan_id=acc.state.plan_id,
            plan_revision=acc.state.plan_revision,
        )
    )


def _check_budget(acc: _Acc, at: int) -> None:
    state = acc.state
    budget = state.budget_tokens
    if state.status != "running" or state.halted or budget is None:
        return
    if state.usage.tokens <= budget:
        return
    acc.emit(BudgetExhausted(at_ms=at, budget_tokens=budget, used_tokens=state.usage.tokens))
    acc.emit(
        Deviation(
            at_ms=at,
            workflow_id=state.workflow_id,
            kind="budget_overrun",
            detail=f"{state.usage.tokens} tokens used of {budget}",
            plan_id=state.plan_id,
            plan_revision=state.plan_revision,
        )
    )
    _on_failure(acc, at, "token budget exhausted")


def _on_failure(acc: _Acc, at: int, reason: str) -> None:
    """What the workflow does by itself when the plan no longer holds and nobody replans."""
    if acc.state.status != "running":
        return
    match acc.state.on_failure:
        case "wait":
            pass  # MAESTRO answers the deviation with a Replan, or someone sends Compensate
        case "compensate":
            _begin_compensation(acc, at, reason)
        case "fail":
            acc.emit(WorkflowFailed(at_ms=at, reason=reason))
        case _:
            assert_never(acc.state.on_failure)


def _advance(acc: _Acc, at: int) -> None:
    """Schedule every pending step whose dependencies completed; finish when all completed."""
    state = acc.state
    if state.status != "running":
        return
    if not state.halted:
        for step, s in state.steps.items():
            if s.status == "pending" and all(
                state.steps[dep].status == "completed" for dep in s.needs
            ):
                acc.emit(StepScheduled(at_ms=at, step=step, attempt=1, executor=s.assigned))
    if all(s.status == "completed" for s in acc.state.steps.values()):
        acc.emit(WorkflowCompleted(at_ms=at, usage=acc.state.usage))


def _needs_undo(s: StepState) -> bool:
    return s.status == "completed" and s.spec.compensation is not None


def _begin_compensation(acc: _Acc, at: int, reason: str) -> None:
    state = acc.state
    needs = {k: s.needs for k, s in state.steps.items()}
    todo = reverse_topological(needs, [k for k, s in state.steps.items() if _needs_undo(s)])
    acc.emit(CompensationStarted(at_ms=at, reason=reason, steps=tuple(todo)))
    _progress_compensation(acc, at)


def _compensation_order(s: StepState, at: int, *, fresh: bool) -> CompensationScheduled:
    assert s.spec.compensation is not None
    return CompensationScheduled(
        at_ms=at,
        step=s.spec.id,
        attempt=s.attempt + 1,
        capability=s.spec.compensation,
        executor=s.assigned,
        fresh=fresh,
    )


def _progress_compensation(acc: _Acc, at: int) -> None:
    """Start every compensation whose dependants are all settled; end when nothing is left."""
    state = acc.state
    if state.status != "compensating":
        return
    needs = {k: s.needs for k, s in state.steps.items()}
    dependants: dict[str, list[str]] = {k: [] for k in needs}
    for step, deps in needs.items():
        for dep in deps:
            dependants[dep].append(step)
    for step in reverse_topological(needs, [k for k, s in state.steps.items() if _needs_undo(s)]):
        if not _any_dependant_unsettled(acc.state, dependants, step):
            acc.emit(_compensation_order(acc.state.steps[step], at, fresh=True))
    if any(s.status in BUSY or _needs_undo(s) for s in acc.state.steps.values()):
        return
    failed = tuple(k for k, s in acc.state.steps.items() if s.status == "compensation_failed")
    acc.emit(WorkflowCompensated(at_ms=at, failed=failed))


def _any_dependant_unsettled(
    state: WorkflowState, dependants: dict[str, list[str]], step: str
) -> bool:
    stack, seen = list(dependants[step]), set[str]()
    while stack:
        d = stack.pop()
        if d in seen:
            continue
        seen.add(d)
        s = state.steps[d]
        if s.status in BUSY or _needs_undo(s):
            return True
        stack.extend(dependants[d])
    return False
