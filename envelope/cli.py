"""`maestro keys …`: make and show signing identities, and mint grants, from the terminal."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Annotated

import typer

from envelope.grants import Caveats, grant_ref, mint_grant
from envelope.keys import load_signer, public_key_from_did, save_signer, signer_from_seed
from envelope.revocations import revoke
from envelope.treaty import treaty_ref
from streams.subjects import Space

__all__ = ["keys_app", "parse_ref", "revoke_command"]

keys_app = typer.Typer(
    help="Ed25519 signing identities (did:key) and capability grants.", no_args_is_help=True
)

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="keys folder (default: $MAESTRO_HOME/keys or .maestro/keys)"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


def keys_dir(option: Path | None) -> Path:
    return option or Path(os.environ.get("MAESTRO_HOME", ".maestro")) / "keys"


def _path(name: str, folder: Path | None) -> Path:
    if not _NAME.fullmatch(name):
        raise typer.BadParameter("use letters, digits, '.', '_' or '-'", param_hint="NAME")
    return keys_dir(folder) / f"{name}.json"


def _print(data: dict[str, str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data))
    else:
        for field, value in data.items():
            print(f"{field:>8}  {value}")


@keys_app.command("new")
def new(name: str, folder: DirOption = None, as_json: JsonOption = False) -> None:
    """Create a key NAME (file mode 0600) and print its DID."""
    path = _path(name, folder)
    signer = signer_from_seed(os.urandom(32))
    try:
        save_signer(path, signer)
    except FileExistsError:
        raise typer.BadParameter(f"{path} already exists", param_hint="NAME") from None
    _print({"name": name, "did": signer.did, "file": str(path)}, as_json)


@keys_app.command("show")
def show(name: str, folder: DirOption = None, as_json: JsonOption = False) -> None:
    """Print the DID and public key of key NAME (never the secret)."""
    path = _path(name, folder)
    try:
        signer = load_signer(path)
    except FileNotFoundError:
        raise typer.BadParameter(f"no key at {path}", param_hint="NAME") from None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="NAME") from None
    _print(
        {"name": name, "did": signer.did, "public": signer.public_key.hex(), "file": str(path)},
        as_json,
    )


@keys_app.command("grant")
def grant(
    issuer: Annotated[str, typer.Argument(help="name of the issuing key (e.g. an org root)")],
    audience: Annotated[str, typer.Option("--to", help="DID of the grantee")],
    capability: Annotated[str, typer.Option(help="e.g. moon:dispatch or moon:*")],
    out: Annotated[Path, typer.Option(help="where to write the signed grant bytes")],
    ttl_s: Annotated[int, typer.Option("--ttl", help="lifetime in seconds")] = 86_400,
    max_tokens: Annotated[int | None, typer.Option(help="caveat: token cap")] = None,
    folder: DirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Mint a root grant signed by ISSUER for the DID given with --to."""
    if public_key_from_did(audience) is None:
        raise typer.BadParameter("not an Ed25519 did:key", param_hint="--to")
    signer = load_signer(_path(issuer, folder))
    now = time.time_ns() // 1_000_000
    signed = mint_grant(
        signer,
        audience=audience,
        capability=capability,
        not_before_ms=now,
        expiry_ms=now + ttl_s * 1000,
        nonce=os.urandom(16),
        caveats=Caveats(max_tokens=max_tokens),
    )
    out.write_bytes(signed)
    _print(
        {"grant": grant_ref(signed).hex(), "issuer": signer.did, "to": audience, "file": str(out)},
        as_json,
    )


def parse_ref(ref: str) -> bytes:
    """A grant/treaty ref as 64 hex digits (what `keys grant` prints), or the file of the signed
    grant or treaty itself."""
    if re.fullmatch(r"[0-9a-fA-F]{64}", ref):
        return bytes.fromhex(ref)
    path = Path(ref)
    if not path.is_file():
        raise typer.BadParameter("give 64 hex digits or the file of a grant or treaty",
                                 param_hint="REF")
    data = path.read_bytes()
    for reference in (grant_ref, treaty_ref):
        try:
            return reference(data)
        except Exception:  # noqa: S112 - not this kind of document; try the next one
            continue
    raise typer.BadParameter(f"{path} is neither a signed grant nor a treaty", param_hint="REF")


async def _revoke(ref: bytes, url: str | None, space: Space) -> int:
    from streams.broker import connect  # noqa: PLC0415 - only this command talks to NATS

    async with connect(url, name="maestro-keys-revoke", role="operator") as nc:
        return await revoke(nc.jetstream(), ref, space=space)


@keys_app.command("revoke")
def revoke_command(
    ref: Annotated[str, typer.Argument(help="grant or treaty ref (hex), or its file")],
    url: Annotated[str | None, typer.Option("--url", help="NATS server (default: NATS_URL "
                                            "or the embedded server)")] = None,
    space: Annotated[str, typer.Option(hidden=True, help="stream namespace (tests)")] = "",
    as_json: JsonOption = False,
) -> None:
    """Revoke a grant or treaty: every gate watching the revocation bucket refuses it within
    moments (each gate runs the watcher itself)."""
    parsed = parse_ref(ref)
    revision = asyncio.run(_revoke(parsed, url, Space(space)))
    _print({"revoked": parsed.hex(), "revision": str(revision)}, as_json)
