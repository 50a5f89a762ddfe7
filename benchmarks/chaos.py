"""Chaos run: kill -9 the engine, an executor or the broker every few seconds while workflows run,
then prove nothing was lost, nothing completed ran twice and every journal replays.

    python benchmarks/chaos.py [--seed 1] [--workflows 200] [--kills 100] [--interval-s 2.0]
                               [--executors 3] [--settle-s 180] [--json] [--keep]

One embedded nats-server (sync_interval: always) on a fixed port and store, one engine (`moon
serve`) and a pool of executors (this file's `executor` role), all child processes. Workflows are
dispatched at a steady pace over the kill phase while a killer sends SIGKILL to a target every
0.5 to 1.5 intervals and restarts it on the same port, store or executor id 0.2 to 1.0 s later;
the first three kills cover the three kinds, the rest are drawn uniformly. A supervisor restarts
whatever exits by itself (counted as `exits`: mostly a process that started while the broker was
down). Shapes, targets and delays come from `random.Random` seeded by --seed; the interleaving
of processes does not, so one seed kills the same targets, not at the same instants of the work.

Workflows: 2 to 5 steps in a random DAG, on_failure=compensate, unlimited retries. `work` steps
sleep; `count` steps tick and checkpoint every tick (a retry resumes from the last checkpoint);
half the steps have an `undo` compensation; a seeded 20% hold a `boom` step that fails
non-retryably, so they must end compensated and all the others completed. Executors write
`begin KEY START EXECUTOR` and `done KEY EXECUTOR` (KEY = workflow/step/attempt, `undo:` before a
compensation's) with O_APPEND to a log that survives SIGKILL.

Checks, each a count in the tally; any non-zero one fails the run (exit 1):
* every dispatched workflow ends, completed or compensated as seeded;
* no key has two `done` lines, every journaled completion (StepCompleted, StepCompensated) has
  exactly one;
* no acknowledged journal event is lost: before every kill the journal is read as far as it goes
  (stream seq, bytes), and at the end all that was read must be the start of the final journal,
  same seqs, same bytes, nothing missing;
* every journal replays: `replay.verify` finds no mismatch, and the fold of the raw journal equals
  the store's per-workflow read, the engine's load (snapshot plus tail) and the workflow index;
* every dispatch the gate accepted has its accepted audit record (a dispatch is answered before
  its record is stored, and a record a kill kept from AUDIT is written again from the journal by
  the engine that takes the dead one's mark over: waited for up to AUDIT_S).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec

ROOT = Path(__file__).resolve().parents[1]
# Run as `python benchmarks/chaos.py`, benchmarks/moon.py would shadow the `moon` package.
sys.modules.pop("moon", None)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))  # tests.moon.fault_world: the fault tests' process and log helpers
from envelope.client import Client  # noqa: E402
from envelope.local import executor_key, local_trust  # noqa: E402
from moon import journal, replay, workflow  # noqa: E402
from moon.clock import local_ms as now_ms  # noqa: E402
from moon.index import WorkflowSummary, summary  # noqa: E402
from moon.local import local_walls, register_local_executor  # noqa: E402
from moon.worker import Handler, NonRetryable, Result, StepContext, Worker  # noqa: E402
from moon.workflow import WorkflowState, is_terminal  # noqa: E402
from streams.audit import AuditRecord  # noqa: E402
from streams.broker import (  # noqa: E402
    EmbeddedBroker,
    connect,
    credentials_env,
    free_port,
    home_dir,
    open_connection,
)
from streams.config import WORKFLOWS, Topology, ensure_streams  # noqa: E402
from streams.jetstream_store import last_sequence, ordered_read  # noqa: E402
from streams.moon_events import (  # noqa: E402
    Decision,
    Dispatch,
    RetryPolicy,
    StepCheckpointed,
    StepCompensated,
    StepCompleted,
    StepSpec,
    StepTimedOut,
)
from streams.roles import executor_role  # noqa: E402
from streams.subjects import Space  # noqa: E402
from tests import walls as tw  # noqa: E402
from tests.moon import fault_world as fw  # noqa: E402

T = TypeVar("T")
SPACE = Space("chaos")
CAPABILITIES = ("work", "count", "boom", "undo")
KINDS = ("engine", "executor", "broker")
FAILING_SHARE = 0.2
ENGINE_ACK_WAIT_S = 2.0  # commands a killed engine held come back after this
EXECUTOR_ACK_WAIT_S = 3.0  # orders a killed executor held, likewise
READY_S = 20.0  # a start that has not logged its ready line by then is hung (see supervise)
AUDIT_S = 40.0  # a dead engine's mark goes stale (10 s) and is taken over (every 2 s) by then
RETRY = RetryPolicy(maximum_attempts=0, initial_interval_ms=200, maximum_interval_ms=2000)


# --- workflows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    workflow_id: str
    steps: tuple[StepSpec, ...]
    expect: str  # "completed" or "compensated"

    def dispatch(self) -> Dispatch:
        return Dispatch(command_id=f"dispatch-{self.workflow_id}", workflow_id=self.workflow_id,
                        at_ms=now_ms(), steps=self.steps, on_failure="compensate")


def plan(rng: random.Random, index: int) -> Plan:
    n = rng.randint(2, 5)
    failing = rng.random() < FAILING_SHARE
    boom = rng.randrange(1, n) if failing else -1  # never first: something is done to undo
    steps = []
    for i in range(n):
        needs = tuple(sorted(rng.sample([f"s{j}" for j in range(i)], k=min(i, rng.randint(1, 2)))))
        undo = "undo" if rng.random() < 0.5 else None
        if i == boom:
            capability, params = "boom", {}
        elif rng.random() < 0.3:
            capability, params = "count", {"ticks": rng.randint(3, 6),
                                           "tick_ms": rng.randint(100, 250)}
        else:
            capability, params = "work", {"ms": rng.randint(50, 500)}
        steps.append(StepSpec(
            id=f"s{i}", capability=capability, needs=needs, compensation=undo, timeout_ms=10_000,
            heartbeat_timeout_ms=3_000, retry=RETRY, params=json.dumps(params).encode(),
        ))
    return Plan(f"wf{index:04d}", tuple(steps), "compensated" if failing else "completed")


# --- the executor process ----------------------------------------------------------------------


def handlers(log: Path, executor: str) -> dict[str, Handler]:
    def params(ctx: StepContext) -> dict[str, int]:
        value: dict[str, int] = json.loads(ctx.order.params or b"{}")
        return value

    async def work(ctx: StepContext) -> Result:
        fw.record(log, f"begin {ctx.key} 0 {executor}")
        await asyncio.sleep(params(ctx)["ms"] / 1000)
        fw.record(log, f"done {ctx.key} {executor}")
        return Result(output=ctx.order.step.encode(), tokens=1)

    async def count(ctx: StepContext) -> Result:
        p, start = params(ctx), int(ctx.resume_from or b"0")
        fw.record(log, f"begin {ctx.key} {start} {executor}")
        for tick in range(start, p["ticks"]):
            await asyncio.sleep(p["tick_ms"] / 1000)
            await ctx.checkpoint(str(tick + 1).encode())
        fw.record(log, f"done {ctx.key} {executor}")
        return Result(output=str(p["ticks"]).encode(), tokens=1)

    async def boom(ctx: StepContext) -> Result:
        fw.record(log, f"begin {ctx.key} 0 {executor}")
        raise NonRetryable("seeded failure")

    async def undo(ctx: StepContext) -> Result:
        fw.record(log, f"begin undo:{ctx.key} 0 {executor}")
        await asyncio.sleep(0.05)
        fw.record(log, f"done undo:{ctx.key} {executor}")
        return Result(output=b"undone")

    return {"work": work, "count": count, "boom": boom, "undo": undo}


async def serve_executor(log: Path, executor: str) -> None:
    from moon.service import serve_worker  # noqa: PLC0415 - the driver never needs it

    # Registered and given a broker user of its own by the driver: it runs with executor
    # rights alone, its key from the engine's data dir.
    signer = executor_key(home_dir(), executor)
    async with connect(name=f"chaos-{executor}", role=executor_role(executor)) as nc:
        worker = Worker(nc, executor_id=executor, handlers=handlers(log, executor),
                        engines=local_trust(home_dir()).engines,
                        signer=signer, space=SPACE, ack_wait_s=EXECUTOR_ACK_WAIT_S)
        await serve_worker(worker)


# --- the processes -----------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    kind: str
    out: Path  # where it logs; the ready line is looked for there
    proc: subprocess.Popen[bytes] | None = None
    held: bool = False  # down on purpose: the supervisor leaves it alone
    ready: bool = False
    spawned_at: float = 0.0
    offset: int = 0  # of `out` at spawn: the ready line must come after it

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def starting(self) -> None:
        self.ready, self.spawned_at = False, time.monotonic()
        self.offset = self.out.stat().st_size if self.out.exists() else 0

    def logged_ready(self) -> bool:
        """`moon serve` logs engine_ready, serve_worker worker_ready, once they consume."""
        word = b"engine_ready" if self.kind == "engine" else b"worker_ready"
        with self.out.open("rb") as out:
            out.seek(self.offset)
            return word in out.read()


@dataclass
class Fleet:
    """The broker, the engine and the executors; kills, restarts and a supervisor."""

    broker: EmbeddedBroker
    run_dir: Path
    effects_log: Path
    executors: list[str]
    children: dict[str, Child] = field(default_factory=dict)
    kills: Counter[str] = field(default_factory=Counter)
    exits: Counter[str] = field(default_factory=Counter)
    hung: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.children["broker"] = Child("broker", "broker", self.run_dir / "nats-server.log")
        self.children["engine"] = Child("engine", "engine", self.run_dir / "engine.out")
        for name in self.executors:
            self.children[name] = Child(name, "executor", self.run_dir / f"{name}.out")

    async def spawn(self, child: Child) -> None:
        url = self.broker.url
        match child.kind:
            case "broker":
                await asyncio.to_thread(self.broker.start)  # returns once it listens
                child.proc, child.ready = self.broker.process, True
            case "engine":
                child.starting()
                child.proc = fw.spawn_engine(url, SPACE, child.out, home=self.run_dir / "home",
                                             seed=self.broker.seed("engine"))
            case "executor":
                child.starting()
                child.proc = spawn_executor(url, self.effects_log, child.name, child.out,
                                            home=self.run_dir / "home")
            case _:
                raise AssertionError(child.kind)

    async def kill(self, child: Child, down_s: float) -> None:
        """SIGKILL once it runs, then the same thing again after `down_s`."""
        deadline = time.monotonic() + 60
        # the supervisor may be bringing it back from an exit: a process has no event to await
        while (not child.alive() or child.held) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        child.held = True
        if child.kind == "broker":
            await asyncio.to_thread(self.broker.kill)
        else:
            assert child.proc is not None
            await asyncio.to_thread(fw.kill9, child.proc)
        self.kills[child.kind] += 1
        await asyncio.sleep(down_s)
        await self.spawn(child)
        child.held = False

    async def supervise(self) -> None:
        """Restart what exits by itself, and what never gets ready in READY_S (a start-up that
        hangs on a broker killed under it: the services now exit then, this is the backstop)."""
        while True:
            for child in self.children.values():
                if child.held:
                    continue
                if child.alive():
                    child.ready = child.ready or child.logged_ready()
                    if child.ready or time.monotonic() - child.spawned_at < READY_S:
                        continue
                    self.hung[child.kind] += 1
                    assert child.proc is not None
                    fw.kill9(child.proc)
                else:
                    self.exits[child.kind] += 1
                child.held = True
                await asyncio.sleep(0.3)  # no hot loop while the broker is away
                await self.spawn(child)
                child.held = False
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        for child in self.children.values():
            if child.kind != "broker" and child.alive():
                assert child.proc is not None
                child.proc.send_signal(signal.SIGTERM)
        for child in self.children.values():
            if child.kind != "broker" and child.proc is not None:
                try:
                    await asyncio.to_thread(child.proc.wait, 10)
                except subprocess.TimeoutExpired:
                    fw.kill9(child.proc)
        await asyncio.to_thread(self.broker.stop)


def spawn_executor(url: str, log: Path, name: str, out: Path, *,
                   home: Path) -> subprocess.Popen[bytes]:
    # The engine's data dir: its keys register the executor and verify its reports.
    env = dict(os.environ, NATS_URL=url, MAESTRO_SPACE=SPACE.prefix, PYTHONPATH=str(ROOT),
               MAESTRO_HOME=str(home), **credentials_env(url))
    env.pop("NATS_NKEY", None)  # its own executor user's seed, found by its role
    return subprocess.Popen(
        [sys.executable, __file__, "executor", str(log), "--id", name],
        env=env, stdout=out.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT,
    )


def kill_schedule(rng: random.Random, kills: int, interval_s: float,
                  executors: list[str]) -> list[tuple[float, str, float]]:
    """(pause before, target, time down) per kill: every kind early, then uniformly."""
    kinds = list(KINDS)
    rng.shuffle(kinds)
    kinds += [rng.choice(KINDS) for _ in range(kills - len(kinds))]
    return [
        (rng.uniform(0.5, 1.5) * interval_s,
         rng.choice(executors) if kind == "executor" else kind,
         rng.uniform(0.2, 1.0))
        for kind in kinds[:kills]
    ]


# --- reading the journal while things die ------------------------------------------------------


async def patiently(call: Callable[[], Awaitable[T]], timeout_s: float = 60.0) -> T:
    """Retry through a broker restart; give up after `timeout_s`. In a loop, pass a
    `functools.partial`: it binds the loop's variable now, and mypy can type it (a lambda with a
    default argument it cannot)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


@dataclass
class Reader:
    """Everything read from the journal so far, as stored, and the states it folds to."""

    js: Any
    codec: Any  # the journal's, verifying each message as the engine's
    seen: dict[int, tuple[str, bytes]] = field(default_factory=dict)
    last: int = 0
    states: dict[str, WorkflowState] = field(default_factory=dict)
    snapshots: int = 0

    async def catch_up(self) -> None:
        rows = await patiently(lambda: fw.journal_rows(self.js, SPACE, after=self.last))
        for seq, wf, data in rows:
            self.seen[seq] = (wf, data)
            state = self.states.get(wf, workflow.initial)
            self.states[wf] = workflow.apply(state, self.codec.decode(data))
            self.last = seq


# --- the tally ---------------------------------------------------------------------------------


class Tally(msgspec.Struct):
    seed: int
    workflows: int
    kills: dict[str, int]
    exits: dict[str, int]  # exits nobody asked for, restarted by the supervisor
    hung: dict[str, int]  # starts that never got ready, killed and restarted by the supervisor
    completed: int = 0
    compensated: int = 0
    compensated_seeded: int = 0
    other: dict[str, int] = {}  # workflows that did not end, by status
    stuck: list[str] = []  # the first of them, with their unfinished steps
    unexpected: int = 0  # ended, but not as seeded
    attempts_begun: int = 0
    attempts_done: int = 0
    attempts_cut: int = 0  # begun, never done, not a boom: killed mid-step
    resumed_from_checkpoint: int = 0
    keys_begun_twice: int = 0
    keys_done_twice: int = 0
    completions_run_twice: int = 0  # journaled completion, two `done` lines
    completions_without_effect: int = 0  # journaled completion, no `done` line
    journal_events: int = 0
    reads_before_kills: int = 0
    lost_events: int = 0
    changed_events: int = 0
    unseen_inserted: int = 0
    timeouts: int = 0
    checkpoints: int = 0
    fold_vs_read: int = 0
    verify_mismatches: int = 0
    engine_view_mismatches: int = 0
    index_mismatches: int = 0
    snapshots_checked: int = 0
    dispatches_audited: int = 0
    dispatches_unaudited: int = 0  # accepted (journaled), no accepted audit record
    dispatch_records_twice: int = 0  # not a failure: a record is never lost, may be re-written
    records_written_again: int = 0  # by engines taking a killed one's mark over (its log)
    wall_s: float = 0.0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    failures: list[str] = []
    ok: bool = False


Journals = dict[str, list[tuple[int, Decision]]]  # workflow -> (stream seq, decision)


def check_effects(tally: Tally, log: Path, finals: Journals, plans: list[Plan]) -> None:
    begun: Counter[str] = Counter()
    done: Counter[str] = Counter()
    for parts in fw.lines(log):
        if parts[0] == "begin":
            begun[parts[1]] += 1
            tally.resumed_from_checkpoint += int(parts[2]) > 0
        elif parts[0] == "done":
            done[parts[1]] += 1
    tally.attempts_begun, tally.attempts_done = sum(begun.values()), sum(done.values())
    tally.keys_begun_twice = sum(n > 1 for n in begun.values())
    tally.keys_done_twice = sum(n > 1 for n in done.values())
    booms = {(p.workflow_id, s.id) for p in plans for s in p.steps if s.capability == "boom"}
    tally.attempts_cut = sum(
        key not in done and tuple(key.removeprefix("undo:").split("/")[:2]) not in booms
        for key in begun
    )
    for wf, journal_ in finals.items():
        for _, decision in journal_:
            for event in decision.events:
                if isinstance(event, StepCompleted):
                    key = f"{wf}/{event.step}/{event.attempt}"
                elif isinstance(event, StepCompensated):
                    key = f"undo:{wf}/{event.step}/{event.attempt}"
                else:
                    tally.timeouts += isinstance(event, StepTimedOut)
                    tally.checkpoints += isinstance(event, StepCheckpointed)
                    continue
                tally.completions_run_twice += done[key] > 1
                tally.completions_without_effect += done[key] == 0


def check_journal(tally: Tally, reader: Reader, final: dict[int, tuple[str, bytes]]) -> None:
    tally.journal_events = len(final)
    tally.reads_before_kills = reader.snapshots
    top = max(reader.seen, default=0)
    tally.lost_events = sum(seq not in final for seq in reader.seen)
    tally.changed_events = sum(seq in final and final[seq] != row
                               for seq, row in reader.seen.items())
    tally.unseen_inserted = sum(seq <= top and seq not in reader.seen for seq in final)


async def check_replay(tally: Tally, js: Any, finals: Journals, walls: Any) -> None:
    runner = journal.runner(js, SPACE, walls)
    snapshots = runner.snapshots
    assert snapshots is not None
    index = await patiently(lambda: js.key_value(SPACE.bucket(WORKFLOWS.name)))
    for wf, journal_ in finals.items():
        decisions = [decision for _, decision in journal_]
        version, folded = journal_[-1][0], replay.fold(decisions)
        tally.verify_mismatches += len(replay.verify(decisions))
        read = [item.value for item in (await patiently(
            functools.partial(journal.journal(js, SPACE, walls).read, wf))).items]
        tally.fold_vs_read += replay.fold(read) != folded
        loaded = await patiently(functools.partial(runner.load, wf, use_cache=False))
        tally.engine_view_mismatches += loaded != (version, folded)
        snapshot = await patiently(functools.partial(snapshots.load, wf))
        if snapshot is not None:
            tally.snapshots_checked += 1
            upto = [decision for seq, decision in journal_ if seq <= snapshot.version]
            tally.engine_view_mismatches += replay.fold(upto) != snapshot.state
        entry = await patiently(functools.partial(index.get, wf))
        have = msgspec.json.decode(entry.value, type=WorkflowSummary)
        tally.index_mismatches += (
            msgspec.structs.replace(have, updated_ms=0) != summary(folded, version, 0)
        )


def _unfinished(wf: str, state: WorkflowState) -> str:
    steps = [f"{k} {s.status} at attempt {s.attempt}" for k, s in state.steps.items()
             if s.status not in ("completed", "compensated", "pending")]
    return f"{wf} {state.status}: {', '.join(steps) or 'no step in progress'}"


def verdict(tally: Tally, plans: list[Plan], reader: Reader) -> None:
    expect = {p.workflow_id: p.expect for p in plans}
    tally.compensated_seeded = sum(p.expect == "compensated" for p in plans)
    other: Counter[str] = Counter()
    for wf, wanted in expect.items():
        status = reader.states.get(wf, workflow.initial).status
        if status == "completed":
            tally.completed += 1
        elif status == "compensated":
            tally.compensated += 1
        else:
            other[status] += 1
            if len(tally.stuck) < 10:
                tally.stuck.append(_unfinished(wf, reader.states.get(wf, workflow.initial)))
            continue
        tally.unexpected += status != wanted
    tally.other = dict(other)
    problems = {
        "workflows did not end completed or compensated": sum(other.values()),
        "workflows ended otherwise than seeded": tally.unexpected,
        "attempts begun twice (an attempt runs at most once)": tally.keys_begun_twice,
        "keys done twice": tally.keys_done_twice,
        "journaled completions run twice": tally.completions_run_twice,
        "journaled completions without a side effect": tally.completions_without_effect,
        "acknowledged events lost": tally.lost_events,
        "acknowledged events changed": tally.changed_events,
        "events inserted before read ones": tally.unseen_inserted,
        "replays differing from the store's read": tally.fold_vs_read,
        "replay.verify mismatches": tally.verify_mismatches,
        "engine views differing from the replay": tally.engine_view_mismatches,
        "index entries differing from the replay": tally.index_mismatches,
        "accepted dispatches without an audit record": tally.dispatches_unaudited,
    }
    tally.failures = [f"{n} {what}" for what, n in problems.items() if n]
    tally.ok = not tally.failures


# --- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    seed: int = 1
    workflows: int = 200
    kills: int = 100
    interval_s: float = 2.0
    executors: int = 3
    settle_s: float = 180.0


async def chaos(config: Config, run_dir: Path) -> Tally:
    started = time.monotonic()
    shapes = random.Random(f"{config.seed}/shapes")
    plans = [plan(shapes, i) for i in range(config.workflows)]
    executors = [f"x{i + 1}" for i in range(config.executors)]
    schedule = kill_schedule(random.Random(f"{config.seed}/kills"), config.kills,
                             config.interval_s, executors)
    # Least privilege: every role's rights rendered for the run's namespace.
    broker = EmbeddedBroker(data_dir=run_dir / "nats", port=free_port(), space=SPACE)
    fleet = Fleet(broker, run_dir, run_dir / "effects.log", executors)
    await fleet.spawn(fleet.children["broker"])
    nc = await open_connection(broker.url, name="chaos-driver", error_cb=_expected)
    js = nc.jetstream()
    tally = Tally(seed=config.seed, workflows=config.workflows, kills={}, exits={}, hung={})
    try:
        await ensure_streams(js, Topology(space=SPACE))
        await fw.short_ack_wait_engine_consumer(js, SPACE, ack_wait_s=ENGINE_ACK_WAIT_S)
        trust = local_trust(run_dir / "home")
        for name in executors:
            await register_local_executor(js, SPACE, trust, run_dir / "home", name,
                                          capabilities=CAPABILITIES)
            await asyncio.to_thread(broker.provision_executor, name, CAPABILITIES)
        for name in ["engine", *executors]:
            await fleet.spawn(fleet.children[name])
        walls = local_walls(trust)
        reader = Reader(js, journal.SignedDecisions(walls))
        supervisor = asyncio.ensure_future(fleet.supervise())
        try:
            gap = 0.8 * sum(pause for pause, _, _ in schedule) / max(1, config.workflows)
            operator = Client(nc, trust.operator, trust.services, grant=(trust.operator_grant,),
                              space=SPACE, ttl_ms=120_000)
            sent = asyncio.ensure_future(dispatch_all(operator, plans, gap))
            for pause, target, down_s in schedule:
                await asyncio.sleep(pause)
                await reader.catch_up()  # what a reader saw acknowledged before this kill
                reader.snapshots += 1
                await fleet.kill(fleet.children[target], down_s)
            await sent
            await settle(reader, [p.workflow_id for p in plans], config.settle_s)
        finally:
            supervisor.cancel()
        tally.kills, tally.exits = dict(fleet.kills), dict(fleet.exits)
        tally.hung = dict(fleet.hung)
        await final_checks(tally, js, reader, plans, log=run_dir / "effects.log", walls=walls)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
        await fleet.stop()
    tally.wall_s = round(time.monotonic() - started, 1)
    tally.load = os.getloadavg()
    return tally


async def _expected(error: Exception) -> None:
    """Connection errors are the point of this run; `patiently` deals with what they break."""


async def dispatch_all(operator: Client, plans: list[Plan], gap_s: float) -> None:
    """Durable intents through the gate: once JetStream acknowledges one, it must end."""
    for item in plans:
        command = item.dispatch()
        await patiently(functools.partial(operator.publish_intent, "moon.dispatch",
                                          tw.request_from(command), request_id=command.command_id))
        await asyncio.sleep(gap_s)


async def settle(reader: Reader, workflows: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await reader.catch_up()
        if all(is_terminal(reader.states.get(wf, workflow.initial)) for wf in workflows):
            return
        await asyncio.sleep(0.5)


async def final_checks(tally: Tally, js: Any, reader: Reader, plans: list[Plan], *,
                       log: Path, walls: Any) -> None:
    rows = await patiently(lambda: fw.journal_rows(js, SPACE))
    finals: Journals = defaultdict(list)
    for seq, wf, data in rows:
        finals[wf].append((seq, reader.codec.decode(data)))
    check_journal(tally, reader, {seq: (wf, data) for seq, wf, data in rows})
    check_effects(tally, log, finals, plans)
    await check_replay(tally, js, finals, walls)
    await check_audit(tally, js, plans, finals)
    tally.records_written_again = sum(
        json.loads(line).get("records_written_again", 0)
        for line in (log.parent / "engine.out").read_text(errors="replace").splitlines()
        if "engine_mark_taken_over" in line and line.startswith("{"))
    verdict(tally, plans, reader)


async def check_audit(tally: Tally, js: Any, plans: list[Plan], finals: Journals) -> None:
    """Every journaled dispatch has an accepted audit record under its request id, once the
    marks of the engines the run killed have been taken over (polled: no event says so)."""
    wanted = {p.dispatch().command_id for p in plans if finals.get(p.workflow_id)}
    stream = SPACE.stream("AUDIT")
    subject = SPACE.subject("audit.moon.dispatch.accepted")
    deadline = time.monotonic() + AUDIT_S
    while True:
        upto = await patiently(lambda: last_sequence(js, stream, subject))
        rows = await patiently(functools.partial(ordered_read, js, stream, subject, after=0,
                                                 upto=upto))
        seen = Counter(msgspec.json.decode(data, type=AuditRecord).id for _, _, _, data in rows)
        missing = wanted - set(seen)
        if not missing or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    tally.dispatches_audited = len(wanted) - len(missing)
    tally.dispatches_unaudited = len(missing)
    tally.dispatch_records_twice = sum(n > 1 for i, n in seen.items() if i in wanted)


# --- the command line --------------------------------------------------------------------------


def render(t: Tally) -> str:
    kills = ", ".join(f"{k} {t.kills.get(k, 0)}" for k in KINDS)
    exits = ", ".join(f"{k} {n}" for k, n in sorted(t.exits.items())) or "none"
    hung = ", ".join(f"{k} {n}" for k, n in sorted(t.hung.items())) or "none"
    lines = [
        f"chaos seed {t.seed}: {t.workflows} workflows, {sum(t.kills.values())} kills ({kills})"
        f" in {t.wall_s:.1f} s; load {t.load[0]:.2f} {t.load[1]:.2f} {t.load[2]:.2f}",
        f"  workflows     completed {t.completed}, compensated {t.compensated}"
        f" (seeded {t.compensated_seeded}), other {t.other or 0}, not as seeded {t.unexpected}"
        + "".join(f"\n    stuck: {line}" for line in t.stuck),
        f"  side effects  {t.attempts_begun} attempts begun, {t.attempts_done} done,"
        f" {t.attempts_cut} cut by a kill, {t.resumed_from_checkpoint} resumed from a checkpoint;"
        f" keys begun twice {t.keys_begun_twice}, done twice {t.keys_done_twice};"
        f" journaled completions run twice {t.completions_run_twice},"
        f" without effect {t.completions_without_effect}",
        f"  journal       {t.journal_events} events, read before each of {t.reads_before_kills}"
        f" kills; lost {t.lost_events}, changed {t.changed_events},"
        f" inserted {t.unseen_inserted}",
        f"  replay        verify mismatches {t.verify_mismatches}, fold vs read {t.fold_vs_read},"
        f" engine view {t.engine_view_mismatches} ({t.snapshots_checked} snapshots),"
        f" index {t.index_mismatches}",
        f"  audit         {t.dispatches_audited} dispatches with their record,"
        f" {t.dispatches_unaudited} without; written twice {t.dispatch_records_twice};"
        f" written again from the journal after a kill {t.records_written_again}",
        f"  recovery      {t.timeouts} step timeouts, {t.checkpoints} checkpoints;"
        f" unasked exits: {exits}; hung starts killed: {hung}",
        "PASS" if t.ok else "FAIL: " + "; ".join(t.failures),
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["executor"]:
        parser = argparse.ArgumentParser(prog="chaos.py executor")
        parser.add_argument("log", type=Path)
        parser.add_argument("--id", required=True)
        args = parser.parse_args(argv[1:])
        asyncio.run(serve_executor(args.log, args.id))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workflows", type=int, default=200)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--interval-s", type=float, default=2.0)
    parser.add_argument("--executors", type=int, default=3)
    parser.add_argument("--settle-s", type=float, default=180.0)
    parser.add_argument("--json", action="store_true", help="one JSON line")
    parser.add_argument("--keep", action="store_true", help="keep the run dir even on success")
    args = parser.parse_args(argv)
    config = Config(seed=args.seed, workflows=args.workflows, kills=args.kills,
                    interval_s=args.interval_s, executors=args.executors, settle_s=args.settle_s)
    run_dir = Path(tempfile.mkdtemp(prefix=f"chaos-{config.seed}-"))
    tally = asyncio.run(chaos(config, run_dir))
    print(msgspec.json.encode(tally).decode() if args.json else render(tally), flush=True)
    if tally.ok and not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"run dir kept: {run_dir}", file=sys.stderr)
    return 0 if tally.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
