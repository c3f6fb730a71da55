"""Time `research review` over a backlog of 10,000 items and 5,000 runs (targets, whole
process: a week in at most 1.5 s, a month in at most 2 s).

The backlog is bulk-inserted with plain SQL: 1,000 directions with 9 checklist
tasks each, created over eight weeks, with their creation and status events,
3,000 notes, and 5,000 runs (some in sweeps, about 15% failed or timed out) of
300 experiments, each run with 7 metric rows. The clock is frozen
(RESEARCH_NOW) in the last of those weeks. Prints, for the current week, a
month and the whole eight weeks: the time to build the review data in process,
to render each format (charts included), and the wall time of a whole
`research review` process per format, which is what the targets are about, beside
a bare `research --version` process (the floor any command pays: Python and Typer)
measured in the same run.

    python benchmarks/review.py [--items 10000] [--runs 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _project import compile_bytecode  # noqa: E402

NOW = "2025-11-19T12:00:00"  # local time; the current ISO week is 2025-W47
WEEKS = 8
TARGETS_S = {"week": 1.5, "month": 2.0}


def build(db_path: Path, n_items: int, n_runs: int, seed: int = 0) -> None:
    from research.store.db import connect_raw, create_database

    rng = random.Random(seed)
    create_database(db_path)
    now = datetime.fromisoformat(NOW).astimezone().astimezone(UTC)
    span = timedelta(weeks=WEEKS).total_seconds()

    def stamp(at: datetime) -> str:
        return at.isoformat(timespec="microseconds")

    def when(after: datetime | None = None) -> datetime:
        start = after or now - timedelta(weeks=WEEKS)
        return start + timedelta(seconds=rng.uniform(0, max(1.0, (now - start).total_seconds())))

    items, events, notes = [], [], []
    statuses = ["planned", "active", "paused", "done", "writing-up", "dropped"]
    priorities = ["low", "medium", "high", "critical"]
    batch = 0
    directions = []
    next_id = 1
    while next_id <= n_items:
        parent = None if (next_id - 1) % 10 == 0 else directions[-1]
        kind = "item" if parent is None else "task"
        created = now - timedelta(seconds=rng.uniform(0, span))
        status = rng.choices(statuses, weights=[5, 3, 1, 3, 1, 1])[0]
        scores = [rng.randint(1, 5) for _ in range(3)] if kind == "item" else [None, None, None]
        score = round(sum(scores) / 3, 3) if kind == "item" else None
        started = stamp(when(created)) if status != "planned" else None
        done = stamp(when(datetime.fromisoformat(started))) if status == "done" else None
        title = (
            f"流式研究方向 {next_id}: streaming topic"
            if kind == "item"
            else f"检查点 checkpoint task {next_id}"
        )
        items.append(
            (
                next_id,
                f"item-{next_id}",
                parent,
                kind,
                title,
                "",
                status,
                rng.choice(priorities),
                None,
                None,
                None,
                "[]",
                *scores,
                score,
                next_id,
                "{}",
                stamp(created),
                started or stamp(created),
                started,
                done,
            )
        )
        batch += 1
        events.append(
            (
                batch,
                stamp(created),
                "created",
                next_id,
                "item",
                next_id,
                None,
                json.dumps(
                    {"id": next_id, "title": title, "status": "planned", "parent_id": parent}
                ),
            )
        )
        if status != "planned":
            batch += 1
            events.append(
                (
                    batch,
                    started,
                    "status",
                    next_id,
                    "item",
                    next_id,
                    json.dumps({"status": "planned"}),
                    json.dumps({"status": status, "updated_at": started}),
                )
            )
        if kind == "item":
            directions.append(next_id)
        next_id += 1
    for n in range(3000):
        item_id = rng.choice([None, *rng.sample(directions, 3)])
        at = when()
        notes.append(
            (
                n + 1,
                item_id,
                at.astimezone().date().isoformat(),
                None,
                f"note {n}: 发现 finding about backpressure",
                stamp(at),
            )
        )
        batch += 1
        events.append(
            (
                batch,
                stamp(at),
                "note",
                item_id,
                "note",
                n + 1,
                None,
                json.dumps({"text": f"note {n}"}),
            )
        )

    experiments = rng.sample(directions, min(300, len(directions)))
    links, runs, metrics = [], [], []
    for n, item_id in enumerate(experiments):
        best = ["max:throughput", "min:loss", None][n % 3]
        links.append(
            (
                n + 1,
                item_id,
                "exp",
                f"notebooks/exp{n}.ipynb",
                "{}",
                best,
                stamp(now - timedelta(weeks=WEEKS)),
            )
        )
    run_id, metric_id = 0, 0
    while run_id < n_runs:
        index = rng.randrange(len(experiments))
        size = rng.choice([1, 1, 1, 10])
        sweep = f"sw{run_id:05d}" if size > 1 else None
        base = when()
        for k in range(min(size, n_runs - run_id)):
            run_id += 1
            started = base + timedelta(minutes=3 * k)
            ended = started + timedelta(seconds=rng.uniform(5, 600))
            status = rng.choices(["succeeded", "failed", "timeout"], weights=[85, 10, 5])[0]
            error = None
            if status == "failed":
                error = json.dumps(
                    {
                        "cell_index": rng.randint(1, 8),
                        "ename": "RuntimeError",
                        "evalue": "CUDA out of memory\ntried to allocate",
                        "traceback": [],
                    }
                )
            params = json.dumps(
                {"lr": rng.choice([1e-4, 3e-4, 1e-3]), "block": rng.choice([64, 128]), "steps": 100}
            )
            runs.append(
                (
                    run_id,
                    experiments[index],
                    index + 1,
                    sweep,
                    status,
                    f"notebooks/exp{index}.ipynb",
                    params,
                    params,
                    stamp(started),
                    stamp(started),
                    stamp(ended),
                    (ended - started).total_seconds(),
                    None if status == "succeeded" else status,
                    error,
                    "{}",
                    "[]",
                )
            )
            quality = rng.random()
            for step in range(5):
                metric_id += 1
                metrics.append(
                    (metric_id, run_id, "loss", 2.0 / (step + 1) * (0.5 + quality), step)
                )
            if status == "succeeded":
                metric_id += 1
                metrics.append((metric_id, run_id, "throughput", 1000 * quality + 100, None))
                metric_id += 1
                metrics.append((metric_id, run_id, "acc", quality, None))

    conn = connect_raw(db_path)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO item (id, slug, parent_id, kind, title, body, status, priority, estimate, estimate_min_days, "
            "estimate_max_days, tags, innovation, practicality, feasibility, score, position, style, created_at, "
            "updated_at, started_at, done_at) VALUES (" + ",".join("?" * 22) + ")",
            items,
        )
        conn.executemany(
            "INSERT INTO event (batch, ts, action, item_id, table_name, row_id, before, after) VALUES (?,?,?,?,?,?,?,?)",
            events,
        )
        conn.executemany(
            "INSERT INTO note (id, item_id, date, title, text, created_at) VALUES (?,?,?,?,?,?)",
            notes,
        )
        conn.executemany(
            "INSERT INTO link (id, item_id, name, notebook, defaults, best, created_at) VALUES (?,?,?,?,?,?,?)",
            links,
        )
        conn.executemany(
            "INSERT INTO run (id, item_id, link_id, sweep_id, status, notebook, params_given, params, queued_at, "
            "started_at, ended_at, duration_s, reason, error, environment, artifacts) VALUES ("
            + ",".join("?" * 16)
            + ")",
            runs,
        )
        conn.executemany(
            "INSERT INTO metric (id, run_id, name, value, step) VALUES (?,?,?,?,?)", metrics
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    print(
        f"backlog: {len(items)} items, {len(events)} events, {len(notes)} notes, {len(runs)} runs, {len(metrics)} metric rows"
    )


# A whole `research review` process.
_CLI = (
    "import sys\n"
    "from research.cli import app\n"
    "app(sys.argv[1:], prog_name='research')\n"
)


def median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    compile_bytecode()

    os.environ["RESEARCH_NOW"] = NOW
    from research.review.charts import chart_pngs, chart_tasks
    from research.review.output import write_review
    from research.review.period import parse_period
    from research.review.report import build_review

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db_path = folder / "todo.db"
        start = time.perf_counter()
        build(db_path, args.items, args.runs)
        print(
            f"built in {time.perf_counter() - start:.1f} s; median of {args.repeats} (in process) and of {args.repeats} whole processes"
        )
        env = {**os.environ, "RESEARCH_DB": str(db_path), "RESEARCH_NOW": NOW}
        floor = median(
            lambda: subprocess.run(
                [sys.executable, "-c", _CLI, "--version"], env=env, cwd=folder, check=True,
                capture_output=True,
            ),
            args.repeats,
        )
        print(f"baseline: a bare `research --version` process {floor * 1000:.0f} ms")
        slowest: dict[str, float] = {}
        periods = {
            "week (2025-W47)": ("week", {"week": "2025-W47"}, ["--week", "2025-W47"]),
            "month (2025-11)": ("month", {"month": "2025-11"}, ["--month", "2025-11"]),
            "quarter (2025-Q4)": ("quarter", {"quarter": "2025-Q4"}, ["--quarter", "2025-Q4"]),
            f"{WEEKS} weeks (--since)": ("range", {"since": "2025-09-24"}, ["--since", "2025-09-24"]),
        }
        for label, (kind, kwargs, cli_args) in periods.items():
            period = parse_period(**kwargs)
            review = build_review(db_path, period)
            c = review["counts"]
            charts = chart_tasks(review)
            print(
                f"\n{label}: {c['runs_started']} runs started, {c['items_added']} items and "
                f"{c['tasks_added']} tasks added, {c['tasks_ticked']} ticked, {len(charts)} charts, "
                f"{len(review['moved'])} directions moved, {len(review['experiments']['items'])} experiments, "
                f"{len(review['experiments']['sweeps'])} sweeps"
            )
            timings = {
                "build data": median(lambda p=period: build_review(db_path, p), args.repeats),
                "charts": median(lambda r=review: chart_pngs(r), args.repeats),
                "md + PNGs": median(
                    lambda r=review: write_review(r, "md", folder / "r.md"), args.repeats
                ),
                "html": median(
                    lambda r=review: write_review(r, "html", folder / "r.html"), args.repeats
                ),
                "json": median(
                    lambda r=review: write_review(r, "json", folder / "r.json"), args.repeats
                ),
            }
            for name, seconds in timings.items():
                print(f"  in process   {name:<11} {seconds * 1000:8.0f} ms")
            for fmt in ("md", "html"):
                out = folder / f"cli.{fmt}"
                cmd = [
                    sys.executable,
                    "-c",
                    _CLI,
                    "review",
                    *cli_args,
                    "--format",
                    fmt,
                    "-o",
                    str(out),
                ]
                seconds = median(
                    lambda cmd=cmd: subprocess.run(
                        cmd, env=env, cwd=folder, check=True, capture_output=True
                    ),
                    args.repeats,
                )
                slowest[kind] = max(slowest.get(kind, 0.0), seconds)
                print(
                    f"  process      review {fmt:<4}  {seconds * 1000:8.0f} ms  "
                    f"({seconds / floor:.1f}x the bare process; {out.stat().st_size // 1024} KiB)"
                )
        print()
        for kind, seconds in slowest.items():
            target = TARGETS_S.get(kind)
            verdict = (
                f"target {target:.1f} s: {'meets' if seconds <= target else 'misses'} it"
                if target
                else "no target"
            )
            print(f"slowest whole `research review` for a {kind}: {seconds:.2f} s ({verdict})")


if __name__ == "__main__":
    main()
