"""The goal model: strict decoding and every structural refusal reason."""

from __future__ import annotations

from maestro.goal import (
    Goal,
    Pool,
    Step,
    decode_goal,
    decode_offers,
    load_goal,
    load_offers,
    validate,
)
from streams.replies import Reason, Refusal
from tests.maestro.conftest import EXAMPLES, offer


def reasons(refusals: list[Refusal]) -> set[Reason]:
    return {r.reason for r in refusals}


def test_the_example_goal_and_executors_load_and_validate() -> None:
    """examples/goal.yaml and executors.yaml decode and have nothing to refuse."""
    goal = load_goal(EXAMPLES / "goal.yaml")
    offers = load_offers(EXAMPLES / "executors.yaml")
    assert isinstance(goal, Goal)
    assert not isinstance(offers, Refusal)
    assert validate(goal, offers) == []
    assert len(goal.steps) == 8


def test_unknown_fields_are_refused_not_ignored() -> None:
    """A typo in a goal file is an INVALID_GOAL refusal naming the field."""
    bad = decode_goal("name: g\nsteps: [{id: a, capability: c, duraton_ms: 5}]\n")
    assert isinstance(bad, Refusal)
    assert bad.reason == Reason.INVALID_GOAL
    assert "duraton_ms" in bad.detail


def test_json_goals_and_bare_offer_lists_decode() -> None:
    """JSON is accepted as well as YAML, and offers may be a bare list."""
    goal = decode_goal(b'{"name": "g", "steps": [{"id": "a", "capability": "c"}]}', "json")
    assert isinstance(goal, Goal)
    offers = decode_offers("- {executor: x, organisation: o, capabilities: [{capability: c}]}")
    assert not isinstance(offers, Refusal)
    assert offers[0].executor == "x"


def test_a_cycle_is_named() -> None:
    """A cycle refusal spells out the loop."""
    goal = Goal("g", (Step("a", "c", needs=("b",)), Step("b", "c", needs=("a",))))
    (refusal,) = validate(goal)
    assert refusal.reason == Reason.CYCLE
    assert refusal.detail.endswith("a -> b -> a")


def test_unknown_dependencies_duplicates_and_negative_numbers_are_refused() -> None:
    """Each structural defect gets its own reason."""
    goal = Goal(
        "g",
        (Step("a", "c", duration_ms=-1), Step("a", "c"), Step("b", "c", needs=("zz",))),
        pools=(Pool("p", 0, steps=("nope",)),),
    )
    found = validate(goal)
    assert {Reason.INVALID_GOAL, Reason.UNKNOWN_DEPENDENCY} == reasons(found)
    details = " ".join(r.detail for r in found)
    assert "negative duration" in details
    assert "used 2 times" in details
    assert "'zz'" in details
    assert "pool p" in details


def test_unknown_capabilities_are_refused_when_offers_are_given() -> None:
    """A capability nobody offers is UNKNOWN_CAPABILITY, naming the steps that need it."""
    goal = Goal("g", (Step("a", "telepathy"),))
    (refusal,) = validate(goal, [offer("x", ("work", 1, 1))])
    assert refusal.reason == Reason.UNKNOWN_CAPABILITY
    assert refusal.evidence["steps"] == "a"
    assert validate(goal) == []
