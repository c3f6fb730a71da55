"""The Markdown backlog dialects people write, as data: what each mark and label means.

One table per convention, read by ``parse`` and written back by ``render``:

- the seed's labelled metadata (``**优先级**: 🔥 高``, ``**Status:** Done``, also in a blockquote
  or as a bullet), its priority matrix, its notes section and its document-level sections;
- GitHub task lists (``- [ ]``, ``* [x]``, ``1. [ ]``) and the extended boxes
  (``[/]`` active, ``[-]`` dropped, ``[✓]`` done);
- Obsidian Tasks signifiers (🔺⏫🔼🔽⏬ priority, 📅 due, ⏳ scheduled, 🛫 start, ➕ created,
  ✅ done, ❌ cancelled; 🔁 recurrence and the rest kept as they are);
- Logseq blocks (``- TODO``, ``DOING``, ``NOW``, ``LATER``, ``DONE``, ``CANCELED``; ``[#A]``
  priorities; ``SCHEDULED: <2024-01-05 Fri>`` and ``DEADLINE:``; ``key:: value`` properties).
"""

from __future__ import annotations

import re
from datetime import date

# ---------------------------------------------------------------------------
# Labelled metadata: **Key**: value

# field -> the labels that name it (compared case-insensitively); the first of each
# language is the one written when a document has not used any.
META_LABELS: dict[str, dict[str, list[str]]] = {
    "priority": {"zh": ["优先级", "优先"], "en": ["Priority", "prio"]},
    "estimate": {
        "zh": ["预计时间", "预计", "估计时间", "预估", "工作量"],
        "en": ["Estimate", "estimated time", "effort", "eta"],
    },
    "tags": {
        "zh": ["关联领域", "领域", "标签", "相关领域"],
        "en": ["Area", "areas", "tags", "tag", "related areas", "labels"],
    },
    "status": {"zh": ["状态", "当前状态"], "en": ["Status", "state"]},
    "due_date": {"zh": ["截止日期", "截止", "截止时间", "期限"], "en": ["Due", "due date", "deadline"]},
    "scheduled_date": {"zh": ["计划日期", "安排日期"], "en": ["Scheduled", "scheduled date"]},
    "start_date": {"zh": ["开始日期", "开始时间"], "en": ["Start", "start date", "starts"]},
    "created": {"zh": ["创建时间", "创建日期", "创建"], "en": ["Created", "created on", "date created"]},
    "innovation": {"zh": ["创新性"], "en": ["Innovation"]},
    "practicality": {"zh": ["实用性"], "en": ["Practicality", "usefulness"]},
    "feasibility": {"zh": ["可行性"], "en": ["Feasibility"]},
}
LABEL_FIELD = {
    label.lower(): name for name, langs in META_LABELS.items() for labels in langs.values() for label in labels
}
LABEL_LANG = {label.lower(): lang for langs in META_LABELS.values() for lang, labels in langs.items() for label in labels}
# Fields a Logseq ``key:: value`` property may carry (its keys are lower-case words).
LOGSEQ_PROPERTY_FIELD = {"priority": "priority", "status": "status", "tags": "tags", "estimate": "estimate",
                         "due": "due_date", "deadline": "due_date", "scheduled": "scheduled_date"}

# ``**Key**: value``, ``**Key:** value``, with a full-width colon too, optionally as a
# bullet or inside a blockquote. Groups: prefix, key, colon-inside, value.
META_LINE = re.compile(
    r"^(?P<prefix>[ \t]*(?:>[ \t]?)*[ \t]*(?:[-*+][ \t]+)?)"
    r"\*\*(?P<key>[^*\n]+?)(?P<inner>[:：])?\*\*(?(inner)|[ \t]*[:：])[ \t]*(?P<value>.*?)[ \t]*$"
)
OUTCOME_LABELS = {"成果", "成果记录", "产出", "outcomes", "outcome", "results"}
NOTE_LABELS = {"note": "en", "notes": "en", "笔记": "zh", "备注": "zh"}
OUTCOME_WRITE_LABEL = {"zh": "成果", "en": "Outcomes"}
NOTE_WRITE_LABEL = {"zh": "笔记", "en": "Note"}

# ---------------------------------------------------------------------------
# Sections

# A heading section with one of these names (after its emoji, numbering and punctuation
# are set aside) holds dated notes: the backlog's journal.
NOTES_SECTIONS = {
    "研究笔记", "笔记", "日志", "研究日志", "实验记录", "实验日志", "工作日志",
    "research notes", "notes", "journal", "log", "research log", "lab notes", "lab notebook",
    "experiment log", "daily notes", "daily log",
}
# Top-level sections with one of these names are parts of the document (its preface,
# legend, conventions, focus, references), not research directions: they stay text.
DOCUMENT_SECTIONS = {
    "文档说明", "说明", "简介", "介绍", "概述", "前言", "目录", "使用说明", "使用方法", "维护机制",
    "todo维护机制", "状态标记", "状态说明", "图例", "标记说明", "成果记录", "当前焦点", "焦点",
    "参考", "参考资料", "参考文献", "更新日志", "变更记录", "版本记录", "备注", "相关链接",
    "about", "overview", "introduction", "intro", "preface", "purpose", "readme", "table of contents",
    "contents", "toc", "how to use", "how to use this file", "usage", "conventions", "legend",
    "status legend", "maintenance", "review process", "current focus", "focus", "references",
    "resources", "links", "changelog", "change log", "history", "license", "contributing",
    "acknowledgements", "acknowledgments",
}
MATRIX_COLUMNS = {
    "topic": ["话题", "主题", "方向", "topic", "direction", "item"],
    "innovation": ["创新性", "innovation"],
    "practicality": ["实用性", "practicality", "usefulness"],
    "feasibility": ["可行性", "feasibility"],
    "score": ["综合评分", "综合", "score", "composite", "overall"],
    "status": ["当前状态", "状态", "status"],
}
MATRIX_COLUMN_OF = {alias.lower(): name for name, aliases in MATRIX_COLUMNS.items() for alias in aliases}
MATRIX_HEADER = {
    "zh": ["话题", "创新性", "实用性", "可行性", "综合评分", "当前状态"],
    "en": ["Topic", "Innovation", "Practicality", "Feasibility", "Score", "Status"],
}

_DECORATION = re.compile(r"^[\W\d_]+|[\W_]+$")


def section_name(title: str) -> str:
    """A heading's title reduced to its words, for matching section names."""
    return re.sub(r"\s+", " ", _DECORATION.sub("", title)).strip().lower()


# ---------------------------------------------------------------------------
# Checklists

BOX_STATUS = {" ": "planned", "x": "done", "X": "done", "✓": "done", "✔": "done", "/": "active", "-": "dropped"}
# ``- [ ] text``, ``* [x] text``, ``1. [/] text``: groups prefix (up to the box), mark, rest.
CHECKBOX = re.compile(r"^(?P<prefix>[ \t]*(?:>[ \t]?)*[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+)\[(?P<mark>[^\]\n])\](?P<rest>.*)$")
LOGSEQ_KEYWORDS = {
    "TODO": "planned", "LATER": "planned", "DOING": "active", "NOW": "active", "IN-PROGRESS": "active",
    "DONE": "done", "CANCELED": "dropped", "CANCELLED": "dropped", "WAITING": "paused", "WAIT": "paused",
}
LOGSEQ_TASK = re.compile(
    r"^(?P<prefix>[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+)(?P<keyword>" + "|".join(LOGSEQ_KEYWORDS) + r")(?=[ \t]|$)(?P<rest>.*)$"
)
LOGSEQ_PRIORITY = {"A": "high", "B": "medium", "C": "low"}
LOGSEQ_PRIORITY_MARK = re.compile(r"\[#([ABC])\]")
LOGSEQ_DATE_LINE = re.compile(r"^(?P<prefix>[ \t]*)(?P<key>SCHEDULED|DEADLINE):[ \t]*<(?P<date>\d{4}-\d{2}-\d{2})(?P<rest>[^>]*)>")
LOGSEQ_PROPERTY = re.compile(r"^[ \t]*(?:[-*+][ \t]+)?(?P<key>[A-Za-z][\w-]*)::[ \t]*(?P<value>.*?)[ \t]*$")

# Obsidian Tasks signifiers. Dated ones take a YYYY-MM-DD value.
OBSIDIAN_PRIORITY = {"🔺": "critical", "⏫": "high", "🔼": "medium", "🔽": "low", "⏬": "low"}
OBSIDIAN_PRIORITY_MARK = {"critical": "🔺", "high": "⏫", "low": "🔽"}
OBSIDIAN_DATES = {"📅": "due_date", "📆": "due_date", "🗓": "due_date", "⏳": "scheduled_date",
                  "⌛": "scheduled_date", "🛫": "start_date", "➕": "created", "✅": "done_on",
                  "❌": "cancelled_on"}
OBSIDIAN_DATE_MARK = {"due_date": "📅", "scheduled_date": "⏳", "start_date": "🛫"}
OBSIDIAN_OTHER = ("🔁", "🆔", "⛔", "🏁")  # recurrence, id, depends on, on completion: kept as written
# The seed's trailing task marks: status emoji and 🔥 priority.
TRAILING_STATUS = {"🚀": "active", "⏸️": "paused", "⏸": "paused", "📝": "writing-up", "❌": "dropped", "✅": "done"}
TRAILING_STATUS_MARK = {"active": "🚀", "paused": "⏸️", "writing-up": "📝", "dropped": "❌"}
FIRE_PRIORITY = {"🔥🔥": "critical", "🔥": "high"}

# Status emoji a heading may start or end with (``## 🚀 X``, ``### Phase 1 ✅``).
HEADING_STATUS = {"📋": "planned", "🚀": "active", "⏸️": "paused", "⏸": "paused", "✅": "done",
                  "📝": "writing-up", "❌": "dropped"}

# ---------------------------------------------------------------------------
# Dates

_DATE = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?!\d)|^(\d{4})年(\d{1,2})月(\d{1,2})日")
DATE_PREFIX = re.compile(r"^(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?!\d)|\d{4}年\d{1,2}月\d{1,2}日)")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def read_date(text: str) -> tuple[str | None, str, bool]:
    """(ISO date, the rest of the text, looked like a date) for text starting with a date.

    ``2025-11-08 Kickoff`` gives ("2025-11-08", "Kickoff", True); ``2025-13-40`` gives
    (None, ..., True): it looks like a date but names none.
    """
    match = _DATE.match(text)
    if not match:
        return None, text, False
    y, m, d = (match.group(1), match.group(2), match.group(3)) if match.group(1) else match.group(4, 5, 6)
    rest = text[match.end() :].strip(" \t-—–:：·|")
    try:
        return date(int(y), int(m), int(d)).isoformat(), rest, True
    except ValueError:
        return None, rest, True


def weekday_abbrev(iso: str) -> str:
    return ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[date.fromisoformat(iso).weekday()]
