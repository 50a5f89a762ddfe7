"""Benchmark MOON on the embedded broker, next to raw nats-py figures from the same run.

    python benchmarks/moon.py [--runs 3] [--n 300] [--clients 32] [--dispatches 2000]
                              [--workflows 200] [--steps 5] [--recover 1000]

One embedded nats-server (sync_interval: always, as MOON runs it) in a temp dir; every run uses
a fresh namespace and measures:

* dispatch latency: sequential `Engine.submit(Dispatch)` (decide, journal, index, order) p50/p99
  vs raw request/reply to an echo responder and raw `js.publish`, p50/p99;
* dispatch throughput: `--clients` concurrent lanes of `Engine.submit` vs the same lanes of raw
  request/reply and raw `js.publish`;
* end-to-end steps/s: one engine process (`moon serve`) and one executor process (`moon worker`,
  the echo handler), `--workflows` chains of `--steps` steps dispatched as commands; timed from
  the first dispatch to the last WorkflowCompleted;
* cold recovery: `--recover` workflows dispatched with a step in flight, each step's completion
  waiting on MOON_CMD while no engine runs; a fresh engine (empty cache) is started and timed
  until every workflow has folded, decided and completed.

Targets: dispatch p50 <= 2 ms, p99 <= 10 ms, >= 4,218 dispatches/s, >= 2,000 steps/s.
Medians over runs are printed with min-max in brackets.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg

from streams.broker import EmbeddedBroker, credentials_env, open_connection
from streams.config import Topology, ensure_streams
from streams.credentials import CREDS_ENV, NKEY_ENV, seed_file
from streams.logs import configure_logging
from streams.moon_events import (
    Compensate,
    CompleteStep,
    Dispatch,
    RetryPolicy,
    StartStep,
    StepSpec,
)
from streams.subjects import Space

# Run as `python benchmarks/moon.py`, this file would shadow the `moon` package.
sys.modules.pop("moon", None)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.walls: the trust homes
from moon.clock import local_ms as now_ms  # noqa: E402
from moon.effects import Effects  # noqa: E402
from moon.engine import ENGINE_CONSUMER, Engine  # noqa: E402
from tests import walls as tw  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RAW_STREAM, RAW_SUBJECT = "BENCH_RAW", "bench.raw"
PAYLOAD = b"x" * 400  # about the size of an encoded one-step Dispatch


def steps(n: int) -> tuple[StepSpec, ...]:
    retry = RetryPolicy(maximum_attempts=3, initial_interval_ms=100)
    return tuple(
        StepSpec(id=f"s{i}", capability="work", needs=(f"s{i - 1}",) if i else (), retry=retry)
        for i in range(n)
    )


def dispatch(wf: str, n_steps: int = 1) -> Dispatch:
    return Dispatch(command_id=f"d-{wf}", workflow_id=wf, at_ms=now_ms(), steps=steps(n_steps))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def timed_sequential(call: Callable[[int], Awaitable[object]], n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        await call(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


async def lanes(call: Callable[[int], Awaitable[object]], clients: int, total: int) -> float:
    async def lane(j: int) -> None:
        for i in range(j, total, clients):
            await call(i)

    start = time.perf_counter()
    await asyncio.gather(*(lane(j) for j in range(clients)))
    return total / (time.perf_counter() - start)


class Completions:
    """Counts WorkflowCompleted decisions on the journal subjects (core NATS sees them too)."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = asyncio.Event()

    async def on_msg(self, _: Msg) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()


def child_env(url: str, space: Space) -> dict[str, str]:
    # Each run has a namespace of its own on one broker whose users are rendered for the default
    # one, so the children connect as its admin (as the tests' services do): rights are not
    # what this measures.
    creds = credentials_env(url)
    admin = {NKEY_ENV: str(seed_file(Path(creds[CREDS_ENV]), "admin"))} if creds else {}
    return dict(os.environ, NATS_URL=url, MAESTRO_SPACE=space.prefix, PYTHONPATH=str(ROOT),
                LOG_LEVEL="warning", MAESTRO_HOME=str(tw.home_for(space)), **creds, **admin)


def spawn(args: list[str], url: str, space: Space, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-c", "from moon.cli import main; main()", *args],
                            env=child_env(url, space), stdout=out, stderr=out, cwd=ROOT)


async def wait_bound(nc: Client, space: Space, stream: str, durable: str) -> None:
    js = nc.jetstream()
    for _ in range(300):
        try:
            info = await js.consumer_info(space.stream(stream), space.consumer(durable))
            if info.push_bound or (info.num_waiting or 0) > 0:  # push engine, pulling executors
                return
        except Exception:  # not created yet
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{durable} never bound")


async def bench_dispatch(nc: Client, run: int, args: argparse.Namespace,
                         r: dict[str, float]) -> None:
    js = nc.jetstream()
    space = Space(f"b{run}")
    await ensure_streams(js, Topology(space=space))
    raw_stream = f"{RAW_STREAM}_{run}"
    await js.add_stream(name=raw_stream, subjects=[f"{RAW_SUBJECT}.{run}"])
    raw_subject = f"{RAW_SUBJECT}.{run}"

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    responder = await nc.subscribe(f"bench.echo.{run}", cb=echo)

    async def raw_request(_: int) -> None:
        await nc.request(f"bench.echo.{run}", PAYLOAD, timeout=5)

    async def raw_publish(_: int) -> None:
        await js.publish(raw_subject, PAYLOAD)

    # --- dispatch latency and throughput (Engine.submit, no consumer loop needed) -----------
    engine = Engine(nc, walls=tw.walls_for(space), space=space,
                    registry=await tw.registry_for(js, space))

    async def submit(i: int, tag: str) -> None:
        await engine.submit(dispatch(f"{tag}{i}"), source=tw.operator(space))

    await timed_sequential(lambda i: submit(i, "warm"), 50)
    lat = await timed_sequential(lambda i: submit(i, "lat"), args.n)
    req = await timed_sequential(raw_request, args.n)
    pub = await timed_sequential(raw_publish, args.n)
    r["dispatch_p50_ms"], r["dispatch_p99_ms"] = pct(lat, 50), pct(lat, 99)
    r["request_p50_ms"], r["request_p99_ms"] = pct(req, 50), pct(req, 99)
    r["publish_p50_ms"], r["publish_p99_ms"] = pct(pub, 50), pct(pub, 99)
    r["dispatch_per_s"] = await lanes(lambda i: submit(i, "tp"), args.clients, args.dispatches)
    r["request_per_s"] = await lanes(raw_request, args.clients, args.dispatches)
    r["publish_per_s"] = await lanes(raw_publish, args.clients, args.dispatches)
    await responder.unsubscribe()


async def bench_e2e(nc: Client, url: str, run: int, args: argparse.Namespace, *, tmp: Path,
                    r: dict[str, float]) -> None:
    js = nc.jetstream()
    e2e = Space(f"e{run}")
    await ensure_streams(js, Topology(space=e2e))
    log = tmp / f"run{run}.log"
    # The engine first: a worker provisions its broker user at start, which reloads the config.
    procs = [spawn(["serve"], url, e2e, log)]
    try:
        await wait_bound(nc, e2e, "MOON_CMD", ENGINE_CONSUMER)
        procs.append(spawn(["worker", "--id", "x1", "-c", "work", "--capacity", "64"], url, e2e,
                           log))
        await wait_bound(nc, e2e, "WORK", "any-work")
        done = Completions()
        done.target = args.workflows
        sub = await nc.subscribe(e2e.subject("moon.wf.*.completed"), cb=done.on_msg)
        start = time.perf_counter()
        await asyncio.gather(*(tw.send_dispatch(nc, e2e, dispatch(f"e{i}", args.steps))
                               for i in range(args.workflows)))
        await asyncio.wait_for(done.done.wait(), 300)
        r["e2e_steps_per_s"] = args.workflows * args.steps / (time.perf_counter() - start)
        await sub.unsubscribe()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


async def bench_recovery(nc: Client, run: int, args: argparse.Namespace,
                         r: dict[str, float]) -> None:
    js = nc.jetstream()
    cold = Space(f"c{run}")
    await ensure_streams(js, Topology(space=cold))
    registry = await tw.registry_for(js, cold)
    first = Engine(nc, walls=tw.walls_for(cold), registry=registry, space=cold)
    x1 = await tw.as_executor(js, cold, "x1", ["work"])

    async def ran(i: int) -> None:
        """A workflow whose step ran: compensating it undoes what is done, without waiting on a
        step in flight (which compensation lets settle first, by its timeout)."""
        wf = f"c{i}"
        await first.submit(dispatch(wf), source=tw.operator(cold))
        await first.submit(StartStep(command_id=f"start-{wf}", workflow_id=wf, at_ms=now_ms(),
                                     step="s0", attempt=1, executor="x1"), source=x1)
        await first.submit(CompleteStep(command_id=f"done-{wf}", workflow_id=wf, at_ms=now_ms(),
                                        step="s0", attempt=1, result=b"ok"), source=x1)

    await lanes(ran, 16, args.recover)
    # A backlog the engine finds when it starts: MAESTRO-signed compensations on MOON_CMD
    # (executors' reports wait at the executor, retried, when no engine answers).
    sender = Effects(js, cold, tw.trust_for(cold).maestro)
    await asyncio.gather(*(sender.send_command(Compensate(
        command_id=f"undo/c{i}", workflow_id=f"c{i}", at_ms=now_ms(), reason="bench"))
        for i in range(args.recover)))
    done = Completions()
    done.target = args.recover
    sub = await nc.subscribe(cold.subject("moon.wf.*.compensated"), cb=done.on_msg)
    # Empty cache: every workflow is folded from the journal.
    fresh = Engine(nc, walls=tw.walls_for(cold), registry=registry, space=cold)
    ready = asyncio.Event()
    start = time.perf_counter()
    task = asyncio.ensure_future(fresh.run(ready=ready))
    try:
        await asyncio.wait_for(done.done.wait(), 120)
    except TimeoutError:
        print(f"recovery stalled at {done.count}/{done.target}: {fresh.stats}", file=sys.stderr)
        raise
    r["recovery_s"] = time.perf_counter() - start
    r["recovery_per_s"] = args.recover / r["recovery_s"]
    fresh.stop()
    await asyncio.wait_for(task, 30)
    await sub.unsubscribe()
    # raw: publishing as many messages (the floor a recovery pays: one append per workflow)
    await js.add_stream(name=f"{RAW_STREAM}_r{run}", subjects=[f"bench.recover.{run}"])

    async def raw_publish(_: int) -> None:
        await js.publish(f"bench.recover.{run}", PAYLOAD)

    start = time.perf_counter()
    await lanes(raw_publish, 16, args.recover)
    r["raw_publish_recover_s"] = time.perf_counter() - start


async def one_run(nc: Client, url: str, run: int, args: argparse.Namespace,
                  tmp: Path) -> dict[str, float]:
    r: dict[str, float] = {}
    await bench_dispatch(nc, run, args, r)
    await bench_e2e(nc, url, run, args, tmp=tmp, r=r)
    await bench_recovery(nc, run, args, r)
    return r


def fmt(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:10.2f}  [{min(values):.2f}-{max(values):.2f}]"


def report(results: dict[str, list[float]]) -> None:
    def m(key: str) -> float:
        return statistics.median(results[key])

    rows = [
        ("dispatch latency p50 (ms)", "dispatch_p50_ms", "target <= 2"),
        ("  raw request/reply p50 (ms)", "request_p50_ms", ""),
        ("  raw js.publish p50 (ms)", "publish_p50_ms", ""),
        ("dispatch latency p99 (ms)", "dispatch_p99_ms", "target <= 10"),
        ("  raw request/reply p99 (ms)", "request_p99_ms", ""),
        ("  raw js.publish p99 (ms)", "publish_p99_ms", ""),
        ("dispatch throughput (/s)", "dispatch_per_s", "target >= 4218"),
        ("  raw request/reply (/s)", "request_per_s", ""),
        ("  raw js.publish (/s)", "publish_per_s", ""),
        ("end-to-end steps/s", "e2e_steps_per_s", "target >= 2000"),
        ("cold recovery (s)", "recovery_s", ""),
        ("  workflows recovered/s", "recovery_per_s", ""),
        ("  raw js.publish of as many (s)", "raw_publish_recover_s", ""),
    ]
    print(f"{'measure':34} {'median':>10}  [min-max]     note")
    for label, key, note in rows:
        print(f"{label:34} {fmt(results[key])}  {note}")
    print("ratios (median MOON / median raw):")
    print(f"  dispatch p50 / request p50      {m('dispatch_p50_ms') / m('request_p50_ms'):6.1f}x")
    print(f"  dispatch p50 / publish p50      {m('dispatch_p50_ms') / m('publish_p50_ms'):6.1f}x")
    print(f"  dispatch p99 / publish p99      {m('dispatch_p99_ms') / m('publish_p99_ms'):6.1f}x")
    print(f"  dispatch/s / request/s          {m('dispatch_per_s') / m('request_per_s'):6.2f}")
    print(f"  dispatch/s / publish/s          {m('dispatch_per_s') / m('publish_per_s'):6.2f}")
    print(f"  e2e steps/s / publish/s         {m('e2e_steps_per_s') / m('publish_per_s'):6.2f}")
    print(f"  recovery / raw publish          "
          f"{m('recovery_s') / m('raw_publish_recover_s'):6.1f}x")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=300, help="sequential dispatches for latency")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--dispatches", type=int, default=2000)
    parser.add_argument("--workflows", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--recover", type=int, default=1000)
    args = parser.parse_args()
    configure_logging(logging.WARNING)  # the engine in this process says a line per step
    results: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="moon-bench-") as tmp:
        broker = EmbeddedBroker(data_dir=Path(tmp) / "nats").start()
        try:
            nc = await open_connection(broker.url, name="moon-bench")
            try:
                for run in range(args.runs):
                    one = await one_run(nc, broker.url, run, args, Path(tmp))
                    for key, value in one.items():
                        results[key].append(value)
                    print(f"run {run + 1}/{args.runs}: " + ", ".join(
                        f"{k}={v:.2f}" for k, v in one.items()), flush=True)
            finally:
                await nc.close()
        finally:
            broker.stop()
    report(results)


if __name__ == "__main__":
    asyncio.run(main())
