"""Planning the edits that make a document's text say what the backlog says.

Given a text, what is anchored in it (each item, note and outcome with the spans it was
read from) and the backlog's current rows, ``plan_text`` returns the new text:

- a field whose value changed is rewritten in its own carrier (a checkbox, a status
  emoji, a labelled line, a matrix cell...), or added as a new line or mark when the
  text had none;
- a changed body is diffed line by line, so untouched lines keep their bytes;
- a deleted item's lines go; a moved one goes from its old place and is written anew
  under its new parent;
- new items, tasks, notes and outcomes are written at the end of their parent's block,
  in the document's conventions.

Nothing else changes: every line not named by an edit is copied as it was.

Why one module of this size: each kind of carrier (box, emoji, label, matrix cell, Obsidian
signifier, Logseq keyword) has its writer here beside the others, and they share one edit list
and one ranking of insertion points; split apart, each would need the whole planner's state.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from research.backlog.markdown import render as r
from research.backlog.markdown.model import FIELDS, ParsedNode, ParsedNote, ParsedOutcome, Slot
from research.backlog.markdown.source import Edits, SourceLines

# Insertion order where several things go before the same line.
_META, _BODY, _TASK, _ANNOTATION, _OUTCOME, _NOTE, _ITEM, _ROW, _SECTION = range(9)


@dataclass
class Base:
    """A text and what is anchored in it."""

    source: SourceLines
    conventions: dict[str, Any]
    layout: dict[str, Any]
    nodes: dict[int, ParsedNode] = field(default_factory=dict)  # item id -> node (form["base_parent"] set)
    notes: dict[int, tuple[ParsedNote, int | None]] = field(default_factory=dict)  # note id -> (note, item id)
    outcomes: dict[int, tuple[ParsedOutcome, int]] = field(default_factory=dict)


@dataclass
class State:
    """The backlog's rows the document may show (ORM rows or read-only records)."""

    document_id: int | None
    main: bool
    items: dict[int, Any]  # every item of the document, and every item anchored in it
    children: dict[int | None, list[Any]]  # the document's items by parent, in order
    notes: dict[int | None, list[Any]]  # by item id (None: the backlog's own notes, for the main document)
    outcomes: dict[int, list[Any]]
    today: str = field(default_factory=lambda: date.today().isoformat())


def item_value(item: Any, name: str) -> Any:
    value = getattr(item, name)
    if name == "tags":
        return list(value or [])
    if name == "body":
        return value or ""
    return value


def plan_text(base: Base, state: State) -> str:
    return _Planner(base, state).run()


class _Planner:
    def __init__(self, base: Base, state: State):
        self.base, self.state = base, state
        self.conv = base.conventions
        self.lang = self.conv.get("lang", "en")
        self.edits = Edits(base.source)
        self.lines = base.source.lines
        self.kept: set[int] = set()
        self.anchored_notes = {nid for nid in base.notes}
        self.anchored_outcomes = {oid for oid in base.outcomes}
        self.notes_section_written = False  # a document without one gets one for its first new note

    # ------------------------------------------------------------------

    def run(self) -> str:
        self._decide_kept()
        self._deletions()
        for item_id in self.kept:
            self._fields(self.base.nodes[item_id], self.state.items[item_id])
        self._notes_and_outcomes()
        self._new_items()
        self._matrix_rows()
        return self.edits.apply()

    def _decide_kept(self) -> None:
        doc = self.state.document_id
        for item_id, node in sorted(self.base.nodes.items(), key=lambda kv: kv[1].line):
            item = self.state.items.get(item_id)
            parent = node.form.get("base_parent")
            if item is None or item.document_id != doc or item.parent_id != parent or item.kind != node.kind:
                continue
            # A parent not loaded is unchanged (only changed rows and their parents are loaded).
            if parent is None or parent in self.kept or parent not in self.base.nodes:
                self.kept.add(item_id)

    def _deletions(self) -> None:
        for item_id, node in self.base.nodes.items():
            if item_id in self.kept:
                continue
            for carrier in node.carriers:
                if carrier.form == "row":
                    self.edits.delete(carrier.line, carrier.line + 1)
            parent = node.form.get("base_parent")
            if parent is None or parent in self.kept or parent not in self.base.nodes:
                self._delete_lines(node.line, node.end)
        for note_id, (note, owner) in self.base.notes.items():
            if (owner is None or owner in self.kept) and note_id not in self._note_ids(owner):
                self._delete_lines(note.line, note.end)
        for outcome_id, (outcome, owner) in self.base.outcomes.items():
            if owner in self.kept and outcome_id not in {o.id for o in self.state.outcomes.get(owner, [])}:
                self._delete_lines(outcome.line, outcome.end)

    def _note_ids(self, owner: int | None) -> set[int]:
        return {n.id for n in self.state.notes.get(owner, [])}

    def _put(self, at: int, lines: list[str], order: tuple, block: bool = False, owner: ParsedNode | None = None) -> None:
        """Insert ``lines`` before line ``at``, on behalf of ``owner`` (None: the document).

        Where several go before the same line, list entries come first, deeper ones before
        shallower ones (so a sub-entry stays under its own parent); then blocks, those of
        deeper owners first (a new child before its parent's next sibling); then each kind
        in the order of ``order``."""
        first = next((line for line in lines if line.strip()), "")
        width = len(first.expandtabs(4)) - len(first.expandtabs(4).lstrip())
        depth = (len(owner.key) or owner.form.get("depth", 0)) if owner is not None else 0
        self.edits.insert(at, lines, (int(block), -width, -depth, *order), block=block)

    def _delete_lines(self, start: int, end: int) -> None:
        self.edits.delete(start, end)
        # Keep one blank line where a block went, not two.
        before = start - 1
        while before >= 0 and self.edits.deleted(before):
            before -= 1
        if (before < 0 or not self.lines[before].strip()) and end < len(self.lines) and not self.lines[end].strip():
            self.edits.delete(end, end + 1)
        # An ordered list that now starts at 2 cannot interrupt the paragraph above it
        # (CommonMark): it would run on into that paragraph. A blank line keeps it a list.
        if before >= 0 and self.lines[before].strip() and end < len(self.lines) \
                and _ORDERED_NOT_ONE.match(self.lines[end]):
            self._put(end, [""], (_META, -1))

    # ------------------------------------------------------------------ fields

    def _fields(self, node: ParsedNode, item: Any) -> None:
        for name in FIELDS:
            if name in ("kind",):
                continue
            new, old = item_value(item, name), node.value(name)
            if name == "score" and not node.carriers_of("score"):
                continue
            if new == old or (name == "tags" and list(new) == list(old or [])):
                continue
            getattr(self, f"_write_{name}", self._write_plain)(node, name, old, new, item)

    def _write_title(self, node, name, old, new, item) -> None:
        line, start, end = node.title_at
        if node.form.get("bold"):
            self.edits.replace(line, start, end, new)
        else:
            self.edits.replace(line, start, end, r.protect_title(new, node.kind))

    def _write_status(self, node, name, old, new, item) -> None:
        carriers = node.carriers_of("status")
        if node.kind == "task":
            head = next((c for c in carriers if c.form in ("box", "keyword")), None)
            form = head.form if head else "box"
            if head is not None:
                mark = r.box_mark(new, self.conv) if form == "box" else r.logseq_keyword(new, self.conv)
                self.edits.replace(head.line, head.start, head.end, mark)
            want = r.trailing_status(new, form, self.conv)
            trailing = next((c for c in carriers if c.form == "trailing"), None)
            if trailing is not None:
                self.edits.replace(trailing.line, trailing.start, trailing.end, f" {want}" if want else "")
            elif want:
                self._add_mark(node, want, after_title=True)
            self._done_date(node, old, new)
            return
        wrote = False
        for c in carriers:
            if c.form == "heading-emoji":
                trailing = node.form.get("emoji_trailing") and c.start > node.title_at[1]
                if new == "planned" and trailing:
                    self.edits.replace(c.line, c.start, c.end, "")
                else:
                    self.edits.replace(c.line, c.start, c.end, (" " if trailing else "") + r.STATUS_EMOJI[new])
                wrote = True
            elif c.form in ("label", "cell"):
                self.edits.replace(c.line, c.start, c.end, r.restyle("status", new, c.raw, self.conv))
                wrote = True
        if not wrote and new != "planned":
            self._add_label(node, "status", new)

    def _done_date(self, node: ParsedNode, old: str, new: str) -> None:
        if not self.conv.get("obsidian_done_dates"):
            return
        done = next((c for c in node.carriers if c.field == "done_on"), None)
        if new == "done" and done is None:
            at = node.form.get("marks_end", node.title_at[2])
            self.edits.replace(node.line, at, at, f" ✅ {self.state.today}")
        elif new != "done" and done is not None:
            self.edits.replace(done.line, done.start, done.end, "")

    def _write_priority(self, node, name, old, new, item) -> None:
        carriers = node.carriers_of("priority")
        for c in carriers:
            if c.form == "label":
                self.edits.replace(c.line, c.start, c.end, r.restyle("priority", new, c.raw, self.conv))
            elif c.form in ("trailing", "signifier"):
                mark = r.priority_mark(new, self.conv) if c.form == "trailing" else r.d.OBSIDIAN_PRIORITY_MARK.get(new, "")
                if c.form == "trailing" and new == "low":
                    mark = r.d.OBSIDIAN_PRIORITY_MARK["low"]
                self.edits.replace(c.line, c.start, c.end, f" {mark}" if mark else "")
            elif c.form == "logseq-priority":
                mark = {"critical": "[#A]", "high": "[#A]", "medium": "[#B]", "low": "[#C]"}[new]
                self.edits.replace(c.line, c.start, c.end, mark)
        forms = {c.form for c in carriers}
        if forms == {"logseq-priority"} and new == "critical":
            self._add_mark(node, "🔥🔥")  # Logseq has no priority above A
        if carriers or new == "medium":
            return
        if node.kind == "item":
            self._add_label(node, "priority", new)
        else:
            self._add_mark(node, r.priority_mark(new, self.conv))

    def _write_tags(self, node, name, old, new, item) -> None:
        carriers = node.carriers_of("tags")
        labels = [c for c in carriers if c.form == "label"]
        hashtags = [c for c in carriers if c.form == "hashtag"]
        if labels:
            for c in labels:
                if new:
                    self.edits.replace(c.line, c.start, c.end, r.value_text("tags", new, self.conv))
                else:
                    self._delete_lines(c.line, c.line + 1)
            return
        if node.kind == "task" and all(" " not in t and "#" not in t for t in new):
            text = "".join(f" #{t}" for t in new)
            if hashtags:
                first = min(hashtags, key=lambda c: c.start)
                for c in hashtags:
                    self.edits.replace(c.line, c.start, c.end, text if c is first else "")
            else:
                self._add_mark(node, text.strip())
            return
        for c in hashtags:
            self.edits.replace(c.line, c.start, c.end, "")
        if new:
            self._add_label(node, "tags", new)

    def _write_plain(self, node, name, old, new, item) -> None:
        """Estimate, dates and scores: a labelled line, a mark, a Logseq line or a matrix cell."""
        carriers = node.carriers_of(name)
        for c in carriers:
            if c.form == "label" or c.form == "property":
                if new is None:
                    self._delete_lines(c.line, c.line + 1)
                else:
                    self.edits.replace(c.line, c.start, c.end, r.value_text(name, new, self.conv))
            elif c.form == "cell":
                self.edits.replace(c.line, c.start, c.end, r.value_text(name, new, self.conv) if new is not None else "")
            elif c.form == "signifier":
                mark = r.d.OBSIDIAN_DATE_MARK.get(name, "")
                self.edits.replace(c.line, c.start, c.end, f" {mark} {new}" if new else "")
            elif c.form == "logseq-date":
                if new is None:
                    self._delete_lines(c.line, c.line + 1)
                else:
                    self.edits.replace(c.line, c.start, c.end, new)
                    weekday = next((w for w in node.carriers if w.form == "logseq-weekday" and w.line == c.line), None)
                    if weekday is not None:
                        self.edits.replace(weekday.line, weekday.start, weekday.end, f" {r.d.weekday_abbrev(new)}")
        if carriers or new is None:
            return
        if name in ("innovation", "practicality", "feasibility"):
            if self.base.layout.get("matrix") and node.kind == "item":
                return  # a matrix row is added for the item (see _matrix_rows)
        if node.kind == "item":
            self._add_label(node, name, new)
        elif name in r.d.OBSIDIAN_DATE_MARK and not self.conv.get("logseq"):
            self._add_mark(node, f"{r.d.OBSIDIAN_DATE_MARK[name]} {new}")
        elif name in ("due_date", "scheduled_date") and self.conv.get("logseq"):
            key = "DEADLINE" if name == "due_date" else "SCHEDULED"
            indent = " " * node.form.get("content_col", 2)
            self._put(node.line + 1, [f"{indent}{key}: <{new} {r.d.weekday_abbrev(new)}>"], (_META, 0), owner=node)
        else:
            slot = node.slots["annotation"]
            self._put(slot.line, [r.label_line(name, new, self.conv, prefix=f"{slot.indent}- ")], (_ANNOTATION, 0), owner=node)

    def _write_body(self, node, name, old, new, item) -> None:
        old_lines = [t for _i, t in node.body]
        sources = [i for i, _t in node.body]
        new_lines = new.split("\n") if new else []
        indent = self._body_lead(node) if _in_list(node) else ""
        escaped = [indent + line if line.strip() else "" for line in r.escape_body(new_lines)]
        if not old_lines:
            if _in_list(node):
                # Under the entry's line, or under its heading's underline (``- Title`` then ``  -``).
                at = node.form.get("head_end", node.line + 1) if node.kind == "item" else node.line + 1
                from research.backlog.markdown.parse import BLOCK_START

                if node.kind == "item" and escaped and not BLOCK_START.match(escaped[0]) and any(
                        BLOCK_START.match(group[-1]) for group in self.edits.inserted_before(at)):
                    escaped = ["", *escaped]  # after new field entries, text would run on into the last one
                self._put(at, escaped, (_BODY, 0), owner=node)
            else:
                self._put(node.slots["body"].line, escaped, (_BODY, 0), block=True, owner=node)
            return
        fallback = node.slots["body"].line if "body" in node.slots else node.line + 1
        self._rewrite_lines(sources, old_lines, new_lines, escaped, (_BODY,), fallback, owner=node)

    def _body_lead(self, node) -> str:
        """The whitespace a new body line of a list entry starts with: the body's own (tabs
        where its lines have tabs), else spaces to its column."""
        columns = node.form.get("body_indent", node.form.get("content_col", 0))
        for i, text in node.body:
            line = self.lines[i] if i is not None and i < len(self.lines) else ""
            if text.strip() and line.strip():
                lead = line[: len(line) - len(line.lstrip(" \t"))]
                if len(lead.expandtabs(4)) == columns:
                    return lead
        return " " * columns

    def _rewrite_lines(self, sources: list, old_lines: list[str], new_lines: list[str], written: list[str],
                       rank: tuple, fallback: int, owner: ParsedNode | None = None) -> None:
        """Edit the source lines ``sources`` (which read as ``old_lines``) to read as ``new_lines``.

        A line diff: lines kept keep their bytes; lines gone are deleted; new ones (``written``:
        ``new_lines`` as they must be written) go where the diff puts them. ``None`` in
        ``sources`` is a line with no source of its own (a blank line read between two blocks).
        """
        from research.backlog.markdown.parse import BLOCK_START

        was_escaped, now_escaped = r.escape_body(old_lines), r.escape_body(new_lines)
        matcher = difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False)
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op == "equal":
                # An unchanged line keeps its bytes, unless what is around it changed how it
                # reads (a code fence opened or closed above it): then it is written escaped.
                for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                    if sources[i] is not None and was_escaped[i] != now_escaped[j]:
                        self.edits.delete(sources[i], sources[i] + 1)
                        self._put(sources[i], [written[j]], (*rank, j), owner=owner)
                continue
            for i in range(i1, i2):
                if sources[i] is not None:
                    self.edits.delete(sources[i], sources[i] + 1)
            if j2 > j1:
                at = _position(sources, i1, fallback)
                if i1 > 0 and sources[i1 - 1] is not None and at != sources[i1 - 1] + 1 \
                        and not BLOCK_START.match(written[j1]):
                    # The next line is past lines of other nodes (a list entry read after its
                    # children): text put there would run on into the child above it.
                    # Right after the line before, it reads as the body says.
                    at = sources[i1 - 1] + 1
                elif i1 == 0 and owner is not None and _in_list(owner) and rank[0] == _BODY and at > fallback \
                        and self.lines[at - 1].strip() and not BLOCK_START.match(written[j1]):
                    # The same before the body's first line, when lines of others (a note)
                    # come between the entry's own line and it: the text goes under the entry.
                    at = fallback
                self._put(at, written[j1:j2], (*rank, j1), owner=owner)

    def _add_label(self, node: ParsedNode, name: str, value: Any) -> None:
        if _in_list(node):
            from research.backlog.markdown.parse import BLOCK_START

            slot = node.slots["annotation"]
            lines = [r.label_line(name, value, self.conv, prefix=f"{slot.indent}- ")]
            following = self.lines[slot.line] if slot.line < len(self.lines) else ""
            if following.strip() and not BLOCK_START.match(following) and not self.edits.deleted(slot.line):
                lines.append("")  # a text line right after it would run on into the new entry
            self._put(slot.line, lines, (_ANNOTATION, 0), owner=node)
            return
        slot = node.slots["meta"]
        order = list(FIELDS).index(name) if name in FIELDS else 99
        line = r.label_line(name, value, self.conv, prefix=slot.indent)
        after = slot.line < len(self.lines) and self.lines[slot.line].strip() and not _is_label_line(node, slot.line)
        head = slot.line == node.form.get("head_end", node.line + 1)
        lines = [line, ""] if after and head else [line]
        self._put(slot.line, lines, (_META, order), owner=node)

    def _add_mark(self, node: ParsedNode, text: str, after_title: bool = False) -> None:
        """A new trailing mark: at the end of the line (after the marks already there, as
        Obsidian orders priority before dates), or right after the title (a status emoji)."""
        if text:
            if after_title:
                at = node.form.get("mark_at", node.title_at[2])  # after a bold title's closing **
            else:
                at = node.form.get("marks_end", node.title_at[2])
            self.edits.replace(node.title_at[0], at, at, f" {text}")

    # ------------------------------------------------------------------ notes and outcomes

    def _notes_and_outcomes(self) -> None:
        owners: list[int | None] = sorted(self.kept)
        if self.state.main or any(owner is None for _n, owner in self.base.notes.values()):
            owners.append(None)
        for owner in owners:
            for note in self.state.notes.get(owner, []):
                if note.id in self.anchored_notes:
                    anchored, base_owner = self.base.notes[note.id]
                    if base_owner == owner:
                        self._note_edit(anchored, note)
                    continue
                if owner is None and not self.state.main:
                    continue
                self._new_note(owner, note)
            if owner is None:
                continue
            new = [o for o in self.state.outcomes.get(owner, []) if o.id not in self.anchored_outcomes]
            if new:
                self._new_outcomes(owner, new)

    def _note_edit(self, anchored: ParsedNote, note: Any) -> None:
        if note.text == anchored.text:
            return
        old_lines = [t for _i, t in anchored.text_lines]
        sources = [i for i, _t in anchored.text_lines]
        new_lines = note.text.split("\n") if note.text else []
        if anchored.form == "bullet":
            return  # a note written on one bullet line is rewritten whole only when it changes shape
        escaped = r.escape_body(new_lines)
        if not old_lines:
            self._put(anchored.end, escaped, (_NOTE, note.id))
            return
        self._rewrite_lines(sources, old_lines, new_lines, escaped, (_NOTE, note.id), anchored.end)

    def _new_note(self, owner: int | None, note: Any) -> None:
        if owner is None:
            spec = self.base.layout.get("notes")
            if spec is None:
                self._new_notes_section(note)
                return
            rank = (_NOTE, -note.id if spec.get("descending") else note.id)
            self._put(spec["line"], self._note_block(note, spec["level"]), rank, block=True)
            return
        node = self.base.nodes[owner]
        if _in_list(node):
            slot = node.slots["annotation"]
            self._put(slot.line, r.note_bullet(note.date, note.text, self.lang, slot.indent), (_ANNOTATION, 1, note.id), owner=node)
            return
        slot = node.slots["note"]
        self._put(slot.line, self._note_block(note, slot.level), (_NOTE, note.id), block=True, owner=node)

    def _new_notes_section(self, note: Any) -> None:
        level = self.conv.get("item_level", 2)
        heading = "📝 研究笔记" if self.lang == "zh" else "Notes"
        at = len(self.lines)
        rule = self.conv.get("section_rules") and not self._rule_before(at)
        lines = [*(["---", ""] if rule else []), r.heading_line(level, heading, protect=False), ""]
        if not self.notes_section_written:
            self.notes_section_written = True
            self._put(at, lines, (_SECTION, -1), block=True)
        self._put(at, self._note_block(note, min(level + 1, 6)), (_SECTION, note.id), block=True)

    def _note_block(self, note: Any, level: int) -> list[str]:
        day = note.date or (note.created_at or "")[:10] or self.state.today
        heading = " ".join(x for x in (day, note.title) if x)
        text = note.text.split("\n") if note.text else []
        return [r.heading_line(level, heading, protect=False), *r.escape_body(text)]

    def _new_outcomes(self, owner: int, outcomes: list[Any]) -> None:
        node = self.base.nodes[owner]
        if _in_list(node):
            slot = node.slots["annotation"]
            label = r.d.OUTCOME_WRITE_LABEL[self.lang]
            for outcome in outcomes:
                text = r.outcome_bullet(outcome.kind, outcome.ref, outcome.text, self.lang, prefix="")
                self._put(slot.line, [f"{slot.indent}- **{label}**: {text}"], (_ANNOTATION, 2, outcome.id), owner=node)
            return
        slot = node.slots["outcome"]
        bullets = [r.outcome_bullet(o.kind, o.ref, o.text, self.lang) for o in outcomes]
        if node.outcomes:
            self._put(slot.line, bullets, (_OUTCOME, outcomes[0].id), owner=node)
            return
        colon = self.conv.get("label_form", {}).get("colon", ":")
        self._put(slot.line, [f"**{r.d.OUTCOME_WRITE_LABEL[self.lang]}**{colon}", *bullets], (_OUTCOME, outcomes[0].id), block=True, owner=node)

    # ------------------------------------------------------------------ new items

    def _new_items(self) -> None:
        doc = self.state.document_id
        tops: list[Any] = []
        by_slot: dict[int, list[Any]] = defaultdict(list)
        for parent_id, kids in self.state.children.items():
            for item in kids:
                if item.id in self.kept or item.document_id != doc:
                    continue
                if parent_id is None or parent_id not in self.state.items or self.state.items[parent_id].document_id != doc:
                    tops.append(item)
                elif parent_id in self.kept:
                    by_slot[parent_id].append(item)
                # else: the parent is new too and writes its children itself
        for parent_id, items in by_slot.items():
            node = self.base.nodes[parent_id]
            tasks = [i for i in items if i.kind == "task"]
            if tasks:
                self._insert_tasks_under(node, tasks)
            for n, item in enumerate(i for i in items if i.kind != "task"):
                self._insert_under(node, item, n)
        for n, item in enumerate(tops):
            self._insert_top(item, n)

    def _insert_tasks_under(self, node: ParsedNode, tasks: list[Any]) -> None:
        """New checklist entries of ``node``: one list, after its last task or as a new list."""
        slot = node.slots["task"]
        lines: list[str] = []
        for n, item in enumerate(tasks):
            lines += self._task_lines(item, slot.indent, self._next_bullet(node, slot, n))
        self._put(slot.line, lines, (_TASK, tasks[0].position, tasks[0].id), block=not slot.after_list, owner=node)

    def _insert_under(self, node: ParsedNode, item: Any, n: int) -> None:
        if _in_list(node):
            slot = node.slots["task"]
            lines = self._list_heading_lines(item, min(max(node.level, 2) + 1, 6), slot.indent, slot.bullet or "-")
            self._put(slot.line, lines, (_ITEM, item.position, item.id), owner=node)
            return
        slot = node.slots["item"]
        number = self._next_number(node, n)
        self._put(slot.line, self._item_lines(item, slot.level, number=number), (_ITEM, item.position, item.id), block=True, owner=node)

    def _insert_top(self, item: Any, n: int) -> None:
        if item.kind == "task":
            spec = self.base.layout.get("task") or {"line": self.base.layout["item"]["line"], "indent": "", "bullet": self.conv.get("bullet", "-")}
            bullet = self._next_bullet(None, Slot(0, bullet=spec["bullet"]), n)
            lines = self._task_lines(item, spec["indent"], bullet)
            self._put(spec["line"], lines, (_TASK, item.position, item.id), block="task" not in self.base.layout)
            return
        spec = self.base.layout["item"]
        lines = self._item_lines(item, spec["level"])
        if self.conv.get("section_rules") and (spec.get("after_items", True) or n > 0) and (n > 0 or not self._rule_before(spec["line"])):
            lines = ["---", "", *lines]
        self._put(spec["line"], lines, (_ITEM, item.position, item.id), block=True)

    def _rule_before(self, at: int) -> bool:
        """Whether the last kept line before ``at`` (blank lines aside) is a thematic break."""
        from research.backlog.markdown.parse import RULE

        i = at - 1
        while i >= 0 and (self.edits.deleted(i) or not self.lines[i].strip()):
            i -= 1
        return i >= 0 and bool(RULE.match(self.lines[i]))

    def _next_bullet(self, node: ParsedNode, slot: Slot, n: int) -> str:
        """The marker for the ``n``-th new entry of a list: the next number in an ordered one."""
        ordered = re.fullmatch(r"(\d{1,9})([.)])", slot.bullet or "")
        if ordered:
            return f"{int(ordered.group(1)) + 1 + n}{ordered.group(2)}"
        return slot.bullet or self.conv.get("bullet", "-")

    def _next_number(self, node: ParsedNode, n: int) -> int | None:
        """The number of the ``n``-th new child heading, when the children are numbered (``#### 3. X``)."""
        last = node.form.get("child_number")
        return None if last is None else last + 1 + n

    def _children(self, item_id: int) -> list[Any]:
        return self.state.children.get(item_id, [])

    def _list_heading_lines(self, item: Any, level: int, indent: str, bullet: str) -> list[str]:
        """A new item inside a list (``- ### X``, as Logseq writes them), with what is under it."""
        lines = [f"{indent}{bullet} {r.heading_line(level, item.title)}"]
        inner = indent + " " * (len(bullet) + 1)
        # The body first: lines that continue the entry's own paragraph must follow its heading.
        if item.body:
            lines += [inner + t if t.strip() else "" for t in r.escape_body(_dedent_block(item.body.split("\n")))]
        for name in ("priority", "estimate", "tags", "status", "start_date", "scheduled_date", "due_date",
                     "innovation", "practicality", "feasibility"):
            value = item_value(item, name)
            if value in (None, [], "") or (name == "priority" and value == "medium") or (name == "status" and value == "planned"):
                continue
            lines.append(r.label_line(name, value, self.conv, prefix=f"{inner}- "))
        for note in self.state.notes.get(item.id, []):
            lines += r.note_bullet(note.date, note.text, self.lang, inner)
        for outcome in self.state.outcomes.get(item.id, []):
            text = r.outcome_bullet(outcome.kind, outcome.ref, outcome.text, self.lang, prefix="")
            lines.append(f"{inner}- **{r.d.OUTCOME_WRITE_LABEL[self.lang]}**: {text}")
        for child in self._children(item.id):
            if child.kind == "task":
                lines += self._task_lines(child, inner, self.conv.get("bullet", "-"))
            else:
                lines += self._list_heading_lines(child, min(level + 1, 6), inner, "-")
        return lines

    def _item_lines(self, item: Any, level: int, number: int | None = None) -> list[str]:
        """A new heading item and everything under it, in the document's conventions."""
        lines = [r.heading_line(level, item.title, number)]
        for name in ("priority", "estimate", "tags", "status", "start_date", "scheduled_date", "due_date",
                     "innovation", "practicality", "feasibility"):
            value = item_value(item, name)
            if value in (None, [], "") or (name == "priority" and value == "medium") or (name == "status" and value == "planned"):
                continue
            if name in ("innovation", "practicality", "feasibility") and self.base.layout.get("matrix"):
                continue
            lines.append(r.label_line(name, value, self.conv))
        blocks: list[list[str]] = []
        if item.body:
            blocks.append(r.escape_body(item.body.split("\n")))
        tasks = [c for c in self._children(item.id) if c.kind == "task"]
        if tasks:
            task_lines: list[str] = []
            for child in tasks:
                task_lines += self._task_lines(child, "", self.conv.get("bullet", "-"))
            blocks.append(task_lines)
        outcomes = self.state.outcomes.get(item.id, [])
        if outcomes:
            colon = self.conv.get("label_form", {}).get("colon", ":")
            blocks.append([f"**{r.d.OUTCOME_WRITE_LABEL[self.lang]}**{colon}",
                           *(r.outcome_bullet(o.kind, o.ref, o.text, self.lang) for o in outcomes)])
        for note in self.state.notes.get(item.id, []):
            blocks.append(self._note_block(note, min(level + 1, 6)))
        number_next = 1
        for child in self._children(item.id):
            if child.kind == "task":
                continue
            blocks.append(self._item_lines(child, min(level + 1, 6)))
            number_next += 1
        for block in blocks:
            lines += ["", *block]
        return lines

    def _task_lines(self, item: Any, indent: str, bullet: str) -> list[str]:
        values = {name: item_value(item, name) for name in FIELDS}
        if item.status == "done" and item.done_at:
            values["done_on"] = self.state.today
        line = r.task_line(values, item.title, self.conv, indent, bullet)
        inner = indent + " " * (len(bullet) + 1)
        lines = [line]
        if self.conv.get("logseq"):
            lines += r.logseq_date_lines(values, inner)
        if item.body:
            lines += [inner + t if t.strip() else "" for t in r.escape_body(_dedent_block(item.body.split("\n")))]
        for name in ("estimate",):
            if values.get(name):
                lines.append(r.label_line(name, values[name], self.conv, prefix=f"{inner}- "))
        if any(" " in t or "#" in t for t in values.get("tags") or []):
            lines[0] = lines[0][: len(lines[0]) - len("".join(f" #{t}" for t in values["tags"]))]
            lines.append(r.label_line("tags", values["tags"], self.conv, prefix=f"{inner}- "))
        for note in self.state.notes.get(item.id, []):
            lines += r.note_bullet(note.date, note.text, self.lang, inner)
        for outcome in self.state.outcomes.get(item.id, []):
            text = r.outcome_bullet(outcome.kind, outcome.ref, outcome.text, self.lang, prefix="")
            lines.append(f"{inner}- **{r.d.OUTCOME_WRITE_LABEL[self.lang]}**: {text}")
        unit = self.conv.get("indent_unit") or " " * (len(bullet) + 1)
        child_indent = indent + unit if len((indent + unit).expandtabs(4)) >= len(inner.expandtabs(4)) else inner
        for child in self._children(item.id):
            if child.kind == "task":
                lines += self._task_lines(child, child_indent, self.conv.get("bullet", "-") if not bullet[:1].isdigit() else "-")
            else:
                lines += self._list_heading_lines(child, 4, child_indent, "-")
        return lines

    # ------------------------------------------------------------------ the matrix

    def _matrix_rows(self) -> None:
        spec = self.base.layout.get("matrix")
        if not spec:
            return
        doc = self.state.document_id
        for _parent_id, kids in self.state.children.items():
            for item in kids:
                if item.document_id != doc or item.kind != "item":
                    continue
                if not any(item_value(item, k) is not None for k in ("innovation", "practicality", "feasibility")):
                    continue
                node = self.base.nodes.get(item.id) if item.id in self.kept else None
                if node is not None and node.carriers_of("_row"):
                    continue
                self._put(spec["line"], [self._matrix_row(item, spec)], (_ROW, item.position, item.id))

    def _matrix_row(self, item: Any, spec: dict[str, Any]) -> str:
        lang = "zh" if any(r.CJK.search(h) for h in spec["header"]) else "en"
        cells = []
        by_index = {index: name for name, index in spec["columns"].items()}
        for index in range(len(spec["header"])):
            name = by_index.get(index)
            value = item_value(item, name) if name and name != "topic" else None
            if name == "topic":
                cells.append(item.title)
            elif name == "status":
                cells.append(r.status_text(item.status, "emoji+word", lang))
            elif value is None:
                cells.append("")
            else:
                cells.append(r.value_text(name, value, self.conv))
        return "| " + " | ".join(cells) + " |"


_ORDERED_NOT_ONE = re.compile(r"^[ \t]*(?:>[ \t]?)*[ \t]*(?!1[.)])\d{1,9}[.)](?:[ \t]|$)")


def _position(sources: list, i: int, fallback: int) -> int:
    """Where a line inserted before the ``i``-th of ``sources`` goes in the text."""
    for k in range(i, len(sources)):
        if sources[k] is not None:
            return sources[k]
    for k in range(i - 1, -1, -1):
        if sources[k] is not None:
            return sources[k] + 1
    return fallback


def _dedent_block(lines: list[str]) -> list[str]:
    """Lines moved to a new indentation: their common leading indentation taken off first."""
    from research.backlog.markdown.parse import _dedent, _lead_width

    cut = min((_lead_width(line) for line in lines if line.strip()), default=0)
    return [_dedent(line, cut) if line.strip() else "" for line in lines]


def _in_list(node: ParsedNode) -> bool:
    """A task or a list-entry heading: what it adds goes in its list entry, indented."""
    return node.kind == "task" or bool(node.form.get("in_list"))


def _is_label_line(node: ParsedNode, line: int) -> bool:
    return any(c.line == line and c.form in ("label", "timestamp") for c in node.carriers)
