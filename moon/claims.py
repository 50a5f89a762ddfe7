"""Claim tokens: how a report proves that its sender took the work order it reports on.

An attempt is claimed without a write of its own: the executor acknowledges the order's WORK
message (a work-queue stream, so the acknowledgement removes it, durably, before the broker
answers) and only then runs it. Nobody else can take that order any more, but the engine does
not see who took it. So each order carries a claim token, the engine's signature over the
attempt's claim key; executors may read only the orders they fetch (their consumers are their
only way into WORK), so a report carrying the token comes from whoever took that order, and its
first report binds a pool attempt to it (moon/authority.py). Pure but for the signature.

`Claims` keeps the tokens this process signed (bounded): checking one of its own, the common
case, is a lookup and a constant-time compare, not an ed25519 verify (about 3 % of the engine's
CPU under the peers' W3 went to verifying its own tokens); a token it does not hold (another
engine's, or from before a restart) is verified against the engines' keys as before.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Callable, Iterable

import nacl.exceptions

from envelope.grants import pae
from envelope.keys import KeyRing, Signer
from moon.outbox import order_key

__all__ = ["CLAIM", "KEPT", "Claims", "claim_key", "prover", "sign_claim"]

CLAIM = b"moon.claim.v1"  # a statement kind of its own: no other signature verifies as one


def claim_key(workflow_id: str, step: str, attempt: int, *, compensation: bool) -> bytes:
    """The attempt an order is for (its order's key); a compensation's attempt is another
    claim than the step's."""
    return order_key(workflow_id, step, attempt, compensation=compensation).encode()


def sign_claim(signer: Signer, key: bytes) -> bytes:
    return signer.sign(pae(CLAIM, key))


def prover(token: bytes, keys: KeyRing, engines: Iterable[str],
           issued: Callable[[bytes], bytes | None] = lambda _: None) -> Callable[[bytes], bool]:
    """Whether `token` is an engine's claim for a key; each key is checked once, when first
    asked (only a report on a pool attempt nobody is bound to yet needs it). `issued(key)`: the
    token this process signed for the key, if it still holds it (ed25519 signatures are
    deterministic, so an engine's token for a key is always the same bytes)."""
    known: dict[bytes, bool] = {}
    authors = tuple(engines)

    def proves(key: bytes) -> bool:
        if key not in known:
            own = issued(key)
            known[key] = bool(token) and (
                (own is not None and hmac.compare_digest(own, token))
                or any(_verifies(keys, did, key, token) for did in authors))
        return known[key]

    return proves


KEPT = 20_000  # tokens remembered (~5 MB): orders taken and not yet reported on, with room


class Claims:
    """The claim tokens one engine process signs, and checks."""

    def __init__(self, signer: Signer, keys: KeyRing, engines: Iterable[str],
                 kept: int = KEPT) -> None:
        self._signer, self._keys, self._engines = signer, keys, frozenset(engines)
        self._kept = kept
        self._issued: OrderedDict[bytes, bytes] = OrderedDict()

    def token(self, key: bytes) -> bytes:
        """Sign (and keep) the token for a claim key."""
        token = sign_claim(self._signer, key)
        self._issued[key] = token
        while len(self._issued) > self._kept:
            self._issued.popitem(last=False)
        return token

    def prover(self, token: bytes) -> Callable[[bytes], bool]:
        """What a report's token proves (`prover`), its own tokens by lookup."""
        return prover(token, self._keys, self._engines, self._issued.get)


def _verifies(keys: KeyRing, did: str, key: bytes, token: bytes) -> bool:
    verify_key = keys.lookup(did)
    if verify_key is None:
        return False
    try:
        verify_key.verify(pae(CLAIM, key), token)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    return True
