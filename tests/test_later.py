"""envelope/later.py: work is handed over only to a gate collecting it, inside, in its task."""

from __future__ import annotations

import asyncio

from envelope.later import active, collecting, hand_over


async def test_work_is_handed_over_only_where_a_gate_collects_it() -> None:
    async def effect() -> None:
        return None

    alone = asyncio.ensure_future(effect())
    assert not active() and not hand_over(alone)  # nobody collects: the caller awaits it
    await alone
    with collecting() as pending:
        assert active()
        inner = asyncio.ensure_future(effect())
        assert hand_over(inner) and pending == [inner]

        async def in_another_task() -> bool:  # it copied the context, but is not the request
            return active()

        assert not await asyncio.create_task(in_another_task())
    late = asyncio.ensure_future(effect())
    assert not active() and not hand_over(late)  # the block is over
    await asyncio.gather(late, *pending)
    assert len(pending) == 1
