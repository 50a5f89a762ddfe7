"""Prometheus metrics of every service, named in one place like the subjects are.

The shells count; nothing pure does. One process-wide registry (the client library's default,
so process memory, CPU and GC come for free) exposed over HTTP by `serve_metrics` and, as a
snapshot of the counters, in the `$SRV.STATS` reply of the service's health endpoint
(streams/health.py), so an operator without Prometheus can still read them over NATS.
"""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

__all__ = [
    "COMMANDS",
    "COMMAND_SECONDS",
    "DEVIATIONS",
    "EVENTS",
    "GATE_REQUESTS",
    "GATE_SECONDS",
    "PLANS",
    "REPLANS",
    "REPLAN_SECONDS",
    "STEP_SECONDS",
    "WORKER_STEPS",
    "labelled",
    "serve_metrics",
    "snapshot",
]

# Command handling takes 1-10 ms with an fsync per journal append; solving takes 10 ms-10 s.
_FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SLOW = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# --- MOON engine ------------------------------------------------------------------------------
COMMANDS = Counter(
    "moon_commands", "Commands handled by the engine, by kind and outcome "
    "(decided, noop, duplicate, refused, malformed, failed).", ["kind", "outcome"],
)
COMMAND_SECONDS = Histogram(
    "moon_command_seconds", "One command through the engine: fold, decide, journal, timers, "
    "orders (from the consumer or the gate; not the wait for a slot, nor the ack).",
    ["kind"], buckets=_FAST,
)
EVENTS = Counter(
    "moon_events", "Journaled events by type: moon.dispatched counts dispatches, "
    "moon.step.completed steps, moon.replan.applied replans, moon.workflow.* outcomes.",
    ["type"],
)
DEVIATIONS = Counter("moon_deviations", "Deviations reported to MAESTRO, by kind.", ["kind"])
STEP_SECONDS = Histogram(
    "moon_step_seconds", "Wall time of completed steps as the executor reported it.",
    buckets=_SLOW,
)

# --- MOON executors ---------------------------------------------------------------------------
WORKER_STEPS = Counter(
    "moon_worker_steps", "Work orders run by this executor, by capability and outcome.",
    ["capability", "outcome"],
)

# --- the envelope gate (every signed request of every service) --------------------------------
GATE_REQUESTS = Counter(
    "envelope_requests", "Requests answered by a gate, by service, method, outcome and "
    "refusal reason ('' when accepted).", ["service", "method", "outcome", "reason"],
)
GATE_SECONDS = Histogram(
    "envelope_request_seconds", "From a request's arrival to its signed reply.",
    ["service", "method"], buckets=_FAST,
)

# --- MAESTRO ----------------------------------------------------------------------------------
PLANS = Counter("maestro_plans", "Plans asked for, by outcome (proposed, refused, ...).",
                ["outcome"])
REPLANS = Counter("maestro_replans", "Replans after a deviation, by outcome (revised, refused).",
                  ["outcome"])
REPLAN_SECONDS = Histogram("maestro_replan_seconds", "From a deviation read to its revision sent.",
                           buckets=_SLOW)


M = TypeVar("M", bound=MetricWrapperBase)
# Keyed by the metric itself, not its id(): a key holds its metric, so no id is ever reused.
_CHILDREN: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}


def labelled(metric: M, *values: str) -> M:
    """`metric.labels(*values)`, kept: the library validates the values, builds the key and
    takes a lock on every call, ~2.6 % of the engine's CPU under load counted per event. As
    many entries as the metric has children, which it keeps anyway."""
    key = (metric, values)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*values)
    return found  # type: ignore[return-value]  # stored from metric.labels: the same type


def serve_metrics(port: int, addr: str | None = None) -> int:
    """Expose /metrics over HTTP on a daemon thread for the life of the process; returns the
    bound port (0 picks one). On MAESTRO_METRICS_ADDR, else loopback: exposing it is a choice
    (in a container, set it to 0.0.0.0 for the scraper)."""
    import os  # noqa: PLC0415 - only the shells that serve metrics ask the environment

    server, _ = start_http_server(port, addr=addr or os.environ.get("MAESTRO_METRICS_ADDR",
                                                                     "127.0.0.1"))
    return int(server.server_address[1])


def snapshot(prefixes: tuple[str, ...] = ("moon_", "envelope_", "maestro_")) -> dict[str, float]:
    """Our own families' counter totals and histogram counts and sums, flat: for `$SRV.STATS`."""
    out: dict[str, float] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith(prefixes):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_total", "_count", "_sum")):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out
