"""Delegation may only narrow: capability, caveats, time; bounded depth; revocable links."""

from typing import Any

import msgspec
import pytest

from envelope.grants import (
    Caveats,
    Chain,
    GrantCache,
    SignedGrant,
    covers,
    delegate,
    grant_ref,
    mint_grant,
    narrows,
    verify_chain,
)
from envelope.keys import KeyRing
from streams.replies import Reason, Refusal
from tests.envelope.world import NOW, signer

ROOT, TEAM, AGENT, SUB = signer("root"), signer("team"), signer("agent"), signer("sub")
HOUR = 3_600_000


def root_grant(**over: Any) -> bytes:
    args: dict[str, Any] = {
        "audience": TEAM.did,
        "capability": "moon:*",
        "not_before_ms": NOW - HOUR,
        "expiry_ms": NOW + HOUR,
        "nonce": b"r" * 16,
        "caveats": Caveats(max_tokens=1000),
    }
    return mint_grant(ROOT, **(args | over))


def sub_grant(parent: bytes, by: Any = TEAM, **over: Any) -> bytes:
    args: dict[str, Any] = {
        "audience": AGENT.did,
        "capability": "moon:dispatch",
        "not_before_ms": NOW - HOUR,
        "expiry_ms": NOW + HOUR // 2,
        "nonce": b"s" * 16,
        "caveats": Caveats(max_tokens=500),
    }
    return delegate(by, parent, **(args | over))


def check(
    chain: list[bytes],
    *,
    caller: str = AGENT.did,
    capability: str = "moon:dispatch",
    revoked: frozenset[bytes] = frozenset(),
    now_ms: int = NOW,
    max_depth: int = 3,
) -> Chain | Refusal:
    return verify_chain(
        chain,
        leaf=grant_ref(chain[-1]) if chain else b"",
        caller=caller,
        capability=capability,
        roots={ROOT.did},
        revoked=revoked,
        keys=KeyRing(),
        cache=GrantCache(),
        now_ms=now_ms,
        skew_ms=30_000,
        max_depth=max_depth,
    )


def reason(outcome: Chain | Refusal) -> Reason:
    assert isinstance(outcome, Refusal), outcome
    return outcome.reason


@pytest.mark.parametrize(
    ("granted", "wanted", "expected"),
    [
        ("moon:dispatch", "moon:dispatch", True),
        ("moon:*", "moon:dispatch", True),
        ("moon:*", "moon:x:*", True),
        ("*", "maestro:plan", True),
        ("moon:dispatch", "moon:*", False),
        ("moon:*", "moonshine:x", False),
        ("moon:*", "*", False),
        ("moon:read", "moon:dispatch", False),
    ],
)
def test_capability_coverage(granted: str, wanted: str, expected: bool) -> None:
    assert covers(granted, wanted) is expected


def test_caveats_narrow_only_when_every_limit_is_kept_or_tightened() -> None:
    parent = Caveats(max_tokens=100, conditions=frozenset({"a"}))
    assert narrows(Caveats(max_tokens=50, conditions=frozenset({"a", "b"})), parent)
    assert not narrows(Caveats(max_tokens=None, conditions=frozenset({"a"})), parent)
    assert not narrows(Caveats(max_tokens=50), parent)


def test_a_two_link_chain_that_narrows_is_accepted() -> None:
    root = root_grant()
    chain = check([root, sub_grant(root)])
    assert isinstance(chain, Chain)
    assert chain.root == ROOT.did
    assert chain.capability == "moon:dispatch"
    assert chain.caveats.max_tokens == 500


def test_a_wildcard_narrows_to_a_concrete_capability() -> None:
    root = root_grant()
    assert isinstance(check([root, sub_grant(root, capability="moon:*")]), Chain)


def test_a_delegation_that_widens_the_capability_is_refused() -> None:
    root = root_grant(capability="moon:dispatch")
    outcome = check([root, sub_grant(root, capability="moon:*")])
    assert reason(outcome) is Reason.NO_CAPABILITY
    assert "widens" in outcome.detail  # type: ignore[union-attr]


def test_a_delegation_that_loosens_caveats_is_refused() -> None:
    root = root_grant()
    assert reason(check([root, sub_grant(root, caveats=Caveats(max_tokens=5000))])) is (
        Reason.NO_CAPABILITY
    )


def test_a_delegation_that_outlives_its_parent_is_refused() -> None:
    root = root_grant()
    outcome = check([root, sub_grant(root, expiry_ms=NOW + 2 * HOUR)])
    assert reason(outcome) is Reason.NO_CAPABILITY
    assert "outlives" in outcome.detail  # type: ignore[union-attr]


def test_a_delegation_starting_before_its_parent_is_refused() -> None:
    root = root_grant(not_before_ms=NOW - 1000)
    assert reason(check([root, sub_grant(root, not_before_ms=NOW - HOUR)])) is Reason.NO_CAPABILITY


def test_a_chain_deeper_than_the_bound_is_refused() -> None:
    root = root_grant()
    mid = sub_grant(root, capability="moon:*", audience=SUB.did)
    leaf = sub_grant(mid, by=SUB)
    assert isinstance(check([root, mid, leaf]), Chain)
    assert reason(check([root, mid, leaf], max_depth=2)) is Reason.NO_CAPABILITY


def test_a_revoked_link_anywhere_in_the_chain_is_refused() -> None:
    root = root_grant()
    leaf = sub_grant(root)
    for link in (root, leaf):
        outcome = check([root, leaf], revoked=frozenset({grant_ref(link)}))
        assert reason(outcome) is Reason.GRANT_REVOKED


def test_a_chain_rooted_in_an_untrusted_key_is_refused() -> None:
    rogue = mint_grant(
        signer("rogue"),
        audience=AGENT.did,
        capability="moon:*",
        not_before_ms=NOW - HOUR,
        expiry_ms=NOW + HOUR,
        nonce=b"x" * 16,
    )
    assert reason(check([rogue])) is Reason.NO_CAPABILITY


def test_a_link_signed_by_someone_other_than_the_parent_audience_is_refused() -> None:
    root = root_grant()
    assert reason(check([root, sub_grant(root, by=SUB)])) is Reason.NO_CAPABILITY


def test_a_grant_used_by_someone_else_is_refused() -> None:
    root = root_grant()
    assert reason(check([root, sub_grant(root)], caller=SUB.did)) is Reason.NO_CAPABILITY


def test_an_expired_or_future_grant_is_refused() -> None:
    root = root_grant()
    assert reason(check([root, sub_grant(root)], now_ms=NOW + HOUR)) is Reason.EXPIRED
    assert reason(check([root, sub_grant(root)], now_ms=NOW - 2 * HOUR)) is Reason.NOT_YET_VALID


def test_links_out_of_order_are_refused() -> None:
    root = root_grant()
    leaf = sub_grant(root)
    assert reason(check([leaf, root])) is Reason.NO_CAPABILITY


def test_a_forged_grant_signature_is_refused() -> None:
    good = msgspec.msgpack.decode(root_grant(), type=SignedGrant)
    forged = msgspec.msgpack.encode(SignedGrant(good.payload, bytes(64)))
    assert reason(check([forged], caller=TEAM.did)) is Reason.NO_CAPABILITY
