"""Markdown in and out: import, export, sync, docs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from research.cli.app import app
from research.cli.context import JsonOpt, changes, db_path, open_session
from research.errors import ResearchError

# ---------------------------------------------------------------------------
# Markdown in and out


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A Markdown backlog.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would become an item and what stays text; change nothing.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse the file if any value in it is not understood.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Import even if the file is older than the backlog's changes; the file wins conflicts.")] = False,
    doc: Annotated[str | None, typer.Option("--doc", help="The known document this file is (when it moved).")] = None,
) -> None:
    """Import a Markdown backlog as a document.

    Import a Markdown backlog as a document (again: bring the file's edits in).
    """
    from research import render

    progress = None if dry_run else render.LateProgress(f"importing {file}")
    report = None
    if not dry_run and doc is None:
        # A file the backlog does not know yet: written with plain sqlite3, no ORM to load.
        from research.backlog.markdown.importer import import_new_file

        report = import_new_file(db_path(), file, strict=strict, progress=progress)
    if report is None:
        from research.backlog.markdown import documents

        with changes() as (session, log):
            report = documents.import_file(session, log, file, name=doc, strict=strict, force=force, progress=progress)
            if dry_run:
                session.rollback()
    if dry_run:
        from research.backlog.markdown.importer import read_document_file

        _file, parsed = read_document_file(file)
        render.write_outline(parsed)
    for line in report.warnings:
        typer.echo(line, err=True)
    prefix = "would import" if dry_run else "imported"
    kind = " (new document)" if report.new_document else ""
    typer.echo(f"{prefix} {file}{kind}: {report.summary()}", err=True)
    for line in report.details():
        typer.echo(f"  {line}", err=True)


@app.command()
def export(
    format_: Annotated[str, typer.Option("--format", "-f", help="md or json.")] = "md",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout (a file it replaces is kept as FILE.bak).")] = None,
    doc: Annotated[str | None, typer.Option("--doc", help="Which document (see `research docs`); needed when there are several.")] = None,
) -> None:
    """Export a document as Markdown (or all as JSON).

    Export a document as Markdown, as it was written plus the backlog's changes (or all as JSON).
    """
    from research import render
    from research.files import check_writable_target, write_text_file

    if format_ not in ("md", "json"):
        raise ResearchError(f"unknown format {format_!r}; use md or json")
    if output:
        check_writable_target(output)
    loose = 0
    if format_ == "json":
        from research.backlog.items import export_json

        with open_session() as session:
            text = export_json(session)
    else:
        text, chosen, loose = _export_markdown(doc)
    if output:
        written = write_text_file(output, text, backup=True)
        note = f" (previous version kept as {written.backup})" if written.backup else ""
        typer.echo(f"wrote {written.path}{note}", err=True)
    else:
        sys.stdout.write(text)
    if loose:
        render.info(f"{loose} item(s) in no document are not in this export (`research mv ITEM --doc NAME` moves one in)")


def _export_markdown(doc: str | None):
    """Markdown export reads SQLite directly (no ORM), like `list`: it is run often."""
    from research import clock
    from research.backlog.markdown import reader
    from research.backlog.markdown.export import export_text
    from research.store.db import connect_raw

    path = db_path()  # (checks the file and its schema first)
    conn = connect_raw(path)
    try:
        text, chosen = export_text(conn, doc, clock.now().astimezone().date().isoformat())
        loose = reader.loose_items(conn) if chosen is not None else 0
    finally:
        conn.close()
    return text, chosen, loose


@app.command()
def sync(
    file: Annotated[Path, typer.Argument(help="An imported Markdown document.")],
    prefer: Annotated[str | None, typer.Option("--prefer", help="Who wins a field changed on both sides: file or backlog.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would change on both sides; change nothing.")] = False,
    doc: Annotated[str | None, typer.Option("--doc", help="The known document this file is (when it moved).")] = None,
) -> None:
    """Sync a Markdown document with the backlog, both ways.

    Bring the file's edits into the backlog and write the backlog's changes into the file, in place.
    """
    from research.backlog.markdown import documents

    if prefer not in (None, "file", "backlog"):
        raise ResearchError(f"--prefer must be file or backlog, not {prefer!r}")
    with changes() as (session, log):
        report = documents.sync_file(session, log, file, prefer=prefer, name=doc, dry_run=dry_run)
        if dry_run:
            session.rollback()
    for line in report.warnings:
        typer.echo(line, err=True)
    for conflict in report.conflicts:
        typer.echo(f"conflict (the {prefer} wins): {conflict.line()}", err=True)
    verb = "would sync" if dry_run else "synced"
    typer.echo(f"{verb} {file}: from the file {report.summary()}", err=True)
    for line in report.details():
        typer.echo(f"  {line}", err=True)
    if report.written:
        extra = f" (previous version kept as {report.backup})" if report.backup else ""
        typer.echo(f"wrote the backlog's changes into {report.written}{extra}", err=True)
    elif not dry_run:
        typer.echo("the file already says what the backlog says", err=True)
    elif report.written_changes:
        typer.echo("the backlog's changes would be written into the file", err=True)


@app.command()
def docs(
    main: Annotated[str | None, typer.Option("--main", help="Make this document the main one (new top-level items join it).")] = None,
    json_: JsonOpt = False,
) -> None:
    """List the imported Markdown documents."""
    from research import render
    from research.backlog.markdown import documents, reader
    from research.store.db import raw_connection

    if main:
        with changes() as (session, log):
            documents.set_main(session, log, documents.resolve_document(session, main))
    with open_session() as session:
        rows = documents.document_summaries(session)
        loose = reader.loose_items(raw_connection(session))
    if json_:
        render.print_json(rows)
        return
    if not rows:
        render.info("No documents: `research import FILE.md` brings one in.")
    for row in rows:
        mark = "*" if row["main"] else " "
        since = f", {row['changes_since_sync']} change(s) since" if row["changes_since_sync"] else ""
        typer.echo(f"{mark} {row['name']}\t{row['items']} items\t{row['title'] or ''}\tsynced {row['synced_at'][:16].replace('T', ' ')}{since}")
    if loose:
        render.info(f"{loose} item(s) in no document")


# ---------------------------------------------------------------------------
