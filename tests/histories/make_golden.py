"""Writes the golden MOON history replayed in CI: `python tests/histories/make_golden.py`.

Regenerate only when a rule changes on purpose; the diff of the .jsonl is then the review.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from moon.workflow import WorkflowState, apply, decide, initial
from streams.moon_events import (
    CheckpointStep,
    Compensate,
    CompleteStep,
    Decision,
    Dispatch,
    FailStep,
    FireTimer,
    Heartbeat,
    MoonCommand,
    Replan,
    RetryPolicy,
    StartStep,
    StepSpec,
    Usage,
)
from streams.replies import Refusal

HERE = Path(__file__).parent
HISTORY = HERE / "golden_diamond.jsonl"
EXPECTED = HERE / "golden_diamond.expected.json"
W = "golden"


def summary(state: WorkflowState) -> dict[str, Any]:
    """What the golden test pins: statuses, attempts, executors, usage."""
    return {
        "status": state.status,
        "plan_revision": state.plan_revision,
        "tokens": state.usage.tokens,
        "steps": {
            k: {"status": s.status, "attempt": s.attempt, "executor": s.executor}
            for k, s in state.steps.items()
        },
    }


def script() -> list[MoonCommand]:
    """A diamond that meets a retry, a lost executor, a replan and a failing undo."""
    policy = RetryPolicy(maximum_attempts=2, initial_interval_ms=100)
    steps = (
        StepSpec(
            id="reserve",
            capability="inventory.reserve",
            compensation="inventory.release",
            executor="ex-a",
            retry=policy,
        ),
        StepSpec(
            id="charge",
            capability="payment.charge",
            needs=("reserve",),
            compensation="payment.refund",
            executor="ex-a",
            retry=policy,
        ),
        StepSpec(
            id="label",
            capability="shipping.label",
            needs=("reserve",),
            executor="ex-b",
            heartbeat_timeout_ms=1_000,
            retry=RetryPolicy(maximum_attempts=1),
        ),
        StepSpec(
            id="ship",
            capability="shipping.ship",
            needs=("charge", "label"),
            compensation="shipping.recall",
            executor="ex-b",
        ),
    )
    n = iter(range(1, 1000))

    def base(at_ms: int) -> dict[str, Any]:
        return {"command_id": f"cmd-{next(n)}", "workflow_id": W, "at_ms": at_ms}

    return [
        Dispatch(**base(0), steps=steps, deadline_ms=60_000, budget_tokens=1_000, plan_id="p1"),
        StartStep(**base(10), step="reserve", attempt=1, executor="ex-a"),
        CompleteStep(
            **base(50),
            step="reserve",
            attempt=1,
            result=b'{"sku":42}',
            usage=Usage(tokens=10, wall_ms=40, joules=1.5),
        ),
        StartStep(**base(60), step="charge", attempt=1, executor="ex-a"),
        StartStep(**base(60), step="label", attempt=1, executor="ex-b"),
        FailStep(**base(80), step="charge", attempt=1, error="gateway 503", usage=Usage(tokens=2)),
        Heartbeat(**base(700), step="label", attempt=1),
        CheckpointStep(**base(750), step="label", attempt=1, state=b'{"page":3}'),
        FireTimer(**base(180), kind="retry_backoff", step="charge", attempt=2),
        CompleteStep(
            **base(300),
            step="charge",
            attempt=2,
            result=b'{"txn":"t-9"}',
            usage=Usage(tokens=20, wall_ms=120, joules=3.0),
        ),
        FireTimer(**base(1_750), kind="heartbeat_timeout", step="label", attempt=1),
        Replan(
            **base(1_800),
            plan_id="p1",
            revision=1,
            assignments={"reserve": "ex-c", "charge": "ex-c", "label": "ex-c", "ship": "ex-c"},
            reason="ex-b lost",
        ),
        CompleteStep(
            **base(2_000), step="label", attempt=2, result=b'{"label":"L1"}', usage=Usage(tokens=5)
        ),
        FailStep(**base(2_100), step="ship", attempt=1, error="carrier refused", retryable=False),
        Compensate(**base(2_200), reason="carrier refused"),
        FailStep(**base(2_300), step="charge", attempt=3, error="refund api down"),
        FireTimer(**base(2_400), kind="retry_backoff", step="charge", attempt=4),
        CompleteStep(**base(2_500), step="charge", attempt=4, usage=Usage(tokens=1)),
        CompleteStep(**base(2_600), step="reserve", attempt=2, usage=Usage(tokens=1)),
    ]


def record(commands: list[MoonCommand]) -> tuple[list[Decision], WorkflowState]:
    state, decisions = initial, list[Decision]()
    for command in commands:
        events = decide(command, state)
        if isinstance(events, Refusal):
            raise SystemExit(f"{command.command_id} refused: {events}")
        if events:
            decision = Decision(command=command, events=events)
            decisions.append(decision)
            state = apply(state, decision)
    return decisions, state


def main() -> None:
    decisions, state = record(script())
    HISTORY.write_bytes(b"".join(msgspec.json.encode(d) + b"\n" for d in decisions))
    EXPECTED.write_bytes(msgspec.json.format(msgspec.json.encode(summary(state))) + b"\n")


if __name__ == "__main__":
    main()
