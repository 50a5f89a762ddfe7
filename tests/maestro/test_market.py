"""The call for bids inside MAESTRO's plan and allocate, and the anticipation journaled with a plan.

Real nats-server, real Bidders, a running MOON engine behind its gate (so a dispatch that should
not happen would land in the journal and the test would see it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgspec
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext
from typer.testing import CliRunner

from envelope.local import LocalTrust
from maestro.anticipate import Anticipation, anticipate
from maestro.board import Award, Bid, Bidder
from maestro.cli import app
from maestro.goal import Budget, Goal, Offer, Step
from maestro.plan import Plan
from maestro.planner import plan_goal
from maestro.service import Allocated, Maestro, Market
from maestro.solve import SolveOptions
from moon.gateway import moon_gate
from streams.plan_events import (
    AllocationRefused,
    PlanAllocated,
    PlanBatch,
    PlanEvent,
    PlanProposed,
    PlanRefused,
)
from streams.replies import Reason, Refusal
from streams.subjects import Space
from tests import walls as tw
from tests.maestro.conftest import EXAMPLES, Executors, executors, offer

from ..moon.engine_world import engine

# A token budget and a deadline: the dispatch carries both limits to MOON's gate.
GOAL = Goal(
    name="chain", deadline_ms=60_000, budget=Budget(tokens=10_000, cost=100),
    steps=(Step("a", "work", duration_ms=300), Step("b", "work", needs=("a",), duration_ms=300),
           Step("c", "work", needs=("b",), duration_ms=300)),
)
TWO_KINDS = Goal(
    name="two-kinds", deadline_ms=60_000, budget=Budget(tokens=10_000),
    steps=(Step("a", "work", duration_ms=300), Step("b", "check", needs=("a",), duration_ms=300)),
)
# Both run a Bidder in these tests, and say so on the board: a tender waits for them.
BOARD = tuple(msgspec.structs.replace(o, bids=True) for o in (
    offer("cheap", ("work", 300, 1), capacity=3), offer("dear", ("work", 300, 5), capacity=3)))


# A tender ends as soon as every expected bidder has bid, so a long window costs nothing unless
# someone stays silent; the default 0.3 s is short enough for a busy machine to miss a bid in.
BID_S = 5.0
SILENT_BID_S = 2.0  # for a test where one bidder never bids: the whole window is waited out


def _maestro(nc: Nats, space: Space, trust: LocalTrust, board: Sequence[Offer],
             market: Market | None = None, *, known: Executors | None = None) -> Maestro:
    async def offers() -> Sequence[Offer]:
        return board

    return Maestro(nc, trust.maestro, trust.maestro_grant, trust.moon.did, offers, space=space,
                   market=market or Market(bid_timeout_s=BID_S),
                   options=SolveOptions(time_limit_s=2.0, workers=2),
                   registry=known.registry if known is not None else None)


@contextlib.asynccontextmanager
async def _moon(nc: Nats, space: Space, trust: LocalTrust) -> AsyncIterator[None]:
    async with engine(nc, space) as eng:
        gate = moon_gate(nc, eng, signer=trust.moon, trust=trust.trust_for(trust.moon))
        async with gate.serving():
            yield


async def _journal(maestro: Maestro, plan_id: str) -> list[PlanEvent]:
    loaded = await maestro.runner.store.read(plan_id)
    batches: list[PlanBatch] = [item.value for item in loaded.items]
    return [e for batch in batches for e in batch.events]


def _one(events: list[PlanEvent], kind: type[PlanEvent]) -> PlanEvent:
    found = [e for e in events if isinstance(e, kind)]
    assert len(found) == 1, events
    return found[0]


# --- pure ----------------------------------------------------------------------------------


def test_plan_events_written_before_bids_and_anticipation_still_decode() -> None:
    """A PLANS journal from before the contract net: the new fields take their defaults."""
    old = (b'{"command_id":"c1","events":[{"type":"maestro.plan.proposed","at_ms":1,'
           b'"plan_id":"p","goal":"e30=","offers":"W10=","plan":"e30=",'
           b'"awaiting_ratification":false,"reasons":[]},{"type":"maestro.plan.allocated",'
           b'"at_ms":2,"plan_id":"p","workflow_id":"wf-p","orders":[]}]}')
    batch = msgspec.json.decode(old, type=PlanBatch)
    proposed, allocated = batch.events
    assert isinstance(proposed, PlanProposed)
    assert (proposed.bids, proposed.anticipation) == (b"", b"")
    assert isinstance(allocated, PlanAllocated)
    assert allocated.awards == b""


# --- the call for bids in plan and allocate ------------------------------------------------


async def test_bids_change_the_chosen_executor_and_the_award_binds_the_winner(
    nc: Nats, js: JetStreamContext, space: Space, tmp_path: Path
) -> None:
    """cheap advertised 1 but bids 9 now; dear bids its 5: the plan goes to dear, at 5."""
    assert {a.executor for a in plan_goal(GOAL, BOARD).plan.assignments} == {"cheap"}
    trust = tw.trust_for(space)
    async with executors(js, space, "cheap", "dear") as known:
        await _bids_change_the_winner(nc, js, space, trust, known)


async def _bids_change_the_winner(nc: Nats, js: JetStreamContext, space: Space,
                                  trust: LocalTrust, known: Executors) -> None:
    maestro = _maestro(nc, space, trust, BOARD, known=known)
    cheap = Bidder(nc, space, offer("cheap", ("work", 300, 9), capacity=3),
                   signer=known.key("cheap"))
    dear = Bidder(nc, space, BOARD[1], signer=known.key("dear"))
    async with _moon(nc, space, trust), cheap, dear:
        outcome = await maestro.plan(GOAL, plan_id="p1")
        assert outcome.decision == "planned", outcome.reasons
        assert {a.executor for a in outcome.plan.assignments} == {"dear"}
        assert outcome.plan.cost == 15
        allocated = await maestro.allocate("p1")
    assert isinstance(allocated, Allocated), allocated
    assert allocated.awards == 1
    events = await _journal(maestro, "p1")
    proposed = _one(events, PlanProposed)
    assert isinstance(proposed, PlanProposed)
    bids = msgspec.json.decode(proposed.bids, type=list[Bid])
    assert {(b.executor, b.quotes[0].rate) for b in bids} == {("cheap", 9), ("dear", 5)}
    planned_with = msgspec.json.decode(proposed.offers, type=list[Offer])
    assert {o.executor: o.capabilities[0].rate for o in planned_with} == {"cheap": 9, "dear": 5}
    assert cheap.awards == []
    assert [(a.executor, a.steps) for a in dear.awards] == [("dear", ("a", "b", "c"))]
    allocation = _one(events, PlanAllocated)
    assert isinstance(allocation, PlanAllocated)
    assert msgspec.json.decode(allocation.awards, type=list[Award]) == dear.awards
    moon = await js.stream_info(space.stream("MOON"))
    assert moon.state.messages >= 1  # dispatched


async def test_a_plan_refused_at_the_bid_prices_journals_those_bids(
    nc: Nats, js: JetStreamContext, space: Space, tmp_path: Path
) -> None:
    """At board prices the chain costs 3; the only executor now bids 9 a step: over a budget
    of 10, refused, and the refusal keeps the bid that priced it."""
    board = (msgspec.structs.replace(offer("only", ("work", 300, 1), capacity=3), bids=True),)
    goal = msgspec.structs.replace(GOAL, budget=Budget(tokens=10_000, cost=10))
    assert plan_goal(goal, board).decision == "planned"
    async with executors(js, space, "only") as known:
        maestro = _maestro(nc, space, tw.trust_for(space), board, known=known)
        async with Bidder(nc, space, offer("only", ("work", 300, 9), capacity=3),
                          signer=known.key("only")):
            outcome = await maestro.plan(goal, plan_id="p1")
    assert outcome.decision == "refused"
    assert {r.reason for r in outcome.reasons} == {Reason.OVER_BUDGET}
    refused = _one(await _journal(maestro, "p1"), PlanRefused)
    assert isinstance(refused, PlanRefused)
    bids = msgspec.json.decode(refused.bids, type=list[Bid])
    assert [(b.executor, b.quotes[0].rate) for b in bids] == [("only", 9)]


async def test_a_silent_executor_keeps_its_board_price_unless_bids_are_required(
    nc: Nats, js: JetStreamContext, space: Space, tmp_path: Path
) -> None:
    """cheap runs no Bidder: planned at its board price and never awarded; strict: excluded.
    (The goal sets no budget nor deadline: dispatched without one.)"""
    trust = tw.trust_for(space)
    unbounded = msgspec.structs.replace(GOAL, budget=Budget(), deadline_ms=None)
    async with executors(js, space, "cheap", "dear") as known:
        lenient = _maestro(nc, space, trust, BOARD, Market(bid_timeout_s=SILENT_BID_S),
                           known=known)
        strict = _maestro(nc, space, trust, BOARD,
                          Market(require_bid=True, bid_timeout_s=SILENT_BID_S), known=known)
        dear = Bidder(nc, space, BOARD[1], signer=known.key("dear"))
        async with _moon(nc, space, trust), dear:
            silent = await lenient.plan(unbounded, plan_id="p1")
            allocated = await lenient.allocate("p1")
            required = await strict.plan(GOAL, plan_id="p2")
    assert {a.executor for a in silent.plan.assignments} == {"cheap"}
    assert isinstance(allocated, Allocated), allocated
    assert allocated.awards == 0  # the only bidder was not chosen; cheap is bound by its order
    assert dear.awards == []
    assert {a.executor for a in required.plan.assignments} == {"dear"}


async def test_an_award_refusal_refuses_the_allocation_and_dispatches_nothing(
    nc: Nats, js: JetStreamContext, space: Space, tmp_path: Path
) -> None:
    """x's bid expires before the award: the allocation is refused with x's reason, y's ack is
    kept as evidence, and MOON never hears of the plan."""
    trust = tw.trust_for(space)
    board = tuple(msgspec.structs.replace(o, bids=True)
                  for o in (offer("x", ("work", 300, 1)), offer("y", ("check", 300, 1))))
    async with executors(js, space, "x", "y") as known:
        await _award_refused(nc, js, space, trust, known, board=board)


async def _award_refused(nc: Nats, js: JetStreamContext, space: Space, trust: LocalTrust,
                         known: Executors, *, board: tuple[Offer, ...]) -> None:
    maestro = _maestro(nc, space, trust, board, known=known)
    x = Bidder(nc, space, board[0], valid_for_ms=1_500, signer=known.key("x"))
    y = Bidder(nc, space, board[1], signer=known.key("y"))
    async with _moon(nc, space, trust), x, y:
        outcome = await maestro.plan(TWO_KINDS, plan_id="p1")
        assert outcome.decision == "planned", outcome.reasons
        expires = x.bids["p1"].valid_until_ms
        deadline = time.monotonic() + 10
        while time.time() * 1000 <= expires:  # the condition is the wall clock passing it
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        refused = await maestro.allocate("p1")
    assert isinstance(refused, Refusal), refused
    assert refused.reason is Reason.EXPIRED
    assert refused.evidence["executor"] == "x"
    assert refused.evidence["steps"] == "a"
    assert x.awards == []
    assert [a.steps for a in y.awards] == [("b",)]
    events = await _journal(maestro, "p1")
    assert not any(isinstance(e, PlanAllocated) for e in events)
    record = _one(events, AllocationRefused)
    assert isinstance(record, AllocationRefused)
    assert [r.reason for r in record.reasons] == [Reason.EXPIRED]
    assert msgspec.json.decode(record.awards, type=list[Award]) == y.awards
    _, state = await maestro.runner.load("p1", use_cache=False)
    assert state.status == "planned"
    for stream in ("MOON", "MOON_CMD", "AUDIT"):
        info = await js.stream_info(space.stream(stream))
        assert info.state.messages == 0, f"{stream} heard of a refused allocation"


# --- anticipation --------------------------------------------------------------------------


async def test_the_journaled_plan_carries_its_anticipation(
    nc: Nats, js: JetStreamContext, space: Space, tmp_path: Path
) -> None:
    """Backups and p(on time) ride in PlanProposed: the seeded estimate, not recomputed later."""
    board = (offer("home", ("work", 300, 1), reliability=0.6, capacity=3),
             offer("away", ("work", 300, 5), reliability=0.99, capacity=3))
    maestro = _maestro(nc, space, tw.trust_for(space), board, Market(bid_timeout_s=0))
    outcome = await maestro.plan(GOAL, plan_id="p1")
    assert outcome.decision == "planned"
    proposed = _one(await _journal(maestro, "p1"), PlanProposed)
    assert isinstance(proposed, PlanProposed)
    journaled = msgspec.json.decode(proposed.anticipation, type=Anticipation)
    assert journaled == outcome.anticipation
    assert {(b.step, b.executor) for b in journaled.backups} == {
        ("a", "away"), ("b", "away"), ("c", "away")}
    assert 0.0 < journaled.p_on_time < 1.0  # home fails 40 % of attempts
    assert outcome.problem is not None
    again = anticipate(outcome.problem, msgspec.json.decode(proposed.plan, type=Plan),
                       random.Random(0), samples=maestro.anticipation_samples)
    assert again == journaled  # seeded like the solver: the same plan gives the same estimate


def test_maestro_plan_shows_backups_and_the_on_time_probability() -> None:
    """`maestro plan --json` has an anticipation key; the text output has the table."""
    runner = CliRunner()
    goal = str(EXAMPLES / "goal.yaml")
    as_json = runner.invoke(app, ["plan", goal, "--json", "--time-limit", "2"])
    assert as_json.exit_code == 0, as_json.output
    shown = json.loads(as_json.stdout)
    foreseen = shown["anticipation"]
    assert 0.0 < foreseen["p_on_time"] <= 1.0
    steps = {s["id"]: s for s in foreseen["steps"]}
    assert set(steps) == {s["id"] for s in shown["steps"]}
    assert steps["analyse"]["backup"] == "globex-llm"  # acme-writer's only peer
    assert steps["legal-review"]["backup"] is None  # nobody else holds trust 0.9
    text = runner.invoke(app, ["plan", goal, "--time-limit", "2"], env={"COLUMNS": "160"})
    assert text.exit_code == 0, text.output
    assert "failure anticipation" in text.stdout
    assert f"p(on time) {foreseen['p_on_time']:.1%}" in text.stdout
