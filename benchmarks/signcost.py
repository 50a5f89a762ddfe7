"""`benchmarks/load.py --compare-unsigned`: the same MOON load with and without ed25519.

Two worlds of benchmarks/load.py side by side, one with real signatures, one with the
cryptography stubbed out by benchmarks/signing.py in its children and, while the bench talks to
it, in the bench itself; runs alternate between them. See load.py's docstring for the figures
and the checks.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as Nats
from nats.aio.msg import Msg

from benchmarks import signing
from benchmarks.load import (
    EXECUTORS,
    SPACE,
    Completions,
    World,
    body,
    error_kind,
    loadavg,
    moon_load,
    start_services,
    wait_ready,
)
from envelope.client import Client
from envelope.local import local_trust
from streams.broker import open_connection
from streams.config import Topology, ensure_streams

# --- signed against unsigned (--compare-unsigned) -----------------------------------------------

ZERO_SIG_B64 = b'"sig":"' + b"A" * 86 + b'=="'  # base64 of 64 zero bytes, as a statement carries it
MOON_PROCESSES = ("engine", *EXECUTORS)


@dataclass
class Side:
    """One world of the comparison: its own broker, engine and executors, and the bench's client;
    `stub` says whether ed25519 is stubbed out (in its children, and in the bench while it talks
    to this side)."""

    mode: str
    w: World
    nc: Nats
    client: Client

    @property
    def stub(self) -> bool:
        return bool(self.w.unsigned)

    def enter(self) -> None:
        signing.COUNTS.stub = self.stub  # the bench's own seals and answer checks


async def counts(w: World, timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
    """Every MOON child's sign/verify counts, asked by SIGUSR1, and the bench's own."""
    for name in MOON_PROCESSES:
        signing.counts_path(w.tmp, name).unlink(missing_ok=True)
        w.children[name].send_signal(signal.SIGUSR1)
    out: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    for name in MOON_PROCESSES:
        while (got := signing.read_counts(w.tmp, name)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} wrote no counts")
            await asyncio.sleep(0.01)
        out[name] = got
    out["bench"] = dataclasses.asdict(signing.COUNTS)
    return out


def counts_delta(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], per: float,
                 idle: dict[str, dict[str, float]] | None = None,
                 idle_s: float = 0.0) -> dict[str, dict[str, float]]:
    """(b - a - idle rate x idle_s) / per for signs, verifies and ms spent in them, per process."""
    out = {}
    for name in a:
        row = {}
        for key in ("signs", "verifies", "sign_s", "verify_s"):
            d = b[name][key] - a[name][key] - (idle[name][key] * idle_s if idle else 0.0)
            row[key] = d / per
        out[name] = {"signs": row["signs"], "verifies": row["verifies"],
                     "crypto_ms": (row["sign_s"] + row["verify_s"]) * 1e3}
    return out


async def setup_side(mode: str, w: World, args: argparse.Namespace) -> Side:
    trust = local_trust(w.tmp)
    nc = await open_connection(w.broker.url, name=f"moon-load-{mode}")
    await ensure_streams(nc.jetstream(), Topology(space=SPACE))
    await start_services(w, nc, echo=False)
    client = Client(nc, trust.operator, trust.services, grant=(trust.operator_grant,),
                    space=SPACE, timeout_s=args.timeout)
    side = Side(mode, w, nc, client)
    side.enter()
    await wait_ready(nc, client, echo=False)
    return side


async def stub_checks(sides: list[Side]) -> dict[str, Any]:
    """That the stub is on exactly where it should be: each child's probe sign (real: pynacl's
    own verify accepts its signature; its time is shown, not judged), and a dispatch sealed with
    a zero signature, which the signed gate must refuse and the unsigned gate accept."""
    out: dict[str, Any] = {}
    for side in sides:
        probes = {name: signing.read_counts(side.w.tmp, name) or {} for name in MOON_PROCESSES}
        signing.COUNTS.stub = True  # a zero signature, whichever side it goes to
        answer = await side.client.call("moon.dispatch", body(f"zero-sig-{side.mode}", 1))
        side.enter()
        out[side.mode] = {
            "probe_sign_us": {n: round(p.get("probe_sign_us", -1.0), 2) for n, p in probes.items()},
            "stubbed": {n: bool(p.get("stub")) for n, p in probes.items()},
            "probe_real": {n: bool(p.get("probe_real")) for n, p in probes.items()},
            "zero_sig_dispatch": error_kind(answer) or "accepted",
        }
    return out


def stub_failures(checks: dict[str, Any], wire: dict[str, dict[str, int]]) -> list[str]:
    failures = []
    for mode, c in checks.items():
        unsigned = mode == "unsigned"
        for name, us in c["probe_sign_us"].items():
            if c["stubbed"][name] != unsigned or c["probe_real"][name] == unsigned:
                failures.append(f"{mode} {name}: stub={c['stubbed'][name]}, probe signature "
                                f"real={c['probe_real'][name]} ({us} us)")
        if (c["zero_sig_dispatch"] == "accepted") != unsigned:
            failures.append(f"{mode} gate answered a zero signature with "
                            f"{c['zero_sig_dispatch']}")
        seen = wire[mode]
        if not seen["signed"] or (seen["zero"] == seen["signed"]) != unsigned or \
                (not unsigned and seen["zero"]):
            failures.append(f"{mode} journal statements: {seen}")
    return failures


async def per_workflow(side: Side, *, n: int, steps: int) -> tuple[dict[str, dict[str, float]],
                                                                     dict[str, int]]:
    """Signs and verifies per process for one `steps`-step workflow: n dispatched at once and
    drained, less what the processes do idle over as long; and the journal's statements seen on
    the wire (how many, how many with a zero signature)."""
    side.enter()
    wire = {"signed": 0, "zero": 0}

    async def on_journal(msg: Msg) -> None:
        if b'"sig":"' in msg.data:
            wire["signed"] += 1
            wire["zero"] += ZERO_SIG_B64 in msg.data

    sub = await side.nc.subscribe(SPACE.subject("moon.wf.>"), cb=on_journal)
    done = Completions("C-")
    done_sub = await side.nc.subscribe(SPACE.subject("moon.wf.*.completed"), cb=done.on_msg)
    idle0, t0 = await counts(side.w), time.perf_counter()
    await asyncio.sleep(1.0)
    idle1, t1 = await counts(side.w), time.perf_counter()
    idle = counts_delta(idle0, idle1, t1 - t0)
    idle_rate = {name: {"signs": r["signs"], "verifies": r["verifies"],
                        "sign_s": 0.0, "verify_s": 0.0} for name, r in idle.items()}
    start, t2 = idle1, time.perf_counter()
    answers = await asyncio.gather(*(side.client.call("moon.dispatch", body(f"C-{i}", steps))
                                     for i in range(n)))
    accepted = {f"C-{i}" for i, a in enumerate(answers) if error_kind(a) is None}
    done.expect(accepted)
    await asyncio.wait_for(done.all_done.wait(), 60)
    await asyncio.sleep(0.5)  # what follows a completion (acks, snapshots) lands too
    end, t3 = await counts(side.w), time.perf_counter()
    await sub.unsubscribe()
    await done_sub.unsubscribe()
    assert len(accepted) == n, [error_kind(a) for a in answers]
    wire["kinds"] = kinds_delta(start, end, n)  # type: ignore[assignment]
    return counts_delta(start, end, n, idle_rate, t3 - t2), wire


def kinds_delta(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]],
                per: float) -> dict[str, dict[str, float]]:
    """Per process, "sign <kind>"/"verify <kind>" calls between a and b, divided by per."""
    out: dict[str, dict[str, float]] = {}
    for name in a:
        before, after = a[name]["kinds"], b[name]["kinds"]
        row = {k: round((v - before.get(k, 0)) / per, 2) for k, v in sorted(after.items())}
        out[name] = {k: v for k, v in row.items() if v}
    return out


async def compare_phase(side: Side, run: int, args: argparse.Namespace) -> dict[str, Any]:
    side.enter()
    cpu0, c0 = side.w.cpu_s(), await counts(side.w)
    moon = await moon_load(side.nc, side.client, f"L{run}", seconds=args.seconds, n=args.clients,
                           steps=args.steps)
    cpu1, c1 = side.w.cpu_s(), await counts(side.w)
    n = max(1, len(moon.accepted))
    m = moon.load.latencies
    return {
        "dispatch_per_s": moon.load.per_s, "dispatch_p50_ms": m.percentile(50),
        "dispatch_p99_ms": m.percentile(99), "dispatch_max_ms": m.max_ms,
        "e2e_steps_per_s": moon.steps_per_s, "drain_s": moon.drain_s,
        "cpu_ms_per_dispatch": {k: (cpu1[k] - cpu0[k]) * 1e3 / n for k in cpu0},
        "cpu_total_ms_per_dispatch": sum(cpu1[k] - cpu0[k] for k in cpu0) * 1e3 / n,
        "crypto_per_dispatch": (crypto := counts_delta(c0, c1, n)),
        "crypto_total_ms_per_dispatch": sum(c["crypto_ms"] for c in crypto.values()),
        "dispatches": m.count + sum(moon.load.errors.values()), "accepted": len(moon.accepted),
        "completed": moon.completed, "errors": dict(moon.load.errors),
        "stragglers": moon.stragglers,
    }


def median_of(runs: list[dict[str, Any]], *path: str) -> tuple[float, float, float]:
    values = []
    for r in runs:
        v: Any = r
        for p in path:
            v = v[p]
        values.append(float(v))
    return statistics.median(values), min(values), max(values)


async def compare(ws: World, wu: World, args: argparse.Namespace,
                  say: Callable[[str], None]) -> dict[str, Any]:
    signing.install(stub=False)
    sides: list[Side] = []
    try:
        for mode, w in (("signed", ws), ("unsigned", wu)):
            sides.append(await setup_side(mode, w, args))
        say(f"compare: {args.clients} clients x {args.seconds:g} s x {args.runs} runs per mode, "
            f"{args.steps}-step workflows, alternating signed/unsigned; loadavg {loadavg()}")
        checks = await stub_checks(sides)
        for side in sides:
            side.enter()
            await moon_load(side.nc, side.client, "warm", seconds=args.warmup, n=args.clients,
                            steps=args.steps)
        per_wf, wire = {}, {}
        for side in sides:
            per_wf[side.mode], wire[side.mode] = await per_workflow(side, n=20, steps=3)
        runs: dict[str, list[dict[str, Any]]] = {s.mode: [] for s in sides}
        for run in range(args.runs):
            for side in sides:
                r = await compare_phase(side, run, args)
                runs[side.mode].append(r)
                say(f"run {run + 1}/{args.runs} {side.mode:8}: {r['dispatch_per_s']:.1f}/s, "
                    f"p50 {r['dispatch_p50_ms']:.1f} ms, p99 {r['dispatch_p99_ms']:.1f} ms, "
                    f"{r['e2e_steps_per_s']:.1f} steps/s, accepted {r['accepted']}, completed "
                    f"{r['completed']}, errors {r['errors']}; loadavg {loadavg()}")
        dead = [f"{s.mode} {d}" for s in sides for d in s.w.dead()]
    finally:
        for side in sides:
            await side.nc.close()
    return compare_summary(args, runs, checks=checks, per_wf=per_wf, wire=wire, dead=dead,
                           log_problems={s.mode: s.w.log_problems() for s in sides})


def compare_summary(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]], *,
                    checks: dict[str, Any], per_wf: dict[str, Any], wire: dict[str, Any],
                    dead: list[str], log_problems: dict[str, Any]) -> dict[str, Any]:
    keys = ("dispatch_per_s", "dispatch_p50_ms", "dispatch_p99_ms", "dispatch_max_ms",
            "e2e_steps_per_s", "drain_s", "cpu_total_ms_per_dispatch",
            "crypto_total_ms_per_dispatch")
    modes: dict[str, Any] = {}
    for mode, rs in runs.items():
        procs = rs[0]["cpu_ms_per_dispatch"]
        modes[mode] = {
            **{k: [round(x, 3) for x in median_of(rs, k)] for k in keys},
            "cpu_ms_per_dispatch": {p: round(median_of(rs, "cpu_ms_per_dispatch", p)[0], 3)
                                    for p in procs},
            "crypto_per_dispatch": {p: {k: round(median_of(rs, "crypto_per_dispatch", p, k)[0], 3)
                                        for k in ("signs", "verifies", "crypto_ms")}
                                    for p in rs[0]["crypto_per_dispatch"]},
        }
    paired = [s["dispatch_per_s"] / u["dispatch_per_s"]
              for s, u in zip(runs["signed"], runs["unsigned"], strict=True)]
    paired_steps = [s["e2e_steps_per_s"] / u["e2e_steps_per_s"]
                    for s, u in zip(runs["signed"], runs["unsigned"], strict=True)]
    ratio = statistics.median(paired)
    cpu_signed = modes["signed"]["cpu_total_ms_per_dispatch"][0]
    cpu_unsigned = modes["unsigned"]["cpu_total_ms_per_dispatch"][0]
    failures = stub_failures(checks, wire)
    for mode, rs in runs.items():
        for r in rs:
            if r["errors"]:
                failures.append(f"{mode} errors {r['errors']}")
            if r["completed"] < r["accepted"]:
                failures.append(f"{mode}: {r['accepted'] - r['completed']} not completed "
                                f"({r['stragglers']})")
    failures += [f"{d} died" for d in dead]
    failures += [f"{mode} {x} ran none of the 3-step workflows' steps" for mode, rows in
                 per_wf.items() for x in EXECUTORS if rows[x]["signs"] < 0.1]
    return {
        "compare_unsigned": True, "clients": args.clients, "seconds": args.seconds,
        "steps": args.steps, "runs": args.runs, "modes": modes,
        "throughput_signed_over_unsigned": round(ratio, 3),
        "throughput_ratio_per_run": [round(x, 3) for x in paired],
        "steps_signed_over_unsigned": round(statistics.median(paired_steps), 3),
        "signing_cost_share": round(1 - ratio, 3), "target_met": 1 - ratio <= 0.15,
        # Less noisy than throughput on shared cores: all processes' CPU per dispatch, and the
        # part of the signed one spent inside ed25519.
        "cpu_signed_over_unsigned": round(cpu_signed / cpu_unsigned, 3),
        "crypto_share_of_signed_cpu": round(
            modes["signed"]["crypto_total_ms_per_dispatch"][0] / cpu_signed, 3),
        "micro_us": signing.micro(1000),
        "per_3_step_workflow": {m: {p: {k: round(v, 2) for k, v in row.items()}
                                    for p, row in rows.items()} for m, rows in per_wf.items()},
        "journal_statements_seen": wire, "stub_checks": checks,
        "log_problems": log_problems, "dead": dead, "failures": failures,
        "pass": not failures,
    }


def compare_report(s: dict[str, Any], say: Callable[[str], None]) -> None:
    sm, um = s["modes"]["signed"], s["modes"]["unsigned"]
    say(f"{'measure (median [min-max])':30} {'signed':>24} {'unsigned':>24}")
    for label, key in (("dispatches/s", "dispatch_per_s"), ("dispatch p50 (ms)", "dispatch_p50_ms"),
                       ("dispatch p99 (ms)", "dispatch_p99_ms"),
                       ("dispatch max (ms)", "dispatch_max_ms"),
                       ("end-to-end steps/s", "e2e_steps_per_s"), ("drain (s)", "drain_s"),
                       ("cpu ms/dispatch, all procs", "cpu_total_ms_per_dispatch"),
                       ("  of it in ed25519", "crypto_total_ms_per_dispatch")):
        a, b = sm[key], um[key]
        say(f"{label:30} {a[0]:9.2f} [{a[1]:.2f}-{a[2]:.2f}]".ljust(56)
            + f"{b[0]:9.2f} [{b[1]:.2f}-{b[2]:.2f}]")
    say("cpu ms per dispatch:           " + "  ".join(
        f"{p} {sm['cpu_ms_per_dispatch'][p]:.2f}/{um['cpu_ms_per_dispatch'][p]:.2f}"
        for p in sm["cpu_ms_per_dispatch"]) + "  (signed/unsigned)")
    say("in ed25519, ms per dispatch:   " + "  ".join(
        f"{p} {c['crypto_ms']:.3f}" for p, c in sm["crypto_per_dispatch"].items())
        + "  (signed)")
    say("signs+verifies per dispatch:   " + "  ".join(
        f"{p} {c['signs']:.1f}+{c['verifies']:.1f}" for p, c in sm["crypto_per_dispatch"].items()))
    say(f"throughput signed/unsigned: {s['throughput_signed_over_unsigned']:.3f} (median of "
        f"paired runs {s['throughput_ratio_per_run']}), steps/s "
        f"{s['steps_signed_over_unsigned']:.3f}; signing costs "
        f"{s['signing_cost_share']:.1%} of throughput, target <= 15 %: "
        f"{'met' if s['target_met'] else 'NOT met'}")
    say(f"cpu per dispatch signed/unsigned: {s['cpu_signed_over_unsigned']:.3f}; ed25519 is "
        f"{s['crypto_share_of_signed_cpu']:.1%} of the signed CPU")
    say("micro (pynacl, us): " + ", ".join(f"{size} sign {f['sign_us']} verify {f['verify_us']}"
                                           for size, f in s["micro_us"].items()))
    for mode, rows in s["per_3_step_workflow"].items():
        total = [sum(r[k] for r in rows.values()) for k in ("signs", "verifies", "crypto_ms")]
        say(f"one 3-step workflow, {mode}: " + ", ".join(
            f"{p} {r['signs']:.1f} signs {r['verifies']:.1f} verifies" for p, r in rows.items())
            + f"; total {total[0]:.1f} signs, {total[1]:.1f} verifies, {total[2]:.2f} ms")
    for name, kinds in s["journal_statements_seen"]["signed"]["kinds"].items():
        say(f"  {name:6} per 3-step workflow (signed): "
            + ", ".join(f"{k} {v:g}" for k, v in kinds.items()))
    wire = {m: {k: v for k, v in w.items() if k != "kinds"}
            for m, w in s["journal_statements_seen"].items()}
    say(f"journal statements seen: {wire}; stub checks: "
        + "; ".join(f"{m}: probe sign us {c['probe_sign_us']}, zero-sig dispatch "
                    f"{c['zero_sig_dispatch']}" for m, c in s["stub_checks"].items()))
    say(f"warning/error log lines per child: {s['log_problems']}")
    say("PASS" if s["pass"] else "FAIL: " + "; ".join(s["failures"]))
