"""Ids that become subject tokens, KV keys or `Nats-Msg-Id`s: one rule, checked before any use.

A `.` splits a subject token, `*`/`>` are wildcards, spaces end a subject, and KV keys refuse
most punctuation: an id outside `[A-Za-z0-9_-]{1,64}` is refused at the edge, never escaped.
"""

from __future__ import annotations

import re

from streams.replies import Reason, Refusal

__all__ = ["ID_PATTERN", "MAX_ID", "check_id", "is_valid_id"]

MAX_ID = 64
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def check_id(value: object, what: str) -> Refusal | None:
    """None when `value` may be used as a token; otherwise a refusal that names the field."""
    if is_valid_id(value):
        return None
    shown = value[:80] if isinstance(value, str) else type(value).__name__
    return Refusal(Reason.INVALID_ID,
                   f"{what} {shown!r} must match [A-Za-z0-9_-]{{1,{MAX_ID}}}")
