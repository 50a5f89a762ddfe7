"""Where workflows live: the MOON journal store, its snapshots and the workflow runner."""

from __future__ import annotations

from collections.abc import Sequence

from nats.js import JetStreamContext

from moon import workflow
from moon.workflow import WorkflowState
from streams import subjects
from streams.codec import Codec
from streams.config import MOON, SNAPSHOTS
from streams.decider import Decider, Runner
from streams.jetstream_store import JetStreamStore
from streams.moon_events import Decision, MoonCommand, MoonEvent, significant_kind
from streams.snapshots import KvSnapshots, schema_stamp
from streams.store import Layout
from streams.subjects import Space

__all__ = ["DECIDER", "DECISIONS", "STATE_VERSION", "journal", "layout", "runner"]

# Bump when evolve's meaning changes: snapshots stamped with an older version are ignored.
STATE_VERSION = 2  # 2: StepState.retry_due_ms
DECISIONS: Codec[Decision] = Codec(Decision)
DECIDER: Decider[MoonCommand, MoonEvent, WorkflowState] = Decider(
    decide=workflow.decide, evolve=workflow.evolve, initial=workflow.initial
)


def layout(space: Space) -> Layout:
    return Layout(
        stream=space.stream(MOON.name),
        subject=lambda wf, kind: space.subject(subjects.workflow_event(wf, kind)),
        filter=lambda wf: space.subject(subjects.workflow_events(wf)),
    )


def journal(js: JetStreamContext, space: Space) -> JetStreamStore[Decision]:
    return JetStreamStore(js, layout(space), DECISIONS)


def _pack(command: MoonCommand, events: Sequence[MoonEvent]) -> Decision:
    return Decision(command=command, events=list(events))


def _kind(events: Sequence[MoonEvent]) -> str:
    return significant_kind(list(events))


def runner(
    js: JetStreamContext, space: Space, *, snapshots: bool = True
) -> Runner[MoonCommand, MoonEvent, WorkflowState, Decision]:
    stamp = schema_stamp(WorkflowState, STATE_VERSION)
    bucket = space.bucket(SNAPSHOTS.name)
    snaps: KvSnapshots[WorkflowState] | None = (
        KvSnapshots(js, bucket, WorkflowState, stamp) if snapshots else None
    )
    return Runner(
        decider=DECIDER, store=journal(js, space), pack=_pack, apply=workflow.apply,
        kind=_kind, snapshots=snaps,
    )
