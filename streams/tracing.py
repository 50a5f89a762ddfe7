"""Spans as values, and their ids derived from what is journaled. Pure.

A span's id is a hash of what it stands for (a request id, a workflow's step and attempt, a
journal sequence), never a random number: whoever builds the span for the same fact, in any
process and at any time, builds the same ids. A replay, a redelivered command or a second
engine therefore cannot make a second span for one event; at worst they make the same span
again, and the shells emit only on the first append (streams/telemetry.py, moon/tracing.py).

The trace is the caller's: the W3C `traceparent` of the request that dispatched a workflow is
journaled with it (`Dispatched.traceparent`), and every span of the workflow takes its trace
id from there. A workflow without one (an old journal, a test) gets a trace id from its id.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal, TypeAlias

import msgspec

__all__ = [
    "Attribute",
    "Parent",
    "SpanKind",
    "SpanNote",
    "SpanRecord",
    "attempt_span",
    "attempt_traceparent",
    "child_traceparent",
    "derive_span_id",
    "derive_trace_id",
    "dispatch_span",
    "gate_span",
    "parse_traceparent",
    "workflow_parent",
]

Attribute: TypeAlias = str | int | float | bool
SpanKind: TypeAlias = Literal["internal", "server", "client", "producer", "consumer"]


class Parent(msgspec.Struct, frozen=True):
    """A span context: what a child needs of its parent (and a traceparent carries)."""

    trace_id: str  # 32 lowercase hex
    span_id: str  # 16 lowercase hex
    sampled: bool = True

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


class SpanNote(msgspec.Struct, frozen=True):
    """A timed note on a span (an OpenTelemetry span event): an attempt's start, a deviation."""

    name: str
    at_ns: int
    attributes: dict[str, Attribute] = {}


class SpanRecord(msgspec.Struct, frozen=True):
    """One finished span, everything an exporter needs; built by pure code, emitted by shells."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str = ""  # "": the root of its trace
    start_ns: int = 0
    end_ns: int = 0
    kind: SpanKind = "internal"
    error: str = ""  # not empty: the span's status is ERROR, with this description
    attributes: dict[str, Attribute] = {}
    notes: tuple[SpanNote, ...] = ()
    sampled: bool = True

    @property
    def context(self) -> Parent:
        return Parent(self.trace_id, self.span_id, self.sampled)


def _digest(tag: str, parts: tuple[object, ...], size: int) -> str:
    # NUL-separated: ("a", "b/c") and ("a/b", "c") must not collide.
    data = "\0".join([tag, *(str(p) for p in parts)]).encode()
    hexed = hashlib.sha256(data).hexdigest()[: 2 * size]
    # An all-zero id is invalid in W3C and OTLP; at 2^-64 only a contrived input gets here.
    return hexed if hexed.strip("0") else "0" * (2 * size - 1) + "1"


def derive_span_id(*parts: object) -> str:
    """16 hex: the same parts always name the same span."""
    return _digest("span", parts, 8)


def derive_trace_id(*parts: object) -> str:
    """32 hex: the trace of something that arrived without a traceparent."""
    return _digest("trace", parts, 16)


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def parse_traceparent(value: str | None) -> Parent | None:
    """A W3C version-00 traceparent as a Parent; None for anything else (no exceptions)."""
    found = _TRACEPARENT.fullmatch(value) if value else None
    if found is None:
        return None
    version, trace, span, flags = found.groups()
    if version == "ff" or trace == "0" * 32 or span == "0" * 16:
        return None
    return Parent(trace, span, sampled=bool(int(flags, 16) & 1))


def child_traceparent(parent: str | None, span_id: str) -> str | None:
    """What a hop puts on what it sends on: the same trace, `span_id` as the parent."""
    found = parse_traceparent(parent)
    return None if found is None else Parent(found.trace_id, span_id, found.sampled).traceparent


# --- the ids every process agrees on ---------------------------------------------------------


def gate_span(service: str, request_id: str) -> str:
    """The gate's span for a request: one per request id, the id every retry carries."""
    return derive_span_id("gate", service, request_id)


def workflow_parent(workflow_id: str, traceparent: str | None) -> Parent:
    """Where a workflow's spans hang: the caller's trace and span that dispatched it, or a
    trace of its own (derived from its id) when it came without a traceparent."""
    found = parse_traceparent(traceparent)
    if found is not None:
        return found
    return Parent(derive_trace_id("workflow", workflow_id), "")


def dispatch_span(workflow_id: str) -> str:
    return derive_span_id("moon.dispatch", workflow_id)


def attempt_span(workflow_id: str, step: str, attempt: int) -> str:
    """One attempt of one step (compensation attempts count on, so they never collide)."""
    return derive_span_id("moon.attempt", workflow_id, step, attempt)


def attempt_traceparent(workflow_id: str, traceparent: str | None, step: str, attempt: int) -> str:
    """What a work order carries: the workflow's trace, the attempt's span as the parent (an
    executor's own spans hang under the attempt, in any language that reads W3C)."""
    trace = workflow_parent(workflow_id, traceparent)
    flags = "01" if trace.sampled else "00"
    return f"00-{trace.trace_id}-{attempt_span(workflow_id, step, attempt)}-{flags}"
