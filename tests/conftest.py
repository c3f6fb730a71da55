"""Shared fixtures: every test gets its own working folder and database; none touches a real one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import SEEDS, Cli, write_notebook


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


@pytest.fixture
def make_cli():
    """A new CLI runner (for tests that set up their own database)."""
    return Cli


@pytest.fixture(name="write_notebook")
def write_notebook_fixture():
    """``tests.support.write_notebook``: the one way tests write a notebook."""
    return write_notebook
