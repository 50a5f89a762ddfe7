"""The kernels (maestro/kernels.py) compiled by numba in a background thread, never in a solve's
time: `start()` begins the compilation (or the load from numba's cache) and returns at once;
`compiled()` is the compiled namespace once it is ready, else None, and callers run the plain
Python kernels meanwhile (the same algorithm, so a deterministic solve gives the same plan).

Measured (2 loaded cores): a cold compile takes seconds, a load from the cache a fraction of a
second, most of it importing numba. When no cache directory is writable (a read-only install
with no writable home), numba refuses `cache=True`; the kernels are then compiled uncached, in
the background like the rest. Any failure (numba missing, an unsupported platform) leaves the
Python kernels in place, with the reason in `failure()`.
"""

from __future__ import annotations

import atexit
import os
import threading
import types
from collections.abc import Callable
from typing import Any

from maestro import kernels

__all__ = ["compiled", "failure", "start", "wait"]

# Callees before callers: numba resolves a kernel's calls when the caller is compiled.
_ORDER = ("next32", "sgs", "order_by", "evaluate_into", "sample_into", "_tournament", "_arc",
          "breed", "_survive_rows", "survive")
# Entry points the solver calls; compiled eagerly by a warm-up call, then frozen.
ENTRIES = ("evaluate_into", "sample_into", "breed", "survive")

_lock = threading.Lock()
_ready = threading.Event()
_thread: threading.Thread | None = None
_namespace: dict[str, Callable[..., Any]] | None = None
_failure: str | None = None


def start() -> None:
    """Begin compiling in a daemon thread (once per process); MAESTRO_NO_JIT=1 turns it off."""
    global _thread, _failure  # noqa: PLW0603 - one compilation per process
    with _lock:
        if _thread is not None or _ready.is_set():
            return
        if os.environ.get("MAESTRO_NO_JIT") == "1":
            _failure = "disabled by MAESTRO_NO_JIT=1"
            _ready.set()
            return
        _thread = threading.Thread(target=_compile, daemon=True, name="maestro-jit")
        _thread.start()
        # A daemon thread still inside numba when the interpreter finalizes can take the process
        # down with it (a nonzero exit seen once in a loaded test run); a process that exits
        # during a cold compile waits for it instead (seconds, once: later ones load the cache).
        atexit.register(_ready.wait, 60)


def compiled() -> dict[str, Callable[..., Any]] | None:
    """The compiled entry points by name, or None while (or if) they are not ready."""
    return _namespace if _ready.is_set() else None


def wait(timeout: float | None = None) -> bool:
    """Block until the compilation ended (tests, benchmarks' warm-up); True if it is ready."""
    start()
    _ready.wait(timeout)
    return _namespace is not None


def failure() -> str | None:
    """Why the compiled kernels are not in use, once the compilation has ended."""
    return _failure


def _compile() -> None:
    global _namespace, _failure  # noqa: PLW0603 - published once, read-only afterwards
    try:
        import numba  # noqa: PLC0415 - imported off the caller's thread, on purpose

        namespace: dict[str, Any] = dict(vars(kernels))
        for name in _ORDER:
            fn = getattr(kernels, name)
            clone = types.FunctionType(fn.__code__, namespace, name, fn.__defaults__)
            clone.__qualname__ = fn.__qualname__
            clone.__module__ = fn.__module__
            try:
                namespace[name] = numba.njit(cache=True, nogil=True)(clone)
            except RuntimeError:  # no writable cache directory: compile every process
                namespace[name] = numba.njit(nogil=True)(clone)
        _warm_up(namespace)
        for name in ENTRIES:  # (the callees, loaded from the cache inside them, have none)
            namespace[name].disable_compile()  # a call with other types fails, never compiles
        _namespace = {name: namespace[name] for name in ENTRIES}
    except Exception as exc:  # any failure leaves the Python kernels in place
        _failure = f"{type(exc).__name__}: {exc}"
    finally:
        _ready.set()


def _warm_up(namespace: dict[str, Any]) -> None:
    """One call of each entry point on a two-task problem, with the solver's exact types."""
    import numpy as np  # noqa: PLC0415

    def arr(*xs: int) -> Any:
        return np.array(xs, dtype=np.int64)

    net = (arr(1, 1), arr(1, 1), arr(1), arr(0, 0, 1), arr(0), arr(0), arr(0, 1, 1), arr(1),
           arr(0), arr(0, 1), arr(1, 2))
    ws = (np.zeros(4, np.int64), np.zeros(6, np.int64),
          *(np.zeros(2, np.int64) for _ in range(8)))
    pop = (np.zeros(8, np.int64), np.zeros(8, np.int64), np.zeros(4, np.int64),
           np.zeros(4, np.int64), arr(0, 1, 2, 3), np.zeros(2, np.int64), arr(1 << 40, 0, 0, 2))
    rng = arr(1, 2, 3, 4)
    namespace["sample_into"](net, ws, rng)
    namespace["evaluate_into"](net, ws, pop, 0)
    namespace["breed"](net, ws, pop, rng, 1, 0, 2, 0)
    namespace["survive"](pop, 1, 2)
