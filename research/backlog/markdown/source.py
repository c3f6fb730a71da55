"""A document's text as lines with their own line endings, and edits made to it by line and column.

Lines are split exactly as markdown-it splits them (``\\r\\n``, ``\\r`` or ``\\n``), so the
line numbers in its token maps index this list; each line keeps its ending, so joining
the lines gives back the text byte for byte.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass
class SourceLines:
    lines: list[str]  # without their endings
    ends: list[str]  # "\n", "\r\n", "\r", or "" for a last line without one

    @classmethod
    def from_text(cls, text: str) -> SourceLines:
        lines, ends, pos = [], [], 0
        for match in _LINE_BREAK.finditer(text):
            lines.append(text[pos : match.start()])
            ends.append(match.group())
            pos = match.end()
        if pos < len(text):
            lines.append(text[pos:])
            ends.append("")
        return cls(lines, ends)

    @property
    def eol(self) -> str:
        """The document's usual line ending, for lines we add."""
        counts = Counter(e for e in self.ends if e)
        return counts.most_common(1)[0][0] if counts else "\n"

    def text(self) -> str:
        return "".join(line + end for line, end in zip(self.lines, self.ends, strict=True))

    def __len__(self) -> int:
        return len(self.lines)


@dataclass(order=True)
class _Insert:
    at: int
    rank: tuple
    lines: list[str] = field(compare=False)
    block: bool = field(compare=False)  # keep a blank line on both sides


class Edits:
    """Changes to a SourceLines, all expressed against its original line numbers.

    Column edits replace part of a line; deletions drop whole lines; insertions add lines
    before a line (``at == len(lines)`` appends). ``apply`` makes them all at once, so
    every edit can be planned from the original positions.
    """

    def __init__(self, source: SourceLines):
        self.source = source
        self._columns: dict[int, list[tuple[int, int, str]]] = {}
        self._deleted: set[int] = set()
        self._inserts: list[_Insert] = []

    def replace(self, line: int, start: int, end: int, text: str) -> None:
        self._columns.setdefault(line, []).append((start, end, text))

    def delete(self, start: int, end: int) -> None:
        self._deleted.update(range(start, end))

    def insert(self, at: int, lines: list[str], rank: tuple = (), block: bool = False) -> None:
        if lines:
            self._inserts.append(_Insert(at, rank, list(lines), block))

    def deleted(self, line: int) -> bool:
        return line in self._deleted

    def inserted_before(self, line: int) -> list[list[str]]:
        """The groups of lines inserted so far before ``line``."""
        return [insert.lines for insert in self._inserts if insert.at == line]

    @property
    def empty(self) -> bool:
        return not (self._columns or self._deleted or self._inserts)

    def apply(self) -> str:
        src = self.source
        eol = src.eol
        out: list[str] = []  # lines without endings
        out_ends: list[str] = []
        inserts: dict[int, list[_Insert]] = {}
        for ins in sorted(self._inserts):
            inserts.setdefault(ins.at, []).append(ins)

        def emit(text: str, end: str) -> None:
            if out_ends and out_ends[-1] == "":
                out_ends[-1] = eol  # the old last line gains an ending before new lines follow
            out.append(text)
            out_ends.append(end)

        def emit_inserts(at: int) -> None:
            for ins in inserts.get(at, []):
                if ins.block and out and out[-1].strip():
                    emit("", eol)
                for text in ins.lines:
                    emit(text, eol)
                if ins.block and _next_kept_line_nonblank(at):
                    emit("", eol)

        def _next_kept_line_nonblank(at: int) -> bool:
            for index in range(at, len(src.lines)):
                if index not in self._deleted:
                    return bool(src.lines[index].strip())
            return False

        for index, line in enumerate(src.lines):
            emit_inserts(index)
            if index in self._deleted:
                continue
            for start, end, text in sorted(self._columns.get(index, []), reverse=True):
                line = line[:start] + text + line[end:]
            emit(line, src.ends[index])
        emit_inserts(len(src.lines))
        if out_ends and src.ends and src.ends[-1] and out_ends[-1] == "":
            out_ends[-1] = eol
        if out_ends and src.ends and not src.ends[-1] and inserts.get(len(src.lines)):
            out_ends[-1] = ""  # the document ended without a newline: so does the new text
        return "".join(text + end for text, end in zip(out, out_ends, strict=True))
