"""Option and argument values converted without building a pydantic TypeAdapter per parameter.

Typer 0.29 coerces every value through a pydantic ``TypeAdapter`` that it builds on first
use; importing pydantic and building the adapters costs about 60 ms of every command
(more than `research show` spends on its own work). Almost all of our parameters are
plain ``str``, ``bool``, ``list[str]`` or ``Path``, for which the value the parser hands
over needs no validation beyond its type (a path still gets Typer's own checks). For those, `direct_coercion`
gives the parameter a converter that returns such values as they are, and hands anything
else (a number, a value of an unexpected type, a constrained parameter) to Typer's own
coercion, so messages and edge cases stay Typer's.

This relies on Typer's per-parameter ``_runtime_param`` slot (built lazily by
``get_runtime_param``); with a Typer that has no such slot nothing is changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

try:
    from typer._coercion import RuntimeParam, build_runtime_param
    from typer._param_types import coerce_cli_path
except ImportError:  # a Typer that coerces through click types: nothing to speed up
    RuntimeParam = None


_NO_FAST_PATH = object()


def _as_str(value: Any) -> Any:
    return value if isinstance(value, str) else _NO_FAST_PATH


def _as_bool(value: Any) -> Any:
    return value if isinstance(value, bool) else _NO_FAST_PATH


def _as_str_list(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return _NO_FAST_PATH


def _as_path(value: Any) -> Any:
    # Typer's own path checks (exists, readable, ...) run on the result: see _coerce_value.
    if isinstance(value, Path):
        return value
    return Path(value) if isinstance(value, str) and value else _NO_FAST_PATH


def _fast_converter(annotation: Any, info) -> Callable[[Any], Any] | None:
    if info.parser is not None or info.min is not None or info.max is not None:
        return None
    if annotation is str:
        return _as_str
    if annotation is bool:
        return _as_bool
    if get_origin(annotation) is list and get_args(annotation) == (str,):
        return _as_str_list
    if annotation is Path and info.path_type is None:
        return _as_path
    return None


if RuntimeParam is not None:

    @dataclass(frozen=True)
    class DirectRuntimeParam(RuntimeParam):
        """Returns values already of the parameter's type; Typer's coercion does the rest."""

        convert: Callable[[Any], Any]
        descriptor: Any

        def _coerce_value(self, value: Any, param, ctx) -> Any:
            converted = self.convert(value)
            if converted is _NO_FAST_PATH:
                return build_runtime_param(self.descriptor)._coerce_value(value, param=param, ctx=ctx)
            if self.convert is _as_path:
                return coerce_cli_path(converted, self.parameter_info, path_type=Path, param=param, ctx=ctx)
            return converted


def direct_coercion(param) -> None:
    """Give ``param`` the direct converter when its type allows one (see the module doc)."""
    if RuntimeParam is None or getattr(param, "_runtime_param", False) is not None:
        return
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None or descriptor.file_annotation is not None:
        return
    convert = _fast_converter(descriptor.annotation, descriptor.parameter_info)
    if convert is not None:
        param._runtime_param = DirectRuntimeParam(
            parameter_info=descriptor.parameter_info, annotation=descriptor.annotation,
            convert=convert, descriptor=descriptor)
