"""A run's final metrics: the last recorded value of each, by step, then time.

No ORM here: the review reads metrics with plain SQL and uses the same rule.
"""

from __future__ import annotations

from typing import Any


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
