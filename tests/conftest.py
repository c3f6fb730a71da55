"""Shared fixtures: every test gets its own working folder and database; none touches a real one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SEEDS = REPO_ROOT.parent / "shared" / "seeds"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Run each test in a temp folder with RESEARCH_DB pointing there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESEARCH_DB", str(tmp_path / "todo.db"))
    monkeypatch.delenv("RESEARCH_NOW", raising=False)
    monkeypatch.delenv("RESEARCH_DEBUG", raising=False)
    monkeypatch.delenv("RESEARCH_RUN_DIR", raising=False)
    yield tmp_path
    from research.store.db import dispose_engines

    dispose_engines()


class Cli:
    """Invokes the Typer app in-process, the way a user would type it."""

    def __init__(self):
        from typer.testing import CliRunner

        from research.cli import app

        self.app = app
        self.runner = CliRunner()

    def __call__(self, *args: str, ok: bool = True, input: str | None = None):
        result = self.runner.invoke(self.app, [str(a) for a in args], input=input)
        if ok and result.exit_code != 0:
            raise AssertionError(
                f"research {' '.join(map(str, args))} exited {result.exit_code}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}\nexception: {result.exception!r}"
            )
        return result

    def json(self, *args: str):
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def cli(isolated):
    from research.store.db import dispose_engines

    runner = Cli()
    runner("init", "--empty")
    yield runner
    dispose_engines()


@pytest.fixture
def seed_todo() -> Path:
    path = SEEDS / "cs336-deep-dive-todo.md"
    if not path.exists():
        pytest.skip("the user's seed documents (../shared/seeds) are not present")
    return path
