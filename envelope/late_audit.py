"""Audit records written after their answer, for requests whose journal append holds them.

A request whose handler journaled its audit evidence with its command (envelope/later.py) is
answered after that one write; its record, the answer inside, is stored here beside and after
the reply. Each record is tried until stored while the gate runs, then `release` tells the
engine its mark may pass the request's append; what is left when the gate stops, or dies, is
written again from the journal by the engine that takes the mark over (moon/projection.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from envelope.audit import AuditLog
from streams.audit import AuditRecord

__all__ = ["BACKLOG", "LateAudit"]

T = TypeVar("T")

_FIRST_PAUSE_S, _LONGEST_PAUSE_S = 0.05, 5.0
_STOP_S = 2.0  # what a stopping gate gives the records still being written
# Records held in memory while AUDIT does not take them: past this many, requests take the path
# that stores the record before the answer (and fails closed while AUDIT is away).
BACKLOG = 10_000


class LateAudit:
    """The records of one gate still being written after their answers."""

    def __init__(self, audit: AuditLog, log: Any, *, backlog: int = BACKLOG) -> None:
        self._audit, self._log, self._backlog = audit, log, backlog
        self._writing: set[asyncio.Task[None]] = set()

    def has_room(self) -> bool:
        """Whether another record may wait here: not while AUDIT has left `backlog` unwritten
        (a request then waits for its record, so an outage cannot grow this without bound)."""
        return len(self._writing) < self._backlog

    def write(self, kept: AuditRecord, *, msg_id: str, beside_id: str,
              release: Callable[[], None]) -> None:
        """Store `kept` (a final record holding its answer) under `msg_id`; if that id holds
        another record already (an earlier refusal, a planted one), that one stands for the id
        and this one, whose request ran, is stored beside it under `beside_id`."""

        async def store() -> None:
            first = await self._until_done(lambda: self._audit.first(kept, msg_id=msg_id), kept)
            if first is not None and not (isinstance(first, AuditRecord)
                                          and first.answer == kept.answer):
                self._log.warning("first_record_differs", request_id=kept.id)
                await self._until_done(lambda: self._audit.append(kept, msg_id=beside_id), kept)
            release()

        task = asyncio.get_running_loop().create_task(store())
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _until_done(self, call: Callable[[], Awaitable[T]], kept: AuditRecord) -> T:
        """`call`, again after a back-off while the broker is away: the record waits, and the
        engine's mark with it."""
        pause_s = _FIRST_PAUSE_S
        while True:
            try:
                return await call()
            except Exception as error:
                self._log.warning("audit_deferred", request_id=kept.id,
                                  error=type(error).__name__)
                await asyncio.sleep(pause_s)  # a back-off, not a wait for an event
                pause_s = min(_LONGEST_PAUSE_S, pause_s * 2)

    async def stop(self) -> None:
        """The records still being written get a moment; any left then are the journal's to
        give back (the engine's mark stays below them)."""
        if self._writing:
            await asyncio.wait(set(self._writing), timeout=_STOP_S)
        if left := set(self._writing):
            self._log.warning("audit_left_to_takeover", records=len(left))
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
