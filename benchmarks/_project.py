"""A throwaway research project for the runner benchmarks: a database and generated notebooks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TRIVIAL = ["x = 1", "from research import record\nrecord('x', x)"]
CPU_BOUND = [
    "work = 3_000_000  # loop iterations (about 2 s of one core)\nseed = 0",
    "import time\nfrom research import record\nstart = time.process_time()\n"
    "acc = seed\nfor i in range(work):\n    acc = (acc * 1103515245 + 12345) % 2147483648\n"
    "record('cpu_s', time.process_time() - start)\nrecord('acc', acc)",
]


def write_notebook(path: Path, cells: list[str]) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for index, source in enumerate(cells):
        cell = nbformat.v4.new_code_cell(source)
        cell.id = f"cell-{index}"
        if index == 0:
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def compile_bytecode(root: Path | None = None) -> None:
    """Compile the project's modules (of ``root``, default this checkout) once, as any
    first run would cache them.

    Where PYTHONDONTWRITEBYTECODE is set, Python never caches the bytecode of an
    editable install, so every `research` process would recompile the package from
    source while papermill's (compiled by pip) would not; timings would measure that.
    """
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return
    root = root or Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "research"), str(root / "experiments")],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    print("(PYTHONDONTWRITEBYTECODE is set: compiled research/ and experiments/ once, as a first run would)")


def research_cmd() -> list[str]:
    return [sys.executable, "-m", "research"]


def make_project(root: Path) -> dict[str, str]:
    """Create todo.db with items `trivial` and `cpu` linked to generated notebooks; returns the env."""
    write_notebook(root / "notebooks" / "trivial.ipynb", TRIVIAL)
    write_notebook(root / "notebooks" / "cpu_bound.ipynb", CPU_BOUND)
    env = {**os.environ, "RESEARCH_DB": str(root / "todo.db")}
    env.pop("RESEARCH_NOW", None)

    def research(*args: str) -> None:
        subprocess.run([*research_cmd(), *args], cwd=root, env=env, check=True, capture_output=True)

    research("init", "--empty")
    research("add", "Trivial notebook", "--slug", "trivial")
    research("link", "trivial", "notebooks/trivial.ipynb")
    research("add", "CPU-bound notebook", "--slug", "cpu")
    research("link", "cpu", "notebooks/cpu_bound.ipynb")
    return env
