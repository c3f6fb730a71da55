"""The backlog's vocabulary: statuses, priorities and estimates as researchers write them.

Both the seed conventions (Chinese, emoji markers) and plain English are accepted;
``normalize_*`` turn any spelling into the canonical value or raise ResearchError.
"""

from __future__ import annotations

import re
import unicodedata

from research.errors import ResearchError

STATUSES = ("planned", "active", "paused", "done", "writing-up", "dropped")
OPEN_STATUSES = ("planned", "active", "paused", "writing-up")
PRIORITIES = ("low", "medium", "high", "critical")
ITEM_KINDS = ("item", "task")  # a heading-level item, or a checklist task
OUTCOME_KINDS = ("document", "code", "application", "related")

STATUS_EMOJI = {
    "planned": "📋",
    "active": "🚀",
    "paused": "⏸️",
    "done": "✅",
    "writing-up": "📝",
    "dropped": "❌",
}
STATUS_WORDS = {
    "zh": {
        "planned": "规划中",
        "active": "进行中",
        "paused": "暂停中",
        "done": "已完成",
        "writing-up": "记录中",
        "dropped": "已放弃",
    },
    "en": {s: s for s in STATUSES},
}
_STATUS_ALIASES = {
    "planned": ["planned", "plan", "todo", "规划中", "规划", "计划中", "待办", "📋"],
    "active": ["active", "start", "started", "in-progress", "in progress", "doing", "wip", "进行中", "🚀"],
    "paused": ["paused", "pause", "on-hold", "on hold", "blocked", "暂停中", "暂停", "⏸️", "⏸"],
    "done": ["done", "finished", "complete", "completed", "已完成", "完成", "✅", "✔️", "✔"],
    "writing-up": ["writing-up", "writing up", "writing", "write-up", "记录中", "整理中", "📝"],
    "dropped": ["dropped", "drop", "abandoned", "cancelled", "canceled", "已放弃", "放弃", "❌", "🗑️"],
}
STATUS_LOOKUP = {alias.lower(): status for status, aliases in _STATUS_ALIASES.items() for alias in aliases}

PRIORITY_FIRE = {"low": "", "medium": "", "high": "🔥", "critical": "🔥🔥"}
PRIORITY_WORDS = {
    "zh": {"low": "低", "medium": "中", "high": "高", "critical": "极高"},
    "en": {p: p for p in PRIORITIES},
}
_PRIORITY_ALIASES = {
    "low": ["low", "lo", "p3", "低", "较低"],
    "medium": ["medium", "med", "normal", "p2", "中", "中等", "一般"],
    "high": ["high", "hi", "p1", "高", "较高", "重要"],
    "critical": ["critical", "crit", "urgent", "highest", "very high", "p0", "极高", "紧急", "最高", "非常高"],
}
PRIORITY_LOOKUP = {alias: p for p, aliases in _PRIORITY_ALIASES.items() for alias in aliases}
PRIORITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}


def normalize_status(text: str) -> str:
    key = text.strip().lower()
    if key in STATUS_LOOKUP:
        return STATUS_LOOKUP[key]
    # "🚀 进行中" and similar: try each word.
    for part in re.split(r"\s+", key):
        if part in STATUS_LOOKUP:
            return STATUS_LOOKUP[part]
    raise ResearchError(f"unknown status {text!r}; use one of: {', '.join(STATUSES)}")


def normalize_priority(text: str) -> str:
    raw = text.strip()
    key = raw.lower()
    if key in PRIORITY_LOOKUP:
        return PRIORITY_LOOKUP[key]
    fires = raw.count("🔥")
    words = [w for w in re.split(r"[\s🔥()（）]+", key) if w]
    for word in words:
        if word in PRIORITY_LOOKUP:
            return PRIORITY_LOOKUP[word]
    if fires >= 2:
        return "critical"
    if fires == 1:
        return "high"
    raise ResearchError(f"unknown priority {text!r}; use one of: {', '.join(PRIORITIES)}")


def status_label(status: str, lang: str = "en") -> str:
    return f"{STATUS_EMOJI[status]} {STATUS_WORDS[lang][status]}"


def priority_label(priority: str, lang: str = "en") -> str:
    fire = PRIORITY_FIRE[priority]
    word = PRIORITY_WORDS[lang][priority]
    return f"{fire} {word}" if fire else word


# Estimates: "2-3天深度学习", "5-7天研究 + 实践", "3-4 days", "2 weeks", "4h", "半天".
_UNIT_DAYS = [
    (r"小时|hours?|hrs?|h\b", 1 / 8),  # a working day is 8 hours
    (r"天|日|days?|d\b", 1.0),
    (r"周|星期|weeks?|wks?|w\b", 7.0),
    (r"个月|月|months?|mo\b", 30.0),
]
_RANGE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:[-~–—到至]|to)\s*(\d+(?:\.\d+)?)|(\d+(?:\.\d+)?)")


def parse_estimate(text: str | None) -> tuple[float | None, float | None]:
    """Parse the first number or range and its unit into (min_days, max_days)."""
    if not text:
        return None, None
    if "半天" in text or "half a day" in text.lower():
        return 0.5, 0.5
    match = _RANGE.search(text)
    if not match:
        return None, None
    if match.group(3):
        low = high = float(match.group(3))
    else:
        low, high = float(match.group(1)), float(match.group(2))
    rest = text[match.end() :].strip().lower()
    factor = 1.0
    for pattern, days in _UNIT_DAYS:
        if re.match(pattern, rest):
            factor = days
            break
    return round(low * factor, 3), round(high * factor, 3)


def slugify(title: str, max_length: int = 60) -> str:
    """A URL- and shell-friendly slug; CJK characters are kept, emoji and punctuation go."""
    text = unicodedata.normalize("NFKC", title).lower()
    text = re.sub(r"[^\w]+", "-", text, flags=re.UNICODE).strip("-_")
    text = re.sub(r"[-_]{2,}", "-", text)
    if len(text) > max_length:
        text = text[:max_length].rstrip("-_")
    return text or "item"


def composite_score(innovation: int | None, practicality: int | None, feasibility: int | None) -> float | None:
    values = [v for v in (innovation, practicality, feasibility) if v is not None]
    if not values:
        return None
    return round(sum(values) / len(values), 3)


def split_tags(text: str) -> list[str]:
    return [t.strip() for t in re.split(r"[、,，;；/|]", text) if t.strip()]
