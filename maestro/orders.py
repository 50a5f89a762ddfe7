"""Binding work orders: what an executor is held to, signed by MAESTRO over the exact bytes."""

from __future__ import annotations

import msgspec

from envelope.grants import pae
from envelope.keys import KeyRing, Signer
from streams.replies import Reason, Refusal

__all__ = ["BindingOrder", "SignedOrder", "open_order", "sign_order"]

ORDER_TYPE = b"application/vnd.maestro.work-order.v1+json"


class BindingOrder(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    plan_id: str
    revision: int
    workflow_id: str
    step: str
    executor: str
    start_ms: int  # the window, relative to the workflow's start
    end_ms: int
    rate: int  # the agreed price of the step, in cost units
    idempotency_key: str  # workflow/step: the executor dedupes attempts of one step with it
    backup: str | None = None


class SignedOrder(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    issuer: str
    payload: bytes
    sig: bytes


def sign_order(signer: Signer, order: BindingOrder) -> bytes:
    payload = msgspec.json.encode(order)
    return msgspec.msgpack.encode(
        SignedOrder(issuer=signer.did, payload=payload, sig=signer.sign(pae(ORDER_TYPE, payload)))
    )


def open_order(data: bytes, *, issuer: str, keys: KeyRing | None = None) -> BindingOrder | Refusal:
    """The order, if `issuer` signed these exact bytes."""
    try:
        signed = msgspec.msgpack.decode(data, type=SignedOrder)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        return Refusal(Reason.MALFORMED, str(error))
    if signed.issuer != issuer:
        return Refusal(Reason.UNKNOWN_KEY, signed.issuer)
    key = (keys or KeyRing()).lookup(issuer)
    if key is None:
        return Refusal(Reason.UNKNOWN_KEY, issuer)
    try:
        key.verify(pae(ORDER_TYPE, signed.payload), signed.sig)
    except Exception:  # nacl.exceptions.BadSignatureError
        return Refusal(Reason.BAD_SIGNATURE, "work order")
    try:
        return msgspec.json.decode(signed.payload, type=BindingOrder)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        return Refusal(Reason.MALFORMED, str(error))
