"""What a user asks MAESTRO to plan (a goal) and what executors offer, as strict data.

Goals and offers cross the trust boundary as YAML or JSON, so decoding refuses unknown fields and
`validate` turns every structural problem into a Refusal a user can act on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import msgspec
import yaml

from moon.dag import find_cycle, missing_dependencies
from streams.replies import Reason, Refusal

__all__ = [
    "Budget",
    "CapabilityOffer",
    "Goal",
    "Objective",
    "Offer",
    "Pool",
    "Step",
    "decode_goal",
    "decode_offers",
    "load_goal",
    "load_offers",
    "validate",
]

Objective = Literal["lexicographic", "makespan", "cost"]


class Step(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One unit of work: run `capability` after every step in `needs` has finished.

    `duration_ms` is the goal's own estimate, used when an offer does not quote one.
    """

    id: str
    capability: str
    needs: tuple[str, ...] = ()
    duration_ms: int = 0
    tokens: int = 0
    deadline_ms: int | None = None
    min_trust: float = 0.0
    compensation: str | None = None


class Pool(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A shared limit (rate limit, licence seats): at most `capacity` of its steps run at once.

    A step belongs to the pool when its id is in `steps` or its capability is in `capabilities`.
    """

    name: str
    capacity: int
    steps: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()


class Budget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Whole-goal limits; None means unlimited. Cost is in integer cost units (e.g. cents)."""

    tokens: int | None = None
    cost: int | None = None


class Goal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A DAG of steps with a deadline, a budget and shared pools.

    `organisations`, when not empty, is the treaty scope: only executors of these organisations
    may run steps of this goal.
    """

    name: str
    steps: tuple[Step, ...]
    deadline_ms: int | None = None
    budget: Budget = Budget()
    pools: tuple[Pool, ...] = ()
    objective: Objective = "lexicographic"
    organisations: tuple[str, ...] = ()


class CapabilityOffer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An executor's terms for one capability.

    cost of a step = rate + ceil(rate_per_s * duration_ms / 1000);
    tokens of a step = ceil(step.tokens * tokens_factor).
    `duration_ms` None means the step's own estimate.
    """

    capability: str
    duration_ms: int | None = None
    rate: int = 0
    rate_per_s: int = 0
    tokens_factor: float = 1.0


class Offer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An executor on the board: who it is, how far it is trusted and what it can run."""

    executor: str
    organisation: str
    capabilities: tuple[CapabilityOffer, ...]
    trust: float = 1.0
    reliability: float = 1.0
    watts: float = 0.0
    capacity: int = 1
    # Runs a Bidder (answers calls for bids): a tender waits for these executors only, so
    # planning over executors that just take orders costs no bid window.
    bids: bool = False


class _OfferFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    executors: tuple[Offer, ...]


def _refuse(reason: Reason, detail: str, **evidence: str) -> Refusal:
    return Refusal(reason=reason, detail=detail, evidence=evidence)


def _parse(text: str | bytes, fmt: Literal["yaml", "json"]) -> object:
    if fmt == "json":
        return msgspec.json.decode(text)
    return yaml.safe_load(text)


def decode_goal(text: str | bytes, fmt: Literal["yaml", "json"] = "yaml") -> Goal | Refusal:
    """A Goal from YAML or JSON text, or an INVALID_GOAL refusal naming the offending field."""
    try:
        return msgspec.convert(_parse(text, fmt), Goal)
    except (msgspec.ValidationError, msgspec.DecodeError, yaml.YAMLError) as exc:
        return _refuse(Reason.INVALID_GOAL, f"goal does not decode: {exc}")


def decode_offers(
    text: str | bytes, fmt: Literal["yaml", "json"] = "yaml"
) -> tuple[Offer, ...] | Refusal:
    """Offers from `{executors: [...]}` or a bare list, or an INVALID_GOAL refusal."""
    try:
        raw = _parse(text, fmt)
        if isinstance(raw, list):
            return msgspec.convert(raw, tuple[Offer, ...])
        return msgspec.convert(raw, _OfferFile).executors
    except (msgspec.ValidationError, msgspec.DecodeError, yaml.YAMLError) as exc:
        return _refuse(Reason.INVALID_GOAL, f"offers do not decode: {exc}")


def _fmt(path: Path) -> Literal["yaml", "json"]:
    return "json" if path.suffix.lower() == ".json" else "yaml"


def load_goal(path: str | Path) -> Goal | Refusal:
    """Read a goal file (.yaml/.yml/.json). The only I/O in this module, kept for the shells."""
    p = Path(path)
    return decode_goal(p.read_bytes(), _fmt(p))


def load_offers(path: str | Path) -> tuple[Offer, ...] | Refusal:
    """Read an executors file (.yaml/.yml/.json)."""
    p = Path(path)
    return decode_offers(p.read_bytes(), _fmt(p))


def _validate_numbers(goal: Goal) -> list[Refusal]:
    out: list[Refusal] = []
    for s in goal.steps:
        if s.duration_ms < 0:
            out.append(
                _refuse(
                    Reason.INVALID_GOAL,
                    f"step {s.id} has a negative duration ({s.duration_ms} ms)",
                    step=s.id,
                )
            )
        if s.tokens < 0:
            out.append(_refuse(Reason.INVALID_GOAL, f"step {s.id} has negative tokens", step=s.id))
        if s.deadline_ms is not None and s.deadline_ms < 0:
            out.append(
                _refuse(Reason.INVALID_GOAL, f"step {s.id} has a negative deadline", step=s.id)
            )
        if not 0.0 <= s.min_trust <= 1.0:
            out.append(
                _refuse(Reason.INVALID_GOAL, f"step {s.id} min_trust must be in [0, 1]", step=s.id)
            )
    if goal.deadline_ms is not None and goal.deadline_ms < 0:
        out.append(_refuse(Reason.INVALID_GOAL, "the goal deadline is negative"))
    for name, value in (("tokens", goal.budget.tokens), ("cost", goal.budget.cost)):
        if value is not None and value < 0:
            out.append(_refuse(Reason.INVALID_GOAL, f"the {name} budget is negative"))
    for pool in goal.pools:
        if pool.capacity < 1:
            out.append(
                _refuse(
                    Reason.INVALID_GOAL, f"pool {pool.name} needs capacity >= 1", pool=pool.name
                )
            )
    return out


def _validate_offers(goal: Goal, offers: Sequence[Offer]) -> list[Refusal]:
    out: list[Refusal] = []
    for o in offers:
        if not (0.0 <= o.trust <= 1.0 and 0.0 <= o.reliability <= 1.0) or o.capacity < 1:
            out.append(
                _refuse(
                    Reason.INVALID_GOAL,
                    f"offer {o.executor}: trust and reliability must be in [0, 1], capacity >= 1",
                    executor=o.executor,
                )
            )
        for c in o.capabilities:
            if (c.duration_ms is not None and c.duration_ms < 0) or c.rate < 0 or c.rate_per_s < 0:
                out.append(
                    _refuse(
                        Reason.INVALID_GOAL,
                        f"offer {o.executor} quotes a negative duration or rate for {c.capability}",
                        executor=o.executor,
                    )
                )
    offered = {c.capability for o in offers for c in o.capabilities}
    for cap in sorted({s.capability for s in goal.steps} - offered):
        steps = ",".join(s.id for s in goal.steps if s.capability == cap)
        out.append(
            _refuse(
                Reason.UNKNOWN_CAPABILITY,
                f"no executor offers capability {cap!r} (needed by {steps})",
                capability=cap,
                steps=steps,
            )
        )
    return out


def validate(goal: Goal, offers: Sequence[Offer] | None = None) -> list[Refusal]:
    """Every structural reason the goal cannot be planned; empty means it is well formed."""
    out: list[Refusal] = []
    if not goal.steps:
        out.append(_refuse(Reason.INVALID_GOAL, "the goal has no steps"))
    for step_id, n in sorted(Counter(s.id for s in goal.steps).items()):
        if n > 1:
            out.append(
                _refuse(Reason.INVALID_GOAL, f"step id {step_id!r} is used {n} times", step=step_id)
            )
    needs = {s.id: s.needs for s in goal.steps}
    for step_id, dep in missing_dependencies(needs):
        out.append(
            _refuse(
                Reason.UNKNOWN_DEPENDENCY,
                f"step {step_id} needs {dep!r}, which is not a step of the goal",
                step=step_id,
                dependency=dep,
            )
        )
    cycle = find_cycle(needs)
    if cycle is not None:
        out.append(
            _refuse(
                Reason.CYCLE,
                "steps depend on each other: " + " -> ".join(cycle),
                cycle=",".join(cycle),
            )
        )
    ids = set(needs)
    for pool in goal.pools:
        for step_id in pool.steps:
            if step_id not in ids:
                out.append(
                    _refuse(
                        Reason.UNKNOWN_DEPENDENCY,
                        f"pool {pool.name} lists {step_id!r}, which is not a step of the goal",
                        pool=pool.name,
                        step=step_id,
                    )
                )
    out.extend(_validate_numbers(goal))
    if offers is not None:
        out.extend(_validate_offers(goal, offers))
    return out
