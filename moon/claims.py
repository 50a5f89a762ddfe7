"""Claim tokens: how a report proves that its sender took the work order it reports on.

An attempt is claimed without a write of its own: the executor acknowledges the order's WORK
message (a work-queue stream, so the acknowledgement removes it, durably, before the broker
answers) and only then runs it. Nobody else can take that order any more, but the engine does
not see who took it. So each order carries a claim token, the engine's signature over the
attempt's claim key; executors may read only the orders they fetch (their consumers are their
only way into WORK), so a report carrying the token comes from whoever took that order, and its
first report binds a pool attempt to it (moon/authority.py). Pure but for the signature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import nacl.exceptions

from envelope.grants import pae
from envelope.keys import KeyRing, Signer

__all__ = ["CLAIM", "claim_key", "prover", "sign_claim"]

CLAIM = b"moon.claim.v1"  # a statement kind of its own: no other signature verifies as one


def claim_key(workflow_id: str, step: str, attempt: int, *, compensation: bool) -> bytes:
    """The attempt an order is for; a compensation's attempt is another claim than the step's."""
    return f"{'undo:' if compensation else ''}{workflow_id}/{step}/{attempt}".encode()


def sign_claim(signer: Signer, key: bytes) -> bytes:
    return signer.sign(pae(CLAIM, key))


def prover(token: bytes, keys: KeyRing, engines: Iterable[str]) -> Callable[[bytes], bool]:
    """Whether `token` is an engine's claim for a key; each key is checked once, when first
    asked (only a report on a pool attempt nobody is bound to yet needs it)."""
    known: dict[bytes, bool] = {}
    authors = tuple(engines)

    def proves(key: bytes) -> bool:
        if key not in known:
            known[key] = bool(token) and any(_verifies(keys, did, key, token) for did in authors)
        return known[key]

    return proves


def _verifies(keys: KeyRing, did: str, key: bytes, token: bytes) -> bool:
    verify_key = keys.lookup(did)
    if verify_key is None:
        return False
    try:
        verify_key.verify(pae(CLAIM, key), token)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    return True
