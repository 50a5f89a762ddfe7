"""Command-line values without pydantic: typer (0.2x) coerces every option through a pydantic
TypeAdapter, and importing pydantic and building the adapters is a third of `moon list`'s
start-up. Our options are plain (str, int, float, Path, lists of them): those are coerced here,
the way typer's own adapters do it, and anything else still goes to typer.

`install()` is called by the CLI modules at import. It replaces one private method of typer's
parameter class; if a typer release moves it, `install` does nothing and typer's own path runs
(slower, same behaviour), which tests/test_cli_speed.py notices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

__all__ = ["install"]

_NUMBER_NAMES = {int: "integer", float: "float"}


_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"", "0", "off", "f", "false", "n", "no"}


def _boolean(value: Any, param: Any, ctx: Any) -> bool:
    """As pydantic reads a flag's value (typer passes bools through before asking)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    from typer._click.exceptions import BadParameter  # noqa: PLC0415

    raise BadParameter(f"{value!r} is not a valid boolean.", ctx=ctx, param=param)


def _leaf(annotation: Any, info: Any) -> Callable[[Any, Any, Any], Any] | None:
    """A coercer for one plain value, or None when typer's adapters must decide."""
    if info.parser is not None or getattr(info, "formats", None):
        return None
    if annotation is bool:
        return _boolean
    if annotation is str:
        return lambda value, param, ctx: value.decode() if isinstance(value, bytes) else str(value)
    if annotation in _NUMBER_NAMES:
        if info.min is not None or info.max is not None or info.clamp:
            return None
        name = _NUMBER_NAMES[annotation]

        def number(value: Any, param: Any, ctx: Any) -> Any:
            from typer._click.exceptions import BadParameter  # noqa: PLC0415

            if isinstance(value, annotation) and not isinstance(value, bool):
                return value
            try:
                return annotation(value)
            except (TypeError, ValueError):
                raise BadParameter(f"{value!r} is not a valid {name}.", ctx=ctx,
                                   param=param) from None

        return number
    if isinstance(annotation, type) and issubclass(annotation, Path):
        from typer._param_types import coerce_cli_path  # noqa: PLC0415

        path_type = info.path_type or annotation
        return lambda value, param, ctx: coerce_cli_path(value, info, path_type=path_type,
                                                         param=param, ctx=ctx)
    return None


def _coercer(annotation: Any, info: Any) -> Callable[[Any, Any, Any], Any] | None:
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        leaf = _leaf(item, info)
        if leaf is None:
            return None
        return lambda value, param, ctx: [
            leaf(v, param, ctx) for v in (value if isinstance(value, list | tuple) else [value])]
    return _leaf(annotation, info)


def install() -> None:
    """Coerce plain options without pydantic (idempotent)."""
    try:
        from typer import core  # noqa: PLC0415
        from typer._coercion import RuntimeParam  # noqa: PLC0415
    except ImportError:
        return
    parameter = getattr(core, "_TyperParameter", None)
    if parameter is None or getattr(parameter, "_maestro_plain", False):
        return
    if not hasattr(parameter, "get_runtime_param"):
        return

    @dataclass(frozen=True)
    class Plain(RuntimeParam):  # type: ignore[misc]
        coerce_one: Callable[[Any, Any, Any], Any]

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            return self.coerce_one(value, param, ctx)

    typer_own = parameter.get_runtime_param

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None:
            descriptor = self.type_descriptor
            coerce = (None if descriptor.file_annotation is not None
                      else _coercer(descriptor.annotation, descriptor.parameter_info))
            if coerce is None:
                return typer_own(self)
            self._runtime_param = Plain(parameter_info=descriptor.parameter_info,
                                        annotation=descriptor.annotation, coerce_one=coerce)
        return self._runtime_param

    parameter.get_runtime_param = get_runtime_param
    parameter._maestro_plain = True
