"""The `research` command line: parsing and printing only; the work lives in the library.

Heavy modules (sqlmodel, rich tables, papermill, torch) are imported inside the
commands that need them so `research --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from research.errors import ResearchError

DEBUG_ENV = "RESEARCH_DEBUG"


class ResearchGroup(TyperGroup):
    """Turns ResearchError into one line on stderr and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ResearchError as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            typer.echo(f"Error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            ctx.exit(130)


def _typer(help_text: str) -> typer.Typer:
    return typer.Typer(
        cls=ResearchGroup,
        help=help_text,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


app = _typer("A research backlog with runnable experiment notebooks.")


class State:
    db: str | None = None


state = State()


@app.callback()
def _global(
    db: Annotated[str | None, typer.Option("--db", help="Database file (default: $RESEARCH_DB, else the nearest todo.db).")] = None,
) -> None:
    """A research backlog with runnable experiment notebooks."""
    state.db = db


def db_path() -> Path:
    from research.store.db import find_database

    return find_database(state.db)


def _session(write: bool = False):
    from research.store.db import session_scope

    return session_scope(db_path(), write=write)


def _changes(write_message: str | None = None):
    """A write session plus a ChangeLog, for commands that change the backlog."""
    from contextlib import contextmanager

    from research.backlog.items import ChangeLog

    @contextmanager
    def scope():
        with _session(write=True) as session:
            yield session, ChangeLog(session)

    return scope()


# Shared option types
IdArg = Annotated[str, typer.Argument(help="Item id or slug.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (stable keys).")]
PriorityOpt = Annotated[str | None, typer.Option("--priority", "-P", help="low, medium, high (🔥) or critical (🔥🔥).")]
EstimateOpt = Annotated[str | None, typer.Option("--estimate", "-e", help="Free text such as '2-3天' or '3-4 days'.")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", "-t", help="Area or tag (repeatable).")]
StatusOpt = Annotated[str | None, typer.Option("--status", "-s", help="planned, active, paused, done, writing-up or dropped.")]
BodyOpt = Annotated[str | None, typer.Option("--body", "-b", help="Markdown body: description, questions, ideas.")]
ScoreOpt = Annotated[int | None, typer.Option(min=1, max=5)]


# ---------------------------------------------------------------------------
# Setting up


@app.command()
def init(
    empty: Annotated[bool, typer.Option("--empty", help="Do not add the shipped experiments to the backlog.")] = False,
) -> None:
    """Create ./todo.db (idempotent: an existing database is kept and upgraded)."""
    from research.store.db import create_database, init_target

    path = init_target(state.db)
    created = create_database(path)
    added: list[str] = []
    if not empty:
        from research.experiments_catalog import add_shipped_experiments
        from research.store.db import session_scope

        with session_scope(path, write=True) as session:
            added = add_shipped_experiments(session, project_root=path.resolve().parent)
    verb = "Created" if created else "Already initialised:"
    typer.echo(f"{verb} {path}", err=True)
    for slug in added:
        typer.echo(f"  added experiment item {slug}", err=True)


# ---------------------------------------------------------------------------
# Items


def _fields(
    title=None, body=None, status=None, priority=None, estimate=None, tags=None, innovation=None,
    practicality=None, feasibility=None, slug=None, kind=None, due=None, scheduled=None,
):
    from research.backlog.items import ItemFields

    return ItemFields(
        title=title, body=body, status=status, priority=priority, estimate=estimate, tags=tags,
        innovation=innovation, practicality=practicality, feasibility=feasibility, slug=slug, kind=kind,
        due_date=due, scheduled_date=scheduled,
    )


DueOpt = Annotated[str | None, typer.Option("--due", help="Due date YYYY-MM-DD ('' clears it).")]
ScheduledOpt = Annotated[str | None, typer.Option("--scheduled", help="Scheduled date YYYY-MM-DD ('' clears it).")]


@app.command()
def add(
    title: Annotated[str, typer.Argument(help="Title of the new item.")],
    parent: Annotated[str | None, typer.Option("--parent", "-p", help="Parent item id or slug.")] = None,
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
    from research.backlog.items import add_item, resolve_item

    with _changes() as (session, log):
        parent_item = resolve_item(session, parent) if parent else None
        fields = _fields(title, body, status, priority, estimate, tag, innovation, practicality, feasibility, slug,
                         "task" if task else None, due, scheduled)
        item = add_item(session, log, fields, parent=parent_item)
        typer.echo(f"{item.id}\t{item.slug}")


@app.command("list")
def list_(
    status: Annotated[list[str] | None, typer.Option("--status", "-s", help="Only these statuses (repeatable).")] = None,
    priority: PriorityOpt = None,
    tag: Annotated[str | None, typer.Option("--tag", "-t", help="Only items with this tag.")] = None,
    under: Annotated[str | None, typer.Option("--under", "-u", help="Only descendants of this item.")] = None,
    search: Annotated[str | None, typer.Option("--search", "-q", help="Text in the title or body.")] = None,
    due_before: Annotated[str | None, typer.Option("--due-before", help="Only items due on or before this date (YYYY-MM-DD).")] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include done and dropped items.")] = False,
    tree: Annotated[bool, typer.Option("--tree", help="Show the hierarchy with checklist progress.")] = False,
    sort: Annotated[str, typer.Option("--sort", help="score, priority, updated or created.")] = "priority",
    json_: JsonOpt = False,
) -> None:
    """List open items (all with --all), as a table, a tree or JSON."""
    from research import render
    from research.backlog.views import Backlog, ListFilter, filter_items, item_summary, sort_key

    backlog = Backlog.load_file(db_path())
    spec = ListFilter(
        statuses=status or [], priority=priority, tag=tag,
        under=backlog.find(under) if under else None, search=search, include_closed=all_,
        due_before=_due_before(due_before),
    )
    keep = filter_items(backlog, spec)
    key = sort_key(sort)
    if json_:
        render.print_json([item_summary(i, backlog) for i in sorted(keep, key=key)])
        return
    if not keep:
        render.info("No items match." if backlog.items else "The backlog is empty: `research add TITLE` or `research import FILE.md`.")
        return
    if tree:
        wanted = {i.id for i in keep}
        root = spec.under.id if spec.under else None
        rows = [backlog.row(item, depth) for item, depth in backlog.walk(root) if item.id in wanted]
    else:
        rows = [backlog.row(item, 0) for item in sorted(keep, key=key)]
    render.write_items_table(rows, tree=tree)


def _due_before(text: str | None) -> str | None:
    if text is None:
        return None
    from research.vocab import check_date

    return check_date(text, "date for --due-before")


@app.command()
def show(item_id: IdArg, json_: JsonOpt = False) -> None:
    """Everything about an item: fields, checklist, runs, notes, outcomes, history."""
    from research import render
    from research.backlog.items import item_detail, resolve_item

    _recover()
    with _session() as session:
        item = resolve_item(session, item_id)
        detail = item_detail(session, item)
        _attach_runs(session, item, detail)
    if json_:
        detail.pop("runs_lines", None)
        detail.pop("links_lines", None)
        render.print_json(detail)
    else:
        render.show_item(detail)


def _attach_runs(session, item, detail) -> None:
    """Adds the item's runs to `show` once the runner's tables exist."""
    try:
        from research.runs.query import runs_for_show
    except ImportError:
        return
    runs_for_show(session, item, detail)


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

    with _changes() as (session, log):
        item = resolve_item(session, item_id)
        fields = _fields(title, body, status, priority, estimate, tag, innovation, practicality, feasibility, slug,
                         due=due, scheduled=scheduled)
        changed = edit_item(session, log, item, fields)
        typer.echo(f"{item.id}\t{item.slug}\t{'changed' if changed else 'unchanged'}")


@app.command()
def mv(
    item_id: IdArg,
    parent: Annotated[str | None, typer.Option("--parent", "-p", help="New parent id or slug.")] = None,
    top: Annotated[bool, typer.Option("--top", help="Move to the top level.")] = False,
    doc: Annotated[str | None, typer.Option("--doc", help="Move to the top level of this document.")] = None,
) -> None:
    """Move an item (with its children) under another parent, or into a document."""
    from research.backlog.items import INHERIT, move_item, resolve_item

    if sum(bool(x) for x in (parent, top, doc)) != 1:
        raise ResearchError("give one of --parent ID, --top or --doc NAME")
    with _changes() as (session, log):
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
    """Delete an item with its children, notes and outcomes (`research undo` restores them)."""
    from research.backlog.items import delete_item, resolve_item, subtree

    with _changes() as (session, log):
        item = resolve_item(session, item_id)
        count = len(subtree(session, item))
        if not yes:
            if not sys.stdin.isatty():
                raise ResearchError("refusing to delete without confirmation; pass --yes")
            extra = f" and {count - 1} descendant(s)" if count > 1 else ""
            if not typer.confirm(f"Delete {item.id} “{item.title}”{extra}?", err=True):
                raise typer.Exit(1)
        removed = delete_item(session, log, item)
    typer.echo(f"deleted {removed} item(s)", err=True)


def _set_status(item_id: str, status: str, action: str = "status") -> None:
    from research.backlog.items import resolve_item, set_status

    with _changes() as (session, log):
        item = resolve_item(session, item_id)
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

    with _changes() as (session, log):
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


@app.command()
def check(item_id: IdArg) -> None:
    """Tick a checklist task."""
    _set_status(item_id, "done", action="check")


@app.command()
def uncheck(item_id: IdArg) -> None:
    """Untick a checklist task."""
    _set_status(item_id, "planned", action="uncheck")


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
    with _changes() as (session, log):
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
def undo() -> None:
    """Revert the last change (any command, an import or a delete included)."""
    from research.backlog.items import undo_last

    with _changes() as (session, _log):
        batch, events = undo_last(session)
        actions = sorted({e.action for e in events if e.action != "touched"})
    typer.echo(f"undid change {batch}: {len(events)} row change(s) ({', '.join(actions)})", err=True)


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
    """Import a Markdown backlog as a document (again: bring the file's edits in)."""
    from research import render

    progress = None if dry_run else render.LateProgress(f"importing {file}")
    report = None
    if not dry_run and doc is None:
        # A file the backlog does not know yet: written with plain sqlite3, no ORM to load.
        from research.backlog.markdown.importer import import_new_file

        report = import_new_file(db_path(), file, strict=strict, progress=progress)
    if report is None:
        from research.backlog.markdown import documents

        with _changes() as (session, log):
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
    """Export a document as Markdown, as it was written plus the backlog's changes (or all as JSON)."""
    from research import render
    from research.files import check_writable_target, write_text_file

    if format_ not in ("md", "json"):
        raise ResearchError(f"unknown format {format_!r}; use md or json")
    if output:
        check_writable_target(output)
    loose = 0
    if format_ == "json":
        from research.backlog.items import export_json

        with _session() as session:
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
    from research.store.db import connect_raw, ensure_schema

    path = db_path()
    ensure_schema(path)
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
    """Bring the file's edits into the backlog and write the backlog's changes into the file, in place."""
    from research.backlog.markdown import documents

    if prefer not in (None, "file", "backlog"):
        raise ResearchError(f"--prefer must be file or backlog, not {prefer!r}")
    with _changes() as (session, log):
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
    from research.backlog.markdown import documents

    if main:
        with _changes() as (session, log):
            documents.set_main(session, log, documents.resolve_document(session, main))
    with _session() as session:
        rows = documents.document_summaries(session)
        loose = documents.loose_items(session)
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
# Notebooks and runs

ParamOpt = Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value, checked against the notebook's parameters (repeatable).")]


def _project_root() -> Path:
    from research.store.db import project_root_of

    return project_root_of(db_path())


def _recover() -> None:
    from research.runs.recovery import recover_stale_runs

    count = recover_stale_runs(db_path())
    if count:
        typer.echo(f"marked {count} run(s) whose runner died as interrupted", err=True)


@app.command()
def link(
    item_id: IdArg,
    notebook: Annotated[str, typer.Argument(help="Notebook path, relative to the project root.")],
    name: Annotated[str | None, typer.Option("--name", help="Name of the link (default: the notebook's stem).")] = None,
    param: ParamOpt = None,
    best: Annotated[str | None, typer.Option("--best", help="How to pick the best run, e.g. max:throughput.")] = None,
) -> None:
    """Link a notebook (with a cell tagged `parameters`) to an item, with default parameters."""
    from research.backlog.items import resolve_item
    from research.runs.links import link_notebook
    from research.runs.params import parse_assignments

    root = _project_root()
    with _changes() as (session, log):
        item = resolve_item(session, item_id)
        created = link_notebook(session, log, item, notebook, name, parse_assignments(param), best, root)
        typer.echo(f"{item.slug}\t{created.name}\t{created.notebook}")


@app.command()
def unlink(
    item_id: IdArg,
    name: Annotated[str | None, typer.Option("--name", help="Which linked notebook (needed when there are several).")] = None,
) -> None:
    """Remove a notebook link from an item (its runs are kept)."""
    from research.backlog.items import resolve_item
    from research.runs.links import unlink_notebook

    with _changes() as (session, log):
        item = resolve_item(session, item_id)
        removed = unlink_notebook(session, log, item, name)
        typer.echo(f"{item.slug}\tunlinked {removed.name}", err=True)


@app.command()
def notebooks(json_: JsonOpt = False) -> None:
    """List the notebooks under notebooks/ with their parameters, types and defaults."""
    from research import render
    from research.runs.links import list_notebooks

    try:
        root = _project_root()
    except ResearchError:
        root = Path.cwd()
    entries = list_notebooks(root)
    if json_:
        render.print_json(entries)
        return
    if not entries:
        render.info(f"no notebooks under {root / 'notebooks'}")
        return
    for entry in entries:
        typer.echo(entry["notebook"])
        if entry["error"]:
            typer.echo(f"  ({entry['error']})")
        for p in entry["parameters"]:
            comment = f"  # {p['help']}" if p["help"] else ""
            typer.echo(f"  {p['name']}: {p['type'] or '?'} = {p['default']}{comment}")


@app.command()
def run(
    item_id: IdArg,
    notebook: Annotated[str | None, typer.Option("--notebook", "-n", help="Run only this linked notebook (by name).")] = None,
    param: ParamOpt = None,
    params_file: Annotated[Path | None, typer.Option("--params-file", "-f", help="YAML or JSON file of parameters.")] = None,
    grid: Annotated[list[str] | None, typer.Option("--grid", "-g", help="key=v1,v2,... : sweep the cartesian product (repeatable).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Runs at once, each in its own kernel.")] = 1,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1, help="End a run as 'timeout' after this many seconds.")] = None,
    kernel: Annotated[str | None, typer.Option("--kernel", help="Jupyter kernel name (default: the notebook's, else python3).")] = None,
    log_output: Annotated[bool, typer.Option("--log-output", help="Stream the notebook's output to the terminal.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and show the runs without running them.")] = False,
    executor: Annotated[str | None, typer.Option("--executor", "-x", help="local, dask or slurm (default: `executor` in [tool.research], else local).")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="Dask scheduler, e.g. tcp://HOST:8786 (default: a local cluster of -j workers).")] = None,
    executor_option: Annotated[list[str] | None, typer.Option("--executor-option", "-E", help="KEY=VALUE for the executor, e.g. partition=gpu, gpus_per_task=1, time_limit=120, array_parallelism=8, cluster=local (repeatable).")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="slurm: submit and return; `research runs` collects the results.")] = False,
) -> None:
    """Run an item's linked notebook(s) with checked parameters; --grid sweeps; --executor dask|slurm runs them elsewhere."""
    from research.executors import load_settings
    from research.runs.child import discard_worker, start_worker

    settings = load_settings(_project_root(), executor, scheduler, executor_option)
    if settings.executor != "local" and log_output:
        raise ResearchError("--log-output needs the local executor; remote runs keep their output in the notebook")
    if no_wait and settings.executor != "slurm":
        raise ResearchError("--no-wait is for the slurm executor (dask runs end with their client)")
    # The first run's worker starts now, importing papermill while we check and plan.
    worker = None if dry_run or settings.executor != "local" else start_worker()
    try:
        _run(item_id, notebook, param, params_file, grid, jobs, timeout, kernel, log_output, dry_run, worker,
             settings, not no_wait)
    finally:
        discard_worker(worker)


def _run(item_id, notebook, param, params_file, grid, jobs, timeout, kernel, log_output, dry_run, worker,
         settings=None, wait: bool = True) -> None:
    from research import render
    from research.backlog.items import resolve_item
    from research.runs.params import expand_grid, load_params_file, parse_assignments
    from research.runs.plan import create_runs, plan_runs

    _recover()
    root = _project_root()
    given = parse_assignments(param)
    file_params = load_params_file(params_file) if params_file else None
    points = expand_grid(grid)
    if dry_run:
        with _session() as session:
            item = resolve_item(session, item_id)
            plans = plan_runs(session, item, root, notebook, given, file_params, points)
        render.print_json([{"item": p.item.slug, "notebook": p.notebook, "params": p.params} for p in plans])
        return
    remote = started = None
    if settings is not None and settings.executor != "local":
        from research.executors import make_executor, start_in_background

        remote = make_executor(settings, db_path(), jobs, timeout)
        started = start_in_background(remote)  # importing and reaching the engine overlaps planning
    try:
        with _session(write=True) as session:
            item = resolve_item(session, item_id)
            plans = plan_runs(session, item, root, notebook, given, file_params, points)
            if started:
                started()  # the engine is reachable before anything is written
            run_ids, sweep_id = create_runs(session, plans, root, kernel, executor=remote.name if remote else "local")
    except BaseException:
        if remote is not None:
            started(raise_errors=False)
            remote.close()
        raise
    if sweep_id:
        where = f"on {remote.name}" if remote else f"{min(jobs, len(run_ids))} at a time"
        typer.echo(f"sweep {sweep_id}: {len(run_ids)} runs, {where}", err=True)
    _execute(run_ids, jobs, timeout, log_output, worker, remote, wait)


def _execute(run_ids: list[int], jobs: int, timeout: float | None, log_output: bool, worker=None,
             executor=None, wait: bool = True) -> None:
    """Submit the runs to ``executor`` (default: the local pool) and follow them to their end."""
    from research import render
    from research.executors.driver import follow, submit
    from research.executors.local import LocalExecutor
    from research.runs.child import handle_interrupts

    path = db_path()
    if executor is None:
        progress = render.RunProgress(run_ids, enabled=not log_output)
        executor = LocalExecutor(path, jobs, timeout, log_output, progress.update, worker)
    else:
        progress = render.SweepProgress(run_ids, f"{executor.name}")
    with executor, handle_interrupts() as interrupts, progress:
        external = submit(path, executor, run_ids)
        if not wait:
            ids = ", ".join(e for e in external.values() if e)
            typer.echo(f"submitted {len(run_ids)} run(s) to {executor.name} ({ids}); "
                       "`research runs --sync` collects their results", err=True)
            return
        results = follow(path, executor, run_ids, interrupts,
                         on_running=getattr(progress, "start", None), on_done=progress.finish)
        interrupted = interrupts.is_set()
    for result in results:
        typer.echo(render.run_summary_line(result))
    if interrupted:
        raise typer.Exit(130)
    if any(r.status != "succeeded" for r in results):
        raise typer.Exit(1)


@app.command()
def rerun(
    run_id: Annotated[str, typer.Argument(help="The run to repeat.")],
    param: ParamOpt = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1, help="End the run as 'timeout' after this many seconds.")] = None,
) -> None:
    """Run a past run's notebook again with the same parameters (some overridden with -p)."""
    from research.runs.params import inspect_notebook, parse_assignments, resolve_parameters
    from research.runs.plan import RunPlan, create_runs
    from research.runs.query import resolve_run

    _recover()
    root = _project_root()
    with _session(write=True) as session:
        from research.store.models import Item, Link

        old = resolve_run(session, run_id)
        specs = inspect_notebook(root / old.notebook)
        overrides = resolve_parameters(specs, parse_assignments(param), old.notebook)
        item = session.get(Item, old.item_id)
        link_row = session.get(Link, old.link_id) if old.link_id else None
        plan = RunPlan(item=item, link=link_row, notebook=old.notebook, given={**old.params_given, **overrides},
                       params={**old.params, **overrides})
        run_ids, _ = create_runs(session, [plan], root, old.kernel)
    _execute(run_ids, 1, timeout, False)


@app.command()
def runs(
    args: Annotated[list[str] | None, typer.Argument(help="[ID|SLUG] to filter by item, or `show RUN`, `rm RUN...`, `cancel RUN...|--sweep ID`.", show_default=False)] = None,
    status: Annotated[str | None, typer.Option("--status", "-s", help="Only runs with this status.")] = None,
    sweep: Annotated[str | None, typer.Option("--sweep", help="Only runs of this sweep.")] = None,
    where: Annotated[str | None, typer.Option("--where", "-w", help="Filter on params and metrics, e.g. 'metrics.loss < 0.1 and params.lr = 0.01'.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="With rm: do not ask.")] = False,
    sync: Annotated[bool, typer.Option("--sync", help="Collect finished Dask/Slurm runs and say what was collected (every listing collects them).")] = False,
    json_: JsonOpt = False,
) -> None:
    """List runs (all, or an item's); `runs show RUN` for one in full; `runs rm RUN...` to delete; `runs cancel` to stop."""
    from research import render
    from research.backlog.items import resolve_item
    from research.runs.query import query_runs

    _recover()
    _sync_remote(verbose=sync)
    args = list(args or [])
    if args and args[0] == "cancel":
        _runs_cancel(args[1:], sweep)
        return
    if args and args[0] == "show":
        if len(args) != 2:
            raise ResearchError("usage: research runs show RUN")
        _runs_show(args[1], json_)
        return
    if args and args[0] == "rm":
        _runs_rm(args[1:], yes)
        return
    if len(args) > 1:
        raise ResearchError("give at most one item id or slug")
    with _session() as session:
        item = resolve_item(session, args[0]) if args else None
        rows = query_runs(session, item, status, sweep, where)
    if json_:
        render.print_json(rows)
    elif not rows:
        render.info("No runs.")
    else:
        render.write_runs_table(rows)


def _sync_remote(verbose: bool = False) -> None:
    from research.executors.control import sync_runs

    report = sync_runs(db_path())
    if verbose or report.collected:
        typer.echo(report.summary(), err=True)


def _runs_cancel(refs: list[str], sweep: str | None) -> None:
    from research import render
    from research.executors.control import cancel_runs
    from research.runs.query import query_runs, resolve_run

    if bool(refs) == bool(sweep):
        raise ResearchError("usage: research runs cancel RUN... | research runs cancel --sweep ID")
    with _session() as session:
        if sweep:
            ids = [r["id"] for r in query_runs(session, sweep=sweep)]
            if not ids:
                raise ResearchError(f"no runs in sweep {sweep!r}")
        else:
            ids = [resolve_run(session, ref).id for ref in refs]
    results = cancel_runs(db_path(), ids)
    if not results:
        render.info("nothing to cancel: those runs have already ended")
    for result in results:
        typer.echo(render.run_summary_line(result))


def _runs_show(run_ref: str, json_: bool) -> None:
    from research import render
    from research.runs.query import resolve_run, run_detail

    with _session() as session:
        detail = run_detail(session, resolve_run(session, run_ref))
    if json_:
        render.print_json(detail)
    else:
        render.show_run(detail)


def _runs_rm(refs: list[str], yes: bool) -> None:
    from research.runs.query import delete_run, resolve_run

    if not refs:
        raise ResearchError("usage: research runs rm RUN...")
    with _changes() as (session, log):
        targets = [resolve_run(session, ref) for ref in refs]
        if not yes:
            if not sys.stdin.isatty():
                raise ResearchError("refusing to delete runs without confirmation; pass --yes")
            if not typer.confirm(f"Delete run(s) {', '.join(str(r.id) for r in targets)}?", err=True):
                raise typer.Exit(1)
        for target in targets:
            delete_run(session, log, target)
    typer.echo(f"deleted {len(targets)} run(s); their files stay under runs/ (`research undo` restores the rows)", err=True)


@app.command()
def compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more runs.")],
    only_changed: Annotated[bool, typer.Option("--only-changed", help="Hide rows where every run agrees.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Params and metrics of several runs side by side."""
    from research import render
    from research.runs.query import compare_runs, resolve_run

    if len(run_ids) < 2:
        raise ResearchError("compare needs at least two runs")
    with _session() as session:
        table = compare_runs(session, [resolve_run(session, r) for r in run_ids], only_changed)
    if json_:
        render.print_json(table)
    else:
        render.write_compare_table(table)


from research.cli_review import review  # noqa: E402 - light: typer and the standard library

app.command("review")(review)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
