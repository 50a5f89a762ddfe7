"""The UI's views as pure functions: attempts from a journal, planned bars with the dissent
kept, the list's filters and pages (no broker)."""

from __future__ import annotations

from moon import replay
from moon.workflow import decide
from streams.moon_events import (
    CompensationScheduled,
    Decision,
    Dispatch,
    StartStep,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepScheduled,
    StepSpec,
    StepStarted,
    Usage,
)
from surfaces.ui.views import ListQuery, attempts_of, list_page, planned_bars, workflow_view


def _d(*events, command=None):  # type: ignore[no-untyped-def]
    return Decision(command=command or StartStep(command_id="c", workflow_id="w", at_ms=0,
                                                 step="a", attempt=1, executor="x"),
                    events=list(events))


def test_attempts_pair_each_start_with_its_end_and_mark_compensations():
    journal = [
        (1, _d(StepScheduled(at_ms=10, step="a", attempt=1, executor="x1"))),
        (2, _d(StepStarted(at_ms=12, step="a", attempt=1, executor="x1"))),
        (3, _d(StepFailed(at_ms=20, step="a", attempt=1, error="boom",
                          usage=Usage(tokens=2)))),
        (4, _d(StepScheduled(at_ms=21, step="a", attempt=2, executor="x2"))),
        (5, _d(StepStarted(at_ms=22, step="a", attempt=2, executor="x2"))),
        (6, _d(StepCompleted(at_ms=30, step="a", attempt=2, usage=Usage(tokens=5)))),
        (7, _d(CompensationScheduled(at_ms=40, step="a", attempt=3, capability="undo"))),
        (8, _d(StepStarted(at_ms=41, step="a", attempt=3, executor="x2"))),
        (9, _d(StepCompensated(at_ms=45, step="a", attempt=3))),
    ]
    rows = [(a["attempt"], a["executor"], a["started_at"], a["ended_at"], a["outcome"],
             a["compensation"]) for a in attempts_of(journal)]
    assert rows == [(1, "x1", 12, 20, "failed", False), (2, "x2", 22, 30, "completed", False),
                    (3, "x2", 41, 45, "compensated", True)]
    assert attempts_of(journal)[0]["error"] == "boom"
    assert attempts_of(journal)[1]["usage"]["tokens"] == 5


def test_planned_bars_keep_the_replaced_bar_and_add_only_what_a_revision_changed():
    first = {"assignments": [{"step": "a", "executor": "x1", "start": 0, "end": 10},
                             {"step": "b", "executor": "x1", "start": 10, "end": 20}]}
    revised = {"assignments": [{"step": "a", "executor": "x1", "start": 0, "end": 10},
                               {"step": "b", "executor": "x2", "start": 12, "end": 22}]}
    bars = planned_bars([(0, first), (1, revised)])
    assert [(b["revision"], b["step"], b["executor"]) for b in bars] == [
        (0, "a", "x1"), (0, "b", "x1"), (1, "b", "x2")]


def test_workflow_view_places_plan_times_after_the_dispatch():
    dispatch = Dispatch(command_id="d", workflow_id="w", at_ms=1000, deadline_ms=1500,
                        steps=(StepSpec(id="a", capability="work"),))
    events = decide(dispatch, replay.fold([]))
    assert isinstance(events, list)
    journal = [(1, Decision(command=dispatch, events=events))]
    state = replay.fold(d for _, d in journal)
    view = workflow_view(state, journal, version=1,
                         plans=[(0, {"assignments": [{"step": "a", "executor": "x",
                                                      "start": 0, "end": 800}]})])
    assert view["t0"] == 1000 and view["deadline"] == 500
    assert view["axis"]["span"] == 800 and view["axis"]["plan_span"] == 800
    assert view["steps"][0]["planned_executor"] == "x"
    assert view["deviations"] == [] and view["replans"] == []


def test_the_list_filters_before_it_counts_and_pages_newest_first():
    rows = [{"workflow_id": f"w{k}", "status": "failed" if k % 3 == 0 else "completed",
             "updated_ms": k, "plan_id": "p" if k < 6 else None} for k in range(12)]
    page = list_page(rows, ListQuery(plan="p", per_page=2, page=2))
    assert page["total"] == 6 and page["pages"] == 3 and page["counts"] == {
        "failed": 2, "completed": 4}
    assert [r["workflow_id"] for r in page["items"]] == ["w3", "w2"]
    chip = list_page(rows, ListQuery(plan="p", status="failed"))
    assert chip["counts"] == page["counts"]  # the chips say what clicking another gives
    assert [r["workflow_id"] for r in chip["items"]] == ["w3", "w0"]
    assert list_page(rows, ListQuery(page=99, per_page=5))["page"] == 3  # clamped
    assert list_page(rows, ListQuery(q="W1"))["total"] == 3  # w1, w10, w11
    assert list_page(rows, ListQuery(since=4, until=5))["total"] == 2
