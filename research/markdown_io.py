"""Markdown backlogs in and out.

The conventions are those researchers already write (Chinese or English keys):

    ## Direction                        headings are items, nested by level
    **优先级** / **Priority**: 🔥 高     priority by 🔥 count or word
    **预计时间** / **Estimate**: 2-3天   estimate, parsed into min/max days
    **关联领域** / **Area**: A、B        tags
    **状态** / **Status**: 🚀 进行中      status marker or word
    - [ ] **Task**                      checklists (nested) are child tasks
    ### 2025-11-08                      dated sections are notes
    | 话题 | 创新性 | ... |             a priority matrix sets scores and status

Everything else under a heading (questions, ideas, prose) stays in its body.
Parsing builds a small document tree first, so a malformed file is reported
with its line number before anything touches the database.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from research.errors import ResearchError
from research.vocab import (
    PRIORITY_FIRE,
    STATUS_EMOJI,
    STATUS_LOOKUP,
    normalize_priority,
    normalize_status,
    priority_label,
    split_tags,
    status_label,
)

# ---------------------------------------------------------------------------
# The parsed document


@dataclass
class NoteNode:
    date: str | None
    title: str | None
    text: str
    line: int


@dataclass
class OutcomeNode:
    kind: str
    ref: str
    text: str


@dataclass
class Node:
    title: str
    line: int
    kind: str = "item"  # "item" (a heading) or "task" (a checklist entry)
    status: str | None = None
    priority: str | None = None
    estimate: str | None = None
    tags: list[str] | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    body_lines: list[str] = field(default_factory=list)
    style: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    children: list[Node] = field(default_factory=list)
    notes: list[NoteNode] = field(default_factory=list)
    outcomes: list[OutcomeNode] = field(default_factory=list)

    @property
    def body(self) -> str:
        return "\n".join(self.body_lines).strip("\n")


@dataclass
class Document:
    title: str | None = None
    preamble: str = ""
    lang: str = "en"
    items: list[Node] = field(default_factory=list)
    notes: list[NoteNode] = field(default_factory=list)
    matrix_rows: list[dict[str, Any]] = field(default_factory=list)
    layout: dict[str, Any] = field(default_factory=dict)

    def walk(self):
        def rec(nodes, parents):
            for node in nodes:
                yield node, parents
                yield from rec(node.children, (*parents, node))

        yield from rec(self.items, ())


# ---------------------------------------------------------------------------
# Vocabulary of the metadata keys

META_KEYS = {
    "priority": ["优先级", "priority"],
    "estimate": ["预计时间", "预计", "估计时间", "estimate", "estimated time", "effort"],
    "tags": ["关联领域", "领域", "标签", "area", "areas", "tags", "tag"],
    "status": ["状态", "当前状态", "status"],
}
KEY_LOOKUP = {alias: name for name, aliases in META_KEYS.items() for alias in aliases}
OUTCOME_LABELS = ["成果", "成果记录", "outcomes", "outcome"]
NOTES_SECTION = re.compile(r"^\W*\s*(研究笔记|笔记|日志|research notes|notes|journal|log)\s*$", re.IGNORECASE)
MATRIX_COLUMNS = {
    "topic": ["话题", "主题", "方向", "topic", "direction", "item"],
    "innovation": ["创新性", "innovation"],
    "practicality": ["实用性", "practicality", "usefulness"],
    "feasibility": ["可行性", "feasibility"],
    "score": ["综合评分", "综合", "score", "composite", "overall"],
    "status": ["当前状态", "状态", "status"],
}
OUTCOME_KIND_WORDS = {
    "zh": {"document": "📄 文档", "code": "💻 代码", "application": "🎯 应用", "related": "🔗 关联"},
    "en": {"document": "📄 document", "code": "💻 code", "application": "🎯 application", "related": "🔗 related"},
}
KEY_WORDS = {
    "zh": {"priority": "优先级", "estimate": "预计时间", "tags": "关联领域", "status": "状态", "outcomes": "成果"},
    "en": {"priority": "Priority", "estimate": "Estimate", "tags": "Area", "status": "Status", "outcomes": "Outcomes"},
}
MATRIX_HEADER = {
    "zh": ["话题", "创新性", "实用性", "可行性", "综合评分", "当前状态"],
    "en": ["Topic", "Innovation", "Practicality", "Feasibility", "Score", "Status"],
}

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
CHECKBOX = re.compile(r"^(\s*)[-*+]\s+\[([ xX])\]\s*(.*)$")
BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")
META_LINE = re.compile(r"^\s*(?:[-*+]\s+)?\*\*([^*]+?)\*\*\s*[:：]\s*(.*)$")
LABEL_LINE = re.compile(r"^\s*\*\*([^*]+?)\*\*\s*[:：]\s*$")
RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
DATE_HEADING = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})\b\s*(.*)$")
TIMESTAMP_LINE = re.compile(r"^[*_]*\s*(\d{4}-\d{2}-\d{2})(?:[ T](\d{2}:\d{2}(?::\d{2})?))?\s*[*_]*$")
NUMBERED = re.compile(r"^(\d+)[.、)]\s+(.*)$")
CJK = re.compile(r"[\u4e00-\u9fff]")
TRAILING_STATUS = {"🚀": "active", "⏸️": "paused", "⏸": "paused", "📝": "writing-up", "❌": "dropped", "✅": "done"}


class MarkdownError(ResearchError):
    pass


def _fail(source: str, line: int, message: str):
    raise MarkdownError(f"{source}:{line}: {message}")


def parse_markdown_file(path: Path) -> Document:
    path = Path(path)
    if not path.exists():
        raise ResearchError(f"no such file: {path}")
    if path.is_dir():
        raise ResearchError(f"{path} is a directory, not a Markdown file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ResearchError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_markdown(text, source=str(path))


def _parse_date(source: str, line: int, y: str, m: str, d: str) -> str:
    try:
        return date(int(y), int(m), int(d)).isoformat()
    except ValueError:
        _fail(source, line, f"bad date {y}-{m}-{d} in heading")


def parse_markdown(text: str, source: str = "<markdown>") -> Document:
    lines = text.splitlines()
    doc = Document()
    h1 = [i for i, line in enumerate(lines) if HEADING.match(line) and HEADING.match(line).group(1) == "#" and not _in_fence(lines, i)]
    doc_title_line = h1[0] if len(h1) == 1 else None

    # Stack of (level, target) where target is a Node, "notes", "matrix" or a NoteNode.
    stack: list[tuple[int, Any]] = []
    section: Any = "preamble"
    preamble: list[str] = []
    task_stack: list[tuple[int, Node]] = []  # open checklist entries by indent
    in_fence = False
    first_content = True
    top_count = 0
    zh_votes = en_votes = 0
    matrix_lines: list[tuple[int, str]] = []

    def current_item() -> Node | None:
        for _level, target in reversed(stack):
            if isinstance(target, Node):
                return target
        return None

    def in_notes_section() -> bool:
        return any(target == "notes" for _level, target in stack)

    for index, raw in enumerate(lines):
        lineno = index + 1
        line = raw.rstrip()
        if FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence or FENCE.match(line) else HEADING.match(line)
        if heading:
            level, title = len(heading.group(1)), heading.group(2).strip()
            task_stack.clear()
            first_content = True
            if index == doc_title_line:
                doc.title = title
                section = "preamble"
                continue
            while stack and stack[-1][0] >= level:
                stack.pop()
            dated = DATE_HEADING.match(title)
            if dated:
                note = NoteNode(_parse_date(source, lineno, *dated.groups()[:3]), dated.group(4) or None, "", lineno)
                owner = None if in_notes_section() else current_item()
                (owner.notes if owner else doc.notes).append(note)
                stack.append((level, note))
                section = note
                continue
            if in_notes_section():
                note = NoteNode(None, title, "", lineno)
                doc.notes.append(note)
                stack.append((level, note))
                section = note
                continue
            if not stack and NOTES_SECTION.match(title):
                doc.layout["notes"] = {"heading": title, "after": top_count}
                stack.append((level, "notes"))
                section = "notes"
                continue
            if not stack and _section_has_matrix(lines, index):
                doc.layout["matrix"] = {"heading": title, "after": top_count}
                stack.append((level, "matrix"))
                section = "matrix"
                continue
            if title == "":
                _fail(source, lineno, "empty heading")
            node = Node(title=title, line=lineno)
            numbered = NUMBERED.match(title)
            if numbered:
                node.title = numbered.group(2).strip()
                node.style["numbered"] = True
            parent = current_item()
            if parent is None:
                doc.items.append(node)
                top_count += 1
            else:
                parent.children.append(node)
            stack.append((level, node))
            section = node
            continue

        # Content lines.
        if section == "preamble":
            if not RULE.match(line):
                preamble.append(line)
            continue
        if section == "notes":
            if line.strip() and not RULE.match(line):
                doc.notes.append(NoteNode(None, None, line, lineno))
            continue
        if section == "matrix":
            matrix_lines.append((lineno, line))
            continue
        if isinstance(section, NoteNode):
            section.text += line + "\n"
            continue
        node: Node = section
        if in_fence:
            node.body_lines.append(line)
            continue
        if first_content and line.strip():
            first_content = False
            stamp = TIMESTAMP_LINE.match(line.strip())
            if stamp:
                node.created = stamp.group(1) + (f"T{stamp.group(2)}" if stamp.group(2) else "")
                continue
        if RULE.match(line):
            continue
        checkbox = CHECKBOX.match(line)
        if checkbox:
            indent = len(checkbox.group(1).expandtabs(4))
            task = _task_from_checkbox(checkbox.group(2), checkbox.group(3), lineno, source)
            while task_stack and task_stack[-1][0] >= indent:
                task_stack.pop()
            if task_stack:
                task_stack[-1][1].children.append(task)
            else:
                if "tasks_at" not in node.style:
                    node.style["tasks_at"] = len(node.body_lines)
                node.children.append(task)
            task_stack.append((indent, task))
            continue
        if task_stack and line.strip():
            bullet_indent = len(line) - len(line.lstrip())
            if bullet_indent > task_stack[-1][0]:
                # A non-checkbox line indented under a task belongs to its body.
                owner = task_stack[-1][1]
                owner.body_lines.append(line.strip())
                continue
            task_stack.clear()
        if not line.strip() and task_stack:
            continue  # blank lines between checklist entries
        meta = META_LINE.match(line)
        if meta and not LABEL_LINE.match(line):
            key = meta.group(1).strip().lower()
            value = meta.group(2).strip()
            name = KEY_LOOKUP.get(key)
            if name:
                zh_votes += bool(CJK.search(key))
                en_votes += not CJK.search(key)
                _apply_meta(node, name, value, lineno, source)
                continue
        label = LABEL_LINE.match(line)
        if label and label.group(1).strip().lower() in OUTCOME_LABELS and _next_is_outcome_list(lines, index):
            node.style["_collect_outcomes"] = True
            continue
        if node.style.get("_collect_outcomes"):
            bullet = BULLET.match(line)
            if bullet:
                node.outcomes.append(_parse_outcome(bullet.group(2), lineno, source))
                continue
            node.style.pop("_collect_outcomes")
        node.body_lines.append(line)

    if in_fence:
        _fail(source, len(lines), "unterminated code fence")
    doc.preamble = "\n".join(preamble).strip("\n")
    doc.lang = "zh" if zh_votes > en_votes or (zh_votes == en_votes and CJK.search(text or "")) else "en"
    if matrix_lines:
        doc.matrix_rows = _parse_matrix(matrix_lines, source)
    for node, _parents in doc.walk():
        node.style.pop("_collect_outcomes", None)
        _finish_body(node)
    for note in _all_notes(doc):
        # A rule closing the section separates it from the next one; it is not note text.
        text_lines = note.text.strip("\n").splitlines()
        while text_lines and (not text_lines[-1].strip() or RULE.match(text_lines[-1])):
            text_lines.pop()
        note.text = "\n".join(text_lines)
    doc.notes = [n for n in doc.notes if n.text or n.title or n.date]
    _merge_loose_note_lines(doc)
    return doc


def _merge_loose_note_lines(doc: Document) -> None:
    """Loose lines right under the notes heading form one undated note."""
    merged: list[NoteNode] = []
    for note in doc.notes:
        if merged and note.date is None and note.title is None and merged[-1].date is None and merged[-1].title is None:
            merged[-1].text += "\n" + note.text
        else:
            merged.append(note)
    doc.notes = merged


def _all_notes(doc: Document):
    yield from doc.notes
    for node, _ in doc.walk():
        yield from node.notes


def _in_fence(lines: list[str], index: int) -> bool:
    inside = False
    for line in lines[:index]:
        if FENCE.match(line):
            inside = not inside
    return inside


def _section_has_matrix(lines: list[str], heading_index: int) -> bool:
    for line in lines[heading_index + 1 :]:
        if HEADING.match(line):
            return False
        if line.strip().startswith("|"):
            cells = [c.strip().lower() for c in line.strip().strip("|").split("|")]
            return sum(any(c == a.lower() for c in cells) for a in MATRIX_COLUMNS["innovation"] + MATRIX_COLUMNS["feasibility"]) >= 1
    return False


def _next_is_outcome_list(lines: list[str], index: int) -> bool:
    for line in lines[index + 1 :]:
        if line.strip():
            return bool(BULLET.match(line)) and not CHECKBOX.match(line)
    return False


def _apply_meta(node: Node, name: str, value: str, lineno: int, source: str) -> None:
    try:
        if name == "priority":
            node.priority = normalize_priority(value)
        elif name == "status":
            node.status = normalize_status(value)
        elif name == "estimate":
            node.estimate = value
        elif name == "tags":
            node.tags = split_tags(value)
    except ResearchError as exc:
        _fail(source, lineno, str(exc))


def _task_from_checkbox(mark: str, text: str, lineno: int, source: str) -> Node:
    task = Node(title="", line=lineno, kind="task", status="done" if mark in "xX" else None)
    text = text.strip()
    # Trailing markers: status emoji, 🔥 priority, #tags.
    while True:
        match = re.search(r"\s+(#[\w\-]+|🔥🔥|🔥|🚀|⏸️|⏸|📝|❌|✅)$", text)
        if not match:
            break
        token = match.group(1)
        if token.startswith("#"):
            task.tags = [token[1:], *(task.tags or [])]
        elif token.startswith("🔥"):
            task.priority = "critical" if token == "🔥🔥" else "high"
        elif task.status != "done" or token == "✅":
            task.status = TRAILING_STATUS[token] if token != "✅" else "done"
        text = text[: match.start()]
    bold = re.match(r"^\*\*(.+?)\*\*(.*)$", text)
    if bold:
        task.title = bold.group(1).strip()
        task.style["bold"] = True
        if bold.group(2).strip():
            task.style["suffix"] = bold.group(2).rstrip()
    else:
        task.title = text
    if not task.title:
        _fail(source, lineno, "checklist entry without text")
    return task


def _parse_outcome(text: str, lineno: int, source: str) -> OutcomeNode:
    from research.backlog import OUTCOME_LOOKUP

    match = re.match(r"^(?:(\S+)\s+)?\**([^:：*]+?)\**\s*[:：]\s*(.*)$", text.strip())
    if not match:
        _fail(source, lineno, f"outcome must look like '- KIND: REF — text', got {text!r}")
    words = [w for w in (match.group(1), match.group(2)) if w]
    kind = next((OUTCOME_LOOKUP[w.lower()] for w in reversed(words) if w.lower() in OUTCOME_LOOKUP), None)
    if kind is None:
        _fail(source, lineno, f"unknown outcome kind in {text!r}")
    ref, _, note = match.group(3).partition(" — ")
    return OutcomeNode(kind, ref.strip(), note.strip())


def _finish_body(node: Node) -> None:
    lines = node.body_lines
    at = node.style.get("tasks_at")
    # Trim blank lines at both ends, keeping the checklist anchor in step.
    while lines and not lines[0].strip():
        lines.pop(0)
        if at is not None:
            at = max(at - 1, 0)
    while lines and not lines[-1].strip():
        lines.pop()
    if at is not None:
        at = min(at, len(lines))
        while at > 0 and not lines[at - 1].strip():
            lines.pop(at - 1)
            at -= 1
        while at < len(lines) and not lines[at].strip():
            lines.pop(at)
        if at >= len(lines):
            node.style.pop("tasks_at")
        else:
            node.style["tasks_at"] = at
    # Collapse runs of blank lines.
    out: list[str] = []
    for line in lines:
        if not line.strip() and out and not out[-1].strip():
            if at is not None and len(out) < at:
                at -= 1
                node.style["tasks_at"] = at
            continue
        out.append(line)
    node.body_lines = out


def _count_stars(cell: str) -> int | None:
    stars = cell.count("⭐") + cell.count("★")
    if stars:
        return stars
    digits = re.search(r"\d+(\.\d+)?", cell)
    return round(float(digits.group())) if digits else None


def _parse_matrix(matrix_lines: list[tuple[int, str]], source: str) -> list[dict[str, Any]]:
    rows = [(n, line) for n, line in matrix_lines if line.strip().startswith("|")]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0][1].strip().strip("|").split("|")]
    columns: dict[str, int] = {}
    for name, aliases in MATRIX_COLUMNS.items():
        for i, cell in enumerate(header):
            if cell in [a.lower() for a in aliases] and name not in columns and i not in columns.values():
                columns[name] = i
                break
    if "topic" not in columns:
        columns["topic"] = 0
    out = []
    for lineno, line in rows[1:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if all(re.fullmatch(r":?-+:?", c) for c in cells if c):
            continue
        if len(cells) != len(header):
            _fail(source, lineno, f"matrix row has {len(cells)} cells, the header has {len(header)}")
        row: dict[str, Any] = {"topic": cells[columns["topic"]], "line": lineno}
        for name in ("innovation", "practicality", "feasibility"):
            if name in columns:
                value = _count_stars(cells[columns[name]])
                if value is not None and not 1 <= value <= 5:
                    _fail(source, lineno, f"{name} must be 1-5 stars, got {value}")
                row[name] = value
        if "score" in columns:
            cell = cells[columns["score"]]
            fires = cell.count("🔥")
            if fires:
                row["score"] = float(fires)
            else:
                number = re.search(r"\d+(\.\d+)?", cell)
                row["score"] = float(number.group()) if number else None
        if "status" in columns and cells[columns["status"]]:
            try:
                row["status"] = normalize_status(cells[columns["status"]])
            except ResearchError as exc:
                _fail(source, lineno, str(exc))
        out.append(row)
    return out


# ---------------------------------------------------------------------------
# Import into the database


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0
    notes_added: int = 0
    notes_changed: int = 0
    outcomes_added: int = 0
    matrix_matched: list[tuple[str, str]] = field(default_factory=list)
    matrix_unmatched: list[str] = field(default_factory=list)
    not_in_file: int = 0

    def summary(self) -> str:
        parts = [
            f"{len(self.added)} added",
            f"{len(self.changed)} changed",
            f"{self.unchanged} unchanged",
            f"{self.notes_added} note(s) added",
        ]
        if self.notes_changed:
            parts.append(f"{self.notes_changed} note(s) changed")
        if self.outcomes_added:
            parts.append(f"{self.outcomes_added} outcome(s) added")
        if self.not_in_file:
            parts.append(f"{self.not_in_file} existing item(s) not in the file left alone")
        return ", ".join(parts)

    def details(self) -> list[str]:
        lines = [f"changed: {p}" for p in self.changed[:20]]
        if len(self.changed) > 20:
            lines.append(f"... and {len(self.changed) - 20} more changed")
        for topic, title in self.matrix_matched:
            if topic != title:
                lines.append(f"matrix row “{topic}” → “{title}”")
        lines.extend(f"matrix row “{t}” matched no item (ignored)" for t in self.matrix_unmatched)
        return lines


def _path_keys(titles_by_parent: dict[Any, list[tuple[str, Any]]]) -> dict[Any, tuple]:
    """Disambiguate same-titled siblings by their occurrence index."""
    keys = {}
    for _parent, entries in titles_by_parent.items():
        seen: dict[str, int] = defaultdict(int)
        for title, obj in entries:
            keys[id(obj)] = (title, seen[title])
            seen[title] += 1
    return keys


def import_markdown(session, log, doc: Document) -> ImportReport:
    """Create or update items from a parsed document, in the caller's transaction."""
    from sqlmodel import select

    from research import clock
    from research.backlog import (
        Backlog,
        ItemFields,
        add_item,
        add_note,
        add_outcome,
        get_meta,
        set_meta,
    )
    from research.models import Note, Outcome
    from research.vocab import composite_score

    report = ImportReport()
    backlog = Backlog.load(session)

    # Existing items keyed by their path of (title, occurrence) pairs.
    existing_keys: dict[tuple, Any] = {}

    def index_existing(parent_id, prefix):
        occurrences: dict[str, int] = defaultdict(int)
        for item in backlog.children.get(parent_id, []):
            key = (*prefix, (item.title, occurrences[item.title]))
            occurrences[item.title] += 1
            existing_keys[key] = item
            index_existing(item.id, key)

    index_existing(None, ())
    matched_ids: set[int] = set()

    _apply_matrix(doc, report)

    def sync(nodes: list[Node], parent, prefix: tuple):
        occurrences: dict[str, int] = defaultdict(int)
        for position, node in enumerate(nodes):
            key = (*prefix, (node.title, occurrences[node.title]))
            occurrences[node.title] += 1
            item = existing_keys.get(key)
            scores = {k: node.scores.get(k) for k in ("innovation", "practicality", "feasibility")}
            score = node.scores.get("score")
            if score is None and any(v is not None for v in scores.values()):
                score = composite_score(**scores)
            style = {k: v for k, v in node.style.items() if not k.startswith("_")}
            values = {
                "kind": node.kind,
                "body": node.body,
                "status": node.status or "planned",
                "priority": node.priority or "medium",
                "estimate": node.estimate,
                "tags": node.tags or [],
                "style": style,
                "position": position,
                **scores,
                "score": score,
            }
            if item is None:
                fields = ItemFields(
                    title=node.title, body=values["body"], status=values["status"], priority=values["priority"],
                    estimate=node.estimate, tags=values["tags"], kind=node.kind,
                    extra={k: values[k] for k in ("style", "innovation", "practicality", "feasibility", "score")},
                )
                created = _timestamp(node.created)
                item = add_item(session, log, fields, parent=parent, position=position, created_at=created)
                report.added.append(" › ".join(t for t, _ in key))
            else:
                from research.backlog import _status_timestamps
                from research.vocab import parse_estimate

                changes = dict(values)
                changes["estimate_min_days"], changes["estimate_max_days"] = parse_estimate(node.estimate)
                if changes["status"] != item.status:
                    changes.update(_status_timestamps(item, changes["status"]))
                action = "status" if set(k for k in changes if getattr(item, k) != changes[k]) <= {"status", "started_at", "done_at"} else "edited"
                if log.updated(item, changes, action=action):
                    report.changed.append(" › ".join(t for t, _ in key))
                else:
                    report.unchanged += 1
            matched_ids.add(item.id)
            _sync_notes(session, log, item, node.notes, report, Note, add_note)
            _sync_outcomes(session, log, item, node.outcomes, report, Outcome, add_outcome, select)
            sync(node.children, item, key)

    sync(doc.items, None, ())
    _sync_notes(session, log, None, doc.notes, report, Note, add_note)
    report.not_in_file = len([i for i in backlog.items if i.id not in matched_ids])

    layout = json.loads(get_meta(session, "layout", "{}") or "{}")
    layout.update(doc.layout)
    if doc.title:
        layout["title"] = doc.title
    if doc.preamble:
        layout["preamble"] = doc.preamble
    layout["lang"] = doc.lang
    set_meta(session, "layout", json.dumps(layout, ensure_ascii=False))
    _ = clock
    return report


def _timestamp(created: str | None) -> str | None:
    if not created:
        return None
    from datetime import datetime

    from research.clock import UTC

    value = datetime.fromisoformat(created)
    if value.tzinfo is None:
        value = value.astimezone()
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _sync_notes(session, log, item, notes: list[NoteNode], report: ImportReport, Note, add_note) -> None:
    from sqlmodel import select

    query = select(Note).where(Note.item_id == item.id) if item else select(Note).where(Note.item_id.is_(None))
    existing: dict[tuple, list] = defaultdict(list)
    for row in session.exec(query.order_by(Note.id)):
        existing[(row.date, row.title)].append(row)
    used: dict[tuple, int] = defaultdict(int)
    for note in notes:
        key = (note.date, note.title)
        rows = existing.get(key, [])
        nth = used[key]
        used[key] += 1
        if nth < len(rows):
            if rows[nth].text != note.text:
                log.updated(rows[nth], {"text": note.text}, action="note-edited")
                report.notes_changed += 1
            continue
        add_note(session, log, item, note.text, date=note.date, title=note.title)
        if note.date is None:
            # add_note fills today's date when none is given; an undated section stays undated.
            last = session.exec(select(Note).order_by(Note.id.desc())).first()
            log.updated(last, {"date": None}, action="note-edited")
        report.notes_added += 1


def _sync_outcomes(session, log, item, outcomes: list[OutcomeNode], report, Outcome, add_outcome, select) -> None:
    existing = {(o.kind, o.ref): o for o in session.exec(select(Outcome).where(Outcome.item_id == item.id))}
    for outcome in outcomes:
        row = existing.get((outcome.kind, outcome.ref))
        if row is None:
            add_outcome(session, log, item, outcome.kind, outcome.ref, outcome.text)
            report.outcomes_added += 1
        elif row.text != outcome.text:
            log.updated(row, {"text": outcome.text}, action="outcome")


def _bigrams(text: str) -> set[str]:
    text = re.sub(r"[\W_]+", "", text.lower())
    return {text[i : i + 2] for i in range(len(text) - 1)} or ({text} if text else set())


def _apply_matrix(doc: Document, report: ImportReport) -> None:
    """Attach each matrix row to the heading item it names (exact, contained, then closest)."""
    if not doc.matrix_rows:
        return
    candidates = [node for node, _ in doc.walk() if node.kind == "item"]
    taken: set[int] = set()
    for row in doc.matrix_rows:
        topic = row["topic"].strip()
        best, best_score = None, 0.0
        for node in candidates:
            if id(node) in taken:
                continue
            title = node.title
            if title == topic:
                score = 2.0
            elif topic and (topic in title or title in topic):
                score = 1.5
            else:
                grams = _bigrams(topic)
                score = len(grams & _bigrams(title)) / len(grams) if grams else 0.0
            if score > best_score:
                best, best_score = node, score
        if best is None or best_score < 0.5:
            report.matrix_unmatched.append(topic)
            continue
        taken.add(id(best))
        best.style["matrix_order"] = len(report.matrix_matched)
        if topic != best.title:
            best.style["matrix_label"] = topic
        for name in ("innovation", "practicality", "feasibility", "score"):
            if row.get(name) is not None:
                best.scores[name] = row[name]
        if row.get("status"):
            best.status = row["status"]
        report.matrix_matched.append((topic, best.title))


# ---------------------------------------------------------------------------
# Export


def export_markdown(session) -> str:
    from sqlmodel import select

    from research.backlog import Backlog, get_meta
    from research.models import Note, Outcome

    backlog = Backlog.load_rows(session)
    layout = json.loads(get_meta(session, "layout", "{}") or "{}")
    lang = layout.get("lang") or ("zh" if any(CJK.search(i.title) for i in backlog.items[:50]) else "en")
    keys = KEY_WORDS[lang]
    notes_by_item: dict[Any, list] = defaultdict(list)
    for note in session.exec(select(Note).order_by(Note.id)):
        notes_by_item[note.item_id].append(note)
    outcomes_by_item: dict[int, list] = defaultdict(list)
    for outcome in session.exec(select(Outcome).order_by(Outcome.id)):
        outcomes_by_item[outcome.item_id].append(outcome)

    out: list[str] = []
    # Always write a title: a lone top-level heading would otherwise read back as one.
    title = layout.get("title") or ("研究待办" if lang == "zh" else "Research backlog")
    base = 2
    out += [f"# {title}", ""]
    if layout.get("preamble"):
        out += [layout["preamble"], ""]

    def emit_tasks(parent_id: int, indent: int) -> None:
        for task in backlog.children.get(parent_id, []):
            if task.kind != "task":
                continue  # child headings are written after the checklist
            mark = "x" if task.status == "done" else " "
            text = f"**{task.title}**{task.style.get('suffix', '')}" if task.style.get("bold") else task.title
            suffix = ""
            if task.status not in ("done", "planned"):
                suffix += " " + ("⏸️" if task.status == "paused" else STATUS_EMOJI[task.status])
            if PRIORITY_FIRE.get(task.priority):
                suffix += " " + PRIORITY_FIRE[task.priority]
            suffix += "".join(f" #{t}" for t in task.tags)
            out.append(f"{'  ' * indent}- [{mark}] {text}{suffix}")
            for line in task.body.splitlines():
                out.append(f"{'  ' * (indent + 1)}- {line.lstrip('-* ').rstrip()}" if line.strip() else "")
            emit_tasks(task.id, indent + 1)
            if indent == 0 and backlog.children.get(task.id):
                out.append("")

    def emit_item(item, depth: int, number: int | None) -> None:
        level = min(base + depth, 6)
        heading = f"{number}. {item.title}" if number is not None else item.title
        out.append(f"{'#' * level} {heading}")
        meta = []
        if item.priority != "medium":
            meta.append(f"**{keys['priority']}**: {priority_label(item.priority, lang)}")
        if item.estimate:
            meta.append(f"**{keys['estimate']}**: {item.estimate}")
        if item.tags:
            meta.append(f"**{keys['tags']}**: {('、' if lang == 'zh' else ', ').join(item.tags)}")
        if item.status != "planned":
            meta.append(f"**{keys['status']}**: {status_label(item.status, lang)}")
        for line in meta:
            out.append(line)
        body = item.body.splitlines()
        tasks = [c for c in backlog.children.get(item.id, []) if c.kind == "task"]
        at = item.style.get("tasks_at")
        at = len(body) if at is None or at > len(body) else at
        if body[:at] or tasks or body[at:]:
            out.append("")
        if body[:at]:
            out.extend(body[:at])
        if tasks:
            if body[:at]:
                pass
            emit_tasks(item.id, 0)
            while out and not out[-1].strip():
                out.pop()
        if body[at:]:
            out.append("")
            out.extend(body[at:])
        outcomes = outcomes_by_item.get(item.id, [])
        if outcomes:
            out.extend(["", f"**{keys['outcomes']}**:"])
            for o in outcomes:
                text = f" — {o.text}" if o.text else ""
                out.append(f"- {OUTCOME_KIND_WORDS[lang][o.kind]}: {o.ref}{text}")
        out.append("")
        for note in notes_by_item.get(item.id, []):
            emit_note(note, min(level + 1, 6))
        number_next = 1
        for child in backlog.children.get(item.id, []):
            if child.kind == "task":
                continue
            if child.style.get("numbered"):
                emit_item(child, depth + 1, number_next)
                number_next += 1
            else:
                emit_item(child, depth + 1, None)

    def emit_note(note, level: int) -> None:
        heading = " ".join(x for x in (note.date, note.title) if x)
        if heading:
            out.append(f"{'#' * level} {heading}")
        if note.text:
            out.append(note.text)
        out.append("")

    def emit_matrix() -> None:
        scored = [i for i, _ in backlog.walk() if i.kind == "item" and (i.score is not None or i.innovation)]
        scored.sort(key=lambda i: i.style.get("matrix_order", len(scored)))
        if not scored:
            return
        spec = layout.get("matrix", {})
        out.append(f"{'#' * base} {spec.get('heading', '📊 研究优先级矩阵' if lang == 'zh' else 'Priority matrix')}")
        out.append("")
        header = MATRIX_HEADER[lang]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join("-" * (len(h) * 2 + 2) if CJK.search(h) else "-" * (len(h) + 2) for h in header) + "|")
        for item in scored:
            cells = [
                item.style.get("matrix_label", item.title),
                "⭐" * (item.innovation or 0),
                "⭐" * (item.practicality or 0),
                "⭐" * (item.feasibility or 0),
                _composite_cell(item.score),
                status_label(item.status, lang),
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")

    def emit_notes_section() -> None:
        notes = notes_by_item.get(None, [])
        spec = layout.get("notes")
        if not notes and not spec:
            return
        heading = (spec or {}).get("heading") or ("📝 研究笔记" if lang == "zh" else "Research notes")
        out.append(f"{'#' * base} {heading}")
        out.append("")
        for note in notes:
            emit_note(note, min(base + 1, 6))

    tops = backlog.children.get(None, [])
    matrix_after = min(layout.get("matrix", {}).get("after", len(tops)), len(tops))
    notes_after = min((layout.get("notes") or {}).get("after", len(tops)), len(tops))
    numbering = {"next": 1}

    def emit_top(item) -> None:
        if item.style.get("numbered"):
            emit_item(item, 0, numbering["next"])
            numbering["next"] += 1
        else:
            emit_item(item, 0, None)

    blocks = []
    for index in range(len(tops) + 1):
        if index == matrix_after:
            blocks.append(emit_matrix)
        if index == notes_after:
            blocks.append(emit_notes_section)
        if index < len(tops):
            blocks.append(lambda item=tops[index]: emit_top(item))
    wrote_block = False
    for block in blocks:
        mark = len(out)
        block()
        if len(out) > mark:
            if title and wrote_block:
                out[mark:mark] = ["---", ""]
            wrote_block = True
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"
    return text


def _composite_cell(score: float | None) -> str:
    if score is None:
        return ""
    # Whole scores keep the 🔥 notation; others are written as numbers so they survive a round trip.
    return "🔥" * int(score) if float(score).is_integer() else f"{score:g}"


def export_json(session) -> str:
    from sqlmodel import select

    from research.backlog import Backlog, get_meta, item_summary
    from research.models import Note, Outcome

    backlog = Backlog.load_rows(session)
    items = []
    for item, _depth in backlog.walk():
        data = item_summary(item)
        data["body"] = item.body
        data["style"] = item.style
        items.append(data)
    payload = {
        "format": "research-backlog",
        "version": 1,
        "layout": json.loads(get_meta(session, "layout", "{}") or "{}"),
        "items": items,
        "notes": [n.model_dump() for n in session.exec(select(Note).order_by(Note.id))],
        "outcomes": [o.model_dump() for o in session.exec(select(Outcome).order_by(Outcome.id))],
    }
    return json.dumps(payload, ensure_ascii=False, indent=2) + "\n"


_ = STATUS_LOOKUP
