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

# A run is open (queued, then running) until it ends in one of the ended statuses.
OPEN_RUN_STATUSES = ("queued", "running")
# "pruned": a sweep's pruner stopped the trial early (its intermediate values were behind).
ENDED_RUN_STATUSES = ("succeeded", "failed", "timeout", "interrupted", "pruned")
FAILED_RUN_STATUSES = ("failed", "timeout", "interrupted")
RUN_STATUSES = OPEN_RUN_STATUSES + ENDED_RUN_STATUSES
OPEN_RUNS_SQL = "(" + ", ".join(f"'{s}'" for s in OPEN_RUN_STATUSES) + ")"  # for `status IN ...`

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
    "planned": [
        "planned", "plan", "todo", "to do", "to-do", "not started", "not yet started", "backlog",
        "open", "idea", "not done", "规划中", "规划", "计划中", "待办", "未开始", "尚未开始",
        "待开始", "未完成", "📋",
    ],
    "active": [
        "active", "start", "started", "in-progress", "in progress", "doing", "wip", "ongoing",
        "underway", "working on it", "partially complete", "partial", "partial progress", "进行中",
        "正在进行", "🚀", "🚧",
    ],
    "paused": [
        "paused", "pause", "on-hold", "on hold", "blocked", "waiting", "deferred", "暂停中",
        "暂停", "搁置", "阻塞", "⏸️", "⏸",
    ],
    "done": [
        "done", "finished", "complete", "completed", "closed", "shipped", "resolved", "fixed", "已完成",
        "完成", "✅", "✔️", "✔", "☑️",
    ],
    "writing-up": ["writing-up", "writing up", "writing", "write-up", "记录中", "整理中", "📝"],
    "dropped": [
        "dropped", "drop", "abandoned", "cancelled", "canceled", "won't do", "wontfix", "已放弃",
        "放弃", "已取消", "取消", "❌", "🗑️",
    ],
}
STATUS_LOOKUP = {alias.lower(): status for status, aliases in _STATUS_ALIASES.items() for alias in aliases}
_EMOJI_RUN = re.compile(r"[\u2300-\u23ff\u2600-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff\ufe0f\u200d]+")

_OUTCOME_ALIASES = {
    "document": ["document", "doc", "report", "paper", "文档", "产出文档", "📄"],
    "code": ["code", "repo", "implementation", "代码", "代码实现", "💻"],
    "application": ["application", "app", "use", "实践应用", "应用", "🎯"],
    "related": ["related", "link", "关联", "关联记录", "🔗"],
}
OUTCOME_LOOKUP = {a: k for k, aliases in _OUTCOME_ALIASES.items() for a in aliases}

PRIORITY_FIRE = {"low": "", "medium": "", "high": "🔥", "critical": "🔥🔥"}
PRIORITY_WORDS = {
    "zh": {"low": "低", "medium": "中", "high": "高", "critical": "极高"},
    "en": {p: p for p in PRIORITIES},
}
_PRIORITY_ALIASES = {
    "low": ["low", "lo", "lowest", "p3", "p4", "低", "较低", "最低"],
    "medium": ["medium", "med", "normal", "p2", "中", "中等", "一般"],
    "high": ["high", "hi", "p1", "高", "较高", "重要"],
    "critical": ["critical", "crit", "urgent", "highest", "very high", "p0", "极高", "紧急", "最高", "非常高"],
}
PRIORITY_LOOKUP = {alias: p for p, aliases in _PRIORITY_ALIASES.items() for alias in aliases}
PRIORITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}


def read_status(text: str) -> str | None:
    """The status a phrase names, or None: whole phrases only ("Not started" is planned).

    Accepted: an alias ("in progress", "已完成"), a status emoji, both together when they
    agree ("🚀 进行中"), and either followed by a parenthesis, a date or a dash-separated
    remark ("Done (2024-01-05)", "done — merged"). Anything else is unknown.
    """
    phrase = text.strip().lower()
    if not phrase:
        return None
    for candidate in _phrase_variants(phrase):
        found = _status_of_phrase(candidate)
        if found:
            return found
    return None


def _phrase_variants(phrase: str):
    yield phrase
    trimmed = re.sub(r"\s*[(（\[].*$", "", phrase).strip()  # "done (2024-01-05)", "最高（核心）"
    trimmed = re.sub(r"\s+\d{4}[-/.]\d{1,2}[-/.]\d{1,2}.*$", "", trimmed).strip()  # "done 2024-01-05"
    if trimmed and trimmed != phrase:
        yield trimmed
    head = re.split(r"\s+[—–-]\s+|\s*[:：;；,，]\s*", trimmed or phrase, maxsplit=1)[0].strip()
    if head and head not in (phrase, trimmed):
        yield head


def _status_of_phrase(phrase: str) -> str | None:
    phrase = phrase.strip(" .!。！*_`")
    if phrase in STATUS_LOOKUP:
        return STATUS_LOOKUP[phrase]
    emoji = "".join(_EMOJI_RUN.findall(phrase))
    words = _EMOJI_RUN.sub(" ", phrase).strip(" .!。！*_`")
    by_emoji = STATUS_LOOKUP.get(emoji) or STATUS_LOOKUP.get(emoji.replace("\ufe0f", "")) if emoji else None
    by_words = STATUS_LOOKUP.get(re.sub(r"\s+", " ", words)) if words else None
    if emoji and words:
        return by_emoji if by_emoji and by_emoji == by_words else None
    return by_emoji or by_words


def normalize_status(text: str) -> str:
    found = read_status(text)
    if found is None:
        raise ResearchError(f"unknown status {text!r}; use one of: {', '.join(STATUSES)}")
    return found


# Colour dots people use for priority; beside a word they are decoration, alone they rank.
_PRIORITY_DOTS = {"🔴": "critical", "🟠": "high", "🟡": "medium", "🟢": "low", "🔵": "low"}


def read_priority(text: str) -> str | None:
    """The priority a value names (a word, P0-P3, 🔥 marks, a colour dot), or None when it names none.

    Like statuses, a value may carry a remark: "HIGH - core feature", "🔴 最高（核心）".
    """
    raw = text.strip()
    for candidate in _phrase_variants(raw.lower()):
        found = _priority_of_phrase(candidate)
        if found:
            return found
    return None


def _priority_of_phrase(key: str) -> str | None:
    key = key.strip(" .!。！*_`")
    if key in PRIORITY_LOOKUP:
        return PRIORITY_LOOKUP[key]
    fires = key.count("🔥")
    dots = [_PRIORITY_DOTS[ch] for ch in key if ch in _PRIORITY_DOTS]
    plain = _EMOJI_RUN.sub(" ", key)
    words = [w for w in re.split(r"[\s()（）]+", plain) if w and w not in ("priority", "prio", "优先")]
    if words:
        joined = " ".join(words)
        if joined in PRIORITY_LOOKUP:
            return PRIORITY_LOOKUP[joined]
        found = {PRIORITY_LOOKUP[w] for w in words if w in PRIORITY_LOOKUP}
        if len(found) == 1 and all(w in PRIORITY_LOOKUP for w in words):
            return found.pop()
        return None
    if fires >= 2:
        return "critical"
    if fires == 1:
        return "high"
    if len(set(dots)) == 1:
        return dots[0]
    return None


def normalize_priority(text: str) -> str:
    found = read_priority(text)
    if found is None:
        raise ResearchError(f"unknown priority {text!r}; use one of: {', '.join(PRIORITIES)}")
    return found


def status_with_emoji(status: str | None) -> str:
    """``🚀 active``: how terminal tables and reviews show a status."""
    return f"{STATUS_EMOJI.get(status, '')} {status}" if status else ""


def priority_with_fire(priority: str, separator: str = "") -> str:
    """``🔥high`` in terminal tables, ``🔥 high`` (``separator=" "``) in reviews."""
    fire = PRIORITY_FIRE.get(priority, "")
    return f"{fire}{separator}{priority}" if fire else priority


def stars(score: int | None) -> str:
    """A 1-5 matrix score as stars."""
    return "⭐" * score if score else ""


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


_SLUG_SEPARATORS = re.compile(r"[^\w]+")
_SLUG_REPEATS = re.compile(r"[-_]{2,}")


def slugify(title: str, max_length: int = 60) -> str:
    """A URL- and shell-friendly slug; CJK characters are kept, emoji and punctuation go."""
    text = unicodedata.normalize("NFKC", title).lower()
    text = _SLUG_SEPARATORS.sub("-", text).strip("-_")
    text = _SLUG_REPEATS.sub("-", text)
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


def clean_title(title: str) -> str:
    """A title as stored: one line of text. Line breaks and control characters are refused,
    since a title is written back as one heading or checklist line."""
    text = title.strip()
    if not text:
        raise ResearchError("title must not be empty")
    if "\n" in text or "\r" in text:
        raise ResearchError("a title must be one line (it has a line break); put the rest in --body")
    bad = next((ch for ch in text if ord(ch) < 32 or ord(ch) == 127), None)
    if bad is not None:
        raise ResearchError(f"a title must not contain control characters (found {bad!r})")
    return text


def check_date(text: str | None, what: str = "date") -> str | None:
    """YYYY-MM-DD, or None for an empty value (which clears the field)."""
    if text is None or not text.strip():
        return None
    from datetime import date

    try:
        return date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        raise ResearchError(f"bad {what} {text!r}; use YYYY-MM-DD") from None
