"""Work a handler's answer does not depend on, finished beside the gate's own writes.

A MOON command's effects (its work orders, its index entry) follow its journal append, and so
did the gate's answer and audit record, one fsync'd write after the other. For a route that is
idempotent by its request id, the gate collects what the handler hands over here and awaits it
together with its answer and audit record: the reply still leaves only when all of it is
stored, one stage sooner. A crash in between leaves the caller unanswered, and its retry runs
the handler again, which decides nothing new and sends the effects again (they carry
`Nats-Msg-Id`). What is handed over is already running: nobody's failure to await it can
leave it undone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["active", "collecting", "hand_over"]

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
