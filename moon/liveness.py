"""Is anyone taking a pool's orders? Read from the WORK stream's consumers, one request each.

A worker pulls: while it has a free slot it keeps one pull request waiting on each of its
consumers (`any-<capability>` shared by the pool, `exec-<id>` its own), re-sent every second
(moon/worker.py). So a consumer with no pull request waiting and no order in flight has no live
executor behind it, within about a second of the last one stopping (an order in flight when it
died is redelivered after the consumer's ack wait, a few seconds). A consumer that does not exist
was never served on this broker. This is what `moon status` says when a step waits for an
executor: cheap (one request per waiting pool) and honest (the broker's own view), where the
board knows only executors that advertise and the registry knows who may serve, not who runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import msgspec

from streams import subjects

if TYPE_CHECKING:  # the screens import Pool; `moon list` must not pay for nats here
    from nats.js import JetStreamContext

    from streams.subjects import Space

__all__ = ["Pool", "pool_name", "pools"]

ASK_TIMEOUT_S = 1.0


class Pool(msgspec.Struct, frozen=True):
    """One WORK consumer as the broker sees it; `exists=False`: never created."""

    exists: bool
    waiting: int = 0  # pull requests waiting: free slots of live workers
    in_flight: int = 0  # orders delivered and not yet acked

    @property
    def live(self) -> bool:
        return self.exists and (self.waiting > 0 or self.in_flight > 0)


def pool_name(*, capability: str | None = None, executor: str | None = None) -> str:
    """The consumer an order goes to: its executor's own when bound, else its capability's."""
    if executor:
        return f"exec-{subjects.token(executor)}"
    assert capability is not None
    return f"any-{subjects.token(capability)}"


async def pools(js: JetStreamContext, space: Space, names: Iterable[str]) -> Mapping[str, Pool]:
    """Each named consumer's state; one the broker does not answer for (no right to ask, away)
    is left out, so a caller says nothing rather than something wrong."""
    from nats.js.errors import NotFoundError  # noqa: PLC0415

    wanted = sorted(set(names))

    async def one(name: str) -> Pool | None:
        try:
            info = await js.consumer_info(space.stream("WORK"), space.consumer(name),
                                          timeout=ASK_TIMEOUT_S)
        except NotFoundError:
            return Pool(exists=False)
        except Exception:  # a timeout, a permission the role lacks, a broker going away
            return None
        return Pool(exists=True, waiting=info.num_waiting or 0,
                    in_flight=info.num_ack_pending or 0)

    found = await asyncio.gather(*(one(n) for n in wanted))
    out: dict[str, Pool] = {}
    for name, pool in zip(wanted, found, strict=True):
        if pool is not None:
            out[name] = pool
    return out
