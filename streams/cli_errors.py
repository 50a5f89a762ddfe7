"""How both CLIs end: one line and a documented exit code per operator error, a traceback
only with `--debug`, and sub-commands whose imports wait until they run (fast `--help`).

Importing this module costs nothing beyond typer: it is on the path of every `--help`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

__all__ = [
    "Exit",
    "OperatorError",
    "fail",
    "lazy_group",
    "read_input",
    "run",
]


class Exit(IntEnum):
    """Exit codes, as the README's Commands section documents them."""

    OK = 0
    FAILED = 1  # the work ran and did not succeed (a workflow failed, a verify mismatch)
    REFUSED = 2  # a planner or gate refusal, or bad usage / a bad flag value
    JOURNAL = 3  # a journal does not verify (quarantined) or replay --verify mismatches
    INPUT = 4  # a file is missing, unreadable, malformed, or not a goal/DAG
    UNKNOWN = 5  # no such workflow (or sequence) in the journal
    UNREACHABLE = 6  # no broker answers
    INTERNAL = 70  # a bug: rerun with --debug for the traceback
    INTERRUPTED = 130


class OperatorError(Exception):
    """Something the operator can fix: printed as one line, exits with `code`."""

    def __init__(self, message: str, code: Exit = Exit.INPUT) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def fail(message: str, code: Exit = Exit.INPUT) -> NoReturn:
    raise OperatorError(message, code)


def read_input(path: Path, what: str = "file") -> bytes:
    """A file's bytes, or one line saying why not (missing, a directory, no permission)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        fail(f"{what} {path}: no such file")
    except IsADirectoryError:
        fail(f"{what} {path}: is a directory, not a file")
    except PermissionError:
        fail(f"{what} {path}: permission denied")
    except OSError as error:
        fail(f"{what} {path}: cannot read ({error.strerror or error})")


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _unreachable(error: BaseException) -> str | None:
    """A broker or service that does not answer, in one line. Matched by the error types'
    names (nats-py's and the OS's), so this module need not import nats."""
    names = {cls.__name__ for cls in type(error).__mro__}
    if "NoStack" in names:
        return str(error)  # says what to start or set
    if names & {"NoServersError", "ConnectionRefusedError", "ConnectionClosedError"}:
        return ("no broker answers — start the stack (`maestro up`, or `moon serve`) or set "
                "NATS_URL")
    if "NoRespondersError" in names:
        return "no service answers on the broker — is `moon serve` (or `maestro serve`) running?"
    if "TimeoutError" in names:
        return "timed out waiting for the broker or a service — is the stack running?"
    return None


def run(app: typer.Typer, prog: str, argv: Sequence[str] | None = None) -> NoReturn:
    """Run a typer app the way an operator should see it; `--debug` anywhere shows tracebacks."""
    from typer._click import exceptions as click  # noqa: PLC0415 - typer's vendored click

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    code: int
    try:
        result = app(args=args, prog_name=prog, standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except click.NoArgsIsHelpError as shown:
        sys.stdout.write(shown.format_message() + "\n")
        code = 0
    except click.UsageError as error:
        where = error.ctx.command_path if error.ctx is not None else prog
        _say(prog, f"{_one_line(error.format_message())} (see `{where} --help`)")
        code = Exit.REFUSED
    except click.ClickException as error:
        _say(prog, _one_line(error.format_message()))
        code = error.exit_code
    except OperatorError as error:
        if debug:
            raise
        _say(prog, _one_line(error.message))
        code = error.code
    except (KeyboardInterrupt, typer.Abort):
        code = Exit.INTERRUPTED
    except Exception as error:
        if debug:
            raise
        why = _unreachable(error)
        if why is not None:
            _say(prog, why)
            code = Exit.UNREACHABLE
        else:
            _say(prog, f"internal error: {type(error).__name__}: {_one_line(str(error), 200)} "
                       "(rerun with --debug for the traceback)")
            code = Exit.INTERNAL
    sys.stdout.flush()
    raise SystemExit(int(code))


def _say(prog: str, line: str) -> None:
    sys.stderr.write(f"{prog}: {line}\n")
    sys.stderr.flush()


def lazy_group(lazy: dict[str, tuple[str, str, str]]) -> type[TyperGroup]:
    """A group class whose sub-apps named in `lazy` ({name: (module, attribute, help)}) are
    imported only when invoked: `--help` lists them by their help line without the import."""

    class _Stub(TyperGroup):
        def __init__(self, name: str, loader: Callable[[], Any], help_: str) -> None:
            super().__init__(name=name, help=help_, no_args_is_help=True)
            self._loader = loader

        def make_context(self, info_name: str | None, args: list[str],
                         parent: Any = None, **extra: Any) -> Any:
            return self._loader().make_context(info_name, args, parent=parent, **extra)

    def loader(module: str, attribute: str) -> Callable[[], Any]:
        def load() -> Any:
            return typer.main.get_command(getattr(importlib.import_module(module), attribute))
        return load

    class _Lazy(TyperGroup):
        def list_commands(self, ctx: Any) -> list[str]:
            return sorted({*super().list_commands(ctx), *lazy})

        def get_command(self, ctx: Any, cmd_name: str) -> Any:
            if cmd_name in lazy:
                module, attribute, help_ = lazy[cmd_name]
                return _Stub(cmd_name, loader(module, attribute), help_)
            return super().get_command(ctx, cmd_name)

    return _Lazy
