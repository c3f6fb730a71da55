"""Notebook parameters: read the cell tagged ``parameters``, then type-check given values.

A notebook declares its parameters the papermill way, in a code cell tagged
``parameters``::

    steps = 100             # number of optimizer steps
    lr: float = 3e-4
    budget_mb: int | None = None

``inspect_notebook`` turns that cell into ``ParamSpec``s (name, type, default,
help). Python cells are read with ``ast`` (same result as papermill's
``PythonTranslator.inspect`` for ordinary cells, but it also understands
``int | None`` annotations and ``#`` inside strings, and it does not import
papermill, so the CLI stays fast); a cell ``ast`` cannot parse, and other kernels,
are read by papermill's translator for the language. Where nobody can read the cell
(papermill inspects Python only: R, Julia...), names and types go unchecked.
``coerce_value``/``resolve_parameters`` convert ``-p key=value`` strings and
``-f params.yaml`` values to the declared types before anything runs, and say what
papermill would do where we refuse; without the check they pass values as papermill
does. A run injects only the parameters it was given (``injected_parameters``).
"""

from __future__ import annotations

import ast
import difflib
import io
import json
import math
import re
import tokenize
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from research.errors import ResearchError

PARAMETERS_TAG = "parameters"

# Names accepted for each base type in an annotation or ``# type:`` comment.
_BASE_TYPES = {
    "int": "int",
    "float": "float",
    "bool": "bool",
    "str": "str",
    "list": "list",
    "List": "list",
    "tuple": "list",
    "Tuple": "list",
    "Sequence": "list",
    "dict": "dict",
    "Dict": "dict",
    "Mapping": "dict",
}
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_NULL = {"none", "null", "~"}


@dataclass
class ParamSpec:
    """One parameter of a notebook, as declared in its ``parameters`` cell."""

    name: str
    type_name: str | None  # declared or inferred type, e.g. "int", "list[int]", "int | None"
    default: Any  # the default as a Python value, or None when it is not a literal
    default_repr: str  # the default as written in the cell
    help: str = ""  # the comment at the end of the line

    @property
    def optional(self) -> bool:
        """Whether ``None`` is an accepted value."""
        return _parse_type(self.type_name)[1]


# --------------------------------------------------------------------------- inspection


def _read_notebook(path: Path) -> dict:
    if not path.exists():
        raise ResearchError(f"notebook not found: {path}")
    if not path.is_file():
        raise ResearchError(f"not a notebook file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResearchError(
            f"{path} is not a Jupyter notebook ({exc.__class__.__name__})"
        ) from None
    if not isinstance(data, dict):
        raise ResearchError(f"{path} is not a Jupyter notebook")
    if "cells" not in data:
        if "worksheets" in data:  # nbformat 3: let nbformat convert it
            import nbformat

            return nbformat.reads(json.dumps(data), as_version=4)
        raise ResearchError(f"{path} is not a Jupyter notebook (no cells)")
    return data


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _tags(cell: dict) -> list:
    return (cell.get("metadata") or {}).get("tags") or []


def parameters_cell_index(nb: dict) -> int:
    """Index of the first cell tagged ``parameters``, or -1."""
    for index, cell in enumerate(nb.get("cells", [])):
        if PARAMETERS_TAG in _tags(cell):
            return index
    return -1


def _notebook_language(nb: dict) -> str:
    meta = nb.get("metadata") or {}
    return (
        (meta.get("language_info") or {}).get("name")
        or (meta.get("kernelspec") or {}).get("language")
        or "python"
    )


class NotebookParameters(dict):
    """The parameters a notebook declares, ``name -> ParamSpec`` in cell order.

    ``readable`` is False when neither our reader nor papermill's translator for the
    kernel's language can read the cell (papermill inspects Python cells only): then
    nothing is known about names or types, and values pass unchecked, as papermill
    passes them. ``injectable`` is False when papermill has no translator for the
    language at all, so it cannot write a parameters cell.
    """

    def __init__(self, specs: list[ParamSpec], language: str, readable: bool = True, injectable: bool = True,
                 tagged: bool = True):
        super().__init__((spec.name, spec) for spec in specs)
        self.language = language
        self.readable = readable
        self.injectable = injectable
        # No cell tagged ``parameters``: the notebook runs as it is and declares nothing;
        # papermill would put the given values in a cell at the top (`--no-check` does too).
        self.tagged = tagged


def inspect_notebook(path: str | Path) -> NotebookParameters:
    """The parameters declared in the notebook's ``parameters`` cell, in cell order
    (none, with ``tagged`` False, when no cell is tagged: papermill runs such notebooks).

    Raises ResearchError if the file is missing or is not a notebook.
    """
    path = Path(path)
    nb = _read_notebook(path)
    index = parameters_cell_index(nb)
    language = _notebook_language(nb)
    if index < 0:
        return NotebookParameters([], language, injectable=_has_translator(nb), tagged=False)
    source = _source(nb["cells"][index])
    specs = None
    if language.lower() == "python":
        specs = _inspect_python_source(source)
    if specs is None:
        specs = _inspect_with_papermill(nb, source)
    if specs is None:
        return NotebookParameters([], language, readable=False, injectable=_has_translator(nb))
    return NotebookParameters(specs, language)


def _kernel_and_language(nb: dict) -> tuple[str, str]:
    """What papermill picks a translator by: the kernel's name, then the language."""
    kernel = ((nb.get("metadata") or {}).get("kernelspec") or {}).get("name") or "python3"
    return kernel, _notebook_language(nb)


def _has_translator(nb: dict) -> bool:
    from papermill.exceptions import PapermillException
    from papermill.translators import papermill_translators

    try:
        papermill_translators.find_translator(*_kernel_and_language(nb))
    except PapermillException:
        return False
    return True


def _mask_magics(source: str) -> str:
    """Blank out IPython magics and shell escapes so that ``ast`` can read the cell."""
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        lines.append("" if stripped.startswith(("%", "!")) else line)
    return "\n".join(lines)


def _line_comments(source: str) -> dict[int, str]:
    """Map line number -> text of the comment on that line (without ``#``)."""
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string[1:].strip()
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return comments


def _inspect_python_source(source: str) -> list[ParamSpec] | None:
    """Parameters assigned at the top level of a Python cell; None if it does not parse."""
    masked = _mask_magics(source)
    try:
        tree = ast.parse(masked)
    except SyntaxError:
        return None
    comments = _line_comments(masked)
    specs: dict[str, ParamSpec] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.value is None:
                continue
            name, annotation, value = node.target.id, ast.unparse(node.annotation), node.value
        elif (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            name, annotation, value = node.targets[0].id, None, node.value
        else:
            continue
        comment = comments.get(node.end_lineno or node.lineno, "")
        type_comment = None
        match = re.match(r"type:\s*(\S+)\s*(.*)$", comment)
        if match:
            type_comment, comment = match.group(1), match.group(2).strip()
        default_repr = ast.get_source_segment(masked, value) or ast.unparse(value)
        default_repr = " ".join(line.strip() for line in default_repr.splitlines())
        try:
            default = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            default = None
        if isinstance(default, tuple):
            default = list(default)
        if isinstance(default, set | frozenset | bytes | complex):
            default = None
        type_name = annotation or type_comment or _type_of_literal(default)
        specs.pop(name, None)  # a later assignment wins, and moves to the end
        specs[name] = ParamSpec(name, type_name, default, default_repr, comment)
    return list(specs.values())


def _inspect_with_papermill(nb: dict, source: str) -> list[ParamSpec] | None:
    """papermill's reading of the cell, for cells ``ast`` cannot parse (it skips the lines it
    cannot read) and other kernels; None when papermill has no reader for the language."""
    from nbformat.v4 import new_code_cell
    from papermill.exceptions import PapermillException
    from papermill.translators import papermill_translators

    try:
        translator = papermill_translators.find_translator(*_kernel_and_language(nb))
        # The translator reads ``cell.source`` as one string: a notebook file may hold a list of lines.
        params = translator.inspect(new_code_cell(source))
    except (PapermillException, NotImplementedError):  # no translator; one that cannot inspect
        return None
    specs = []
    for p in params:
        type_name = None if p.inferred_type_name in (None, "None") else p.inferred_type_name
        default = _literal_or_none(p.default)
        specs.append(
            ParamSpec(p.name, type_name or _type_of_literal(default), default, p.default, p.help)
        )
    return specs


def _literal_or_none(text: str) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return list(value) if isinstance(value, tuple) else value


def _type_of_literal(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    for kind in (int, float, str, list, dict):
        if isinstance(value, kind):
            return kind.__name__
    return None


# --------------------------------------------------------------------------- coercion


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _parse_type(type_name: str | None) -> tuple[str | None, bool, str | None]:
    """(base type or None if unknown, whether None is allowed, element type of a list)."""
    if not type_name:
        return None, True, None
    text = type_name.strip().strip("\"'")
    for prefix in ("typing.", "t."):
        text = text.replace(prefix, "")
    optional = False
    match = re.fullmatch(r"Optional\[(.*)\]", text)
    if match:
        text, optional = match.group(1).strip(), True
    match = re.fullmatch(r"Union\[(.*)\]", text)
    if match:
        members = [m.strip() for m in _split_top_level(match.group(1), ",")]
    else:
        members = [m.strip() for m in _split_top_level(text, "|")]
    if any(m in ("None", "NoneType") for m in members):
        optional = True
        members = [m for m in members if m not in ("None", "NoneType")]
    if len(members) != 1:
        return None, optional, None  # a union we do not model: guess from the value
    member = members[0]
    if member in ("None", "NoneType", ""):
        return None, True, None
    match = re.fullmatch(r"(\w+)\s*(?:\[(.*)\])?", member)
    if not match:
        return None, optional, None
    base = _BASE_TYPES.get(match.group(1))
    element = None
    if base == "list" and match.group(2):
        inner = _BASE_TYPES.get(match.group(2).strip())
        element = inner if inner in ("int", "float", "bool", "str") else None
    return base, optional, element


def _fail(spec: ParamSpec, raw: Any, note: str = "") -> ResearchError:
    shown = raw if isinstance(raw, str) else json.dumps(raw, default=str)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    suffix = f" ({note})" if note else ""
    return ResearchError(
        f"parameter '{spec.name}' expects {spec.type_name or 'a value'}, got {shown!r}{suffix}"
    )


_YAML_LOADER = None


def _yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that keeps dates as text, as papermill reads ``-f`` and ``-y``: a
    ``date: 2024-01-31`` parameter reaches the notebook as the string a user typed."""
    global _YAML_LOADER
    import yaml

    if _YAML_LOADER is None:

        class NoDatesLoader(yaml.SafeLoader):
            yaml_implicit_resolvers = {
                first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:timestamp"]
                for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
            }

        _YAML_LOADER = NoDatesLoader
    return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 (a SafeLoader subclass)


def _parse_structured(text: str) -> Any:
    """Parse a JSON or YAML value; raises ValueError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    import yaml

    try:
        return _yaml_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc).splitlines()[0]) from None


def papermill_value(text: str) -> Any:
    """What ``papermill -p NAME VALUE`` passes for ``text``: exactly True, False or None,
    else an int, else a float, else the text itself (so ``""`` stays ``""``)."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text


def _guess(raw: str) -> Any:
    """Best guess for a value whose declared type is unknown: number, bool, null, JSON, else str."""
    text = raw.strip()
    lowered = text.lower()
    if lowered in _NULL:
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            value = convert(text)
        except ValueError:
            continue
        # "007" is not a number a researcher types; keep it as text.
        if convert is int and len(text.lstrip("+-")) > 1 and text.lstrip("+-").startswith("0"):
            return raw
        return value
    if text.startswith(("[", "{")):  # ``text[:1] in "[{"`` is true for "" too
        try:
            return _parse_structured(text)
        except ValueError:
            return raw
    return raw


def _coerce_base(spec: ParamSpec, base: str, raw: Any, element: str | None) -> Any:
    if base == "str":
        if isinstance(raw, str):
            return raw
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return str(raw)
        raise _fail(spec, raw)
    if base == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise _fail(spec, raw, "use true/false, yes/no or 1/0")
    if base == "int":
        if isinstance(raw, bool):
            raise _fail(spec, raw)
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                pass
        raise _fail(spec, raw)
    if base == "float":
        if isinstance(raw, bool):
            raise _fail(spec, raw)
        if isinstance(raw, int | float):
            return float(raw)
        if isinstance(raw, str):
            try:
                value = float(raw.strip())
            except ValueError:
                raise _fail(spec, raw) from None
            if math.isnan(value) and raw.strip().lower() not in ("nan", "+nan", "-nan"):
                raise _fail(spec, raw)
            return value
        raise _fail(spec, raw)
    if base in ("list", "dict"):
        value = raw
        if isinstance(raw, str):
            try:
                value = _parse_structured(raw)
            except ValueError as exc:
                raise _fail(spec, raw, f"not valid JSON or YAML: {exc}") from None
        if isinstance(value, tuple):
            value = list(value)
        expected = list if base == "list" else dict
        if not isinstance(value, expected):
            example = "[1, 2]" if base == "list" else '{"a": 1}'
            raise _fail(spec, raw, f"write it as JSON or YAML, e.g. {example}")
        if base == "list" and element:
            inner = ParamSpec(spec.name, spec.type_name, None, "", "")
            try:
                value = [_coerce_base(inner, element, item, None) for item in value]
            except ResearchError:
                raise _fail(spec, raw, f"items must be {element}") from None
        return value
    raise AssertionError(base)


def coerce_value(spec: ParamSpec, raw: Any) -> Any:
    """Convert ``raw`` (a ``-p`` string or a YAML/JSON value) to the parameter's declared type.

    Raises ResearchError such as ``parameter 'steps' expects int, got 'abc'``.
    """
    base, optional, element = _parse_type(spec.type_name)
    if base is None:  # unknown or unmodelled type: take typed values as they are, guess strings
        return _guess(raw) if isinstance(raw, str) else raw
    if raw is None:
        if optional:
            return None
        raise _fail(spec, raw)
    if optional and isinstance(raw, str):
        # For ``str | None`` only none/null mean None ("~" stays text).
        nulls = {"none", "null"} if base == "str" else _NULL
        if raw.strip().lower() in nulls:
            return None
    return _coerce_base(spec, base, raw, element)


_NO_CHECK = "`research run --no-check` does the same"


def _papermill_note(value: Any) -> str:
    shown = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    kind = "None" if value is None else type(value).__name__
    return f"papermill would pass the {kind} {shown!r}; {_NO_CHECK}"


def resolve_parameters(
    specs: dict[str, ParamSpec],
    given: dict[str, Any],
    notebook: str | Path | None = None,
    *,
    raw: Iterable[str] = (),
    typed: Iterable[str] = (),
    check: bool = True,
) -> dict[str, Any]:
    """Check every given name against the notebook's parameters and coerce each value.

    ``given`` holds ``-p``/``--grid`` text, and under the names in ``typed`` values typed
    by YAML or JSON (``-f``, ``-y``) and under the names in ``raw``
    ``-r`` values, text that is never converted. Returns a new dict of the
    given parameters with typed values (defaults are not added). Raises ResearchError on
    an unknown name (listing the known ones) or a value of the wrong type, saying what
    papermill would do instead.

    Without ``check``, or when the notebook's cell cannot be read (``readable`` False),
    values are what papermill passes: strings typed as ``papermill -p`` types them,
    raw and typed values as they are, and any name.
    """
    if given and not getattr(specs, "injectable", True):
        raise ResearchError(
            f"papermill has no parameter translator for {specs.language} notebooks"
            f"{f' ({notebook})' if notebook is not None else ''}, so it cannot inject {', '.join(given)}"
        )
    raw, typed = set(raw), set(typed)
    unchecked = not check or not getattr(specs, "readable", True)
    resolved: dict[str, Any] = {}
    for name, value in given.items():
        is_text = isinstance(value, str) and name not in raw and name not in typed
        as_papermill = papermill_value(value) if is_text else value
        if unchecked:
            resolved[name] = as_papermill
            continue
        spec = specs.get(name)
        if spec is None and not getattr(specs, "tagged", True):
            raise ResearchError(
                f"{notebook or 'the notebook'} has no cell tagged 'parameters', so it declares no '{name}'; "
                f"papermill would put it in a cell at the top ({_NO_CHECK})"
            )
        if spec is None:
            where = f" for {notebook}" if notebook is not None else ""
            known = ", ".join(specs) if specs else "(none)"
            message = f"unknown parameter '{name}'{where}; known: {known}"
            close = difflib.get_close_matches(name, list(specs), n=1)
            if close:
                message += f" (did you mean '{close[0]}'?)"
            raise ResearchError(f"{message}; papermill would only warn and inject it ({_NO_CHECK})")
        try:
            if name in raw:
                resolved[name] = _coerce_raw(spec, value)
            elif name in typed and _parse_type(spec.type_name)[0] is None:
                resolved[name] = value  # YAML already typed it; guessing would undo a quoted "5"
            else:
                resolved[name] = coerce_value(spec, value)
        except ResearchError as exc:
            raise ResearchError(f"{exc}; {_papermill_note(as_papermill)}") from None
    return resolved


def _coerce_raw(spec: ParamSpec, text: str) -> str:
    """A ``-r`` value is text: right for a ``str`` or untyped parameter, a mismatch otherwise."""
    base = _parse_type(spec.type_name)[0]
    if base not in (None, "str"):
        raise _fail(spec, text, "-r passes text; -p converts it")
    return text


def injected_parameters(given: dict[str, Any], effective: dict[str, Any]) -> dict[str, Any]:
    """What a run injects into the notebook: papermill's convention, only the parameters
    given (on the link, with -p, -f, -y, -r or --grid), at their effective typed values.
    The notebook's own defaults stay as its cell writes them: re-injected through a
    record (JSON) a tuple would come back a list and ``{1: ...}`` keys strings."""
    return {name: effective[name] for name in given if name in effective}


# --------------------------------------------------------------------------- command-line input

_NAME = re.compile(r"^[A-Za-z_]\w*$")


def _split_assignment(text: str, option: str = "-p") -> tuple[str, str]:
    if "=" not in text:
        raise ResearchError(f"expected key=value for {option}, got {text!r}")
    key, value = text.split("=", 1)
    key = key.strip()
    if not _NAME.match(key):
        raise ResearchError(f"bad parameter name {key!r} in {text!r} (expected key=value)")
    return key, value


def parse_assignments(items: list[str] | tuple[str, ...] | None, option: str = "-p") -> dict[str, str]:
    """``["steps=10", "name=007"]`` -> ``{"steps": "10", "name": "007"}`` (values stay strings)."""
    result: dict[str, str] = {}
    for item in items or []:
        key, value = _split_assignment(item, option)
        result[key] = value
    return result


def load_params_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file holding a mapping of parameter names to values."""
    path = Path(path)
    if not path.is_file():
        raise ResearchError(f"params file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise ResearchError(f"could not parse {path}: {exc}") from None
    else:
        import yaml

        try:
            data = _yaml_load(text)
        except yaml.YAMLError as exc:
            first = " ".join(str(exc).split())
            raise ResearchError(f"could not parse {path}: {first}") from None
    return _parameter_mapping(data, str(path))


def parse_yaml_params(texts: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """``-y 'lr: 0.1'`` strings (papermill's ``--parameters_yaml``), merged in order; values typed by YAML."""
    import yaml

    result: dict[str, Any] = {}
    for text in texts or []:
        try:
            data = _yaml_load(text)
        except yaml.YAMLError as exc:
            first = " ".join(str(exc).split())
            raise ResearchError(f"could not parse -y {text!r}: {first}") from None
        result.update(_parameter_mapping(data, f"-y {text!r}"))
    return result


def _parameter_mapping(data: Any, where: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ResearchError(f"{where} must hold a mapping of parameter names to values")
    for key in data:
        if not isinstance(key, str) or not _NAME.match(key):
            raise ResearchError(f"bad parameter name {key!r} in {where}")
    return dict(data)


class Grid:
    """A ``--grid`` sweep, kept as its axes: ``len()`` is the product of their sizes and
    iterating yields the points one at a time (first key varying slowest), so a grid of a
    million points is counted, and refused, without being built."""

    def __init__(self, axes: dict[str, Sequence[str]]):
        self.axes = axes

    @property
    def keys(self) -> list[str]:
        return list(self.axes)

    def __len__(self) -> int:
        return math.prod(len(values) for values in self.axes.values())

    def __iter__(self) -> Iterator[dict[str, str]]:
        def points(keys: list[str]) -> Iterator[dict[str, str]]:
            if not keys:
                yield {}
                return
            for value in self.axes[keys[0]]:
                for rest in points(keys[1:]):
                    yield {keys[0]: value, **rest}

        return points(self.keys)


class _IntRange(Sequence[str]):
    """``0..999`` in a ``--grid``: the integers from one end to the other, both included, as text."""

    def __init__(self, first: int, last: int):
        self.range = range(first, last + 1)

    def __len__(self) -> int:
        return len(self.range)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [str(v) for v in self.range[index]]
        return str(self.range[index])


_RANGE = re.compile(r"\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*")


def parse_grid(items: list[str] | tuple[str, ...] | None) -> Grid:
    """``["a=1,2", "b=x,y"]`` -> a ``Grid`` of their cartesian product.

    Commas inside brackets or quotes do not split, so ``sizes=[1,2],[3,4]`` gives two
    lists; ``seed=0..9`` is the ten integers 0 to 9. Values stay strings (coerce them with
    ``resolve_parameters``). No items gives one point with nothing varied.
    """
    axes: dict[str, Sequence[str]] = {}
    for item in items or []:
        key, values_text = _split_assignment(item, "--grid")
        if key in axes:
            raise ResearchError(f"grid parameter '{key}' given twice")
        span = _RANGE.fullmatch(values_text)
        if span:
            first, last = int(span[1]), int(span[2])
            if last < first:
                raise ResearchError(f"empty range in --grid {item!r}: write the smaller end first")
            axes[key] = _IntRange(first, last)
            continue
        values = [v.strip() for v in _split_top_level(values_text, ",")]
        if not values_text.strip() or any(v == "" for v in values):
            raise ResearchError(f"empty value in --grid {item!r}")
        axes[key] = values
    return Grid(axes)


def expand_grid(items: list[str] | tuple[str, ...] | None) -> list[dict[str, str]]:
    """Every point of ``parse_grid(items)``, as a list."""
    return list(parse_grid(items))
