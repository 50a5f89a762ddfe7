"""Signed statements: what one process tells another inside the walls, signed by its author.

The bus proves nothing about who wrote a message, so every message that changes state behind the
gate (an executor's report, a journaled decision, a timer, a replan, a snapshot, a board offer)
travels as a statement: the author's did:key, an ed25519 signature over PAE(kind, body), and
the body's exact JSON bytes. `kind` is part of what is signed, so a statement made for one purpose
(a heartbeat) never verifies as another (a decision). Opening checks the signature before the
body is parsed, then that the author is one the consumer accepts for that kind.

Wire form (JSON, so `moon tail` still reads it): {"by":"did:key:…","sig":"<base64>","body":{…}}
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Container
from typing import TypeVar

import msgspec
import nacl.exceptions

from envelope.grants import pae
from envelope.keys import KeyRing, Signer
from streams.replies import Reason, Refusal

__all__ = [
    "COMMAND",
    "DECISION",
    "OFFER",
    "ORDER",
    "PLAN_DECISION",
    "REPORT",
    "SNAPSHOT",
    "TIMER",
    "Statement",
    "Verified",
    "open_signed",
    "open_statement",
    "sign_statement",
]

# One kind per purpose; never reuse a kind for another meaning (the signature binds it).
DECISION = b"moon.decision.v1"  # a journaled decision, by the engine
REPORT = b"moon.report.v1"  # an executor's start/heartbeat/checkpoint/complete/fail
ORDER = b"moon.order.v1"  # a binding work order, by the engine
TIMER = b"moon.timer.v1"  # a timer firing the engine scheduled for itself
COMMAND = b"moon.command.v1"  # a replan or compensation from MAESTRO
SNAPSHOT = b"moon.snapshot.v1"  # a folded state bound to the journal sequence it folds
PLAN_DECISION = b"maestro.plan.v1"  # a journaled plan decision, by MAESTRO
OFFER = b"maestro.offer.v1"  # a board offer, by its executor


class Statement(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    by: str
    sig: bytes
    body: msgspec.Raw


class Verified(msgspec.Struct, frozen=True):
    """A statement whose signature holds and whose author the consumer accepts."""

    author: str
    body: bytes


_decoder = msgspec.json.Decoder(Statement)
T = TypeVar("T")


def sign_statement(signer: Signer, kind: bytes, body: bytes) -> bytes:
    """`body` must be one JSON value (it is embedded as is, so the signed bytes are the sent
    bytes); assembled by hand because re-encoding it through a Struct would cost a copy."""
    sig = base64.b64encode(signer.sign(pae(kind, body)))
    return b'{"by":"' + signer.did.encode() + b'","sig":"' + sig + b'","body":' + body + b"}"


def open_statement(
    data: bytes,
    kind: bytes,
    *,
    keys: KeyRing,
    authors: Container[str] | Callable[[str], bool],
) -> Verified | Refusal:
    """Verify before parsing the body; never raises on bad input."""
    try:
        statement = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        return Refusal(Reason.MALFORMED, f"not a signed statement: {str(error)[:200]}")
    except RecursionError:
        return Refusal(Reason.MALFORMED, "not a signed statement: nested too deeply")
    accepted = authors(statement.by) if callable(authors) else statement.by in authors
    if not accepted:
        return Refusal(Reason.FORGED, f"{kind.decode()} by {statement.by[:80]!r}, "
                                      "who may not make it")
    key = keys.lookup(statement.by)
    if key is None:
        return Refusal(Reason.UNKNOWN_KEY, statement.by[:80])
    body = bytes(statement.body)
    try:
        key.verify(pae(kind, body), statement.sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return Refusal(Reason.FORGED, f"{kind.decode()} signature does not verify")
    return Verified(author=statement.by, body=body)


def open_signed(
    data: bytes,
    kind: bytes,
    decoder: msgspec.json.Decoder[T],
    *,
    keys: KeyRing,
    authors: Container[str] | Callable[[str], bool],
) -> T | Refusal:
    """A statement opened (`open_statement`) and its body decoded: what every reader of a
    signed message does, in one place; a body that does not decode is MALFORMED."""
    verified = open_statement(data, kind, keys=keys, authors=authors)
    if isinstance(verified, Refusal):
        return verified
    try:
        return decoder.decode(verified.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        return Refusal(Reason.MALFORMED, f"signed {kind.decode()} with a body that does not "
                                         f"decode: {str(error)[:200]}")
    except RecursionError:
        return Refusal(Reason.MALFORMED, f"signed {kind.decode()} nested too deeply")
