"""The tracing shell: the span this task is in, where finished spans go, and the OTel SDK.

Nothing is exported unless `configure()` finds `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces
one) in the environment, or a test `install()`s a processor; until then `emit` is one `is None`
test and the SDK is never imported. The current span is a context variable that the gate, MAESTRO
and the worker set whatever the configuration: what they derive from it (the traceparent a
dispatch journals, the one a work order carries) must not depend on whether anyone listens.

Spans are exported with the ids streams/tracing.py derives, through a TracerProvider whose id
generator hands out exactly those ids: the SDK's sampler, limits and processors apply as usual,
and a caller's unsampled traceparent (flags 00) is honoured all the way down.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from streams.tracing import (
    Attribute,
    Parent,
    SpanKind,
    SpanNote,
    SpanRecord,
    derive_trace_id,
    gate_span,
    parse_traceparent,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

__all__ = [
    "Timed",
    "add_trace_ids",
    "configure",
    "current",
    "current_traceparent",
    "emit",
    "enabled",
    "install",
    "recording",
    "serving",
    "shutdown",
    "timed",
    "uninstall",
]

log = structlog.get_logger("streams.telemetry")
_current: contextvars.ContextVar[Parent | None] = contextvars.ContextVar(
    "trace_parent", default=None)


@dataclass
class _State:
    sink: Callable[[SpanRecord], None] | None = None
    provider: TracerProvider | None = None


_state = _State()


def enabled() -> bool:
    """Whether spans go anywhere: the hot path's only cost when tracing is off."""
    return _state.sink is not None


def emit(records: Iterable[SpanRecord]) -> None:
    """Export finished spans; telemetry never fails the work it describes."""
    sink = _state.sink
    if sink is None:
        return
    for record in records:
        try:
            sink(record)
        except Exception as error:
            log.warning("span_export_failed", span=record.name, error=repr(error))


def current() -> Parent | None:
    return _current.get()


def current_traceparent() -> str | None:
    """What an outgoing request or command carries: the span it is sent from."""
    parent = _current.get()
    return parent.traceparent if parent is not None and parent.span_id else None


@dataclass(slots=True)
class Timed:
    """A span a shell is timing: started when the block starts, emitted by `end()` once."""

    name: str
    context: Parent
    parent_id: str
    kind: SpanKind
    start_ns: int
    attributes: dict[str, Attribute] = field(default_factory=dict)
    notes: list[SpanNote] = field(default_factory=list)
    end_ns: int = 0  # set when the block ends: `end()` may come later, once the outcome is known
    ended: bool = False

    def end(self, error: str = "", attributes: Mapping[str, Attribute] | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        if _state.sink is None:
            return
        emit([SpanRecord(
            name=self.name, trace_id=self.context.trace_id, span_id=self.context.span_id,
            parent_id=self.parent_id, start_ns=self.start_ns, end_ns=self.end_ns or time.time_ns(),
            kind=self.kind, error=error, attributes={**self.attributes, **(attributes or {})},
            notes=tuple(self.notes), sampled=self.context.sampled,
        )])


class timed:  # noqa: N801  (used as a function: `with telemetry.timed(...) as span`)
    """The block runs as span `span_id`, child of `parent` (default: the current span; with
    neither, the trace id is derived from the span id). `auto_end`: emitted when the block
    ends (ERROR if it raised); otherwise the shell calls `end()` once it knows the outcome and
    that this handling was the first (a span never ended is never emitted).

    A class, not a generator: with tracing off this is the whole cost of a span on the gate's
    path (a context variable set and reset), so it is kept to a few attribute stores."""

    __slots__ = ("_auto", "_span", "_token")

    def __init__(self, name: str, span_id: str, parent: Parent | None, *,
                 kind: SpanKind = "internal", auto_end: bool = False,
                 attributes: Mapping[str, Attribute] | None = None) -> None:
        parent = parent if parent is not None else _current.get()
        if parent is None:
            context, parent_id = Parent(derive_trace_id("root", span_id), span_id), ""
        else:
            context, parent_id = Parent(parent.trace_id, span_id, parent.sampled), parent.span_id
        self._span = Timed(name=name, context=context, parent_id=parent_id, kind=kind,
                           start_ns=time.time_ns(), attributes=dict(attributes or {}))
        self._auto = auto_end

    def __enter__(self) -> Timed:
        self._token = _current.set(self._span.context)
        return self._span

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 _: object) -> None:
        span = self._span
        span.end_ns = time.time_ns()
        _current.reset(self._token)
        if self._auto:
            span.end(error="" if error is None else f"{type(error).__name__}: {error}"[:500])


def serving(service: str, method: str, request_id: str, traceparent: str,
            caller: str) -> timed:
    """The gate's span for one request, child of the caller's traceparent; the gate ends it
    once the outcome is final and stored (a replayed answer or a failed attempt emits none)."""
    return timed(f"{service}/{method}", gate_span(service, request_id),
                 parse_traceparent(traceparent), kind="server",
                 attributes={"envelope.request_id": request_id, "envelope.caller": caller})


def add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: a line logged inside a span names its trace and span."""
    parent = _current.get()
    if parent is not None:
        event.setdefault("trace_id", parent.trace_id)
        if parent.span_id:
            event.setdefault("span_id", parent.span_id)
    return event


# --- the OpenTelemetry SDK (imported only when something is installed) ------------------------


def configure(service_name: str) -> bool:
    """OTLP over HTTP when the standard variables ask for it; nothing (and no import) else."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return False
    if not (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return False
    from streams import otel  # noqa: PLC0415  (the SDK costs ~40 ms to import: only when asked)

    install(otel.otlp_processor(), service_name=env.get("OTEL_SERVICE_NAME") or service_name)
    log.info("tracing_configured", service=service_name)
    return True


def install(processor: SpanProcessor, *, service_name: str = "maestro-moon") -> None:
    """Send every span this process emits to `processor` (tests: a SimpleSpanProcessor over
    the SDK's InMemorySpanExporter)."""
    from streams import otel  # noqa: PLC0415  (see configure)

    shutdown()
    _state.provider, _state.sink = otel.exporting(processor, service_name)


@contextlib.contextmanager
def recording() -> Iterator[list[SpanRecord]]:
    """The spans emitted during the block, as records (tests); what was installed before is
    put back afterwards."""
    found: list[SpanRecord] = []
    before = _state.sink
    _state.sink = found.append
    try:
        yield found
    finally:
        _state.sink = before


def uninstall() -> None:
    _state.sink = None


def shutdown() -> None:
    """Flush and stop the exporter (a service's exit); tracing is off afterwards."""
    provider, _state.provider = _state.provider, None
    uninstall()
    if provider is not None:
        provider.shutdown()
