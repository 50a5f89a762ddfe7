"""Fault-test helpers: engine and executor subprocesses that can be killed -9, a side-effect log
that survives the kill, and journal readers that ask nothing of a (possibly restarting) engine.

Run as a module it is an executor: `python -m tests.moon.fault_world worker LOG [--ticks N]`
(NATS_URL and MAESTRO_SPACE select the server and namespace). Its capability `count` counts from
the last checkpoint to N, checkpointing after each tick; every line it writes goes to LOG with
O_APPEND, so what ran before a SIGKILL is still counted after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from nats.js import JetStreamContext, api

from moon import journal as moon_journal
from moon import replay
from moon.engine import ENGINE_CONSUMER
from moon.workflow import WorkflowState, is_terminal
from streams import subjects
from streams.config import MOON
from streams.credentials import CREDS_ENV, NKEY_ENV, seed_file
from streams.jetstream_store import JetStreamStore, last_sequence, ordered_read
from streams.moon_events import Decision
from streams.roles import inbox_prefix
from streams.subjects import Space

from .. import walls as tw

ROOT = Path(__file__).resolve().parents[2]


# --- side effects, by idempotency key, in a file that outlives the process -------------------


def record(path: Path, line: str) -> None:
    """One whole line per write(2) with O_APPEND: lines never interleave, survive SIGKILL."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def counts(path: Path, tag: str) -> Counter[str]:
    return Counter(parts[1] for parts in lines(path) if parts[0] == tag)


# --- processes ------------------------------------------------------------------------------


def _env(url: str, space: Space, home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, NATS_URL=url, MAESTRO_SPACE=space.prefix, PYTHONPATH=str(ROOT))
    # The namespace's keys (tests/walls.py): the engine, the executors and the test itself
    # sign and verify with the same trust material.
    env["MAESTRO_HOME"] = str(home or tw.home_for(space))
    # The session broker's roles are rendered for the root namespace, so a service spawned in
    # a test's namespace runs with the admin's seed here; the least-privilege runs are
    # tests/security, the demo, the cluster and the chaos tests, each on a broker of its own.
    if (shared := os.environ.get(CREDS_ENV)) and NKEY_ENV not in env:
        env[NKEY_ENV] = str(seed_file(Path(shared), "admin"))
    return env


# A child whose engine keeps its workflows young for `young_ms` (moon/projection.py), so a test
# that kills it "while young" does not depend on how fast a busy machine gets to the kill.
_YOUNG_FOR = """
import dataclasses, moon.engine
@dataclasses.dataclass
class Engine(moon.engine.Engine):
    young_ms: int = {young_ms}
moon.engine.Engine = Engine
"""


def spawn_engine(url: str, space: Space, log: Path, home: Path | None = None, *,
                 seed: Path | None = None, young_ms: int | None = None
                 ) -> subprocess.Popen[bytes]:
    """`moon serve` as a child process: the thing a fault test kills -9. `seed`: the broker
    user it runs as (default: the session's admin, see `_env`)."""
    out = log.open("ab")
    env = _env(url, space, home)
    if seed is not None:
        env[NKEY_ENV] = str(seed)
    code = "from moon.cli import main; main()"
    if young_ms is not None:
        code = _YOUNG_FOR.format(young_ms=young_ms) + code
    return subprocess.Popen(
        [sys.executable, "-c", code, "serve"],
        env=env, stdout=out, stderr=out, cwd=ROOT,
    )


def spawn_counter(url: str, space: Space, log: Path, *, executor: str,
                  ticks: int, tick_s: float) -> subprocess.Popen[bytes]:
    out = (log.parent / f"{executor}.out").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.moon.fault_world", "worker", str(log), "--id", executor,
         "--ticks", str(ticks), "--tick-s", str(tick_s)],
        env=_env(url, space), stdout=out, stderr=out, cwd=ROOT,
    )


def kill9(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


async def short_ack_wait_engine_consumer(js: JetStreamContext, space: Space,
                                         ack_wait_s: float = 2.0) -> None:
    """Create the engine's durable consumer as an operator would for fast failover: commands an
    engine held when it died come back after `ack_wait_s`, not the default 30 s. The engine binds
    to an existing durable as it finds it."""
    durable = space.consumer(ENGINE_CONSUMER)
    await js.add_consumer(
        space.stream("MOON_CMD"),
        api.ConsumerConfig(
            durable_name=durable, deliver_group=durable,
            # In the engine's own inbox space: the only subjects its broker user may read.
            deliver_subject=f"{inbox_prefix('engine')}.deliver.{durable}",
            filter_subject=space.subject("moon.cmd.>"),
            ack_policy=api.AckPolicy.EXPLICIT, ack_wait=ack_wait_s, max_ack_pending=1024,
            max_deliver=-1,
        ),
    )


async def engine_bound(js: JetStreamContext, space: Space, timeout_s: float = 30.0) -> None:
    """Until an engine process has subscribed to the command consumer: commands sent from now
    on are handled at once, so their due times are not spent on the engine's start-up."""
    async def bound() -> bool:
        with contextlib.suppress(Exception):  # the consumer may not exist yet
            info = await js.consumer_info(space.stream("MOON_CMD"),
                                          space.consumer(ENGINE_CONSUMER))
            return bool(info.push_bound)
        return False

    await wait_for(bound, timeout_s)


# --- the journal, read directly ---------------------------------------------------------------


def _journal(js: JetStreamContext, space: Space) -> JetStreamStore[Decision]:
    return moon_journal.journal(js, space, tw.walls_for(space, writer=False))


async def decisions(js: JetStreamContext, space: Space, workflow_id: str) -> list[Decision]:
    loaded = await _journal(js, space).read(workflow_id)
    return [item.value for item in loaded.items]


async def raw_journal(js: JetStreamContext, space: Space,
                      workflow_id: str) -> list[tuple[int, bytes]]:
    """(stream seq, stored bytes) pairs: what a reader saw acknowledged, byte for byte."""
    stream, filter_ = space.stream(MOON.name), space.subject(subjects.workflow_events(workflow_id))
    upto = await last_sequence(js, stream, filter_)
    rows = await ordered_read(js, stream, filter_, after=0, upto=upto)
    await _journal(js, space).read(workflow_id)  # and every one of them verifies
    return [(seq, data) for seq, _, _, data in rows]


async def journal_rows(js: JetStreamContext, space: Space,
                       after: int = 0) -> list[tuple[int, str, bytes]]:
    """Every journal message past `after`, all workflows in one read, byte for byte as stored:
    (stream seq, workflow id, data). Cheaper than a read per workflow when there are hundreds."""
    stream, every = space.stream(MOON.name), space.subject(subjects.workflow_events())
    upto = await last_sequence(js, stream, every)
    rows = await ordered_read(js, stream, every, after=after, upto=upto)
    # moon.wf.<workflow>.<kind>: workflow ids hold no dots
    return [(seq, space.unprefix(subject).split(".")[2], data) for seq, subject, _, data in rows]


async def wait_all_terminal(js: JetStreamContext, space: Space, workflow_ids: Iterable[str],
                            timeout_s: float, poll_s: float = 0.3) -> dict[str, WorkflowState]:
    """Poll the journal (no long-lived subscription, so a broker restart cannot strand us)."""
    pending = set(workflow_ids)
    done: dict[str, WorkflowState] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending:
        for wf in sorted(pending):
            with contextlib.suppress(Exception):
                state = replay.fold(await decisions(js, space, wf))
                if is_terminal(state):
                    done[wf] = state
        pending -= done.keys()
        if not pending:
            break
        if loop.time() > deadline:
            raise AssertionError(f"{len(pending)} workflows never ended: {sorted(pending)[:5]}")
        await asyncio.sleep(poll_s)
    return done


async def wait_for(predicate, timeout_s: float, poll_s: float = 0.1):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(poll_s)


# --- the executor process ---------------------------------------------------------------------


async def _serve_counter(log: Path, executor: str, ticks: int, tick_s: float) -> None:
    from moon.service import serve_worker  # noqa: PLC0415
    from moon.worker import Result, StepContext, Worker  # noqa: PLC0415
    from streams.broker import connect  # noqa: PLC0415
    from streams.config import space_from_env  # noqa: PLC0415

    async def count(ctx: StepContext) -> Result:
        start = int(ctx.resume_from or b"0")
        record(log, f"begin {ctx.key} {start} {executor}")
        for i in range(start, ticks):
            await asyncio.sleep(tick_s)
            record(log, f"tick {ctx.key} {i}")
            await ctx.checkpoint(str(i + 1).encode())
        record(log, f"done {ctx.key} {ticks}")
        return Result(output=str(ticks).encode())

    from envelope.local import local_trust  # noqa: PLC0415
    from moon.local import register_local_executor  # noqa: PLC0415
    from streams.broker import home_dir  # noqa: PLC0415

    space = space_from_env()
    async with connect(name=f"fault-{executor}") as nc:
        signer = await register_local_executor(nc.jetstream(), space, local_trust(home_dir()),
                                               home_dir(), executor, capabilities=["count"])
        worker = Worker(nc, executor_id=executor, handlers={"count": count}, signer=signer,
                        engines=local_trust(home_dir()).engines,
                        space=space)
        await serve_worker(worker)


def main(argv: list[str]) -> None:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["worker"])
    parser.add_argument("log", type=Path)
    parser.add_argument("--id", default="counter")
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--tick-s", type=float, default=0.2)
    args = parser.parse_args(argv)
    asyncio.run(_serve_counter(args.log, args.id, args.ticks, args.tick_s))


if __name__ == "__main__":
    main(sys.argv[1:])
