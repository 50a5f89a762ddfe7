import msgspec

from envelope.refusals import STATUS, problem
from streams.audit import AuditRecord, audit_subject
from streams.replies import CODES, Reason, Refusal


def test_every_reason_has_an_http_status() -> None:
    assert set(STATUS) == set(Reason)


def test_a_refusal_becomes_an_rfc9457_problem() -> None:
    doc = problem(
        Refusal(Reason.RATE_LIMITED, "treaty rate exceeded", retryable=True, retry_after_ms=250),
        instance="max://record/req-1",
    )
    assert doc.type == "https://maestro.dev/problems/rate_limited"
    assert doc.title == "Rate limited"
    assert doc.status == 429
    assert doc.code == CODES[Reason.RATE_LIMITED] == 1012
    assert doc.retry_after_ms == 250
    encoded = msgspec.json.decode(msgspec.json.encode(doc))
    assert {"type", "title", "status", "detail", "instance", "code", "retryable"} <= set(encoded)


def test_each_problem_carries_the_stable_code_of_its_reason() -> None:
    for reason in Reason:
        doc = problem(Refusal(reason))
        assert doc.code == CODES[reason]
        assert doc.type.endswith("/" + reason.value)


def test_an_audit_record_names_its_ref_and_subject() -> None:
    record = AuditRecord(
        id="req-1",
        service="moon",
        method="dispatch",
        outcome="refused",
        request_hash=b"h" * 32,
        caller="",
        caller_verified=False,
        capability="",
        traceparent="",
        at=1,
        reason=Reason.BAD_SIGNATURE,
        code=1004,
    )
    assert record.ref == "max://record/req-1"
    assert audit_subject("moon", "dispatch", "refused") == "audit.moon.dispatch.refused"
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(record), type=AuditRecord) == record
