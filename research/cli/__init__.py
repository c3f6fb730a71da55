"""The `research` command line: parsing and printing only; the work lives in the library.

``app`` holds the Typer app, its error mapping and the global options; ``context`` what
every command shares (the database, sessions, option types); the commands live in
``items`` (the backlog), ``io`` (Markdown in and out), ``runs`` (notebooks and runs) and
``review``. Heavy modules (sqlmodel, rich tables, papermill, torch) are imported inside
the commands that need them, so `research --help` stays fast.
"""

from __future__ import annotations

import importlib

from research.cli.app import app

# Each module registers its commands, in the order `research --help` lists them.
for _module in ("items", "io", "runs", "live", "queue", "sweep", "review", "serve", "doctor"):
    importlib.import_module(f"research.cli.{_module}")

__all__ = ["app", "main"]


def main() -> None:
    app()
