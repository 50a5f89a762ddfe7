"""A stand-in handler for `moon worker` without --exec/--http: echoes its inputs."""

from __future__ import annotations

from moon.worker import Result, StepContext

__all__ = ["echo"]


async def echo(ctx: StepContext) -> Result:
    joined = b"|".join(ctx.inputs.values())
    return Result(output=f"{ctx.order.step}({joined.decode(errors='replace')})".encode(), tokens=1)
