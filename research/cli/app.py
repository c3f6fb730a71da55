"""The `research` Typer app: error mapping (one line and exit code 1) and the global options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from research.cli.coercion import direct_coercion
from research.errors import ResearchError

DEBUG_ENV = "RESEARCH_DEBUG"


class PlainValues:
    """Gives each parameter the direct converter (``cli.coercion``) when the command's
    parameters are asked for: they include --help and the completion options Typer adds."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            direct_coercion(param)
        return params


class ResearchGroup(PlainValues, TyperGroup):
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
        except Exception as exc:
            from research.store.health import error_sentence, sqlite_cause

            cause = sqlite_cause(exc)
            if cause is None or os.environ.get(DEBUG_ENV):
                raise

            # A damaged file, a full disk, a lock held too long: one line, nothing written.
            typer.echo(f"Error: {error_sentence(cause)} (set {DEBUG_ENV}=1 for the traceback)", err=True)
            ctx.exit(1)


class ReadableArgument(TyperArgument):
    """An argument shown as users read it: ``ITEM`` in the usage line, no ``<str>`` beside it."""

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx) -> str | None:
        return None


def readable_metavar(name: str) -> str:
    """item_id -> ITEM, run_refs -> RUN, file -> FILE."""
    upper = name.upper()
    for suffix in ("_IDS", "_REFS", "_ID", "_REF"):
        if upper.endswith(suffix):
            return upper[: -len(suffix)]
    return upper


class ResearchCommand(PlainValues, TyperCommand):
    """Every command: arguments and option values named in capitals (``show ITEM``,
    ``--db FILE``) instead of Typer's ``{item_id}`` and ``<str>``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                param.__class__ = ReadableArgument
                if param.metavar is None:
                    param.metavar = readable_metavar(param.name)
            elif isinstance(param, TyperOption) and not param.is_flag and param.metavar is None:
                param.metavar = readable_metavar(param.name.rstrip("_"))


class ResearchTyper(typer.Typer):
    def command(self, *args, cls: type[TyperCommand] | None = None, **kwargs):
        return super().command(*args, cls=cls or ResearchCommand, **kwargs)


def new_typer(help_text: str, cls: type[TyperGroup] = ResearchGroup, no_args_is_help: bool = True) -> typer.Typer:
    """The app and its sub-apps (``research runs``) share these settings."""
    return ResearchTyper(
        cls=cls,
        help=help_text,
        no_args_is_help=no_args_is_help,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


app = new_typer("A research backlog with runnable experiment notebooks.")


class State:
    db: str | None = None
    checked: Path | None = None  # the database context.db_path has checked, in this command


state = State()


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"research {version('research')}")
        raise typer.Exit()


@app.callback()
def _global(
    db: Annotated[str | None, typer.Option("--db", metavar="FILE", help="Database file (default: $RESEARCH_DB, else the nearest todo.db).")] = None,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")] = False,
) -> None:
    """A research backlog with runnable experiment notebooks."""
    state.db = db
    state.checked = None
