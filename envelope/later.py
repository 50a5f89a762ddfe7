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
