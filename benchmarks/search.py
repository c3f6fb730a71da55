"""TPE against random search on a notebook with a known optimum, and a search's cost per trial
against a grid run of the same notebook.

The notebook is a noisy 2-D quadratic, ``loss = 20 + (x - 1)^2 + (y + 2)^2 + noise`` over
x, y in [-5, 5]; it records the noisy ``loss`` (the objective the sweep minimises) and the
noise-free ``true_loss`` beside it. A sweep "reaches within 5% of the optimum" at the first
trial whose ``true_loss`` is at most 21 (the optimum is 20). Each sampler runs with the same
five seeds, one trial at a time, at most ``--max-trials`` trials (a sweep that never gets there
counts as needing more than that); printed: trials needed per seed, the median of each sampler,
and their ratio.

Cost per trial: ``research sweep`` (TPE) of N and 2N trials against ``research run --grid``
of N and 2N points of the same notebook, one run at a time, alternated, each the median of
``--repeats``: the ratio of the per-trial slopes (target at most 1.05); the whole commands'
times and what each pays once (the intercept) are printed beside it.

    python benchmarks/search.py [--seeds 5] [--max-trials 60] [--cost-runs 12]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _project import compile_bytecode, make_project, research_cmd, write_notebook  # noqa: E402

QUADRATIC = [
    "x: float = 0.0\ny: float = 0.0\nnoise: float = 0.3\nseed: int = 0",
    "import random\nfrom research import record\n"
    "true_loss = 20 + (x - 1) ** 2 + (y + 2) ** 2\n"
    "record('true_loss', true_loss)\n"
    "record('loss', true_loss + noise * random.Random(f'{x}/{y}/{seed}').gauss(0, 1))",
]
OPTIMUM, WITHIN = 20.0, 0.05
SPACE = ["--space", "x=uniform(-5,5)", "--space", "y=uniform(-5,5)"]


def _run(root: Path, env: dict[str, str], *args: str) -> None:
    subprocess.run([*research_cmd(), *args], cwd=root, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _latest_sweep_runs(db: Path) -> list[tuple[int, float]]:
    """(trial, true_loss) of the newest sweep's trials, in trial order."""
    conn = sqlite3.connect(db)
    try:
        (sweep_id,) = conn.execute("SELECT id FROM sweep ORDER BY created_at DESC LIMIT 1").fetchone()
        return conn.execute(
            "SELECT run.trial, metric.value FROM run JOIN metric ON metric.run_id = run.id "
            "WHERE run.sweep_id = ? AND metric.name = 'true_loss' ORDER BY run.trial", (sweep_id,)).fetchall()
    finally:
        conn.close()


def trials_to_reach(root: Path, env: dict[str, str], sampler: str, seed: int, max_trials: int) -> int | None:
    """The 1-based trial at which the sweep first got within 5% of the optimum (None: never)."""
    _run(root, env, "sweep", "quad", *SPACE, "--trials", str(max_trials), "--minimize", "loss",
         "--sampler", sampler, "--seed", str(seed), "-p", f"seed={seed}", "-j", "1")
    for trial, true_loss in _latest_sweep_runs(root / "todo.db"):
        if true_loss <= OPTIMUM * (1 + WITHIN):
            return trial + 1
    return None


def per_run(root: Path, env: dict[str, str], args: list[str], runs: int) -> float:
    start = time.perf_counter()
    _run(root, env, *args)
    return (time.perf_counter() - start) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-trials", type=int, default=60)
    parser.add_argument("--cost-runs", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    compile_bytecode()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = make_project(root)
        write_notebook(root / "notebooks" / "quadratic.ipynb", QUADRATIC)
        _run(root, env, "add", "Noisy quadratic", "--slug", "quad")
        _run(root, env, "link", "quad", "notebooks/quadratic.ipynb")

        print(f"trials to reach within {WITHIN:.0%} of the optimum ({OPTIMUM:g}), at most {args.max_trials}:")
        needed: dict[str, list[float]] = {}
        for sampler in ("tpe", "random"):
            counts = [trials_to_reach(root, env, sampler, seed, args.max_trials) for seed in range(args.seeds)]
            needed[sampler] = [c if c is not None else float("inf") for c in counts]
            shown = ", ".join(str(c) if c is not None else f">{args.max_trials}" for c in counts)
            print(f"  {sampler:6s} seeds 0-{args.seeds - 1}: {shown}   median {statistics.median(needed[sampler]):g}")
        tpe, rnd = statistics.median(needed["tpe"]), statistics.median(needed["random"])
        verdict = "meets" if tpe < rnd else "misses"
        print(f"median trials, random / TPE = {rnd / tpe:.2f}x ({verdict} the target: TPE in fewer trials)")

        # Cost: sweeps of N and 2N trials against grids of N and 2N points, alternated (load
        # falls on both alike). Per trial is the slope, (T(2N) - T(N)) / N, each T the median
        # of its repeats: what one more trial costs, without the start both pay once (the
        # CLI, the fork server; for the sweep also Optuna's import), which is printed apart.
        n = args.cost_runs
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeats):
            for count in (n, 2 * n):
                points = ",".join(f"{v:.4f}" for v in (i / count for i in range(count)))
                grid_cmd = ["run", "quad", "--grid", f"x={points}", "-j", "1"]
                sweep_cmd = ["sweep", "quad", *SPACE, "--trials", str(count), "--minimize", "loss", "--seed", "0", "-j", "1"]
                times.setdefault(("grid", count), []).append(per_run(root, env, grid_cmd, 1))
                times.setdefault(("sweep", count), []).append(per_run(root, env, sweep_cmd, 1))
        med = {key: statistics.median(values) for key, values in times.items()}
        slope = {kind: (med[(kind, 2 * n)] - med[(kind, n)]) / n for kind in ("grid", "sweep")}
        fixed = {kind: med[(kind, n)] - n * slope[kind] for kind in ("grid", "sweep")}
        ratio = slope["sweep"] / slope["grid"]
        print(f"cost, one run at a time, median of {args.repeats} alternated commands each:")
        for count in (n, 2 * n):
            print(f"  {count:3d} runs: grid {med[('grid', count)]:.2f} s, TPE sweep {med[('sweep', count)]:.2f} s "
                  f"(whole command {med[('sweep', count)] / med[('grid', count)]:.3f}x)")
        print(f"  per trial (slope): grid {slope['grid']:.3f} s, TPE sweep {slope['sweep']:.3f} s; "
              f"paid once (intercept): grid {fixed['grid']:.2f} s, sweep {fixed['sweep']:.2f} s")
        verdict = "meets" if ratio <= 1.05 else "misses"
        print(f"search / grid per trial = {ratio:.3f}x ({verdict} the 1.05x target)")
        grid, search = slope["grid"], slope["sweep"]
        finite = {k: [c if c != float("inf") else None for c in v] for k, v in needed.items()}
        print(json.dumps({"trials_tpe": finite["tpe"], "trials_random": finite["random"],
                          "grid_s_per_run": grid, "sweep_s_per_run": search,
                          "commands_s": {f"{kind}-{count}": t for (kind, count), t in med.items()}}))


if __name__ == "__main__":
    main()
