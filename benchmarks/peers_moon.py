"""MOON under the peers workload (../shared/bench/peers: W1, W2, W3), as a user runs the stack.

    .venv/bin/python benchmarks/peers_moon.py [--engines 1] [--workers 2] [--no-eager] [--no-sync]
        [--variants] [--cluster] [--check]
    PEERS_MOON_CMD=".venv/bin/python benchmarks/peers_moon.py" PEERS_CWD=$PWD \
        python3 ../shared/bench/peers/run_all.py --only moon --reps 1

The workloads, as the shared harness defines them (sizes from the same PEERS_* variables):
  W1  PEERS_N1 (2,000) sequential starts of a 1-step workflow, each waiting only for durable
      acceptance: the gate's signed answer, given once the engine journaled the Dispatch;
  W2  PEERS_N2 (500) sequential 3-step chains, start to result;
  W3  PEERS_W3_CLIENTS (16) clients looping start-and-wait on 3-step chains for
      PEERS_W3_SECONDS (30); PEERS_WARMUP (50) sequential runs first, not timed.

What runs, each a process of its own, stopped by PID at the end, in a temp data dir that is the
stack's MAESTRO_HOME (as after `maestro up`: keys, role seeds, broker store):
  * nats-server, started as the embedded broker (streams/broker.py: authentication on, one user
    per role, `sync_interval: always`, so every acknowledged write is fsync'd), plus an HTTP
    monitor on loopback for /varz message counts;
  * `--engines` x `moon serve` (engine + MOON gate, as the engine's broker user). Two engines
    share one MOON_CMD durable, one report queue group and one gate queue group: scale-out;
  * `--workers` x `moon worker -c work --capacity 64` (the built-in echo handler), each
    registering its key and provisioning its own broker user on start, as on a user's machine.
  With `--cluster`, three nodes instead of the one broker (streams/cluster.py, R3 streams): the
  client on node 0, each engine and worker on the next node in turn; no /varz counts.
The client is this process: `envelope.client.Client` sealing `moon.dispatch` as the data dir's
operator, on the operator's broker user, request/reply through the gate, answers verified. The
result of a workflow is its `moon.wf.<id>.completed` journal message, seen on one core-NATS
subscription (an admin connection: the bench's instrument, as the shared harness's was), whose
engine signature is verified before the last step's result is read from it.

Prints the one JSON line the runner reads (system, version, durability, w1, w2, w3, CPU ms per
workflow and process for each phase, W2's fsync'd JetStream writes per workflow by stream, API
calls and broker messages per workflow). Percentiles and CPU shares are defined as in the
harness's common.py (nearest rank; CPU from /proc; `_other_procs_cores` is the rest of the
machine), written here so this file needs nothing outside the project.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata as md
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as `python benchmarks/peers_moon.py`: benchmarks/moon.py would shadow the `moon` package.
_HERE = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.modules.pop("moon", None)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import msgspec  # noqa: E402
from nats.aio.client import Client as Nats  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402

from envelope.client import Client  # noqa: E402
from envelope.local import LocalTrust, local_trust  # noqa: E402
from moon import replay  # noqa: E402
from moon.clock import local_ms  # noqa: E402
from moon.engine import ENGINE_CONSUMER, Engine  # noqa: E402
from moon.index import WorkflowSummary  # noqa: E402
from moon.journal import SignedDecisions  # noqa: E402
from moon.local import local_registry, local_walls  # noqa: E402
from streams.broker import (  # noqa: E402
    EmbeddedBroker,
    find_server_binary,
    free_port,
    open_connection,
)
from streams.cluster import SYNC_INTERVAL as CLUSTER_SYNC  # noqa: E402
from streams.cluster import EmbeddedCluster  # noqa: E402
from streams.config import WORKFLOWS, Topology, ensure_streams  # noqa: E402
from streams.credentials import seed_file  # noqa: E402
from streams.jetstream_store import last_sequence, ordered_read  # noqa: E402
from streams.logs import configure_logging, log_level  # noqa: E402
from streams.loop import run as run_loop  # noqa: E402
from streams.moon_events import (  # noqa: E402
    Decision,
    Dispatch,
    StepCompleted,
    StepScheduled,
    StepSpec,
    StepStarted,
)
from streams.replies import Reason, Refusal  # noqa: E402
from streams.subjects import Space  # noqa: E402

ROOT = _HERE.parent
SPACE = Space()  # the stack's own namespace, as `maestro up` runs it
MOON_MAIN = ["-c", "from moon.cli import main; main()"]


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


N1 = _env_int("PEERS_N1", 2000)
N2 = _env_int("PEERS_N2", 500)
W3_CLIENTS = _env_int("PEERS_W3_CLIENTS", 16)
W3_SECONDS = float(os.environ.get("PEERS_W3_SECONDS", "30"))
UNSERVED = "v-unserved-"  # --variants: starts no worker takes (cancelled after)
WARMUP = _env_int("PEERS_WARMUP", 50)
CALL_TIMEOUT_S = 30.0  # a start or a wait longer than this is an error
DRAIN_TIMEOUT_S = 120.0  # after W1, wait at most this long for its workflows to finish


# --- measures, defined as the harness defines them ------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (the harness's rank rule, so figures compare)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def lat_summary(ms: list[float]) -> dict[str, float]:
    nan = float("nan")
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 3), "p99_ms": round(pct(ms, 99), 3),
            "max_ms": round(max(ms), 3) if ms else nan,
            "mean_ms": round(sum(ms) / len(ms), 3) if ms else nan}


_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads) from /proc; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TCK


def machine_busy_s() -> float:
    """CPU seconds the whole machine was busy (user, nice, system, irq, softirq, steal)."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / _TCK


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    snap = {name: cpu_seconds(pid) for name, pid in pids.items()}
    snap["_machine"], snap["_wall"] = machine_busy_s(), time.monotonic()
    return snap


def cpu_ms_per(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """CPU ms per workflow of each of our processes and their total; for the phase, the cores
    our processes kept busy (`_ours_cores`) and those the rest of the machine did
    (`_other_procs_cores`: the runner sets a run aside as disturbed above 0.5)."""
    names = [n for n in before if not n.startswith("_")]
    out = {n: round((after[n] - before[n]) * 1000 / max(1, count), 3) for n in names}
    out["total"] = round(sum(out[n] for n in names), 3)
    wall = max(1e-9, after["_wall"] - before["_wall"])
    ours = sum(after[n] - before[n] for n in names)
    out["_ours_cores"] = round(ours / wall, 2)
    out["_other_procs_cores"] = round(max(0.0, after["_machine"] - before["_machine"] - ours)
                                      / wall, 2)
    return out


def proc_io(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return {}
    return {k.strip(): int(v) for k, _, v in (line.partition(":") for line in text.splitlines())}


def io_per(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]],
           count: int) -> dict[str, dict[str, float]]:
    """Per workflow and process: write syscalls and KiB handed to storage."""
    out = {}
    for name, b in before.items():
        a = after.get(name, {})
        if b and a:
            out[name] = {"syscw": round((a["syscw"] - b["syscw"]) / max(1, count), 2),
                         "write_kib": round((a["write_bytes"] - b["write_bytes"]) / 1024
                                            / max(1, count), 2)}
    return out


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    """The one JSON line on stdout; also written to PEERS_OUT when the runner sets it."""
    line = json.dumps(result)
    print(line, flush=True)
    if out := os.environ.get("PEERS_OUT"):
        Path(out).write_text(line + "\n")


# --- the stack -------------------------------------------------------------------------------


class MonitoredBroker(EmbeddedBroker):
    """The embedded broker's own config, plus an HTTP monitor on loopback for /varz."""

    monitor_port: int = 0

    def config_text(self) -> str:
        return super().config_text() + f"http: 127.0.0.1:{self.monitor_port}\n"


def varz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


@dataclass
class Servers:
    """Where the stack's services connect: the home's embedded broker (`urls` empty: each
    service finds it through MAESTRO_HOME), or a 3-node cluster, each service on a node of
    its own (`urls`: the NATS_URL per service) with the seeds in `creds`."""

    pids: dict[str, int]
    client_urls: list[str]
    monitor_port: int | None = None
    urls: dict[str, str] = field(default_factory=dict)
    creds: Path | None = None
    stop: Callable[[], None] = lambda: None
    provision: Callable[[str, list[str]], object] | None = None
    replicas: int = 1
    lane_urls: list[str] = field(default_factory=list)  # W3's clients, one per node


def embedded_servers(home: Path, args: argparse.Namespace) -> Servers:
    broker = MonitoredBroker(data_dir=home, space=SPACE, sync_always=not args.no_sync)
    broker.monitor_port = free_port()
    broker.start()
    assert broker.process is not None
    return Servers(pids={"nats-server": broker.process.pid}, client_urls=[broker.url],
                   monitor_port=broker.monitor_port, stop=broker.stop)


def cluster_servers(home: Path, args: argparse.Namespace) -> Servers:
    """Three nodes (streams/cluster.py: R3 streams, authenticated routes); the services on
    nodes 1, 2, 0, ... in turn (engines first), W1 and W2's client on node 0 and W3's lanes on
    every node in turn."""
    cluster = EmbeddedCluster(home, space=SPACE).start()
    pids = {}
    for i, node in enumerate(cluster.nodes):
        assert node.process is not None
        pids[f"nats-server{i}"] = node.process.pid
    names = ([f"engine{i + 1}" for i in range(args.engines)] if args.engines > 1 else ["engine"])
    names += [f"worker{i + 1}" for i in range(args.workers)]
    urls = {name: cluster.urls[(i + 1) % cluster.size] for i, name in enumerate(names)}
    return Servers(pids=pids, client_urls=[cluster.urls[0]], urls=urls, creds=cluster.creds,
                   stop=cluster.stop, provision=cluster.provision_executor, replicas=3,
                   lane_urls=cluster.urls)


@dataclass
class Stack:
    home: Path
    servers: Servers
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self, name: str) -> dict[str, str]:
        """A user's shell after `maestro up`: MAESTRO_HOME names the stack, nothing else; each
        service finds the broker (nats.url) and its role's seed there. On the cluster, the
        service's node in NATS_URL and the cluster's seeds in MAESTRO_CREDS."""
        drop = {"NATS_URL", "MAESTRO_CREDS", "NATS_NKEY", "MAESTRO_SPACE"}
        env = {**{k: v for k, v in os.environ.items() if k not in drop},
               "MAESTRO_HOME": str(self.home), "PYTHONPATH": str(ROOT)}
        if name in self.servers.urls:
            env["NATS_URL"] = self.servers.urls[name]
        if self.servers.creds is not None:
            env["MAESTRO_CREDS"] = str(self.servers.creds)
        return env

    def spawn(self, name: str, *args: str) -> None:
        log = (self.home / f"{name}.log").open("ab")
        # --debug: a service that dies says where in its log (it changes nothing else)
        self.children[name] = subprocess.Popen([sys.executable, *MOON_MAIN, *args, "--debug"],
                                               env=self.env(name), stdout=log, stderr=log,
                                               cwd=self.home)

    def logged(self, name: str, event: bytes) -> bool:
        return event in (self.home / f"{name}.log").read_bytes()

    def pids(self) -> dict[str, int]:
        return {**self.servers.pids, **{n: p.pid for n, p in self.children.items()},
                "bench-client": os.getpid()}

    def dead(self) -> list[str]:
        return [f"{n} exit {p.returncode}" for n, p in self.children.items()
                if p.poll() is not None]

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
        return self._count_lines(lambda line: log_level(line) == "error"
                                 or line.startswith(b"Traceback"))

    def log_warnings(self) -> dict[str, int]:
        """Warning lines per process (a command retried after a failure says `command_failed`
        at error level; a refused report, a late claim, a lost report at warning)."""
        return self._count_lines(lambda line: log_level(line) == "warning")

    def _count_lines(self, counts: Callable[[bytes], bool]) -> dict[str, int]:
        out = {}
        for name in self.children:
            with (self.home / f"{name}.log").open("rb") as lines:
                out[name] = sum(1 for line in lines if counts(line))
        return out


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 60) -> None:
    """Poll `check` (a process's readiness, seen from outside it) until true or time is up."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s:g} s")
        await asyncio.sleep(0.05)


async def start_services(stack: Stack, admin: Nats, args: argparse.Namespace) -> list[str]:
    """The engines (at once, each ready before any worker starts), then the workers one at a
    time. A worker provisions its broker user by rewriting the server's auth file and reloading
    it: two doing so at once could drop each other, and a reload while `moon serve` checks its
    buckets made that check fail (a 503 read as "bucket missing": see the report)."""
    js = admin.jetstream()
    engines = ["engine"] if args.engines == 1 else [f"engine{i + 1}"
                                                    for i in range(args.engines)]
    for name in engines:
        stack.spawn(name, "serve")
    for name in engines:  # logged after its gate serves and its consumers are bound

        async def ready(name: str = name) -> bool:
            return stack.logged(name, b'"engine_ready"')

        await until(name, ready)
    for i in range(args.workers):
        executor = f"x{i + 1}"
        if stack.servers.provision is not None:  # a cluster: its user on every node first
            stack.servers.provision(executor, ["work"])
        stack.spawn(f"worker{i + 1}", "worker", "--id", executor, "-c", "work",
                    "--capacity", "64", *(() if args.eager else ("--no-eager",)))

        async def pulling(durable: str = f"exec-{executor}") -> bool:
            with contextlib.suppress(Exception):  # not created yet
                info = await js.consumer_info(SPACE.stream("WORK"), SPACE.consumer(durable))
                return (info.num_waiting or 0) > 0
            return False

        await until(f"worker {executor}", pulling)
    info = await js.consumer_info(SPACE.stream("MOON_CMD"), SPACE.consumer(ENGINE_CONSUMER))
    assert info.push_bound, "no engine bound to MOON_CMD"
    return engines


# --- the client --------------------------------------------------------------------------------


def body(wf: str, steps: int) -> dict[str, Any]:
    chain = [{"id": f"s{i}", "capability": "work", "needs": [f"s{i - 1}"] if i else []}
             for i in range(steps)]
    return {"workflow_id": wf, "steps": chain}


def error_kind(answer: object) -> str | None:
    if isinstance(answer, Refusal):
        if answer.reason is Reason.UNAVAILABLE and "Timeout" in answer.detail:
            return "timeout"
        return f"refused:{answer.reason.value}"
    return None


class Completions:
    """Futures per workflow id, resolved by its `moon.wf.<id>.completed` journal message."""

    def __init__(self, decisions: SignedDecisions) -> None:
        self.decisions = decisions
        self.futures: dict[str, asyncio.Future[bytes]] = {}
        self.seen: set[str] = set()
        self.changed = asyncio.Event()

    def expect(self, wf: str) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.futures[wf] = fut
        return fut

    async def on_msg(self, msg: Msg) -> None:
        wf = SPACE.unprefix(msg.subject).split(".")[2]
        self.seen.add(wf)
        self.changed.set()
        fut = self.futures.pop(wf, None)
        if fut is not None and not fut.done():
            fut.set_result(msg.data)

    def last_result(self, data: bytes) -> bytes:
        """The last step's result, from the decision once its engine signature verifies."""
        decision = self.decisions.open(data)
        if isinstance(decision, Refusal):
            return b""
        done = [e for e in decision.events if isinstance(e, StepCompleted)]
        return done[-1].result if done else b""

    async def drain(self, ids: list[str], timeout_s: float = DRAIN_TIMEOUT_S) -> tuple[float, int]:
        """Until every one of `ids` completed (or the time is up): (seconds, how many not)."""
        t0 = time.monotonic()
        wanted = set(ids)
        while not wanted <= self.seen and time.monotonic() - t0 < timeout_s:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1.0)
        return round(time.monotonic() - t0, 2), len(wanted - self.seen)


@dataclass
class Bench:
    client: Client
    admin: Nats
    done: Completions
    # W3's lanes take turns (on a cluster, a client per node: a request goes to an engine on
    # the node it is sent to when there is one, as NATS prefers a queue group's local members)
    lanes: list[Client] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    # each start's time to its signed answer (ms): under W3 this is the card's dispatch SLA
    starts_ms: list[float] = field(default_factory=list)

    async def e2e(self, wf: str, lane: int = 0) -> str | None:
        """Dispatch a 3-step chain and wait for its result: None, or the kind of error."""
        fut = self.done.expect(wf)
        client = self.lanes[lane % len(self.lanes)] if self.lanes else self.client
        t = time.perf_counter()
        kind = error_kind(await client.call("moon.dispatch", body(wf, 3)))
        self.starts_ms.append((time.perf_counter() - t) * 1000)
        if kind is not None:
            self.done.futures.pop(wf, None)
            return kind
        try:
            data = await asyncio.wait_for(fut, CALL_TIMEOUT_S)
        except TimeoutError:
            self.done.futures.pop(wf, None)
            return "result-timeout"
        return None if self.done.last_result(data).startswith(b"s2(") else "bad-result"


async def stream_seqs(js: Any) -> dict[str, int]:
    return {info.config.name: info.state.last_seq for info in await js.streams_info()}


async def api_total(js: Any) -> int:
    return int((await js.account_info()).api.total)


async def w1(b: Bench, pids: dict[str, int], result: dict[str, Any]) -> None:
    lat: list[float] = []
    ids: list[str] = []
    cpu0 = cpu_snapshot(pids)
    for i in range(N1):
        wf = f"w1-{i}"
        t = time.perf_counter()
        answer = await b.client.call("moon.dispatch", body(wf, 1))
        dt = (time.perf_counter() - t) * 1000
        if kind := error_kind(answer):
            b.errors[f"w1:{kind}"] += 1
        else:
            lat.append(dt)
            ids.append(wf)
    drain_s, missing = await b.done.drain(ids)
    cpu1 = cpu_snapshot(pids)
    result["w1"] = lat_summary(lat)
    result["w1_drain_s"], result["w1_not_completed"] = drain_s, missing
    result["w1_cpu_ms_per_wf"] = cpu_ms_per(cpu0, cpu1, len(ids))
    say("W1", result["w1"], "drain", drain_s, "not completed", missing)


async def w2(b: Bench, pids: dict[str, int], result: dict[str, Any],
             monitor: int | None) -> None:
    """W2, with fsync'd writes, API calls and (on one broker) broker messages per workflow."""
    js = b.admin.jetstream()
    seq0, api0 = await stream_seqs(js), await api_total(js)
    varz0 = varz(monitor) if monitor else {}
    io0 = {n: proc_io(p) for n, p in pids.items()}
    cpu0 = cpu_snapshot(pids)
    lat: list[float] = []
    for i in range(N2):
        t = time.perf_counter()
        err = await b.e2e(f"w2-{i}")
        dt = (time.perf_counter() - t) * 1000
        if err:
            b.errors[f"w2:{err}"] += 1
        else:
            lat.append(dt)
    cpu1 = cpu_snapshot(pids)
    await asyncio.sleep(0.5)  # as the harness: the last decision's index put and acks land
    seq1, api1 = await stream_seqs(js), await api_total(js)
    varz1 = varz(monitor) if monitor else {}
    io1 = {n: proc_io(p) for n, p in pids.items()}
    n = max(1, len(lat))
    per_stream = {k: round((v - seq0.get(k, 0)) / n, 2) for k, v in seq1.items()
                  if v != seq0.get(k, 0)}
    result["w2"] = lat_summary(lat)
    result["w2_cpu_ms_per_wf"] = cpu_ms_per(cpu0, cpu1, len(lat))
    result["w2_js_writes_per_wf"] = {"total": round(sum(per_stream.values()), 2),
                                     "by_stream": per_stream}
    result["w2_js_api_calls_per_wf"] = round((api1 - api0) / n, 2)
    if varz0:  # a cluster's nodes also count what crosses their routes: one broker only
        result["w2_broker_msgs_per_wf"] = {
            "in": round((varz1["in_msgs"] - varz0["in_msgs"]) / n, 2),
            "out": round((varz1["out_msgs"] - varz0["out_msgs"]) / n, 2)}
    result["w2_io_per_wf"] = io_per(io0, io1, n)
    say("W2", result["w2"], "js writes/wf", result["w2_js_writes_per_wf"])


async def w3(b: Bench, pids: dict[str, int], result: dict[str, Any]) -> None:
    done = 0
    errors: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + W3_SECONDS

    async def lane(j: int) -> None:
        nonlocal done
        i = 0
        while loop.time() < deadline:
            try:
                err = await b.e2e(f"w3-{j}-{i}", j)
            except Exception as exc:  # counted, not fatal
                err = type(exc).__name__
            i += 1
            if err:
                errors[err] += 1
            else:
                done += 1

    cpu0 = cpu_snapshot(pids)
    b.starts_ms.clear()
    t0 = time.perf_counter()
    await asyncio.gather(*(lane(j) for j in range(W3_CLIENTS)))
    elapsed = time.perf_counter() - t0
    cpu1 = cpu_snapshot(pids)
    result["w3"] = {"clients": W3_CLIENTS, "seconds": round(elapsed, 2), "completed": done,
                    "wf_per_s": round(done / elapsed, 2),
                    "steps_per_s": round(3 * done / elapsed, 2),
                    "errors": sum(errors.values()), "error_kinds": dict(errors),
                    # the card's dispatch SLA (p50 <= 8 ms, p99 <= 60 ms) under this load
                    "dispatch_ms": lat_summary(b.starts_ms)}
    result["w3_cpu_ms_per_wf"] = cpu_ms_per(cpu0, cpu1, done)
    say("W3", result["w3"], result["w3_cpu_ms_per_wf"])


async def variants(b: Bench, trust: LocalTrust, result: dict[str, Any]) -> None:
    """Labelled W1 alternatives after the main workload: a durable intent (acknowledged once
    the sealed request is in INTENTS; decided later), `Engine.submit` in this process, what
    `moon dispatch FILE` does (no gate, no envelope), and starts whose step no worker serves.
    Each phase drains before the next."""
    await unserved(b, result)
    lat: list[float] = []
    ids = [f"v-intent-{i}" for i in range(N1)]
    t_start = time.monotonic()
    for wf in ids:
        t = time.perf_counter()
        await b.client.publish_intent("moon.dispatch", body(wf, 1))
        lat.append((time.perf_counter() - t) * 1000)
    publish_s = time.monotonic() - t_start
    drain_s, missing = await b.done.drain(ids)
    result["w1_variant_intent"] = {**lat_summary(lat), "drain_after_last_publish_s": drain_s,
                                   "not_completed": missing,
                                   "completed_per_s_from_first_publish": round(
                                       (len(ids) - missing) / (publish_s + drain_s), 1)}
    registry = await local_registry(b.admin.jetstream(), SPACE, trust)
    engine = Engine(b.admin, walls=local_walls(trust, writer=True), registry=registry,
                    space=SPACE)
    from moon.authority import FromGate  # noqa: PLC0415

    source = FromGate(caller=trust.operator.did, capability="moon:admin")
    lat, ids = [], [f"v-inproc-{i}" for i in range(N1)]
    for wf in ids:
        t = time.perf_counter()
        outcome = await engine.submit(Dispatch(
            command_id=f"d-{wf}", workflow_id=wf, at_ms=local_ms(),
            steps=(StepSpec(id="s0", capability="work"),)), source=source)
        lat.append((time.perf_counter() - t) * 1000)
        if isinstance(outcome, Refusal):
            b.errors["variant-inproc"] += 1
    drain_s, missing = await b.done.drain(ids)
    await registry.stop()
    result["w1_variant_inprocess_submit"] = {**lat_summary(lat), "drain_s": drain_s,
                                             "not_completed": missing}
    say("variants", result["w1_variant_unserved"], result["w1_variant_intent"],
        result["w1_variant_inprocess_submit"])


async def unserved(b: Bench, result: dict[str, Any]) -> None:
    """W1 with nothing running beside the starts: each asks for a capability no worker serves,
    so a start meets only the previous starts' own writes (order, audit record) and not the
    step, completion and index writes of the workflow before it, as in W1. Against W1 (and
    with --no-sync) it says what W1's time is made of. They are cancelled after."""
    lat: list[float] = []
    ids: list[str] = []
    for i in range(N1):
        wf = f"{UNSERVED}{i}"
        start = body(wf, 1)
        start["steps"][0]["capability"] = "unserved"
        t = time.perf_counter()
        answer = await b.client.call("moon.dispatch", start)
        dt = (time.perf_counter() - t) * 1000
        if kind := error_kind(answer):  # as in W1: a refused start is an error, not a time
            b.errors[f"unserved:{kind}"] += 1
        else:
            lat.append(dt)
            ids.append(wf)
    for wf in ids:
        if kind := error_kind(await b.client.call("moon.cancel", {"workflow_id": wf})):
            b.errors[f"unserved-cancel:{kind}"] += 1
    result["w1_variant_unserved"] = lat_summary(lat)


async def settled_journal_check(admin: Nats, decisions: SignedDecisions) -> dict[str, Any]:
    """`journal_check` once the journal has stored what the bench saw. A workflow's completion
    reaches the bench's core-NATS subscription as the stream receives it, before the stream has
    fsync'd it and counts it in its last sequence; a check begun at once can read a journal one
    decision short (a workflow "not completed", an index entry "ahead"). So the check is read
    again, for up to 10 s, while it finds either; a real loss persists and is reported."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while True:
        found = await journal_check(admin, decisions)
        if (found["not_completed"] == 0 and found["index_stale"] == 0) or \
                loop.time() > deadline:
            return found
        await asyncio.sleep(0.5)


async def journal_check(admin: Nats, decisions: SignedDecisions) -> dict[str, Any]:
    """After the run, outside the measurement: every journal message verified and folded per
    workflow, counting what scale-out must never produce: a command journaled twice, a step
    scheduled, started or completed twice for one attempt, a fold that replay `verify` would
    re-decide differently, a workflow not completed, an index entry behind its journal."""
    js = admin.jetstream()
    stream, every = SPACE.stream("MOON"), SPACE.subject("moon.wf.>")
    upto = await last_sequence(js, stream, every)
    rows = await ordered_read(js, stream, every, after=0, upto=upto)
    by_wf: dict[str, list[Decision]] = {}
    last_seq: dict[str, int] = {}
    unreadable = 0
    for seq, subject, _ms, data in rows:
        wf = SPACE.unprefix(subject).split(".")[2]
        last_seq[wf] = seq
        opened = decisions.open(data)
        if isinstance(opened, Refusal):
            unreadable += 1
            continue
        by_wf.setdefault(wf, []).append(opened)
    # The workflow index (a cache of the journal, put by whichever engine decided): its entry
    # must name the journal's last sequence, or an older put overwrote a newer one.
    bucket = SPACE.bucket(WORKFLOWS.name)
    kv_rows = await ordered_read(js, f"KV_{bucket}", f"$KV.{bucket}.>", after=0,
                                 upto=await last_sequence(js, f"KV_{bucket}", f"$KV.{bucket}.>"))
    index = {subject.rsplit(".", 1)[1]: msgspec.json.decode(data, type=WorkflowSummary)
             for _seq, subject, _ms, data in kv_rows if data}
    stale = [wf for wf, seq in last_seq.items()
             if wf not in index or index[wf].version != seq]
    doubled: Counter[str] = Counter()
    mismatches = not_completed = 0
    for wf, journal in by_wf.items():
        ids = Counter(d.command.command_id for d in journal)
        doubled["command"] += sum(1 for n in ids.values() if n > 1)
        for kind in (StepScheduled, StepStarted, StepCompleted):
            seen = Counter((e.step, e.attempt) for d in journal for e in d.events
                           if isinstance(e, kind))
            doubled[kind.__name__] += sum(1 for n in seen.values() if n > 1)
        mismatches += len(replay.verify(journal))
        wanted = "cancelled" if wf.startswith(UNSERVED) else "completed"
        not_completed += replay.fold(journal).status != wanted
    return {"workflows": len(by_wf), "decisions": len(rows), "unreadable": unreadable,
            "doubled": dict(doubled), "verify_mismatches": mismatches,
            "not_completed": not_completed, "index_stale": len(stale),
            "index_stale_sample": {wf: [index[wf].version if wf in index else None,
                                        last_seq[wf]] for wf in stale[:5]}}


def label(args: argparse.Namespace) -> str:
    """The system's name in the table: a variant says so."""
    out = "MOON" if not args.no_sync else "MOON, DIAGNOSTIC: no fsync"
    if args.cluster:
        out += ", 3-node cluster"
    if args.engines != 1:
        out += f", {args.engines} engines"
    if args.workers != 2:
        out += f", {args.workers} worker(s)"
    if not args.eager:
        out += ", every order through WORK"
    return out


async def run(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    servers = (cluster_servers if args.cluster else embedded_servers)(home, args)
    stack = Stack(home, servers)
    result: dict[str, Any] = {"system": label(args)}
    seeds = {} if servers.creds is None else {
        role: seed_file(servers.creds, role) for role in ("admin", "operator")}
    lane_ncs: list[Nats] = []
    try:
        trust = local_trust(home)  # the keys, before any service reads them
        admin = await open_connection(servers.client_urls, name="peers-observer",
                                      credentials_file=seeds.get("admin"))
        operator = await open_connection(servers.client_urls, name="peers-client",
                                         role="operator", credentials_file=seeds.get("operator"))
        try:
            # as `maestro up`
            await ensure_streams(admin.jetstream(), Topology(space=SPACE,
                                                             replicas=servers.replicas))
            try:
                engines = await start_services(stack, admin, args)
            except TimeoutError:
                for name in stack.children:  # why, before the temp dir goes
                    say(f"--- {name}.log (last lines)")
                    say("\n".join((stack.home / f"{name}.log").read_text().splitlines()[-40:]))
                raise
            def sealing(nc: Nats) -> Client:
                return Client(nc, trust.operator, trust.services, grant=(trust.operator_grant,),
                              space=SPACE, timeout_s=CALL_TIMEOUT_S)

            for url in servers.lane_urls:
                lane_ncs.append(await open_connection(
                    url, name=f"peers-client-{len(lane_ncs)}", role="operator",
                    credentials_file=seeds.get("operator")))
            done = Completions(SignedDecisions(local_walls(trust)))
            sub = await admin.subscribe(SPACE.subject("moon.wf.*.completed"), cb=done.on_msg)
            b = Bench(sealing(operator), admin, done, lanes=[sealing(nc) for nc in lane_ncs])
            for i in range(WARMUP):  # not timed; also proves the gate answers
                if err := await b.e2e(f"warm-{i}"):
                    b.errors[f"warmup:{err}"] += 1
            pids = stack.pids()
            say(f"MOON ready ({', '.join(engines)}, {args.workers} workers), "
                f"loadavg {loadavg()}")
            await w1(b, pids, result)
            await w2(b, pids, result, servers.monitor_port)
            await w3(b, pids, result)
            if args.variants:
                await variants(b, trust, result)
            await sub.unsubscribe()
            if args.check:
                result["journal_check"] = await settled_journal_check(admin, done.decisions)
                say("journal check", result["journal_check"])
            result["errors"] = dict(b.errors)
            result["dead"] = stack.dead()
        finally:
            for nc in (*lane_ncs, operator, admin):
                await nc.close()
    finally:
        stack.stop()
        servers.stop()
    result["log_problem_lines"] = stack.log_problems()
    result["log_warning_lines"] = stack.log_warnings()
    servers_run = "3x nats-server (cluster)" if args.cluster else "nats-server"
    result["processes"] = (f"{servers_run}, {args.engines}x moon serve, {args.workers}x moon "
                           "worker, bench client")
    return result


def version() -> str:
    server_v = subprocess.run([str(find_server_binary()), "--version"], capture_output=True,
                              text=True, check=False).stdout.strip()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "moon",
                            "streams", "envelope"], capture_output=True, text=True,
                           check=False).stdout.strip()
    return (f"maestro-moon {md.version('maestro-moon')} ({commit or '?'}"
            f"{'+changes' if dirty else ''}), {server_v}, nats-py {md.version('nats-py')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--engines", type=int, default=1,
                        help="`moon serve` processes sharing the broker (scale-out)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--eager", action=argparse.BooleanOptionalAction, default=True,
                        help="workers take a chain's next order in their completion's answer "
                             "(moon/handoff.py); --no-eager: every order through WORK")
    parser.add_argument("--variants", action="store_true",
                        help="also W1 as a durable intent and as an in-process Engine.submit")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=None,
                        help="after the run, verify and fold every journal (default: with "
                             "more than one engine)")
    parser.add_argument("--cluster", action="store_true",
                        help="a 3-node cluster (R3 streams) instead of one broker: each engine "
                             "and worker on a node of its own, the client on node 0")
    parser.add_argument("--no-sync", action="store_true",
                        help="diagnostic only: nats-server without sync_interval: always "
                             "(JetStream's default, fsync every 2 min): NOT MOON's durability")
    args = parser.parse_args()
    configure_logging()  # to stderr: --variants' in-process engine narrates; stdout is the result
    if args.check is None:
        args.check = args.engines > 1
    with tempfile.TemporaryDirectory(prefix="peers-moon-") as tmp:
        result = run_loop(run(args, Path(tmp)))
    result["version"] = version()
    result["durability"] = (
        "3-node cluster, file streams R3: an ack means a majority stored it (sync_interval "
        f"{CLUSTER_SYNC})" if args.cluster else
        "nats-server sync_interval: always (fsync per write), file streams R1"
        if not args.no_sync else
        "NOT durable: nats-server default sync (every 2 min), file streams R1")
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
