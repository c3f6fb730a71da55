"""What every command shares: the database it works on, sessions, and the option types."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from research.cli.app import state


def db_path() -> Path:
    """The database this command works on, checked (the file, then the schema) the first time
    a command asks, before it does anything else: damage is one line, not a half-done command."""
    from research.store.db import ensure_schema, find_database

    path = find_database(state.db)
    if state.checked != path:
        ensure_schema(path)
        state.checked = path
    return path


def open_session(write: bool = False):
    from research.store.db import session_scope

    return session_scope(db_path(), write=write)


def changes():
    """A write session plus a ChangeLog, for commands that change the backlog."""
    from contextlib import contextmanager

    from research.backlog.items import ChangeLog

    @contextmanager
    def scope():
        with open_session(write=True) as session:
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
ScoreOpt = Annotated[int | None, typer.Option(min=1, max=5, metavar="1-5", help="A score for the priority matrix.")]

def project_root() -> Path:
    from research.store.db import project_root_of

    return project_root_of(db_path())


def recover_runs() -> None:
    """End runs whose runner died, once the database is known to be ours (``db_path`` checks
    it: a damaged file gets one line, not a traceback from the recovery's SQL)."""
    from research.runs.recovery import recover_runs as recover

    done = recover(db_path())
    if done.interrupted:
        typer.echo(f"marked {done.interrupted} run(s) whose runner died as interrupted", err=True)
    if done.requeued:
        typer.echo(f"put {done.requeued} run(s) whose `research queue work` process died back in the queue", err=True)
