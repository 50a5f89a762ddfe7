"""Load MOON with signed dispatches from N concurrent clients, beside raw nats-py request/reply.

    python benchmarks/load.py [--seconds 60] [--clients 16] [--steps 1] [--runs 1] [--json]
    python benchmarks/load.py --compare-unsigned [--seconds 20] [--runs 3] ...

One embedded nats-server (sync_interval: always, as MOON runs it) in a temp dir, and every MOON
process a real child process whose memory is read from /proc: the engine with its gate
(`moon serve`), two executors (`moon worker -c work`, the echo handler) and an echo responder
for the baseline (`python benchmarks/load.py echo`). The processes live for the whole command,
so memory that grows with every workflow shows up as growth from start to end.

Each run:

* MOON: `--clients` asyncio tasks each loop for `--seconds`: seal a `moon.dispatch` of a
  `--steps` chain as the operator (envelope/local.py keys, the ones `moon serve` trusts),
  `Client.call` it to the gate, verify the signed answer. Every latency goes into a fixed-size
  log histogram (1 % buckets), so the bench's own memory does not grow with the count; errors
  (refusals by reason, timeouts, exceptions by type) are counted by kind.
* drain: wait (at most max(30 s, --seconds)) until every accepted workflow has completed, seen
  on the journal's `moon.wf.*.completed` subjects; end-to-end steps/s is completed steps over the
  time from the first dispatch to the last completion.
* raw: the same clients for the same time doing `nc.request` of a payload as large as a sealed
  dispatch to the echo responder process, the floor any request/reply service on this broker pays.

CPU: user+system time of every process from /proc, per accepted dispatch (MOON phase and its
drain) and per raw request, to show where a dispatch's time goes when the cores are shared.

Memory: VmRSS of every process (broker, engine, executors, echo, this bench) after a warm-up
(`--warmup` seconds of both loads, drained) and after the last run. The stated bound: a process
passes if its RSS grew by at most max(64 MiB, 50 % of its RSS at start); the broker also keeps
an index entry for every subject the journal and the buckets retain (each workflow leaves its
journal subjects and its index, outcome and claim keys: measured ~27 MiB for 70k subjects), so
it may grow by a further 8 KiB per workflow retained, data the streams' limits bound, not a
leak. Any process over the bound, any error, any accepted workflow not completed or any child
that died prints FAIL and exits 1. With --runs R > 1 the figures are medians over runs with
[min-max].

--compare-unsigned: what ed25519 costs. Two worlds side by side, each its own broker, engine and
executors, started through benchmarks/signing.py: in one the signatures are real, in the other
the benchmark stubs `Signer.sign` (64 zero bytes) and `VerifyKey.verify` (accepts) in the
children and, while it talks to that world, in itself; the product has no switch for this. The
same MOON load runs in each, alternating signed, unsigned, signed... for --runs (no raw load).
Per mode: dispatch p50/p99, dispatches/s, end-to-end steps/s, CPU ms per dispatch per process,
signs and verifies per dispatch and the ms inside them; the throughput ratio signed/unsigned
(median of the paired runs); pynacl's us per sign and verify; and how many signs and verifies one
3-step workflow costs in each process. Checked, else FAIL: every child's probe sign is real or
stubbed as its world says, a zero-signature dispatch is refused by the signed gate and taken by
the unsigned one, the journal carries only real signatures in one and only zero ones in the other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as `python benchmarks/load.py`, benchmarks/moon.py would shadow the `moon` package.
_HERE = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.modules.pop("moon", None)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))  # `benchmarks.load`, `benchmarks.signcost` by name

import nats.errors  # noqa: E402
from nats.aio.client import Client as Nats  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402

from envelope.client import Client  # noqa: E402
from envelope.local import local_trust  # noqa: E402
from moon.engine import ENGINE_CONSUMER  # noqa: E402
from streams.broker import EmbeddedBroker, credentials_env, open_connection  # noqa: E402
from streams.config import WORKFLOWS, Topology, ensure_streams  # noqa: E402
from streams.credentials import CREDS_ENV, NKEY_ENV, seed_file  # noqa: E402
from streams.logs import log_level  # noqa: E402
from streams.replies import Reason, Refusal  # noqa: E402
from streams.subjects import Space  # noqa: E402

ROOT = _HERE.parent
THIS_FILE = Path(__file__).resolve()
MIB = 1024 * 1024
BOUND_MIB, BOUND_SHARE = 64, 0.5
BROKER_KIB_PER_WORKFLOW = 8  # retained subjects' index in the server, see the docstring
ECHO_SUBJECT = "bench.load.echo"
SPACE = Space("load")
EXECUTORS = ("x1", "x2")


# --- latencies in bounded memory ----------------------------------------------------------------


class Histogram:
    """Counts in log buckets 1 % wide from 10 us to 100 s: the same few KiB whatever the count.
    A percentile is its bucket's upper edge, so it over-reports by at most 1 %."""

    LOW_US, GROWTH, TOP_US = 10.0, 1.01, 1e8

    def __init__(self) -> None:
        self.size = math.ceil(math.log(self.TOP_US / self.LOW_US, self.GROWTH)) + 1
        self.counts = [0] * self.size
        self.count = 0
        self.max_ms = 0.0

    def record(self, seconds: float) -> None:
        us = max(seconds * 1e6, self.LOW_US)
        self.counts[min(self.size - 1, int(math.log(us / self.LOW_US, self.GROWTH)))] += 1
        self.count += 1
        self.max_ms = max(self.max_ms, seconds * 1000)

    def percentile(self, p: float) -> float:
        """Milliseconds at or below which p % of the recorded latencies fall."""
        if not self.count:
            return math.nan
        rank = max(1, math.ceil(p / 100 * self.count))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(self.LOW_US * self.GROWTH ** (i + 1) / 1000, self.max_ms)
        return self.max_ms


@dataclass
class Load:
    """What one phase of N clients measured."""

    seconds: float = 0.0
    latencies: Histogram = field(default_factory=Histogram)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def per_s(self) -> float:
        return self.latencies.count / self.seconds if self.seconds else 0.0


async def clients(n: int, seconds: float, call: Callable[[int, int], Any]) -> Load:
    """n tasks, each calling `call(client, i)` back to back until the time is up. A call returns
    None when it succeeded, else the kind of error it met."""
    load = Load()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def one(j: int) -> None:
        i = 0
        while loop.time() < deadline:
            start = time.perf_counter()
            try:
                error = await call(j, i)
            except Exception as exc:  # an exception is a result to count, not a crash of the bench
                error = type(exc).__name__
            i += 1
            if error is None:
                load.latencies.record(time.perf_counter() - start)
            else:
                load.errors[error] += 1

    start = loop.time()
    await asyncio.gather(*(one(j) for j in range(n)))
    load.seconds = loop.time() - start
    return load


# --- processes and their memory ----------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process, from /proc/<pid>/stat; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, field_name: str) -> int | None:
    """VmRSS/VmHWM from /proc/<pid>/status in KiB; None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return None


MOON_MAIN = ["-c", "from moon.cli import main; main()"]
COUNTED_MAIN = ["-c", "from benchmarks.signing import child_main; child_main()"]


@dataclass
class World:
    tmp: Path
    broker: EmbeddedBroker
    # None: MOON's children as shipped; False/True: through benchmarks/signing.py, which counts
    # every sign and verify, and with True stubs the ed25519 out of them.
    unsigned: bool | None = None
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)  # the first problem lines of each child

    def moon(self, name: str, *args: str) -> None:
        if self.unsigned is None:
            self.spawn(name, [*MOON_MAIN, *args])
            return
        flags = ["--unsigned"] if self.unsigned else []
        self.spawn(name, [*COUNTED_MAIN, *flags, "--counts", str(self.tmp), "--name", name,
                          "--", *args])

    def pids(self) -> dict[str, int]:
        assert self.broker.process is not None
        return {"broker": self.broker.process.pid,
                **{name: p.pid for name, p in self.children.items()}, "bench": os.getpid()}

    def rss_mib(self) -> dict[str, float]:
        return {name: (status_kib(pid, "VmRSS") or 0) / 1024 for name, pid in self.pids().items()}

    def hwm_mib(self) -> dict[str, float]:
        return {name: (status_kib(pid, "VmHWM") or 0) / 1024 for name, pid in self.pids().items()}

    def cpu_s(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) or 0.0 for name, pid in self.pids().items()}

    def dead(self) -> list[str]:
        return [f"{name} (exit {p.returncode})" for name, p in self.children.items()
                if p.poll() is not None]

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def spawn(self, name: str, argv: list[str]) -> None:
        # The bench's namespace is not the one the broker's users are rendered for, and its
        # executors' keys live apart from the broker's config: the children connect as the
        # admin (as the tests' services do). Rights are not what this measures.
        creds = credentials_env(self.broker.url)
        admin = {NKEY_ENV: str(seed_file(Path(creds[CREDS_ENV]), "admin"))} if creds else {}
        env = dict(os.environ, NATS_URL=self.broker.url, MAESTRO_SPACE=SPACE.prefix,
                   MAESTRO_HOME=str(self.tmp), PYTHONPATH=str(ROOT), **creds, **admin)
        out = self.log(name).open("ab")
        self.children[name] = subprocess.Popen([sys.executable, *argv], env=env, stdout=out,
                                               stderr=out, cwd=ROOT)

    def stop(self) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.children.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_problems(self) -> dict[str, int]:
        """Warning-or-worse lines each child logged (structlog JSON lines, or tracebacks); the
        first few of each child are kept in `samples` to say what they were."""
        out: dict[str, int] = {}
        for name in self.children:
            count = 0
            with self.log(name).open("rb") as lines:
                for line in lines:
                    if log_level(line) in ("warning", "error") or line.startswith(b"Traceback"):
                        count += 1
                        if count <= 3:
                            self.samples.append(f"{name}: {line.decode(errors='replace')[:300]}")
            out[name] = count
        return out


@contextlib.contextmanager
def world(unsigned: bool | None = None) -> Iterator[World]:
    with tempfile.TemporaryDirectory(prefix="moon-load-") as tmp:
        broker = EmbeddedBroker(data_dir=Path(tmp) / "nats").start()
        w = World(Path(tmp), broker, unsigned)
        try:
            yield w
        finally:
            w.stop()
            broker.stop()


async def start_services(w: World, nc: Nats, *, echo: bool = True) -> None:
    """The engine, the executors and (for the raw load) the echo responder. The second executor
    starts once the first has created the pool's consumer: two workers creating it at once each
    send their own deliver subject, and the later one takes it over, leaving the other bound to
    an inbox nothing is delivered to (alive, idle for the whole run: seen in this bench)."""
    w.moon("engine", "serve")
    try:
        await bound(nc, [("MOON_CMD", ENGINE_CONSUMER)])
    except TimeoutError:
        print(w.log("engine").read_text()[-3000:], file=sys.stderr)
        raise
    # Workers provision their broker users at start, which reloads the server's config; an
    # engine starting during a reload met 503s (now waited out), so it starts first anyway.
    await bound(nc, [("MOON_CMD", ENGINE_CONSUMER)])
    for i, x in enumerate(EXECUTORS):
        w.moon(x, "worker", "--id", x, "-c", "work", "--capacity", "64")
        if i == 0:
            try:
                await bound(nc, [("WORK", "any-work")])
            except TimeoutError:
                print(w.log(x).read_text()[-3000:], file=sys.stderr)
                raise
    if echo:
        w.spawn("echo", [str(THIS_FILE), "echo"])


async def bound(nc: Nats, consumers: list[tuple[str, str]], timeout_s: float = 60) -> None:
    """Until every (stream, durable) consumer exists and has a subscriber."""
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = list(consumers)
    while pending:
        stream, durable = pending[0]
        with contextlib.suppress(Exception):  # not created yet
            info = await js.consumer_info(SPACE.stream(stream), SPACE.consumer(durable))
            # The engine's consumer is push (bound); executors pull (a fetch is waiting).
            if info.push_bound or (info.num_waiting or 0) > 0:
                pending.pop(0)
                continue
        if loop.time() > deadline:
            raise TimeoutError(f"{durable} never bound")
        await asyncio.sleep(0.1)


async def wait_ready(nc: Nats, client: Client, timeout_s: float = 60, *,
                     echo: bool = True) -> None:
    """The engine's and executors' consumers bound, the gate and the echo answering."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    await bound(nc, [("MOON_CMD", ENGINE_CONSUMER), ("WORK", "any-work"),
                     *(("WORK", f"exec-{x}") for x in EXECUTORS)], timeout_s)
    while True:
        answer = await client.call("moon.dispatch", body("ready", 1))
        if not (isinstance(answer, Refusal) and answer.reason is Reason.UNAVAILABLE):
            break
        if loop.time() > deadline:
            raise TimeoutError(f"the gate never answered: {answer.detail}")
        await asyncio.sleep(0.2)
    while echo:
        try:
            await nc.request(ECHO_SUBJECT, b"ping", timeout=1)
            return
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


# --- the two loads -------------------------------------------------------------------------------


def body(workflow_id: str, steps: int) -> dict[str, Any]:
    chain = [{"id": f"s{i}", "capability": "work", "needs": [f"s{i - 1}"] if i else []}
             for i in range(steps)]
    return {"workflow_id": workflow_id, "steps": chain}


class Completions:
    """Workflows of one run seen completing on the journal (core NATS sees JetStream subjects)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.ids: set[str] = set()
        self.last = 0.0
        self.missing: set[str] | None = None  # set once the load is over
        self.all_done = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        wf = SPACE.unprefix(msg.subject).split(".")[2]
        if wf.startswith(self.prefix):
            self.ids.add(wf)
            self.last = time.perf_counter()
            if self.missing is not None:
                self.missing.discard(wf)
                if not self.missing:
                    self.all_done.set()

    def expect(self, accepted: set[str]) -> None:
        """From now on, set `all_done` when every accepted workflow has completed."""
        self.missing = accepted - self.ids
        if not self.missing:
            self.all_done.set()


def error_kind(answer: object) -> str | None:
    if isinstance(answer, Refusal):
        if answer.reason is Reason.UNAVAILABLE and "Timeout" in answer.detail:
            return "timeout"
        return f"refused:{answer.reason.value}"
    return None


@dataclass
class MoonLoad:
    load: Load
    accepted: set[str]
    completed: int
    drain_s: float
    steps_per_s: float
    stragglers: dict[str, str]  # workflow id -> its index status, for a few not completed


async def moon_load(nc: Nats, client: Client, tag: str, *, seconds: float, n: int,
                    steps: int) -> MoonLoad:
    accepted: set[str] = set()
    done = Completions(f"{tag}-")
    sub = await nc.subscribe(SPACE.subject("moon.wf.*.completed"), cb=done.on_msg)

    async def dispatch(j: int, i: int) -> str | None:
        wf = f"{tag}-{j}-{i}"
        answer = await client.call("moon.dispatch", body(wf, steps))
        kind = error_kind(answer)
        if kind is None:
            accepted.add(wf)
        return kind

    start = time.perf_counter()
    load = await clients(n, seconds, dispatch)
    ended = time.perf_counter()
    done.expect(accepted)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.all_done.wait(), max(30.0, seconds))
    drain_s = time.perf_counter() - ended
    await sub.unsubscribe()
    completed = len(accepted & done.ids)
    elapsed = (done.last or time.perf_counter()) - start
    stragglers = await index_status(nc, sorted(accepted - done.ids)[:10])
    return MoonLoad(load, accepted, completed, drain_s, completed * steps / elapsed, stragglers)


async def index_status(nc: Nats, workflow_ids: list[str]) -> dict[str, str]:
    if not workflow_ids:
        return {}
    kv = await nc.jetstream().key_value(SPACE.bucket(WORKFLOWS.name))
    out = {}
    for wf in workflow_ids:
        try:
            entry = await kv.get(wf)
            out[wf] = json.loads(entry.value or b"{}").get("status", "?")
        except Exception as exc:  # no index entry: the dispatch never reached the index
            out[wf] = type(exc).__name__
    return out


async def raw_load(nc: Nats, seconds: float, n: int, payload: bytes) -> Load:
    async def request(_: int, __: int) -> str | None:
        try:
            await nc.request(ECHO_SUBJECT, payload, timeout=5)
        except nats.errors.TimeoutError:
            return "timeout"
        return None

    return await clients(n, seconds, request)


# --- the run ---------------------------------------------------------------------------------


def run_figures(moon: MoonLoad, raw: Load) -> dict[str, float]:
    m, r = moon.load.latencies, raw.latencies
    return {
        "dispatch_per_s": moon.load.per_s, "dispatch_p50_ms": m.percentile(50),
        "dispatch_p99_ms": m.percentile(99), "dispatch_p999_ms": m.percentile(99.9),
        "dispatch_max_ms": m.max_ms, "e2e_steps_per_s": moon.steps_per_s,
        "drain_s": moon.drain_s,
        "raw_per_s": raw.per_s, "raw_p50_ms": r.percentile(50), "raw_p99_ms": r.percentile(99),
        "raw_p999_ms": r.percentile(99.9), "raw_max_ms": r.max_ms,
    }


@dataclass
class Totals:
    dispatches: int = 0
    accepted: int = 0
    completed: int = 0
    raw_requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    raw_errors: Counter[str] = field(default_factory=Counter)
    stragglers: dict[str, str] = field(default_factory=dict)


async def bench(w: World, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    trust = local_trust(w.tmp)  # before the engine starts: it reads the same keys
    nc = await open_connection(w.broker.url, name="moon-load")
    try:
        await ensure_streams(nc.jetstream(), Topology(space=SPACE))
        await start_services(w, nc)
        client = Client(nc, trust.operator, trust.services, grant=(trust.operator_grant,),
                        space=SPACE, timeout_s=args.timeout)
        await wait_ready(nc, client)
        _, _, sealed = client.seal("moon.dispatch", body("L0-00-00000", args.steps))
        payload = b"x" * len(sealed)
        say(f"load: {args.clients} clients x {args.seconds:g} s x {args.runs} runs, "
            f"{args.steps}-step workflows, sealed dispatch {len(sealed)} B; "
            f"loadavg {loadavg()}")
        await moon_load(nc, client, "warm", seconds=args.warmup, n=args.clients, steps=args.steps)
        await raw_load(nc, args.warmup, args.clients, payload)
        start_rss = w.rss_mib()
        say("rss after warm-up (MiB): " + fmt_mem(start_rss))
        per_run: list[dict[str, float]] = []
        per_run_cpu: list[dict[str, dict[str, float]]] = []
        totals = Totals()
        for run in range(args.runs):
            cpu0 = w.cpu_s()
            moon = await moon_load(nc, client, f"L{run}", seconds=args.seconds, n=args.clients,
                                   steps=args.steps)
            after_moon, cpu1 = w.rss_mib(), w.cpu_s()
            raw = await raw_load(nc, args.seconds, args.clients, payload)
            cpu2 = w.cpu_s()
            per_run_cpu.append(cpu_per_call(cpu0, cpu1, cpu2, len(moon.accepted),
                                            raw.latencies.count))
            figures = run_figures(moon, raw)
            per_run.append(figures)
            totals.dispatches += moon.load.latencies.count + sum(moon.load.errors.values())
            totals.accepted += len(moon.accepted)
            totals.completed += moon.completed
            totals.raw_requests += raw.latencies.count
            totals.errors.update(moon.load.errors)
            totals.raw_errors.update(raw.errors)
            totals.stragglers.update(moon.stragglers)
            say(f"run {run + 1}/{args.runs}: " + ", ".join(f"{k}={v:.2f}" for k, v in
                                                           figures.items())
                + f", accepted={len(moon.accepted)}, completed={moon.completed}, "
                f"errors={dict(moon.load.errors)}, raw_errors={dict(raw.errors)}")
            say(f"  rss (MiB) after MOON: {fmt_mem(after_moon)}")
            say(f"  rss (MiB) after raw:  {fmt_mem(w.rss_mib())}; loadavg {loadavg()}")
            say("  cpu ms per dispatch: " + fmt_mem(per_run_cpu[-1]["moon_ms_per_dispatch"])
                + "; cpu us per raw request: " + fmt_mem(per_run_cpu[-1]["raw_us_per_request"]))
            del moon
        end_rss, hwm = w.rss_mib(), w.hwm_mib()
        dead = w.dead()
    finally:
        await nc.close()
    out = summary(args, per_run, totals, start_rss=start_rss, end_rss=end_rss, hwm=hwm,
                  dead=dead, w=w)
    out["cpu"] = {kind: {name: round(statistics.median(r[kind][name] for r in per_run_cpu), 3)
                         for name in per_run_cpu[0][kind]} for kind in per_run_cpu[0]}
    return out


def cpu_per_call(before: dict[str, float], between: dict[str, float], after: dict[str, float],
                 dispatches: int, requests: int) -> dict[str, dict[str, float]]:
    """CPU each process spent per accepted dispatch (MOON phase and its drain, in ms) and per
    raw request (in us): where the time of a dispatch goes on a machine whose cores are shared."""
    return {
        "moon_ms_per_dispatch": {k: (between[k] - before[k]) * 1e3 / max(1, dispatches)
                                 for k in before},
        "raw_us_per_request": {k: (after[k] - between[k]) * 1e6 / max(1, requests)
                               for k in before},
    }


def summary(args: argparse.Namespace, per_run: list[dict[str, float]], totals: Totals, *,
            start_rss: dict[str, float], end_rss: dict[str, float], hwm: dict[str, float],
            dead: list[str], w: World) -> dict[str, Any]:
    medians = {k: statistics.median(r[k] for r in per_run) for k in per_run[0]}
    ranges = {k: (min(r[k] for r in per_run), max(r[k] for r in per_run)) for k in per_run[0]}
    memory = {}
    for name, start in start_rss.items():
        end = end_rss.get(name, 0.0)
        bound = max(BOUND_MIB, BOUND_SHARE * start)
        if name == "broker":
            bound += BROKER_KIB_PER_WORKFLOW * totals.accepted / 1024
        memory[name] = {"start_mib": round(start, 1), "end_mib": round(end, 1),
                        "growth_mib": round(end - start, 1), "hwm_mib": round(hwm[name], 1),
                        "bound_mib": round(bound, 1), "ok": end - start <= bound,
                        "kib_per_workflow": round((end - start) * 1024 / max(1, totals.accepted),
                                                  2)}
    errors = sum(totals.errors.values()) + sum(totals.raw_errors.values())
    failures = [f"{name} grew {m['growth_mib']} MiB > {m['bound_mib']} MiB"
                for name, m in memory.items() if not m["ok"]]
    failures += [f"{n} errors: {dict(totals.errors + totals.raw_errors)}" for n in [errors] if n]
    if totals.completed < totals.accepted:
        failures.append(f"{totals.accepted - totals.completed} accepted workflows not completed "
                        f"(index says {totals.stragglers})")
    failures += [f"{name} died" for name in dead]
    return {
        "clients": args.clients, "seconds": args.seconds, "steps": args.steps, "runs": args.runs,
        "dispatches": totals.dispatches, "accepted": totals.accepted,
        "completed": totals.completed, "raw_requests": totals.raw_requests,
        "errors": errors, "error_kinds": dict(totals.errors),
        "raw_error_kinds": dict(totals.raw_errors),
        "median": {k: round(v, 3) for k, v in medians.items()},
        "range": {k: [round(a, 3), round(b, 3)] for k, (a, b) in ranges.items()},
        "ratios": {
            "throughput_moon_over_raw": medians["dispatch_per_s"] / medians["raw_per_s"],
            "p50_moon_over_raw": medians["dispatch_p50_ms"] / medians["raw_p50_ms"],
            "p99_moon_over_raw": medians["dispatch_p99_ms"] / medians["raw_p99_ms"],
        },
        "memory": memory,
        "memory_bound": f"growth <= max({BOUND_MIB} MiB, {BOUND_SHARE:.0%} of start RSS)"
                        f", broker + {BROKER_KIB_PER_WORKFLOW} KiB per retained workflow",
        "log_problems": w.log_problems(),
        "log_samples": w.samples,
        "dead": dead, "failures": failures, "pass": not failures,
    }


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt_mem(rss: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in rss.items())


def report(s: dict[str, Any], say: Callable[[str], None]) -> None:
    med, rng = s["median"], s["range"]
    rows = [
        ("MOON dispatch throughput (/s)", "dispatch_per_s"),
        ("  raw request/reply (/s)", "raw_per_s"),
        ("MOON dispatch p50 (ms)", "dispatch_p50_ms"), ("  raw p50 (ms)", "raw_p50_ms"),
        ("MOON dispatch p99 (ms)", "dispatch_p99_ms"), ("  raw p99 (ms)", "raw_p99_ms"),
        ("MOON dispatch p999 (ms)", "dispatch_p999_ms"), ("  raw p999 (ms)", "raw_p999_ms"),
        ("MOON dispatch max (ms)", "dispatch_max_ms"), ("  raw max (ms)", "raw_max_ms"),
        ("end-to-end steps/s", "e2e_steps_per_s"),
        ("drain after load (s)", "drain_s"),
    ]
    say(f"{'measure':34} {'median':>10}  [min-max]")
    for label, key in rows:
        lo, hi = rng[key]
        say(f"{label:34} {med[key]:10.2f}  [{lo:.2f}-{hi:.2f}]")
    r = s["ratios"]
    say("ratios (median MOON / median raw):")
    say(f"  throughput                     {r['throughput_moon_over_raw']:8.3f}")
    say(f"  p50                            {r['p50_moon_over_raw']:8.1f}x")
    say(f"  p99                            {r['p99_moon_over_raw']:8.1f}x")
    say(f"dispatches {s['dispatches']}, accepted {s['accepted']}, completed {s['completed']}, "
        f"raw requests {s['raw_requests']}, errors {s['errors']} {s['error_kinds']} "
        f"raw {s['raw_error_kinds']}")
    say(f"memory (MiB), bound: {s['memory_bound']}")
    say(f"  {'process':8} {'start':>8} {'end':>8} {'growth':>8} {'peak':>8} {'bound':>8}"
        f"  {'KiB/wf':>7}")
    for name, m in s["memory"].items():
        say(f"  {name:8} {m['start_mib']:8.1f} {m['end_mib']:8.1f} {m['growth_mib']:8.1f} "
            f"{m['hwm_mib']:8.1f} {m['bound_mib']:8.1f}  {m['kib_per_workflow']:7.2f}  "
            f"{'ok' if m['ok'] else 'OVER'}")
    say("cpu per call, median of runs: ms per MOON dispatch: "
        + fmt_mem(s["cpu"]["moon_ms_per_dispatch"]))
    say("                              us per raw request:   "
        + fmt_mem(s["cpu"]["raw_us_per_request"]))
    say(f"warning/error log lines per child: {s['log_problems']}")
    for line in s["log_samples"]:
        say(f"  {line}")
    say("PASS" if s["pass"] else "FAIL: " + "; ".join(s["failures"]))


# --- the echo responder (a child process) -------------------------------------------------------


async def echo() -> None:
    nc = await open_connection(os.environ["NATS_URL"], name="load-echo")

    async def answer(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(ECHO_SUBJECT, cb=answer)
    await nc.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await nc.close()


def main() -> int:
    if sys.argv[1:] == ["echo"]:
        asyncio.run(echo())
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="each load phase")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1, help="steps per dispatched workflow")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of each load first")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    parser.add_argument("--compare-unsigned", action="store_true",
                        help="the same load with and without ed25519 (stubbed by the bench in "
                             "its own children), alternating per run; no raw baseline")
    parser.add_argument("--json", action="store_true",
                        help="one JSON summary line on stdout (the report goes to stderr)")
    args = parser.parse_args()
    out = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    if args.compare_unsigned:
        from benchmarks import signcost  # noqa: PLC0415 - it imports this module

        with world(unsigned=False) as ws, world(unsigned=True) as wu:
            s = asyncio.run(signcost.compare(ws, wu, args, say))
        signcost.compare_report(s, say)
    else:
        with world() as w:
            s = asyncio.run(bench(w, args, say))
        report(s, say)
    if args.json:
        print(json.dumps(s), flush=True)
    return 0 if s["pass"] else 1


if __name__ == "__main__":
    # Run the module by its name, so benchmarks/signcost.py shares this copy of it.
    from benchmarks import load

    sys.exit(load.main())
