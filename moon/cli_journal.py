"""The journal and MOON's gate as the `moon` commands reach them: the async halves.

A workflow's verified journal (`_read`), the workflows index (`_list`), and an operator's
actions through the gate (`_dispatch`, `_fork`, `_command`). moon/cli.py parses, calls these
in an event loop and prints; every heavy import here is made inside the function that needs it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from moon.cli_lazy import asyncio, connect, home_dir, space_from_env
from streams.cli_errors import Exit, fail, read_input

__all__ = ["_Read", "_command", "_dispatch", "_fork", "_known", "_list", "_read"]


async def _gate(data_dir: Path | None, method: str, body: Any, *,
                request_id: str | None = None, name: str = "moon-admin") -> Any:
    """An operator's action goes through MOON's gate, signed with the data dir's operator key:
    checked and audited like any caller's, and retried safely (same request id, first answer)."""
    from moon.gateway import capability_of  # noqa: PLC0415
    from moon.operator import operator_call  # noqa: PLC0415

    home = data_dir or home_dir()
    async with connect(data_dir=home, name=name, role="operator") as nc:
        return await operator_call(nc, home, space_from_env(), f"moon.{method}", body,
                                   request_id=request_id, capability=capability_of(method))


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


async def _fork(workflow_id: str, at_seq: int, new_id: str, data_dir: Path | None) -> Any:
    from moon.gateway import ForkRequest  # noqa: PLC0415

    return await _gate(data_dir, "fork", ForkRequest(workflow_id=workflow_id, at_seq=at_seq,
                                                     new_workflow_id=new_id), name="moon-fork")


async def _command(workflow_id: str, kind: str, reason: str, data_dir: Path | None) -> Any:
    from moon.gateway import CancelRequest, CompensateRequest  # noqa: PLC0415

    request = (CompensateRequest if kind == "compensate" else CancelRequest)(
        workflow_id=workflow_id, reason=reason)
    return await _gate(data_dir, kind, request)
