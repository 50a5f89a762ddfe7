"""`moon dispatch FILE`: a DAG file (JSON or YAML) into a Dispatch command."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import yaml

from streams.moon_events import Dispatch, OnFailure, StepSpec

__all__ = ["DagFile", "load_dispatch"]


class DagFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    steps: tuple[StepSpec, ...]
    workflow_id: str | None = None
    request_id: str | None = None  # dispatching the same request id twice starts one workflow
    deadline_in_ms: int | None = None
    budget_tokens: int | None = None
    on_failure: OnFailure = "wait"


def load_dispatch(data: bytes, *, now_ms: int) -> Dispatch:
    raw: Any = yaml.safe_load(data)
    dag = msgspec.convert(raw, DagFile)
    digest = hashlib.sha256(data).hexdigest()[:16]
    workflow_id = dag.workflow_id or f"wf-{digest}"
    return Dispatch(
        command_id=dag.request_id or f"dispatch-{digest}",
        workflow_id=workflow_id,
        at_ms=now_ms,
        steps=dag.steps,
        deadline_ms=now_ms + dag.deadline_in_ms if dag.deadline_in_ms else None,
        budget_tokens=dag.budget_tokens,
        on_failure=dag.on_failure,
    )
