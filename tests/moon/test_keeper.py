"""WORK's keeper (moon/keeper.py): a message nobody reads stays in WORK while orders come and
go, so a claim never empties the stream's last block (which costs the broker a new block file
per claim)."""

from __future__ import annotations

from nats.js import api

from moon.keeper import KEEP_BYTES, KEEP_TTL, Keeper
from moon.worker import StepContext
from streams.subjects import work_kept

from .engine_world import dispatch, engine, step, worker


async def _ok(ctx: StepContext) -> bytes:
    return ctx.order.step.encode()


async def test_work_holds_the_engines_keeper_after_every_order_was_taken(nc, js, space):
    # The engine's keeper task publishes before `run` is ready (its subscriptions' round trips
    # come after it on the same connection), so the broker has it before the first order.
    # Not eager: every order goes through WORK (moon/handoff.py would hand b's to the worker).
    async with engine(nc, space) as eng, worker(nc, space, {"work": _ok}, eager=False):
        commands = [dispatch([step("a"), step("b", needs=("a",))]) for _ in range(3)]
        for command in commands:
            await eng.submit(command)
        for command in commands:
            assert (await eng.wait_terminal(command.workflow_id, 30)).status == "completed"
        info = await js.stream_info(space.stream("WORK"))
        kept = await js.get_last_msg(space.stream("WORK"), space.subject(work_kept()))
    assert info.state.last_seq > 6  # the six orders were stored here, and taken
    assert info.state.messages == 1  # without the keeper: 0, the last block emptied
    assert kept.headers is not None and kept.headers.get("Nats-TTL") == KEEP_TTL


async def test_a_keeper_replaces_the_one_before_it_and_is_due_after_enough_orders(js, space):
    stream = space.stream("WORK")
    keeper = Keeper(js, stream, space.subject(work_kept()))
    assert await keeper.keep() and await keeper.keep()
    info = await js.stream_info(stream)
    assert (info.state.messages, info.state.last_seq) == (1, 2)  # the first one deleted
    keeper.sent(KEEP_BYTES - 1)
    assert not keeper.due.is_set()
    keeper.sent(1)
    assert keeper.due.is_set()


async def test_without_per_message_ttls_a_keeper_is_refused_and_nothing_else(js, space):
    """WORK as made before the keeper (no per-message TTLs): the broker refuses the keeper,
    and the keeper says so instead of raising into the engine."""
    stream = space.stream("OLD_WORK")  # the namespace's WORK is made by the fixture, with them
    await js.add_stream(api.StreamConfig(name=stream, subjects=[space.subject("old.>")],
                                         retention=api.RetentionPolicy.WORK_QUEUE))
    assert not await Keeper(js, stream, space.subject("old.kept")).keep()
    assert (await js.stream_info(stream)).state.messages == 0
