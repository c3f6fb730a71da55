"""What a run or a repair writes stays out of git: run outputs, the database and its backups."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support import REPO_ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (REPO_ROOT / ".git").exists(), reason="not a git checkout"
)


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=60)


def test_run_outputs_and_databases_are_ignored_and_untracked():
    generated = ["runs/1/output.ipynb", "runs/1/artifacts/loss.png", "lab/runs/7/metrics.jsonl", "todo.db",
                 "todo.db-wal", "todo.db.20261202T120000.bak", "todo.db.20261202T120000.bak-wal"]
    ignored = _git("check-ignore", "--no-index", *generated).stdout.split()
    assert ignored == generated
    assert _git("check-ignore", "--no-index", "research/runs/plan.py").returncode == 1  # the package is source
    tracked = [f for f in _git("ls-files").stdout.splitlines()
               if ("runs/" in f and not f.startswith("research/runs/")) or f.startswith("todo.db")]
    assert tracked == []
