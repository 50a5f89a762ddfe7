"""What a claim costs the broker with and without WORK's keeper (moon/keeper.py).

    python benchmarks/claims.py [--runs 3] [--n 1000]

One embedded nats-server (sync_interval: always, as MOON runs it) in a temp dir. Each run
makes two work-queue streams as MOON makes WORK, one with a keeper in it and one without, and
on each, one order at a time: publish an order (1.5 KB, the size of a signed one), fetch it
on a pull consumer, and claim it (`ack_sync`: the broker removes it, durably, before it
answers). Without a keeper every claim empties the stream, and the broker makes a new block
file for the next order; with one, the claim is a tombstone appended to a live block. The two
alternate which goes first from run to run; medians over runs, min-max in brackets, and the
ratio keeper / none measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from nats.js import JetStreamContext, api  # noqa: E402

from moon.keeper import KEEP_TTL  # noqa: E402
from streams.broker import EmbeddedBroker, open_connection  # noqa: E402

ORDER = b"o" * 1500


async def claims(js: JetStreamContext, name: str, *, keeper: bool, n: int) -> list[float]:
    """The claim's seconds, order by order."""
    await js.add_stream(api.StreamConfig(
        name=name, subjects=[f"{name}.>"], retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE, allow_msg_ttl=True))
    if keeper:
        await js.publish(f"{name}.kept", b"", headers={"Nats-TTL": KEEP_TTL})
    pull = await js.pull_subscribe(f"{name}.order", durable="c", stream=name)
    took = []
    for _ in range(n):
        await js.publish(f"{name}.order", ORDER)
        [msg] = await pull.fetch(1, timeout=5)
        started = time.perf_counter()
        await msg.ack_sync()
        took.append(time.perf_counter() - started)
    await js.delete_stream(name)
    return took


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


async def bench(url: str, runs: int, n: int) -> None:
    nc = await open_connection(url, name="bench-claims")
    js = nc.jetstream()
    p50: dict[bool, list[float]] = {False: [], True: []}
    ratios = []
    try:
        for run in range(runs):
            order = (False, True) if run % 2 == 0 else (True, False)
            for keeper in order:
                took = await claims(js, f"W{run}{int(keeper)}", keeper=keeper, n=n)
                p50[keeper].append(statistics.median(took) * 1e3)
            ratios.append(p50[True][-1] / p50[False][-1])
    finally:
        await nc.close()
    print(f"claim (ack_sync) p50 ms over {runs} runs of {n}:")
    print(f"  without a keeper  {_spread(p50[False])}")
    print(f"  with a keeper     {_spread(p50[True])}")
    print(f"  keeper / none     {_spread(ratios)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-claims-") as tmp:
        broker = EmbeddedBroker(data_dir=Path(tmp)).start()
        try:
            asyncio.run(bench(broker.url, args.runs, args.n))
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
