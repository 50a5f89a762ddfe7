"""One message kept in WORK that nobody reads, so that taking the last order is cheap.

WORK is a work-queue stream: a claim (the order's acknowledgement) removes the order. When that
leaves the stream's last message block empty, nats-server (filestore `removeMsgBlock`) opens a
new block file, writes and fsyncs a tombstone in it and unlinks the old one; when orders are
taken as fast as they come, as they are while the executors keep up, that is a file made and
removed on every claim (strace of the broker under the peers' W2: an `openat(O_CREAT)` and an
`unlinkat` per order). With one message left in the last block, a claim appends a tombstone to
it instead. Measured (`benchmarks/claims.py --runs 5`: publish an order, pull it, claim it,
1,000 times on each of two streams, alternating): the claim's p50 0.59 ms with a keeper against
1.06 without, keeper / none 0.60 [0.50-0.96] run by run.

The server starts a new block every 4 MiB written (its block size for a work-queue stream), and
the keeper is then in an older one; so this process writes a new keeper after every KEEP_BYTES
of orders it sent (and every KEEP_AGE_S, after a quiet spell) and deletes its previous one. Each
carries a TTL, so the keeper of an engine that died does not stay; several engines keep one
each. A keeper is on a subject no consumer of WORK reads (`subjects.work_kept`).
"""

from __future__ import annotations

import asyncio
import contextlib

from nats.js import JetStreamContext

__all__ = ["KEEP_AGE_S", "KEEP_BYTES", "KEEP_TTL", "Keeper"]

KEEP_BYTES = 1 << 20  # a quarter of a block: the last block holds a keeper soon after it starts
KEEP_AGE_S = 60.0
KEEP_TTL = "300s"  # well past KEEP_AGE_S: a live engine's keeper never expires under it


class Keeper:
    """The keeper of one process: `sent(n)` counts the bytes of the orders it sent, `run()`
    writes keepers while the engine runs (the first at once)."""

    def __init__(self, js: JetStreamContext, stream: str, subject: str) -> None:
        self._js, self._stream, self._subject = js, stream, subject
        self._sent = 0
        self.due = asyncio.Event()
        self._seq: int | None = None  # this process's keeper, to delete when the next is stored
        self.kept = 0  # keepers stored: for tests and stats

    def sent(self, nbytes: int) -> None:
        self._sent += nbytes
        if self._sent >= KEEP_BYTES:
            self.due.set()

    async def run(self) -> None:
        while True:
            self.due.clear()
            self._sent = 0
            await self.keep()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.due.wait(), KEEP_AGE_S)

    async def keep(self) -> bool:
        """Store a new keeper, then delete the one before it. False if the broker did not take
        it (away, or WORK made without per-message TTLs): the orders only cost more."""
        try:
            ack = await self._js.publish(self._subject, b"", headers={"Nats-TTL": KEEP_TTL})
        except Exception:  # the broker is away: the next turn tries again
            return False
        previous, self._seq = self._seq, ack.seq
        self.kept += 1
        if previous is not None:
            with contextlib.suppress(Exception):  # gone already (its TTL), or the broker away
                await self._js.delete_msg(self._stream, previous)
        return True
