"""`publish_once` (streams/publish.py): a message id still being proposed on a clustered
stream is asked again; any other answer is the caller's. The real case is in
tests/test_cluster_scale_out.py (two engines on two nodes); here the policy, with a
JetStream context that answers from a script."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import PubAck
from nats.js.errors import APIError

from streams.publish import IN_PROCESS, IN_PROCESS_TRIES, publish_once


class Scripted:
    def __init__(self, *answers: APIError | PubAck) -> None:
        self.answers, self.calls = list(answers), 0

    async def publish(self, subject: str, data: bytes, *, headers: dict[str, str]) -> PubAck:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, APIError):
            raise answer
        return answer


def in_process() -> APIError:
    return APIError(code=409, err_code=IN_PROCESS,
                    description="duplicate message id is in process")


async def test_an_id_still_in_process_is_asked_again_until_the_duplicate_ack() -> None:
    js: Any = Scripted(in_process(), in_process(), PubAck(stream="S", seq=7, duplicate=True))
    ack = await publish_once(js, "s", b"x", headers={"Nats-Msg-Id": "k"})
    assert (ack.seq, ack.duplicate, js.calls) == (7, True, 3)


async def test_another_refusal_is_raised_at_once() -> None:
    js: Any = Scripted(APIError(code=400, err_code=10071, description="wrong last sequence: 5"))
    with pytest.raises(APIError) as raised:
        await publish_once(js, "s", b"x", headers={"Nats-Msg-Id": "k"})
    assert (raised.value.err_code, js.calls) == (10071, 1)


async def test_an_id_that_stays_in_process_is_the_callers_after_a_bounded_wait() -> None:
    js: Any = Scripted(*(in_process() for _ in range(IN_PROCESS_TRIES)))
    with pytest.raises(APIError) as raised:
        await publish_once(js, "s", b"x", headers={"Nats-Msg-Id": "k"})
    assert (raised.value.err_code, js.calls) == (IN_PROCESS, IN_PROCESS_TRIES)


# --- every publish with a message id goes through publish_once --------------------------------

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "envelope", "moon", "maestro", "surfaces")


def _msg_id_key(node: ast.expr | None) -> bool:
    return (isinstance(node, ast.Constant) and node.value == "Nats-Msg-Id") or (
        isinstance(node, ast.Name) and node.id == "MSG_ID")


def _bare_publishes_with_ids(tree: ast.AST) -> list[int]:
    """Lines of `<x>.publish(...)` calls in a function that builds headers with a message id:
    such a publish must be `publish_once`, or a cluster's 10158 reaches its caller."""
    found: set[int] = set()  # a nested function is walked with its outer one too
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        nodes = list(ast.walk(fn))
        if not any(isinstance(n, ast.Dict) and any(map(_msg_id_key, n.keys)) for n in nodes):
            continue
        found |= {n.lineno for n in nodes if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Attribute) and n.func.attr == "publish"}
    return sorted(found)


def test_no_product_code_publishes_a_message_id_but_through_publish_once() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "streams" / "publish.py":
                continue
            lines = _bare_publishes_with_ids(ast.parse(path.read_text(), filename=str(path)))
            offenders += [f"{path.relative_to(ROOT)}:{line}" for line in lines]
    assert offenders == []


def test_the_check_finds_a_bare_publish_with_a_message_id() -> None:
    source = ("async def send(js):\n"
              "    headers = {'Nats-Msg-Id': 'k'}\n"
              "    await js.publish('s', b'', headers=headers)\n")
    assert _bare_publishes_with_ids(ast.parse(source)) == [3]
