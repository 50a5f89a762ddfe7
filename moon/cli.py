"""`moon …`: the command line of the durable workflow engine. Each command parses, wires, prints.

Only typer is imported at start-up (`moon --help` in well under 0.2 s): everything else is
imported by the command that needs it, and operator errors end as one line and an exit code
(streams.cli_errors; `--debug` shows tracebacks).
"""

from __future__ import annotations

import importlib
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from streams.cli_errors import Exit, fail, read_input
from streams.cli_errors import run as run_cli
from streams.cli_params import install as _plain_options
from streams.loop import run as run_loop

if TYPE_CHECKING:
    from rich.console import Console

    from streams.tail import Row

__all__ = ["app", "main"]

_plain_options()  # str/int/float/Path options without importing pydantic (streams/cli_params.py)


class _Lazy:
    """A module imported on first use: asyncio alone is a sixth of the `--help` budget."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


asyncio: Any = _Lazy("asyncio")

# Plain (click) help: rich's help renderer alone costs more than the 0.2 s `--help` budget.
app = typer.Typer(help="MOON: durable workflows on NATS JetStream.", no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=None)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="embedded broker data dir (default .maestro or MAESTRO_HOME)"),
]
SEQ_HELP = ("a stream sequence number, as `moon status` (journal #N) and `moon tail` print "
            "them: sequences count every message of the stream, not one workflow's events")


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for errors")] = False,
) -> None:
    """MOON: durable workflows on NATS JetStream."""


# Lazy stand-ins for what the service wiring below uses, so importing this module (for --help)
# does not import nats, asyncio's event loop machinery or structlog.
def connect(*args: Any, **kwargs: Any) -> Any:
    from streams.broker import connect as connect_  # noqa: PLC0415

    return connect_(*args, **kwargs)


def home_dir() -> Path:
    from streams.broker import home_dir as home_dir_  # noqa: PLC0415

    return home_dir_()


def space_from_env() -> Any:
    from streams.config import space_from_env as space_from_env_  # noqa: PLC0415

    return space_from_env_()


def replicas_from_env() -> Any:
    from streams.config import replicas_from_env as replicas_from_env_  # noqa: PLC0415

    return replicas_from_env_()


def Topology(**kwargs: Any) -> Any:  # noqa: N802 - stands in for the class
    from streams.config import Topology as Topology_  # noqa: PLC0415

    return Topology_(**kwargs)


async def ensure_streams(*args: Any, **kwargs: Any) -> Any:
    from streams.config import ensure_streams as ensure_streams_  # noqa: PLC0415

    return await ensure_streams_(*args, **kwargs)


def configure_logging(*args: Any, **kwargs: Any) -> None:
    from streams.logs import configure_logging as configure_logging_  # noqa: PLC0415

    configure_logging_(*args, **kwargs)


def _console(stderr: bool = False) -> Console:
    from rich.console import Console  # noqa: PLC0415

    return Console(stderr=stderr, highlight=False)


_COLOURS = {"moon": "cyan", "audit": "magenta", "maestro": "green", "intent": "yellow"}


def _pretty(row: Row) -> Any:
    from rich.text import Text  # noqa: PLC0415

    stamp = time.strftime("%H:%M:%S", time.localtime(row.time_ms / 1000))
    event = row.event
    kind = ""
    if isinstance(event, dict):
        events = event.get("events")
        if isinstance(events, list):
            kind = ", ".join(str(e.get("type", "?")) for e in events if isinstance(e, dict))
        else:
            kind = str(event.get("type") or event.get("outcome") or "")
    colour = _COLOURS.get(row.subject.split(".", 1)[0], "white")
    line = Text()
    line.append(f"{stamp} ", style="dim")
    line.append(f"#{row.seq:<6} ", style="bold")
    line.append(f"{row.subject:<40} ", style=colour)
    line.append(kind)
    return line


async def _tail(filter_: str, *, data_dir: Path | None, as_json: bool, **options: Any) -> int:
    from streams.catalog import CODECS  # noqa: PLC0415
    from streams.codec import Undecodable  # noqa: PLC0415
    from streams.tail import rows, to_json_line  # noqa: PLC0415

    out, err = _console(), _console(stderr=True)
    async with connect(data_dir=data_dir, name="moon-tail", role="operator") as nc:
        js = nc.jetstream()
        async for item in rows(js, filter_, codecs=CODECS, space=space_from_env(), **options):
            if isinstance(item, Undecodable):
                err.print(f"skipped #{item.seq} on {item.subject}: {item.error}", markup=False)
                continue
            if as_json:
                sys.stdout.buffer.write(to_json_line(item) + b"\n")
            else:
                out.print(_pretty(item))
        sys.stdout.flush()
    return 0


@app.command("tail")
def tail_command(
    subject_filter: Annotated[str, typer.Argument(help="e.g. 'audit.>' or 'moon.wf.w1.>'")],
    from_seq: Annotated[int | None, typer.Option("--from-seq", help="start at this stream sequence")] = None,  # noqa: E501
    since: Annotated[str | None, typer.Option("--since", help="e.g. 30s, 10m, 2h")] = None,
    last: Annotated[int | None, typer.Option("--last", help="only the last N messages")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new ones")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    data_dir: DataDir = None,
) -> None:
    """Print the messages on SUBJECT_FILTER: decoded, one per line, with their stream
    sequence (#N)."""
    from streams.tail import TailError, parse_since  # noqa: PLC0415

    try:
        since_ms = parse_since(since, int(time.time() * 1000)) if since else None
    except TailError as error:
        fail(f"tail: {error}", Exit.REFUSED)
    try:
        code = _run(
            _tail(
                subject_filter, data_dir=data_dir, as_json=as_json, from_seq=from_seq,
                since_ms=since_ms, last=last, follow=follow,
            )
        )
    except TailError as error:  # nothing holds those subjects
        fail(f"tail: {error}", Exit.UNKNOWN)
    raise typer.Exit(code)


# --- services -------------------------------------------------------------------------------


# A flag, not an environment variable: one port per process (several services share a host).
MetricsPort = Annotated[int | None, typer.Option(
    "--metrics-port",
    help="serve Prometheus /metrics on this port (0: any free one) of MAESTRO_METRICS_ADDR "
         "(default 127.0.0.1)")]


def _joined(service: str, nc: Any, home: Path, space: Any, role: str) -> None:
    """Say at start which broker and data dir this service joined."""
    import structlog  # noqa: PLC0415

    from moon.narration import joined  # noqa: PLC0415

    url = nc.connected_url.geturl() if nc.connected_url else ""
    structlog.get_logger(service).info(
        "joined", **joined(url, str(home.absolute()), space.prefix, role))


async def _serve(data_dir: Path | None, concurrency: int, metrics_port: int | None) -> int:
    from envelope.local import local_trust  # noqa: PLC0415 - keep `moon tail` start-up light
    from moon.engine import Engine  # noqa: PLC0415
    from moon.gateway import moon_gate  # noqa: PLC0415
    from moon.local import local_registry, local_walls  # noqa: PLC0415
    from moon.service import serve_engine  # noqa: PLC0415

    home = data_dir or home_dir()
    trust = local_trust(home)
    space = space_from_env()
    async with connect(data_dir=home, name="moon-engine", role="engine") as nc:
        _joined("moon.engine", nc, home, space, "engine")
        js = nc.jetstream()
        await ensure_streams(js, Topology(space=space, replicas=replicas_from_env()))
        registry = await local_registry(js, space, trust)
        engine = Engine(nc, walls=local_walls(trust, writer=True), registry=registry,
                        space=space, concurrency=concurrency)
        gate = moon_gate(nc, engine, signer=trust.moon, trust=trust.trust_for(trust.moon))
        async with gate.serving():
            await serve_engine(engine, metrics_port=metrics_port)
        await registry.stop()
    return 0


@app.command("serve")
def serve_command(
    data_dir: DataDir = None,
    concurrency: Annotated[int, typer.Option(help="commands handled at once")] = 256,
    metrics_port: MetricsPort = None,
) -> None:
    """Run the engine: consume commands, journal decisions, send work orders and timers.
    Health: `health.moon-engine` and `$SRV.PING|INFO|STATS.moon-engine` over NATS."""
    configure_logging()
    try:
        raise typer.Exit(run_loop(_serve(data_dir, concurrency, metrics_port)))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def _worker(data_dir: Path | None, executor: str, capabilities: list[str],
                  command: list[str] | None, url: str | None, watts: float, capacity: int,
                  metrics_port: int | None) -> int:
    from moon.service import serve_worker  # noqa: PLC0415
    from moon.worker import Handler, Worker, http_handler, subprocess_handler  # noqa: PLC0415

    handler: Handler
    if command:
        import shutil  # noqa: PLC0415

        if shutil.which(command[0]) is None:  # say so now, not at the first step
            from streams.cli_errors import Exit, fail  # noqa: PLC0415

            fail(f"--exec program {command[0]!r} not found or not executable",
                 Exit.INPUT)
        handler = subprocess_handler(command)
    elif url:
        handler = http_handler(url)
    else:
        from moon.demo_handlers import echo  # noqa: PLC0415

        handler = echo
    from envelope.local import local_trust  # noqa: PLC0415
    from moon.local import register_local_executor  # noqa: PLC0415
    from streams.broker import provision_executor  # noqa: PLC0415
    from streams.roles import executor_role  # noqa: PLC0415

    home = data_dir or home_dir()
    space = space_from_env()
    # On this machine's stack the operator's key registers the executor's key (once per key)
    # and, on the embedded broker, gives it a user of its own; the worker then runs with that
    # user's rights alone. Elsewhere an operator does both beforehand.
    async with connect(data_dir=home, name=f"moon-register-{executor}", role="operator") as op:
        signer = await register_local_executor(
            op.jetstream(), space, local_trust(home), home, executor, capabilities=capabilities,
            now_ms=int(time.time() * 1000))
    if (home / "auth.conf").is_file():
        await asyncio.to_thread(provision_executor, home, executor, capabilities)
    async with connect(data_dir=home, name=f"moon-worker-{executor}",
                       role=executor_role(executor)) as nc:
        _joined("moon.worker", nc, home, space, executor_role(executor))
        worker = Worker(nc, executor_id=executor, handlers=dict.fromkeys(capabilities, handler),
                        signer=signer, engines=local_trust(home).engines, space=space,
                        watts=watts, capacity=capacity)
        await serve_worker(worker, metrics_port=metrics_port)
    return 0


@app.command("worker")
def worker_command(
    executor: Annotated[str, typer.Option("--id", help="this executor's id")],
    capability: Annotated[list[str], typer.Option("--capability", "-c", help="repeatable")],
    command: Annotated[str | None, typer.Option("--exec", help="run this command per step (stdin: the order as JSON)")] = None,  # noqa: E501
    url: Annotated[str | None, typer.Option("--http", help="POST each step to this URL")] = None,
    watts: Annotated[float, typer.Option(help="declared power draw, for joules")] = 0.0,
    capacity: Annotated[int, typer.Option(help="steps run at once")] = 8,
    data_dir: DataDir = None,
    metrics_port: MetricsPort = None,
) -> None:
    """Run an executor: take work orders for its capabilities, run them, report results.
    Health: `health.moon-worker` and `$SRV.PING|INFO|STATS.moon-worker` over NATS."""
    configure_logging()
    argv = shlex.split(command) if command else None
    try:
        raise typer.Exit(run_loop(
            _worker(data_dir, executor, capability, argv, url, watts, capacity, metrics_port)))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# --- commands against the journal ------------------------------------------------------------


async def _gate(data_dir: Path | None, method: str, body: Any, *,
                request_id: str | None = None, name: str = "moon-admin") -> Any:
    """An operator's action goes through MOON's gate, signed with the data dir's operator key:
    checked and audited like any caller's, and retried safely (same request id, first answer)."""
    from moon.operator import operator_call  # noqa: PLC0415

    home = data_dir or home_dir()
    async with connect(data_dir=home, name=name, role="operator") as nc:
        return await operator_call(nc, home, space_from_env(), f"moon.{method}", body,
                                   request_id=request_id)


def _run(coro: Any) -> Any:
    try:
        return run_loop(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _refused(outcome: Any) -> None:
    """A gate's refusal: one line, exit 2."""
    fail(f"refused ({outcome.reason.value}, {outcome.code}): {outcome.detail}", Exit.REFUSED)


_GOAL_KEYS = frozenset({"name", "objective", "pools", "organisations", "budget", "deadline_ms"})


def _dispatch_command(path: Path, now_ms: int) -> Any:
    """The file as a Dispatch, or one line: not YAML/JSON, a goal file, or not a DAG."""
    import msgspec  # noqa: PLC0415
    import yaml  # noqa: PLC0415

    from moon.dispatch_file import load_dispatch  # noqa: PLC0415

    data = read_input(path, "dispatch file")
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        fail(f"dispatch {path}: not valid YAML or JSON{where}: "
             f"{getattr(error, 'problem', None) or error}")
    if not isinstance(raw, dict):
        fail(f"dispatch {path}: not a DAG: expected a mapping with `steps` "
             "(see examples/dag.yaml)")
    if _GOAL_KEYS & set(raw):
        fail(f"dispatch {path}: this is a goal file (MAESTRO plans it): run it with "
             f"`maestro run {path}` or plan it with `maestro plan {path}`; `moon dispatch` takes "
             "a DAG (see examples/dag.yaml)")
    try:
        return load_dispatch(data, now_ms=now_ms)
    except msgspec.ValidationError as error:
        fail(f"dispatch {path}: not a DAG: {error} (see examples/dag.yaml)")


async def _dispatch(path: Path, data_dir: Path | None) -> Any:
    from moon.gateway import Budget, DispatchRequest  # noqa: PLC0415

    now = int(time.time() * 1000)
    command = _dispatch_command(path, now)
    budget = None
    if command.budget_tokens is not None or command.deadline_ms is not None:
        budget = Budget(tokens=command.budget_tokens,
                        deadline_ms=command.deadline_ms - now if command.deadline_ms else None)
    request = DispatchRequest(steps=command.steps, workflow_id=command.workflow_id,
                              budget=budget, plan_id=command.plan_id,
                              plan_revision=command.plan_revision,
                              on_failure=command.on_failure)
    from moon.operator import operator_call  # noqa: PLC0415
    from streams.replies import Refusal  # noqa: PLC0415

    home = data_dir or home_dir()
    async with connect(data_dir=home, name="moon-dispatch", role="operator") as nc:
        outcome = await operator_call(nc, home, space_from_env(), "moon.dispatch", request,
                                      request_id=command.command_id)
        if not isinstance(outcome, Refusal):
            await _listed(nc, command.workflow_id)
    return command.workflow_id, outcome


async def _listed(nc: Any, workflow_id: str, timeout_s: float = 2.0) -> None:
    """Return once `moon list` shows the workflow: the engine holds a young workflow's index
    entry back a moment (moon/projection.py INDEX_MS), and a `moon list` run right after this
    command should see what it dispatched. Best effort: the dispatch itself is done."""
    import contextlib  # noqa: PLC0415

    from streams.config import WORKFLOWS  # noqa: PLC0415

    kv = await nc.jetstream().key_value(space_from_env().bucket(WORKFLOWS.name))
    watcher = await kv.watch(workflow_id)
    try:
        async with asyncio.timeout(timeout_s):
            async for entry in watcher:
                if entry is not None and entry.value:
                    return
    except TimeoutError:
        return
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()


@app.command("dispatch")
def dispatch_command(
    file: Annotated[Path, typer.Argument(help="a DAG, YAML or JSON: see examples/dag.yaml")],
    data_dir: DataDir = None,
) -> None:
    """Dispatch a DAG (no planning) from a file; prints its id (idempotent by the file's
    request id). For a goal file use `maestro run`."""
    from streams.replies import Refusal  # noqa: PLC0415

    _, outcome = _run(_dispatch(file, data_dir))
    if isinstance(outcome, Refusal):
        _refused(outcome)
    print(_json({"workflow_id": outcome.workflow_id, "version": outcome.version,
                 "status": outcome.status}))


def _reader_walls(data_dir: Path | None) -> Any:
    from envelope.local import local_trust  # noqa: PLC0415
    from moon.local import local_walls  # noqa: PLC0415

    return local_walls(local_trust(data_dir or home_dir()))


class _Read:
    """A workflow's verified journal: (seq, decision) pairs, and where it stopped verifying."""

    def __init__(self, items: list[tuple[int, Any]], bad: tuple[int, str] | None,
                 pools: Any = None) -> None:
        self.items, self.bad, self.pools = items, bad, pools

    @property
    def version(self) -> int:
        return self.items[-1][0] if self.items else 0


async def _read(workflow_id: str, data_dir: Path | None, upto: int | None = None, *,
                live: bool = False) -> _Read:
    """The verified journal up to `upto`; a message the engine did not sign stops the read
    there (the workflow is quarantined) and the verified part before it is kept. `live`: also
    ask the broker whether anyone takes the orders of the steps that wait for an executor."""
    from moon.journal import journal  # noqa: PLC0415
    from streams.ids import is_valid_id  # noqa: PLC0415
    from streams.store import Unreadable  # noqa: PLC0415

    if not is_valid_id(workflow_id):
        fail(f"{workflow_id!r} is not a workflow id (letters, digits, _ and -, at most 64)",
             Exit.REFUSED)
    async with connect(data_dir=data_dir, name="moon-read", role="operator") as nc:
        store = journal(nc.jetstream(), space_from_env(), _reader_walls(data_dir))
        try:
            loaded = await store.read(workflow_id, upto=upto)
            items = [(i.seq, i.value) for i in loaded.items]
            return _Read(items, None, await _pools(nc, items) if live else None)
        except Unreadable as bad:
            before = await store.read(workflow_id, upto=bad.seq - 1) if bad.seq > 1 else None
            items = [(i.seq, i.value) for i in before.items] if before else []
            return _Read(items, (bad.seq, bad.detail[:200]))


async def _pools(nc: Any, items: list[tuple[int, Any]]) -> Any:
    """The WORK consumers of the steps no executor has started (moon/liveness.py)."""
    from moon import replay  # noqa: PLC0415
    from moon.liveness import pools  # noqa: PLC0415
    from moon.screens import waiting_pools  # noqa: PLC0415

    names = waiting_pools(replay.fold(d for _, d in items))
    return await pools(nc.jetstream(), space_from_env(), names) if names else None


def _known(read: _Read, workflow_id: str) -> _Read:
    if not read.items and read.bad is None:
        fail(f"unknown workflow {workflow_id!r}: no journal message (see `moon list`)",
             Exit.UNKNOWN)
    return read


def _quarantine_line(workflow_id: str, bad: tuple[int, str]) -> str:
    return (f"workflow {workflow_id} is quarantined: journal seq {bad[0]} does not verify "
            f"({bad[1]})")


def _width() -> int:
    import shutil  # noqa: PLC0415

    return shutil.get_terminal_size((80, 24)).columns


def _status_screen(workflow_id: str, read: _Read) -> Any:
    from moon import replay  # noqa: PLC0415
    from moon.screens import events_of, status_view  # noqa: PLC0415

    state = replay.fold(d for _, d in read.items)
    if not state.workflow_id:
        state = _replace(state, workflow_id=workflow_id)
    return state, status_view(state, events_of(read.items), width=_width(),
                              now_ms=int(time.time() * 1000), quarantined=read.bad,
                              items=read.items, pools=read.pools)


def _replace(value: Any, **changes: Any) -> Any:
    import msgspec  # noqa: PLC0415

    return msgspec.structs.replace(value, **changes)


@app.command("status")
def status_command(
    workflow_id: str,
    watch: Annotated[bool, typer.Option("--watch", help="redraw live until it ends")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="results decoded as text")] = False,
    data_dir: DataDir = None,
) -> None:
    """Steps with start, end and duration, results and errors, why it waits, and the journal's
    messages with their stream sequence (#N, what replay/fork/diff take). Exit 3 when its
    journal does not verify (quarantined)."""
    from moon.workflow import is_terminal  # noqa: PLC0415

    read = _known(_run(_read(workflow_id, data_dir, live=True)), workflow_id)
    if as_json:
        from moon import replay  # noqa: PLC0415
        from moon.screens import events_of, state_json  # noqa: PLC0415

        state = replay.fold(d for _, d in read.items)
        print(_json(state_json(state, events_of(read.items), quarantined=read.bad,
                               pools=read.pools)))
    elif not watch:
        _console().print(_status_screen(workflow_id, read)[1])
    else:
        from rich.live import Live  # noqa: PLC0415

        state, screen = _status_screen(workflow_id, read)
        with Live(screen, refresh_per_second=4, console=_console()) as live:
            while not is_terminal(state) and read.bad is None:
                time.sleep(0.5)
                read = _run(_read(workflow_id, data_dir, live=True))
                state, screen = _status_screen(workflow_id, read)
                live.update(screen)
    if read.bad is not None:
        if as_json or watch:
            sys.stderr.write(f"moon: {_quarantine_line(workflow_id, read.bad)}\n")
        raise typer.Exit(Exit.JOURNAL)


async def _list(data_dir: Path | None) -> list[dict[str, Any]]:
    """The index's entries (moon.index.WorkflowSummary) as dicts: importing the engine to
    decode them would double `moon list`'s start-up."""
    import msgspec  # noqa: PLC0415
    from nats.js.errors import BucketNotFoundError  # noqa: PLC0415

    from streams.config import WORKFLOWS  # noqa: PLC0415

    async with connect(data_dir=data_dir, name="moon-list", role="operator") as nc:
        try:
            kv = await nc.jetstream().key_value(space_from_env().bucket(WORKFLOWS.name))
        except BucketNotFoundError:
            fail("no MOON workflow index on this broker: has `moon serve` run on it (check "
                 "NATS_URL and MAESTRO_SPACE)?", Exit.UNKNOWN)
        # One watcher delivers every entry's latest value: a get per key was a round trip
        # per workflow.
        watcher = await kv.watchall(ignore_deletes=True)
        out = []
        try:
            async for entry in watcher:
                if entry is None:  # the initial values are all in
                    break
                if entry.value:
                    row = msgspec.json.decode(entry.value)
                    if isinstance(row, dict) and "workflow_id" in row:
                        out.append(row)
        finally:
            await watcher.stop()
        return out


def _status_filter(value: str | None) -> str | None:
    from moon.list_screen import LIST_STATUSES  # noqa: PLC0415

    if value is not None and value not in LIST_STATUSES:
        raise typer.BadParameter(f"{value!r} is not a status; one of {', '.join(LIST_STATUSES)}")
    return value


@app.command("list")
def list_command(
    status: Annotated[str | None, typer.Option(
        help="only workflows in this status: running, completed, failed, compensating, "
             "compensated, cancelled, quarantined", callback=_status_filter)] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """Workflows from the index (a KV bucket), without scanning the journal; a quarantined
    one with why."""
    from moon.list_screen import list_lines  # noqa: PLC0415

    rows_ = [r for r in _run(_list(data_dir)) if status is None or r.get("status") == status]
    rows_.sort(key=lambda r: r.get("updated_ms", 0))
    if as_json:
        for r in rows_:
            print(_json(r))
        return
    if not rows_:
        print(f"no workflows{f' in status {status}' if status else ''} "
              "(dispatch one: moon dispatch examples/dag.yaml, or maestro run)")
        return
    import os  # noqa: PLC0415

    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    print("\n".join(list_lines(rows_, colour=colour)))


def _upto(read: _Read, workflow_id: str, seq: int, flag: str) -> list[tuple[int, Any]]:
    """The decisions at or before `seq`, or one line saying which numbers this workflow has."""
    if seq < 1:
        fail(f"{flag} {seq}: must be >= 1 ({SEQ_HELP})", Exit.REFUSED)
    kept = [(s, d) for s, d in read.items if s <= seq]
    if not kept and read.items:
        fail(f"workflow {workflow_id} has no journal message at or before seq {seq}: its "
             f"messages are #{read.items[0][0]}..#{read.version} ({flag} takes {SEQ_HELP})",
             Exit.UNKNOWN)
    return kept


@app.command("replay")
def replay_command(
    workflow_id: str,
    to_seq: Annotated[int | None, typer.Option("--to-seq", help=f"fold up to this: {SEQ_HELP}")] = None,  # noqa: E501
    verify: Annotated[bool, typer.Option("--verify", help="re-decide every command")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """Fold the journal up to a stream sequence (as `moon status` prints them) and print the
    state then. Exit 3 when --verify finds a mismatch or the journal does not verify."""
    from moon import replay  # noqa: PLC0415
    from moon.screens import decoded, events_of, status_view  # noqa: PLC0415

    read = _known(_run(_read(workflow_id, data_dir)), workflow_id)
    items = read.items if to_seq is None else _upto(read, workflow_id, to_seq, "--to-seq")
    decisions = [d for _, d in items]
    state = replay.fold(decisions)
    mismatches = replay.verify(decisions) if verify else []
    version = items[-1][0] if items else 0
    if as_json:
        print(_json({"workflow_id": workflow_id, "seq": version, "state": decoded(state),
                     "verified": verify and not mismatches, "mismatches": mismatches,
                     "quarantined": read.bad and {"seq": read.bad[0], "detail": read.bad[1]}}))
    else:
        _console().print(status_view(state, events_of(items), width=_width(),
                                     quarantined=read.bad, items=items, hints=False))
        print(f"folded {len(decisions)} decisions up to #{version}")
        if verify:
            print("verify: ok, every recorded command re-decides the same events"
                  if not mismatches else f"verify: {len(mismatches)} mismatches")
    if mismatches or read.bad is not None:
        raise typer.Exit(Exit.JOURNAL)


@app.command("diff")
def diff_command(
    workflow_id: str,
    a: Annotated[int, typer.Argument(help=f"from: {SEQ_HELP}")],
    b: Annotated[int, typer.Argument(help="to: a stream sequence, like A")],
    data_dir: DataDir = None,
) -> None:
    """What changed in a workflow between stream sequences A and B (as `moon status` prints
    them), one JSON object per change."""
    from moon import replay  # noqa: PLC0415

    read = _known(_run(_read(workflow_id, data_dir)), workflow_id)
    lo, hi = min(a, b), max(a, b)
    _upto(read, workflow_id, hi, "diff B")
    before = replay.fold(d for s, d in read.items if s <= lo)
    after = replay.fold(d for s, d in read.items if s <= hi)
    for change in replay.diff(before, after):
        print(_json(change))


async def _fork(workflow_id: str, at_seq: int, new_id: str, data_dir: Path | None) -> Any:
    from moon.gateway import ForkRequest  # noqa: PLC0415

    return await _gate(data_dir, "fork", ForkRequest(workflow_id=workflow_id, at_seq=at_seq,
                                                     new_workflow_id=new_id), name="moon-fork")


@app.command("fork")
def fork_command(
    workflow_id: str,
    at_seq: Annotated[int, typer.Option("--at-seq", help=f"the state to start from: {SEQ_HELP}")],
    new_id: Annotated[str, typer.Option("--as", help="the new workflow's id")],
    data_dir: DataDir = None,
) -> None:
    """Start a new workflow from the state of WORKFLOW_ID at a stream sequence (as `moon
    status` prints them)."""
    from streams.replies import Refusal  # noqa: PLC0415

    outcome = _run(_fork(workflow_id, at_seq, new_id, data_dir))
    if isinstance(outcome, Refusal):
        _refused(outcome)
    print(_json({"workflow_id": new_id, "forked_from": workflow_id, "at_seq": at_seq}))


async def _command(workflow_id: str, kind: str, reason: str, data_dir: Path | None) -> Any:
    from moon.gateway import CancelRequest, CompensateRequest  # noqa: PLC0415

    request = (CompensateRequest if kind == "compensate" else CancelRequest)(
        workflow_id=workflow_id, reason=reason)
    return await _gate(data_dir, kind, request)


def _admin(workflow_id: str, kind: str, reason: str, data_dir: Path | None) -> None:
    from streams.replies import Refusal  # noqa: PLC0415

    outcome = _run(_command(workflow_id, kind, reason, data_dir))
    if isinstance(outcome, Refusal):
        _refused(outcome)
    print(_json({"workflow_id": workflow_id, "status": outcome.status,
                 "version": outcome.version}))


@app.command("compensate")
def compensate_command(
    workflow_id: str, reason: str = "operator", data_dir: DataDir = None
) -> None:
    """Undo the completed steps of a workflow, dependants first."""
    _admin(workflow_id, "compensate", reason, data_dir)


@app.command("cancel")
def cancel_command(workflow_id: str, reason: str = "operator", data_dir: DataDir = None) -> None:
    """Stop scheduling new steps of a workflow."""
    _admin(workflow_id, "cancel", reason, data_dir)


def main() -> None:
    run_cli(app, "moon")


def _json(value: Any) -> str:
    import msgspec  # noqa: PLC0415

    return msgspec.json.encode(value).decode()
