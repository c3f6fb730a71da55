"""Backlog commands: init, add, list, show, edit, mv, rm, status changes, notes, undo."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from research.cli.app import app, state
from research.cli.context import (
    BodyOpt,
    EstimateOpt,
    IdArg,
    JsonOpt,
    PriorityOpt,
    ScoreOpt,
    StatusOpt,
    TagOpt,
    changes,
    db_path,
    recover_runs,
)
from research.errors import ResearchError

# ---------------------------------------------------------------------------
# Setting up


@app.command()
def init(
    empty: Annotated[bool, typer.Option("--empty", help="Do not add the shipped experiments to the backlog.")] = False,
) -> None:
    """Create ./todo.db, or upgrade the one that exists.

    Create ./todo.db (idempotent: an existing database is kept and upgraded).
    """
    from research.store.db import create_database, init_target
    from research.store.doctor import describe_made

    path = init_target(state.db)
    created, repaired = create_database(path)
    added: list[str] = []
    project = None
    if not empty:
        from research.experiments_catalog import add_shipped_experiments
        from research.runs.links import find_project
        from research.store.db import session_scope

        project = find_project(path)
        with session_scope(path, write=True) as session:
            added = add_shipped_experiments(session, project_root=project)
    if repaired:
        typer.echo(f"Repaired {path}: recreated {describe_made(repaired)} (dropped by hand?)", err=True)
    else:
        typer.echo(f"{'Created' if created else 'Already initialised:'} {path}", err=True)
    for slug in added:
        typer.echo(f"  added experiment item {slug}", err=True)
    if added and project is None:
        typer.echo("no project (a folder with notebooks/) here, above or beside the database: the experiment "
                   "items have no notebook; `research link ITEM NOTEBOOK` from the project links one", err=True)


# ---------------------------------------------------------------------------
# Items


def _fields(
    title=None, body=None, status=None, priority=None, estimate=None, tags=None, innovation=None,
    practicality=None, feasibility=None, slug=None, kind=None, due=None, scheduled=None,
):
    from research.backlog.rules import ItemFields

    return ItemFields(
        title=title, body=body, status=status, priority=priority, estimate=estimate, tags=tags,
        innovation=innovation, practicality=practicality, feasibility=feasibility, slug=slug, kind=kind,
        due_date=due, scheduled_date=scheduled,
    )


DueOpt = Annotated[str | None, typer.Option("--due", metavar="DATE", help="Due date YYYY-MM-DD ('' clears it).")]
ScheduledOpt = Annotated[str | None, typer.Option("--scheduled", metavar="DATE", help="Scheduled date YYYY-MM-DD ('' clears it).")]


@app.command()
def add(
    title: Annotated[str, typer.Argument(help="Title of the new item.")],
    parent: Annotated[str | None, typer.Option("--parent", "-p", metavar="ITEM", help="Parent item id or slug.")] = None,
    priority: PriorityOpt = None,
    estimate: EstimateOpt = None,
    tag: TagOpt = None,
    status: StatusOpt = None,
    body: BodyOpt = None,
    task: Annotated[bool, typer.Option("--task", help="Add a checklist task rather than an item.")] = False,
    slug: Annotated[str | None, typer.Option("--slug", help="Explicit slug (default: from the title).")] = None,
    innovation: ScoreOpt = None,
    practicality: ScoreOpt = None,
    feasibility: ScoreOpt = None,
    due: DueOpt = None,
    scheduled: ScheduledOpt = None,
) -> None:
    """Add an item (or, with --task, a checklist task) to the backlog."""
    from research.backlog.rules import insert_item, next_batch
    from research.backlog.views import find_item_id
    from research.store.db import connect_raw, immediate

    # Plain sqlite3 in one transaction, like the row reader: no ORM to load for one row.
    conn = connect_raw(db_path())  # (db_path checks the file and its schema first)
    try:
        with immediate(conn):
            parent_row = None
            if parent:
                parent_row = conn.execute("SELECT id, title FROM item WHERE id = ?", (find_item_id(conn, parent),)).fetchone()
            fields = _fields(title, body, status, priority, estimate, tag, innovation, practicality, feasibility, slug,
                             "task" if task else None, due, scheduled)
            item = insert_item(conn, next_batch(conn), fields, parent_row[0] if parent_row else None)
    finally:
        conn.close()
    where = f" under {parent_row[0]} {parent_row[1]!r}" if parent_row else " at the top level"
    # stdout stays "ID<tab>SLUG" for scripts; the sentence is for the reader.
    typer.echo(f"{item['id']}\t{item['slug']}")
    typer.echo(f"added {item['kind']} {item['id']} {item['title']!r}{where} ({item['status']})", err=True)


@app.command("list")
def list_(
    status: Annotated[list[str] | None, typer.Option("--status", "-s", help="Only these statuses (repeatable).")] = None,
    priority: PriorityOpt = None,
    tag: Annotated[str | None, typer.Option("--tag", "-t", help="Only items with this tag.")] = None,
    under: Annotated[str | None, typer.Option("--under", "-u", help="Only descendants of this item.")] = None,
    search: Annotated[str | None, typer.Option("--search", "-q", help="Text in the title or body.")] = None,
    due_before: Annotated[str | None, typer.Option("--due-before", metavar="DATE", help="Only items due on or before this date (YYYY-MM-DD).")] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include done and dropped items.")] = False,
    tree: Annotated[bool, typer.Option("--tree", help="Show the hierarchy with checklist progress.")] = False,
    tasks: Annotated[bool, typer.Option("--tasks", help="List checklist tasks too (by default an item shows their progress; --search and --due-before look at tasks as well).")] = False,
    sort: Annotated[str, typer.Option("--sort", help="score, priority, updated or created.")] = "priority",
    json_: JsonOpt = False,
) -> None:
    """List open items (all with --all), as a table, a tree or JSON.

    Checklist tasks are counted in their item's Done column; --tasks lists them as rows too,
    and so do --search and --due-before (due dates and words often sit on tasks).
    """
    from research import render
    from research.backlog.views import Backlog, item_summary, list_filter, list_rows

    backlog = Backlog.load_file(db_path())
    spec = list_filter(backlog, statuses=status, priority=priority, tag=tag, under=under, search=search,
                       due_before=due_before, include_closed=all_, tasks=tasks)
    rows = list_rows(backlog, spec, sort, tree=tree and not json_)
    if json_:
        render.print_json([item_summary(row.item, backlog) for row in rows])
        return
    if not rows:
        render.info("No items match." if backlog.items else "The backlog is empty: `research add TITLE` or `research import FILE.md`.")
        return
    render.write_items_table(rows, tree=tree)


@app.command()
def show(item_id: IdArg, json_: JsonOpt = False) -> None:
    """Everything about an item.

    Everything about an item: fields, checklist, runs, notes, outcomes, history.
    """
    from research import render
    from research.backlog.views import find_item_id, item_detail
    from research.runs.summary import runs_for_show
    from research.store.db import connect_raw

    recover_runs()  # (it checks the schema first)
    conn = connect_raw(db_path())
    try:
        detail = item_detail(conn, find_item_id(conn, item_id))
        runs_for_show(conn, detail["id"], detail["slug"], detail)
    finally:
        conn.close()
    if json_:
        detail.pop("runs_lines", None)
        detail.pop("links_lines", None)
        render.print_json(detail)
    else:
        render.show_item(detail)


@app.command()
def edit(
    item_id: IdArg,
    title: Annotated[str | None, typer.Option("--title", help="New title.")] = None,
    priority: PriorityOpt = None,
    estimate: EstimateOpt = None,
    tag: TagOpt = None,
    status: StatusOpt = None,
    body: BodyOpt = None,
    slug: Annotated[str | None, typer.Option("--slug", help="New slug.")] = None,
    innovation: ScoreOpt = None,
    practicality: ScoreOpt = None,
    feasibility: ScoreOpt = None,
    due: DueOpt = None,
    scheduled: ScheduledOpt = None,
) -> None:
    """Change an item's fields (only the options given)."""
    from research.backlog.items import edit_item, resolve_item

    with changes() as (session, log):
        item = resolve_item(session, item_id)
        fields = _fields(title, body, status, priority, estimate, tag, innovation, practicality, feasibility, slug,
                         due=due, scheduled=scheduled)
        changed = edit_item(session, log, item, fields)
        typer.echo(f"{item.id}\t{item.slug}\t{'changed' if changed else 'unchanged'}")


@app.command()
def mv(
    item_id: IdArg,
    parent: Annotated[str | None, typer.Option("--parent", "-p", metavar="ITEM", help="New parent id or slug.")] = None,
    top: Annotated[bool, typer.Option("--top", help="Move to the top level.")] = False,
    doc: Annotated[str | None, typer.Option("--doc", help="Move to the top level of this document.")] = None,
) -> None:
    """Move an item under another parent or into a document.

    Move an item (with its children) under another parent, or into a document.
    """
    from research.backlog.items import move_item, resolve_item
    from research.backlog.rules import INHERIT

    if sum(bool(x) for x in (parent, top, doc)) != 1:
        raise ResearchError("give one of --parent ID, --top or --doc NAME")
    with changes() as (session, log):
        item = resolve_item(session, item_id)
        new_parent = resolve_item(session, parent) if parent else None
        document_id = INHERIT
        if doc:
            from research.backlog.markdown.documents import resolve_document

            document_id = resolve_document(session, doc).id
        move_item(session, log, item, new_parent, document_id=document_id)
        typer.echo(f"{item.id}\t{item.slug}\tmoved")


@app.command()
def rm(
    item_id: IdArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an item and everything under it.

    Delete an item with its children, notes and outcomes (`research undo` restores them).
    """
    from research.backlog.items import delete_item, resolve_item, subtree

    with changes() as (session, log):
        item = resolve_item(session, item_id)
        count = len(subtree(session, item))
        if not yes:
            from research.cli.ask import confirm

            extra = f" and {count - 1} descendant(s)" if count > 1 else ""
            confirm(f"Delete {item.id} “{item.title}”{extra}?", "refusing to delete without confirmation; pass --yes")
        removed = delete_item(session, log, item)
    typer.echo(f"deleted {removed} item(s)", err=True)


def _set_status(item_id: str, status: str, action: str = "status", force: bool = True) -> None:
    """``force=False`` (check, uncheck): an item that is not a checklist task needs a yes or --force."""
    from research.backlog.items import not_a_task, resolve_item, set_status

    with changes() as (session, log):
        item = resolve_item(session, item_id)
        concern = None if force else not_a_task(session, item)
        if concern:
            from research.cli.ask import confirm

            confirm(f"{concern}; {action} it anyway?", f"{concern}; pass --force to {action} it")
        before = item.status
        changed = set_status(session, log, item, status, action=action)
        typer.echo(f"{item.id}\t{item.slug}\t{before} → {item.status}" if changed else f"{item.id}\t{item.slug}\talready {item.status}")


@app.command()
def start(item_id: IdArg) -> None:
    """Mark an item active (🚀)."""
    _set_status(item_id, "active")


@app.command()
def pause(item_id: IdArg) -> None:
    """Mark an item paused (⏸️)."""
    _set_status(item_id, "paused")


@app.command()
def done(
    item_id: IdArg,
    outcome: Annotated[list[str] | None, typer.Option("--outcome", "-o", help="KIND:REF, kind one of document, code, application, related (repeatable).")] = None,
    text: Annotated[str | None, typer.Option("--text", help="A sentence on what the outcome is.")] = None,
) -> None:
    """Mark an item done (✅), optionally recording what it produced."""
    from research.backlog.items import add_outcome, parse_outcome_spec, resolve_item, set_status

    with changes() as (session, log):
        item = resolve_item(session, item_id)
        specs = [parse_outcome_spec(s) for s in outcome or []]
        set_status(session, log, item, "done")
        for kind, ref in specs:
            add_outcome(session, log, item, kind, ref, text or "")
        typer.echo(f"{item.id}\t{item.slug}\tdone" + (f" (+{len(specs)} outcome(s))" if specs else ""))


@app.command()
def drop(item_id: IdArg) -> None:
    """Mark an item dropped."""
    _set_status(item_id, "dropped")


@app.command("status")
def status_(item_id: IdArg, status: Annotated[str, typer.Argument(help="The new status.")]) -> None:
    """Set an item's status to any of the six states."""
    _set_status(item_id, status)


ForceTaskOpt = Annotated[bool, typer.Option("--force", help="Do it to an item that is not a checklist task, without asking.")]


@app.command()
def check(item_id: IdArg, force: ForceTaskOpt = False) -> None:
    """Tick a checklist task.

    Tick a checklist task; anything that is not one asks first, or needs --force.
    """
    _set_status(item_id, "done", action="check", force=force)


@app.command()
def uncheck(item_id: IdArg, force: ForceTaskOpt = False) -> None:
    """Untick a checklist task.

    Untick a checklist task; anything that is not one asks first, or needs --force.
    """
    _set_status(item_id, "planned", action="uncheck", force=force)


@app.command()
def note(
    args: Annotated[list[str] | None, typer.Argument(help="[ID] TEXT; with no TEXT, $EDITOR opens.", show_default=False)] = None,
    date: Annotated[str | None, typer.Option("--date", help="File the note under this date (YYYY-MM-DD).")] = None,
) -> None:
    """Write a dated note on an item, or on the backlog as a whole."""
    from research.backlog.items import add_note, resolve_item

    args = list(args or [])
    if date:
        _check_date(date)
    with changes() as (session, log):
        item = None
        if len(args) >= 2:
            item = resolve_item(session, args[0])
            text = " ".join(args[1:])
        elif len(args) == 1:
            try:
                item = resolve_item(session, args[0])
                text = None
            except ResearchError:
                text = args[0]
        else:
            text = None
        if text is None:
            text = _edit_text()
        created = add_note(session, log, item, text, date=date)
        typer.echo(f"note {created.id}" + (f" on {item.slug}" if item else ""))


def _check_date(text: str) -> None:
    from datetime import date

    try:
        date.fromisoformat(text)
    except ValueError:
        raise ResearchError(f"bad date {text!r}; use YYYY-MM-DD") from None


def _edit_text() -> str:
    if not sys.stdin.isatty() and not os.environ.get("EDITOR"):
        raise ResearchError("no note text given and no $EDITOR to write one")
    import shlex
    import subprocess
    import tempfile

    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w+", suffix=".md", delete=False, encoding="utf-8") as fh:
        fh.write("\n# Write the note above. Lines starting with # are ignored.\n")
        path = fh.name
    try:
        code = subprocess.call([*shlex.split(editor), path])
        if code != 0:
            raise ResearchError(f"note cancelled: {editor} exited with status {code}")
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResearchError(f"editor not found: {editor}") from None
    finally:
        Path(path).unlink(missing_ok=True)
    text = "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()
    if not text:
        raise ResearchError("note cancelled: empty text")
    return text


@app.command()
def undo(
    with_runs: Annotated[bool, typer.Option("--with-runs", help="Also delete runs made since on items the change created.")] = False,
) -> None:
    """Revert the last change.

    Revert the last change (any command, an import or a delete included).
    """
    from research.backlog.items import describe_undo, undo_last

    with changes() as (session, _log):
        batch, events = undo_last(session, with_runs=with_runs)
        actions = sorted({e.action for e in events if e.action != "touched"})
        details = describe_undo(session, events)
    typer.echo(f"undid change {batch}: {len(events)} row change(s) ({', '.join(actions)})", err=True)
    for line in details:
        typer.echo(f"  {line}", err=True)
