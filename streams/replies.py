"""The reply vocabulary every service shares: one closed Reason enum, Refusal and Conflict values.

One enum for all refusals because msgspec unions cannot hold two str enums, and one closed
vocabulary is easier to audit than several.
"""

from __future__ import annotations

import enum

import msgspec

__all__ = ["CODES", "Conflict", "Reason", "Refusal"]


class Reason(enum.Enum):
    # the envelope was not acceptable (trust boundary)
    MALFORMED = "malformed"
    OVERSIZE = "oversize"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REPLAYED = "replayed"
    WRONG_AUDIENCE = "wrong_audience"
    NO_CAPABILITY = "no_capability"
    GRANT_REVOKED = "grant_revoked"
    OUTSIDE_TREATY = "outside_treaty"
    RATE_LIMITED = "rate_limited"
    BUDGET_EXHAUSTED = "budget_exhausted"
    # the request was understood and declined (governance posture of the seeds)
    MISSING_PREMISES = "missing_premises"
    CONTRADICTORY_EVIDENCE = "contradictory_evidence"
    POLICY_BLOCK = "policy_block"
    DEADLINE_INFEASIBLE = "deadline_infeasible"
    # domain refusals (moon, maestro)
    UNKNOWN_WORKFLOW = "unknown_workflow"
    UNKNOWN_STEP = "unknown_step"
    ALREADY_SETTLED = "already_settled"
    ALREADY_EXISTS = "already_exists"
    INVALID_STATE = "invalid_state"
    CYCLE = "cycle"
    UNKNOWN_DEPENDENCY = "unknown_dependency"
    UNKNOWN_CAPABILITY = "unknown_capability"
    INVALID_GOAL = "invalid_goal"
    NO_ELIGIBLE_EXECUTOR = "no_eligible_executor"
    OVER_BUDGET = "over_budget"
    CONFLICTING_CONSTRAINTS = "conflicting_constraints"
    SOLVER_TIMEOUT = "solver_timeout"
    UNKNOWN_PLAN = "unknown_plan"
    AWAITING_RATIFICATION = "awaiting_ratification"
    CONTENTION = "contention"
    UNKNOWN_EVENT = "unknown_event"
    UNAVAILABLE = "unavailable"
    # trust inside the walls (appended: codes are never renumbered)
    NOT_ASSIGNED = "not_assigned"  # a report from an executor the attempt is not bound to
    FORGED = "forged"  # a message whose signature or author is not what it must be
    INVALID_ID = "invalid_id"  # an id that would become a subject token or KV key
    WRONG_SUBJECT = "wrong_subject"  # a command whose kind or workflow differs from its subject
    NOT_OWNER = "not_owner"  # an id that belongs to another caller
    QUARANTINED = "quarantined"  # the workflow's journal holds a message that does not verify


# Stable numeric codes: never renumber, only append. 1xxx trust boundary, 2xxx governance,
# 3xxx moon, 4xxx maestro, 5xxx infrastructure.
CODES: dict[Reason, int] = {
    Reason.MALFORMED: 1001,
    Reason.OVERSIZE: 1002,
    Reason.UNKNOWN_KEY: 1003,
    Reason.BAD_SIGNATURE: 1004,
    Reason.EXPIRED: 1005,
    Reason.NOT_YET_VALID: 1006,
    Reason.REPLAYED: 1007,
    Reason.WRONG_AUDIENCE: 1008,
    Reason.NO_CAPABILITY: 1009,
    Reason.GRANT_REVOKED: 1010,
    Reason.OUTSIDE_TREATY: 1011,
    Reason.RATE_LIMITED: 1012,
    Reason.BUDGET_EXHAUSTED: 1013,
    Reason.MISSING_PREMISES: 2001,
    Reason.CONTRADICTORY_EVIDENCE: 2002,
    Reason.POLICY_BLOCK: 2003,
    Reason.DEADLINE_INFEASIBLE: 2004,
    Reason.UNKNOWN_WORKFLOW: 3001,
    Reason.UNKNOWN_STEP: 3002,
    Reason.ALREADY_SETTLED: 3003,
    Reason.ALREADY_EXISTS: 3004,
    Reason.INVALID_STATE: 3005,
    Reason.CYCLE: 4001,
    Reason.UNKNOWN_DEPENDENCY: 4002,
    Reason.UNKNOWN_CAPABILITY: 4003,
    Reason.INVALID_GOAL: 4004,
    Reason.NO_ELIGIBLE_EXECUTOR: 4005,
    Reason.OVER_BUDGET: 4006,
    Reason.CONFLICTING_CONSTRAINTS: 4007,
    Reason.SOLVER_TIMEOUT: 4008,
    Reason.UNKNOWN_PLAN: 4009,
    Reason.AWAITING_RATIFICATION: 4010,
    Reason.CONTENTION: 5001,
    Reason.UNKNOWN_EVENT: 5002,
    Reason.UNAVAILABLE: 5003,
    Reason.NOT_ASSIGNED: 1014,
    Reason.FORGED: 1015,
    Reason.INVALID_ID: 1016,
    Reason.WRONG_SUBJECT: 1017,
    Reason.NOT_OWNER: 1018,
    Reason.QUARANTINED: 3006,
}


class Refusal(msgspec.Struct, frozen=True, tag="refusal"):
    """An expected 'no', returned as a value and recorded with the same weight as a success."""

    reason: Reason
    detail: str = ""
    retryable: bool = False
    retry_after_ms: int | None = None
    evidence: dict[str, str] = {}

    @property
    def code(self) -> int:
        return CODES[self.reason]


class Conflict(msgspec.Struct, frozen=True, tag="conflict"):
    """Someone appended first. Carries the version (stream sequence) the store actually holds."""

    actual: int
