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


def compile_where(text: str) -> Callable[[dict], bool]:
    """Parse a filter like ``metrics.x > 1 and (params.y = 2 or status = failed)``."""
    tokens = _tokenize(text)
    position = [0]

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
        return lambda row: _compare(_lookup(row, field_name), op, literal)

    try:
        predicate = parse_or()
    except RecursionError:
        raise ResearchError(f"bad --where expression: nested too deeply ({len(tokens)} tokens)") from None
    if position[0] != len(tokens):
        raise ResearchError(f"bad --where expression {text!r}: unexpected {tokens[position[0]][1]!r}")
    return predicate


def _lookup(row: dict, dotted: str):
    current: Any = row
    for part in dotted.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current


def _compare(value, op: str, literal) -> bool:
    if value is None:
        return op == "!=" if literal is not None else op in ("=", "==")
    if op == "~":
        return str(literal).lower() in str(value).lower()
    if isinstance(literal, float) and isinstance(value, int | float) and not isinstance(value, bool):
        left, right = float(value), literal
    elif isinstance(literal, bool) or isinstance(value, bool):
        left, right = value, literal
    else:
        left, right = str(value), str(literal) if not isinstance(literal, float) else _number_text(literal)
    try:
        return {
            "=": left == right, "==": left == right, "!=": left != right,
            ">": left > right, ">=": left >= right, "<": left < right, "<=": left <= right,
        }[op]
    except TypeError:
        return False


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)
