"""The workflow index (`moon_workflows` KV): a projection of the journal for `moon list`.

Written when a workflow's summary changes in a way a list shows (its status, its step count, its
plan), not on every decision: a 3-step workflow is put twice (dispatched, ended) instead of seven
times. Between puts an entry's `completed` and `tokens` lag the journal; `moon status`, which
folds the journal, is the exact view. The journal stays the truth: a lost put is repaired by the
next one, and an entry older than the journal is never wrong about which workflows exist.
"""

from __future__ import annotations

import msgspec

from moon.workflow import WorkflowState

__all__ = ["WorkflowSummary", "changed", "summary"]


class WorkflowSummary(msgspec.Struct, frozen=True):
    """The workflow index entry: answers `moon list` without reading the journal."""

    workflow_id: str
    status: str
    steps: int
    completed: int
    version: int
    updated_ms: int
    plan_id: str | None = None
    tokens: int = 0
    detail: str = ""  # why a workflow is quarantined


def summary(state: WorkflowState, version: int, at_ms: int) -> WorkflowSummary:
    done = sum(1 for s in state.steps.values() if s.status == "completed")
    return WorkflowSummary(
        workflow_id=state.workflow_id, status=state.status, steps=len(state.steps),
        completed=done, version=version, updated_ms=at_ms, plan_id=state.plan_id,
        tokens=state.usage.tokens,
    )


def changed(prior: WorkflowState | None, state: WorkflowState) -> bool:
    """Whether a decision from `prior` to `state` changes what the index shows of it."""
    return (prior is None or prior.status != state.status
            or len(prior.steps) != len(state.steps) or prior.plan_id != state.plan_id)
