"""W3C traceparent, validated strictly because the signed header makes it an audit link."""

from __future__ import annotations

import os

__all__ = [
    "child_traceparent",
    "is_valid_traceparent",
    "new_traceparent",
    "random_traceparent",
    "trace_id",
]

_HEX = frozenset("0123456789abcdef")


def is_valid_traceparent(value: str) -> bool:
    """Version 00 shape: 55 chars, lowercase hex, non-zero ids, version != ff, any flags."""
    if len(value) != 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return False
    version, trace, parent, flags = value[:2], value[3:35], value[36:52], value[53:]
    if not _HEX.issuperset(version + trace + parent + flags):
        return False
    return version != "ff" and trace != "0" * 32 and parent != "0" * 16


def trace_id(value: str) -> str:
    """The 32-hex trace id of a valid traceparent."""
    return value[3:35]


def new_traceparent(random24: bytes, *, sampled: bool = True) -> str:
    """A fresh traceparent from 24 random bytes (16 for the trace id, 8 for the parent id)."""
    if len(random24) != 24:
        raise ValueError("need 24 random bytes")
    trace, parent = random24[:16], random24[16:]
    # All-zero ids are invalid; at 2^-128 this only matters for a deliberately bad source.
    trace = trace if any(trace) else b"\x00" * 15 + b"\x01"
    parent = parent if any(parent) else b"\x00" * 7 + b"\x01"
    return f"00-{trace.hex()}-{parent.hex()}-{'01' if sampled else '00'}"


def child_traceparent(parent: str, random8: bytes) -> str:
    """Same trace, a new span id: what a hop puts on the messages it sends on."""
    span = random8 if any(random8) else b"\x00" * 7 + b"\x01"
    return f"00-{trace_id(parent)}-{span.hex()}-{parent[53:]}"


def random_traceparent() -> str:
    """Shell helper: the one place this module reads randomness."""
    return new_traceparent(os.urandom(24))
