"""Which codec decodes which stream: what `moon tail` uses to print any subject.

The MOON journal and MOON_CMD hold signed statements ({"by", "sig", "body"}); tail shows the
body and who signed it. It does not verify: that is the reader's job that acts on a message
(moon/journal.py, the engine), and `moon replay --verify` does.
"""

from __future__ import annotations

from typing import Any

import msgspec

from streams.audit import AuditRecord
from streams.codec import Codec, Undecodable
from streams.moon_events import Decision, MoonCommand

__all__ = ["CODECS", "Unwrapping"]

class _Statement(msgspec.Struct, frozen=True):
    by: str
    body: msgspec.Raw


class Unwrapping(Codec[Any]):
    """Decodes a statement's body with `inner`; shows it with its signer."""

    def __init__(self, inner: Codec[Any]) -> None:
        super().__init__(_Statement)
        self._inner = inner

    def try_decode(self, data: bytes, *, seq: int = 0, subject: str = "") -> Any:
        outer = super().try_decode(data, seq=seq, subject=subject)
        if isinstance(outer, Undecodable):
            return outer
        body = self._inner.try_decode(bytes(outer.body), seq=seq, subject=subject)
        if isinstance(body, Undecodable):
            return body
        if isinstance(body, msgspec.Struct):
            return msgspec.structs.asdict(body) | {"signed_by": outer.by}
        return body


CODECS: dict[str, Codec[Any]] = {
    "MOON": Unwrapping(Codec(Decision)),
    "MOON_CMD": Unwrapping(Codec(MoonCommand)),
    "AUDIT": Codec(AuditRecord),
}
