"""An 8-point sweep of a CPU-bound notebook (about 2 s each): `-j 2` and a 2-worker Dask
LocalCluster (`--executor dask -j 2`) against `-j 1`; then the per-run overhead of the Dask
path against the local one.

Prints wall times, the CPU time of every process each sweep started (notebook work plus
papermill's import and the kernel's start, about 0.8 s a run), speed-ups (target on 2
cores: at least 1.6x for both), and the overhead: a trivial notebook swept 1 and N times
through each path, one run at a time; the slope (seconds per extra run) is the per-run
cost and the intercept the fixed one (for Dask: importing distributed and starting the
in-process cluster).

    python benchmarks/sweep_scaling.py [--points 8] [--work 3000000] [--overhead-runs 8]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _project import compile_bytecode, make_project, research_cmd  # noqa: E402


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sweep(root: Path, env: dict[str, str], points: int, work: int, jobs: int, extra: tuple[str, ...] = ()) -> tuple[float, float]:
    """(wall seconds, CPU seconds of every process it started) for one sweep."""
    seeds = ",".join(str(s) for s in range(points))
    cmd = [*research_cmd(), "run", "cpu", "--grid", f"seed={seeds}", "-p", f"work={work}", "-j", str(jobs), *extra]
    cpu, start = _children_cpu(), time.perf_counter()
    subprocess.run(cmd, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, _children_cpu() - cpu


def trivial(root: Path, env: dict[str, str], runs: int, extra: tuple[str, ...] = ()) -> float:
    """Wall time of `runs` runs of the trivial notebook, one at a time (one `research run`)."""
    grid = ("--grid", "x=" + ",".join(str(i) for i in range(runs))) if runs > 1 else ()
    cmd = [*research_cmd(), "run", "trivial", *grid, "-j", "1", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def overhead(root: Path, env: dict[str, str], runs: int, extra: tuple[str, ...] = (), repeats: int = 2) -> tuple[float, float]:
    """(seconds per run, fixed seconds) from the best of ``repeats`` 1-run and ``runs``-run sweeps."""
    one = min(trivial(root, env, 1, extra) for _ in range(repeats))
    many = min(trivial(root, env, runs, extra) for _ in range(repeats))
    per_run = (many - one) / (runs - 1)
    return per_run, one - per_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--work", type=int, default=3_000_000, help="loop iterations per run")
    parser.add_argument("--overhead-runs", type=int, default=8, help="trivial runs per overhead sweep")
    args = parser.parse_args()
    compile_bytecode()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.points}-point sweep, {os.cpu_count()} cores, load average {load:.2f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = make_project(root)
        serial, serial_cpu = sweep(root, env, args.points, args.work, jobs=1)
        parallel, parallel_cpu = sweep(root, env, args.points, args.work, jobs=2)
        dask, dask_cpu = sweep(root, env, args.points, args.work, jobs=2, extra=("--executor", "dask"))
        cores = os.cpu_count() or 1
        print("                         wall      CPU (all processes)   CPU / wall")
        for name, wall, cpu in (("-j 1", serial, serial_cpu), ("-j 2", parallel, parallel_cpu),
                                ("--executor dask -j 2", dask, dask_cpu)):
            print(f"  {name:21s} {wall:6.2f} s   {cpu:6.2f} s ({cpu / args.points:.2f} s per run)   {cpu / wall:.2f}")
        for name, wall in (("-j 2", parallel), ("dask -j 2", dask)):
            speedup = serial / wall
            verdict = "meets" if speedup >= 1.6 else "misses"
            print(f"speed-up {name} vs -j 1 = {speedup:.2f}x ({verdict} the 1.6x target)")
        print(f"(-j 1 starts the next run's worker and kernel on the idle core while a run executes, so it uses "
              f"{serial_cpu / serial:.2f} of {cores} cores; -j 2 is bounded below by CPU / {cores} = "
              f"{parallel_cpu / cores:.2f} s)")

        n = args.overhead_runs
        local_run, local_fixed = overhead(root, env, n)
        dask_run, dask_fixed = overhead(root, env, n, ("--executor", "dask"))
        print(f"per-run cost of a trivial notebook, one at a time ({n}-run vs 1-run sweeps, best of 2):")
        print(f"  local  {local_run:6.3f} s per run   fixed {local_fixed:5.2f} s per `research run`")
        print(f"  dask   {dask_run:6.3f} s per run   fixed {dask_fixed:5.2f} s per `research run`")
        print(f"per-run overhead of the Dask path vs local = {dask_run - local_run:+.3f} s "
              f"({dask_run / local_run:.2f}x); its fixed start-up = {dask_fixed - local_fixed:+.2f} s")


if __name__ == "__main__":
    main()
