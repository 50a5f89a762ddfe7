"""MOON's wire vocabulary: workflow commands, journaled events, decisions, work orders, timers.

Schemas live in `streams` so the engine, the executor SDK, MAESTRO and the CLI share one
definition. Event tags are never renamed; new fields go last with defaults; events accept unknown
fields (old readers skip them) while commands, which cross the trust boundary, forbid them.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

from streams.audit import RequestEvidence

__all__ = [
    "BudgetExhausted",
    "Cancel",
    "CarriedStep",
    "CheckpointStep",
    "Compensate",
    "CompensationFailed",
    "CompensationScheduled",
    "CompensationStarted",
    "CompleteStep",
    "Decision",
    "Deviation",
    "DeviationKind",
    "Dispatch",
    "Dispatched",
    "ExecutorReport",
    "FailStep",
    "FireTimer",
    "Heartbeat",
    "MoonCommand",
    "MoonCommandBase",
    "MoonEvent",
    "MoonEventBase",
    "OnFailure",
    "Replan",
    "ReplanApplied",
    "RetryPolicy",
    "RetryScheduled",
    "StartStep",
    "StepCheckpointed",
    "StepCompensated",
    "StepCompleted",
    "StepFailed",
    "StepHeartbeat",
    "StepScheduled",
    "StepSpec",
    "StepStarted",
    "StepTimedOut",
    "TimerKind",
    "TimerRequest",
    "Usage",
    "WorkOrder",
    "WorkflowCancelled",
    "WorkflowCompensated",
    "WorkflowCompleted",
    "WorkflowFailed",
    "command_kind",
    "significant_kind",
]

# "wake": the engine's one wake-up per workflow (moon/engine.py), which fires whichever of the
# others are due; never decided itself.
TimerKind: TypeAlias = Literal[
    "step_timeout", "heartbeat_timeout", "retry_backoff", "workflow_deadline", "wake"
]
DeviationKind: TypeAlias = Literal[
    "failed", "late", "executor_lost", "budget_overrun", "deadline_at_risk", "compensation_failed"
]
# What the engine does on its own when a step fails for good, the budget runs out or the
# workflow deadline passes: wait for MAESTRO (default), compensate, or fail the workflow.
OnFailure: TypeAlias = Literal["wait", "compensate", "fail"]


# --- values shared by commands and events ------------------------------------------------------


class Usage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Metered cost of one attempt (MEAL's three dimensions) or of a whole workflow."""

    tokens: int = 0
    wall_ms: int = 0
    joules: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            tokens=self.tokens + other.tokens,
            wall_ms=self.wall_ms + other.wall_ms,
            joules=self.joules + other.joules,
        )


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Temporal's retry policy: delay = min(initial * coefficient^(n-1), maximum); 0 = unlimited."""

    maximum_attempts: int = 3
    initial_interval_ms: int = 1_000
    backoff_coefficient: float = 2.0
    maximum_interval_ms: int | None = None  # None: 100 x initial, as Temporal does
    non_retryable_errors: tuple[str, ...] = ()


class StepSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One step of a dispatched DAG: what to run, after what, where, and how patiently."""

    id: str
    capability: str
    needs: tuple[str, ...] = ()
    executor: str | None = None
    compensation: str | None = None  # the capability that undoes this step, if any
    timeout_ms: int = 60_000  # per attempt, from scheduling (schedule-to-close)
    heartbeat_timeout_ms: int | None = None
    retry: RetryPolicy = RetryPolicy()
    deadline_ms: int | None = None  # absolute; finishing later is a `late` deviation
    tokens_estimate: int = 0
    params: bytes = b""  # opaque step input from the goal, handed to the executor


class CarriedStep(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A step a forked workflow starts with as already completed: its result is reused."""

    step: str
    result: bytes = b""
    usage: Usage = Usage()


# --- commands (trust boundary: unknown fields are refused) --------------------------------------


class MoonCommandBase(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    """Every command names itself (dedupe key) and its workflow, and carries the shell's clock."""

    command_id: str
    workflow_id: str
    at_ms: int


class Dispatch(MoonCommandBase, frozen=True, tag="moon.dispatch"):
    steps: tuple[StepSpec, ...]
    deadline_ms: int | None = None
    budget_tokens: int | None = None
    plan_id: str | None = None
    plan_revision: int = 0
    on_failure: OnFailure = "wait"
    completed: tuple[CarriedStep, ...] = ()  # forks start with these done
    forked_from: str | None = None
    owner: str | None = None  # the gate's caller: the workflow id is theirs
    traceparent: str | None = None  # W3C: the span that dispatched it (streams/tracing.py)
    # From the gate: the request's audit evidence, durable with the dispatch (a record that a
    # crash kept from AUDIT is written again from here, moon/projection.py).
    audit: RequestEvidence | None = None


class StartStep(MoonCommandBase, frozen=True, tag="moon.start_step"):
    step: str
    attempt: int
    executor: str


class ExecutorReport(MoonCommandBase, frozen=True):
    """What every report after the claim carries: the attempt, the claim token its order
    carried (proof its sender took that order), and who sent it, stamped by the engine from
    the verified signature (a sender's own word for it counts for nothing)."""

    step: str
    attempt: int
    claim: bytes = b""
    executor: str = ""


class Heartbeat(ExecutorReport, frozen=True, tag="moon.heartbeat"):
    pass


class CheckpointStep(ExecutorReport, frozen=True, tag="moon.checkpoint_step"):
    state: bytes = b""


class CompleteStep(ExecutorReport, frozen=True, tag="moon.complete_step"):
    result: bytes = b""
    usage: Usage = Usage()
    # The capabilities its sender will run at once: an order this completion schedules for
    # one of them comes in the engine's answer instead of through WORK (moon/handoff.py).
    take: tuple[str, ...] = ()


class FailStep(ExecutorReport, frozen=True, tag="moon.fail_step"):
    error: str = ""
    error_type: str = ""  # matched against RetryPolicy.non_retryable_errors
    retryable: bool = True
    usage: Usage = Usage()


class FireTimer(MoonCommandBase, frozen=True, tag="moon.fire_timer"):
    kind: TimerKind
    step: str = ""
    attempt: int = 0


class Replan(MoonCommandBase, frozen=True, tag="moon.replan"):
    plan_id: str
    revision: int
    assignments: dict[str, str]  # step -> executor
    reason: str = ""
    budget_tokens: int | None = None  # a revision may raise the budget


class Compensate(MoonCommandBase, frozen=True, tag="moon.compensate"):
    reason: str = ""


class Cancel(MoonCommandBase, frozen=True, tag="moon.cancel"):
    reason: str = ""


MoonCommand: TypeAlias = (
    Dispatch
    | StartStep
    | Heartbeat
    | CheckpointStep
    | CompleteStep
    | FailStep
    | FireTimer
    | Replan
    | Compensate
    | Cancel
)


# --- events (journaled; never forbid unknown fields) -------------------------------------------


class MoonEventBase(msgspec.Struct, frozen=True, tag_field="type"):
    """Every event carries the time of the command that caused it (the shell's clock)."""

    at_ms: int


class Dispatched(MoonEventBase, frozen=True, tag="moon.dispatched"):
    workflow_id: str
    dispatch_id: str  # the Dispatch command's id: a resend is recognised by it
    steps: tuple[StepSpec, ...]
    deadline_ms: int | None = None
    budget_tokens: int | None = None
    plan_id: str | None = None
    plan_revision: int = 0
    on_failure: OnFailure = "wait"
    completed: tuple[CarriedStep, ...] = ()
    forked_from: str | None = None
    owner: str | None = None
    traceparent: str | None = None  # the workflow's trace: every span of it hangs under this


class StepScheduled(MoonEventBase, frozen=True, tag="moon.step.scheduled"):
    step: str
    attempt: int
    executor: str | None = None
    fresh: bool = False  # a replan's new attempt: the retry window starts again here


class StepStarted(MoonEventBase, frozen=True, tag="moon.step.started"):
    step: str
    attempt: int
    executor: str
    command_id: str = ""  # the start that won: its sender, and only it, runs the attempt


class StepHeartbeat(MoonEventBase, frozen=True, tag="moon.step.heartbeat"):
    step: str
    attempt: int


class StepCheckpointed(MoonEventBase, frozen=True, tag="moon.step.checkpointed"):
    step: str
    attempt: int
    state: bytes


class StepCompleted(MoonEventBase, frozen=True, tag="moon.step.completed"):
    step: str
    attempt: int
    result: bytes = b""
    usage: Usage = Usage()


class StepFailed(MoonEventBase, frozen=True, tag="moon.step.failed"):
    step: str
    attempt: int
    error: str
    error_type: str = ""
    usage: Usage = Usage()
    will_retry: bool = False


class RetryScheduled(MoonEventBase, frozen=True, tag="moon.step.retry_scheduled"):
    step: str
    attempt: int  # the attempt that will run when the backoff timer fires
    delay_ms: int
    due_ms: int


class StepTimedOut(MoonEventBase, frozen=True, tag="moon.step.timed_out"):
    step: str
    attempt: int
    timer: TimerKind
    will_retry: bool = False


class Deviation(MoonEventBase, frozen=True, tag="moon.deviation"):
    workflow_id: str
    kind: DeviationKind
    step: str = ""
    attempt: int = 0
    executor: str | None = None
    detail: str = ""
    plan_id: str | None = None
    plan_revision: int = 0


class ReplanApplied(MoonEventBase, frozen=True, tag="moon.replan.applied"):
    plan_id: str
    revision: int
    assignments: dict[str, str]
    reason: str = ""
    budget_tokens: int | None = None


class BudgetExhausted(MoonEventBase, frozen=True, tag="moon.budget.exhausted"):
    budget_tokens: int
    used_tokens: int


class CompensationStarted(MoonEventBase, frozen=True, tag="moon.compensation.started"):
    reason: str
    steps: tuple[str, ...] = ()  # completed steps with a compensation, dependants first


class CompensationScheduled(MoonEventBase, frozen=True, tag="moon.compensation.scheduled"):
    step: str
    attempt: int  # attempts keep counting after the step's own: one idempotency key space
    capability: str
    executor: str | None = None
    fresh: bool = False


class StepCompensated(MoonEventBase, frozen=True, tag="moon.step.compensated"):
    step: str
    attempt: int
    result: bytes = b""
    usage: Usage = Usage()


class CompensationFailed(MoonEventBase, frozen=True, tag="moon.compensation.failed"):
    step: str
    attempt: int
    error: str
    error_type: str = ""
    usage: Usage = Usage()
    will_retry: bool = False


class WorkflowCompleted(MoonEventBase, frozen=True, tag="moon.workflow.completed"):
    usage: Usage = Usage()


class WorkflowFailed(MoonEventBase, frozen=True, tag="moon.workflow.failed"):
    reason: str = ""


class WorkflowCompensated(MoonEventBase, frozen=True, tag="moon.workflow.compensated"):
    failed: tuple[str, ...] = ()  # compensations that failed for good, reported, not dropped


class WorkflowCancelled(MoonEventBase, frozen=True, tag="moon.workflow.cancelled"):
    reason: str = ""


MoonEvent: TypeAlias = (
    Dispatched
    | StepScheduled
    | StepStarted
    | StepHeartbeat
    | StepCheckpointed
    | StepCompleted
    | StepFailed
    | RetryScheduled
    | StepTimedOut
    | Deviation
    | ReplanApplied
    | BudgetExhausted
    | CompensationStarted
    | CompensationScheduled
    | StepCompensated
    | CompensationFailed
    | WorkflowCompleted
    | WorkflowFailed
    | WorkflowCompensated
    | WorkflowCancelled
)


class Decision(msgspec.Struct, frozen=True):
    """One journal message: the command and every event it caused (replay --verify re-decides)."""

    command: MoonCommand
    events: list[MoonEvent]


# --- what the shell does after a decision -------------------------------------------------------


class WorkOrder(msgspec.Struct, frozen=True):
    """A binding order to one executor for one attempt; executors dedupe by idempotency_key."""

    workflow_id: str
    step: str
    attempt: int
    capability: str
    executor: str | None
    deadline_ms: int  # absolute: give up by then, the step_timeout timer fires at it
    timeout_ms: int
    idempotency_key: str  # "workflow/step/attempt"
    checkpoint: bytes | None = None  # resume from here
    input: dict[str, bytes] = {}  # results of the dependencies (of the step, for compensation)
    params: bytes = b""
    compensation: bool = False
    heartbeat_timeout_ms: int | None = None
    plan_revision: int = 0
    traceparent: str | None = None  # W3C, the attempt's span as parent: the executor's spans
    # The engine's signature over the attempt's claim key (moon/claims.py): only whoever took
    # this order holds it, and a report carrying it binds a pool attempt to its sender.
    claim: bytes = b""
    # The engine process that sent it: the worker reports to it first (its cache holds the
    # workflow), to any engine when it is gone. Routing only, never authority.
    engine: str = ""


class TimerRequest(msgspec.Struct, frozen=True):
    """A durable timer to schedule; firing it sends FireTimer(kind, step, attempt) back in."""

    workflow_id: str
    kind: TimerKind
    at_ms: int
    step: str = ""
    attempt: int = 0

    @property
    def name(self) -> str:
        """One pending timer per name: a newer heartbeat timer replaces the older one."""
        if self.kind in ("workflow_deadline", "wake"):
            return self.kind
        return f"{self.kind}.{self.step}.{self.attempt}"


# Most significant first: the journal subject is named after the first kind found, so that
# subject filters (MAESTRO's `moon.wf.*.deviation`) see every decision that matters to them.
_SIGNIFICANCE: tuple[tuple[type[MoonEventBase], str], ...] = (
    (Deviation, "deviation"),
    (WorkflowCompensated, "compensated"),
    (WorkflowFailed, "failed"),
    (WorkflowCancelled, "cancelled"),
    (WorkflowCompleted, "completed"),
    (BudgetExhausted, "budget.exhausted"),
    (Dispatched, "dispatched"),
    (ReplanApplied, "replan.applied"),
    (CompensationStarted, "compensation.started"),
    (StepCompensated, "step.compensated"),
    (CompensationFailed, "compensation.failed"),
    (StepCompleted, "step.completed"),
    (StepFailed, "step.failed"),
    (StepTimedOut, "step.timed_out"),
    (RetryScheduled, "step.retry_scheduled"),
    (CompensationScheduled, "compensation.scheduled"),
    (StepScheduled, "step.scheduled"),
    (StepCheckpointed, "step.checkpointed"),
    (StepStarted, "step.started"),
    (StepHeartbeat, "step.heartbeat"),
)


def significant_kind(events: list[MoonEvent]) -> str:
    """The journal subject suffix of a decision: any Deviation makes it "deviation"."""
    for kind_type, kind in _SIGNIFICANCE:
        if any(isinstance(event, kind_type) for event in events):
            return kind
    raise ValueError("an empty decision is never journaled")


def command_kind(command: MoonCommand) -> str:
    """The `moon.cmd.<workflow>.<kind>` suffix of a command: its tag without the prefix."""
    return str(type(command).__struct_config__.tag).removeprefix("moon.")
