"""The operator's calls from this machine: signed requests to MOON's gate with the data dir's
operator key and grant, so a CLI action is checked and audited like any other caller's, and the
CLI needs no right to write the journal itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nats.aio.client import Client as Nats

from envelope.client import Client, Reply
from envelope.local import local_trust
from moon.gateway import DispatchReply
from streams.replies import Refusal
from streams.subjects import Space

__all__ = ["operator_call"]


async def operator_call(
    nc: Nats, data_dir: Path, space: Space, target: str, body: Any, *,
    request_id: str | None = None, capability: str | None = None, timeout_s: float = 10.0,
) -> DispatchReply | Refusal:
    trust = local_trust(data_dir)
    client = Client(nc, trust.operator, trust.services, grant=(trust.operator_grant,),
                    space=space, timeout_s=timeout_s)
    reply: Reply | Refusal = await client.call(target, body, request_id=request_id,
                                               capability=capability)
    if isinstance(reply, Refusal):
        return reply
    return reply.result(DispatchReply)
