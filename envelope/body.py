"""Decoding an opened envelope's body into a service's request type, as a value, never a raise."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from streams.replies import Reason, Refusal

__all__ = ["decode_body"]

T = TypeVar("T")


def decode_body(body: bytes, type_: type[T]) -> T | Refusal:
    """`type_` from msgpack `body`, or a malformed refusal (wrong types, bad keys, truncation,
    nesting past the stack: msgspec raises RecursionError for that, which is no DecodeError)."""
    try:
        return msgspec.msgpack.decode(body, type=type_)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        return Refusal(Reason.MALFORMED, str(error)[:300])
    except RecursionError:
        return Refusal(Reason.MALFORMED, "body nested too deeply")
