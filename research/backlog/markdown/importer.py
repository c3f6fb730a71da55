"""Importing a new Markdown document without the ORM, and what an import or a sync reports.

`research import` of a file the backlog does not know yet is the common, large case (a
researcher's whole backlog on day one): it reads and parses the file and writes the rows
with plain sqlite3 in one transaction (``writer``). A known document's re-import merges
field by field and needs the ORM (``documents``).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from research.backlog.markdown import writer
from research.backlog.markdown.parse import parse_document
from research.backlog.rules import next_batch
from research.errors import ResearchError
from research.files import read_text_file


@dataclass
class Conflict:
    item: str
    field: str
    file_value: Any
    backlog_value: Any

    def line(self) -> str:
        return f"{self.item}: {self.field}: file {_show(self.file_value)}, backlog {_show(self.backlog_value)}"


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list):
        return ", ".join(value) or "(none)"
    text = str(value)
    return repr(text if len(text) < 60 else text[:57] + "...")


@dataclass
class Report:
    document: str
    new_document: bool = False
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    notes_added: int = 0
    notes_changed: int = 0
    notes_removed: int = 0
    outcomes_added: int = 0
    written_changes: int = 0  # sync: backlog changes written into the file
    warnings: list[str] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    written: Path | None = None
    backup: Path | None = None

    def summary(self) -> str:
        parts = [f"{len(self.added)} added", f"{len(self.changed)} changed"]
        if self.removed:
            parts.append(f"{len(self.removed)} removed")
        parts.append(f"{self.unchanged} unchanged")
        parts.append(f"{self.notes_added} note(s) added")
        if self.notes_changed:
            parts.append(f"{self.notes_changed} note(s) changed")
        if self.notes_removed:
            parts.append(f"{self.notes_removed} note(s) removed")
        if self.outcomes_added:
            parts.append(f"{self.outcomes_added} outcome(s) added")
        return ", ".join(parts)

    def details(self, limit: int = 20) -> list[str]:
        out = [f"changed: {p}" for p in self.changed[:limit]]
        if len(self.changed) > limit:
            out.append(f"... and {len(self.changed) - limit} more changed")
        out += [f"removed: {p}" for p in self.removed[:limit]]
        return out


def read_document_file(path: Path, *, strict: bool = False):
    file = read_text_file(path)
    parsed = parse_document(file.text, source=str(path), bom=file.bom)
    if strict and parsed.warnings:
        first = parsed.messages()[0]
        raise ResearchError(f"{first} (refused: --strict)")
    return file, parsed



@contextmanager
def cycle_collector_paused() -> Iterator[None]:
    """Parsing a large document builds about a hundred objects per item, all alive until
    its rows are written and none of them garbage; each full collection would walk them
    all again, which made a 40,000-item import grow faster than linearly."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def import_new_file(db_path: Path, path: Path, *, strict: bool = False, progress=None) -> Report | None:
    """Import ``path`` as a new document; None (nothing done) when it is already one."""
    with cycle_collector_paused():
        return _import_new_file(db_path, path, strict, progress)


def _import_new_file(db_path: Path, path: Path, strict: bool, progress) -> Report | None:
    from research.store.db import connect_raw, ensure_schema, immediate

    file, parsed = read_document_file(path, strict=strict)
    ensure_schema(db_path)
    conn = connect_raw(db_path)
    try:
        with immediate(conn):
            full = str(Path(path).resolve())
            if conn.execute("SELECT 1 FROM document WHERE path = ?", (full,)).fetchone() is not None:
                return None  # (nothing written: the commit is empty)
            report = Report(document=str(path), new_document=True)
            report.warnings = parsed.messages()
            _doc_id, rows = writer.create_document(conn, next_batch(conn), str(path), full, file, parsed,
                                                   report.added, progress)
            report.notes_added, report.outcomes_added = rows.notes_added, rows.outcomes_added
        return report
    finally:
        conn.close()
