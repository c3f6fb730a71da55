"""A search space from ``--space`` options, checked against the notebook's typed parameters.

``--space 'lr=loguniform(1e-5,1e-2)' --space 'layers=int(2,8)' --space 'opt=choice(adam,sgd)'``:
one dimension per option. The space is kept as plain JSON on the sweep row (``Dimension.to_json``),
and becomes Optuna distributions only where a study is built (``to_distribution``), so nothing here
imports Optuna.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from research.errors import ResearchError

# kind -> what it takes, for messages
KINDS = {
    "uniform": "uniform(LOW,HIGH): a float drawn evenly",
    "loguniform": "loguniform(LOW,HIGH): a float drawn evenly in log space (LOW > 0)",
    "int": "int(LOW,HIGH) or int(LOW,HIGH,STEP): an integer, both ends included",
    "logint": "logint(LOW,HIGH): an integer drawn evenly in log space (LOW > 0)",
    "choice": "choice(A,B,...): one of the values, as -p would read them",
}
_SPEC = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([A-Za-z_]+)\s*\((.*)\)\s*", re.S)
GRID_LIMIT = 10_000  # points a grid sampler may enumerate


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: ``kind`` (see ``KINDS``) and its bounds or choices."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def is_int(self) -> bool:
        return self.kind in ("int", "logint")

    @property
    def log(self) -> bool:
        return self.kind in ("loguniform", "logint")

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice({', '.join(map(str, self.choices))})"
        bounds = [_number_text(self.low), _number_text(self.high)] + ([str(self.step)] if self.step else [])
        return f"{self.kind}({', '.join(bounds)})"

    def grid_values(self) -> list[Any]:
        """Every value, for the grid sampler (choices and integer ranges only)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, self.step or 1))
        raise ResearchError(f"--sampler grid needs choice() or int() for every parameter; {self.name} is {self.describe()}")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        if self.kind == "choice":
            data["choices"] = list(self.choices)
        else:
            data.update(low=self.low, high=self.high)
            if self.step:
                data["step"] = self.step
        return data

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> Dimension:
        return cls(name, data["kind"], data.get("low"), data.get("high"), data.get("step"), tuple(data.get("choices") or ()))

    def to_distribution(self):
        """The Optuna distribution for this dimension (Optuna imported here, by the caller's need)."""
        import optuna.distributions as d

        if self.kind == "choice":
            return d.CategoricalDistribution(list(self.choices))
        if self.is_int:
            return d.IntDistribution(int(self.low), int(self.high), log=self.log, step=self.step or 1)
        return d.FloatDistribution(self.low, self.high, log=self.log)


def _number_text(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def parse_space(items: list[str] | None) -> dict[str, Dimension]:
    """``["lr=loguniform(1e-5,1e-2)", ...]`` -> dimensions by name; one clear error per mistake."""
    from research.runs.params import _split_top_level, papermill_value

    space: dict[str, Dimension] = {}
    for item in items or []:
        match = _SPEC.fullmatch(item)
        if not match:
            raise ResearchError(f"--space {item!r}: write NAME=KIND(ARGS), e.g. lr=loguniform(1e-5,1e-2); kinds: {', '.join(KINDS)}")
        name, kind, args_text = match[1], match[2].lower(), match[3]
        if kind not in KINDS:
            raise ResearchError(f"--space {item!r}: unknown distribution {match[2]!r}; use {', '.join(KINDS)} (`research sweep --help` says what each takes)")
        if name in space:
            raise ResearchError(f"--space: {name} given twice")
        args = [a.strip() for a in _split_top_level(args_text, ",")] if args_text.strip() else []
        if any(a == "" for a in args):
            raise ResearchError(f"--space {item!r}: an empty argument")
        if kind == "choice":
            if not args:
                raise ResearchError(f"--space {item!r}: choice() needs at least one value")
            choices = tuple(papermill_value(a) for a in args)
            if len(set(map(repr, choices))) != len(choices):
                raise ResearchError(f"--space {item!r}: a value given twice")
            space[name] = Dimension(name, kind, choices=choices)
            continue
        space[name] = _bounded(item, name, kind, args)
    return space


def _bounded(item: str, name: str, kind: str, args: list[str]) -> Dimension:
    wanted = (2, 3) if kind == "int" else (2,)
    if len(args) not in wanted:
        raise ResearchError(f"--space {item!r}: {KINDS[kind]}")
    numbers = []
    for text in args:
        try:
            value = float(text)
        except ValueError:
            raise ResearchError(f"--space {item!r}: {text!r} is not a number") from None
        if not math.isfinite(value):
            raise ResearchError(f"--space {item!r}: bounds must be finite")
        numbers.append(value)
    low, high = numbers[0], numbers[1]
    step = None
    if kind in ("int", "logint"):
        if not all(v.is_integer() for v in numbers):
            raise ResearchError(f"--space {item!r}: {kind}() takes whole numbers")
        if len(numbers) == 3:
            step = int(numbers[2])
            if step < 1:
                raise ResearchError(f"--space {item!r}: the step must be at least 1")
    if high < low or (high == low and kind != "int"):
        raise ResearchError(f"--space {item!r}: LOW must be below HIGH")
    if kind in ("loguniform", "logint") and low <= 0:
        raise ResearchError(f"--space {item!r}: {kind}() needs LOW > 0")
    return Dimension(name, kind, low, high, step)


def check_space(space: dict[str, Dimension], specs, notebook: str, fixed: set[str]) -> dict[str, Dimension]:
    """Each dimension against the notebook's declared parameter: the name exists, no fixed
    value (``-p``) names it too, and every value it can take converts to the declared type.
    Returns the space with choices converted to the parameter's type."""
    from research.runs.params import _parse_type, coerce_value

    both = sorted(set(space) & fixed)
    if both:
        raise ResearchError(f"{', '.join(both)}: given with -p and searched with --space; keep one")
    checked = {}
    for name, dim in space.items():
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(specs) or "(none)"
            raise ResearchError(f"--space {name}: {notebook} declares no parameter '{name}'; known: {known}")
        base = _parse_type(spec.type_name)[0]
        if dim.kind == "choice":
            try:
                choices = tuple(coerce_value(spec, v) for v in dim.choices)
            except ResearchError as exc:
                raise ResearchError(f"--space {name}: {exc}") from None
            checked[name] = Dimension(name, "choice", choices=choices)
            continue
        if base is not None and base not in ("int", "float"):
            raise ResearchError(f"--space {name}: {notebook} declares {name}: {spec.type_name}; "
                                f"{dim.kind}() gives numbers, use choice(...)")
        if base == "int" and not dim.is_int:
            raise ResearchError(f"--space {name}: {notebook} declares {name}: int; {dim.kind}() gives floats, "
                                f"use int({_number_text(dim.low)},{_number_text(dim.high)})")
        checked[name] = dim
    return checked


def grid_size(space: dict[str, Dimension]) -> int:
    size = math.prod(len(dim.grid_values()) for dim in space.values())
    if size > GRID_LIMIT:
        raise ResearchError(f"--sampler grid: {size:,} points (over {GRID_LIMIT:,}); narrow the space or use tpe")
    return size


def space_to_json(space: dict[str, Dimension]) -> dict[str, Any]:
    return {name: dim.to_json() for name, dim in space.items()}


def space_from_json(data: dict[str, Any]) -> dict[str, Dimension]:
    return {name: Dimension.from_json(name, spec) for name, spec in data.items()}
