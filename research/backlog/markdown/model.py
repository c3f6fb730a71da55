"""What parsing a Markdown backlog finds: items, tasks, notes and outcomes, each with where it sits.

Every value read from the text keeps a ``Carrier``: the line and columns it was written
in, and in which form (a checkbox, a labelled line, a heading emoji, a matrix cell...).
A change to the value is written there and nowhere else. ``Slot``s say where new lines of
each kind go. These records are stored with the backlog (as JSON) so that exporting
needs no second parse.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

# The fields of an item a document can carry, compared between the text and the backlog.
FIELDS = (
    "title", "kind", "status", "priority", "estimate", "tags", "innovation", "practicality",
    "feasibility", "score", "due_date", "scheduled_date", "start_date", "body",
)
DEFAULTS: dict[str, Any] = {
    "status": "planned", "priority": "medium", "estimate": None, "tags": [], "innovation": None,
    "practicality": None, "feasibility": None, "score": None, "due_date": None,
    "scheduled_date": None, "start_date": None, "body": "",
}


@dataclass
class Carrier:
    """Where one field's value is written: ``line[start:end]`` holds ``raw``."""

    field: str
    form: str  # label, box, keyword, heading-emoji, trailing, signifier, cell, hashtag, logseq-date, logseq-priority
    line: int
    start: int
    end: int
    raw: str
    whole_line: bool = False  # the line holds nothing else: removing the value removes it


@dataclass
class Slot:
    """Where new lines of one kind go: before ``line``, with this prefix, bullet or heading level."""

    line: int
    indent: str = ""
    level: int = 0
    bullet: str = "-"
    after_list: bool = False  # directly after a list entry (no blank line between)


@dataclass
class ParsedNote:
    date: str | None
    title: str | None
    text: str
    line: int
    end: int
    level: int = 0
    form: str = "heading"  # heading (a dated heading) or bullet (a **Note**: line under a task)
    text_lines: list[list] = field(default_factory=list)  # [source line, text] pairs


@dataclass
class ParsedOutcome:
    kind: str
    ref: str
    text: str
    line: int
    end: int


@dataclass
class ParsedNode:
    kind: str  # item (a heading) or task (a checklist entry)
    title: str
    line: int  # first line
    end: int  # one past the last line of the node and everything under it (blank lines trimmed)
    level: int = 0  # heading level; 0 for list entries
    values: dict[str, Any] = field(default_factory=dict)
    title_at: list[int] = field(default_factory=list)  # [line, start, end]
    carriers: list[Carrier] = field(default_factory=list)
    body: list[list] = field(default_factory=list)  # [source line or None, text] pairs
    slots: dict[str, Slot] = field(default_factory=dict)
    form: dict[str, Any] = field(default_factory=dict)
    children: list[ParsedNode] = field(default_factory=list)
    notes: list[ParsedNote] = field(default_factory=list)
    outcomes: list[ParsedOutcome] = field(default_factory=list)
    key: list = field(default_factory=list)  # the path of (kind, title, occurrence) from the top
    # The parent is held weakly: a tree without cycles is freed as soon as it is dropped,
    # rather than left for the cycle collector to walk (a tenth of an import's time).
    _parent: weakref.ref | None = field(default=None, repr=False, compare=False)

    @property
    def parent(self) -> ParsedNode | None:
        return self._parent() if self._parent is not None else None

    @parent.setter
    def parent(self, node: ParsedNode | None) -> None:
        self._parent = weakref.ref(node) if node is not None else None

    def value(self, name: str) -> Any:
        if name == "title":
            return self.title
        if name == "kind":
            return self.kind
        return self.values.get(name, DEFAULTS.get(name))

    def carriers_of(self, name: str) -> list[Carrier]:
        return [c for c in self.carriers if c.field == name]

    def anchor(self) -> dict[str, Any]:
        """This node alone (no children, notes or outcomes), as compact JSON-ready data.

        Written by hand rather than with ``dataclasses.asdict``: an import stores one per
        item. Values equal to their default are left out, and the body keeps only its
        source lines (its text is ``values["body"]``).
        """
        values = {k: v for k, v in self.values.items() if v != DEFAULTS.get(k, _MISSING)}
        form = {k: v for k, v in self.form.items() if k in ANCHOR_FORM}
        form["depth"] = len(self.key)
        return {
            "kind": self.kind, "title": self.title, "line": self.line, "end": self.end,
            "level": self.level, "values": values, "title_at": self.title_at,
            "carriers": [[c.field, c.form, c.line, c.start, c.end, c.raw, c.whole_line] for c in self.carriers],
            "body": [i for i, _t in self.body],
            "slots": {k: [s.line, s.indent, s.level, s.bullet, s.after_list] for k, s in self.slots.items() if k in ANCHOR_SLOTS},
            "form": form,
        }


_MISSING = object()
# What planning an export needs of a node's form and slots (the parser keeps more).
ANCHOR_FORM = frozenset({"in_list", "list_heading", "content_col", "body_indent", "mark_at", "marks_end", "head_end",
                         "emoji_trailing", "bold", "child_number"})
ANCHOR_SLOTS = frozenset({"meta", "body", "task", "item", "note", "outcome", "annotation"})


def node_from_anchor(data: dict[str, Any]) -> ParsedNode:
    values = data["values"]
    texts = values.get("body", "").split("\n") if data["body"] else []
    return ParsedNode(
        kind=data["kind"], title=data["title"], line=data["line"], end=data["end"], level=data["level"],
        values=values, title_at=data["title_at"],
        carriers=[Carrier(*c) for c in data["carriers"]], body=[[i, t] for i, t in zip(data["body"], texts, strict=True)],
        slots={k: Slot(*s) for k, s in data["slots"].items()}, form=data["form"],
    )


def note_anchor(note: ParsedNote) -> dict[str, Any]:
    return {"date": note.date, "title": note.title, "text": note.text, "line": note.line, "end": note.end,
            "level": note.level, "form": note.form, "lines": [i for i, _t in note.text_lines]}


def note_from_anchor(data: dict[str, Any]) -> ParsedNote:
    data = dict(data)
    lines = data.pop("lines", [])
    texts = data["text"].split("\n") if lines else []
    return ParsedNote(**data, text_lines=[[i, t] for i, t in zip(lines, texts, strict=True)])


def outcome_anchor(outcome: ParsedOutcome) -> dict[str, Any]:
    return {"kind": outcome.kind, "ref": outcome.ref, "text": outcome.text, "line": outcome.line, "end": outcome.end}


def outcome_from_anchor(data: dict[str, Any]) -> ParsedOutcome:
    return ParsedOutcome(**data)


@dataclass
class MatrixRow:
    topic: str
    line: int
    values: dict[str, Any]
    cells: dict[str, list[int]]  # column name -> [start, end] of the cell's text in the line


@dataclass
class Region:
    """A stretch of the document and what it became, for ``import --dry-run``."""

    start: int
    end: int
    what: str  # item, task, note, text, notes section, matrix, front matter, title
    label: str


@dataclass
class Warning_:
    line: int  # 0-based
    message: str


@dataclass
class ParsedDocument:
    source: str  # the name used in messages
    text: str  # without a byte-order mark
    bom: bool
    title: str | None
    meta: dict[str, Any]
    nodes: list[ParsedNode]
    notes: list[ParsedNote]  # the document's own journal
    matrix: dict[str, Any] | None
    conventions: dict[str, Any]
    layout: dict[str, Any]
    regions: list[Region]
    warnings: list[Warning_]

    def walk(self):
        """Every node, parents before children."""

        def rec(nodes):
            for node in nodes:
                yield node
                yield from rec(node.children)

        yield from rec(self.nodes)

    def messages(self) -> list[str]:
        return [f"{self.source}:{w.line + 1}: {w.message}" for w in self.warnings]
