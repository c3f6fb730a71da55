"""An 8-point sweep of a CPU-bound notebook (about 2 s each): `-j 2` against `-j 1`.

Prints both wall times and the speed-up (target on 2 cores: at least 1.6x).

    python benchmarks/sweep_scaling.py [--points 8] [--work 3000000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _project import make_project, research_cmd  # noqa: E402


def sweep(root: Path, env: dict[str, str], points: int, work: int, jobs: int, extra: tuple[str, ...] = ()) -> float:
    seeds = ",".join(str(s) for s in range(points))
    cmd = [*research_cmd(), "run", "cpu", "--grid", f"seed={seeds}", "-p", f"work={work}", "-j", str(jobs), *extra]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--work", type=int, default=3_000_000, help="loop iterations per run")
    args = parser.parse_args()
    print(f"{args.points}-point sweep, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = make_project(root)
        serial = sweep(root, env, args.points, args.work, jobs=1)
        parallel = sweep(root, env, args.points, args.work, jobs=2)
        print(f"  -j 1   {serial:6.2f} s  ({serial / args.points:.2f} s per run)")
        print(f"  -j 2   {parallel:6.2f} s")
        speedup = serial / parallel
        print(f"speed-up -j 2 vs -j 1 = {speedup:.2f}x ({'meets' if speedup >= 1.6 else 'misses'} the 1.6x target)")


if __name__ == "__main__":
    main()
