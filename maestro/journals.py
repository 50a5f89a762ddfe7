"""The journals MAESTRO reads and writes, verified: one adapter per stream.

PLANS: every message is a PLAN_DECISION statement by a planner (MAESTRO's key), its body a
PlanBatch that names the sequence it was appended after. A fold meets a message MAESTRO did
not write there (unsigned, another author, another plan, a copy out of place) as a `Foreign`
naming its sequence: folded as nothing, logged, never acted on.

MOON: every message is a DECISION statement by an engine, its body the Decision as the engine
decided it. MAESTRO replans only on deviations read this way; nothing on the bus is believed
because of the subject it arrived on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Container

import msgspec
import structlog
from nats.js import JetStreamContext

from envelope.keys import KeyRing, Signer
from envelope.statement import DECISION, PLAN_DECISION, open_signed, open_statement, sign_statement
from moon import replay
from moon.journal import layout
from moon.workflow import WorkflowState
from streams import subjects
from streams.codec import Codec, Undecodable
from streams.config import MOON
from streams.ids import check_id
from streams.jetstream_store import JetStreamStore, last_sequence, ordered_read
from streams.moon_events import Decision, Deviation
from streams.plan_events import Foreign, PlanBatch
from streams.replies import Conflict, Reason, Refusal
from streams.store import Appended, Layout, Loaded, Stored
from streams.subjects import Space

__all__ = [
    "Journaled",
    "PlanEntry",
    "SignedPlans",
    "Workflow",
    "deviation_at",
    "open_decision",
    "open_deviations",
    "read_workflow",
]

log = structlog.get_logger("maestro.journals")
PlanEntry = PlanBatch | Foreign
_batch_encode = msgspec.json.Encoder().encode
_batch_decode = msgspec.json.Decoder(PlanBatch).decode


class _Bytes(Codec[bytes]):
    """The bytes as stored: the signed adapters above this do the decoding."""

    def __init__(self) -> None:
        super().__init__(bytes)

    def encode(self, value: bytes) -> bytes:
        return value

    def decode(self, data: bytes) -> bytes:
        return data

    def try_decode(self, data: bytes, *, seq: int = 0, subject: str = "") -> bytes | Undecodable:
        return data


_RAW = _Bytes()


class SignedPlans:
    """The PLANS event store (the `EventStore[PlanEntry]` port), signed and verified."""

    def __init__(self, js: JetStreamContext, layout: Layout, signer: Signer | None, *,
                 planners: Container[str], keys: KeyRing | None = None) -> None:
        """`signer` None: a reader (the surfaces, the CLI), which never appends."""
        self._raw = JetStreamStore(js, layout, _RAW)
        self.layout = layout
        self._signer = signer
        self._planners = planners
        self._keys = keys or KeyRing()
        self.foreign = 0  # how many foreign messages reads met (each read counts again)

    def open(self, plan_id: str, data: bytes, *, seq: int, previous: int) -> PlanEntry:
        """One stored message of `plan_id`, `previous` being the sequence before it."""
        verified = open_statement(data, PLAN_DECISION, keys=self._keys, authors=self._planners)
        if isinstance(verified, Refusal):
            return Foreign(seq, f"PLANS seq {seq}: {verified.reason.value}: {verified.detail}")
        try:
            batch = _batch_decode(verified.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            return Foreign(seq, f"PLANS seq {seq}: signed but not a plan decision: {error}")
        if batch.after != previous:
            return Foreign(seq, f"PLANS seq {seq}: written after seq {batch.after}, found after "
                                f"{previous}: a copy")
        named = {e.plan_id for e in batch.events} - {plan_id}
        if named:
            return Foreign(seq, f"PLANS seq {seq}: about plan {sorted(named)[0]!r}, "
                                f"not {plan_id!r}")
        return batch

    async def read(self, aggregate: str, *, after: int = 0, upto: int | None = None
                   ) -> Loaded[PlanEntry]:
        loaded = await self._raw.read(aggregate, after=after, upto=upto)
        items: list[Stored[PlanEntry]] = []
        previous = after
        for item in loaded.items:
            entry = self.open(aggregate, item.value, seq=item.seq, previous=previous)
            if isinstance(entry, Foreign):
                self.foreign += 1
                log.warning("foreign_plan_message", plan=aggregate, seq=item.seq,
                            detail=entry.detail)
            items.append(Stored(seq=item.seq, subject=item.subject, time_ms=item.time_ms,
                                value=entry))
            previous = item.seq
        return Loaded(version=loaded.version, items=items)

    async def append(self, aggregate: str, value: PlanEntry, *, expected: int, key: str,
                     kind: str) -> Appended | Conflict:
        if isinstance(value, Foreign):
            raise TypeError("a Foreign marker is never written")
        if self._signer is None:
            raise RuntimeError("only MAESTRO, with its key, writes the PLANS journal")
        stamped = msgspec.structs.replace(value, after=expected)
        data = sign_statement(self._signer, PLAN_DECISION, _batch_encode(stamped))
        return await self._raw.append(aggregate, data, expected=expected, key=key, kind=kind)

    async def subscribe(self, filter_: str, *, from_seq: int | None = None,
                        from_time_ms: int | None = None
                        ) -> AsyncIterator[Stored[PlanEntry] | Undecodable]:
        """Signature and author checked; position is not (a tail spans many plans)."""
        async for item in self._raw.subscribe(filter_, from_seq=from_seq,
                                              from_time_ms=from_time_ms):
            if isinstance(item, Undecodable):
                yield item
                continue
            verified = open_statement(item.value, PLAN_DECISION, keys=self._keys,
                                      authors=self._planners)
            entry: PlanEntry
            if isinstance(verified, Refusal):
                entry = Foreign(item.seq, f"PLANS seq {item.seq}: {verified.detail}")
            else:
                try:
                    entry = _batch_decode(verified.body)
                except (msgspec.DecodeError, msgspec.ValidationError) as error:
                    entry = Foreign(item.seq, f"PLANS seq {item.seq}: {error}")
            yield Stored(seq=item.seq, subject=item.subject, time_ms=item.time_ms, value=entry)


# --- MOON: decisions the engine signed --------------------------------------------------------


Authors = Container[str] | Callable[[str], bool]
_decision = msgspec.json.Decoder(Decision)


def open_decision(data: bytes, *, engines: Authors, keys: KeyRing) -> Decision | Refusal:
    """A MOON journal message as the engine wrote it, or why it is not one."""
    return open_signed(data, DECISION, _decision, keys=keys, authors=engines)


def open_deviations(data: bytes, workflow_id: str, *, engines: Authors, keys: KeyRing
                    ) -> tuple[Deviation, ...] | Refusal:
    """The deviations an engine-signed decision of `workflow_id` holds, or why there are none
    to believe."""
    decision = open_decision(data, engines=engines, keys=keys)
    if isinstance(decision, Refusal):
        return decision
    if decision.command.workflow_id != workflow_id:
        return Refusal(Reason.WRONG_SUBJECT, f"a decision of {decision.command.workflow_id!r} "
                                             f"journaled under {workflow_id!r}")
    found = tuple(e for e in decision.events if isinstance(e, Deviation))
    if not found:
        return Refusal(Reason.UNKNOWN_EVENT, "the decision holds no deviation")
    if any(e.workflow_id != workflow_id for e in found):
        return Refusal(Reason.WRONG_SUBJECT, f"a deviation of another workflow than "
                                             f"{workflow_id!r}")
    return found


class Journaled(msgspec.Struct, frozen=True):
    """A deviation read back from the journal by reference."""

    seq: int
    deviation: Deviation


async def deviation_at(js: JetStreamContext, space: Space, workflow_id: str, seq: int, *,
                       engines: Authors, keys: KeyRing) -> Journaled | Refusal:
    """The deviation journaled at `seq` for `workflow_id`: the message must be on that
    workflow's deviation subject and be an engine-signed decision holding one."""
    if (refused := check_id(workflow_id, "workflow id")) is not None:
        return refused
    if seq <= 0:
        return Refusal(Reason.UNKNOWN_EVENT, f"no journal message at seq {seq}")
    try:
        msg = await js.get_msg(space.stream(MOON.name), seq, direct=True)
    except Exception:  # NotFoundError, or deleted
        return Refusal(Reason.UNKNOWN_EVENT, f"no journal message at seq {seq}")
    wanted = space.subject(subjects.workflow_event(workflow_id, "deviation"))
    if msg.subject != wanted:
        return Refusal(Reason.WRONG_SUBJECT, f"seq {seq} is not a deviation of {workflow_id}")
    found = open_deviations(msg.data or b"", workflow_id, engines=engines, keys=keys)
    if isinstance(found, Refusal):
        forged = found.reason in (Reason.FORGED, Reason.UNKNOWN_KEY, Reason.MALFORMED)
        return Refusal(Reason.FORGED if forged else found.reason,
                       f"MOON seq {seq}: {found.detail}", evidence={"seq": str(seq)})
    return Journaled(seq=seq, deviation=found[-1])


class Workflow(msgspec.Struct, frozen=True):
    """A workflow folded from the messages the engine signed; `forged` names the others."""

    state: WorkflowState
    forged: tuple[int, ...] = ()


async def read_workflow(js: JetStreamContext, space: Space, workflow_id: str, *,
                        engines: Authors, keys: KeyRing) -> Workflow:
    """Fold a workflow's journal, skipping (and naming) every message the engine did not sign
    or that belongs to another workflow."""
    where = layout(space)
    stream, wanted = where.stream, where.filter(workflow_id)
    last = await last_sequence(js, stream, wanted)
    rows = await ordered_read(js, stream, wanted, after=0, upto=last) if last else []
    decisions: list[Decision] = []
    forged: list[int] = []
    for seq, _, _, data in rows:
        decision = open_decision(data, engines=engines, keys=keys)
        if isinstance(decision, Refusal) or decision.command.workflow_id != workflow_id:
            forged.append(seq)
            continue
        decisions.append(decision)
    if forged:
        log.warning("forged_journal_messages", workflow=workflow_id, seqs=forged[:16])
    return Workflow(state=replay.fold(decisions), forged=tuple(forged))
