"""The workflow index is a projection of the journal: put when what a list shows changes, and
never behind the journal once a workflow ended, however its commands came back."""

from __future__ import annotations

import msgspec

from moon.index import WorkflowSummary, changed, summary
from moon.worker import Result, StepContext
from moon.workflow import initial
from streams.config import WORKFLOWS
from streams.decider import Decided

from .engine_world import dispatch, engine, index_entry, step, worker


async def _entry(js, space, wf: str) -> WorkflowSummary:
    kv = await js.key_value(space.bucket(WORKFLOWS.name))
    return msgspec.json.decode((await kv.get(wf)).value, type=WorkflowSummary)


async def _last_seq(js, space, wf: str) -> int:
    return (await js.get_last_msg(space.stream("MOON"), space.subject(f"moon.wf.{wf}.>"))).seq


async def test_a_dispatch_sent_again_after_the_end_leaves_the_index_at_the_journals_end(
    nc, js, space
):
    async def work(ctx: StepContext) -> Result:
        return Result(output=b"ok")

    async with engine(nc, space) as eng, worker(nc, space, {"work": work}):
        command = dispatch([step("a"), step("b", needs=("a",))])
        await eng.submit(command)
        await eng.wait_terminal(command.workflow_id, 30)
        last = await _last_seq(js, space, command.workflow_id)
        entry = await index_entry(js, space, command.workflow_id, lambda e: e.version == last)
        assert entry.status == "completed"
    # A caller's retry of the dispatch, at an engine that has not seen the workflow (restarted):
    # decided on nothing, its append is found to be the earlier one's duplicate.
    async with engine(nc, space) as fresh:
        again = await fresh.submit(command, redelivered=True)
        assert isinstance(again, Decided) and again.duplicate, again
        entry = await _entry(js, space, command.workflow_id)
    assert (entry.status, entry.version, entry.completed) == ("completed", last, 2)


def test_only_a_change_a_list_shows_is_put() -> None:
    state = msgspec.structs.replace(initial, workflow_id="w", status="running")
    assert changed(None, state) and changed(initial, state)
    assert not changed(state, msgspec.structs.replace(state, halted=True))
    assert summary(state, 7, 1).version == 7
