"""open_envelope: every refusal it can give, and nothing unsigned gets through."""

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope.grants import Caveats, grant_ref, mint_grant, pae
from envelope.keys import KeyRing, did_from_public_key
from envelope.seal import (
    ENVELOPE_TYPE,
    Opened,
    Wire,
    block,
    open_envelope,
)
from envelope.treaty import (
    SignedTreaty,
    Treaty,
    TreatyLimiter,
    countersign,
    propose_treaty,
    treaty_ref,
)
from streams.replies import CODES, Reason, Refusal
from tests.envelope.world import NOW, TRACE, World, signer


def refused(outcome: Opened | Refusal) -> Reason:
    assert isinstance(outcome, Refusal), outcome
    return outcome.reason


def test_a_valid_envelope_opens_with_its_exact_body() -> None:
    world = World()
    body = world.body(extra="\u00e9t\u00e9")
    opened = world.open(world.seal(body=body))
    assert isinstance(opened, Opened)
    assert opened.body == body
    assert opened.caller == world.caller.did
    assert opened.traceparent == TRACE
    assert opened.budget is not None and opened.budget.tokens == 100
    assert opened.chain.root == world.root.did


def test_pae_matches_the_dsse_test_vector() -> None:
    assert pae(b"http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


# -- one test per refusal reason -------------------------------------------------------------


def test_oversize() -> None:
    world = World(max_bytes=512)
    assert refused(world.open(world.seal(body=world.body(pad="x" * 600)))) is Reason.OVERSIZE


@pytest.mark.parametrize("data", [b"", b"\xc1", b"junk", msgspec.msgpack.encode([1, 2, 3])])
def test_malformed(data: bytes) -> None:
    assert refused(World().open(data)) is Reason.MALFORMED


def test_malformed_header_after_a_good_signature() -> None:
    world = World()
    outcome = world.open(world.seal(traceparent="00-" + "0" * 32 + TRACE[35:]))
    assert refused(outcome) is Reason.MALFORMED
    assert isinstance(outcome, Refusal) and outcome.evidence["caller"] == world.caller.did


def test_unknown_field_in_the_signed_header_is_malformed() -> None:
    world = World()
    good = msgspec.msgpack.decode(world.seal(), type=Wire)
    signed = msgspec.msgpack.decode(good.payload)
    signed[0]["smuggled"] = "moon:admin"
    payload = msgspec.msgpack.encode(signed)
    data = msgspec.msgpack.encode(
        Wire(good.kid, payload, world.caller.sign(pae(ENVELOPE_TYPE, payload)))
    )
    assert refused(world.open(data)) is Reason.MALFORMED


def test_unknown_key() -> None:
    world = World(keys=KeyRing(self_certifying=False))
    assert refused(world.open(world.seal())) is Reason.UNKNOWN_KEY


def test_a_small_order_kid_is_an_unknown_key() -> None:
    world = World()
    small = did_from_public_key(bytes.fromhex("01" + "00" * 31))
    data = msgspec.msgpack.encode(Wire(small, b"x", b"\x00" * 64))
    assert refused(world.open(data)) is Reason.UNKNOWN_KEY


def test_bad_signature_and_the_claimed_caller_is_not_named() -> None:
    world = World()
    forger = signer("mallory")
    good = msgspec.msgpack.decode(world.seal(), type=Wire)
    forged = msgspec.msgpack.encode(
        Wire(world.caller.did, good.payload, forger.sign(pae(ENVELOPE_TYPE, good.payload)))
    )
    outcome = world.open(forged)
    assert refused(outcome) is Reason.BAD_SIGNATURE
    assert isinstance(outcome, Refusal) and "caller" not in outcome.evidence


def test_signer_other_than_the_signed_caller_is_a_bad_signature() -> None:
    world = World()
    # mallory signs a header naming the caller: kid = mallory verifies, but the header lies.
    data = world.seal(signer=signer("mallory"))
    assert refused(world.open(data)) is Reason.NO_CAPABILITY  # honest header, wrong grantee
    good = msgspec.msgpack.decode(world.seal(), type=Wire)
    mallory = signer("mallory")
    relabelled = msgspec.msgpack.encode(
        Wire(mallory.did, good.payload, mallory.sign(pae(ENVELOPE_TYPE, good.payload)))
    )
    assert refused(world.open(relabelled)) is Reason.BAD_SIGNATURE


def test_expired() -> None:
    world = World()
    assert refused(world.open(world.seal(), now_ms=NOW + 31_000 + 30_001)) is Reason.EXPIRED


def test_a_lifetime_over_the_maximum_is_expired() -> None:
    world = World()
    assert refused(world.open(world.seal(ttl_ms=3_600_000))) is Reason.EXPIRED


def test_not_yet_valid() -> None:
    world = World()
    assert refused(world.open(world.seal(now_ms=NOW + 60_000))) is Reason.NOT_YET_VALID


def test_clock_skew_within_bounds_is_tolerated() -> None:
    world = World()
    assert isinstance(world.open(world.seal(now_ms=NOW + 29_000)), Opened)


def test_replayed() -> None:
    world = World()
    data = world.seal()
    assert isinstance(world.open(data), Opened)
    outcome = world.open(data)
    assert refused(outcome) is Reason.REPLAYED
    assert isinstance(outcome, Refusal) and outcome.evidence["request_id"] == "req-1"


def test_an_expired_envelope_is_refused_even_if_never_seen() -> None:
    world = World()
    data = world.seal()
    assert refused(world.open(data, now_ms=NOW + 120_000)) is Reason.EXPIRED
    assert world.seen.until == {}


def test_wrong_audience() -> None:
    world = World()
    assert refused(world.open(world.seal(audience=signer("other").did))) is Reason.WRONG_AUDIENCE


def test_no_capability_when_the_subject_stands_for_another_capability() -> None:
    world = World()
    assert refused(world.open(world.seal(), capability="moon:read")) is Reason.NO_CAPABILITY


def test_no_capability_when_the_grant_does_not_cover_it() -> None:
    world = World()
    outcome = world.open(world.seal(capability="maestro:plan"), capability="maestro:plan")
    assert refused(outcome) is Reason.NO_CAPABILITY


def test_grant_revoked() -> None:
    world = World()
    world.trust.revoked.add(grant_ref(world.grant))  # type: ignore[attr-defined]
    assert refused(world.open(world.seal())) is Reason.GRANT_REVOKED


def test_policy_block() -> None:
    world = World(policy=block(capabilities={"moon:dispatch"}))
    assert refused(world.open(world.seal())) is Reason.POLICY_BLOCK


def test_budget_exhausted_by_the_grant_caveat() -> None:
    world = World()
    assert refused(world.open(world.seal(body=world.body(tokens=10_001)))) is (
        Reason.BUDGET_EXHAUSTED
    )


def test_budget_exhausted_by_the_ledger() -> None:
    world = World()
    world.ledger.balances[world.caller.did] = 150
    assert isinstance(world.open(world.seal(body=world.body(tokens=100))), Opened)
    assert world.ledger.balances[world.caller.did] == 50
    assert refused(world.open(world.seal(body=world.body(tokens=100)))) is Reason.BUDGET_EXHAUSTED


def _treaty_world(scope: tuple[str, ...], rate: float = 100.0, burst: int = 100) -> World:
    world = World()
    partner_root, agent = signer("partner-root"), signer("partner-agent")
    treaty = countersign(
        partner_root,
        propose_treaty(
            world.root,
            Treaty(
                host=world.root.did,
                partner=partner_root.did,
                scope=scope,
                rate_per_s=rate,
                burst=burst,
                not_before_ms=NOW - 1000,
                expiry_ms=NOW + 86_400_000,
                nonce=b"t" * 16,
            ),
        ),
    )
    grant = mint_grant(
        partner_root,
        audience=agent.did,
        capability="moon:*",
        not_before_ms=NOW - 1000,
        expiry_ms=NOW + 3_600_000,
        nonce=b"p" * 16,
    )
    ref = treaty_ref(treaty)
    world.caller = agent
    world.grant = grant
    world.treaty_args = {"treaty": treaty, "treaty_ref": ref}  # type: ignore[attr-defined]
    return world


def test_a_foreign_call_under_a_treaty_is_accepted() -> None:
    world = _treaty_world(("moon:dispatch",))
    assert isinstance(world.open(world.seal(**world.treaty_args)), Opened)  # type: ignore[attr-defined]


def test_a_foreign_call_without_a_treaty_has_no_capability() -> None:
    world = _treaty_world(("moon:dispatch",))
    assert refused(world.open(world.seal())) is Reason.NO_CAPABILITY


def test_outside_treaty() -> None:
    world = _treaty_world(("moon:read",))
    outcome = world.open(world.seal(**world.treaty_args))  # type: ignore[attr-defined]
    assert refused(outcome) is Reason.OUTSIDE_TREATY


def test_rate_limited_with_retry_after() -> None:
    world = _treaty_world(("moon:*",), rate=2.0, burst=2)
    args = world.treaty_args  # type: ignore[attr-defined]
    assert isinstance(world.open(world.seal(**args)), Opened)
    assert isinstance(world.open(world.seal(**args)), Opened)
    outcome = world.open(world.seal(**args))
    assert refused(outcome) is Reason.RATE_LIMITED
    assert isinstance(outcome, Refusal) and outcome.retryable
    assert outcome.retry_after_ms == 501
    assert isinstance(world.open(world.seal(**args), now_ms=NOW + 501), Opened)


def test_a_treaty_missing_the_countersignature_is_outside_treaty() -> None:
    world = _treaty_world(("moon:dispatch",))
    args = dict(world.treaty_args)  # type: ignore[attr-defined]
    signed = msgspec.msgpack.decode(args["treaty"], type=SignedTreaty)
    args["treaty"] = msgspec.msgpack.encode(SignedTreaty(signed.payload, signed.host_sig, b""))
    assert refused(world.open(world.seal(**args))) is Reason.OUTSIDE_TREATY


def test_every_refusal_reason_of_the_envelope_carries_its_stable_code() -> None:
    reasons = {
        Reason.MALFORMED,
        Reason.OVERSIZE,
        Reason.UNKNOWN_KEY,
        Reason.BAD_SIGNATURE,
        Reason.EXPIRED,
        Reason.NOT_YET_VALID,
        Reason.REPLAYED,
        Reason.WRONG_AUDIENCE,
        Reason.NO_CAPABILITY,
        Reason.GRANT_REVOKED,
        Reason.OUTSIDE_TREATY,
        Reason.RATE_LIMITED,
        Reason.BUDGET_EXHAUSTED,
        Reason.POLICY_BLOCK,
    }
    for reason in reasons:
        assert Refusal(reason).code == CODES[reason]
    assert CODES[Reason.BAD_SIGNATURE] == 1004
    assert CODES[Reason.POLICY_BLOCK] == 2003


# -- integrity: every single-byte change is caught -------------------------------------------


def test_flipping_any_single_byte_never_opens() -> None:
    world = World(keys=KeyRing(self_certifying=False))
    world.trust.keys.register(world.caller.did)
    world.trust.keys.register(world.root.did)
    data = world.seal(body=msgspec.msgpack.encode({"i": 1}), grants=[world.grant])
    kid = world.caller.did.encode()
    kid_at = data.index(kid)
    for position in range(len(data)):
        for flip in (0x01, 0x80):
            tampered = bytearray(data)
            tampered[position] ^= flip
            outcome = world.open(bytes(tampered))
            assert isinstance(outcome, Refusal), (position, flip)
            allowed = {Reason.BAD_SIGNATURE, Reason.MALFORMED}
            if kid_at <= position < kid_at + len(kid):
                # the kid is an unsigned hint: a changed one names a key we do not hold
                allowed.add(Reason.UNKNOWN_KEY)
            assert outcome.reason in allowed, (position, flip, outcome)
            assert "caller" not in outcome.evidence


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_the_opener_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    assert isinstance(World().open(data), Refusal)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_the_opener_never_raises_on_mutated_envelopes(data: st.DataObject) -> None:
    world = World()
    original = world.seal()
    sealed = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(sealed) - 1))
        sealed[index] = data.draw(st.integers(0, 255))
    outcome = world.open(bytes(sealed))
    assert isinstance(outcome, Refusal) or bytes(sealed) == original


def test_open_envelope_is_a_single_function_with_context_passed_in() -> None:
    world = World()
    outcome = open_envelope(
        world.seal(),
        trust=world.trust,
        capability="moon:dispatch",
        now_ms=NOW,
        seen=world.seen,
        limiter=TreatyLimiter(),
        ledger=world.ledger,
    )
    assert isinstance(outcome, Opened)
    assert Caveats(max_tokens=10_000, max_deadline_ms=60_000) == outcome.chain.caveats
