"""The public Python API against a running stack (`maestro up --demo-executors`):

    python examples/api_run.py [DATA_DIR]

plans the example goal, runs it through the signed gates, waits for the workflow to end, then
dispatches a two-step DAG without planning. Exits 0 when both completed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from maestro.client import Stack
from streams.moon_events import StepSpec

GOAL = Path(__file__).resolve().parent / "goal.yaml"


async def main(data_dir: str | None) -> int:
    async with Stack.connect(data_dir) as stack:
        run = await stack.run(GOAL)
        print(f"{run.workflow_id}: {run.state.status if run.state else '?'} "
              f"(plan {run.plan_id}, makespan {run.plan.get('makespan')}, audit {run.audit})")
        dag = await stack.dispatch([
            StepSpec(id="draft", capability="writing.llm"),
            StepSpec(id="publish", capability="publish.cms", needs=("draft",)),
        ])
        state = await stack.wait(dag.workflow_id, timeout_s=120)
        print(f"{dag.workflow_id}: {state.status}")
        ok = run.state is not None and run.state.status == "completed"
        return 0 if ok and state.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None)))
