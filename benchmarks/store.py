"""Benchmark the JetStream event store against raw nats-py JetStream on the same broker.

    python benchmarks/store.py [--runs 3] [--n 5000] [--lanes 100] [--breakdown]

One embedded nats-server (sync_interval: always, as MOON runs it) in a temp dir. Every run
measures, back to back on the same connection:

* sequential append: `JetStreamStore.append` on one aggregate, each expecting the previous
  version (OCC on the aggregate's subject filter + Nats-Msg-Id), vs raw `js.publish` of the same
  bytes, without headers, on a plain subject of a separate stream;
* pipelined append: `--lanes` aggregates in flight at once (asyncio.gather), each sequential
  within itself, vs the same number of raw publishing lanes;
* fold: `JetStreamStore.read` (ordered consumer + decode) of N stored decisions of one aggregate
  holding k=1 and k=10 events each, folded with `evolve`, vs a raw ordered consumer with a
  callback decoding and folding the same payloads.

`--breakdown` adds raw publishes carrying each of the store's headers in turn, so the gap
between raw publish and the store splits into server work per header and client work.

The machine is shared and noisy: modes alternate order between runs and the table shows
medians over runs (min-max in brackets).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from streams.broker import EmbeddedBroker, open_connection
from streams.codec import Codec
from streams.config import DUPLICATE_WINDOW_S, MOON, Topology, ensure_streams
from streams.jetstream_store import (
    EXPECTED_LAST_SUBJECT_SEQ,
    EXPECTED_LAST_SUBJECT_SEQ_SUBJECT,
    MSG_ID,
    JetStreamStore,
    ordered_read,
)
from streams.store import Appended, Layout
from streams.subjects import Space

# --- the sample union (a copy of tests/streams/sample.py: benchmarks do not import tests) -----


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


def evolve(total: int, event: Event) -> int:
    match event:
        case Added(n=n):
            return total + n
        case Reset():
            return 0
    raise AssertionError(event)


def fold(total: int, batch: Batch) -> int:
    for event in batch.events:
        total = evolve(total, event)
    return total


# --- names -------------------------------------------------------------------------------------

SPACE = Space("bench")
RAW_STREAM = SPACE.stream("RAW")
RAW_ROOT = SPACE.subject("raw")


def moon_layout() -> Layout:
    def subject(agg: str, kind: str) -> str:
        return SPACE.subject(f"moon.wf.{agg}.{kind}")

    def filter_(agg: str) -> str:
        return SPACE.subject(f"moon.wf.{agg}.>")

    return Layout(stream=SPACE.stream(MOON.name), subject=subject, filter=filter_)


def batches(tag: str, n: int, k: int) -> list[Batch]:
    return [
        Batch(command=f"{tag}-{i:07d}", events=[Added(n=i * k + j) for j in range(k)])
        for i in range(n)
    ]


# --- measurements ------------------------------------------------------------------------------


@dataclass
class Sequential:
    p50_us: float
    p99_us: float
    rate: float  # operations per second


def summarize(latencies_ns: Sequence[int], elapsed_s: float) -> Sequential:
    ordered = sorted(latencies_ns)
    p50 = ordered[len(ordered) // 2] / 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000
    return Sequential(p50_us=p50, p99_us=p99, rate=len(ordered) / elapsed_s)


async def sequential(step: Callable[[int], Awaitable[object]], n: int) -> Sequential:
    latencies = [0] * n
    gc.collect()
    clock = time.perf_counter_ns
    start = clock()
    for i in range(n):
        t0 = clock()
        await step(i)
        latencies[i] = clock() - t0
    return summarize(latencies, (clock() - start) / 1e9)


async def pipelined(lane: Callable[[int], Awaitable[None]], lanes: int, n: int) -> float:
    """Messages per second with `lanes` sequential writers in flight together."""
    gc.collect()
    start = time.perf_counter()
    await asyncio.gather(*(lane(j) for j in range(lanes)))
    return n / (time.perf_counter() - start)


async def store_sequential(
    store: JetStreamStore[Batch], agg: str, values: Sequence[Batch]
) -> Sequential:
    expected = 0

    async def step(i: int) -> None:
        nonlocal expected
        out = await store.append(agg, values[i], expected=expected, key=f"{agg}-{i}", kind="added")
        assert isinstance(out, Appended), out
        assert not out.duplicate
        expected = out.seq

    return await sequential(step, len(values))


async def store_pipelined(
    store: JetStreamStore[Batch], tag: str, values: Sequence[Batch], lanes: int
) -> float:
    per = len(values) // lanes

    async def lane(j: int) -> None:
        agg, expected = f"{tag}-{j}", 0
        for i in range(per):
            value = values[j * per + i]
            out = await store.append(agg, value, expected=expected, key=f"{agg}-{i}", kind="added")
            assert isinstance(out, Appended), out
            expected = out.seq

    return await pipelined(lane, lanes, per * lanes)


async def raw_sequential(
    js: JetStreamContext, subject: str, payloads: Sequence[bytes]
) -> Sequential:
    async def step(i: int) -> None:
        await js.publish(subject, payloads[i])

    return await sequential(step, len(payloads))


async def raw_pipelined(
    js: JetStreamContext, subject: str, payloads: Sequence[bytes], lanes: int
) -> float:
    per = len(payloads) // lanes

    async def lane(j: int) -> None:
        lane_subject = f"{subject}.{j}"
        for i in range(per):
            await js.publish(lane_subject, payloads[j * per + i])

    return await pipelined(lane, lanes, per * lanes)


async def headers_pipelined(
    js: JetStreamContext, subject: str, payloads: Sequence[bytes], lanes: int
) -> float:
    """Raw lanes carrying the store's three headers, each lane its own subject and filter."""
    per = len(payloads) // lanes

    async def lane(j: int) -> None:
        lane_subject, expected = f"{subject}.{j}.x", 0
        for i in range(per):
            headers = {
                EXPECTED_LAST_SUBJECT_SEQ: str(expected),
                EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: f"{subject}.{j}.>",
                MSG_ID: f"{lane_subject}-{i}",
            }
            ack = await js.publish(lane_subject, payloads[j * per + i], headers=headers)
            expected = ack.seq

    return await pipelined(lane, lanes, per * lanes)


async def headers_sequential(
    js: JetStreamContext,
    subject: str,
    payloads: Sequence[bytes],
    *,
    msg_id: bool,
    occ: str | None,
) -> Sequential:
    """Raw publishes carrying some of the store's headers. `occ`: None, "literal" (expected
    sequence of the subject itself) or "filter" (expected sequence of a wildcard filter)."""
    expected = 0
    filter_ = subject.rsplit(".", 1)[0] + ".>"

    async def step(i: int) -> None:
        nonlocal expected
        headers: dict[str, str] = {}
        if occ is not None:
            headers[EXPECTED_LAST_SUBJECT_SEQ] = str(expected)
        if occ == "filter":
            headers[EXPECTED_LAST_SUBJECT_SEQ_SUBJECT] = filter_
        if msg_id:
            headers[MSG_ID] = f"{subject}-{i}"
        ack = await js.publish(subject, payloads[i], headers=headers)
        expected = ack.seq

    return await sequential(step, len(payloads))


@dataclass
class Folded:
    msgs_per_s: float
    events_per_s: float


async def store_fold(store: JetStreamStore[Batch], agg: str, n: int) -> Folded:
    gc.collect()
    start = time.perf_counter()
    loaded = await store.read(agg)
    total, events = 0, 0
    for item in loaded.items:
        total = fold(total, item.value)
        events += len(item.value.events)
    elapsed = time.perf_counter() - start
    assert len(loaded.items) == n, (len(loaded.items), n)
    return Folded(n / elapsed, events / elapsed)


async def store_rows(js: JetStreamContext, layout: Layout, agg: str, n: int) -> float:
    """ordered_read alone (no decode, no last-sequence lookup): messages per second."""
    gc.collect()
    stream_last = (await js.stream_info(layout.stream)).state.last_seq
    start = time.perf_counter()
    rows = await ordered_read(js, layout.stream, layout.filter(agg), after=0, upto=stream_last)
    elapsed = time.perf_counter() - start
    assert len(rows) == n, (len(rows), n)
    return n / elapsed


async def raw_fold(js: JetStreamContext, subject: str, n: int, stream: str = RAW_STREAM) -> Folded:
    """Ordered consumer with a callback that decodes and folds, as research/jetstream.md §5."""
    decode = CODEC.decode
    done = asyncio.Event()
    count, events, total = 0, 0, 0

    async def on_msg(msg: Msg) -> None:
        nonlocal count, events, total
        batch = decode(msg.data)
        total = fold(total, batch)
        events += len(batch.events)
        count += 1
        if count >= n:
            done.set()

    gc.collect()
    start = time.perf_counter()
    sub = await js.subscribe(
        subject, stream=stream, ordered_consumer=True, cb=on_msg,
        pending_msgs_limit=1_000_000, pending_bytes_limit=1 << 30,
    )  # fmt: skip
    await asyncio.wait_for(done.wait(), timeout=120)
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    return Folded(count / elapsed, events / elapsed)


def fsync_probe(directory: Path, count: int = 200) -> Sequential:
    """Disk context for the numbers: sync_interval: always pays one fsync per append."""
    path = directory / "fsync-probe"
    latencies = []
    start = time.perf_counter_ns()
    with path.open("wb", buffering=0) as file:
        for _ in range(count):
            t0 = time.perf_counter_ns()
            file.write(b"x" * 200)
            os.fsync(file.fileno())
            latencies.append(time.perf_counter_ns() - t0)
    path.unlink()
    return summarize(latencies, (time.perf_counter_ns() - start) / 1e9)


def median_of(values: Sequence[float]) -> float:
    return statistics.median(values)


async def median_fold(times: int, measure: Callable[[], Awaitable[Folded]]) -> Folded:
    """Folds are short: take the median of a few within a run."""
    results = [await measure() for _ in range(times)]
    return Folded(
        median_of([r.msgs_per_s for r in results]), median_of([r.events_per_s for r in results])
    )


# --- one run -----------------------------------------------------------------------------------


@dataclass
class Run:
    values: dict[str, float] = field(default_factory=dict)

    def seq(self, name: str, result: Sequential) -> None:
        self.values[f"{name}.p50"] = result.p50_us
        self.values[f"{name}.p99"] = result.p99_us
        self.values[f"{name}.rate"] = result.rate

    def fold(self, name: str, result: Folded) -> None:
        self.values[f"{name}.msgs"] = result.msgs_per_s
        self.values[f"{name}.events"] = result.events_per_s


async def one_run(
    js: JetStreamContext,
    store: JetStreamStore[Batch],
    *,
    index: int,
    n: int,
    lanes: int,
    breakdown: bool,
    probe_dir: Path,
) -> Run:
    run = Run()
    run.seq("fsync", fsync_probe(probe_dir))
    tag = f"r{index}"
    k1, k10 = batches(tag, n, 1), batches(f"{tag}k", n, 10)
    p1, p10 = [CODEC.encode(b) for b in k1], [CODEC.encode(b) for b in k10]
    raw = f"{RAW_ROOT}.{tag}"
    layout = store.layout

    async def raw_seq() -> None:
        run.seq("raw.seq", await raw_sequential(js, f"{raw}.seq", p1))

    async def store_seq() -> None:
        run.seq("store.seq", await store_sequential(store, f"{tag}-seq", k1))

    async def raw_pipe() -> None:
        run.values["raw.pipe"] = await raw_pipelined(js, f"{raw}.pipe", p1, lanes)

    async def store_pipe() -> None:
        run.values["store.pipe"] = await store_pipelined(store, f"{tag}-pipe", k1, lanes)

    # Alternate which side goes first, so drift on a shared machine does not favour one.
    pairs = [(raw_seq, store_seq), (raw_pipe, store_pipe)]
    for first, second in pairs:
        if index % 2:
            first, second = second, first  # noqa: PLW2901
        await first()
        await second()

    if breakdown:
        for name, msg_id, occ in (
            ("hdr.msgid", True, None),
            ("hdr.occ_literal", False, "literal"),
            ("hdr.occ_filter", False, "filter"),
            ("hdr.all", True, "filter"),
        ):
            subject = f"{raw}.{name.replace('.', '_')}.x"
            run.seq(name, await headers_sequential(js, subject, p1, msg_id=msg_id, occ=occ))
        run.values["hdr.pipe"] = await headers_pipelined(js, f"{raw}.hdr_pipe", p1, lanes)
        encode = CODEC.encode
        start = time.perf_counter_ns()
        for value in k1:
            encode(value)
        run.values["encode.us"] = (time.perf_counter_ns() - start) / 1000 / n

    # The k=10 aggregate is written through the store too, so its messages carry the same
    # headers; the raw k=10 payloads go in pipelined and untimed.
    run.seq("store.seq10", await store_sequential(store, f"{tag}-k10", k10))
    await raw_pipelined(js, f"{raw}.k10", p10, lanes)

    run.fold("store.fold1", await median_fold(3, lambda: store_fold(store, f"{tag}-seq", n)))
    run.fold("raw.fold1", await median_fold(3, lambda: raw_fold(js, f"{raw}.seq", n)))
    run.fold("store.fold10", await median_fold(3, lambda: store_fold(store, f"{tag}-k10", n)))
    run.fold("raw.fold10", await median_fold(3, lambda: raw_fold(js, f"{raw}.k10.*", n)))
    rows = [await store_rows(js, layout, f"{tag}-seq", n) for _ in range(3)]
    run.values["store.rows1"] = median_of(rows)
    if breakdown:
        # The raw reader over the store's own messages: what their stored headers cost.
        stored = layout.filter(f"{tag}-seq")
        run.fold("hdr.fold1", await median_fold(3, lambda: raw_fold(js, stored, n, layout.stream)))
    return run


# --- report ------------------------------------------------------------------------------------


def spread(runs: Sequence[Run], key: str) -> tuple[float, float, float]:
    xs = [r.values[key] for r in runs]
    return median_of(xs), min(xs), max(xs)


def fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def cell(runs: Sequence[Run], key: str) -> str:
    med, lo, hi = spread(runs, key)
    return f"{fmt(med)} [{fmt(lo)}-{fmt(hi)}]"


def ratio(runs: Sequence[Run], num: str, den: str) -> float:
    """Median over runs of the per-run ratio (both sides measured seconds apart)."""
    return median_of([r.values[num] / r.values[den] for r in runs])


def report(runs: Sequence[Run], n: int, lanes: int, sizes: tuple[int, int], sync: str) -> None:
    print(
        f"\n== medians of {len(runs)} runs [min-max], n={n}, lanes={lanes}, "
        f"payload k=1 {sizes[0]} B, k=10 {sizes[1]} B, sync_interval: {sync} =="
    )
    header = ("metric", "store", "raw nats-py", "store/raw", "target")
    rows: list[tuple[str, str, str, str, str]] = []

    def pair(label: str, store_key: str, raw_key: str, target: str = "") -> None:
        rows.append((
            label, cell(runs, store_key), cell(runs, raw_key),
            f"{ratio(runs, store_key, raw_key):.2f}", target,
        ))  # fmt: skip

    pair("seq append p50 (us)", "store.seq.p50", "raw.seq.p50", "<= 1.3")
    pair("seq append p99 (us)", "store.seq.p99", "raw.seq.p99")
    pair("seq append (msgs/s)", "store.seq.rate", "raw.seq.rate")
    pair(f"pipelined append, {lanes} in flight (msgs/s)", "store.pipe", "raw.pipe")
    pair("fold k=1 (msgs/s)", "store.fold1.msgs", "raw.fold1.msgs")
    pair("fold k=1 (events/s)", "store.fold1.events", "raw.fold1.events", ">= 100k")
    pair("fold k=10 (msgs/s)", "store.fold10.msgs", "raw.fold10.msgs")
    pair("fold k=10 (events/s)", "store.fold10.events", "raw.fold10.events", ">= 100k")
    rows.append(("disk fsync, 200 B write (p50 us)", cell(runs, "fsync.p50"), "", "", "context"))
    rows.append(("disk fsync, 200 B write (p99 us)", cell(runs, "fsync.p99"), "", "", "context"))
    rows.append(("seq append k=10 p50 (us)", cell(runs, "store.seq10.p50"), "", "", ""))
    rows.append(("seq append k=10 (msgs/s)", cell(runs, "store.seq10.rate"), "", "", ""))
    rows.append(("ordered_read k=1, no decode (msgs/s)", cell(runs, "store.rows1"), "", "", ""))
    if "hdr.all.p50" in runs[0].values:
        for key, label in (
            ("hdr.msgid", "raw + Nats-Msg-Id"),
            ("hdr.occ_literal", "raw + Expected-Last-Subject-Sequence"),
            ("hdr.occ_filter", "raw + Expected-Last-Subject-Sequence(-Subject filter)"),
            ("hdr.all", "raw + OCC filter + Msg-Id (the store's headers)"),
        ):
            rows.append((
                f"{label} p50 (us)", "", cell(runs, f"{key}.p50"),
                f"{ratio(runs, f'{key}.p50', 'raw.seq.p50'):.2f}", "vs raw",
            ))  # fmt: skip
        rows.append((
            f"raw + the store's headers, pipelined {lanes} (msgs/s)", "", cell(runs, "hdr.pipe"),
            f"{ratio(runs, 'hdr.pipe', 'raw.pipe'):.2f}", "vs raw",
        ))  # fmt: skip
        rows.append((
            "store pipelined / raw-with-the-store's-headers pipelined", "", "",
            f"{ratio(runs, 'store.pipe', 'hdr.pipe'):.2f}", "client cost",
        ))  # fmt: skip
        rows.append((
            "store p50 / raw-with-the-store's-headers p50", "", "",
            f"{ratio(runs, 'store.seq.p50', 'hdr.all.p50'):.2f}", "client cost",
        ))  # fmt: skip
        rows.append(("Codec.encode k=1 (us/call)", cell(runs, "encode.us"), "", "", ""))
        rows.append((
            "raw ordered consumer over the store's messages, k=1 (msgs/s)", "",
            cell(runs, "hdr.fold1.msgs"), f"{ratio(runs, 'hdr.fold1.msgs', 'raw.fold1.msgs'):.2f}",
            "vs raw",
        ))  # fmt: skip

    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(line)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    verdict_p50 = ratio(runs, "store.seq.p50", "raw.seq.p50")
    verdict_fold = min(
        spread(runs, "store.fold1.events")[0], spread(runs, "store.fold10.events")[0]
    )
    print(
        f"\nappend p50 ratio {verdict_p50:.2f} ({'ok' if verdict_p50 <= 1.3 else 'ABOVE'} "
        f"target 1.3); slowest store fold {verdict_fold:,.0f} events/s "
        f"({'ok' if verdict_fold >= 100_000 else 'BELOW'} target 100k)"
    )


def brief(run: Run) -> str:
    v = run.values
    return (
        f"append p50 {v['store.seq.p50']:.0f}us vs raw {v['raw.seq.p50']:.0f}us "
        f"({v['store.seq.p50'] / v['raw.seq.p50']:.2f}x), pipe {v['store.pipe']:,.0f} vs "
        f"{v['raw.pipe']:,.0f}/s, fold k=1 {v['store.fold1.events']:,.0f} ev/s, "
        f"k=10 {v['store.fold10.events']:,.0f} ev/s; fsync p50 {v['fsync.p50']:.0f}us "
        f"p99 {v['fsync.p99']:.0f}us"
    )


# --- main --------------------------------------------------------------------------------------


async def bench(  # noqa: PLR0917 - the parsed command line, passed through once
    url: str, runs: int, n: int, lanes: int, breakdown: bool, probe_dir: Path, sync: str
) -> None:
    nc = await open_connection(url, name="bench-store")
    try:
        js = nc.jetstream()
        await ensure_streams(js, Topology(space=SPACE, streams=(MOON,), buckets=()))
        await js.add_stream(
            api.StreamConfig(
                name=RAW_STREAM, subjects=[f"{RAW_ROOT}.>"], storage=api.StorageType.FILE,
                num_replicas=1, duplicate_window=DUPLICATE_WINDOW_S, allow_direct=True,
            )
        )  # fmt: skip
        store: JetStreamStore[Batch] = JetStreamStore(js, moon_layout(), CODEC)
        # Warm up both paths (connection buffers, server caches, code paths).
        warm = min(500, n)
        await store_sequential(store, "warmup", batches("w", warm, 1))
        await raw_sequential(
            js, f"{RAW_ROOT}.warmup", [CODEC.encode(b) for b in batches("w", warm, 1)]
        )
        results = []
        for index in range(1, runs + 1):
            started = time.perf_counter()
            result = await one_run(
                js, store, index=index, n=n, lanes=lanes, breakdown=breakdown, probe_dir=probe_dir
            )
            results.append(result)
            print(f"run {index}: {brief(result)} ({time.perf_counter() - started:.1f}s)")
        sizes = (
            len(CODEC.encode(batches("r1", 1, 1)[0])),
            len(CODEC.encode(batches("r1k", 1, 10)[0])),
        )
        report(results, n, lanes, sizes, sync)
    finally:
        await nc.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=5000, help="messages per mode and run")
    parser.add_argument("--lanes", type=int, default=100, help="aggregates in flight")
    parser.add_argument("--breakdown", action="store_true", help="also time each store header")
    parser.add_argument(
        "--sync-default",
        action="store_true",
        help="A/B only: the server's default sync_interval (2 min) instead of always, so "
        "pipelined numbers show client and server CPU rather than the disk's fsync",
    )
    args = parser.parse_args(argv)
    if args.n < args.lanes:
        parser.error("--n must be at least --lanes")
    args.n -= args.n % args.lanes  # every lane writes the same count
    sync = "default (2 min)" if args.sync_default else "always"
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        broker = EmbeddedBroker(data_dir=Path(tmp), sync_always=not args.sync_default).start()
        try:
            asyncio.run(
                bench(broker.url, args.runs, args.n, args.lanes, args.breakdown, Path(tmp), sync)
            )
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
