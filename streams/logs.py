"""structlog set-up for the shells: JSON lines in services, pretty on a terminal.

Every shell calls this once at start, so it also turns tracing on when the environment asks
for OTLP export (streams/telemetry.py): one call, the same for every service."""

from __future__ import annotations

import logging
import sys

import structlog

from streams import telemetry

__all__ = ["configure_logging"]


def configure_logging(level: int = logging.INFO) -> None:
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer()
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            telemetry.add_trace_ids,  # a line logged inside a span names its trace and span
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    telemetry.configure("maestro-moon")
