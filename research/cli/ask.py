"""Asking before something a user may not mean: a prompt on a terminal, a refusal elsewhere."""

from __future__ import annotations

import sys

import typer

from research.errors import ResearchError


def interactive() -> bool:
    """Whether someone at a terminal can answer (not a pipe, a script or CI)."""
    return sys.stdin.isatty()


def confirm(question: str, refusal: str) -> None:
    """Ask ``question`` on a terminal (no: exit 1); with no terminal, fail with ``refusal``,
    one line that names the flag that skips the question."""
    if not interactive():
        raise ResearchError(refusal)
    if not typer.confirm(question, err=True):
        raise typer.Exit(1)
