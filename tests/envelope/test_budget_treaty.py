import msgspec
from hypothesis import given
from hypothesis import strategies as st

from envelope.budget import Budget, MemoryLedger, check_budget, read_budget
from envelope.grants import Caveats
from envelope.treaty import take
from streams.replies import Reason, Refusal


def test_a_body_without_budget_is_fine_when_the_grant_sets_no_limit() -> None:
    assert check_budget(None, Caveats(), "did:x", MemoryLedger()) is None


def test_a_capped_grant_needs_a_declared_budget() -> None:
    refusal = check_budget(None, Caveats(max_tokens=10), "did:x", MemoryLedger())
    assert isinstance(refusal, Refusal) and refusal.reason is Reason.BUDGET_EXHAUSTED


def test_a_deadline_over_the_caveat_is_exhausted() -> None:
    refusal = check_budget(Budget(1, 9000), Caveats(max_deadline_ms=8000), "d", MemoryLedger())
    assert isinstance(refusal, Refusal) and refusal.reason is Reason.BUDGET_EXHAUSTED


def test_a_negative_budget_is_malformed() -> None:
    refusal = read_budget(msgspec.msgpack.encode({"budget": {"tokens": -1, "deadline_ms": 5}}))
    assert isinstance(refusal, Refusal) and refusal.reason is Reason.MALFORMED
    assert isinstance(read_budget(b"\x93\x01\x02\x03"), Refusal)


@given(st.integers(1, 50), st.integers(1, 1000), st.lists(st.integers(0, 5000), max_size=50))
def test_a_bucket_never_admits_more_than_burst_plus_rate_times_time(
    burst: int, rate_milli: int, gaps: list[int]
) -> None:
    rate = rate_milli / 100
    bucket, now, admitted = None, 0, 0
    for gap in gaps:
        now += gap
        bucket, wait = take(bucket, rate_per_s=rate, burst=burst, now_ms=now)
        admitted += wait == 0
        assert wait >= 0
    assert admitted <= burst + rate * now / 1000 + 1e-9


def test_retry_after_is_the_time_until_the_next_token() -> None:
    bucket, _ = take(None, rate_per_s=10, burst=1, now_ms=0)
    _, wait = take(bucket, rate_per_s=10, burst=1, now_ms=0)
    assert wait == 101
    _, wait = take(bucket, rate_per_s=10, burst=1, now_ms=100)
    assert wait == 0


def test_a_budget_may_set_one_limit_and_the_missing_one_exceeds_any_cap():
    only_tokens = msgspec.msgpack.encode({"budget": {"tokens": 10}})
    assert read_budget(only_tokens) == Budget(tokens=10)
    only_deadline = read_budget(msgspec.msgpack.encode({"budget": {"deadline_ms": 5}}))
    assert only_deadline == Budget(deadline_ms=5)
    assert check_budget(Budget(tokens=10), Caveats(), "d", MemoryLedger()) is None
    refusal = check_budget(Budget(tokens=10), Caveats(max_deadline_ms=8000), "d", MemoryLedger())
    assert isinstance(refusal, Refusal) and refusal.reason is Reason.BUDGET_EXHAUSTED
    refusal = check_budget(Budget(deadline_ms=5), Caveats(max_tokens=100), "d", MemoryLedger())
    assert isinstance(refusal, Refusal) and refusal.evidence["requested"] == "unbounded"


def test_a_metered_caller_may_read_without_a_budget_but_not_ask_for_unbounded_tokens():
    ledger = MemoryLedger(balances={"d": 50})
    assert check_budget(None, Caveats(), "d", ledger) is None
    assert check_budget(Budget(tokens=50), Caveats(), "d", ledger) is None
    refusal = check_budget(Budget(deadline_ms=5), Caveats(), "d", ledger)
    assert isinstance(refusal, Refusal) and refusal.evidence["requested"] == "unbounded"
