"""The broker's clock, as the engine reads it: one clock for scheduling timers and for firing
them. Schedules fire by the server's clock, so due times computed from a skewed engine clock
fire early or late (25 s behind made a 3 s timeout fire after 0.5 s). The engine therefore
stamps decisions with local time plus an offset to the server, measured from the `ts` of
JetStream API replies (each a read; no write) and refreshed in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import datetime

import structlog
from nats.aio.client import Client

__all__ = ["BrokerClock", "local_ms"]

log = structlog.get_logger("moon.clock")
RESYNC_S = 30.0


def local_ms() -> int:
    return time.time_ns() // 1_000_000


def _parse_ts(text: str) -> int:
    # RFC 3339 with nanoseconds and Z: Python 3.11 takes at most microseconds.
    head, _, frac = text.rstrip("Z").partition(".")
    micros = (frac + "000000")[:6]
    stamp = datetime.fromisoformat(f"{head}.{micros}+00:00")
    return int(stamp.timestamp() * 1000)


class BrokerClock:
    """`clock()` is the broker's time in ms, as well as one round trip can tell it."""

    def __init__(self, nc: Client, probe_subject: str) -> None:
        self._nc, self._probe = nc, probe_subject
        self.offset_ms = 0
        self.synced = False

    def __call__(self) -> int:
        return local_ms() + self.offset_ms

    async def sync(self) -> bool:
        """One round trip: the server's `ts` against the midpoint of our send and receive."""
        sent = local_ms()
        try:
            reply = await self._nc.request(self._probe, b"", timeout=2)
            ts = json.loads(reply.data).get("ts")
        except Exception as error:  # away or denied: keep the last offset
            log.debug("clock_sync_failed", error=repr(error))
            return False
        received = local_ms()
        if not isinstance(ts, str):
            return False
        self.offset_ms = _parse_ts(ts) - (sent + received) // 2
        self.synced = True
        return True

    async def run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.sync()
            await asyncio.sleep(RESYNC_S)
