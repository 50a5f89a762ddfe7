"""Screens at 80 and 160 columns: the Gantt and `moon status` keep every step id whole and draw
the deadline; status decodes results, says why a workflow waits, and shows a quarantine."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest
from rich.console import Console
from typer.testing import CliRunner

from maestro.cli import app
from maestro.gantt import gantt, gantt_text, step_costs
from maestro.gantt_html import gantt_html
from maestro.goal import load_goal, load_offers
from maestro.planner import plan_goal
from maestro.solve import SolveOptions
from moon import replay
from moon.index import WorkflowSummary
from moon.list_screen import list_lines
from moon.screens import events_of, list_view, shown_status, state_json, status_view, wait_hints
from moon.workflow import decide
from streams.moon_events import (
    CompleteStep,
    Decision,
    Dispatch,
    FailStep,
    MoonCommand,
    RetryPolicy,
    StartStep,
    StepSpec,
)
from streams.replies import Refusal

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
WIDTHS = (80, 160)
T0 = 1_780_000_000_000


@pytest.fixture(scope="module")
def planned() -> Any:
    goal = load_goal(EXAMPLES / "goal.yaml")
    offers = load_offers(EXAMPLES / "executors.yaml")
    assert not isinstance(goal, Refusal) and not isinstance(offers, Refusal)
    outcome = plan_goal(goal, offers, options=SolveOptions(time_limit_s=2, workers=1),
                        rng=random.Random(0))
    assert outcome.plan.assignments
    return goal, outcome


def render(renderable: Any, width: int) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(renderable)
    return buf.getvalue()


@pytest.mark.parametrize("width", WIDTHS)
def test_gantt_keeps_step_names_whole_and_draws_the_deadline(planned: Any, width: int) -> None:
    goal, outcome = planned
    plan = outcome.plan
    text = render(gantt(plan, deadline=goal.deadline_ms,
                        costs=step_costs(outcome.problem, plan)), width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines)
    rows = {a.step: next(line for line in lines if line.startswith(a.step + " "))
            for a in plan.assignments}  # every step heads its own row, its name whole
    deadline_col = {line.index("|", len(step)) for step, line in rows.items()
                    if "|" in line[len(step):]}
    assert len(deadline_col) == 1, "the deadline is one column down the chart"
    assert "deadline 480s" in text
    for step, line in rows.items():  # one bar per row: neighbours never run together
        bar = line[len(step):].replace("|", " ").strip().split(" ")[-1]
        assert bar.startswith(("├", "▌")), line
    axis = next(line for line in lines if "┬" in line)
    assert axis.count("┬") >= 4, "axis ticks"
    assert "0s" in text and "100s" in text
    table = lines[lines.index(next(ln for ln in lines if ln.startswith("step "))):]
    for a in plan.assignments:  # the start/end/executor/cost table
        assert any(ln.split()[:2] == [a.step, a.executor] for ln in table), a.step
    if width >= 160:
        assert len(axis.rstrip()) > 120, "the chart uses the terminal's width"


def test_gantt_text_fits_a_narrow_terminal(planned: Any) -> None:
    goal, outcome = planned
    text = gantt_text(outcome.plan, deadline=goal.deadline_ms, width=40)
    for a in outcome.plan.assignments:
        assert any(line.startswith(a.step + " ") for line in text.splitlines())


def test_gantt_html_is_one_self_contained_page(planned: Any, tmp_path: Path) -> None:
    goal, outcome = planned
    page = gantt_html(outcome.plan, deadline=goal.deadline_ms,
                      costs=step_costs(outcome.problem, outcome.plan), title=goal.name)
    assert page.startswith("<!doctype html>")
    assert "<script" not in page and " src=" not in page and "<link" not in page
    assert page.replace('xmlns="http://www.w3.org/2000/svg"', "").count("http") == 0
    for a in outcome.plan.assignments:
        assert f">{a.step}<" in page
    assert 'class="deadline"' in page and "deadline 480s" in page


# --- moon status -----------------------------------------------------------------------------

LONG = "summarise-the-quarterly-filings"


def history(*, fail_for_good: bool = True) -> list[tuple[int, Decision]]:
    """A real journal, decided by the pure core: a done, its result UTF-8; b failed for good
    under on_failure wait; c never started."""
    steps = (StepSpec(id="fetch", capability="data.fetch"),
             StepSpec(id=LONG, capability="llm", needs=("fetch",),
                      retry=RetryPolicy(maximum_attempts=1)),
             StepSpec(id="publish", capability="cms", needs=(LONG,)))
    commands: list[MoonCommand] = [
        Dispatch(command_id="d", workflow_id="wf-1", at_ms=T0, steps=steps,
                 deadline_ms=T0 + 600_000),
        StartStep(command_id="s1", workflow_id="wf-1", at_ms=T0 + 1000, step="fetch", attempt=1,
                  executor="acme-fetcher"),
        CompleteStep(command_id="c1", workflow_id="wf-1", at_ms=T0 + 3500, step="fetch",
                     attempt=1, result=b'{"rows": 12, "source": "sec.gov"}'),
    ]
    if fail_for_good:
        commands += [
            StartStep(command_id="s2", workflow_id="wf-1", at_ms=T0 + 4000, step=LONG, attempt=1,
                      executor="globex-llm"),
            FailStep(command_id="f2", workflow_id="wf-1", at_ms=T0 + 9000, step=LONG, attempt=1,
                     error="rate limited\nby provider", retryable=False),
        ]
    state, out = replay.initial, []
    for seq, command in enumerate(commands, start=40):  # stream-global numbers, not 1..n
        events = decide(command, state)
        assert not isinstance(events, Refusal), events
        decision = Decision(command=command, events=events)
        state = replay.apply(state, decision)
        out.append((seq, decision))
    return out


@pytest.mark.parametrize("width", WIDTHS)
def test_status_keeps_step_ids_whole_and_shows_the_deadline(width: int) -> None:
    items = history()
    state = replay.fold(d for _, d in items)
    text = render(status_view(state, events_of(items), width=width, now_ms=T0 + 10_000,
                              items=items), width)
    lines = text.splitlines()
    for step in state.steps:
        assert any(line.split()[:1] == [step] for line in lines), step
    assert "deadline " in lines[0]
    assert "waiting for a replan (on_failure: wait)" in text
    assert "no executor has taken it yet" not in text  # publish is pending, not scheduled
    assert f"✗ {LONG} (attempt 1): rate limited by provider" in text  # its own line, one line
    assert '→ fetch: {"rows": 12, "source": "sec.gov"}' in text  # decoded, not base64
    assert "2.5s" in text  # fetch's duration, from its start and end
    for seq, _ in items:
        assert f"#{seq}" in text  # the sequence numbers replay/fork/diff take
    assert all(len(line) <= width for line in lines)
    assert "tokens" not in lines[2], "an empty column is dropped"


def test_status_hints_at_an_unstarted_step_and_json_decodes_results() -> None:
    items = history(fail_for_good=False)
    state = replay.fold(d for _, d in items)
    assert any("no executor has taken it yet" in h for h in wait_hints(state))
    shown = state_json(state, events_of(items))
    assert shown["steps"]["fetch"]["result"] == '{"rows": 12, "source": "sec.gov"}'
    assert [e["seq"] for e in shown["events"]] == [40, 41, 42]
    assert shown["quarantined"] is None


def test_compensation_failed_and_quarantine_are_shown_as_such() -> None:
    items = history()
    state = replay.fold(d for _, d in items)
    broken = msgspec.structs.replace(state, status="compensated", steps={
        **state.steps, "fetch": msgspec.structs.replace(state.steps["fetch"],
                                                        status="compensation_failed")})
    assert shown_status(broken) == "compensation_failed"
    text = render(status_view(state, events_of(items), quarantined=(45, "bad signature")), 80)
    assert "quarantined" in text.splitlines()[0]
    assert "journal seq 45 does not verify" in text
    assert state_json(state, quarantined=(45, "x"))["quarantined"] == {"seq": 45, "detail": "x"}


def test_list_shows_why_a_workflow_is_quarantined() -> None:
    summaries = [WorkflowSummary(workflow_id="wf-ok", status="completed", steps=3, completed=3,
                            version=9, updated_ms=T0),
            WorkflowSummary(workflow_id="wf-bad", status="quarantined", steps=0, completed=0,
                            version=12, updated_ms=T0, detail="journal seq 12 does not verify")]
    rows = [msgspec.json.decode(msgspec.json.encode(r)) for r in summaries]  # as the index holds
    text = render(list_view(rows), 100)
    assert "journal seq 12 does not verify" in text and "detail" in text
    assert "detail" not in render(list_view(rows[:1]), 100)
    lines = list_lines(rows)
    assert lines[0].split() == ["workflow", "status", "done", "tokens", "seq", "updated", "detail"]
    assert lines[2].startswith("wf-bad ") and lines[2].endswith("journal seq 12 does not verify")
    assert "detail" not in list_lines(rows[:1])[0] and "\x1b[" not in "".join(lines)
    assert "\x1b[32mcompleted" in list_lines(rows[:1], colour=True)[1]  # status coloured


def test_maestro_plan_writes_the_html_page(tmp_path: Path) -> None:
    page = tmp_path / "plan.html"
    done = CliRunner().invoke(app, ["plan", str(EXAMPLES / "goal.yaml"), "--time-limit", "2",
                                    "--html", str(page)], env={"COLUMNS": "80"})
    assert done.exit_code == 0, done.output
    assert "gather-sources" in page.read_text() and "<script" not in page.read_text()
    assert all(len(line) <= 80 for line in done.stdout.splitlines())
