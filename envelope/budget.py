"""Budgets: a request may not ask for more than its grant allows or its caller has left."""

from __future__ import annotations

from typing import Protocol

import msgspec

from envelope.grants import Caveats
from streams.replies import Reason, Refusal

__all__ = ["Budget", "BudgetView", "Ledger", "MemoryLedger", "check_budget", "read_budget"]


class Budget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tokens: int
    deadline_ms: int


class BudgetView(msgspec.Struct, frozen=True):
    """The one body field the gate reads; the rest belongs to the service, so unknown is fine."""

    budget: Budget | None = None


class Ledger(Protocol):
    """What each caller has left; None means no account here, so no ledger limit."""

    def remaining(self, caller: str) -> int | None: ...

    def reserve(self, caller: str, tokens: int) -> None: ...


class MemoryLedger(msgspec.Struct, frozen=True):
    """In-process ledger; callers without an entry are unmetered."""

    balances: dict[str, int] = {}

    def remaining(self, caller: str) -> int | None:
        return self.balances.get(caller)

    def reserve(self, caller: str, tokens: int) -> None:
        if caller in self.balances:
            self.balances[caller] -= tokens


_view = msgspec.msgpack.Decoder(BudgetView)


def read_budget(body: bytes) -> Budget | Refusal | None:
    """The body's budget, decoded from the exact signed bytes (a read, never a re-encoding)."""
    try:
        budget = _view.decode(body).budget
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        return Refusal(Reason.MALFORMED, f"body: {error}")
    if budget is not None and (budget.tokens < 0 or budget.deadline_ms <= 0):
        return Refusal(Reason.MALFORMED, "budget must ask for >= 0 tokens and a positive deadline")
    return budget


def check_budget(
    budget: Budget | None, caveats: Caveats, caller: str, ledger: Ledger
) -> Refusal | None:
    """Against the grant's caveats, then against the caller's balance."""
    tokens = 0 if budget is None else budget.tokens
    if caveats.max_tokens is not None and (budget is None or tokens > caveats.max_tokens):
        return Refusal(
            Reason.BUDGET_EXHAUSTED,
            f"grant allows at most {caveats.max_tokens} tokens",
            evidence={"requested": str(tokens), "allowed": str(caveats.max_tokens)},
        )
    if caveats.max_deadline_ms is not None and (
        budget is None or budget.deadline_ms > caveats.max_deadline_ms
    ):
        return Refusal(
            Reason.BUDGET_EXHAUSTED,
            f"grant allows at most {caveats.max_deadline_ms} ms of deadline",
        )
    left = ledger.remaining(caller)
    if left is not None and tokens > left:
        return Refusal(
            Reason.BUDGET_EXHAUSTED,
            f"{tokens} tokens requested, {left} left",
            evidence={"requested": str(tokens), "available": str(left)},
        )
    return None
