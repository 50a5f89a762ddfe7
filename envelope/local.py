"""Trust material for one machine: an organisation root, service keys and an operator grant.

`moon up`/`maestro demo` and the services on a laptop read (or create) these under
`<data dir>/keys`; a real deployment brings its own keys and lists its trusted roots.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from envelope.grants import Caveats, mint_grant
from envelope.keys import KeyRing, Signer, load_signer, save_signer, signer_from_seed
from envelope.seal import Trust

__all__ = ["LocalTrust", "executor_key", "local_trust"]

YEAR_MS = 365 * 24 * 3600 * 1000


@dataclass(frozen=True)
class LocalTrust:
    root: Signer
    moon: Signer
    maestro: Signer
    operator: Signer
    operator_grant: bytes  # root -> operator, every capability of both services
    maestro_grant: bytes  # root -> maestro: it dispatches plans to MOON on its own authority

    @property
    def registrars(self) -> frozenset[str]:
        """Who may register executors on this machine: the organisation root and the operator."""
        return frozenset({self.root.did, self.operator.did})

    @property
    def engines(self) -> frozenset[str]:
        """Whose journal messages, timers and snapshots a reader accepts as MOON's."""
        return frozenset({self.moon.did})

    @property
    def planners(self) -> frozenset[str]:
        """Who may send MOON replans and compensations, and write the PLANS journal."""
        return frozenset({self.maestro.did})

    def trust_for(self, service: Signer) -> Trust:
        return Trust(audience=service.did, keys=KeyRing(), roots=frozenset({self.root.did}),
                     revoked=set())

    @property
    def services(self) -> dict[str, str]:
        return {"moon": self.moon.did, "maestro": self.maestro.did}


def _key(directory: Path, name: str) -> Signer:
    path = directory / f"{name}.key"
    if path.exists():
        return load_signer(path)
    signer = signer_from_seed(os.urandom(32))
    save_signer(path, signer)
    return signer


def local_trust(data_dir: Path) -> LocalTrust:
    keys = data_dir / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    root, moon, maestro, operator = (_key(keys, n) for n in ("root", "moon", "maestro", "operator"))
    now = int(time.time() * 1000)

    def grant(to: Signer, capability: str) -> bytes:
        return mint_grant(root, audience=to.did, capability=capability,
                          not_before_ms=now - 60_000, expiry_ms=now + YEAR_MS,
                          nonce=os.urandom(16), caveats=Caveats())

    return LocalTrust(root=root, moon=moon, maestro=maestro, operator=operator,
                      operator_grant=grant(operator, "*"), maestro_grant=grant(maestro, "moon:*"))


def executor_key(data_dir: Path, executor_id: str) -> Signer:
    """An executor's own key on this machine (created on first use, 0600): it signs the
    executor's reports and offers; the registry binds it to the executor id."""
    from streams.ids import check_id  # noqa: PLC0415

    refused = check_id(executor_id, "executor id")
    if refused is not None:
        raise ValueError(refused.detail)
    directory = data_dir / "keys" / "executors"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return _key(directory, executor_id)
