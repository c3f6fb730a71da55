"""`research doctor`: check the database file and, with --repair, make the safe repairs."""

from __future__ import annotations

from typing import Annotated

import typer

from research.cli.app import app, state
from research.cli.context import JsonOpt
from research.errors import ResearchError


@app.command()
def doctor(
    repair: Annotated[bool, typer.Option("--repair", help="Make the safe repairs, after copying the file beside it.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="PRAGMA quick_check instead of the full integrity_check.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Check the database: integrity, schema, orphan rows, stale runs.

    Check the database file: SQLite's integrity check, the schema against the models, rows
    whose parent is gone, runs left open by a runner that died, missing run folders. With
    --repair, copy the file beside it and fix what is safe; exit 1 while problems remain.
    """
    from research import render
    from research.store import doctor as checks
    from research.store.db import find_database

    path = find_database(state.db)
    diagnosis = checks.repair(path, quick) if repair else checks.diagnose(path, quick)
    if json_:
        render.print_json(diagnosis.as_json())
    else:
        if diagnosis.backup:
            typer.echo(f"backed up {path} to {diagnosis.backup}", err=True)
        for line in diagnosis.repaired:
            typer.echo(f"repaired: {line}")
        for problem in diagnosis.problems:
            fix = f" (--repair: {problem.repair})" if problem.repair and not repair else ""
            typer.echo(f"{problem.severity}: {problem.check}: {problem.message}{fix}")
        if not diagnosis.problems:
            typer.echo(f"ok: {path}" + (" (repaired)" if diagnosis.repaired else ""))
    errors = diagnosis.errors
    if errors:
        fixable = sum(1 for p in errors if p.repair)
        hint = f"; `research doctor --repair` fixes {fixable}" if fixable and not repair else ""
        raise ResearchError(f"{len(errors)} problem(s) remain in {path}{hint}")
