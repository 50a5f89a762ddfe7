"""A tiny event union and decider used to test the generic store machinery."""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from streams.codec import Codec
from streams.store import Layout


class Ev(msgspec.Struct, frozen=True, tag_field="type"):
    pass


class Added(Ev, frozen=True, tag="test.added"):
    n: int


class Reset(Ev, frozen=True, tag="test.reset"):
    pass


Event: TypeAlias = Added | Reset


class Batch(msgspec.Struct, frozen=True):
    command: str
    events: list[Event]


CODEC: Codec[Batch] = Codec(Batch)


def layout(space_prefix: str, stream: str) -> Layout:
    def subject(agg: str, kind: str) -> str:
        base = f"moon.wf.{agg}.{kind}"
        return f"{space_prefix}.{base}" if space_prefix else base

    def filter_(agg: str) -> str:
        base = f"moon.wf.{agg}.>"
        return f"{space_prefix}.{base}" if space_prefix else base

    return Layout(stream=stream, subject=subject, filter=filter_)


def evolve(total: int, event: Event) -> int:
    match event:
        case Added(n=n):
            return total + n
        case Reset():
            return 0
    raise AssertionError(event)
