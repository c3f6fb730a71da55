"""Review periods: an ISO week, a calendar month, a quarter or a range of local days, with UTC bounds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from research import clock
from research.errors import ResearchError

# ---------------------------------------------------------------------------
# Periods


@dataclass(frozen=True)
class Period:
    """Local calendar days ``[start, end)`` and the period before them, ``[prev_start, start)``."""

    kind: str  # week, month, quarter or range
    label: str
    start: date
    end: date
    prev_start: date

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days)]


def utc_bound(day: date) -> str:
    """Local midnight starting ``day``, as a stored (UTC ISO) timestamp for text comparison."""
    local = datetime.combine(day, time()).astimezone()
    return local.astimezone(UTC).isoformat(timespec="microseconds")


_WEEK = re.compile(r"^(\d{4})-?[Ww](\d{1,2})$")
_MONTH = re.compile(r"^(\d{4})-(\d{1,2})$")
_QUARTER = re.compile(r"^(\d{4})-?[Qq]([1-4])$")


def _month_start(year: int, month: int) -> date:
    """The first day of ``month`` (which may run past 12 or below 1) of ``year``."""
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return date(year, month, 1)


def parse_period(
    week: str | None = None,
    month: str | None = None,
    since: str | None = None,
    until: str | None = None,
    today: date | None = None,
    quarter: str | None = None,
) -> Period:
    """The period the options name; the current ISO week when none is given."""
    if sum(x is not None for x in (week, month, quarter, since)) > 1:
        raise ResearchError("give only one of --week, --month, --quarter or --since")
    if until is not None and since is None:
        raise ResearchError("--until needs --since")
    today = today or clock.now().astimezone().date()
    if month is not None:
        match = _MONTH.match(month.strip())
        if not match or not 1 <= int(match.group(2)) <= 12:
            raise ResearchError(f"bad month {month!r}; use YYYY-MM, e.g. 2025-11")
        year, number = int(match.group(1)), int(match.group(2))
        start, end = _month_start(year, number), _month_start(year, number + 1)
        return Period("month", f"{year}-{number:02d}", start, end, _month_start(year, number - 1))
    if quarter is not None:
        text = quarter.strip()
        if re.fullmatch(r"[Qq][1-4]", text):  # this year's
            text = f"{today.year}-{text}"
        match = _QUARTER.match(text)
        if not match:
            raise ResearchError(f"bad quarter {quarter!r}; use YYYY-Qn, e.g. 2026-Q4")
        year, number = int(match.group(1)), int(match.group(2))
        first = 3 * (number - 1) + 1
        start, end = _month_start(year, first), _month_start(year, first + 3)
        return Period("quarter", f"{year}-Q{number}", start, end, _month_start(year, first - 3))
    if since is not None:
        start = _parse_date(since, "--since")
        end = (
            _parse_date(until, "--until") + timedelta(days=1)
            if until is not None
            else today + timedelta(days=1)
        )
        if end <= start:
            raise ResearchError(f"--until {until or today.isoformat()} is before --since {since}")
        last = end - timedelta(days=1)
        return Period(
            "range", f"{start.isoformat()} – {last.isoformat()}", start, end, start - (end - start)
        )
    if week is not None:
        match = _WEEK.match(week.strip())
        try:
            if not match:
                raise ValueError
            year, number = int(match.group(1)), int(match.group(2))
            start = date.fromisocalendar(year, number, 1)
        except ValueError:
            raise ResearchError(
                f"bad week {week!r}; use YYYY-Www (ISO 8601), e.g. 2025-W46"
            ) from None
    else:
        year, number, weekday = today.isocalendar()
        start = today - timedelta(days=weekday - 1)
    return Period(
        "week", f"{year}-W{number:02d}", start, start + timedelta(days=7), start - timedelta(days=7)
    )


def _parse_date(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ResearchError(f"bad date {text!r} for {option}; use YYYY-MM-DD") from None
