"""An executor in a few lines, against a running stack (`maestro up`):

    python examples/executor.py [DATA_DIR]          # serve, run a DAG on itself, exit 0 if done
    python examples/executor.py [DATA_DIR] --serve  # serve until Ctrl-C: `moon dispatch
                                                    # examples/dag.yaml` then completes

It offers the capabilities examples/dag.yaml asks for: fetch, summarise, publish and its undo,
unpublish.
"""

from __future__ import annotations

import asyncio
import sys

from maestro.client import Context, Executor, Stack
from streams.moon_events import StepSpec

app = Executor("example-executor")


@app.capability("fetch")
async def fetch(ctx: Context) -> str:
    return "MOON journals every decision; MAESTRO plans who does what, and when."


@app.capability("summarise")
async def summarise(ctx: Context) -> dict[str, str]:
    text = ctx.input("fetch")
    done = ctx.resume_json(default={"words": 0})  # what an earlier attempt checkpointed
    words = text.split()
    await ctx.checkpoint({"words": len(words)})  # a retry after a crash resumes from here
    ctx.used(tokens=len(words) - done["words"] + 1)  # counted in the workflow's budget
    return {"summary": " ".join(words[:5]) + " …"}


@app.capability("publish")
async def publish(ctx: Context) -> str:
    channel = ctx.params_json(default={}).get("channel", "weekly")
    return f"published to {channel}: {ctx.input('summarise')}"


@app.capability("unpublish")
async def unpublish(ctx: Context) -> str:
    return f"withdrawn: {ctx.step}"


async def main(data_dir: str | None, serve: bool) -> int:
    async with Stack.connect(data_dir) as stack:
        if serve:
            await app.run(stack)  # until Ctrl-C or SIGTERM
            return 0
        async with app.serving(stack):
            dag = await stack.dispatch([
                StepSpec(id="fetch", capability="fetch", executor=app.executor_id),
                StepSpec(id="summarise", capability="summarise", needs=("fetch",),
                         executor=app.executor_id, heartbeat_timeout_ms=10_000),
            ])
            state = await stack.wait(dag.workflow_id, timeout_s=60)
        result = (state.steps["summarise"].result or b"").decode()
        print(f"{dag.workflow_id}: {state.status} {result} (tokens {state.usage.tokens})")
        return 0 if state.status == "completed" else 1


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--serve"]
    sys.exit(asyncio.run(main(args[0] if args else None, "--serve" in sys.argv[1:])))
