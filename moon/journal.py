"""Where workflows live: the MOON journal store, its snapshots and the workflow runner.

Every journal message is a statement signed by an engine (envelope/statement.py, kind
DECISION), so a fold detects any message the engine did not write: the store raises
`Unreadable` naming its sequence, and the engine quarantines that workflow instead of looping
on it. Snapshots are signed the same way, bound to their workflow and to the journal sequence
they fold; one that does not verify is ignored (the fold starts from the journal).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec
from nats.js import JetStreamContext

from envelope.statement import DECISION, SNAPSHOT, open_signed, open_statement, sign_statement
from moon import tracing, workflow
from moon.authority import Walls
from moon.workflow import WorkflowState
from streams import subjects
from streams.codec import Codec, Undecodable
from streams.config import MOON, SNAPSHOTS
from streams.decider import Decider, Runner
from streams.jetstream_store import JetStreamStore
from streams.moon_events import Decision, MoonCommand, MoonEvent, significant_kind
from streams.replies import Refusal
from streams.snapshots import KvSnapshots, schema_stamp
from streams.store import Layout
from streams.subjects import Space

__all__ = [
    "DECIDER",
    "DECISIONS",
    "STATE_VERSION",
    "SignedDecisions",
    "journal",
    "layout",
    "runner",
]

# Bump when evolve's meaning changes: snapshots stamped with an older version are ignored.
STATE_VERSION = 3  # 2: StepState.retry_due_ms; 3: StepState.start_id
DECISIONS: Codec[Decision] = Codec(Decision)  # the body of a journal message
_decision = msgspec.json.Decoder(Decision)
DECIDER: Decider[MoonCommand, MoonEvent, WorkflowState] = Decider(
    decide=workflow.decide, evolve=workflow.evolve, initial=workflow.initial
)


class SignedDecisions(Codec[Decision]):
    """Journal messages as engine-signed statements: encode signs (the engine only), decode
    verifies against the engines the walls name before the body is parsed."""

    def __init__(self, walls: Walls) -> None:
        super().__init__(Decision)
        self._walls = walls

    def encode(self, value: Decision) -> bytes:
        if self._walls.signer is None:
            raise RuntimeError("only an engine, with its key, writes the MOON journal")
        return sign_statement(self._walls.signer, DECISION, super().encode(value))

    def open(self, data: bytes) -> Decision | Refusal:
        return open_signed(data, DECISION, _decision, keys=self._walls.keys,
                           authors=self._walls.engines)

    def decode(self, data: bytes) -> Decision:
        opened = self.open(data)
        if isinstance(opened, Refusal):
            raise ValueError(f"{opened.reason.value}: {opened.detail}")
        return opened

    def try_decode(self, data: bytes, *, seq: int = 0, subject: str = "") -> Decision | Undecodable:
        opened = self.open(data)
        if isinstance(opened, Refusal):
            return Undecodable(seq=seq, subject=subject,
                               error=f"{opened.reason.value}: {opened.detail}")
        return opened


def layout(space: Space) -> Layout:
    return Layout(
        stream=space.stream(MOON.name),
        subject=lambda wf, kind: space.subject(subjects.workflow_event(wf, kind)),
        filter=lambda wf: space.subject(subjects.workflow_events(wf)),
    )


def journal(js: JetStreamContext, space: Space, walls: Walls) -> JetStreamStore[Decision]:
    return JetStreamStore(js, layout(space), SignedDecisions(walls))


def _pack(command: MoonCommand, events: Sequence[MoonEvent]) -> Decision:
    return Decision(command=command, events=list(events))


def _kind(events: Sequence[MoonEvent]) -> str:
    return significant_kind(list(events))


class _Sealed(msgspec.Struct, frozen=True):
    workflow_id: str
    snapshot: msgspec.Raw


def _snapshot_sealer(
    walls: Walls,
) -> tuple[Callable[[str, bytes], bytes], Callable[[str, bytes], bytes | None]]:
    def seal(aggregate: str, data: bytes) -> bytes:
        assert walls.signer is not None, "only an engine saves snapshots"
        body = msgspec.json.encode(_Sealed(aggregate, msgspec.Raw(data)))
        return sign_statement(walls.signer, SNAPSHOT, body)

    def unseal(aggregate: str, data: bytes) -> bytes | None:
        verified = open_statement(data, SNAPSHOT, keys=walls.keys, authors=walls.engines)
        if isinstance(verified, Refusal):
            return None
        try:
            sealed = msgspec.json.decode(verified.body, type=_Sealed)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        # A genuine snapshot of another workflow, copied under this key, is not this one's.
        return bytes(sealed.snapshot) if sealed.workflow_id == aggregate else None

    return seal, unseal


def runner(
    js: JetStreamContext, space: Space, walls: Walls, *, snapshots: bool = True
) -> Runner[MoonCommand, MoonEvent, WorkflowState, Decision]:
    stamp = schema_stamp(WorkflowState, STATE_VERSION)
    bucket = space.bucket(SNAPSHOTS.name)
    seal, unseal = _snapshot_sealer(walls)
    snaps: KvSnapshots[WorkflowState] | None = (
        KvSnapshots(js, bucket, WorkflowState, stamp, seal=seal, unseal=unseal)
        if snapshots else None
    )
    return Runner(
        decider=DECIDER, store=journal(js, space, walls), pack=_pack, apply=workflow.apply,
        kind=_kind, snapshots=snaps, journaled=tracing.journaled,
    )
