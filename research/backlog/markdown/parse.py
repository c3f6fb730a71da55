"""Reading a Markdown backlog: markdown-it-py's block tokens, turned into items, tasks and notes.

markdown-it-py decides the structure (what is a heading, a list entry, a code block, a
table, where each ends); its token maps give each block's source lines. This module
decides what the blocks mean for a backlog, and records the exact columns each value
was read from, so that a change can later be written back into the same place.

What becomes what (the rule the README states):

- every heading is an item, nested by level, except the document's title (its only H1,
  or the front matter's ``title``), dated headings (notes), a notes section (研究笔记,
  Notes, Journal...), the priority-matrix section, and top-level sections named as parts
  of the document (``dialects.DOCUMENT_SECTIONS``: 文档说明, TODO维护机制, 当前焦点,
  About, Legend...); everything under those last three stays document text;
- list entries with a checkbox or a Logseq keyword are tasks, nested by indentation, as
  are list entries that hold a heading (``- ### Sub``);
- ``**Key**: value`` lines with a known key are fields; anything else is body text.

A value it does not understand never stops the import: it stays in the text and a
warning names its line.

Why one module of this size: the dialects (seed labels, GitHub task lists, Obsidian Tasks,
Logseq, front matter, the priority matrix) are read in one pass over markdown-it's blocks,
and each decides what a block means from the context the others leave (the open heading, the
list entry a line belongs to, which lines are already claimed). The vocabulary they read is in
``dialects``; the rest of this file is that single pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from research.backlog.markdown import dialects as d
from research.backlog.markdown.model import (
    Carrier,
    MatrixRow,
    ParsedDocument,
    ParsedNode,
    ParsedNote,
    ParsedOutcome,
    Region,
    Slot,
    Warning_,
)
from research.backlog.markdown.source import SourceLines
from research.vocab import OUTCOME_LOOKUP, composite_score, read_priority, read_status, split_tags

_PARSERS: dict[frozenset, Any] = {}

# Block rules that can only fire where their mark appears in the text. markdown-it tries
# every rule at every line start; a rule whose construct provably cannot occur in this
# document is switched off, which changes no result and saves a good part of the parse.
_RULE_NEEDS = {
    "fence": re.compile(r"^[ \t>*+\-\d.)]*(?:```|~~~)", re.M),
    "html_block": re.compile(r"^[ \t>*+\-\d.)]*<", re.M),
    "blockquote": re.compile(r">"),
    "reference": re.compile(r"\]:"),
    "table": re.compile(r"\|"),
    "lheading": re.compile(r"^[ \t>*+\-\d.)]*(?:=+|-+)[ \t]*$", re.M),  # see _may_have_setext
}


def _needs(name: str, text: str) -> bool:
    pattern = _RULE_NEEDS[name]
    if name != "lheading":
        return pattern.search(text) is not None
    # A setext underline needs a line with text right above it; most documents have
    # thematic breaks (---) only after blank lines.
    for match in pattern.finditer(text):
        start = text.rfind("\n", 0, max(match.start() - 1, 0)) + 1
        if match.start() > 0 and text[start : match.start() - 1].strip():
            return True
    return False


def _markdown(text: str = ""):
    """CommonMark with tables and front matter, block rules only, those ``text`` can need."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")  # as markdown-it normalises it
    off = frozenset(name for name in _RULE_NEEDS if text and not _needs(name, text))
    parser = _PARSERS.get(off)
    if parser is None:
        from markdown_it import MarkdownIt
        from mdit_py_plugins.front_matter import front_matter_plugin

        # Inline parsing (emphasis, links) is never needed here: only block structure
        # and each block's source lines, so the inline core rules are switched off.
        parser = MarkdownIt("commonmark").use(front_matter_plugin).enable("table").disable(["inline", "text_join", *off])
        _PARSERS[off] = parser
    return parser


@dataclass
class Block:
    type: str
    start: int
    end: int
    markup: str = ""
    info: str = ""
    content: str = ""
    children: list[Block] = field(default_factory=list)


def block_tree(tokens) -> list[Block]:
    root = Block("root", 0, 0)
    stack = [root]
    for tok in tokens:
        if tok.nesting == 1:
            start, end = tok.map if tok.map else (stack[-1].start, stack[-1].start)
            block = Block(tok.type[:-5], start, end, tok.markup, tok.info)
            stack[-1].children.append(block)
            stack.append(block)
        elif tok.nesting == -1:
            stack.pop()
        elif tok.type == "inline":
            stack[-1].content = tok.content
        else:
            start, end = tok.map if tok.map else (stack[-1].start, stack[-1].start)
            stack[-1].children.append(Block(tok.type, start, end, tok.markup, tok.info, tok.content))
    return root.children


def heading_level(block: Block) -> int:
    if block.markup in ("=", "-"):
        return 1 if block.markup == "=" else 2
    return len(block.markup)


ATX = re.compile(r"^(?P<lead>[ \t]*(?:(?:[-*+]|\d{1,9}[.)])[ \t]+)?[ \t]*)#{1,6}(?:[ \t]+(?P<text>.*?))?(?:[ \t]+#+)?[ \t]*$")
NUMBERED = re.compile(r"^(\d{1,4})([.、)])\s+")
TIMESTAMP_LINE = re.compile(r"^[*_]*\s*(\d{4}-\d{2}-\d{2})(?:[ T](\d{2}:\d{2}(?::\d{2})?))?\s*[*_]*$")
# A line that starts a block of its own (a list entry, heading, quote, fence, table row),
# so it cannot run on into the paragraph before it.
BLOCK_START = re.compile(r"^[ \t]*(?:[-*+](?:[ \t]|$)|\d{1,9}[.)](?:[ \t]|$)|#{1,6}(?:[ \t]|$)|>|```|~~~|\|)")
RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
ESCAPED = re.compile(r"^([ \t]*(?:>[ \t]?)*[ \t]*(?:(?:[-*+]|\d{1,9}[.)])[ \t]+)?)\\(?=[#\[\-*+=<`~])")
_STATUS_EMOJI_ALT = "|".join(sorted(map(re.escape, d.HEADING_STATUS), key=len, reverse=True))
HEADING_LEADING_STATUS = re.compile(rf"^({_STATUS_EMOJI_ALT})\ufe0f?[ \t]*")
HEADING_TRAILING_STATUS = re.compile(rf"[ \t]+({_STATUS_EMOJI_ALT})\ufe0f?$")
LIST_PREFIX = re.compile(r"^[ \t]*(?:>[ \t]?)*[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+")
BULLET_PREFIX = re.compile(r"^[ \t]*[-*+][ \t]+")
QUOTE_PREFIX = re.compile(r"^[ \t]*(?:>[ \t]?)+")
CONTENT_START = re.compile(r"^([ \t]*(?:>[ \t]?)*[ \t]*(?:[-*+]|\d{1,9}[.)]))([ \t]+)")
NON_WORD = re.compile(r"[\W_]+")
BOLD = re.compile(r"^(\*\*|__)(?P<inner>.+?)\1$")
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
TASK_NOTE = re.compile(r"^\*\*(?P<label>[^*]+?)\*\*[ \t]*(?:\(?(?P<date>\d{4}-\d{2}-\d{2})\)?)?[ \t]*[:：][ \t]*(?P<text>.*)$")

# Trailing marks on a task line, read from the right.
_SIGNIFIER_DATE = re.compile(
    r"[ \t]*(?P<mark>" + "|".join(map(re.escape, d.OBSIDIAN_DATES)) + r")\ufe0f?[ \t]*(?P<date>\d{4}-\d{2}-\d{2})$"
)
_SIGNIFIER_PRIORITY = re.compile(r"[ \t]*(?P<mark>" + "|".join(map(re.escape, d.OBSIDIAN_PRIORITY)) + r")\ufe0f?$")
_HASHTAG = re.compile(r"[ \t]+#(?P<tag>[^\s#\[\]()]+)$")
_FIRE = re.compile(r"[ \t]*(?P<mark>🔥🔥|🔥)$")
_TRAILING_STATUS = re.compile(r"[ \t]+(?P<mark>" + "|".join(map(re.escape, d.TRAILING_STATUS)) + r")$")
_SIGNIFIER_OTHER = re.compile("|".join(map(re.escape, d.OBSIDIAN_OTHER)))
# Last characters a trailing mark can end with (emoji, and the variation selector after some).
_MARK_ENDS = frozenset(m[-1] for m in [*d.OBSIDIAN_PRIORITY, *d.TRAILING_STATUS, "🔥", "\ufe0f"])
_ANY_SIGNIFIER = re.compile(
    "|".join(map(re.escape, [*d.OBSIDIAN_DATES, *d.OBSIDIAN_PRIORITY, *d.OBSIDIAN_OTHER]))
)


class _Ctx:
    __slots__ = ("level", "kind", "node", "note", "owner", "start", "label")

    def __init__(self, level, kind, start, node=None, note=None, owner=None, label=""):
        self.level, self.kind, self.start = level, kind, start
        self.node, self.note, self.owner, self.label = node, note, owner, label


# Markers put in the line-owner table for lines that are nobody's body.
_CLAIMED = object()


def parse_document(text: str, source: str = "<markdown>", bom: bool = False) -> ParsedDocument:
    """Parse a document's text (without a byte-order mark) into items, notes and text."""
    return _Parser(text, source, bom).run()


class _Parser:
    def __init__(self, text: str, source: str, bom: bool):
        self.text, self.source, self.bom = text, source, bom
        self.src = SourceLines.from_text(text)
        self.lines = self.src.lines
        self.owner: list[Any] = [None] * len(self.lines)
        self.warnings: list[Warning_] = []
        self.regions: list[Region] = []
        self.nodes: list[ParsedNode] = []
        self.all_nodes: list[ParsedNode] = []
        self.doc_notes: list[ParsedNote] = []
        self.meta: dict[str, Any] = {}
        self.title: str | None = None
        self.matrix: dict[str, Any] | None = None
        self.conv: dict[str, Any] = {"labels": {}, "lang_votes": {"zh": 0, "en": 0}}
        self.notes_sections: list[dict[str, Any]] = []
        self.previous: tuple[Any, Block] = (None, Block("none", 0, 0))  # the last content block and its owner

    # ------------------------------------------------------------------ driver

    def run(self) -> ParsedDocument:
        blocks = block_tree(_markdown(self.text).parse(self.text))
        self.literal = _literal_lines(blocks)
        if blocks and blocks[0].type == "front_matter":
            self._front_matter(blocks[0])
            blocks = blocks[1:]
        h1 = [b for b in blocks if b.type == "heading" and heading_level(b) == 1]
        title_block = h1[0] if len(h1) == 1 else None
        stack: list[_Ctx] = []
        preamble_meta = True  # metadata directly under the title (before any section) is the document's
        for index, block in enumerate(blocks):
            if block.type == "fence" and not self.lines[block.end - 1 if block.end else 0].strip().startswith(block.markup[:3]):
                self._fence_warning(block)
            if block.type != "heading":
                self._content(stack, block, preamble_meta)
                continue
            level = heading_level(block)
            top = stack[-1] if stack else None
            if top is not None and top.kind in ("note", "text") and level > top.level:
                self._content(stack, block, preamble_meta)
                continue
            for ctx in stack:
                if ctx.kind == "item" and "own_end" not in ctx.node.form:
                    ctx.node.form["own_end"] = block.start
            while stack and stack[-1].level >= level:
                self._close(stack.pop(), block.start)
            if block is title_block:
                self._doc_title(block)
                preamble_meta = True
                continue
            preamble_meta = False
            self._heading(stack, blocks, index, block, level)
        while stack:
            self._close(stack.pop(), len(self.lines))
        self._attach_matrix()
        self._finish_bodies()
        self._keys()
        conventions = self._conventions()
        layout = self._layout(conventions)
        return ParsedDocument(
            source=self.source, text=self.text, bom=self.bom, title=self.meta.get("title") or self.title,
            meta=self.meta, nodes=self.nodes, notes=self.doc_notes, matrix=self.matrix,
            conventions=conventions, layout=layout, regions=sorted(self.regions, key=lambda r: r.start),
            warnings=sorted(self.warnings, key=lambda w: w.line),
        )

    def warn(self, line: int, message: str) -> None:
        self.warnings.append(Warning_(line, message))

    def _fence_warning(self, block: Block) -> None:
        # markdown-it runs an unclosed fence to the end of its container; at the top level
        # that is the end of the file, and everything after it is read as code.
        if block.end >= len(self.lines):
            self.warn(block.start, f"unclosed code fence: the rest of the file (from line {block.start + 1}) is read as code")

    # ------------------------------------------------------------------ document parts

    def _front_matter(self, block: Block) -> None:
        self._claim(block.start, block.end, _CLAIMED)
        self.regions.append(Region(block.start, block.end, "front matter", "YAML front matter"))
        import yaml

        try:
            data = yaml.safe_load(block.content) if block.content.strip() else {}
        except yaml.YAMLError:
            self.warn(block.start, "front matter is not valid YAML, kept as text")
            return
        if not isinstance(data, dict):
            self.warn(block.start, "front matter is not a mapping, kept as text")
            return
        self.conv["front_matter"] = True
        for key in ("title", "tags", "status"):
            if key in data and data[key] is not None:
                value = data[key]
                if key == "tags":
                    value = [str(v) for v in value] if isinstance(value, list) else split_tags(str(value))
                elif key == "status":
                    if isinstance(value, list) and len(value) == 1:
                        value = value[0]
                    found = read_status(str(value))
                    if found is None:
                        self.warn(block.start, f"unknown status {str(value)!r} in front matter, kept as text")
                        continue
                    value = found
                else:
                    value = str(value)
                self.meta[key] = value

    def _doc_title(self, block: Block) -> None:
        title, _start, _end = self._heading_text(block)
        self.title = title.strip() or None
        self._claim(block.start, block.end, _CLAIMED)
        self.regions.append(Region(block.start, block.end, "title", self.title or ""))

    # ------------------------------------------------------------------ headings

    def _heading_text(self, block: Block) -> tuple[str, int, int]:
        """(title text, start column, end column) on the heading's first line."""
        line = self.lines[block.start]
        if block.markup in ("=", "-"):
            # (In a list entry, the heading's first line is the entry's: its bullet is not title.)
            lead = LIST_PREFIX.match(line) or QUOTE_PREFIX.match(line)
            after = lead.end() if lead else 0
            text = line[after:].strip()
            start = line.index(text, after) if text else after
            return text, start, start + len(text)
        match = ATX.match(line)
        if not match or match.group("text") is None:
            return "", len(line), len(line)
        text = match.group("text")
        # A closing sequence of #s needs a space before it; "C#" keeps its #.
        closing = re.search(r"[ \t]+#+[ \t]*$", text)
        if closing:
            text = text[: closing.start()]
        if re.fullmatch(r"#+", text):
            text = ""
        return text, match.start("text"), match.start("text") + len(text)

    def _heading(self, stack: list[_Ctx], blocks: list[Block], index: int, block: Block, level: int) -> None:
        raw_title, col, col_end = self._heading_text(block)
        title = raw_title.strip()
        item = next((c.node for c in reversed(stack) if c.kind == "item"), None)
        notes_ctx = next((c for c in reversed(stack) if c.kind == "notes"), None)
        day, rest, looks_dated = d.read_date(title)
        if BOLD.match(title):
            # A bold title is a plain item whatever its words: that is how titles that look
            # like a date or a section name are written back.
            day, looks_dated = None, False
        self._claim(block.start, block.end, _CLAIMED)
        if looks_dated and day:
            note = ParsedNote(date=day, title=rest or None, text="", line=block.start, end=block.end, level=level)
            owner = notes_ctx.owner if notes_ctx else item
            (owner.notes if owner is not None else self.doc_notes).append(note)
            stack.append(_Ctx(level, "note", block.start, note=note, owner=owner))
            self.regions.append(Region(block.start, block.end, "note", title))
            return
        if looks_dated:
            self.warn(block.start, f"bad date {title!r} in a heading, kept as text")
            stack.append(_Ctx(level, "text", block.start, label=title))
            return
        name = "" if BOLD.match(title) else d.section_name(title)
        if name in d.NOTES_SECTIONS and not notes_ctx:
            stack.append(_Ctx(level, "notes", block.start, owner=item, label=title))
            if item is None:
                self.notes_sections.append({"line": block.start, "level": level, "heading": title})
            return
        if notes_ctx is not None:
            stack.append(_Ctx(level, "text", block.start, label=title))
            return
        if item is None and (name in d.DOCUMENT_SECTIONS or not title):
            if not title:
                self.warn(block.start, "empty heading, kept as text")
            stack.append(_Ctx(level, "text", block.start, label=title))
            return
        if item is None and self._has_matrix(blocks, index):
            stack.append(_Ctx(level, "matrix", block.start, label=title))
            return
        if not title:
            self.warn(block.start, "empty heading, kept as text")
            stack.append(_Ctx(level, "text", block.start, label=title))
            return
        node = self._heading_node(block, raw_title, col, col_end, level, parent=item)
        stack.append(_Ctx(level, "item", block.start, node=node))

    def _heading_node(self, block: Block, raw_title: str, col: int, col_end: int, level: int, parent) -> ParsedNode:
        line = block.start
        text, start = raw_title, col
        node = ParsedNode(kind="item", title="", line=line, end=block.end, level=level)
        if BOLD.match(text.strip()):
            numbered = None  # "## **1. Intro**" is titled "1. Intro": bold keeps a title as written
            text_bold = True
        else:
            numbered = NUMBERED.match(text)
            text_bold = False
        if numbered:
            node.form["numbered"] = int(numbered.group(1))
            node.form["number_style"] = numbered.group(2)
            text, start = text[numbered.end() :], start + numbered.end()
        lead = None if text_bold else HEADING_LEADING_STATUS.match(text)
        if lead:
            mark = lead.group(1)
            node.carriers.append(Carrier("status", "heading-emoji", line, start, start + len(lead.group(0).rstrip(" \t")), lead.group(0).rstrip(" \t")))
            node.values["status"] = d.HEADING_STATUS[mark]
            text, start = text[lead.end() :], start + lead.end()
        trail = None if text_bold else HEADING_TRAILING_STATUS.search(text)
        if trail and trail.start() > 0:
            node.carriers.append(Carrier("status", "heading-emoji", line, start + trail.start(), start + trail.end(), text[trail.start() :]))
            node.form["emoji_trailing"] = True
            node.values.setdefault("status", d.HEADING_STATUS[trail.group(1)])
            text = text[: trail.start()]
        stripped = text.strip()
        start += len(text) - len(text.lstrip())
        bold = BOLD.match(stripped)
        if bold:
            stripped, start = bold.group("inner"), start + len(bold.group(1))
            node.form["bold"] = True
        node.title = stripped
        node.title_at = [line, start, start + len(stripped)]
        node.form["heading"] = "setext" if block.markup in ("=", "-") else "atx"
        node.form["head_end"] = block.end
        self._add_node(node, parent)
        self.regions.append(Region(block.start, block.end, "item", node.title))
        return node

    def _has_matrix(self, blocks: list[Block], index: int) -> bool:
        for i in range(index + 1, len(blocks)):  # (not a slice: this runs for every heading)
            block = blocks[i]
            if block.type == "heading":
                return False
            if block.type == "table":
                header = self._table_cells(block.start)
                names = {d.MATRIX_COLUMN_OF.get(cell.lower()) for cell, _s, _e in header}
                return bool(names & {"innovation", "practicality", "feasibility"})
        return False

    def _add_node(self, node: ParsedNode, parent: ParsedNode | None) -> None:
        node.parent = parent
        (parent.children if parent is not None else self.nodes).append(node)
        self.all_nodes.append(node)

    def _close(self, ctx: _Ctx, at: int) -> None:
        if ctx.kind == "item":
            node = ctx.node
            node.end = self._trim_end(node.form.get("head_end", node.line + 1) - 1, at)
            node.form.setdefault("own_end", at)
            node.form["section_end"] = at
        elif ctx.kind == "note":
            note = ctx.note
            head_end = note.end
            note.end = self._trim_end(note.line, at)
            lines = list(range(head_end, note.end))
            if lines and RULE.match(self.lines[lines[-1]]):
                lines.pop()
            while lines and not self.lines[lines[-1]].strip():
                lines.pop()
            while lines and not self.lines[lines[0]].strip():
                lines.pop(0)
            note.text_lines = [[i, self.lines[i] if i in self.literal else _unescape(self.lines[i])] for i in lines]
            note.text = "\n".join(t for _i, t in note.text_lines)
            self._claim(head_end, at, _CLAIMED)
        elif ctx.kind in ("text", "notes", "matrix"):
            what = {"text": "text", "notes": "notes section", "matrix": "matrix"}[ctx.kind]
            if ctx.kind == "notes":
                for section in self.notes_sections:
                    if section["line"] == ctx.start:
                        section["end"] = at
            self.regions.append(Region(ctx.start, at, what, ctx.label))
            for i in range(ctx.start, at):
                if self.owner[i] is None:
                    self.owner[i] = _CLAIMED

    def _trim_end(self, start: int, end: int) -> int:
        while end > start + 1 and not self.lines[end - 1].strip():
            end -= 1
        return end

    # ------------------------------------------------------------------ content

    def _content(self, stack: list[_Ctx], block: Block, preamble_meta: bool) -> None:
        top = stack[-1] if stack else None
        if top is None:
            self._owned_blocks(None, [block], doc_level=preamble_meta)
        elif top.kind == "item":
            self._owned_blocks(top.node, [block])
        elif top.kind == "matrix" and block.type == "table" and self.matrix is None:
            self._matrix_table(block)

    def _owned_blocks(self, owner: ParsedNode | None, blocks: list[Block], doc_level: bool = False) -> None:
        for block in blocks:
            previous, self.previous = self.previous, (owner, block)
            if block.type in ("bullet_list", "ordered_list"):
                if owner is not None and previous[0] is owner and previous[1].type == "paragraph" \
                        and self._outcome_list(owner, previous[1], block):
                    continue
                for entry in block.children:
                    self._list_item(owner, entry, block)
                continue
            if owner is not None:
                self._claim(block.start, block.end, owner)
            if block.type == "paragraph":
                self._paragraph(owner, block, doc_level)
            elif block.type == "blockquote":
                for inner in _paragraphs(block):
                    self._paragraph(owner, inner, doc_level, quoted=True)

    def _outcome_list(self, owner: ParsedNode, label_block: Block, lst: Block) -> bool:
        """``**成果**:`` closing a paragraph, then a list of ``- 💻 代码: ref — text`` entries."""
        if owner.kind != "item" or lst.type != "bullet_list":
            return False
        label = d.META_LINE.match(self.lines[label_block.end - 1])
        if not label or label.group("value") or label.group("key").strip().lower() not in d.OUTCOME_LABELS:
            return False
        found = []
        for entry in lst.children:
            if entry.end - entry.start > 1 and any(self.lines[j].strip() for j in range(entry.start + 1, entry.end)):
                return False
            raw = self.lines[entry.start]
            text = re.sub(r"^[ \t]*[-*+][ \t]+", "", raw)
            outcome = self._outcome(text)
            if outcome is None:
                return False
            found.append(ParsedOutcome(*outcome, line=entry.start, end=entry.start + 1))
        self._claim(label_block.end - 1, label_block.end, _CLAIMED)
        self._claim(lst.start, lst.end, _CLAIMED)
        owner.outcomes.extend(found)
        owner.form["outcome_label"] = label_block.end - 1
        return True

    def _paragraph(self, owner: ParsedNode | None, block: Block, doc_level: bool, quoted: bool = False) -> None:
        for i in range(block.start, block.end):
            raw = self.lines[i]
            if owner is not None and not owner.carriers_of("created") and self._timestamp(owner, i, raw):
                continue
            meta = d.META_LINE.match(raw)
            if meta is None:
                continue
            key = meta.group("key").strip()
            name = d.LABEL_FIELD.get(key.lower())
            if name is None:
                continue
            value = meta.group("value")
            if owner is None:
                if doc_level:
                    parsed = self._read_value(name, value, i, where="document")
                    if parsed is not _UNKNOWN:
                        self.meta.setdefault(name, parsed)
                        self._claim(i, i + 1, _CLAIMED)
                continue
            parsed = self._read_value(name, value, i)
            if parsed is _UNKNOWN:
                continue
            self._set(owner, name, parsed, Carrier(name, "label", i, meta.start("value"), meta.end("value"), value, whole_line=True))
            self._claim(i, i + 1, _CLAIMED)
            self._vote_label(name, key, meta, quoted)
            if owner.kind == "item" and owner.slots.get("meta") is None or (owner.slots.get("meta") and owner.slots["meta"].line == i):
                owner.slots["meta"] = Slot(i + 1, indent=meta.group("prefix"))

    def _timestamp(self, owner: ParsedNode, i: int, raw: str) -> bool:
        if owner.kind != "item" or owner.body or any(self.owner[j] is owner for j in range(owner.form.get("head_end", owner.line + 1), i)):
            return False
        stamp = TIMESTAMP_LINE.match(raw.strip())
        if not stamp:
            return False
        owner.values["created"] = stamp.group(1) + (f"T{stamp.group(2)}" if stamp.group(2) else "")
        owner.carriers.append(Carrier("created", "timestamp", i, 0, len(raw), raw, whole_line=True))
        self._claim(i, i + 1, _CLAIMED)
        return True

    def _vote_label(self, name: str, key: str, meta: re.Match, quoted: bool) -> None:
        lang = d.LABEL_LANG.get(key.lower(), "en")
        self.conv["lang_votes"][lang] += 1
        labels = self.conv["labels"]
        labels.setdefault(name, key)
        # The form new labels are written in: the first unquoted one (a quoted block of
        # fields belongs to its own item, whose new fields join it through its slot).
        if "label_form" not in self.conv or (self.conv["label_form"].get("quoted") and not quoted):
            inner = meta.group("inner")
            colon = inner or meta.string[meta.end("key") + 2 :].lstrip(" \t")[:1] or ":"
            prefix = meta.group("prefix")
            self.conv["label_form"] = {
                "prefix": prefix,
                "inner": bool(inner),
                "colon": colon if colon in ":：" else ":",
                "quoted": quoted,
            }

    def _set(self, node: ParsedNode, name: str, value: Any, carrier: Carrier) -> None:
        node.carriers.append(carrier)
        if name == "status" and carrier.form == "label":
            node.values["status"] = value  # an explicit status line wins over a heading emoji
        elif name == "tags":
            node.values["tags"] = [*node.values.get("tags", []), *[t for t in value if t not in node.values.get("tags", [])]]
        else:
            node.values.setdefault(name, value)

    def _read_value(self, name: str, value: str, line: int, where: str = "") -> Any:
        """A field's value parsed from its text, or _UNKNOWN (with a warning) when it is not understood."""
        text = value.strip()
        if name == "status":
            found = read_status(text)
            if found is None:
                self.warn(line, f"unknown status {text!r}, kept as text")
                return _UNKNOWN
            return found
        if name == "priority":
            found = read_priority(text)
            if found is None:
                self.warn(line, f"unknown priority {text!r}, kept as text")
                return _UNKNOWN
            return found
        if name == "estimate":
            return text or _UNKNOWN
        if name == "tags":
            tags = [t.lstrip("#") for t in split_tags(text)]
            return tags or _UNKNOWN
        if name in ("due_date", "scheduled_date", "start_date", "created"):
            day, _rest, _looks = d.read_date(text)
            if day is None:
                self.warn(line, f"unknown date {text!r} for {name.replace('_', ' ')}, kept as text")
                return _UNKNOWN
            return day
        if name in ("innovation", "practicality", "feasibility"):
            stars = _count_stars(text)
            if stars is None or not 1 <= stars <= 5:
                self.warn(line, f"{name} must be 1-5 stars, got {text!r}; kept as text")
                return _UNKNOWN
            return stars
        return text

    # ------------------------------------------------------------------ lists

    def _list_item(self, owner: ParsedNode | None, entry: Block, lst: Block) -> None:
        first = entry.start
        raw = self.lines[first]
        kids = entry.children
        head = kids[0] if kids else None
        if head is not None and head.type == "heading" and head.start == first:
            self._list_heading(owner, entry, head)
            return
        if head is not None and head.type == "paragraph" and head.start == first:
            box = d.CHECKBOX.match(raw)
            if box and box.group("rest")[:1] not in ("", " ", "\t"):
                box = None  # "- [C](url)" is a link, not a checkbox
            if box:
                rest = box.group("rest")
                if box.group("mark") not in d.BOX_STATUS:
                    self.warn(first, f"unknown checkbox '[{box.group('mark')}]', kept as text")
                elif not rest.strip() or not rest[:1].isspace():
                    if not rest.strip():
                        self.warn(first, "checklist entry without text, kept as text")
                else:
                    self._task(owner, entry, lst, box, "box")
                    return
            else:
                keyword = d.LOGSEQ_TASK.match(raw)
                if keyword and keyword.group("rest").strip():
                    self._task(owner, entry, lst, keyword, "keyword")
                    return
            if owner is not None and self._task_annotation(owner, entry, head):
                return
            if owner is not None and len(kids) == 1 and head.end - head.start == 1 and self._bullet_meta(owner, first, raw):
                return
        # A plain list entry is body text of its owner, but entries nested in it may be tasks.
        if owner is not None:
            self._claim(entry.start, entry.end, owner)
        for kid in kids:
            if kid.type in ("bullet_list", "ordered_list"):
                for nested in kid.children:
                    self._list_item(owner, nested, kid)

    def _bullet_meta(self, owner: ParsedNode, line: int, raw: str) -> bool:
        meta = d.META_LINE.match(raw)
        if not meta or not re.match(r"^[ \t]*[-*+][ \t]", raw):
            return False
        key = meta.group("key").strip()
        name = d.LABEL_FIELD.get(key.lower())
        if name is None:
            return False
        parsed = self._read_value(name, meta.group("value"), line)
        if parsed is _UNKNOWN:
            return False
        self._set(owner, name, parsed, Carrier(name, "label", line, meta.start("value"), meta.end("value"), meta.group("value"), whole_line=True))
        self._claim(line, line + 1, _CLAIMED)
        self._vote_label(name, key, meta, False)
        return True

    def _list_heading(self, owner: ParsedNode | None, entry: Block, head: Block) -> None:
        raw_title, col, col_end = self._heading_text(head)
        if not raw_title.strip():
            return
        node = self._heading_node(head, raw_title, col, col_end, heading_level(head), parent=owner)
        node.form["list_heading"] = True
        node.form["in_list"] = True
        node.form["content_col"] = _content_column(self.lines[entry.start])
        prefix = LIST_PREFIX.match(self.lines[entry.start])
        node.form["prefix"] = prefix.group(0) if prefix else ""
        node.end = self._trim_end(entry.start, entry.end)
        node.form["own_end"] = entry.end
        node.form["section_end"] = entry.end
        self._claim(entry.start, entry.end, node)
        self._claim(head.start, head.end, _CLAIMED)
        after = entry.children[1] if len(entry.children) > 1 else None
        node.form["head_end"] = after.end if after is not None and after.type == "paragraph" else head.end
        self._owned_blocks(node, entry.children[1:])
        self._task_slot(node, entry, nested_default=_content_column(self.lines[entry.start]))

    def _task(self, owner: ParsedNode | None, entry: Block, lst: Block, match: re.Match, form: str) -> None:
        line = entry.start
        raw = self.lines[line]
        prefix = match.group("prefix")
        node = ParsedNode(kind="task", title="", line=line, end=self._trim_end(line, entry.end))
        node.form["task"] = form
        node.form["in_list"] = True
        node.form["prefix"] = prefix
        node.form["content_col"] = _content_column(raw)
        node.form["bullet"] = lst.markup if lst.type == "bullet_list" else None
        if lst.type == "ordered_list":
            node.form["ordered"] = lst.markup or "."
        if form == "box":
            mark = match.group("mark")
            box_col = match.start("mark")
            node.carriers.append(Carrier("status", "box", line, box_col, box_col + len(mark), mark))
            node.values["status"] = d.BOX_STATUS[mark]
            self.conv.setdefault("boxes", {}).setdefault(mark, 0)
            self.conv["boxes"][mark] += 1
            start = match.end("mark") + 1
        else:
            keyword = match.group("keyword")
            node.carriers.append(Carrier("status", "keyword", line, match.start("keyword"), match.end("keyword"), keyword))
            node.values["status"] = d.LOGSEQ_KEYWORDS[keyword]
            self.conv.setdefault("keywords", {}).setdefault(keyword, 0)
            self.conv["keywords"][keyword] += 1
            start = match.end("keyword")
            rest = raw[start:]
            prio = re.match(r"[ \t]*(\[#([ABC])\])", rest)
            if prio:
                node.carriers.append(Carrier("priority", "logseq-priority", line, start + prio.start(1), start + prio.end(1), prio.group(1)))
                node.values["priority"] = d.LOGSEQ_PRIORITY[prio.group(2)]
                start += prio.end()
        self._task_text(node, raw, start)
        self._add_node(node, owner)
        self._claim(entry.start, entry.end, node)
        self._claim(line, line + 1, _CLAIMED)
        kids = entry.children
        if kids and kids[0].type == "paragraph":
            # Continuation lines of the entry's first paragraph: Logseq dates and properties, or body.
            for i in range(kids[0].start + 1, kids[0].end):
                self._task_detail_line(node, i)
            rest_blocks = kids[1:]
            node.form["head_end"] = kids[0].end
        else:
            rest_blocks = kids
            node.form["head_end"] = line + 1
        self._owned_blocks(node, rest_blocks)
        self._task_slot(node, entry, nested_default=node.form["content_col"])
        self.regions.append(Region(line, node.end, "task", node.title))

    def _task_detail_line(self, node: ParsedNode, i: int) -> None:
        raw = self.lines[i]
        when = d.LOGSEQ_DATE_LINE.match(raw)
        if when:
            name = "scheduled_date" if when.group("key") == "SCHEDULED" else "due_date"
            self._set(node, name, when.group("date"), Carrier(name, "logseq-date", i, when.start("date"), when.end("date"), when.group("date")))
            if when.group("rest").strip():
                node.carriers.append(Carrier("_weekday", "logseq-weekday", i, when.start("rest"), when.end("rest"), when.group("rest")))
            self._claim(i, i + 1, _CLAIMED)
            return
        prop = d.LOGSEQ_PROPERTY.match(raw)
        if prop and prop.group("key").lower() in d.LOGSEQ_PROPERTY_FIELD:
            name = d.LOGSEQ_PROPERTY_FIELD[prop.group("key").lower()]
            parsed = self._read_value(name, prop.group("value"), i)
            if parsed is not _UNKNOWN:
                self._set(node, name, parsed, Carrier(name, "property", i, prop.start("value"), prop.end("value"), prop.group("value"), whole_line=True))
                self._claim(i, i + 1, _CLAIMED)

    def _task_text(self, node: ParsedNode, raw: str, start: int) -> None:
        """Title and trailing marks of a task line, from column ``start`` on."""
        line = node.line
        end = len(raw.rstrip())
        # Most task lines carry no mark: look at the last character (and for '#' and the
        # free-text signifiers at all) before trying any pattern.
        hashes = "#" in raw
        others = any(mark in raw for mark in d.OBSIDIAN_OTHER)
        while True:
            text = raw[start:end]
            last = text[-1:]
            if not (last.isdigit() or last in _MARK_ENDS or hashes or others) or text.endswith(("**", "__")):
                break  # no mark to read, or a bold title (marks never sit inside the bold)
            m = _SIGNIFIER_DATE.search(text) if last.isdigit() else None
            if m:
                name = d.OBSIDIAN_DATES[m.group("mark")]
                node.carriers.append(Carrier(name, "signifier", line, start + m.start(), start + m.end(), m.group(0)))
                if name in ("due_date", "scheduled_date", "start_date", "created"):
                    if d.read_date(m.group("date"))[0]:
                        node.values.setdefault(name, m.group("date"))
                else:
                    node.values.setdefault(name, m.group("date"))
                self.conv["obsidian"] = True
                end = start + m.start()
                continue
            m = _SIGNIFIER_PRIORITY.search(text) if last in _MARK_ENDS else None
            if m:
                node.carriers.append(Carrier("priority", "signifier", line, start + m.start(), start + m.end(), m.group(0)))
                node.values.setdefault("priority", d.OBSIDIAN_PRIORITY[m.group("mark")])
                self.conv["obsidian"] = True
                end = start + m.start()
                continue
            m = _HASHTAG.search(text) if hashes else None
            if m:
                node.carriers.append(Carrier("tags", "hashtag", line, start + m.start(), start + m.end(), m.group(0)))
                node.values["tags"] = [m.group("tag"), *[t for t in node.values.get("tags", []) if t != m.group("tag")]]
                end = start + m.start()
                continue
            m = _FIRE.search(text) if last == "🔥" else None
            if m and m.start() > 0:
                node.carriers.append(Carrier("priority", "trailing", line, start + m.start(), start + m.end(), m.group(0)))
                # 🔥 marks are more precise than a Logseq [#A] (which cannot say critical).
                if node.values.get("priority") is None or node.carriers_of("priority")[0].form == "logseq-priority":
                    node.values["priority"] = d.FIRE_PRIORITY[m.group("mark")]
                end = start + m.start()
                continue
            m = _TRAILING_STATUS.search(text) if last in _MARK_ENDS else None
            if m:
                mark = m.group("mark")
                node.carriers.append(Carrier("status", "trailing", line, start + m.start(), start + m.end(), m.group(0)))
                boxed = node.values.get("status")
                # A trailing mark says what an empty box or an open keyword cannot (active,
                # paused, writing up); a ticked box stays done.
                if boxed in ("planned", "active") or (boxed == "done" and mark == "✅"):
                    node.values["status"] = d.TRAILING_STATUS[mark]
                end = start + m.start()
                continue
            other = None
            if others:
                for found in _SIGNIFIER_OTHER.finditer(text):
                    other = found
            if other is not None and not _ANY_SIGNIFIER.search(text, other.end()):
                cut = start + other.start()
                while cut > start and raw[cut - 1] in " \t":
                    cut -= 1
                node.carriers.append(Carrier("_kept", "signifier", line, cut, end, raw[cut:end]))
                self.conv["obsidian"] = True
                end = cut
                continue
            break
        text = raw[start:end]
        stripped = text.strip()
        title_start = start + (len(text) - len(text.lstrip()))
        bold = BOLD.match(stripped)
        if bold:
            stripped, title_start = bold.group("inner"), title_start + len(bold.group(1))
            node.form["bold"] = True
        node.title = stripped
        node.title_at = [line, title_start, title_start + len(stripped)]
        node.form["mark_at"] = title_start + len(stripped) + (len(bold.group(1)) if bold else 0)
        node.form["marks_end"] = len(raw.rstrip())

    def _task_annotation(self, owner: ParsedNode, entry: Block, head: Block) -> bool:
        """``- **Note** 2025-11-20: text`` and ``- **成果**: 💻 代码: ref`` under a task or list heading."""
        if not owner.form.get("in_list"):
            return False
        raw = self.lines[entry.start]
        prefix = BULLET_PREFIX.match(raw)
        if not prefix:
            return False
        match = TASK_NOTE.match(raw[prefix.end() :])
        if not match:
            return False
        label = match.group("label").strip().lower()
        first_text = match.group("text")
        more = [self.lines[i] for i in range(entry.start + 1, self._trim_end(entry.start, entry.end))]
        col = _content_column(raw)
        continuation = [_unescape(_dedent(t, col)) for t in more]
        if label in d.NOTE_LABELS:
            text = "\n".join([first_text, *continuation]).strip("\n")
            note = ParsedNote(date=match.group("date"), title=None, text=text, line=entry.start,
                              end=self._trim_end(entry.start, entry.end), form="bullet")
            owner.notes.append(note)
            self._claim(entry.start, entry.end, _CLAIMED)
            return True
        if label in d.OUTCOME_LABELS and not continuation:
            outcome = self._outcome(first_text)
            if outcome is None:
                return False
            owner.outcomes.append(ParsedOutcome(*outcome, line=entry.start, end=entry.start + 1))
            self._claim(entry.start, entry.end, _CLAIMED)
            return True
        return False

    def _outcome(self, text: str) -> tuple[str, str, str] | None:
        match = re.match(r"^(?:(\S+)\s+)?\**([^:：*]+?)\**\s*[:：]\s*(.*)$", text.strip())
        if not match:
            return None
        words = [w for w in (match.group(1), match.group(2)) if w]
        kind = next((OUTCOME_LOOKUP[w.lower()] for w in reversed(words) if w.lower() in OUTCOME_LOOKUP), None)
        if kind is None:
            return None
        ref, _, note = match.group(3).partition(" — ")
        return kind, ref.strip(), note.strip()

    def _task_slot(self, node: ParsedNode, entry: Block, nested_default: int) -> None:
        """Where a new sub-task of ``node`` goes: after its last sub-task, else at its end."""
        tasks = [c for c in node.children if c.kind == "task"]
        raw = self.lines[entry.start]
        quote = QUOTE_PREFIX.match(raw)
        # Entries nested right under this one already set the indentation (tabs, in Logseq).
        nested = next((k for k in entry.children if k.type in ("bullet_list", "ordered_list") and k.children), None)
        if nested is not None:
            first = self.lines[nested.children[0].start]
            node.form["nested_indent"] = first[: len(first) - len(first.lstrip(" \t>"))]
        else:
            node.form["nested_indent"] = (quote.group(0) if quote else "") + " " * nested_default
        if tasks:
            last = tasks[-1]
            prefix = last.form["prefix"]
            indent = prefix[: len(prefix) - len(prefix.lstrip(" \t>"))] if prefix else ""
            node.slots["task"] = Slot(last.end, indent=indent, bullet=_marker(last), after_list=True)
        else:
            node.slots["task"] = Slot(self._trim_end(entry.start, entry.end), indent=node.form["nested_indent"],
                                      bullet=node.form.get("bullet") or "-", after_list=True)

    # ------------------------------------------------------------------ matrix

    def _table_cells(self, line: int) -> list[tuple[str, int, int]]:
        raw = self.lines[line]
        cells, start, i = [], None, 0
        stripped_start = len(raw) - len(raw.lstrip())
        i = stripped_start
        if raw[i : i + 1] == "|":
            i += 1
        start = i
        while i <= len(raw):
            ch = raw[i] if i < len(raw) else "|"
            if ch == "\\" and i + 1 < len(raw):
                i += 2
                continue
            if ch == "|":
                segment = raw[start:i]
                if i < len(raw) or segment.strip():
                    lead = len(segment) - len(segment.lstrip())
                    text = segment.strip()
                    cells.append((text, start + lead, start + lead + len(text)))
                start = i + 1
            i += 1
        return cells

    def _matrix_table(self, block: Block) -> None:
        header = self._table_cells(block.start)
        columns: dict[str, int] = {}
        for index, (cell, _s, _e) in enumerate(header):
            name = d.MATRIX_COLUMN_OF.get(cell.lower())
            if name and name not in columns:
                columns[name] = index
        columns.setdefault("topic", 0)
        rows: list[MatrixRow] = []
        last = block.start + 1
        for line in range(block.start + 2, block.end):
            raw = self.lines[line]
            if not raw.strip():
                continue
            cells = self._table_cells(line)
            last = line
            if len(cells) != len(header):
                self.warn(line, f"matrix row has {len(cells)} cells, the header has {len(header)}; kept as text")
                continue
            values: dict[str, Any] = {}
            spans: dict[str, list[int]] = {}
            for name, index in columns.items():
                text, s, e = cells[index]
                spans[name] = [s, e]
                if name in ("innovation", "practicality", "feasibility"):
                    stars = _count_stars(text)
                    if stars is not None and 1 <= stars <= 5:
                        values[name] = stars
                    elif text:
                        self.warn(line, f"{name} must be 1-5 stars, got {text!r}; kept as text")
                elif name == "score":
                    fires = text.count("🔥")
                    number = re.search(r"\d+(\.\d+)?", text)
                    if fires:
                        values["score"] = float(fires)
                    elif number:
                        values["score"] = float(number.group())
                elif name == "status" and text:
                    found = read_status(text)
                    if found is None:
                        self.warn(line, f"unknown status {text!r}, kept as text")
                    else:
                        values["status"] = found
            rows.append(MatrixRow(cells[columns["topic"]][0], line, values, spans))
        self.matrix = {
            "line": block.start,
            "header": [c for c, _s, _e in header],
            "columns": columns,
            "rows": rows,
            "insert": last + 1,
            "lang": "zh" if any(CJK.search(c) for c, _s, _e in header) else "en",
        }

    def _attach_matrix(self) -> None:
        if not self.matrix:
            return
        candidates = [n for n in self.all_nodes if n.kind == "item"]
        grams_of: dict[int, set[str]] = {}
        taken: set[int] = set()
        for row in self.matrix["rows"]:
            topic = row.topic.strip()
            grams = _bigrams(topic)
            best, best_score = None, 0.0
            for node in candidates:
                if id(node) in taken:
                    continue
                if node.title == topic:
                    score = 2.0
                elif topic and (topic in node.title or node.title in topic):
                    score = 1.5
                else:
                    if id(node) not in grams_of:
                        grams_of[id(node)] = _bigrams(node.title)
                    score = len(grams & grams_of[id(node)]) / len(grams) if grams else 0.0
                if score > best_score:
                    best, best_score = node, score
            if best is None or best_score < 0.5:
                self.warn(row.line, f"matrix row {topic!r} matches no item, kept as text")
                continue
            taken.add(id(best))
            best.form["matrix_topic"] = topic
            best.carriers.append(Carrier("_row", "row", row.line, 0, len(self.lines[row.line]), ""))
            for name, (s, e) in row.cells.items():
                if name == "topic":
                    continue
                best.carriers.append(Carrier(name, "cell", row.line, s, e, self.lines[row.line][s:e]))
                if name in row.values:
                    if name == "status":
                        best.values.setdefault("status", row.values["status"])
                    else:
                        best.values[name] = row.values[name]
        for node in candidates:
            if "score" not in node.values:
                scores = [node.values.get(k) for k in ("innovation", "practicality", "feasibility")]
                if any(v is not None for v in scores):
                    node.values["score"] = composite_score(*scores)

    # ------------------------------------------------------------------ bodies and keys

    def _claim(self, start: int, end: int, owner: Any) -> None:
        for i in range(start, min(end, len(self.lines))):
            self.owner[i] = owner

    def _finish_bodies(self) -> None:
        by_node: dict[int, list[int]] = {}
        for i, owner in enumerate(self.owner):
            if isinstance(owner, ParsedNode):
                by_node.setdefault(id(owner), []).append(i)
        for node in self.all_nodes:
            lines = by_node.get(id(node), [])
            dedent = node.form.get("content_col", 0) if node.form.get("in_list") else 0
            if node.kind == "item" and not node.form.get("list_heading"):
                own_end = node.form.get("own_end", node.end)
                # Blank lines between the blocks of its own content are the item's too.
                head_end = node.form.get("head_end", node.line + 1)
                own = set(lines) | {i for i in range(head_end, own_end) if self.owner[i] is None}
                lines = sorted(i for i in own if i < own_end)
            while lines and not self.lines[lines[-1]].strip():
                lines.pop()
            if lines and node.kind == "item" and RULE.match(self.lines[lines[-1]]) \
                    and lines[-1] == self._last_text_line(node):
                # A thematic break closing the item's own content separates it from what
                # follows; it is layout, not body (one between its text and its tasks is body).
                node.form["rule_line"] = lines.pop()
                while lines and not self.lines[lines[-1]].strip():
                    lines.pop()
            while lines and not self.lines[lines[0]].strip():
                lines.pop(0)
            if node.form.get("in_list"):
                # A list entry's body is read without its common indentation, which depends
                # on where the entry sits (and on its bullet's width), not on what it says.
                widths = [_lead_width(self.lines[i]) for i in lines if self.lines[i].strip()]
                dedent = min(widths, default=dedent)
                node.form["body_indent"] = dedent
            body: list[list] = []
            previous = None
            for i in lines:
                blank = not self.lines[i].strip()
                if blank and body and body[-1][1] == "":
                    previous = i
                    continue
                if previous is not None and i != previous + 1 and body and body[-1][1] != "" and not blank \
                        and not BLOCK_START.match(self.lines[i]):
                    body.append([None, ""])  # a gap held by tasks or fields: keep the paragraphs apart
                text = _dedent(self.lines[i], dedent)
                body.append([i, "" if blank else (text if i in self.literal else _unescape(text))])
                previous = i
            node.body = body
            node.values["body"] = "\n".join(t for _i, t in body)
            self._node_slots(node)

    def _last_text_line(self, node: ParsedNode) -> int:
        end = node.form.get("own_end", node.end) if not node.form.get("list_heading") else node.end
        i = end - 1
        while i > node.line and not self.lines[i].strip():
            i -= 1
        return i

    def _node_slots(self, node: ParsedNode) -> None:
        if not node.form.get("in_list"):
            head_end = node.form.get("head_end", node.line + 1)
            meta = node.slots.get("meta")
            if meta is None or meta.line < head_end:
                meta = Slot(head_end, indent=self.conv.get("label_form", {}).get("prefix", ""))
            # Only the run of field lines right under the heading is the metadata block.
            last_meta = head_end
            for i in range(head_end, node.form.get("own_end", node.end)):
                if self.owner[i] is _CLAIMED and any(c.line == i and c.form in ("label", "timestamp") for c in node.carriers):
                    last_meta = i + 1
                else:
                    break
            node.slots["meta"] = Slot(last_meta, indent=meta.indent)
            own_end = node.form.get("own_end", node.end)
            section_end = node.form.get("section_end", node.end)
            floor = head_end - 1  # a setext heading's underline is part of the heading
            own_trim = self._trim_end(floor, own_end)
            if node.form.get("rule_line") is not None and node.form["rule_line"] < own_end:
                own_trim = self._trim_end(floor, node.form["rule_line"])
            if node.body:
                body_end = max(i for i, _t in node.body if i is not None) + 1
            else:
                body_end = last_meta
            node.slots["body"] = Slot(last_meta)
            node.slots["body_end"] = Slot(body_end)
            if "task" not in node.slots:
                tasks = [c for c in node.children if c.kind == "task"]
                if tasks:
                    last = tasks[-1]
                    prefix = last.form["prefix"]
                    indent = prefix[: len(prefix) - len(prefix.lstrip(" \t>"))]
                    node.slots["task"] = Slot(last.end, indent=indent, bullet=_marker(last), after_list=True)
                else:
                    at = own_trim
                    if node.form.get("outcome_label") is not None:
                        # Before the outcome list: a checklist right after it would join it.
                        at = self._trim_end(floor, node.form["outcome_label"])
                    node.slots["task"] = Slot(at, bullet="")  # the document's usual bullet
            end = section_end
            rule = self._section_rule_at(floor, section_end)
            if rule is not None:
                end = rule
            node.slots["item"] = Slot(self._trim_end(floor, end), level=min(node.level + 1, 6))
            numbers = [c.form["numbered"] for c in node.children if c.kind == "item" and "numbered" in c.form]
            if numbers:
                node.form["child_number"] = max(numbers)
            notes = [n for n in node.notes if n.form == "heading"]
            if notes:
                node.slots["note"] = Slot(notes[-1].end, level=notes[-1].level)
            else:
                # A note heading sits above the item's sub-headings; at their level (not deeper)
                # the first of them ends it, instead of being read as part of the note.
                sub = [c.level for c in node.children if c.kind == "item" and not c.form.get("in_list")]
                node.slots["note"] = Slot(own_trim, level=min(sub[0] if sub else node.level + 1, 6))
            if node.outcomes:
                node.slots["outcome"] = Slot(node.outcomes[-1].end, after_list=True)
            else:
                node.slots["outcome"] = Slot(own_trim)
        else:
            node.slots.setdefault("task", Slot(node.end, indent=" " * node.form.get("content_col", 2), after_list=True))
            node.slots["marks"] = Slot(node.line, level=node.form.get("marks_end", 0))
            if node.body:
                node.slots["body_end"] = Slot(max(i for i, _t in node.body if i is not None) + 1)
            # Notes, outcomes and fields of a list entry go right under its own first lines,
            # before anything nested in it: further down they could land inside a nested entry.
            at = node.form.get("head_end", node.line + 1)
            annotations = [n.end for n in node.notes] + [o.end for o in node.outcomes]
            at = max([at, *annotations])
            node.slots["annotation"] = Slot(at, indent=node.form.get("nested_indent", node.slots["task"].indent), after_list=True)

    def _section_rule_at(self, start: int, end: int) -> int | None:
        """The line of a thematic break closing a section (``---`` before the next heading)."""
        i = end - 1
        while i > start and not self.lines[i].strip():
            i -= 1
        return i if i > start and RULE.match(self.lines[i]) else None

    def _keys(self) -> None:
        def rec(nodes: list[ParsedNode], prefix: list) -> None:
            seen: dict[tuple, int] = {}
            for node in nodes:
                ident = (node.kind, node.title)
                count = seen.get(ident, 0)
                seen[ident] = count + 1
                node.key = [*prefix, [node.kind, node.title, count]]
                rec(node.children, node.key)

        rec(self.nodes, [])

    # ------------------------------------------------------------------ conventions and layout

    def _conventions(self) -> dict[str, Any]:
        conv = self.conv
        votes = conv.pop("lang_votes")
        if votes["zh"] != votes["en"]:
            lang = "zh" if votes["zh"] > votes["en"] else "en"
        else:
            titles = " ".join(n.title for n in self.all_nodes[:200]) + (self.title or "")
            lang = "zh" if CJK.search(titles) else "en"
        bullets: dict[str, int] = {}
        units: dict[str, int] = {}
        heading_levels = [n.level for n in self.nodes if n.kind == "item" and not n.form.get("list_heading")]
        for node in self.all_nodes:
            if node.kind == "task":
                bullet = node.form.get("bullet") or "-"
                bullets[bullet] = bullets.get(bullet, 0) + 1
                parent = node.parent
                if parent is not None and parent.kind == "task":
                    lead = node.form["prefix"][: len(node.form["prefix"]) - len(node.form["prefix"].lstrip(" \t"))]
                    parent_lead = parent.form["prefix"][: len(parent.form["prefix"]) - len(parent.form["prefix"].lstrip(" \t"))]
                    if lead.startswith(parent_lead) and len(lead) > len(parent_lead):
                        unit = lead[len(parent_lead):]
                        units[unit] = units.get(unit, 0) + 1
        boxes = conv.pop("boxes", {})
        done_marks = {m: c for m, c in boxes.items() if d.BOX_STATUS.get(m) == "done"}
        keywords = conv.pop("keywords", {})
        top_rules = self._top_rules()
        notes_section = self.notes_sections[0] if self.notes_sections else None
        dated = [n for n in self.doc_notes if n.form == "heading" and n.date]
        descending = len(dated) >= 2 and all(a.date >= b.date for a, b in zip(dated, dated[1:], strict=False)) and dated[0].date > dated[-1].date
        priority_style, status_style, tag_sep = "fire+word", "emoji+word", "、" if lang == "zh" else ", "
        for node in self.all_nodes:
            for carrier in node.carriers:
                if carrier.form != "label":
                    continue
                if carrier.field == "priority" and "priority_style" not in conv:
                    conv["priority_style"] = priority_style = _value_style(carrier.raw, "🔥")
                if carrier.field == "status" and "status_style" not in conv:
                    conv["status_style"] = status_style = _value_style(carrier.raw, None)
                if carrier.field == "tags" and "tag_separator" not in conv:
                    sep = re.search(r"[、,，;；/|]\s*", carrier.raw)
                    if sep:
                        conv["tag_separator"] = tag_sep = sep.group(0)
        return {
            **conv,
            "lang": lang,
            "eol": self.src.eol,
            "bom": self.bom,
            "bullet": max(bullets, key=bullets.get) if bullets else "-",
            "indent_unit": max(units, key=units.get) if units else None,
            "done_mark": max(done_marks, key=done_marks.get) if done_marks else "x",
            "extended_boxes": any(m in boxes for m in ("/", "-")),
            "logseq": bool(keywords),
            "logseq_now": bool(keywords) and (keywords.get("NOW", 0) + keywords.get("LATER", 0)) > (keywords.get("DOING", 0) + keywords.get("TODO", 0)),
            "obsidian": bool(conv.get("obsidian")),
            "obsidian_done_dates": any(c.field == "done_on" for n in self.all_nodes for c in n.carriers),
            # A new top-level heading must never be a lone H1: that would read back as the title.
            "item_level": heading_levels[0] if heading_levels else 2,
            "section_rules": top_rules,
            "notes_level": dated[0].level if dated else ((notes_section["level"] + 1) if notes_section else 3),
            "notes_descending": descending,
            "priority_style": priority_style,
            "status_style": status_style,
            "tag_separator": tag_sep,
        }

    def _top_rules(self) -> bool:
        """Whether top-level sections are separated by thematic breaks (``---``)."""
        tops = [n for n in self.nodes if n.kind == "item" and not n.form.get("list_heading")]
        if len(tops) < 1:
            return False
        ruled = 0
        for node in tops:
            i = node.line - 1
            while i >= 0 and not self.lines[i].strip():
                i -= 1
            ruled += i >= 0 and bool(RULE.match(self.lines[i]))
        return ruled * 2 >= len(tops) and ruled > 0

    def _layout(self, conv: dict[str, Any]) -> dict[str, Any]:
        n = len(self.lines)
        tops = [node for node in self.nodes if node.kind == "item" and not node.form.get("list_heading")]
        top_tasks = [node for node in self.nodes if node.kind == "task"]
        layout: dict[str, Any] = {"lines": n}
        if tops:
            last = tops[-1]
            floor = last.form.get("head_end", last.line + 1) - 1
            end = self._rule_before(last.form.get("section_end", n), floor)
            layout["item"] = {"line": self._trim_end(floor, end), "level": last.level, "after_items": True}
        else:
            layout["item"] = {"line": self._trim_end(0, n) if n else 0, "level": conv["item_level"], "after_items": False}
        if top_tasks:
            last = top_tasks[-1]
            prefix = last.form["prefix"]
            layout["task"] = {"line": last.end, "indent": prefix[: len(prefix) - len(prefix.lstrip(" \t>"))], "bullet": _marker(last)}
        # New notes of the backlog go beside its dated notes (after the last, or before the
        # first when they run newest first), else at the end of its notes section.
        dated = [note for note in self.doc_notes if note.form == "heading" and note.date]
        if self.notes_sections:
            section = self.notes_sections[0]
            inside = [note for note in dated if section["line"] < note.line < section.get("end", n)]
            dated = inside or dated
        if dated:
            descending = conv["notes_descending"]
            at = dated[0].line if descending else dated[-1].end
            layout["notes"] = {"line": at, "level": dated[0].level, "descending": descending}
        elif self.notes_sections:
            section = self.notes_sections[0]
            at = self._trim_end(section["line"], section.get("end", n))
            layout["notes"] = {"line": at, "level": conv["notes_level"], "descending": False}
        if self.matrix:
            layout["matrix"] = {"line": self.matrix["insert"], "columns": self.matrix["columns"], "header": self.matrix["header"]}
        return layout

    def _rule_before(self, end: int, floor: int = 0) -> int:
        """``end`` moved up past a closing ``---`` and the blank lines around it."""
        i = end - 1
        while i > floor and not self.lines[i].strip():
            i -= 1
        if i > floor and RULE.match(self.lines[i]):
            return i
        return end


_UNKNOWN = object()


def _marker(task: ParsedNode) -> str:
    """A task's list marker: its bullet, or its number and delimiter in an ordered list."""
    if task.form.get("ordered"):
        number = re.search(r"\d{1,9}", task.form["prefix"])
        return f"{number.group() if number else 1}{task.form['ordered']}"
    return task.form.get("bullet") or "-"


def _literal_lines(blocks: list[Block]) -> set[int]:
    """Lines inside code and HTML blocks: their text is never unescaped."""
    out: set[int] = set()
    stack = list(blocks)
    while stack:
        block = stack.pop()
        if block.type in ("fence", "code_block", "html_block"):
            out.update(range(block.start, block.end))
        stack.extend(block.children)
    return out


def _paragraphs(block: Block):
    for child in block.children:
        if child.type == "paragraph":
            yield child
        elif child.type == "blockquote":
            yield from _paragraphs(child)


def _content_column(raw: str) -> int:
    """The column where a list entry's text starts (after its bullet and the spaces after it)."""
    match = CONTENT_START.match(raw)
    if not match:
        return 2
    return _width(match.group(1)) + min(_width(match.group(2)), 4) if _width(match.group(2)) <= 4 else _width(match.group(1)) + 1


def _width(text: str) -> int:
    return len(text.expandtabs(4))


def _lead_width(line: str) -> int:
    """Columns of leading whitespace, tabs to the next multiple of 4 (as CommonMark counts)."""
    lead = line[: len(line) - len(line.lstrip(" \t"))]
    return len(lead.expandtabs(4))


def _dedent(line: str, columns: int) -> str:
    """``line`` without up to ``columns`` of leading whitespace; tabs after it stay tabs."""
    if columns <= 0:
        return line
    rest = line.lstrip(" \t")
    lead = " " * _lead_width(line)
    return lead[min(len(lead), columns) :] + rest


def _unescape(line: str) -> str:
    """Undo the backslash ``render`` puts before a body line that would read as structure."""
    return ESCAPED.sub(r"\1", line, count=1)


def _count_stars(cell: str) -> int | None:
    stars = cell.count("⭐") + cell.count("★")
    if stars:
        return stars
    digits = re.search(r"\d+(\.\d+)?", cell)
    return round(float(digits.group())) if digits else None


def _bigrams(text: str) -> set[str]:
    text = NON_WORD.sub("", text.lower())
    return {text[i : i + 2] for i in range(len(text) - 1)} or ({text} if text else set())


def _value_style(raw: str, mark: str | None) -> str:
    """How a document writes a priority or status value: marks and words, or just one."""
    has_emoji = bool(re.search(r"[\u2300-\u23ff\u2600-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff]", raw))
    has_word = bool(re.search(r"[^\W\d_]", re.sub(r"[\u2300-\u23ff\u2600-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff\ufe0f]", "", raw)))
    if re.fullmatch(r"\s*[Pp]\d\s*", raw):
        return "p"
    if has_emoji and has_word:
        return "fire+word" if mark else "emoji+word"
    if has_emoji:
        return "fire" if mark else "emoji"
    return "word"
