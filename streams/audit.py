"""The audit record: one per request outcome, accepted or refused, with equal weight."""

from __future__ import annotations

from typing import Literal

import msgspec

from streams.replies import Reason

__all__ = ["AuditRecord", "Outcome", "RequestEvidence", "audit_subject"]

Outcome = Literal["accepted", "refused", "failed"]


class AuditRecord(msgspec.Struct, frozen=True):
    """Published on audit.<service>.<method>.<outcome>, deduplicated by a Nats-Msg-Id made from
    `id` (a gate's final records: with the service, the method and the caller, envelope/gate.py
    `_final_id`)."""

    id: str  # the request id, or sha256 of the raw bytes for requests never authenticated
    service: str
    method: str
    outcome: Outcome
    request_hash: bytes  # sha256 of the exact request bytes
    caller: str  # the verified caller DID; "" when the signature never held
    caller_verified: bool
    capability: str
    traceparent: str
    at: int  # epoch ms
    reason: Reason | None = None
    code: int | None = None
    detail: str = ""
    result_ref: str = ""
    # The sealed answer, on the final record of a request to an idempotent route (one whose
    # handler decides by the request id): the record is where that answer is kept, and a
    # retry of the id within the stream's duplicate window is given it (envelope/audit.py).
    answer: bytes = b""

    @property
    def ref(self) -> str:
        return f"max://record/{self.id}"


class RequestEvidence(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a request's accepted record holds beyond what its journaled command names (the
    request id is the command id, the caller its owner): carried in the command, so that the
    journal append that makes the request's effect durable makes its audit record durable too,
    and the record can be written after the answer and again from the journal after a crash
    (envelope/later.py)."""

    method: str
    request_hash: bytes
    capability: str
    traceparent: str
    at_ms: int  # the gate's clock when the request arrived: the record's and the answer's `at`


def audit_subject(service: str, method: str, outcome: Outcome) -> str:
    return f"audit.{service}.{method}.{outcome}"
