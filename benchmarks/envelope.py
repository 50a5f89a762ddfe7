"""Open+verify throughput and latency of the envelope, against bare pynacl verify of the same bytes;
then a gate round trip on a real nats-server, with per-process limits and with limits shared by
replicas (KV nonces, treaty buckets, ledger), in the same run.

Run: /work/venv/bin/python -m benchmarks.envelope [--n 3000] [--runs 3] [--gate-n 400]
or benchmarks/envelope.py (its folder leaves sys.path, or this file would shadow the package).
Open+verify is pinned to one core, bare and full runs alternating so machine load hits both
alike; the gate rounds alternate memory/shared for the same reason (unpinned: the broker is
another process). NATS_URL uses a running server; otherwise an embedded one in a temp folder.
"""

from __future__ import annotations

# ruff: noqa: E402 - sys.path is fixed before the envelope package is imported
import sys
from pathlib import Path

# Run as a script, this file would be imported as `envelope`; drop its folder from the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import argparse
import asyncio
import hashlib
import logging
import os
import statistics
import tempfile
import time

import msgspec
import nacl.signing
import structlog
from nats.aio.client import Client as Nats

from envelope.budget import MemoryLedger
from envelope.client import Client, Reply
from envelope.gate import Gate
from envelope.grants import Caveats, grant_ref, mint_grant, pae
from envelope.keys import KeyRing, Signer, signer_from_seed
from envelope.seal import ENVELOPE_TYPE, NonceCache, Opened, Trust, Wire, open_envelope, seal
from envelope.shared import LIMITS, set_balance
from envelope.treaty import TreatyLimiter
from streams.broker import EmbeddedBroker, open_connection
from streams.config import Topology, ensure_bucket, ensure_streams
from streams.subjects import Space

NOW = 1_700_000_000_000
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def key(name: str) -> Signer:
    return signer_from_seed(hashlib.sha256(name.encode()).digest())


def envelopes(n: int) -> tuple[Trust, list[bytes]]:
    root, service, caller = key("root"), key("service"), key("caller")
    grant = mint_grant(
        root,
        audience=caller.did,
        capability="moon:*",
        nonce=b"g" * 16,
        not_before_ms=NOW - 3_600_000,
        expiry_ms=NOW + 3_600_000,
        caveats=Caveats(max_tokens=10**9),
    )
    body = msgspec.msgpack.encode(
        {
            "intent": "The conductor.",
            "budget": {"tokens": 200_000, "deadline_ms": 8000},
            "return": ["result", "audit"],
        }
    )
    sealed = [
        seal(
            caller,
            audience=service.did,
            capability="moon:dispatch",
            body=body,
            grants=[grant],
            grant=grant_ref(grant),
            traceparent=TRACE,
            request_id=f"r{i}",
            nonce=i.to_bytes(16, "big"),
            now_ms=NOW,
        )
        for i in range(n)
    ]
    trust = Trust(audience=service.did, keys=KeyRing(), roots=frozenset({root.did}))
    return trust, sealed


def run_full(trust: Trust, sealed: list[bytes]) -> list[int]:
    seen, limiter, ledger = NonceCache(), TreatyLimiter(), MemoryLedger()
    timings = []
    clock = time.perf_counter_ns
    for data in sealed:
        start = clock()
        opened = open_envelope(
            data,
            trust=trust,
            capability="moon:dispatch",
            now_ms=NOW,
            seen=seen,
            limiter=limiter,
            ledger=ledger,
        )
        timings.append(clock() - start)
        assert isinstance(opened, Opened), opened
    return timings


def run_bare(items: list[tuple[nacl.signing.VerifyKey, bytes, bytes]]) -> list[int]:
    timings = []
    clock = time.perf_counter_ns
    for verify_key, message, sig in items:
        start = clock()
        verify_key.verify(message, sig)
        timings.append(clock() - start)
    return timings


def summary(timings: list[int]) -> tuple[float, float, float]:
    ordered = sorted(timings)
    rate = len(timings) / (sum(timings) / 1e9)
    return rate, ordered[len(ordered) // 2] / 1000, ordered[int(len(ordered) * 0.99)] / 1000


class Ping(msgspec.Struct, frozen=True):
    ok: bool = True


async def gate_round(nc: Nats, space_name: str, *, shared: bool, n: int) -> list[int]:
    """n sequential requests through a gate; the latency of each as the caller sees it (ns)."""
    space = Space(space_name)
    js = nc.jetstream()
    await ensure_streams(js, Topology(space=space))
    await ensure_bucket(js, space, LIMITS)
    root, service, caller = key("root"), key("service"), key("caller")
    now = time.time_ns() // 1_000_000
    grant = mint_grant(root, audience=caller.did, capability="bench:*", nonce=b"g" * 16,
                       not_before_ms=now - 3_600_000, expiry_ms=now + 3_600_000,
                       caveats=Caveats(max_tokens=10**9))
    trust = Trust(audience=service.did, keys=KeyRing(), roots=frozenset({root.did}))
    ledger = MemoryLedger(balances={caller.did: 10**12})  # metered in both modes alike
    gate = Gate(nc, service="bench", signer=service, trust=trust, space=space,
                shared_limits=shared, ledger=None if shared else ledger)
    if shared:  # a metered caller: every request reads and updates its balance (CAS)
        await set_balance(js, caller.did, 10**12, space=space)

    async def ping(opened: Opened) -> Ping:
        return Ping()

    gate.route("ping", ping)
    client = Client(nc, caller, {"bench": service.did}, grant=[grant], space=space)
    body = {"budget": {"tokens": 10, "deadline_ms": 1000}}
    timings = []
    async with gate.serving():
        for i in range(n + 20):
            start = time.perf_counter_ns()
            reply = await client.call("bench.ping", body)
            if i >= 20:  # the first few warm caches and connections
                timings.append(time.perf_counter_ns() - start)
            assert isinstance(reply, Reply), reply
    return timings


async def gate_bench(n: int, runs: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    broker = None
    url = os.environ.get("NATS_URL")
    folder = tempfile.TemporaryDirectory(prefix="bench-gate-")
    if not url:
        broker = EmbeddedBroker(data_dir=Path(folder.name)).start()
        url = broker.url
    nc = await open_connection(url, name="bench-gate")
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    try:
        for run in range(runs):
            for shared in (False, True):
                timings = sorted(await gate_round(nc, f"b{os.getpid()}r{run}{int(shared)}",
                                                  shared=shared, n=n))
                p50, p99 = timings[len(timings) // 2] / 1e6, timings[int(len(timings) * .99)] / 1e6
                results[shared].append((p50, p99))
                print(f"gate run {run + 1} {'shared' if shared else 'memory'}: "
                      f"p50 {p50:6.2f} ms p99 {p99:6.2f} ms")
    finally:
        await nc.close()
        if broker is not None:
            broker.stop()
        folder.cleanup()
    memory = statistics.median(p for p, _ in results[False])
    shared_p50 = statistics.median(p for p, _ in results[True])
    print(f"\ngate round trip, {n} sequential requests per run, medians of {runs} runs "
          f"(load {os.getloadavg()[0]:.2f}):")
    print(f"  per-process limits: p50 {memory:6.2f} ms  p99 "
          f"{statistics.median(q for _, q in results[False]):6.2f} ms")
    print(f"  shared (KV) limits: p50 {shared_p50:6.2f} ms  p99 "
          f"{statistics.median(q for _, q in results[True]):6.2f} ms")
    print(f"  added by sharing: p50 {shared_p50 - memory:+.2f} ms per request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=None, help="core to pin to (default: last)")
    parser.add_argument("--gate-n", type=int, default=400,
                        help="requests per gate round trip run (0: skip the gate part)")
    args = parser.parse_args()
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})

    full_rates, bare_rates, p50s, p99s, bare_p50s, bare_p99s = [], [], [], [], [], []
    for run in range(args.runs):
        trust, sealed = envelopes(args.n)  # fresh nonces each run: replays would short-cut
        items = []
        for data in sealed:
            wire = msgspec.msgpack.decode(data, type=Wire)
            known = trust.keys.lookup(wire.kid)
            assert known is not None  # the bench sealed these with its own keys
            vk = nacl.signing.VerifyKey(known.encode())
            items.append((vk, pae(ENVELOPE_TYPE, wire.payload), wire.sig))
        bare_rate, bare_p50, bare_p99 = summary(run_bare(items))
        full_rate, p50, p99 = summary(run_full(trust, sealed))
        full_rates.append(full_rate)
        bare_rates.append(bare_rate)
        p50s.append(p50)
        p99s.append(p99)
        bare_p50s.append(bare_p50)
        bare_p99s.append(bare_p99)
        print(
            f"run {run + 1}: open+verify {full_rate:8.0f}/s p50 {p50:6.1f} us p99 {p99:6.1f} us"
            f" | bare verify {bare_rate:8.0f}/s p50 {bare_p50:6.1f} us p99 {bare_p99:6.1f} us"
            f" | ratio {full_rate / bare_rate:.2f}"
        )
    full, bare = statistics.median(full_rates), statistics.median(bare_rates)
    ratios = [f / b for f, b in zip(full_rates, bare_rates, strict=True)]
    print(
        f"\nenvelope size {len(sealed[0])} B, {args.n} requests per run, core {cpu}, "
        f"medians of {args.runs} runs:"
    )
    print(
        f"  open+verify : {full:8.0f} req/s  p50 {statistics.median(p50s):6.1f} us  "
        f"p99 {statistics.median(p99s):6.1f} us"
    )
    print(
        f"  bare verify : {bare:8.0f} req/s  p50 {statistics.median(bare_p50s):6.1f} us  "
        f"p99 {statistics.median(bare_p99s):6.1f} us"
    )
    print(f"  ratio open/bare: {statistics.median(ratios):.2f} (target >= 0.60)")
    if args.gate_n:
        os.sched_setaffinity(0, cores)
        print()
        asyncio.run(gate_bench(args.gate_n, args.runs))


if __name__ == "__main__":
    main()
