"""What tracing costs on the engine's hot path, off and on: a microbenchmark, no broker.

    python benchmarks/tracing.py [--n 20000] [--runs 5]

Per journaled decision the engine's runner calls `moon.tracing.journaled` (off: one `is None`
test); per work order `work_orders` derives the attempt's traceparent (a SHA-256); per request
the gate enters and ends a span (off: a context variable set and reset). Each is timed against
the decision it rides on (`decide` + `apply` of a 3-step dispatch) so the overhead reads as a
share of the work. Medians over runs, in microseconds per call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import nacl.signing
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from moon import tracing
from moon.workflow import apply, decide, initial, work_orders
from streams import telemetry
from streams.moon_events import Decision, Dispatch, StepSpec
from streams.tracing import attempt_traceparent

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STEPS = (StepSpec(id="a", capability="w"), StepSpec(id="b", capability="w", needs=("a",)),
         StepSpec(id="c", capability="w", needs=("b",)))


def per_call_us(fn: Callable[[int], object], n: int, runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        for i in range(n):
            fn(i)
        samples.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    def command(i: int) -> Dispatch:
        return Dispatch(command_id=f"d{i}", workflow_id=f"wf{i}", at_ms=i, steps=STEPS,
                        traceparent=CALLER)

    commands = [command(i) for i in range(args.n)]
    decisions = []
    for c in commands:
        events = decide(c, initial)
        assert isinstance(events, list)
        decisions.append(Decision(command=c, events=events))

    def decide_apply(i: int) -> object:
        events = decide(commands[i], initial)
        assert isinstance(events, list)
        return apply(initial, Decision(command=commands[i], events=events))

    def hook(i: int) -> None:
        tracing.journaled(initial, decisions[i], i)

    states = [apply(initial, d) for d in decisions]

    def orders(i: int) -> object:
        return work_orders(states[i], decisions[i].events)

    def gate(i: int) -> None:
        with telemetry.serving("moon", "dispatch", f"r{i}", CALLER, "caller") as span:
            pass
        span.end()

    key = nacl.signing.SigningKey(b"k" * 32)
    signed = key.sign(b"x" * 512)

    def verify(_: int) -> None:
        key.verify_key.verify(signed)

    def derive(i: int) -> str:
        return attempt_traceparent(f"wf{i}", CALLER, "a", 1)

    base = per_call_us(decide_apply, args.n, args.runs)
    rows = [("decide+apply (the work)", base), ("work_orders (with traceparent)",
                                                 per_call_us(orders, args.n, args.runs))]
    rows.append(("  of which the order's traceparent", per_call_us(derive, args.n, args.runs)))
    rows.append(("ed25519 verify (each gate request)", per_call_us(verify, args.n, args.runs)))
    rows.append(("hook, tracing off", per_call_us(hook, args.n, args.runs)))
    rows.append(("gate span, tracing off", per_call_us(gate, args.n, args.runs)))
    exporter = InMemorySpanExporter()
    telemetry.install(SimpleSpanProcessor(exporter))
    rows.append(("hook, in-memory SDK export", per_call_us(hook, args.n, args.runs)))
    exporter.clear()
    rows.append(("gate span, in-memory SDK export", per_call_us(gate, args.n, args.runs)))
    telemetry.shutdown()
    for name, us in rows:
        print(f"{name:34s} {us:8.2f} us/call  ({us / base:6.1%} of decide+apply)")


if __name__ == "__main__":
    main()
