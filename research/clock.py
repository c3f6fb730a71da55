"""Timestamps in one place, so tests (and reviews of the past) can control the clock.

Stored timestamps are ISO 8601 strings in UTC, which sort correctly as text.
``RESEARCH_NOW`` (an ISO timestamp) freezes the clock for a process.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

NOW_ENV = "RESEARCH_NOW"


def now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    frozen = os.environ.get(NOW_ENV)
    if frozen:
        value = datetime.fromisoformat(frozen)
        if value.tzinfo is None:
            value = value.astimezone()  # naive means local time
        return value.astimezone(UTC)
    return datetime.now(UTC)


def now_iso() -> str:
    return now().isoformat(timespec="microseconds")


def parse_iso(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def local_date(text: str | None) -> str:
    """The local calendar date of a stored timestamp, for display."""
    if not text:
        return ""
    return parse_iso(text).astimezone().date().isoformat()
