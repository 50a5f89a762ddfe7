"""Read-only views for the surfaces: workflows, plans and audit records, straight from the streams.

Reading decides nothing, so it needs no gate: the workflow index (`moon_workflows` KV), the MOON
journal folded with the engine's own fold, the PLANS journal folded with the plan decider's, and
the AUDIT stream. These are the reads the broker's `gateway` role is allowed.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from maestro import plans
from maestro.journals import SignedPlans
from moon import index, replay
from moon.authority import Walls
from moon.index import WorkflowSummary
from moon.journal import journal
from moon.workflow import WorkflowState
from streams import subjects
from streams.audit import AuditRecord
from streams.config import AUDIT, PLANS, WORKFLOWS
from streams.jetstream_store import last_sequence, ordered_read
from streams.moon_events import command_kind
from streams.plan_events import Foreign
from streams.store import Layout
from streams.subjects import Space
from surfaces.forward import readable

__all__ = [
    "TERMINAL",
    "Reads",
    "as_json",
]

TERMINAL = frozenset({"completed", "failed", "compensated", "cancelled"})
_summary = msgspec.json.Decoder(WorkflowSummary)
_record = msgspec.json.Decoder(AuditRecord)


def as_json(value: Any) -> Any:
    """A Struct as JSON-ready builtins; embedded JSON documents inline, other bytes base64."""
    return readable(msgspec.msgpack.decode(msgspec.msgpack.encode(value)))


class Reads:
    """The read helpers over one namespace; `js` comes from the surface's own connection."""

    def __init__(self, js: JetStreamContext, space: Space, *, engines: frozenset[str],
                 planners: frozenset[str]) -> None:
        """The journals are read verified: MOON's as the `engines` signed it, PLANS as the
        `planners` did (a message they did not write is never shown as theirs)."""
        self.js, self.space = js, space
        self.moon = journal(js, space, Walls(engines=engines, planners=planners,
                                             registrars=frozenset()))
        self.plans = SignedPlans(js, Layout(
            stream=space.stream(PLANS.name),
            subject=lambda plan, kind: space.subject(subjects.plan_event(plan, kind)),
            filter=lambda plan: space.subject(subjects.plan_events(plan)),
        ), None, planners=planners)  # fmt: skip
        self._index: Any = None

    async def index(self) -> Any:
        """The workflow index bucket (a KV handle), opened once."""
        if self._index is None:
            self._index = await self.js.key_value(self.space.bucket(WORKFLOWS.name))
        return self._index

    # -- workflows ------------------------------------------------------------------------------

    async def workflows(self, *, status: str | None = None) -> list[WorkflowSummary]:
        kv = await self.index()
        try:
            keys = await kv.keys()
        except Exception:  # nats-py raises NoKeysError for an empty bucket
            return []
        out = []
        for key in keys:
            with contextlib.suppress(NotFoundError):
                entry = await kv.get(key)
                if entry.value:
                    summary = _summary.decode(entry.value)
                    if status is None or summary.status == status:
                        out.append(summary)
        return sorted(out, key=lambda s: s.updated_ms)

    async def summary(self, workflow_id: str) -> WorkflowSummary | None:
        kv = await self.index()
        try:
            entry = await kv.get(workflow_id)
        except NotFoundError:
            return await self._unlisted(workflow_id)
        return _summary.decode(entry.value) if entry.value else None

    async def _unlisted(self, workflow_id: str) -> WorkflowSummary | None:
        """Not in the index (yet): the engine holds a young workflow's entry back a moment
        (moon/projection.py INDEX_MS), so a workflow asked about right after its dispatch is
        read from its journal; None if the journal does not know it either."""
        loaded = await self.moon.read(workflow_id)
        if not loaded.items:
            return None
        state = replay.fold(item.value for item in loaded.items)
        return index.summary(state, loaded.version, loaded.items[-1].time_ms)

    async def workflow(self, workflow_id: str) -> tuple[int, WorkflowState] | None:
        """The workflow as the journal says: (version, folded state), None when unknown."""
        loaded = await self.moon.read(workflow_id)
        if not loaded.items:
            return None
        return loaded.version, replay.fold(item.value for item in loaded.items)

    async def workflow_events(self, workflow_id: str, *, after: int = 0) -> list[dict[str, Any]]:
        loaded = await self.moon.read(workflow_id, after=after)
        return [{"seq": item.seq, "at_ms": item.time_ms,
                 "command": command_kind(item.value.command),
                 "events": [{"type": type(e).__name__, **as_json(e)} for e in item.value.events]}
                for item in loaded.items]  # fmt: skip

    # -- plans ----------------------------------------------------------------------------------

    async def plan_ids(self) -> list[str]:
        stream = self.space.stream(PLANS.name)
        try:
            info = await self.js.stream_info(stream, subjects_filter=self.space.subject(
                subjects.plan_events()))
        except NotFoundError:
            return []
        found = {self.space.unprefix(s).split(".")[2] for s in (info.state.subjects or {})}
        return sorted(found)

    async def plan(self, plan_id: str) -> tuple[int, plans.PlanState] | None:
        loaded = await self.plans.read(plan_id)
        if not loaded.items:
            return None
        state = plans.initial
        for item in loaded.items:
            state = plans.apply(state, item.value)
        return loaded.version, state

    async def plan_events(self, plan_id: str) -> list[dict[str, Any]]:
        loaded = await self.plans.read(plan_id)
        out: list[dict[str, Any]] = []
        for item in loaded.items:
            entry = item.value
            if isinstance(entry, Foreign):  # shown as what it is, never as MAESTRO's
                out.append({"seq": item.seq, "at_ms": item.time_ms, "foreign": entry.detail})
                continue
            out.append({"seq": item.seq, "at_ms": item.time_ms, "command": entry.command_id,
                        "events": [{"type": type(e).__name__, **as_json(e)}
                                   for e in entry.events]})
        return out

    # -- audit ----------------------------------------------------------------------------------

    async def audit(self, *, limit: int = 50, service: str = "*") -> list[AuditRecord]:
        """The last `limit` audit records (of one service, or all), oldest first."""
        stream = self.space.stream(AUDIT.name)
        wanted = self.space.subject(f"audit.{service}.>")
        last = await last_sequence(self.js, stream, wanted)
        if last == 0:
            return []
        rows = await ordered_read(self.js, stream, wanted, after=max(0, last - limit), upto=last)
        return [_record.decode(data) for _, _, _, data in rows][-limit:]

    async def audit_record(self, record_id: str, *, window: int = 10_000) -> AuditRecord | None:
        """The final record under an id (max://record/<id>), looked up in the recent window."""
        found = [r for r in await self.audit(limit=window) if r.id == record_id]
        return found[-1] if found else None
