"""Helpers the tests share (fixtures built on them live in conftest.py): where the repository
is, a CLI runner that types commands as a user would, and the one way tests write notebooks."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SEEDS = REPO_ROOT.parent / "shared" / "seeds"
FIXTURE_NOTEBOOKS = REPO_ROOT / "tests" / "notebooks"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
# Kernels that are not installed here: their notebooks are inspected and prepared, not run.
R_KERNEL = {"name": "ir", "display_name": "R", "language": "R"}
JULIA_KERNEL = {"name": "julia-1.10", "display_name": "Julia 1.10", "language": "julia"}
# The start of a parameters cell in papermill's documented styles: annotations, `# type:`
# comments, a typed list over several lines.
PAPERMILL_STYLE_HEAD = (
    "msg = None\n"
    "a: float = 2.25  # the a value\n"
    "names = [\n"
    "    'x',  # first\n"
    "    'y'\n"
    "]  # type: List[str] the names\n"
)


def table_rows(path: Path, table: str = "run") -> list[dict]:
    """Every row of ``table`` in the database at ``path``, as dicts, in rowid order."""
    import sqlite3

    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY rowid")]
    finally:
        conn.close()


def wait_for(predicate, timeout: float = 60.0, every: float = 0.2):
    """``predicate()``'s first truthy value, polled every ``every`` seconds; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def research_env(db: Path | None = None) -> dict[str, str]:
    """The environment for a `research` subprocess: this checkout importable, no run folder inherited,
    and ``db`` as its database when given."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("RESEARCH_RUN_DIR", None)
    if db is not None:
        env["RESEARCH_DB"] = str(db)
    return env


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


def shown_figures(notebook_path: Path) -> int:
    """How many images an executed notebook shows in its outputs."""
    cells = json.loads(Path(notebook_path).read_text(encoding="utf-8"))["cells"]
    return sum("image/png" in out.get("data", {}) for cell in cells for out in cell.get("outputs", []))


def assert_figures_shown_and_stored_once(notebook_path: Path, run_dir: Path) -> None:
    """Every PNG of the run is stored once (under artifacts/) and shown once in the notebook."""
    pngs = [p.relative_to(run_dir).as_posix() for p in sorted(Path(run_dir).rglob("*.png"))]
    assert pngs and all(p.startswith("artifacts/") for p in pngs), pngs
    assert len({Path(p).name for p in pngs}) == len(pngs), pngs
    assert shown_figures(notebook_path) == len(pngs)


def params_cell(source: str):
    """A code cell tagged ``parameters`` (what papermill and `research link` look for)."""
    from nbformat.v4 import new_code_cell

    cell = new_code_cell(source)
    cell.metadata["tags"] = ["parameters"]
    return cell


def notebook(*cells, kernelspec: dict | None = KERNELSPEC):
    """A notebook of these cells (``nbformat`` cells or code sources), Python 3 unless told."""
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(c) if isinstance(c, str) else c for c in cells])
    if kernelspec is not None:
        nb.metadata["kernelspec"] = dict(kernelspec)
        nb.metadata["language_info"] = {"name": kernelspec["language"]}
    for index, cell in enumerate(nb.cells):  # stable ids: writing it again changes nothing
        cell.id = f"cell-{index}"
    return nb


def write_notebook(path: Path, *cells, parameters: str | None = None, kernelspec: dict | None = KERNELSPEC) -> Path:
    """Write a notebook: a ``parameters`` cell (when given) and then ``cells``."""
    import nbformat

    first = [params_cell(parameters)] if parameters is not None else []
    nbformat.write(notebook(*first, *cells, kernelspec=kernelspec), path)
    return path
