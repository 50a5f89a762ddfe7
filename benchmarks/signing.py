"""The ed25519 cost MOON pays, as benchmarks/load.py measures it: count, time or stub each sign.

Everything inside the walls signs and verifies through two functions: `envelope.keys.Signer.sign`
(reports, decisions, snapshots, timers, commands, envelopes, grants) and pynacl's
`nacl.signing.VerifyKey.verify` (every open). `install()` wraps both in this process, counting the
calls and the seconds spent in them; with the stub on, the wrappers skip the cryptography (a sign
returns 64 zero bytes, a verify accepts) and everything else (PAE, base64, JSON, key lookups) runs
as before. So "unsigned" here is the product with only ed25519 removed, done by the benchmark
from outside: the product has no switch that turns verification off.

    python -c "from benchmarks.signing import child_main; child_main()" [--unsigned] \
        --counts DIR --name NAME -- serve ...

runs `moon.cli.main()` with the wrappers installed. On SIGUSR1 the child writes its counts to
DIR/NAME.json (a rename, so a reader never sees half a file); the load benchmark reads them before
and after a phase. At start it signs once through the wrappers and checks the signature with
pynacl's real verify, so a summary shows the stub really took effect in that process (or not); it
also times a few signs and verifies (a stubbed sign costs about 1 us, a real one tens of us: a
figure to read, not the test, since a busy machine blurs it).

    python benchmarks/signing.py [--n 2000]    # micro-measure only: us per sign and per verify
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

# Run as a script, benchmarks/moon.py would shadow the `moon` package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import nacl.exceptions  # noqa: E402
import nacl.signing  # noqa: E402

from envelope.keys import Signer, signer_from_seed  # noqa: E402

ZERO_SIG = bytes(64)


@dataclass
class Counts:
    """Calls through the wrappers and the wall seconds spent inside the real functions."""

    stub: bool = False
    signs: int = 0
    verifies: int = 0
    sign_s: float = 0.0
    verify_s: float = 0.0
    probe_sign_us: float = 0.0  # one sign through the wrapper, timed at install
    probe_verify_us: float = 0.0
    # whether a sign through the wrapper gives a signature the real verify accepts: what says
    # the stub is off or on (the probe's timing is only a figure: a busy machine blurs it)
    probe_real: bool = False
    # "sign moon.decision.v1" -> calls: the kind a DSSE PAE message names (what it signs)
    kinds: dict[str, int] = field(default_factory=dict)


def kind_of(message: bytes) -> str:
    """The payload type of a PAE message, b"DSSEv1 <len> <type> <len> <body>", shortened."""
    if not message.startswith(b"DSSEv1 "):
        return "other"
    head, _, rest = message[7:].partition(b" ")
    if not head.isdigit():
        return "other"
    kind = rest[: int(head)].decode(errors="replace")
    return kind.removeprefix("application/vnd.maestro.").split("+", 1)[0]


def _count(op: str, message: bytes) -> None:
    key = f"{op} {kind_of(message)}"
    COUNTS.kinds[key] = COUNTS.kinds.get(key, 0) + 1


COUNTS = Counts()
_REAL_SIGN = Signer.sign
_REAL_VERIFY = nacl.signing.VerifyKey.verify


def _sign(self: Signer, message: bytes) -> bytes:
    COUNTS.signs += 1
    _count("sign", message)
    if COUNTS.stub:
        return ZERO_SIG
    start = time.perf_counter()
    try:
        return _REAL_SIGN(self, message)
    finally:
        COUNTS.sign_s += time.perf_counter() - start


def _verify(self: nacl.signing.VerifyKey, smessage: bytes, signature: bytes | None = None,
            encoder: Any = None) -> bytes:
    COUNTS.verifies += 1
    _count("verify", smessage if signature is not None else smessage[64:])
    if COUNTS.stub:
        return smessage if signature is not None else smessage[64:]
    start = time.perf_counter()
    try:
        if encoder is None:
            return _REAL_VERIFY(self, smessage, signature)
        return _REAL_VERIFY(self, smessage, signature, encoder=encoder)
    finally:
        COUNTS.verify_s += time.perf_counter() - start


def install(*, stub: bool) -> Counts:
    """Wrap sign and verify in this process (once); `stub` may be flipped later via COUNTS."""
    Signer.sign = _sign  # type: ignore[method-assign]
    nacl.signing.VerifyKey.verify = _verify  # type: ignore[method-assign]
    COUNTS.stub = stub
    COUNTS.probe_sign_us, COUNTS.probe_verify_us = probe()
    COUNTS.probe_real = signs_for_real()
    return COUNTS


def signs_for_real() -> bool:
    """Whether Signer.sign, as it is now, makes a signature pynacl's real verify accepts (the
    count it made is taken back out)."""
    before = asdict(COUNTS)
    signer = signer_from_seed(b"\x07" * 32)
    message = b"probe"
    sig = signer.sign(message)
    for name in ("signs", "sign_s", "kinds"):
        setattr(COUNTS, name, before[name])
    try:
        _REAL_VERIFY(nacl.signing.VerifyKey(signer.public_key), message, sig)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def probe(n: int = 200) -> tuple[float, float]:
    """us per sign and per verify through whatever Signer.sign / VerifyKey.verify are now, of a
    message the size of a report; the counts it made are taken back out."""
    before = asdict(COUNTS)
    signer = signer_from_seed(b"\x07" * 32)
    key = nacl.signing.VerifyKey(signer.public_key)
    message = b"x" * 400
    start = time.perf_counter()
    for _ in range(n):
        sig = signer.sign(message)
    sign_us = (time.perf_counter() - start) * 1e6 / n
    start = time.perf_counter()
    for _ in range(n):
        key.verify(message, sig)
    verify_us = (time.perf_counter() - start) * 1e6 / n
    for name in ("signs", "verifies", "sign_s", "verify_s", "kinds"):
        setattr(COUNTS, name, before[name])
    return sign_us, verify_us


def micro(n: int = 2000, sizes: tuple[int, ...] = (200, 1000, 4000)) -> dict[str, dict[str, float]]:
    """Mean us per sign and per verify by message size, of pynacl's real functions (whatever
    wrappers are installed)."""
    signer = signer_from_seed(b"\x05" * 32)
    key = nacl.signing.VerifyKey(signer.public_key)
    out: dict[str, dict[str, float]] = {}
    for size in sizes:
        message = os.urandom(size)
        sig = _REAL_SIGN(signer, message)
        start = time.perf_counter()
        for _ in range(n):
            _REAL_SIGN(signer, message)
        sign_us = (time.perf_counter() - start) * 1e6 / n
        start = time.perf_counter()
        for _ in range(n):
            _REAL_VERIFY(key, message, sig)
        verify_us = (time.perf_counter() - start) * 1e6 / n
        out[f"{size}B"] = {"sign_us": round(sign_us, 1), "verify_us": round(verify_us, 1)}
    return out


# --- the child entry point ---------------------------------------------------------------------


def counts_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.json"


def read_counts(directory: Path, name: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(counts_path(directory, name).read_text())
    except (OSError, ValueError):
        return None
    return data


def _dump(directory: Path, name: str) -> None:
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(COUNTS)))
    tmp.replace(counts_path(directory, name))


def child_main(argv: list[str] | None = None) -> None:
    """`[--unsigned] --counts DIR --name NAME -- <moon cli args>`: MOON with the wrappers in."""
    parser = argparse.ArgumentParser(prog="signing child")
    parser.add_argument("--unsigned", action="store_true")
    parser.add_argument("--counts", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("moon", nargs=argparse.REMAINDER)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    moon_args = args.moon[1:] if args.moon[:1] == ["--"] else args.moon
    install(stub=args.unsigned)

    def on_usr1(_sig: int, _frame: FrameType | None) -> None:
        _dump(args.counts, args.name)

    signal.signal(signal.SIGUSR1, on_usr1)
    _dump(args.counts, args.name)  # the probe's figures, and "I am up"
    from moon.cli import main  # noqa: PLC0415 - after the wrappers are in

    sys.argv = ["moon", *moon_args]
    main()


def main() -> int:
    parser = argparse.ArgumentParser(description="us per ed25519 sign and verify (pynacl)")
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    for size, figures in micro(args.n).items():
        print(f"{size:>6}: sign {figures['sign_us']:7.1f} us, "
              f"verify {figures['verify_us']:7.1f} us")
    install(stub=True)
    print("stubbed through the wrappers: sign {:.2f} us, verify {:.2f} us".format(*probe()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
