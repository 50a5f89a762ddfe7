"""Which codec decodes which stream: what `moon tail` uses to print any subject."""

from __future__ import annotations

from typing import Any

from streams.audit import AuditRecord
from streams.codec import Codec
from streams.moon_events import Decision, MoonCommand

__all__ = ["CODECS"]

CODECS: dict[str, Codec[Any]] = {
    "MOON": Codec(Decision),
    "MOON_CMD": Codec(MoonCommand),
    "AUDIT": Codec(AuditRecord),
}
