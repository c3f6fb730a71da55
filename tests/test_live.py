"""Live metrics: what a running notebook records shows in `research runs show` and `runs watch`
while it runs, locally and from a Dask worker or a Slurm (submitit local) job, and is ingested
once when the run ends."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support import FIXTURE_NOTEBOOKS, research_env, wait_for
from tests.test_executors import dask_cluster  # noqa: F401 - the real Dask cluster fixture

TICKS = ("from research import record\nimport time\nfor i in range(n):\n"
         "    record('loss', 1.0 / (i + 1), step=i)\n    time.sleep(pause)\nrecord('done', True)")


@pytest.fixture
def project(cli, isolated, write_notebook):
    shutil.copytree(FIXTURE_NOTEBOOKS, isolated / "notebooks", ignore=shutil.ignore_patterns("*.py"))
    write_notebook(isolated / "notebooks" / "ticks.ipynb", TICKS, parameters="n = 3\npause = 0.1")
    cli("add", "Experiment", "--slug", "exp")
    cli("link", "exp", "notebooks/ticks.ipynb")
    return isolated


def status_of(project: Path, run_id: int) -> str | None:
    conn = sqlite3.connect(project / "todo.db")
    try:
        row = conn.execute("SELECT status FROM run WHERE id = ?", (run_id,)).fetchone()
        return row[0] if row else None
    finally:
        conn.close()



def research(project: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "research", *args], cwd=project, env=research_env(project / "todo.db"), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class Lines:
    """A process's stdout, line by line, with a timeout."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next(self, timeout: float = 90.0) -> str | None:
        return self.lines.get(timeout=timeout)


def stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- reading (fast)


def test_the_tail_reads_what_was_appended_keeps_the_latest_and_starts_over_when_set_aside(tmp_path):
    from research.runs.live import MetricsTail, write_progress

    def line(name, value, step=None, t=0.0):
        return json.dumps({"kind": "metric", "name": name, "value": value, "step": step, "time": t}) + "\n"

    run_dir = tmp_path / "runs" / "1"
    run_dir.mkdir(parents=True)
    tail = MetricsTail(run_dir)
    assert tail.poll() == [] and tail.latest == {}
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text(line("loss", 1.0, 0, 1.0) + line("acc", 0.5, t=1.0) + '{"kind": "metric", "name": "lo')
    assert tail.poll() == ["loss", "acc"]  # the half-written line waits
    assert tail.latest["loss"] == {"value": 1.0, "step": 0, "time": 1.0}
    with open(metrics, "a") as fh:
        fh.write('ss", "value": 0.5, "step": 1, "time": 2.0}\n' + line("loss", 9.0, 0, 3.0)
                 + json.dumps({"kind": "artifact", "name": "a.txt", "path": "/x"}) + "\n")
    assert tail.poll() == ["loss"]
    assert tail.latest["loss"]["value"] == 0.5  # step 1 beats a later line at step 0, as final_metrics rules
    assert tail.poll() == []
    (run_dir / "metrics.live.jsonl").write_text(line("gpu", 3, t=4.0))
    assert tail.poll() == ["gpu"] and set(tail.latest) == {"loss", "acc", "gpu"}
    write_progress(run_dir, 2, 5)
    tail.poll()
    assert (tail.cells_done, tail.cells_total) == (2, 5)
    # The run went back to its queue: its files moved away, a new attempt begins.
    from research.runs.recovery import set_aside

    set_aside(run_dir)
    metrics.write_text(line("loss", 7.0, 0, 5.0))
    assert tail.poll() == ["loss"] and tail.latest == {"loss": {"value": 7.0, "step": 0, "time": 5.0}}
    assert (tail.cells_done, tail.cells_total) == (None, None)


def test_record_mirrors_metric_lines_where_the_run_folder_says(tmp_path, monkeypatch):
    from research.record import MIRROR_NOTE, record, record_artifact

    run_dir, live = tmp_path / "scratch", tmp_path / "project" / "metrics.live.jsonl"
    run_dir.mkdir()
    live.parent.mkdir()
    monkeypatch.setenv("RESEARCH_RUN_DIR", str(run_dir))
    record("a", 1)
    assert not live.exists()  # no note: no mirror
    (run_dir / MIRROR_NOTE).write_text(str(live))
    (tmp_path / "f.txt").write_text("x")
    record("loss", 0.5, step=2)
    record_artifact(tmp_path / "f.txt")
    own = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    mirrored = [json.loads(x) for x in live.read_text().splitlines()]
    assert [e["name"] for e in own] == ["a", "loss", "f.txt"]
    assert mirrored == [own[1]]  # metrics only, the same line
    (run_dir / MIRROR_NOTE).write_text(str(tmp_path / "gone" / "x.jsonl"))
    record("b", 2)  # a mirror that cannot be written never fails the notebook


def test_watch_of_an_ended_or_unknown_run(cli, project):
    from research.backlog.items import resolve_item
    from research.runs.lifecycle import mark_ended
    from research.runs.plan import create_runs, plan_runs
    from research.store.db import session_scope

    with session_scope(project / "todo.db", write=True) as session:
        plans = plan_runs(session, resolve_item(session, "exp"), project)
        (run_id,), _ = create_runs(session, plans, project, None)
    mark_ended(project / "todo.db", run_id, "failed", "it broke")
    result = cli("runs", "watch", str(run_id), ok=False)
    assert result.exit_code == 1 and result.stdout == f"run {run_id} failed in 0.0s (it broke)\n"
    result = cli("runs", "watch", "42", ok=False)
    assert result.exit_code == 1 and result.stderr == "Error: no run '42'\n"
    assert "live" not in cli.json("runs", "show", str(run_id))


# --------------------------------------------------------------------------- while a run runs


@pytest.mark.slow
def test_show_and_watch_see_the_metrics_of_a_run_still_running(cli, project):
    runner = research(project, "run", "exp", "-p", "n=4", "-p", "pause=1.5")
    watcher = None
    try:
        wait_for(lambda: status_of(project, 1), timeout=90)
        watcher = research(project, "runs", "watch", "1")
        lines = Lines(watcher)
        assert lines.next() == "loss = 1 (step 0)"
        assert status_of(project, 1) == "running"  # seen while it runs
        detail = cli.json("runs", "show", "1")
        assert detail["status"] == "running" and detail["metrics"] == {}  # the database has them at the end
        assert detail["live"]["metrics"]["loss"]["step"] in (0, 1)
        assert detail["live"]["cells_total"] >= 2 and detail["live"]["cells_done"] is not None
        assert "Live (so far, " in cli("runs", "show", "1").stdout
        rest = []
        while (line := lines.next()) is not None:
            rest.append(line)
        watcher.wait(timeout=30)
        runner.wait(timeout=30)
    finally:
        stop(runner, *([watcher] if watcher else []))
    assert watcher.returncode == 0, watcher.stderr.read()
    assert rest[:4] == ["loss = 0.5 (step 1)", "loss = 0.3333 (step 2)", "loss = 0.25 (step 3)", "done = true"]
    assert rest[-1].startswith("run 1 succeeded in ") and "loss=0.25" in rest[-1]
    detail = cli.json("runs", "show", "1")
    assert "live" not in detail and len([m for m in detail["metric_history"] if m["name"] == "loss"]) == 4


@pytest.mark.slow
def test_live_metrics_of_a_dask_run_reach_the_project_and_are_ingested_once(cli, project, dask_cluster):  # noqa: F811
    cluster = dask_cluster(workers=1)
    runner = research(project, "run", "exp", "-p", "n=4", "-p", "pause=1.5", "-x", "dask", "--scheduler", cluster.address)
    live = project / "runs" / "1" / "metrics.live.jsonl"
    try:
        wait_for(lambda: live.exists() and "loss" in live.read_text(), timeout=90)
        detail = cli.json("runs", "show", "1")
        assert detail["status"] == "running" and detail["executor"] == "dask"
        assert detail["live"]["metrics"]["loss"]["value"] in (1.0, 0.5)
        assert not (project / "runs" / "1" / "metrics.jsonl").exists()  # the worker's own file comes at the end
        out, err = runner.communicate(timeout=120)
    finally:
        stop(runner)
    assert runner.returncode == 0, err
    assert "run 1 succeeded" in out
    detail = cli.json("runs", "show", "1")
    assert len([m for m in detail["metric_history"] if m["name"] == "loss"]) == 4  # not 8
    assert detail["metrics"]["loss"] == pytest.approx(0.25)
    assert not live.exists() and (project / "runs" / "1" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_live_metrics_of_a_dask_worker_that_cannot_write_the_project_come_through_the_scheduler(cli, project, dask_cluster):  # noqa: F811
    from research.executors.remote import LIVE_THROUGH_SCHEDULER

    cluster = dask_cluster(workers=1, worker_env={LIVE_THROUGH_SCHEDULER: "1"})  # as if runs/ were out of its reach
    runner = research(project, "run", "exp", "-p", "n=4", "-p", "pause=1.5", "-x", "dask", "--scheduler", cluster.address)
    live = project / "runs" / "1" / "metrics.live.jsonl"
    try:
        wait_for(lambda: live.exists() and "loss" in live.read_text(), timeout=90)
        detail = cli.json("runs", "show", "1")
        assert detail["status"] == "running"
        assert detail["live"]["metrics"]["loss"]["value"] in (1.0, 0.5, 1 / 3)
        watched = [json.loads(line) for line in live.read_text().splitlines()]
        assert all(entry["name"] == "loss" for entry in watched) and len(watched) < 4  # while it runs
        out, err = runner.communicate(timeout=120)
    finally:
        stop(runner)
    assert runner.returncode == 0, err
    detail = cli.json("runs", "show", "1")
    assert len([m for m in detail["metric_history"] if m["name"] == "loss"]) == 4  # ingested once
    assert not live.exists()


@pytest.mark.slow
def test_watch_follows_a_slurm_job_that_nobody_waits_for_to_its_end(cli, project):
    cli("run", "exp", "-p", "n=3", "-p", "pause=1.5", "-x", "slurm", "-E", "cluster=local", "--no-wait")
    watcher = research(project, "runs", "watch", "1")
    try:
        lines = Lines(watcher)
        assert lines.next(120) == "loss = 1 (step 0)"
        assert status_of(project, 1) in ("queued", "running")
        rest = []
        while (line := lines.next()) is not None:
            rest.append(line)
        watcher.wait(timeout=30)
    finally:
        stop(watcher)
    assert watcher.returncode == 0, watcher.stderr.read()
    assert rest[-1].startswith("run 1 succeeded") and status_of(project, 1) == "succeeded"  # watch collected it
    assert len([m for m in cli.json("runs", "show", "1")["metric_history"] if m["name"] == "loss"]) == 3
