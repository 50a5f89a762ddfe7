"""Budgets: a request may not ask for more than its grant allows or its caller has left."""

from __future__ import annotations

from typing import Protocol

import msgspec

from envelope.grants import Caveats
from streams.replies import Reason, Refusal

__all__ = [
    "Budget",
    "BudgetView",
    "Ledger",
    "MemoryLedger",
    "check_balance",
    "check_budget",
    "check_caveats",
    "read_budget",
]


class Budget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a request asks to spend; a limit left out is unbounded (and so exceeds any cap)."""

    tokens: int | None = None
    deadline_ms: int | None = None


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
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        # RecursionError: msgspec's answer to nesting deeper than the stack, not a DecodeError.
        return Refusal(Reason.MALFORMED, f"body: {error}")
    if budget is not None and (
        (budget.tokens is not None and budget.tokens < 0)
        or (budget.deadline_ms is not None and budget.deadline_ms <= 0)
    ):
        return Refusal(Reason.MALFORMED, "budget must ask for >= 0 tokens and a positive deadline")
    return budget


def check_budget(
    budget: Budget | None, caveats: Caveats, caller: str, ledger: Ledger
) -> Refusal | None:
    """Against the grant's caveats, then against the caller's balance."""
    return check_caveats(budget, caveats) or check_balance(budget, ledger.remaining(caller))


def check_caveats(budget: Budget | None, caveats: Caveats) -> Refusal | None:
    """What the grant allows: needs no state, so it runs with the other stateless checks."""
    tokens = None if budget is None else budget.tokens
    if caveats.max_tokens is not None and (tokens is None or tokens > caveats.max_tokens):
        return Refusal(
            Reason.BUDGET_EXHAUSTED,
            f"grant allows at most {caveats.max_tokens} tokens",
            evidence={"requested": "unbounded" if tokens is None else str(tokens),
                      "allowed": str(caveats.max_tokens)},
        )
    deadline = None if budget is None else budget.deadline_ms
    if caveats.max_deadline_ms is not None and (
        deadline is None or deadline > caveats.max_deadline_ms
    ):
        return Refusal(
            Reason.BUDGET_EXHAUSTED,
            f"grant allows at most {caveats.max_deadline_ms} ms of deadline",
        )
    return None


def check_balance(budget: Budget | None, left: int | None) -> Refusal | None:
    """Against what the caller has `left` (None: no account, so unmetered)."""
    # No budget spends nothing (a read); a budget without tokens is unbounded and never fits.
    spend = 0 if budget is None else budget.tokens
    if left is not None and (spend is None or spend > left):
        return Refusal(
            Reason.BUDGET_EXHAUSTED,
            f"{'unbounded' if spend is None else spend} tokens requested, {left} left",
            evidence={"requested": "unbounded" if spend is None else str(spend),
                      "available": str(left)},
        )
    return None
