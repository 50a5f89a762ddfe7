"""Who created an id: the first verified caller to name a workflow or plan id owns it.

Without this, a caller who picks an id first (`pv.evil`, or the victim's own `pv` before the
victim does) acts on someone else's workflow or plan. Keys are `<namespace>.<id>` in one KV
bucket; the value is the owner's DID, written with KV `create`, so across every replica the first
caller wins and a later one is told `not_owner`. The id is checked against streams.ids first:
it becomes a KV key here and a subject token downstream.

    refused = await gate.own("workflow", request.workflow_id, opened.caller)
    if refused is not None:
        return refused          # the gate seals, stores and audits it like any refusal
"""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from streams.config import OWNERS
from streams.ids import check_id
from streams.replies import Reason, Refusal
from streams.subjects import Space

__all__ = ["OWNERS", "Ownership"]

ROOT_SPACE = Space()


class Ownership:
    """`own(namespace, id, caller)`: claim a fresh id, or check an existing one is the caller's."""

    def __init__(self, js: JetStreamContext, *, space: Space = ROOT_SPACE,
                 bucket: str = OWNERS.name) -> None:
        self._js = js
        self._name = space.bucket(bucket)
        self._kv: Any = None

    async def start(self) -> bool:
        """Open the bucket; False if it does not exist (then `own` refuses as unavailable)."""
        try:
            self._kv = await self._js.key_value(self._name)
        except Exception:  # nats-py raises BucketNotFoundError or NotFoundError by version
            return False
        return True

    async def own(self, namespace: str, id_: object, caller: str, *,
                  claim: bool = True) -> Refusal | None:
        """None when `caller` owns `namespace`/`id_` (claiming it now if nobody did and `claim`).

        `claim=False` is for acting on an id that must already exist (cancel, compensate): an
        unknown id is then `not_owner` too, so a caller cannot probe which ids exist.
        """
        if (refused := check_id(namespace, "namespace") or check_id(id_, f"{namespace} id")):
            return refused
        if self._kv is None and not await self.start():
            return Refusal(Reason.UNAVAILABLE, f"ownership bucket {self._name} does not exist",
                           retryable=True, retry_after_ms=1000)
        key = f"{namespace}.{id_}"
        if claim:
            try:
                await self._kv.create(key, caller.encode())
                return None
            except KeyWrongLastSequenceError:
                pass
        owner = await self.owner(namespace, str(id_))
        if owner == caller:
            return None
        return Refusal(Reason.NOT_OWNER, f"{namespace} {id_} belongs to another caller",
                       evidence={"namespace": namespace, "id": str(id_)})

    async def owner(self, namespace: str, id_: str) -> str | None:
        """The owner's DID, or None when the id was never claimed (or is invalid)."""
        if check_id(namespace, "namespace") or check_id(id_, "id"):
            return None
        if self._kv is None and not await self.start():
            return None
        try:
            entry = await self._kv.get(f"{namespace}.{id_}")
        except KeyNotFoundError:
            return None
        return (entry.value or b"").decode(errors="replace")
