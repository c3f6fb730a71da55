"""A run's final metrics (the last recorded value of each, by step, then time) and the
`best` rule that ranks runs by one of them (``max:throughput``).

No ORM here: the review reads metrics with plain SQL and uses the same rule.
"""

from __future__ import annotations

from typing import Any

from research.errors import ResearchError


def final_metrics(entries) -> dict[str, Any]:
    """The last recorded value of each metric (by step, then time)."""
    latest: dict[str, tuple] = {}
    for entry in entries:
        if not isinstance(entry, dict):  # a Metric row
            name, value, step, ts = entry.name, entry.value if entry.value is not None else entry.value_json, entry.step, entry.ts
        else:
            name, value, step, ts = entry.get("name"), entry.get("value"), entry.get("step"), entry.get("time")
        key = (step if step is not None else -1, ts or 0)
        if name not in latest or key >= latest[name][0]:
            latest[name] = (key, value)
    return {name: value for name, (_key, value) in latest.items()}


def parse_best(spec: str | None) -> tuple[str, str] | None:
    if not spec:
        return None
    direction, sep, metric = spec.partition(":")
    if not sep or direction not in ("max", "min") or not metric.strip():
        raise ResearchError(f"--best must look like max:METRIC or min:METRIC, got {spec!r}")
    return direction, metric.strip()
