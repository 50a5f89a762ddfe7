"""What the web UI shows, as pure functions from verified journal items to JSON-ready values.

No broker, no clock: the adapters in surfaces/ui/cache.py read the journals (verified, as
surfaces/reads.py does) and hand the items here. The page draws what these return; nothing in
the browser re-derives a status, an attempt or a deviation.

Times: journal times are epoch ms; plan times are ms from the dispatch (MAESTRO's revisions
are solved with `now` = the time elapsed since the dispatch), so a planned bar sits at
`dispatched.at_ms + start` on the same axis as the executed ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from maestro.gantt import axis_ticks
from moon.screens import events_of, preview, shown_status, wait_hints
from moon.workflow import WorkflowState
from streams.moon_events import (
    CompensationFailed,
    CompensationScheduled,
    Decision,
    Deviation,
    ReplanApplied,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepScheduled,
    StepStarted,
    StepTimedOut,
)
from streams.plan_events import (
    AllocationRefused,
    Foreign,
    PlanAllocated,
    PlanProposed,
    PlanRatified,
    PlanRefused,
    PlanRevised,
    RevisionRefused,
)

__all__ = [
    "ListQuery",
    "attempts_of",
    "event_rows",
    "list_page",
    "plan_view",
    "planned_bars",
    "workflow_view",
]

_ENDED = {StepCompleted: "completed", StepFailed: "failed", StepTimedOut: "timed_out",
          StepCompensated: "compensated", CompensationFailed: "compensation_failed"}


def _usage(u: Any) -> dict[str, Any]:
    return {"tokens": u.tokens, "wall_ms": u.wall_ms, "joules": round(u.joules, 3)}


def attempts_of(items: Iterable[tuple[int, Decision]]) -> list[dict[str, Any]]:
    """Every attempt (and compensation attempt) of every step: when it was scheduled, who ran
    it from when to when, how it ended, what it cost, in journal order."""
    found: dict[tuple[str, int], dict[str, Any]] = {}

    def at(step: str, attempt: int) -> dict[str, Any]:
        key = (step, attempt)
        if key not in found:
            found[key] = {"step": step, "attempt": attempt, "executor": None,
                          "scheduled_at": None, "started_at": None, "ended_at": None,
                          "outcome": "", "error": "", "compensation": False,
                          "usage": None, "seq": 0}  # fmt: skip
        return found[key]

    for seq, decision in items:
        for event in decision.events:
            match event:
                case StepScheduled() | CompensationScheduled():
                    row = at(event.step, event.attempt)
                    row["scheduled_at"] = event.at_ms
                    row["executor"] = row["executor"] or event.executor
                    row["compensation"] = isinstance(event, CompensationScheduled)
                    row["seq"] = row["seq"] or seq
                case StepStarted():
                    row = at(event.step, event.attempt)
                    row["started_at"], row["executor"] = event.at_ms, event.executor
                case StepCompleted() | StepFailed() | StepCompensated() | CompensationFailed():
                    row = at(event.step, event.attempt)
                    row["ended_at"], row["outcome"] = event.at_ms, _ENDED[type(event)]
                    row["usage"] = _usage(event.usage)
                    row["error"] = getattr(event, "error", "")
                case StepTimedOut():
                    row = at(event.step, event.attempt)
                    row["ended_at"], row["outcome"] = event.at_ms, "timed_out"
                case _:
                    pass
    return list(found.values())


def planned_bars(plans: Sequence[tuple[int, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Planned bars (ms from the dispatch) of each revision, keeping a revision's bar only where
    it differs from the one before (the older bar stays: the dissent is shown, not replaced)."""
    out: list[dict[str, Any]] = []
    before: dict[str, tuple[str, int, int]] = {}
    for revision, plan in plans:
        for a in plan.get("assignments", ()):
            bar = (str(a["executor"]), int(a["start"]), int(a["end"]))
            if before.get(a["step"]) != bar:
                out.append({"revision": revision, "step": a["step"], "executor": bar[0],
                            "start": bar[1], "end": bar[2]})
                before[a["step"]] = bar
    return out


def event_rows(items: Iterable[tuple[int, Decision]]) -> list[dict[str, Any]]:
    """The journal as the page lists it: sequence number, time, command, its events."""
    return [msgspec.to_builtins(seen) for seen in events_of(items)]


def _marks(items: Sequence[tuple[int, Decision]]) -> tuple[list[dict[str, Any]],
                                                           list[dict[str, Any]]]:
    deviations, replans = [], []
    for seq, decision in items:
        for event in decision.events:
            if isinstance(event, Deviation):
                deviations.append({"seq": seq, "at_ms": event.at_ms, "kind": event.kind,
                                   "step": event.step, "attempt": event.attempt,
                                   "executor": event.executor, "detail": event.detail,
                                   "plan_revision": event.plan_revision})
            elif isinstance(event, ReplanApplied):
                replans.append({"seq": seq, "at_ms": event.at_ms, "revision": event.revision,
                                "reason": event.reason, "assignments": event.assignments})
    return deviations, replans


def workflow_view(state: WorkflowState, items: Sequence[tuple[int, Decision]], *, version: int,
                  plans: Sequence[tuple[int, Mapping[str, Any]]] = (),
                  quarantined: tuple[int, str] | None = None) -> dict[str, Any]:
    """The workflow page: headline, steps, attempts, planned bars, marks, the axis."""
    attempts = attempts_of(items)
    deviations, replans = _marks(items)
    t0 = state.dispatched.at_ms if state.dispatched else (items[0][1].command.at_ms
                                                          if items else 0)
    bars = planned_bars(plans)
    latest_plan = {b["step"]: b["executor"] for b in bars}
    last_of: dict[str, dict[str, Any]] = {}
    for a in attempts:
        if not a["compensation"]:
            last_of[a["step"]] = a
    steps = []
    for name, step in state.steps.items():
        last = last_of.get(name)
        ended = last["ended_at"] if last else None
        steps.append({
            "id": name, "capability": step.spec.capability, "needs": list(step.needs),
            "status": step.status, "attempt": step.attempt, "executor": step.executor,
            "assigned": step.assigned, "planned_executor": latest_plan.get(name),
            "started_at": step.started_at, "ended_at": ended,
            "duration_ms": (ended - step.started_at) if ended and step.started_at else None,
            "usage": _usage(step.usage), "result": preview(step.result, 200),
            "error": step.error, "compensation": step.spec.compensation,
        })  # fmt: skip
    ends = [a["ended_at"] or a["started_at"] or a["scheduled_at"] or t0 for a in attempts]
    actual_span = max([e - t0 for e in ends if e], default=0)
    plan_span = max([b["end"] for b in bars], default=0)
    deadline = state.deadline_ms - t0 if state.deadline_ms else None
    span = max(actual_span, plan_span, deadline or 0, 1)
    return {
        "workflow_id": state.workflow_id, "version": version, "status": state.status,
        "shown_status": "quarantined" if quarantined else shown_status(state),
        "plan_id": state.plan_id, "plan_revision": state.plan_revision,
        "on_failure": state.on_failure, "t0": t0, "deadline": deadline,
        "deadline_ms": state.deadline_ms, "late": state.late, "halted": state.halted,
        "budget_tokens": state.budget_tokens, "usage": _usage(state.usage),
        "hints": wait_hints(state), "steps": steps, "attempts": attempts, "planned": bars,
        "deviations": deviations, "replans": replans,
        "axis": {"span": span, "plan_span": plan_span, "actual_span": actual_span,
                 "ticks": [t for t, _ in axis_ticks(span, 100, "ms", min_gap=10)],
                 "actual_ticks": [t for t, _ in axis_ticks(max(actual_span, 1), 100, "ms",
                                                           min_gap=10)]},
        "forked_from": state.dispatched.forked_from if state.dispatched else None,
        "quarantined": None if quarantined is None else {"seq": quarantined[0],
                                                         "detail": quarantined[1]},
        "events": len(items),
    }  # fmt: skip


# -- the list ---------------------------------------------------------------------------------


class ListQuery(msgspec.Struct, frozen=True):
    """The list's filters: status, plan, updated since/until (epoch ms), id search, page."""

    status: str | None = None
    plan: str | None = None
    q: str | None = None  # a substring of the workflow id
    since: int | None = None
    until: int | None = None
    page: int = 1
    per_page: int = 50


def list_page(rows: Iterable[Mapping[str, Any]], query: ListQuery) -> dict[str, Any]:
    """One page of the index entries that pass the filters, newest first, with counts per
    status over what the other filters leave (so the status chips say what clicking gives)."""
    q = (query.q or "").strip().lower()
    kept: list[Mapping[str, Any]] = []
    counts: dict[str, int] = {}
    for r in rows:
        if query.plan and r.get("plan_id") != query.plan:
            continue
        if q and q not in str(r["workflow_id"]).lower():
            continue
        updated = int(r.get("updated_ms") or 0)
        if (query.since is not None and updated < query.since) or (
                query.until is not None and updated > query.until):
            continue
        counts[str(r["status"])] = counts.get(str(r["status"]), 0) + 1
        if query.status and r["status"] != query.status:
            continue
        kept.append(r)
    kept.sort(key=lambda r: (-int(r.get("updated_ms") or 0), str(r["workflow_id"])))
    per_page = max(1, min(query.per_page, 500))
    pages = max(1, -(-len(kept) // per_page))
    page = max(1, min(query.page, pages))
    return {"total": len(kept), "page": page, "pages": pages, "per_page": per_page,
            "counts": counts, "items": [dict(r) for r in
                                        kept[(page - 1) * per_page: page * per_page]]}


# -- plans ------------------------------------------------------------------------------------


def _json(data: bytes) -> Any:
    return msgspec.json.decode(data) if data else None


def plan_view(plan_id: str, batches: Iterable[tuple[int, int, Any]]) -> dict[str, Any]:
    """A plan as its journal tells it: the goal, the proposed plan, anticipation, bids, awards,
    ratifications, every revision with the plan it replaced (the dissent), refusals; and the
    messages MAESTRO did not write, named as such. `batches` are (seq, at_ms, PlanBatch |
    Foreign) in journal order."""
    out: dict[str, Any] = {"plan_id": plan_id, "status": "none", "goal": None, "plan": None,
                           "anticipation": None, "bids": None, "awards": None,
                           "workflow_id": None, "owner": "", "revisions": [], "refusals": [],
                           "ratifications": [], "foreign": [], "history": []}  # fmt: skip
    for seq, _, batch in batches:
        if isinstance(batch, Foreign):
            out["foreign"].append({"seq": seq, "detail": batch.detail})
            continue
        for event in batch.events:
            out["history"].append({"seq": seq, "at_ms": event.at_ms, "type": type(event).__name__})
            match event:
                case PlanProposed():
                    out.update(status="awaiting_ratification" if event.awaiting_ratification
                               else "planned", goal=_json(event.goal), plan=_json(event.plan),
                               anticipation=_json(event.anticipation), bids=_json(event.bids),
                               owner=event.owner, proposed_at=event.at_ms)
                case PlanRefused():
                    out.update(status="refused", goal=_json(event.goal) or out["goal"])
                    out["refusals"].extend({"seq": seq, "reason": r.reason.value,
                                            "detail": r.detail} for r in event.reasons)
                case PlanRatified():
                    out["status"] = "planned" if event.approved else "rejected"
                    out["ratifications"].append({"seq": seq, "approved": event.approved,
                                                 "by": event.by, "note": event.note})
                case PlanAllocated():
                    out.update(status="allocated", workflow_id=event.workflow_id,
                               awards=_json(event.awards), orders=len(event.orders))
                case AllocationRefused() | RevisionRefused():
                    out["refusals"].extend({"seq": seq, "reason": r.reason.value,
                                            "detail": r.detail, "type": type(event).__name__}
                                           for r in event.reasons)
                case PlanRevised():
                    out["revisions"].append({
                        "seq": seq, "at_ms": event.at_ms, "revision": event.revision,
                        "why": event.why, "moved": event.moved, "plan": _json(event.plan),
                        "dissent": _json(event.previous)})  # fmt: skip
                    out["plan_revision"] = event.revision
                case _:
                    pass
    return out
