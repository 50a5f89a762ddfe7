"""Eager dispatch: the order a completion schedules, handed to its sender in the answer.

A chain's next step usually needs what its last executor serves. Sent through WORK, its order
costs a stored (fsync'd) message, a pull's delivery and the claim's acknowledgement (which
removes it, durably) before the step runs; an executor that says in its completion which
capabilities it will run at once (`CompleteStep.take`) gets the order in the engine's answer
instead, as Temporal's eager activity dispatch hands an activity task back to the worker that
completed the workflow task. The answer goes to that request's sender alone, so the order is
claimed by being received: nobody else can take it, and its claim token (the same as a WORK
order's) binds the attempt to the first report that carries it.

What it changes in what can fail: an answer that never arrives (the executor died, or its
request timed out) strands the attempt until the step's timeout schedules the next one, which
is what happens to a WORK order whose executor dies after its claim. Nothing is re-sent: the
decision was journaled before the answer, and `_send_again` never re-sends orders (an order
sent twice could run twice). `pick` is pure.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from envelope.registry import Registration
from streams.moon_events import WorkOrder

__all__ = ["Handoff", "pick"]


def pick(orders: list[WorkOrder], registration: Registration, take: Collection[str]
         ) -> WorkOrder | None:
    """The first order the reporting executor may run next itself: one of the capabilities it
    offered to take, one its registration serves, and not assigned to another executor (an
    assigned order is that executor's; a pool order is whoever's takes it first)."""
    for order in orders:
        if order.executor not in (None, registration.executor):
            continue
        if order.capability in take and registration.serves(order.capability):
            return order
    return None


@dataclass
class Handoff:
    """One completion's offer to take the next order, and, once the engine decided, the
    signed order it was handed (None: nothing it could take was scheduled)."""

    registration: Registration
    take: frozenset[str]
    order: bytes | None = None
