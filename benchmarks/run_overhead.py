"""Overhead of `research run` over the bare `papermill` CLI on the same trivial notebook.

Both are whole processes, alternated in one session so load affects both alike;
prints the median of each and their ratio (target: at most 1.15).

    python benchmarks/run_overhead.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _project import compile_bytecode, make_project, research_cmd  # noqa: E402


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    compile_bytecode()
    papermill = shutil.which("papermill") or str(Path(sys.executable).with_name("papermill"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = make_project(root)
        notebook = root / "notebooks" / "trivial.ipynb"
        ours, bare = [], []
        timed([*research_cmd(), "run", "trivial"], root, env)  # warm caches once
        for n in range(args.repeats):
            ours.append(timed([*research_cmd(), "run", "trivial"], root, env))
            bare.append(timed([papermill, "-k", "python3", str(notebook), str(root / f"bare-{n}.ipynb")], root, env))
        ours_median, bare_median = statistics.median(ours), statistics.median(bare)
        print(f"trivial notebook, median of {args.repeats} alternating whole-process runs")
        print(f"  research run     {ours_median:6.3f} s")
        print(f"  papermill (bare) {bare_median:6.3f} s")
        ratio = ours_median / bare_median
        print(f"research run / papermill = {ratio:.2f}x ({'meets' if ratio <= 1.15 else 'misses'} the 1.15x target)")


if __name__ == "__main__":
    main()
