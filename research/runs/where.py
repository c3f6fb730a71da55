"""``--where`` expressions over runs: ``metrics.throughput > 1000 or params.budget_mb = 64``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from research.errors import ResearchError

# ---------------------------------------------------------------------------
# --where expressions: metrics.throughput > 1000 or params.budget_mb = 64


_TOKEN_KINDS = [
    ("space", r"\s+"),
    ("op", r"==|!=|>=|<=|=|<|>|~"),
    ("lparen", r"\("),
    ("rparen", r"\)"),
    ("string", r"'[^']*'|\"[^\"]*\""),
    ("number", r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])"),
    ("word", r"[A-Za-z_][\w.\-]*"),
]


def _tokenize(text: str) -> list[tuple[str, str]]:
    import re

    pattern = re.compile("|".join(f"(?P<{k}>{p})" for k, p in _TOKEN_KINDS))
    tokens, pos = [], 0
    while pos < len(text):
        match = pattern.match(text, pos)
        if not match:
            raise ResearchError(f"bad --where expression near {text[pos:]!r}")
        kind = match.lastgroup
        if kind != "space":
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


class Where:
    """A compiled ``--where``: call it on a run's row."""

    def __init__(self, predicate: Callable[[dict], bool], comparisons: list[tuple[str, str, Any, str]]):
        self.predicate = predicate
        self.comparisons = comparisons  # (field, op, literal, the literal as written)

    @property
    def fields(self) -> list[str]:
        """The dotted names it reads, in order."""
        return list(dict.fromkeys(name for name, _op, _literal, _raw in self.comparisons))

    def __call__(self, row: dict) -> bool:
        return self.predicate(row)

    def absent_fields(self, rows: list[dict]) -> list[str]:
        """The fields it reads that none of ``rows`` has (a typo, most often)."""
        return [name for name in self.fields if all(_lookup(row, name) is _MISSING for row in rows)]

    def type_mismatches(self, rows: list[dict]) -> list[str]:
        """Comparisons that can match no run: every value the field holds is of another type
        than the literal (``params.name > 5`` where every name is text)."""
        out = []
        for name, op, literal, raw in self.comparisons:
            if op == "~" or literal is None:
                continue
            kinds = {_kind(v) for v in (_lookup(row, name) for row in rows) if v is not _MISSING and v is not None}
            if kinds and _kind(literal) not in kinds:
                held = " or ".join(sorted(_KIND_NAMES[k] for k in kinds))
                hint = f" (quote it to compare text: '{raw}')" if kinds == {"text"} and raw[:1] not in "'\"" else ""
                out.append(f"{name} {op} {raw} matches no run: {name} holds {held}{hint}")
        return out


def compile_where(text: str) -> Where:
    """Parse a filter like ``metrics.x > 1 and (params.y = 2 or status = failed)``.

    Values compare by type: numbers numerically, text as text, true/false as booleans. A
    value of another type than the literal matches nothing (``params.name > 5`` is false for
    the name 'abc', and so is ``params.name != 5``), nor does a run that lacks the field or
    holds null there, except through ``= null``. ``~`` matches text case-insensitively.
    """
    tokens = _tokenize(text)
    position = [0]
    comparisons: list[tuple[str, str, Any, str]] = []

    def peek():
        return tokens[position[0]] if position[0] < len(tokens) else (None, None)

    def take(kind=None, value=None):
        tok = peek()
        if tok[0] is None or (kind and tok[0] != kind) or (value and tok[1].lower() != value):
            expected = value or kind or "more"
            raise ResearchError(f"bad --where expression {text!r}: expected {expected} at {tok[1] or 'the end'!r}")
        position[0] += 1
        return tok

    def chain(word: str, operand: Callable[[], Callable[[dict], bool]]):
        """``operand (word operand)*``: all of them (and) or any of them (or)."""
        parts = [operand()]
        while peek()[0] == "word" and peek()[1].lower() == word:
            take()
            parts.append(operand())
        if len(parts) == 1:
            return parts[0]
        combine = all if word == "and" else any
        return lambda row: combine(part(row) for part in parts)

    def parse_or():
        return chain("or", parse_and)

    def parse_and():
        return chain("and", parse_not)

    def parse_not():
        if peek()[0] == "word" and peek()[1].lower() == "not":
            take()
            inner = parse_not()
            return lambda row: not inner(row)
        if peek()[0] == "lparen":
            take("lparen")
            inner = parse_or()
            take("rparen")
            return inner
        return parse_comparison()

    def parse_comparison():
        field_name = take("word")[1]
        op = take("op")[1]
        kind, raw = take()
        if kind == "string":
            literal: Any = raw[1:-1]
        elif kind == "number":
            literal = float(raw)
        elif kind == "word":
            literal = {"true": True, "false": False, "null": None, "none": None}.get(raw.lower(), raw)
        else:
            raise ResearchError(f"bad --where expression {text!r}: expected a value after {op}")
        comparisons.append((field_name, op, literal, raw))
        return lambda row: _compare(_lookup(row, field_name), op, literal)

    try:
        predicate = parse_or()
    except RecursionError:
        raise ResearchError(f"bad --where expression: nested too deeply ({len(tokens)} tokens)") from None
    if position[0] != len(tokens):
        raise ResearchError(f"bad --where expression {text!r}: unexpected {tokens[position[0]][1]!r}")
    return Where(predicate, comparisons)


_MISSING = object()


def known_fields(rows: list[dict]) -> list[str]:
    """Every dotted name ``--where`` can read in ``rows``: ``status``, ``params.lr``, ``metrics.loss``..."""
    names: dict[str, None] = {}

    def walk(prefix: str, value: Any) -> None:
        for key, inner in value.items():
            name = f"{prefix}{key}"
            names[name] = None
            if isinstance(inner, dict):
                walk(f"{name}.", inner)

    for row in rows:
        walk("", row)
    return list(names)


def _lookup(row: dict, dotted: str):
    current: Any = row
    for part in dotted.split("."):
        if not isinstance(current, dict) or part not in current:
            return _MISSING
        current = current[part]
    return current


_KIND_NAMES = {"bool": "true/false", "number": "numbers", "text": "text", "other": "lists or tables"}


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    return "other"  # lists and dicts: only ``~`` looks into them


def _compare(value, op: str, literal) -> bool:
    if value is _MISSING or value is None:
        return literal is None and op in ("=", "==")
    if literal is None:
        return op == "!="
    if op == "~":
        return str(literal).lower() in str(value).lower()
    if _kind(value) != _kind(literal) or _kind(value) == "other":
        return False
    if _kind(value) == "bool" and op not in ("=", "==", "!="):
        return False
    return {
        "=": value == literal, "==": value == literal, "!=": value != literal,
        ">": value > literal, ">=": value >= literal, "<": value < literal, "<=": value <= literal,
    }[op]
