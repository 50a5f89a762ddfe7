"""RFC 9457 problem details from a Refusal, so HTTP, MCP and A2A edges all say "no" the same way."""

from __future__ import annotations

import msgspec

from streams.replies import CODES, Reason, Refusal

__all__ = ["PROBLEM_BASE", "STATUS", "Problem", "problem", "title"]

PROBLEM_BASE = "https://maestro.dev/problems/"

# HTTP status per reason, following the mapping table of research/envelope.md §6.3.
STATUS: dict[Reason, int] = {
    Reason.MALFORMED: 400,
    Reason.OVERSIZE: 413,
    Reason.UNKNOWN_KEY: 401,
    Reason.BAD_SIGNATURE: 401,
    Reason.EXPIRED: 401,
    Reason.NOT_YET_VALID: 401,
    Reason.REPLAYED: 409,
    Reason.WRONG_AUDIENCE: 403,
    Reason.NO_CAPABILITY: 403,
    Reason.GRANT_REVOKED: 403,
    Reason.OUTSIDE_TREATY: 403,
    Reason.RATE_LIMITED: 429,
    Reason.BUDGET_EXHAUSTED: 429,
    Reason.MISSING_PREMISES: 422,
    Reason.CONTRADICTORY_EVIDENCE: 409,
    Reason.POLICY_BLOCK: 403,
    Reason.DEADLINE_INFEASIBLE: 422,
    Reason.UNKNOWN_WORKFLOW: 404,
    Reason.UNKNOWN_STEP: 404,
    Reason.ALREADY_SETTLED: 409,
    Reason.ALREADY_EXISTS: 409,
    Reason.INVALID_STATE: 409,
    Reason.CYCLE: 422,
    Reason.UNKNOWN_DEPENDENCY: 422,
    Reason.UNKNOWN_CAPABILITY: 422,
    Reason.INVALID_GOAL: 422,
    Reason.NO_ELIGIBLE_EXECUTOR: 422,
    Reason.OVER_BUDGET: 422,
    Reason.CONFLICTING_CONSTRAINTS: 422,
    Reason.SOLVER_TIMEOUT: 504,
    Reason.UNKNOWN_PLAN: 404,
    Reason.AWAITING_RATIFICATION: 409,
    Reason.CONTENTION: 503,
    Reason.UNKNOWN_EVENT: 422,
    Reason.UNAVAILABLE: 503,
    Reason.NOT_ASSIGNED: 403,
    Reason.FORGED: 401,
    Reason.INVALID_ID: 422,
    Reason.WRONG_SUBJECT: 400,
    Reason.NOT_OWNER: 403,
    Reason.QUARANTINED: 409,
}


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """application/problem+json, with our stable code and retry hints as extension members."""

    type: str
    title: str
    status: int
    detail: str
    code: int
    reason: str
    retryable: bool
    instance: str | None = None
    retry_after_ms: int | None = None


def title(reason: Reason) -> str:
    """`budget_exhausted` -> `Budget exhausted`: one stable title per type URI, as RFC 9457 asks."""
    return reason.value.replace("_", " ").capitalize()


def problem(refusal: Refusal, *, instance: str | None = None) -> Problem:
    """The problem document for a refusal; `instance` is typically the audit ref max://record/<id>."""
    return Problem(
        type=PROBLEM_BASE + refusal.reason.value,
        title=title(refusal.reason),
        status=STATUS[refusal.reason],
        detail=refusal.detail,
        code=refusal.code,
        reason=refusal.reason.value,
        retryable=refusal.retryable,
        instance=instance,
        retry_after_ms=refusal.retry_after_ms,
    )


assert set(STATUS) == set(CODES)  # every reason has a status: a new Reason must be mapped here
