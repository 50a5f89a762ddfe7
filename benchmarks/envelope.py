"""Open+verify throughput and latency of the envelope, against bare pynacl verify of the same bytes.

Run: /work/venv/bin/python -m benchmarks.envelope [--n 3000] [--runs 3]
or benchmarks/envelope.py (its folder leaves sys.path, or this file would shadow the package).
Pinned to one core; bare and full runs alternate so machine load hits both alike.
"""

from __future__ import annotations

# ruff: noqa: E402 - sys.path is fixed before the envelope package is imported
import sys
from pathlib import Path

# Run as a script, this file would be imported as `envelope`; drop its folder from the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import argparse
import hashlib
import os
import statistics
import time

import msgspec
import nacl.signing

from envelope.budget import MemoryLedger
from envelope.grants import Caveats, grant_ref, mint_grant, pae
from envelope.keys import KeyRing, Signer, signer_from_seed
from envelope.seal import ENVELOPE_TYPE, NonceCache, Opened, Trust, Wire, open_envelope, seal
from envelope.treaty import TreatyLimiter

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=None, help="core to pin to (default: last)")
    args = parser.parse_args()
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})

    full_rates, bare_rates, p50s, p99s, bare_p50s, bare_p99s = [], [], [], [], [], []
    for run in range(args.runs):
        trust, sealed = envelopes(args.n)  # fresh nonces each run: replays would short-cut
        items = []
        for data in sealed:
            wire = msgspec.msgpack.decode(data, type=Wire)
            vk = nacl.signing.VerifyKey(trust.keys.lookup(wire.kid).encode())
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


if __name__ == "__main__":
    main()
