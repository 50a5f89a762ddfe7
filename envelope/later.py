"""Work a handler's answer does not depend on, finished beside and after the gate's writes.

A MOON command's effects (its work orders, its wake-up) follow its journal append, and so did
the gate's answer and audit record, one fsync'd write after the other. For a route that is
idempotent by its request id, the gate collects what the handler hands over here and lets it
finish while it stores the answer and the audit record, and after the reply has left: the
answer says the command is durably accepted, which the journal append made true, and it waits
for two writes, not three. An effect a crash cuts off is not sent again by the caller's retry
(a taken order's `Nats-Msg-Id` does not survive a broker restart, so orders are never re-sent);
the step's timeout finds a lost order, as it finds an executor that died. What is handed over
is already running: nobody's failure to await it can leave it undone.

The audit record can follow the answer too, where the journal append carries its evidence
(`journaling`): the gate offers the handler the request's evidence (`evidence()`), the handler
journals it with its command, and says so (`journaled(release)`) when its append was the first
of that command. The gate then answers after that one write and writes the record beside and
after the answer, calling `release` once it is stored; until then the engine keeps its mark
below the append, so a crash that keeps the record from AUDIT leaves it to the engine that
takes the mark over, which writes it again from the journal (moon/projection.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from streams.audit import RequestEvidence

__all__ = ["Journaling", "active", "collecting", "evidence", "hand_over", "journaled",
           "journaling"]

# The collecting task and its list: a task started inside the block copies the context, but
# is not the request's (a subscription's reader, say) and must await its own work.
_PENDING: ContextVar[tuple[asyncio.Task[object] | None, list[asyncio.Future[None]]] | None] = (
    ContextVar("envelope_later", default=None))


def _mine() -> list[asyncio.Future[None]] | None:
    held = _PENDING.get()
    if held is None or held[0] is not asyncio.current_task():
        return None
    return held[1]


def active() -> bool:
    """Is a gate collecting what this request's handler (this task) hands over?"""
    return _mine() is not None


def hand_over(work: asyncio.Future[None]) -> bool:
    """Leave running `work` to the gate serving this request; False when none is (then await
    it yourself)."""
    pending = _mine()
    if pending is None:
        return False
    pending.append(work)
    return True


@contextlib.contextmanager
def collecting() -> Iterator[list[asyncio.Future[None]]]:
    """What the handler run inside this block, in this task, hands over, for the gate."""
    pending: list[asyncio.Future[None]] = []
    token = _PENDING.set((asyncio.current_task(), pending))
    try:
        yield pending
    finally:
        _PENDING.reset(token)


class Journaling:
    """A request's audit evidence offered to its handler, and the handler's word that its
    journal append holds it (`release`, called once the audit record is stored)."""

    __slots__ = ("evidence", "release")

    def __init__(self, evidence: RequestEvidence) -> None:
        self.evidence = evidence
        self.release: Callable[[], None] | None = None


_JOURNALING: ContextVar[tuple[asyncio.Task[object] | None, Journaling] | None] = (
    ContextVar("envelope_journaling", default=None))


def _journaling() -> Journaling | None:
    held = _JOURNALING.get()
    if held is None or held[0] is not asyncio.current_task():
        return None
    return held[1]


def evidence() -> RequestEvidence | None:
    """The evidence of the request this task's handler serves, to journal with its command;
    None when no gate offers it (then the gate writes the record before the answer)."""
    offered = _journaling()
    return None if offered is None else offered.evidence


def journaled(release: Callable[[], None]) -> bool:
    """This handling's append was the first to hold the offered evidence: the gate may answer
    now and store the record after; `release` is called once it is stored. False when no gate
    listens (call `release` yourself)."""
    offered = _journaling()
    if offered is None or offered.release is not None:
        return False
    offered.release = release
    return True


@contextlib.contextmanager
def journaling(offered: RequestEvidence) -> Iterator[Journaling]:
    """Offer the request's evidence to the handler run inside this block, in this task."""
    held = Journaling(offered)
    token = _JOURNALING.set((asyncio.current_task(), held))
    try:
        yield held
    finally:
        _JOURNALING.reset(token)
