"""The web UI in a real browser: headless Chromium (Debian's package) against a running stack.

`maestro demo` runs the example goal with one injected executor failure (so the journal holds a
deviation and a replan); `maestro up` then serves that data dir, and the browser opens the list,
opens the workflow and finds the replan, the deviation and every step of the goal on the page.
The screenshot goes to the test's tmp dir and to artifacts/ (git-ignored), never committed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maestro.goal import load_goal
from streams.broker import find_server_binary
from streams.replies import Refusal

from ..test_up import _cli, maestro_up

ROOT = Path(__file__).resolve().parents[2]
# The flags this machine's Chromium needs (no sandbox as root, no calls to Google's hosts).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def chromium() -> str | None:
    for name in (os.environ.get("MAESTRO_CHROMIUM", ""), "chromium", "chromium-browser",
                 "google-chrome"):
        if name and (found := shutil.which(name)):
            return found
    return None


def _demo(home: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NATS_URL", "MAESTRO_SPACE", "NATS_NKEY", "MAESTRO_CREDS")}
    env.update(MAESTRO_HOME=str(home), COLUMNS="160")
    ran = subprocess.run([sys.executable, "-c", "from maestro.cli import main; main()", "demo"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
                         check=False)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]


@pytest.mark.slow
def test_the_ui_shows_a_replanned_workflow_in_a_real_browser(tmp_path: Path) -> None:
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no chromium binary (apt-get install chromium): the browser test skips")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (the test extra)")
    try:
        find_server_binary()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    goal = load_goal(ROOT / "examples" / "goal.yaml")
    assert not isinstance(goal, Refusal)
    home = tmp_path / "home"
    _demo(home)
    shots = [tmp_path / "ui-workflow.png"]
    with maestro_up(home, tmp_path, executors=False) as (_, _, http_port, log), \
            sync_api.sync_playwright() as play:
        assert f"http://127.0.0.1:{http_port}/ui" in log.read_text()
        browser = play.chromium.launch(executable_path=browser_path, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"http://127.0.0.1:{http_port}/")  # redirected to /ui/
            rows = page.locator("#workflows tbody tr")
            rows.first.wait_for(timeout=30_000)
            assert rows.count() == 1  # the demo's one workflow
            assert page.locator("#workflows tbody tr .s-completed").count() == 1
            rows.first.locator("a").first.click()
            page.wait_for_selector("#gantt", timeout=30_000)
            page.wait_for_selector("#live.on", timeout=30_000)  # following the journal (SSE)
            assert page.url.startswith(f"http://127.0.0.1:{http_port}/ui/workflows/")
            # The replan and the deviation: marked on the chart and listed under it.
            assert page.locator("#gantt .replan-line").count() >= 1
            assert page.locator("#gantt .deviation-mark").count() >= 1
            assert page.locator("#gantt .deadline").count() == 1
            assert page.locator("#gantt rect.planned.rev-1").count() >= 1  # the revision's bars
            assert page.locator("#marks li.replan").first.inner_text().startswith("#")
            deviation = page.locator("#marks li.deviation").first.inner_text()
            assert "deviation" in deviation and "injected failure" in deviation
            # Every step of the goal: a row of the chart, of the steps table, with its result.
            labels = set(page.locator("#gantt text.step-label").all_text_contents())
            for step in goal.steps:
                assert step.id in labels, step.id
                row = page.locator(f'#steps tr[data-step="{step.id}"]')
                assert row.count() == 1, step.id
                assert "completed" in row.inner_text()
                assert page.locator(f'#gantt rect.attempt[data-step="{step.id}"]').count() >= 1
            assert page.locator("#attempts .s-failed").count() >= 1  # the failed attempt
            assert page.locator("#journal tbody tr").count() >= len(goal.steps)
            assert page.locator("#audit tbody tr").count() >= 1
            # Read-only by default: the action buttons are there, and disabled.
            assert page.locator("#action-compensate").is_disabled()
            page.screenshot(path=str(shots[0]), full_page=True)
            # The same bars by executor: the failed one's lane and its replacement's.
            page.select_option("#lanes", "executor")
            lanes = set(page.locator("#gantt text.executor-label").all_text_contents())
            failed_on = page.locator("#attempts tr:has(.s-failed) td").nth(2).inner_text()
            assert failed_on in lanes and len(lanes) >= 2, (failed_on, lanes)
            shots.append(tmp_path / "ui-workflow-by-executor.png")
            page.locator("#gantt").screenshot(path=str(shots[1]))
            page.locator("a[href^='/ui/plans/']").first.click()
            page.wait_for_selector(".revision", timeout=30_000)
            assert page.locator(".revision .dissent table tbody tr").count() == len(goal.steps)
            # Live: the list follows the index; a workflow dispatched now appears unreloaded.
            page.locator("header nav a").first.click()
            rows.first.wait_for(timeout=30_000)
            page.wait_for_selector("#live.on", timeout=30_000)
            dispatched = _cli(["moon", "dispatch", str(ROOT / "examples" / "dag.yaml")], home)
            assert dispatched.returncode == 0, dispatched.stderr
            page.wait_for_function(
                "document.querySelectorAll('#workflows tbody tr').length === 2", timeout=30_000)
            assert page.locator("#workflows tbody tr .s-running").count() == 1
            assert not errors, errors
        finally:
            browser.close()
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    for shot in shots:
        shutil.copy(shot, artifacts / shot.name)
    assert shots[0].stat().st_size > 10_000
