"""Whole-process latency of the backlog commands over a 10,000-item backlog.

Prints the median wall time of `research --help`, `list`, `list --all`, `add` and
`show`, and, when Taskwarrior (`task`) is installed, of `task list`, `task N info` and
`task add` over the same 10,000 tasks, each run alternately with its `research` command
(pairs, so both see the same load), with the median of the per-pair ratios (targets,
issue 14: list at most 1.3x `task list`, show at most 1.5x `task N info`, add at most 4x
`task add`).

``--compare PATH`` also times another checkout of this project (say, the tree before a
change) on the same database in the same run, command by command.

    python benchmarks/cli_latency.py [--items 10000] [--repeats 7] [--compare PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _project import compile_bytecode  # noqa: E402


def build_backlog(db_path: Path, n_items: int) -> None:
    """10,000 items: directions with topics with checklist tasks, as a real backlog nests them."""
    from research import clock
    from research.store.db import create_database, session_scope
    from research.store.models import Item

    create_database(db_path)
    now = clock.now_iso()
    priorities = ["low", "medium", "high", "critical"]
    statuses = ["planned", "active", "paused", "planned", "done"]
    with session_scope(db_path, write=True) as session:
        next_id = 1
        while next_id <= n_items:
            direction_id = next_id
            session.add(Item(id=next_id, slug=f"direction-{next_id}", title=f"流式处理方向 {next_id}: streaming direction",
                             priority=priorities[next_id % 4], status=statuses[next_id % 5], estimate="2-3天",
                             estimate_min_days=2, estimate_max_days=3, tags=["systems", "流式"],
                             created_at=now, updated_at=now, position=next_id))
            next_id += 1
            for t in range(9):
                if next_id > n_items:
                    break
                session.add(Item(id=next_id, slug=f"task-{next_id}", parent_id=direction_id, kind="task",
                                 title=f"检查点机制 checkpoint topic {next_id}", status=statuses[(next_id + t) % 5],
                                 created_at=now, updated_at=now, position=t))
                next_id += 1


def build_taskwarrior(folder: Path, n_items: int) -> dict[str, str]:
    data = folder / "taskdata"
    data.mkdir()
    rc = folder / "taskrc"
    rc.write_text(f"data.location={data}\nconfirmation=off\nverbose=nothing\nnews.version=2.6.0\n")
    env = {**os.environ, "TASKRC": str(rc), "TASKDATA": str(data)}
    tasks = [
        {"description": f"检查点机制 checkpoint topic {i}", "status": "pending", "project": "streaming",
         "priority": "HML"[i % 3], "tags": ["systems"], "entry": "20251108T000000Z", "uuid": _uuid(i)}
        for i in range(n_items)
    ]
    payload = folder / "tasks.json"
    payload.write_text(json.dumps(tasks))
    subprocess.run(["task", "import", str(payload)], env=env, check=True, capture_output=True)
    return env


def _uuid(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def _once(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_time(cmd: list[str], env: dict[str, str], cwd: Path, repeats: int) -> float:
    return statistics.median(_once(cmd, env, cwd) for _ in range(repeats))


def paired_times(ours: tuple[list[str], dict], theirs: tuple[list[str], dict], cwd: Path,
                 repeats: int) -> tuple[float, float, float]:
    """Both commands run alternately, so both see the same moments of the machine's load:
    their medians and the median of the per-pair ratios."""
    pairs = [(_once(*ours, cwd), _once(*theirs, cwd)) for _ in range(repeats)]
    return (statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs),
            statistics.median(a / b for a, b in pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compare", type=Path, help="another checkout of this project, timed beside this one")
    args = parser.parse_args()
    compile_bytecode()

    research = shutil.which("research") or str(Path(sys.executable).with_name("research"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db_path = folder / "todo.db"
        build_backlog(db_path, args.items)
        env = {**os.environ, "RESEARCH_DB": str(db_path)}
        env.pop("RESEARCH_NOW", None)
        print(f"backlog: {args.items} items; median of {args.repeats} whole-process runs each")
        results = {}
        cases = {
            "research --help": ["--help"],
            "research list": ["list"],
            "research list --tasks": ["list", "--tasks"],  # every row, as `task list` prints
            "research list --all": ["list", "--all"],
            "research list --json": ["list", "--json"],
            "research add": ["add", "benchmark item"],
            "research show": ["show", "1"],
        }
        other_env = None
        if args.compare:
            # The other checkout runs from its own source tree on the same database.
            other_env = {**env, "PYTHONPATH": str(args.compare.resolve())}
            compile_bytecode(args.compare.resolve())
            print(f"  (also timing {args.compare} on the same backlog: 'other' below)")
        for name, cmd in cases.items():
            results[name] = median_time([research, *cmd], env, folder, args.repeats)
            line = f"  {name:<24} {results[name] * 1000:8.1f} ms"
            if other_env is not None:
                # A tree from before --tasks lists every row with plain `list`.
                theirs = [a for a in cmd if a != "--tasks"] if name.endswith("--tasks") else cmd
                other = median_time([sys.executable, "-m", "research", *theirs], other_env, folder, args.repeats)
                line += f"   other {other * 1000:8.1f} ms   this/other {results[name] / other:5.2f}x"
            print(line)
        if shutil.which("task"):
            tw_env = build_taskwarrior(folder, args.items)
            print("paired with Taskwarrior over the same 10,000 tasks (run alternately):")
            for name, cmd, ours, target in [
                ("task list", ["task", "list"], "research list", 1.3),
                ("task list", ["task", "list"], "research list --tasks", 1.3),
                ("task 1 info", ["task", "1", "info"], "research show", 1.5),
                ("task add", ["task", "add", "benchmark item"], "research add", 4.0),
            ]:
                mine, theirs, ratio = paired_times(([research, *cases[ours]], env), (cmd, tw_env), folder, args.repeats)
                verdict = "meets" if ratio <= target else "misses"
                print(f"  {ours:<22} {mine * 1000:7.1f} ms   {name + ' (Taskwarrior)':<24} {theirs * 1000:7.1f} ms   "
                      f"ratio {ratio:.2f}x ({verdict} the {target}x target)")
        else:
            print("Taskwarrior not installed (apt-get install taskwarrior): comparison not run")
        verdict = "meets" if results["research --help"] < 0.2 else "misses"
        print(f"research --help = {results['research --help'] * 1000:.0f} ms ({verdict} the 200 ms target)")

if __name__ == "__main__":
    main()
