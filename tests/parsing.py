"""Parsing our own sources in tests, safe from CPython 3.11's AST recursion check.

A coroutine left over from an earlier test (a third-party library's, cancelled mid-await) may be
finalized by the garbage collector while `compile` builds an AST; its finalizer runs Python code
inside the parser, which then fails its own bookkeeping ("AST constructor recursion depth
mismatch", a CPython 3.11 bug). Keeping the collector off while parsing makes that impossible,
whatever ran before.
"""

from __future__ import annotations

import ast
import gc
from pathlib import Path


def parse(path: Path) -> ast.Module:
    source = path.read_text()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, filename=str(path))
    finally:
        if was_enabled:
            gc.enable()
