"""The event loop every long-running process runs on: uvloop where it is installed, with the
cyclic garbage collector tuned for a service.

Measured under the peers harness (benchmarks/peers_moon.py): each message through nats-py is
a few passes of the event loop (the reader, the flusher, a future's callbacks), and uvloop's
libuv loop costs a fraction of asyncio's per pass and per socket read. `MOON_LOOP=asyncio`
runs the standard loop instead (to compare, or to debug with asyncio's own tooling).

The collector: what was imported before the loop starts is frozen (never scanned again), and
a collection runs per 20,000 net allocations instead of 700. A service allocates a few hundred
objects per message, nearly all freed by reference counting, so the default ran a young
collection every few messages and a full one, over every cached workflow state, often enough
to show in the tail: 3 alternating pairs under W3, dispatch p99 38.6-41.0 ms against
47.5-62.3, CPU per workflow -4 %.
"""

from __future__ import annotations

import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["GC_THRESHOLDS", "LOOP_ENV", "loop_name", "run"]

T = TypeVar("T")
LOOP_ENV = "MOON_LOOP"
GC_THRESHOLDS = (20_000, 50, 100)


def loop_name() -> str:
    """"uvloop" when it is installed and not turned off, else "asyncio"."""
    if os.environ.get(LOOP_ENV, "").strip().lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401, PLC0415 - optional at import time: the choice is here
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `loop_name()` names, the collector tuned (a process
    runs one service: the setting is the process's)."""
    import asyncio  # noqa: PLC0415 - the CLIs' --help imports this module, not asyncio
    import gc  # noqa: PLC0415

    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)

    if loop_name() == "uvloop":
        import uvloop  # noqa: PLC0415

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
