"""Who may do what to a workflow: the engine's authorization, decided before `decide`. Pure.

The bus proves nothing about who wrote a message, so the engine asks of every command where it
came from (a source the shell established by checking a signature or the gate's envelope) and
whether that source may send this command to this workflow in its current state:
- Dispatch, Cancel and a user's Compensate come only through the gate, where the caller's
  envelope and grant were checked; a dispatch that carries completed steps (a fork) needs the
  operator's capability; a workflow id belongs to the caller that dispatched it.
- Replan and Compensate on the bus come only from a planner (MAESTRO's key).
- Timer firings come only from the engine's own key.
- Executor reports come only from the executor the attempt is bound to: the assigned executor,
  or for a pool order the member whose first report carried the order's claim token (it took
  the order: moon/claims.py) or whose explicit start the engine journaled; a start names the
  reporter itself and must fit the order (its executor, or a capability it may serve).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias, assert_never

from envelope.keys import KeyRing, Signer
from envelope.registry import Registration
from moon.claims import claim_key
from moon.workflow import StepState, WorkflowState
from streams.moon_events import (
    Cancel,
    CheckpointStep,
    Compensate,
    CompleteStep,
    Dispatch,
    FailStep,
    FireTimer,
    Heartbeat,
    MoonCommand,
    Replan,
    StartStep,
)
from streams.replies import Reason, Refusal

__all__ = [
    "ADMIN_CAPABILITIES",
    "FromEngine",
    "FromExecutor",
    "FromGate",
    "FromPlanner",
    "Source",
    "Walls",
    "authorize",
]

# Capabilities that act on any caller's workflow (an operator's, not a tenant's).
ADMIN_CAPABILITIES = frozenset({"moon:admin", "moon:*", "*"})


@dataclass(frozen=True)
class Walls:
    """The trust material inside the walls: whose journal, timers and snapshots are MOON's,
    who plans, who registers executors; and this process's own key when it writes."""

    engines: frozenset[str]
    planners: frozenset[str]
    registrars: frozenset[str]
    signer: Signer | None = None
    keys: KeyRing = field(default_factory=KeyRing)


@dataclass(frozen=True)
class FromGate:
    """Through the envelope gate: the caller's DID and the capability its grant was checked
    for (the route's)."""

    caller: str
    capability: str


def _proves_nothing(key: bytes) -> bool:
    return False


@dataclass(frozen=True)
class FromExecutor:
    """A report whose signature is the registered executor's. `proves` says whether the
    report's claim token is an engine's for a claim key (moon/claims.py): whether its sender
    took that order."""

    registration: Registration
    proves: Callable[[bytes], bool] = _proves_nothing


@dataclass(frozen=True)
class FromPlanner:
    did: str


@dataclass(frozen=True)
class FromEngine:
    did: str


Source: TypeAlias = FromGate | FromExecutor | FromPlanner | FromEngine


def _kind(command: MoonCommand) -> str:
    return type(command).__name__


def _no(source: Source, command: MoonCommand) -> Refusal:
    return Refusal(Reason.FORGED, f"{_kind(command)} may not come from {type(source).__name__}")


def authorize(command: MoonCommand, source: Source, state: WorkflowState) -> Refusal | None:
    match source:
        case FromGate():
            return _gate(command, source, state)
        case FromPlanner():
            return None if isinstance(command, Replan | Compensate) else _no(source, command)
        case FromEngine():
            return None if isinstance(command, FireTimer) else _no(source, command)
        case FromExecutor():
            return _executor(command, source, state)
        case _:
            assert_never(source)


def _gate(command: MoonCommand, source: FromGate, state: WorkflowState) -> Refusal | None:
    if not isinstance(command, Dispatch | Cancel | Compensate | CheckpointStep):
        return _no(source, command)
    admin = source.capability in ADMIN_CAPABILITIES
    if isinstance(command, Dispatch) and command.completed and not admin:
        return Refusal(Reason.NO_CAPABILITY, "a dispatch with completed steps is a fork: "
                                             "it needs moon:admin")
    owner = state.dispatched.owner if state.dispatched is not None else None
    if owner and owner != source.caller and not admin:
        return Refusal(Reason.NOT_OWNER, f"workflow {command.workflow_id} belongs to another "
                                         "caller")
    return None


def _bound_to(step: StepState) -> str | None:
    """Who runs the current attempt: who started it, else who it is assigned to."""
    return step.executor


def _executor(command: MoonCommand, source: FromExecutor, state: WorkflowState
              ) -> Refusal | None:
    who = source.registration
    if not isinstance(command, StartStep | Heartbeat | CheckpointStep | CompleteStep | FailStep):
        return Refusal(Reason.FORGED, f"{_kind(command)} may not come from an executor")
    step = state.steps.get(command.step)
    if step is None:
        return None  # decide answers unknown workflow or step
    if isinstance(command, StartStep):
        if command.executor != who.executor:
            return Refusal(Reason.NOT_ASSIGNED, f"a start for {command.executor!r} signed by "
                                                f"{who.executor!r}")
        bound = _bound_to(step)
        if bound is not None and bound != who.executor and step.started_at is None:
            return Refusal(Reason.NOT_ASSIGNED, f"{command.step} attempt {command.attempt} is "
                                                f"assigned to {bound}")
        capability = (step.spec.compensation if step.status == "compensating"
                      else step.spec.capability) or step.spec.capability
        if bound is None and not who.serves(capability):
            return Refusal(Reason.NOT_ASSIGNED, f"{who.executor} is not registered for "
                                                f"{capability}")
        return None
    if command.attempt != step.attempt:
        return None  # a stale attempt's report decides nothing; decide says so
    bound = _bound_to(step)
    if bound is None and step.started_at is None:
        # A pool attempt nobody is bound to yet: its first report binds it to its sender, if
        # the sender took the order (its claim token) and may serve what it orders.
        undo = step.status == "compensating"
        capability = (step.spec.compensation if undo else step.spec.capability) or \
            step.spec.capability
        key = claim_key(command.workflow_id, command.step, command.attempt, compensation=undo)
        if who.serves(capability) and source.proves(key):
            return None
        return Refusal(Reason.NOT_ASSIGNED, f"{command.step} attempt {command.attempt}: "
                                            f"{who.executor} did not take its order")
    if bound != who.executor:
        return Refusal(Reason.NOT_ASSIGNED, f"{command.step} attempt {command.attempt} is bound "
                                            f"to {bound or 'no executor yet'}, not "
                                            f"{who.executor}")
    return None
