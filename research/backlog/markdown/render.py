"""Writing backlog values as Markdown, in the conventions a document already uses.

Used for what the backlog adds to a document (a new item, task, note, outcome or field
line) and for changed values written into an existing carrier (``value_text``). Nothing
here re-renders what the user wrote: unchanged text is never passed through this module.
"""

from __future__ import annotations

import re
from typing import Any

from research.backlog.markdown import dialects as d
from research.vocab import PRIORITY_WORDS, STATUS_EMOJI, STATUS_WORDS

CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
OUTCOME_WORDS = {
    "zh": {"document": "📄 文档", "code": "💻 代码", "application": "🎯 应用", "related": "🔗 关联"},
    "en": {"document": "📄 document", "code": "💻 code", "application": "🎯 application", "related": "🔗 related"},
}
_STRUCTURE = [
    (re.compile(r"^([ \t]{0,3})(#{1,6}(?:[ \t]|$))"), r"\1\\\2"),  # a heading
    (re.compile(r"^([ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+)(#{1,6}(?:[ \t]|$))"), r"\1\\\2"),  # a list-entry heading
    (re.compile(r"^([ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+)(\[.\](?:[ \t]|$))"), r"\1\\\2"),  # a checkbox
    (re.compile(r"^([ \t]*)([-*+][ \t]+(?:" + "|".join(d.LOGSEQ_KEYWORDS) + r")(?:[ \t]|$))"), r"\1\\\2"),  # a Logseq task
    (re.compile(r"^([ \t]{0,3})((?:=+|-+)[ \t]*$)"), r"\1\\\2"),  # a setext underline
    (re.compile(r"^([ \t]{0,3})((?:```|~~~))"), r"\1\\\2"),  # a code fence
    (re.compile(r"^([ \t]{0,3})(<(?:!--|pre|script|style|textarea|\?|![A-Za-z]|!\[CDATA\[))", re.I), r"\1\\\2"),
]


def escape_line(line: str) -> str:
    """A body line as it must be written so that reading it back gives the same line.

    Lines that would read as structure (a heading, a checkbox, a Logseq task, a setext
    underline, a code fence, an HTML block, a known ``**Key**:`` field) get a backslash
    before their first mark; ``parse`` takes it off again.
    """
    for pattern, repl in _STRUCTURE:
        new, count = pattern.subn(repl, line, count=1)
        if count:
            return new
    meta = d.META_LINE.match(line)
    if meta and d.LABEL_FIELD.get(meta.group("key").strip().lower()):
        start = meta.start("key") - 2
        return line[:start] + "\\" + line[start:]
    return line


# A fence opens a line, or follows a list entry's bullet (``- ```py``): then its lines, and
# its closing fence, are indented to the entry's text, not to the margin.
_FENCE = re.compile(r"^(?P<entry>[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+)?[ \t]{0,3}(`{3,}|~{3,})")


def escape_body(lines: list[str]) -> list[str]:
    """``escape_line`` for every line outside a closed code fence; fence contents stay as they are."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        opener = _FENCE.match(line)
        if opener:
            mark = opener.group(2)
            margin = "[ \t]*" if opener.group("entry") else "[ \t]{0,3}"
            close = next((j for j in range(i + 1, len(lines))
                          if re.match(rf"^{margin}{re.escape(mark[0])}{{{len(mark)},}}[ \t]*$", lines[j])), None)
            if close is not None:
                out.extend(lines[i : close + 1])
                i = close + 1
                continue
        out.append(escape_line(line))
        i += 1
    return out


def line_lang(raw: str, fallback: str) -> str:
    if CJK.search(raw):
        return "zh"
    if re.search(r"[A-Za-z]", raw):
        return "en"
    return fallback


def status_text(status: str, style: str, lang: str, capital: bool = False) -> str:
    word = STATUS_WORDS[lang][status]
    if capital and lang == "en":
        word = word[:1].upper() + word[1:]
    if style == "word":
        return word
    if style == "emoji":
        return STATUS_EMOJI[status]
    return f"{STATUS_EMOJI[status]} {word}"


def priority_text(priority: str, style: str, lang: str, capital: bool = False) -> str:
    word = PRIORITY_WORDS[lang][priority]
    if capital and lang == "en":
        word = word[:1].upper() + word[1:]
    fire = {"high": "🔥", "critical": "🔥🔥"}.get(priority, "")
    if style == "p":
        return {"critical": "P0", "high": "P1", "medium": "P2", "low": "P3"}[priority]
    if style == "fire" and fire:
        return fire
    if style == "word" or not fire:
        return word
    return f"{fire} {word}"


def restyle(field: str, value: Any, raw: str, conv: dict[str, Any]) -> str:
    """``value`` written the way ``raw`` (the text it replaces) was written."""
    lang = line_lang(raw, conv.get("lang", "en"))
    capital = raw.strip()[:1].isupper()
    if field == "status":
        return status_text(value, _style_of(raw, "status", conv), lang, capital)
    if field == "priority":
        return priority_text(value, _style_of(raw, "priority", conv), lang, capital)
    return value_text(field, value, conv)


def _style_of(raw: str, field: str, conv: dict[str, Any]) -> str:
    if not raw.strip():
        return conv.get(f"{field}_style", "fire+word" if field == "priority" else "emoji+word")
    has_emoji = bool(re.search(r"[\u2300-\u23ff\u2600-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff]", raw))
    has_word = bool(re.search(r"[^\W\d_]", re.sub(r"[\u2300-\u23ff\u2600-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff\ufe0f]", "", raw)))
    if re.fullmatch(r"\s*[Pp]\d\s*", raw):
        return "p"
    if has_emoji and has_word:
        return "fire+word" if field == "priority" else "emoji+word"
    if has_emoji:
        return "fire" if field == "priority" else "emoji"
    return "word"


def value_text(field: str, value: Any, conv: dict[str, Any]) -> str:
    lang = conv.get("lang", "en")
    if field == "status":
        return status_text(value, conv.get("status_style", "emoji+word"), lang)
    if field == "priority":
        return priority_text(value, conv.get("priority_style", "fire+word"), lang)
    if field == "tags":
        return conv.get("tag_separator", "、" if lang == "zh" else ", ").join(value)
    if field in ("innovation", "practicality", "feasibility"):
        return "⭐" * int(value)
    if field == "score":
        return "🔥" * int(value) if float(value).is_integer() else f"{value:g}"
    return str(value)


def label_line(field: str, value: Any, conv: dict[str, Any], prefix: str | None = None) -> str:
    """``**优先级**: 🔥 高`` in the document's label words and form."""
    form = conv.get("label_form") or {"prefix": "", "inner": False, "colon": ":"}
    lang = conv.get("lang", "en")
    label = conv.get("labels", {}).get(field) or d.META_LABELS[field][lang][0]
    colon = form.get("colon", ":")
    head = f"**{label}{colon}**" if form.get("inner") else f"**{label}**{colon}"
    lead = form.get("prefix", "") if prefix is None else prefix
    return f"{lead}{head} {value_text(field, value, conv)}"


_HEADING_MISREAD = re.compile(
    r"^(?:\d{1,4}[.、)]\s|\d{4}[-/.年]\d|#+$|(?:" + "|".join(map(re.escape, d.HEADING_STATUS)) + r"))"
    r"|(?:\s(?:" + "|".join(map(re.escape, d.HEADING_STATUS)) + r")\ufe0f?)$"
)
_TASK_MISREAD = re.compile(
    r"(?:\s#[^\s#]+|🔥|" + "|".join(map(re.escape, [*d.TRAILING_STATUS, *d.OBSIDIAN_PRIORITY])) + r")\ufe0f?$"
    r"|(?:" + "|".join(map(re.escape, [*d.OBSIDIAN_DATES, *d.OBSIDIAN_OTHER])) + r")"
)


def protect_title(title: str, kind: str) -> str:
    """A title as written so that reading it back gives the same title.

    A heading title that starts with a number, a date or a status emoji, or a task title
    that ends with a mark (🔥, ✅, #tag...), would be read as that mark: it is written in
    bold, which ``parse`` takes off again.
    """
    pattern = _HEADING_MISREAD if kind == "item" else _TASK_MISREAD
    if pattern.search(title) or (kind == "item" and d.section_name(title) in d.NOTES_SECTIONS | d.DOCUMENT_SECTIONS):
        return f"**{title}**"
    return title


def heading_line(level: int, title: str, number: int | None = None, style: str = ".", protect: bool = True) -> str:
    """A heading; ``protect=False`` for headings meant to be read as what they look like
    (a dated note, the notes section)."""
    numbered = f"{number}{style} " if number is not None else ""
    text = protect_title(title, "item") if protect else title
    return f"{'#' * max(1, min(level, 6))} {numbered}{text}"


def box_mark(status: str, conv: dict[str, Any]) -> str:
    if status == "done":
        return conv.get("done_mark", "x")
    if conv.get("extended_boxes") and status in ("active", "dropped"):
        return "/" if status == "active" else "-"
    return " "


def trailing_status(status: str, form: str, conv: dict[str, Any]) -> str:
    """The trailing status mark a task needs beside its box or keyword ('' when none)."""
    if form == "keyword":
        return "📝" if status == "writing-up" else ""
    if status in ("planned", "done"):
        return ""
    if conv.get("extended_boxes") and status in ("active", "dropped"):
        return ""
    return d.TRAILING_STATUS_MARK[status]


def logseq_keyword(status: str, conv: dict[str, Any]) -> str:
    now = conv.get("logseq_now")
    return {
        "planned": "LATER" if now else "TODO",
        "active": "NOW" if now else "DOING",
        "writing-up": "NOW" if now else "DOING",
        "paused": "WAITING",
        "done": "DONE",
        "dropped": "CANCELED",
    }[status]


def task_marks(values: dict[str, Any], conv: dict[str, Any], form: str) -> str:
    """Trailing marks of a new task line: status, priority, dates, tags."""
    parts: list[str] = []
    status = values.get("status", "planned")
    mark = trailing_status(status, form, conv)
    if mark:
        parts.append(mark)
    priority = values.get("priority", "medium")
    if priority != "medium" and form != "keyword":
        parts.append(priority_mark(priority, conv))
    for name in ("start_date", "scheduled_date", "due_date"):
        # Logseq writes due and scheduled dates on lines of their own (see logseq_date_lines).
        if values.get(name) and (form != "keyword" or name == "start_date"):
            parts.append(f"{d.OBSIDIAN_DATE_MARK[name]} {values[name]}")
    parts.extend(f"#{t}" for t in values.get("tags") or [])
    if status == "done" and conv.get("obsidian_done_dates") and values.get("done_on"):
        parts.append(f"✅ {values['done_on']}")
    return "".join(f" {p}" for p in parts)


def priority_mark(priority: str, conv: dict[str, Any]) -> str:
    if conv.get("obsidian") or priority == "low":
        return d.OBSIDIAN_PRIORITY_MARK.get(priority, "")
    return {"high": "🔥", "critical": "🔥🔥"}.get(priority, "")


def task_line(values: dict[str, Any], title: str, conv: dict[str, Any], indent: str, bullet: str) -> str:
    status = values.get("status", "planned")
    if conv.get("logseq"):
        priority = values.get("priority", "medium")
        prio = {"high": " [#A]", "critical": " [#A]", "low": " [#C]"}.get(priority, "")
        fire = " 🔥🔥" if priority == "critical" else ""  # Logseq has no priority above A
        title = protect_title(title, "task")
        return f"{indent}{bullet} {logseq_keyword(status, conv)}{prio} {title}{fire}{task_marks(values, conv, 'keyword')}"
    return f"{indent}{bullet} [{box_mark(status, conv)}] {protect_title(title, 'task')}{task_marks(values, conv, 'box')}"


def logseq_date_lines(values: dict[str, Any], indent: str) -> list[str]:
    out = []
    for name, key in (("scheduled_date", "SCHEDULED"), ("due_date", "DEADLINE")):
        if values.get(name):
            out.append(f"{indent}{key}: <{values[name]} {d.weekday_abbrev(values[name])}>")
    return out


def outcome_bullet(kind: str, ref: str, text: str, lang: str, prefix: str = "- ") -> str:
    tail = f" — {text}" if text else ""
    return f"{prefix}{OUTCOME_WORDS[lang][kind]}: {ref}{tail}"


def note_bullet(date: str | None, text: str, lang: str, indent: str, bullet: str = "-") -> list[str]:
    label = d.NOTE_WRITE_LABEL[lang]
    when = f" {date}" if date else ""
    lines = text.split("\n") if text else [""]
    out = [f"{indent}{bullet} **{label}**{when}: {escape_line(lines[0]) if lines[0] else ''}".rstrip()]
    pad = indent + " " * (len(bullet) + 1)
    out.extend(pad + escape_line(line) if line.strip() else "" for line in lines[1:])
    return out
