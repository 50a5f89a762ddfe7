"""What the engine sends after a decision: work orders, its wake-ups, commands. One adapter.

Every send carries `Nats-Msg-Id`, so a publish retried within the duplicate window is stored
once. Timers are re-armed after a crash (a schedule replaces its predecessor); orders are not
(moon/engine.py `_send_again` says why): each carries the claim token of its attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime

import msgspec
from nats.js import JetStreamContext

from envelope.keys import KeyRing, Signer
from envelope.statement import COMMAND, ORDER, TIMER, sign_statement
from moon.claims import Claims, claim_key
from moon.keeper import Keeper
from moon.outbox import order_key
from streams import subjects
from streams.codec import Codec
from streams.moon_events import (
    FireTimer,
    MoonCommand,
    WorkOrder,
    command_kind,
)
from streams.publish import publish_once
from streams.subjects import Space

__all__ = ["COMMANDS", "ORDERS", "Effects", "seal_command"]

COMMANDS: Codec[MoonCommand] = Codec(MoonCommand)
ORDERS: Codec[WorkOrder] = Codec(WorkOrder)
_encode = msgspec.json.Encoder().encode
SENT_KEPT = 100_000  # workflows whose orders a cancel can withdraw


def _rfc3339(at_ms: int) -> str:
    # Schedules take whole seconds: round up so a timer never fires before it is due.
    seconds = -(-at_ms // 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def seal_command(signer: Signer, command: MoonCommand) -> bytes:
    """A MOON_CMD message: the command signed by its author. Timer firings are the engine's
    own (TIMER), replans and compensations MAESTRO's (COMMAND); the engine checks both kind
    and author when it consumes them, so a message on the bus proves nothing by itself."""
    kind = TIMER if isinstance(command, FireTimer) else COMMAND
    return sign_statement(signer, kind, COMMANDS.encode(command))


class Effects:
    """`signer` signs every command this process puts on MOON_CMD (the engine's key for
    timers, MAESTRO's for replans and compensations)."""

    def __init__(self, js: JetStreamContext, space: Space, signer: Signer,
                 claims: Claims | None = None, *, instance: str = "") -> None:
        self._js, self._space, self._signer = js, space, signer
        self.instance = instance  # this engine process: its orders' reports come to it
        self.claims = claims or Claims(signer, KeyRing(), (signer.did,))
        # The WORK sequences of the orders sent per live workflow, newest workflows last:
        # what a cancel withdraws. Bounded: a workflow this process forgot is not withdrawn.
        self._sent: OrderedDict[str, list[int]] = OrderedDict()
        self.keeper = Keeper(js, space.stream("WORK"), space.subject(subjects.work_kept()))

    def order_subject(self, order: WorkOrder) -> str:
        target = subjects.work(order.executor) if order.executor else subjects.work_any(
            order.capability
        )
        return self._space.subject(target)

    def seal_order(self, order: WorkOrder) -> bytes:
        """The order with its attempt's claim token, signed: an executor runs only what an
        engine ordered (side effects are real)."""
        claim = self.claims.token(claim_key(order.workflow_id, order.step, order.attempt,
                                            compensation=order.compensation))
        order = msgspec.structs.replace(order, claim=claim, engine=self.instance)
        return sign_statement(self._signer, ORDER, ORDERS.encode(order))

    async def send_orders(self, orders: Iterable[WorkOrder]) -> int:
        """All at once: a fan-out's orders do not wait for each other's acknowledgements."""

        async def send(order: WorkOrder) -> None:
            key = order_key(order.workflow_id, order.step, order.attempt,
                            compensation=order.compensation)
            data = self.seal_order(order)
            self.keeper.sent(len(data))
            ack = await publish_once(self._js, self.order_subject(order), data,
                                     headers={"Nats-Msg-Id": key})
            self._sent.setdefault(order.workflow_id, []).append(ack.seq)
            self._sent.move_to_end(order.workflow_id)
            while len(self._sent) > SENT_KEPT:
                self._sent.popitem(last=False)

        batch = list(orders)
        await asyncio.gather(*(send(order) for order in batch))
        return len(batch)

    async def withdraw(self, workflow_id: str, keys: Iterable[str]) -> int:
        """Delete the queued orders of a workflow that was cancelled, whichever engine process
        sent them, so a queued one is never taken (an order is not claimed by a journaled
        start, so the engine cannot refuse it at the start). `keys`: the orders' Nats-Msg-Ids
        (moon/outbox.py `order_keys`). A marker is published under each key where no consumer
        reads: WORK's deduplication answers with the order's own sequence when it holds the
        key (the order is deleted, if not taken already: taken, it runs and its report is
        refused), and otherwise stores the marker, which is deleted; either way the key stays
        held, so an order still on its way from another engine is dropped as a duplicate. The
        orders this process sent are deleted by sequence too (an order older than the
        duplicate window is not held by key any more). The number of orders deleted."""
        stream = self._space.stream("WORK")
        marker = self._space.subject(subjects.work_withdrawn())

        async def delete(seq: int) -> bool:
            try:
                return bool(await self._js.delete_msg(stream, seq))
            except Exception:  # taken already (not found), or the broker is away
                return False

        async def by_key(key: str) -> bool:
            try:
                ack = await publish_once(self._js, marker, b"", headers={"Nats-Msg-Id": key})
            except Exception:  # the broker is away: what this process sent is still deleted
                return False
            return await delete(ack.seq) and bool(ack.duplicate)

        sent = set(self._sent.pop(workflow_id, []))
        found = await asyncio.gather(*(by_key(key) for key in keys))
        return sum(found) + sum(await asyncio.gather(*(delete(seq) for seq in sent)))

    def forget(self, workflow_id: str) -> None:
        """The workflow ended otherwise: its orders are its executors'."""
        self._sent.pop(workflow_id, None)

    async def send_command(self, command: MoonCommand) -> None:
        subject = self._space.subject(subjects.moon_cmd(command.workflow_id, command_kind(command)))
        await publish_once(
            self._js, subject, seal_command(self._signer, command),
            headers={"Nats-Msg-Id": command.command_id},
        )

    async def disarm(self, workflow_id: str) -> None:
        """Drop the workflow's pending wake-up (a purge of its subject). Best effort: one left in
        place fires into a workflow with nothing due, which decides nothing."""
        subject = self._space.subject(subjects.timer(workflow_id, "wake"))
        with contextlib.suppress(Exception):
            await self._js.purge_stream(self._space.stream("MOON_CMD"), subject=subject)

    async def arm(self, workflow_id: str, at_ms: int, now_ms: int) -> None:
        """The workflow's one wake-up, a server-side schedule (NATS 2.12 `Nats-Schedule`) that
        survives our crash. A schedule replaces the one before it on the same subject, so the
        engine arms only when the earliest due time moves earlier, and again after a firing."""
        wake = FireTimer(command_id=f"wake/{workflow_id}/{at_ms}", workflow_id=workflow_id,
                         at_ms=at_ms, kind="wake")
        if at_ms <= now_ms:
            await self.send_command(wake)
            return
        target = self._space.subject(subjects.moon_cmd(workflow_id, "fire_timer"))
        await self._js.publish(
            self._space.subject(subjects.timer(workflow_id, "wake")),
            seal_command(self._signer, wake),
            headers={"Nats-Schedule": f"@at {_rfc3339(at_ms)}", "Nats-Schedule-Target": target},
        )
