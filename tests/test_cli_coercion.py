"""Values reach the commands as Typer would hand them over, without building pydantic adapters;
`show` stays light (no pydantic, no rich)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from research.cli.app import ResearchCommand, ResearchGroup


def _app(command_cls, group_cls) -> typer.Typer:
    app = typer.Typer(cls=group_cls, pretty_exceptions_enable=False)

    @app.command(cls=command_cls)
    def probe(
        name: str,
        files: Annotated[list[str] | None, typer.Argument()] = None,
        flag: Annotated[bool, typer.Option("--flag")] = False,
        tag: Annotated[list[str] | None, typer.Option("--tag")] = None,
        out: Annotated[Path | None, typer.Option("--out")] = None,
        source: Annotated[Path | None, typer.Option("--source", exists=True, dir_okay=False)] = None,
        count: Annotated[int, typer.Option("--count")] = 1,
        level: Annotated[int, typer.Option("--level", min=1, max=5)] = 3,
        ratio: Annotated[float, typer.Option("--ratio")] = 0.5,
    ) -> None:
        typer.echo(repr((name, files, flag, tag, out, source, count, level, ratio)))

    @app.command(cls=command_cls)
    def other() -> None:
        """A second command, so that the first keeps its name."""

    return app


ARGS = [
    ["probe", "x"],
    ["probe", "名前", "a", "b", "--flag", "--tag", "t1", "--tag", "t2", "--out", "o.md"],
    ["probe", "x", "--count", "7", "--ratio", "2.5", "--level", "5"],
    ["probe", "x", "--count", "seven"],
    ["probe", "x", "--level", "9"],
    ["probe", "x", "--ratio", "nan"],
    ["probe", "x", "--source", "missing.md"],
    ["probe", "x", "--source", "."],
    ["probe", "x", "--source", "here.md"],
    ["probe", "x", "--out", ""],
]


@pytest.mark.parametrize("args", ARGS, ids=" ".join)
def test_same_values_and_messages_as_typer(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("here.md").write_text("x")
    runner = CliRunner()
    ours = runner.invoke(_app(ResearchCommand, ResearchGroup), args)
    typers = runner.invoke(_app(typer.core.TyperCommand, typer.core.TyperGroup), args)
    # (Our usage line names arguments in capitals: everything else must be Typer's.)
    assert (ours.exit_code, ours.stdout, _but_usage(ours.stderr)) == (
        typers.exit_code, typers.stdout, _but_usage(typers.stderr))


def _but_usage(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("Usage: ")]


def test_show_imports_neither_pydantic_nor_rich(cli):
    cli("add", "A direction", "--body", "Why: the **memory** wall.")
    cli("add", "A topic", "--task", "--parent", "a-direction")
    cli("note", "a-direction", "first note", "--date", "2026-01-02")
    script = ("import sys\nfrom research.__main__ import main\nsys.argv = ['research', 'show', '1']\n"
              "try:\n    main()\nexcept SystemExit:\n    pass\n"
              "print([m for m in ('pydantic', 'rich') if m in sys.modules], file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ, timeout=60)
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "A direction" and "\x1b[" not in done.stdout  # no styles into a pipe
    assert "  Status     📋 planned" in lines and "  Why: the **memory** wall." in lines  # the body as written
    assert any(line.startswith("  ☐ 2 A topic") for line in lines) and "  2026-01-02 first note" in lines
