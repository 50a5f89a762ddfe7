"""Stand-ins for what the `moon` commands use, importing the real thing on first use.

moon/cli.py and the modules it delegates to (moon/cli_journal.py, moon/cli_services.py) take
these names from here, so that importing the CLI (for `--help`) imports typer and nothing of
nats, asyncio's event loop machinery, structlog or the broker.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__all__ = [
    "Topology",
    "asyncio",
    "configure_logging",
    "connect",
    "ensure_streams",
    "home_dir",
    "replicas_from_env",
    "space_from_env",
]


class _Lazy:
    """A module imported on first use: asyncio alone is a sixth of the `--help` budget."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


asyncio: Any = _Lazy("asyncio")


# Lazy stand-ins for what the commands' wiring uses, so importing the CLI (for --help)
# does not import nats, asyncio's event loop machinery or structlog.
def connect(*args: Any, **kwargs: Any) -> Any:
    from streams.broker import connect as connect_  # noqa: PLC0415

    return connect_(*args, **kwargs)


def home_dir() -> Path:
    from streams.broker import home_dir as home_dir_  # noqa: PLC0415

    return home_dir_()


def space_from_env() -> Any:
    from streams.config import space_from_env as space_from_env_  # noqa: PLC0415

    return space_from_env_()


def replicas_from_env() -> Any:
    from streams.config import replicas_from_env as replicas_from_env_  # noqa: PLC0415

    return replicas_from_env_()


def Topology(**kwargs: Any) -> Any:  # noqa: N802 - stands in for the class
    from streams.config import Topology as Topology_  # noqa: PLC0415

    return Topology_(**kwargs)


async def ensure_streams(*args: Any, **kwargs: Any) -> Any:
    from streams.config import ensure_streams as ensure_streams_  # noqa: PLC0415

    return await ensure_streams_(*args, **kwargs)


def configure_logging(*args: Any, **kwargs: Any) -> None:
    from streams.logs import configure_logging as configure_logging_  # noqa: PLC0415

    configure_logging_(*args, **kwargs)
