"""`maestro …`: plan a goal, explain a refusal, list the board, serve, keys, and the demo."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from envelope.cli import keys_app
from moon.cli import MetricsPort
from streams.broker import home_dir
from streams.logs import configure_logging

__all__ = ["app", "main"]

app = typer.Typer(help="MAESTRO: plans goals into executable, durable plans.",
                  no_args_is_help=True)
app.add_typer(keys_app, name="keys")
err = Console(stderr=True)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(goal_path: Path | None, psplib: Path | None, offers_path: Path | None) -> Any:
    from maestro import psplib as psp  # noqa: PLC0415
    from maestro.goal import load_goal, load_offers  # noqa: PLC0415
    from streams.replies import Refusal  # noqa: PLC0415

    if psplib is not None:
        return None, psp.to_problem(psp.load(psplib)), ()
    if goal_path is None:
        err.print("maestro: give a GOAL file or --psplib FILE")
        raise typer.Exit(1)
    goal = load_goal(goal_path)
    if isinstance(goal, Refusal):
        return goal, None, ()
    offers = load_offers(offers_path or EXAMPLES / "executors.yaml")
    if isinstance(offers, Refusal):
        err.print(f"maestro: offers: {offers.detail}", markup=False)
        raise typer.Exit(1)
    return goal, None, offers


@app.command("plan")
def plan_command(
    goal: Annotated[Path | None, typer.Argument(help="goal file (YAML or JSON)")] = None,
    offers: Annotated[Path | None, typer.Option(help="executor offers (YAML/JSON)")] = None,
    psplib: Annotated[Path | None, typer.Option(help="a PSPLIB .sm/.mm/.SCH instance")] = None,
    time_limit: Annotated[float, typer.Option("--time-limit", help="seconds for CP-SAT")] = 2.0,
    workers: Annotated[int, typer.Option(help="CP-SAT workers")] = 2,
    seed: Annotated[int, typer.Option(help="CP-SAT seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
) -> None:
    """Plan a goal (or a PSPLIB instance): the plan, a Gantt and its failure anticipation
    (backup per step, p(on time)), or reasons (exit 2)."""
    import random  # noqa: PLC0415

    from maestro.anticipate import Anticipation  # noqa: PLC0415
    from maestro.gantt import anticipation_table, gantt, to_json  # noqa: PLC0415
    from maestro.planner import plan_goal  # noqa: PLC0415
    from maestro.solve import SolveOptions, solve  # noqa: PLC0415
    from streams.replies import Refusal  # noqa: PLC0415

    options = SolveOptions(time_limit_s=time_limit, workers=workers, seed=seed)
    loaded, problem, offer_list = _load(goal, psplib, offers)
    foreseen: Anticipation | None = None  # PSPLIB modes are not executors: nothing to foresee
    if isinstance(loaded, Refusal):
        reasons: tuple[Refusal, ...] = (loaded,)
        from maestro.plan import Plan  # noqa: PLC0415

        plan = Plan(status="infeasible")
        deadline = None
    elif problem is not None:
        plan, reasons, deadline = solve(problem, options), (), problem.deadline
    else:
        # Seeded like the solver, so the same command prints the same p(on time).
        outcome = plan_goal(loaded, offer_list, options=options, rng=random.Random(seed))
        plan, reasons, deadline = outcome.plan, outcome.reasons, loaded.deadline_ms
        foreseen = outcome.anticipation
    if as_json:
        sys.stdout.write(json.dumps(to_json(plan, reasons, foreseen)) + "\n")
    else:
        if plan.assignments:
            Console().print(gantt(plan, deadline=deadline))
        if foreseen is not None:
            Console().print(anticipation_table(plan, foreseen))
        for r in reasons:
            err.print(f"refused ({r.reason.value}): {r.detail}", markup=False)
    refused = bool(reasons) or plan.status not in ("optimal", "feasible")
    raise typer.Exit(2 if refused else 0)


@app.command("explain")
def explain_command(
    goal: Path,
    offers: Annotated[Path | None, typer.Option(help="executor offers (YAML/JSON)")] = None,
    time_limit: Annotated[float, typer.Option("--time-limit")] = 2.0,
) -> None:
    """Why a goal has no plan, in terms you can act on."""
    from maestro.planner import plan_goal  # noqa: PLC0415
    from maestro.solve import SolveOptions  # noqa: PLC0415
    from streams.replies import Refusal  # noqa: PLC0415

    loaded, _, offer_list = _load(goal, None, offers)
    if isinstance(loaded, Refusal):
        reasons: tuple[Refusal, ...] = (loaded,)
    else:
        reasons = plan_goal(loaded, offer_list, options=SolveOptions(time_limit_s=time_limit)
                            ).reasons
    if not reasons:
        print("a plan exists: nothing to explain (see `maestro plan`)")
        return
    for r in reasons:
        print(f"- {r.reason.value} ({r.code}): {r.detail}")
    raise typer.Exit(2)


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

    for offer in asyncio.run(live()):
        caps = ", ".join(c.capability for c in offer.capabilities)
        print(f"{offer.executor:<20} {offer.organisation:<10} trust {offer.trust:.2f} "
              f"reliability {offer.reliability:.2f}  {caps}")


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
    configure_logging()
    try:
        raise typer.Exit(asyncio.run(_serve(data_dir, offers, metrics_port)))
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
        raise typer.Exit(asyncio.run(run_demo(data_dir or home_dir())))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def main() -> None:
    app()
