"""The OpenTelemetry SDK adapter: our SpanRecords exported with the ids they were derived with.

Imported only by streams/telemetry.py once tracing is configured. Spans go through a
TracerProvider whose id generator hands out the ids of the record being exported, so the
SDK's sampler (a caller's flags 00 are honoured), limits, resource and processors all apply.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Status, StatusCode

from streams.tracing import SpanRecord

__all__ = ["exporting", "otlp_processor"]

_KINDS = {
    "internal": otel_trace.SpanKind.INTERNAL,
    "server": otel_trace.SpanKind.SERVER,
    "client": otel_trace.SpanKind.CLIENT,
    "producer": otel_trace.SpanKind.PRODUCER,
    "consumer": otel_trace.SpanKind.CONSUMER,
}
_given: contextvars.ContextVar[tuple[int, int]] = contextvars.ContextVar("given_ids")


class _Given(IdGenerator):
    """The ids streams/tracing.py derived, handed to the SDK for the span being made."""

    def generate_span_id(self) -> int:
        return _given.get()[1]

    def generate_trace_id(self) -> int:
        return _given.get()[0]

    def is_trace_id_random(self) -> bool:
        return False  # derived, not random: W3C level 2's random flag must not be set


def otlp_processor() -> SpanProcessor:
    """Batched OTLP/HTTP, configured by the standard OTEL_EXPORTER_OTLP_* variables."""
    # Deferred: protobuf and requests load only in a process that exports.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    return BatchSpanProcessor(OTLPSpanExporter())


def exporting(processor: SpanProcessor, service_name: str
              ) -> tuple[TracerProvider, Callable[[SpanRecord], None]]:
    """A provider feeding `processor`, and the sink that turns one record into one span."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                              id_generator=_Given())
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("maestro-moon")

    def sink(record: SpanRecord) -> None:
        parent = otel_context.Context()
        if record.parent_id:
            flags = otel_trace.TraceFlags(1 if record.sampled else 0)
            remote = otel_trace.SpanContext(int(record.trace_id, 16), int(record.parent_id, 16),
                                            is_remote=True, trace_flags=flags)
            parent = otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(remote))
        token = _given.set((int(record.trace_id, 16), int(record.span_id, 16)))
        try:
            span = tracer.start_span(record.name, context=parent, kind=_KINDS[record.kind],
                                     attributes=record.attributes, start_time=record.start_ns)
        finally:
            _given.reset(token)
        for note in record.notes:
            span.add_event(note.name, note.attributes, timestamp=note.at_ns)
        if record.error:
            span.set_status(Status(StatusCode.ERROR, record.error))
        span.end(end_time=max(record.end_ns, record.start_ns))

    return provider, sink
