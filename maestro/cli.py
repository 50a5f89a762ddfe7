"""`maestro …`: plan a goal, explain a refusal, list the board, serve, keys, and the demo.

Only typer is imported at start-up (`maestro --help` in well under 0.2 s; `keys` is loaded when
it runs); operator errors end as one line and an exit code (streams.cli_errors).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from moon.cli import MetricsPort, configure_logging, home_dir
from streams.cli_errors import Exit, fail, lazy_group, read_input
from streams.cli_errors import run as run_cli
from streams.cli_params import install as _plain_options
from streams.loop import run as run_loop

__all__ = ["app", "main"]

_plain_options()  # moon.cli did already; said again so this CLI does not depend on it

app = typer.Typer(
    help="MAESTRO: plans goals into executable, durable plans.", no_args_is_help=True,
    pretty_exceptions_enable=False, rich_markup_mode=None,
    cls=lazy_group({"keys": ("envelope.cli", "keys_app",
                             "Ed25519 signing identities (did:key) and capability grants.")}),
)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for errors")] = False,
) -> None:
    """MAESTRO: plans goals into executable, durable plans."""


def _err() -> Any:
    from rich.console import Console  # noqa: PLC0415

    return Console(stderr=True, highlight=False)


class _Stderr:
    """`err.print(...)` as before, with rich imported only when something is printed."""

    def print(self, *args: Any, **kwargs: Any) -> None:
        _err().print(*args, **kwargs)


err = _Stderr()


def _out() -> Any:
    from rich.console import Console  # noqa: PLC0415

    return Console(highlight=False)


def _decode_file(path: Path, what: str, decode: Any) -> Any:
    """A goal or offers file decoded, or one line: missing, unreadable, malformed, invalid."""
    from streams.replies import Refusal  # noqa: PLC0415

    data = read_input(path, what)
    decoded = decode(data, "json" if path.suffix.lower() == ".json" else "yaml")
    if isinstance(decoded, Refusal):
        detail = decoded.detail
        if what == "goal" and b"timeout_ms" in data and b"name:" not in data:
            detail += " (this looks like a DAG for `moon dispatch`)"
        fail(f"{what} {path}: {detail}")
    return decoded


def _load(goal_path: Path | None, psplib: Path | None, offers_path: Path | None) -> Any:
    from maestro import psplib as psp  # noqa: PLC0415
    from maestro.goal import decode_goal, decode_offers  # noqa: PLC0415

    if psplib is not None:
        read_input(psplib, "PSPLIB instance")
        try:
            return None, psp.to_problem(psp.load(psplib)), ()
        except (ValueError, IndexError, KeyError) as error:
            fail(f"PSPLIB instance {psplib}: does not parse ({error})")
    if goal_path is None:
        fail("give a GOAL file or --psplib FILE (see `maestro plan --help`)", Exit.REFUSED)
    goal = _decode_file(goal_path, "goal", decode_goal)
    if offers_path is None:  # said, so nobody mistakes the demo executors for theirs
        offers_path = EXAMPLES / "executors.yaml"
        err.print(f"maestro: no --offers: planning with the bundled {offers_path.name} (demo "
                  "executors)", style="dim", markup=False, soft_wrap=True)
    offers = _decode_file(offers_path, "offers", decode_offers)
    return goal, None, offers


@app.command("plan")
def plan_command(
    goal: Annotated[Path | None, typer.Argument(help="goal file (YAML or JSON)")] = None,
    offers: Annotated[Path | None, typer.Option(
        help="executor offers (YAML/JSON; default: the bundled examples/executors.yaml)")] = None,
    psplib: Annotated[Path | None, typer.Option(help="a PSPLIB .sm/.mm/.SCH instance")] = None,
    time_limit: Annotated[float, typer.Option("--time-limit", help="seconds for CP-SAT", min=0.01)] = 2.0,  # noqa: E501
    workers: Annotated[int | None, typer.Option(
        help="CP-SAT workers (default: the cores this process may use)", min=1)] = None,
    seed: Annotated[int, typer.Option(help="CP-SAT seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
    html: Annotated[Path | None, typer.Option(
        "--html", help="also write the Gantt as a self-contained HTML page to this file")] = None,
) -> None:
    """Plan a goal (or a PSPLIB instance). Prints the plan, a Gantt chart, a start/end/executor/
    cost table and its failure anticipation (backup per step, p(on time)), or reasons (exit 2)."""
    import random  # noqa: PLC0415

    from maestro.anticipate import Anticipation  # noqa: PLC0415
    from maestro.gantt import anticipation_table, gantt, step_costs, to_json  # noqa: PLC0415
    from maestro.planner import plan_goal  # noqa: PLC0415
    from maestro.solve import SolveOptions, solve  # noqa: PLC0415
    from streams.replies import Refusal  # noqa: PLC0415

    options = SolveOptions(time_limit_s=time_limit, workers=workers, seed=seed)
    loaded, problem, offer_list = _load(goal, psplib, offers)
    foreseen: Anticipation | None = None  # PSPLIB modes are not executors: nothing to foresee
    reasons: tuple[Refusal, ...] = ()
    if problem is not None:
        plan, deadline = solve(problem, options), problem.deadline
    else:
        # Seeded like the solver, so the same command prints the same p(on time).
        outcome = plan_goal(loaded, offer_list, options=options, rng=random.Random(seed))
        plan, reasons, deadline = outcome.plan, outcome.reasons, loaded.deadline_ms
        foreseen, problem = outcome.anticipation, outcome.problem
    costs = step_costs(problem, plan) if problem is not None else {}
    if html is not None:
        from maestro.gantt_html import gantt_html  # noqa: PLC0415

        title = getattr(loaded, "name", None) or (psplib.stem if psplib else "plan")
        try:
            html.write_text(gantt_html(plan, deadline=deadline, costs=costs, title=title))
        except OSError as error:
            fail(f"--html {html}: cannot write ({error.strerror or error})")
    if as_json:
        sys.stdout.write(json.dumps(to_json(plan, reasons, foreseen)) + "\n")
    else:
        out = _out()
        if plan.assignments:
            out.print(gantt(plan, deadline=deadline, costs=costs, width=out.width))
        if foreseen is not None:
            out.print(anticipation_table(plan, foreseen))
        if html is not None:
            out.print(f"wrote {html}", markup=False)
        for r in reasons:
            _err().print(f"refused ({r.reason.value}): {r.detail}", markup=False)
    refused = bool(reasons) or plan.status not in ("optimal", "feasible")
    raise typer.Exit(Exit.REFUSED if refused else Exit.OK)


@app.command("explain")
def explain_command(
    goal: Path,
    offers: Annotated[Path | None, typer.Option(help="executor offers (YAML/JSON)")] = None,
    time_limit: Annotated[float, typer.Option("--time-limit", min=0.01)] = 2.0,
) -> None:
    """Why a goal has no plan, in terms you can act on."""
    from maestro.planner import plan_goal  # noqa: PLC0415
    from maestro.solve import SolveOptions  # noqa: PLC0415
    from streams.replies import Refusal  # noqa: PLC0415

    loaded, _, offer_list = _load(goal, None, offers)
    options = SolveOptions(time_limit_s=time_limit)
    reasons: tuple[Refusal, ...] = plan_goal(loaded, offer_list, options=options).reasons
    if not reasons:
        print("a plan exists: nothing to explain (see `maestro plan`)")
        return
    for r in reasons:
        print(f"- {r.reason.value} ({r.code}): {r.detail}")
    raise typer.Exit(Exit.REFUSED)


@app.command("board")
def board_command(
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Live executors and their offers (the MAT board, a KV bucket with liveness)."""
    from envelope.local import local_trust  # noqa: PLC0415
    from maestro.board import Board  # noqa: PLC0415
    from moon.local import local_registry  # noqa: PLC0415
    from streams.broker import connect  # noqa: PLC0415
    from streams.config import space_from_env  # noqa: PLC0415

    async def live() -> Any:
        async with connect(data_dir=data_dir, name="maestro-board", role="operator") as nc:
            js, space = nc.jetstream(), space_from_env()
            # Offers are believed only as the registry has the executor (its key and trust).
            registry = await local_registry(js, space, local_trust(data_dir or home_dir()))
            try:
                return await Board(js, space, registry=registry).live()
            finally:
                await registry.stop()


    for offer in run_loop(live()):
        caps = ", ".join(c.capability for c in offer.capabilities)
        print(f"{offer.executor:<20} {offer.organisation:<10} trust {offer.trust:.2f} "
              f"reliability {offer.reliability:.2f}  {caps}")


def _joined(nc: Any, home: Path, space: Any) -> None:
    """Say at start which broker and data dir MAESTRO joined."""
    import structlog  # noqa: PLC0415

    from moon.narration import joined  # noqa: PLC0415

    url = nc.connected_url.geturl() if nc.connected_url else ""
    structlog.get_logger("maestro.service").info(
        "joined", **joined(url, str(home.absolute()), space.prefix, "maestro"))


async def _serve(data_dir: Path | None, offers_path: Path | None,
                 metrics_port: int | None) -> int:
    from envelope.local import local_trust  # noqa: PLC0415
    from maestro.board import Board  # noqa: PLC0415
    from maestro.gateway import maestro_gate  # noqa: PLC0415
    from maestro.goal import load_offers  # noqa: PLC0415
    from maestro.service import Maestro  # noqa: PLC0415
    from moon.service import observed, on_sigterm, running  # noqa: PLC0415
    from streams.broker import connect  # noqa: PLC0415
    from streams.config import (  # noqa: PLC0415
        Topology,
        ensure_streams,
        replicas_from_env,
        space_from_env,
    )
    from streams.replies import Refusal  # noqa: PLC0415

    home = data_dir or home_dir()
    trust = local_trust(home)
    space = space_from_env()
    static = load_offers(offers_path) if offers_path else ()
    if isinstance(static, Refusal):
        err.print(f"maestro: offers: {static.detail}", markup=False)
        return 1
    async with connect(data_dir=home, name="maestro", role="maestro") as nc:
        _joined(nc, home, space)
        js = nc.jetstream()
        await ensure_streams(js, Topology(space=space, replicas=replicas_from_env()))
        from moon.local import local_registry  # noqa: PLC0415

        registry = await local_registry(js, space, trust)
        board = Board(js, space, registry=registry)

        async def offers() -> Any:
            return static or await board.live()

        maestro = Maestro(nc, trust.maestro, trust.maestro_grant, trust.moon.did, offers,
                          space=space, registry=registry, engines=trust.engines,
                          planners=trust.planners)
        gate = maestro_gate(nc, maestro, signer=trust.maestro,
                            trust=trust.trust_for(trust.maestro))
        on_sigterm(maestro.stop)

        async def serving() -> str | None:
            return None if gate.ready.is_set() else "gate not serving"

        async def replanning() -> str | None:
            return None if maestro.consuming else "replanner not consuming deviations"

        # Health is served once the gate and the replanner are both taking work, so a probe
        # never reads a service that is still starting as a failing one.
        async with gate.serving(), running(
            lambda ready: maestro.run_replanner(ready=ready), maestro.stop
        ) as replanner, observed(
            nc, "maestro", space=space, metrics_port=metrics_port,
            checks={"gate": serving, "replanner": replanning},
        ):
            await replanner
        await registry.stop()
    return 0


@app.command("serve")
def serve_command(
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    offers: Annotated[Path | None, typer.Option(help="static offers instead of the board")] = None,
    metrics_port: MetricsPort = None,
) -> None:
    """Serve map.maestro.plan/allocate/ratify/replan (and intents) and replan on deviations.
    Health: `health.maestro` and `$SRV.PING|INFO|STATS.maestro` over NATS."""

    if offers is not None:
        read_input(offers, "offers")  # a missing file is one line now, not a traceback later
    configure_logging()
    try:
        from maestro import jit  # noqa: PLC0415

        jit.start()  # a service compiles the GA's kernels once, before its first hard plan
        raise typer.Exit(run_loop(_serve(data_dir, offers, metrics_port)))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command("run")
def run_command(
    goal_path: Annotated[Path, typer.Argument(metavar="GOAL", help="a goal file (YAML/JSON)")],
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    follow: Annotated[bool, typer.Option(
        "--follow/--no-follow", help="a line on stderr per step transition, replan and "
                                     "deviation while it runs")] = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the workflow")] = 600.0,
) -> None:
    """Plan GOAL, allocate it, dispatch it through the signed gates and follow it to its end,
    on the stack `maestro up` runs; exit 0 when the workflow completed, 1 when it did not,
    2 when the plan was refused."""

    from streams.cli_errors import Exit, fail  # noqa: PLC0415

    if not goal_path.is_file():
        fail(f"maestro run: no goal file {goal_path}", Exit.INPUT)
    times: list[int] = []  # every event's time, by the engine's clock (the journal's)
    outcome = run_loop(_run_goal(goal_path, data_dir, timeout, follow, times))
    if isinstance(outcome, str):
        _err().print(f"maestro run: refused: {outcome}", markup=False)
        raise typer.Exit(int(Exit.REFUSED))
    state = outcome.state
    status = state.status if state is not None else "unknown"
    summary = {"workflow_id": outcome.workflow_id, "plan_id": outcome.plan_id, "status": status,
               "planned_makespan_ms": outcome.plan.get("makespan"),
               "actual_makespan_ms": max(times) - min(times) if times else None,
               "cost": outcome.plan.get("cost"), "audit": outcome.audit,
               "tokens": state.usage.tokens if state is not None else 0}
    if as_json:
        import json  # noqa: PLC0415

        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:<20} {value}")
    raise typer.Exit(int(Exit.OK if status == "completed" else Exit.FAILED))


async def _run_goal(goal_path: Path, data_dir: Path | None, timeout_s: float,
                    follow: bool, times: list[int]) -> Any:
    import time  # noqa: PLC0415

    from maestro.client import Refused, Stack  # noqa: PLC0415
    from moon.narration import narration  # noqa: PLC0415
    from streams.moon_events import MoonEvent  # noqa: PLC0415

    started = time.monotonic()

    def progress(event: MoonEvent) -> None:
        times.append(event.at_ms)
        line = narration("", event) if follow else None
        if line is None:
            return
        fields = " ".join(f"{k}={v}" for k, v in line.fields.items()
                          if k != "workflow" and v not in (None, ""))
        print(f"{time.monotonic() - started:8.2f}s  {line.event:<26} {fields}",
              file=sys.stderr, flush=True)

    try:
        async with Stack.connect(data_dir) as stack:
            return await stack.run(goal_path, timeout_s=timeout_s, on_event=progress)
    except Refused as refused:
        return str(refused)


@app.command("up")
def up_command(
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    port: Annotated[int, typer.Option(help="the broker's port on 127.0.0.1")] = 4222,
    http_port: Annotated[int, typer.Option(help="HTTP, MCP and A2A on 127.0.0.1")] = 8470,
    demo_executors: Annotated[bool, typer.Option(
        "--demo-executors", help="also run the example executors")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", help="log warnings only, not a line per step and replan")] = False,
    ui_actions: Annotated[bool, typer.Option(
        "--ui-actions", help="enable the web UI's operator actions (each through the gate)")
    ] = False,
) -> None:
    """The whole stack on this machine: broker, MOON, MAESTRO, HTTP/MCP/A2A and the web UI
    (/ui); Ctrl-C stops it. Logs a line per step transition and replan on stderr (--quiet:
    warnings only)."""
    import logging  # noqa: PLC0415

    from surfaces.up import run_up  # noqa: PLC0415

    configure_logging(logging.WARNING if quiet else logging.INFO)
    try:
        raise typer.Exit(run_loop(run_up(data_dir or home_dir(), port=port,
                                            http_port=http_port, demo_executors=demo_executors,
                                            ui_actions=ui_actions)))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command("demo")
def demo_command(
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Everything in one process on the embedded broker: plan, run, fail, replan, audit, replay."""
    import logging  # noqa: PLC0415

    from maestro.demo import run_demo  # noqa: PLC0415

    configure_logging(logging.WARNING)
    try:
        raise typer.Exit(run_loop(run_demo(data_dir or home_dir())))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def main() -> None:
    run_cli(app, "maestro")
