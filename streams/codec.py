"""One encoder and one decoder per union, built once; decode failures are values, not crashes.

A reader loop (fold, tail, consumer) that meets garbage bytes or a tag it does not know gets an
`Undecodable` naming the subject and sequence, reports it and moves on.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

__all__ = ["Codec", "Undecodable"]

T = TypeVar("T")


class Undecodable(msgspec.Struct, frozen=True):
    """A stored message this reader cannot decode: where it is and why."""

    seq: int
    subject: str
    error: str


class Codec(Generic[T]):
    """JSON codec for one type (usually a tagged union), built once and reused."""

    def __init__(self, type_: Any) -> None:
        self.type = type_
        self._encoder = msgspec.json.Encoder()
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(type_)

    def encode(self, value: T) -> bytes:
        return self._encoder.encode(value)

    def decode(self, data: bytes) -> T:
        return self._decoder.decode(data)

    def try_decode(self, data: bytes, *, seq: int = 0, subject: str = "") -> T | Undecodable:
        try:
            return self._decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            return Undecodable(seq=seq, subject=subject, error=_explain(error, data))
        except RecursionError:
            return Undecodable(seq=seq, subject=subject, error="nested too deeply")


def _explain(error: Exception, data: bytes) -> str:
    """Name the unknown tag when that is the problem: 'unknown event type "x.y"'."""
    message = str(error)
    if "Invalid value" in message and "type" in message:
        try:
            raw = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return message
        tags = _tags(raw)
        if tags:
            return f"unknown or invalid event type {', '.join(map(repr, tags))}: {message}"
    return message


def _tags(raw: object) -> list[str]:
    found: list[str] = []
    if isinstance(raw, dict):
        if isinstance(raw.get("type"), str):
            found.append(raw["type"])
        for value in raw.values():
            found += _tags(value)
    elif isinstance(raw, list):
        for value in raw:
            found += _tags(value)
    return found
