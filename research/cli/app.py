"""The `research` Typer app: error mapping (one line and exit code 1) and the global options."""

from __future__ import annotations

import os
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
