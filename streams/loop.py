"""The event loop every long-running process runs on: uvloop where it is installed.

Measured under the peers harness (benchmarks/peers_moon.py): each message through nats-py is
a few passes of the event loop (the reader, the flusher, a future's callbacks), and uvloop's
libuv loop costs a fraction of asyncio's per pass and per socket read. `MOON_LOOP=asyncio`
runs the standard loop instead (to compare, or to debug with asyncio's own tooling).
"""

from __future__ import annotations

import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LOOP_ENV", "loop_name", "run"]

T = TypeVar("T")
LOOP_ENV = "MOON_LOOP"


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
    """`asyncio.run(main)` on the loop `loop_name()` names."""
    import asyncio  # noqa: PLC0415 - the CLIs' --help imports this module, not asyncio

    if loop_name() == "uvloop":
        import uvloop  # noqa: PLC0415

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
