"""The run queue: `research run --queue` stores runs, `research queue work` drains them (one claim per
run, even with two processes), `research queue cancel` removes them, and a `queue work` process
that is stopped or killed loses no run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import FIXTURE_NOTEBOOKS, research_env, table_rows, wait_for


@pytest.fixture
def project(cli, isolated):
    shutil.copytree(FIXTURE_NOTEBOOKS, isolated / "notebooks", ignore=shutil.ignore_patterns("*.py"))
    cli("add", "Experiment", "--slug", "exp")
    cli("link", "exp", "notebooks/typed.ipynb")
    cli("link", "exp", "notebooks/sleep.ipynb")
    return isolated


def rows(project: Path) -> dict[int, dict]:
    return {r["id"]: r for r in table_rows(project / "todo.db", "run")}


def execute(project: Path, sql: str, *args) -> None:
    conn = sqlite3.connect(project / "todo.db")
    try:
        conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid



def research(project: Path, *args: str, **kw) -> subprocess.Popen:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "research", *args], cwd=project, env=research_env(project / "todo.db"),
                            text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- storing and listing (fast)


def test_run_queue_stores_the_runs_and_returns(cli, project):
    result = cli("run", "exp", "-n", "typed", "--grid", "steps=1,2", "--timeout", "30", "--kernel", "python3", "--queue")
    assert "queued 2 run(s) (runs 1-2, sweep " in result.stderr and "research queue work" in result.stderr
    assert result.stdout == ""
    for row in rows(project).values():
        assert (row["status"], row["queue"], row["timeout_s"], row["kernel"]) == ("queued", "default", 30.0, "python3")
        assert row["pid"] is None and row["started_at"] is None
    # Waiting runs are not stale: listing the runs leaves them queued.
    assert [r["status"] for r in cli.json("runs")] == ["queued", "queued"]
    entries = cli.json("queue")
    assert [(e["id"], e["item"], e["notebook"], e["state"]) for e in entries] == [
        (1, "exp", "notebooks/typed.ipynb", "queued"), (2, "exp", "notebooks/typed.ipynb", "queued")]
    assert entries[0]["params"]["steps"] == 1 and entries[0]["queued_at"] and entries[0]["pid"] is None
    table = cli("queue").stdout
    assert "Run" in table.splitlines()[0] and "notebooks/typed.ipynb" in table and "steps=2" in table


def test_run_queue_refuses_what_does_not_go_with_it(cli, project):
    for args, said in ((["-j", "2"], "-j does not go with --queue"),
                       (["--log-output"], "--log-output does not go with --queue"),
                       (["-x", "dask"], "drop --executor")):
        result = cli("run", "exp", "-n", "typed", "--queue", *args, ok=False)
        assert result.exit_code == 1 and said in result.stderr and "Traceback" not in result.output
    assert cli("run", "exp", "-n", "typed", "-p", "stepz=1", "--queue", ok=False).exit_code == 1
    assert rows(project) == {}
    assert cli.json("queue") == [] and "The queue is empty." in cli("queue").stderr


def test_cancel_removes_entries_and_refuses_unknown_or_ended_runs(cli, project):
    from research.backlog.items import resolve_item
    from research.runs.plan import create_runs, plan_runs
    from research.store.db import session_scope

    cli("run", "exp", "-n", "typed", "--grid", "steps=1,2,3", "--queue")
    with session_scope(project / "todo.db", write=True) as session:  # a run outside any queue
        plans = plan_runs(session, resolve_item(session, "exp"), project, "typed")
        create_runs(session, plans, project, None)
    result = cli("queue", "cancel", "2")
    assert result.stdout == "run 2 interrupted (cancelled from the queue)\n"
    row = rows(project)[2]
    assert (row["status"], row["reason"]) == ("interrupted", "cancelled from the queue") and row["ended_at"]
    before = rows(project)
    for args, said in ((["2"], "run 2 has already ended (interrupted)"), (["99"], "no run '99'"),
                       (["1", "99"], "no run '99'"), (["4"], "run 4 is not in a queue"), ([], "usage"),
                       (["1", "--all"], "usage")):
        result = cli("queue", "cancel", *args, ok=False)
        assert result.exit_code == 1 and said in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert rows(project) == before  # nothing written: run 1 is still queued
    result = cli("queue", "cancel", "--all")
    assert result.stdout.splitlines() == ["run 1 interrupted (cancelled from the queue)",
                                          "run 3 interrupted (cancelled from the queue)"]
    assert "nothing to cancel" in cli("queue", "cancel", "--all").stderr
    assert rows(project)[4]["status"] == "queued"  # not a queue's run: left alone


def sweeps(project: Path) -> dict[str, dict]:
    return {r["id"]: r for r in table_rows(project / "todo.db", "sweep")}


@pytest.mark.slow
def test_cancel_takes_a_queued_sweep_or_grid_and_queue_work_then_runs_none_of_its_trials(cli, project):
    cli("add", "Quadratic", "--slug", "quad")
    cli("link", "quad", "notebooks/quadratic.ipynb")
    search = cli("sweep", "quad", "--space", "x=uniform(-3,3)", "--space", "y=uniform(-4,0)", "--trials", "2",
                 "--minimize", "loss", "--queue").stdout.split()[1]
    queued = cli("run", "exp", "-n", "typed", "--grid", "steps=1,2", "--queue").stderr
    grid = queued.split("sweep ", 1)[1].split(")", 1)[0]  # "queued 2 run(s) (runs 1-2, sweep ID); ..."
    cli("run", "exp", "-n", "typed", "-p", "steps=3", "--queue")
    listed = cli("queue").stdout
    assert f"sweep {search}: notebooks/quadratic.ipynb, 0/2 trials, waiting" in listed and "steps=3" in listed
    # One wrong id among good ones: one line, exit 1, and nothing written (the sweep is still waiting).
    before = (rows(project), sweeps(project))
    for args, said in (([search, grid, "nosuch"], "no run or sweep 'nosuch'"), ([search, "99"], "no run '99'")):
        result = cli("queue", "cancel", *args, ok=False)
        assert result.exit_code == 1 and said in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
        assert (rows(project), sweeps(project)) == before
    result = cli("queue", "cancel", search, grid)
    assert result.stdout.splitlines() == [f"sweep {search}: cancelled from queue 'default'",
                                          "run 1 interrupted (cancelled from the queue)",
                                          "run 2 interrupted (cancelled from the queue)"]
    shown = cli.json("sweep", "show", search)
    assert (shown["status"], shown["reason"]) == ("stopped", "cancelled from the queue")
    assert [e["id"] for e in cli.json("queue")] == [3]  # neither sweep is listed any more
    for ref, said in ((grid, f"sweep {grid} has no run left in the queue"), (search, "is stopped: not in the queue")):
        again = cli("queue", "cancel", ref, ok=False)
        assert again.exit_code == 1 and said in again.stderr, again.stderr
    worked = cli("queue", "work", "--until-empty")
    assert worked.stdout.startswith("run 3 succeeded") and len(worked.stdout.splitlines()) == 1, worked.output
    assert search not in worked.output
    got = rows(project)
    assert sorted(got) == [1, 2, 3]  # no trial of the cancelled sweep was written, none ran
    assert [got[i]["status"] for i in (1, 2, 3)] == ["interrupted", "interrupted", "succeeded"]
    assert sweeps(project)[search]["status"] == "stopped"


def test_cancel_refuses_a_grid_whose_runs_are_not_queued(cli, project):
    from research.backlog.items import resolve_item
    from research.runs.params import parse_grid
    from research.runs.plan import create_runs, plan_runs
    from research.store.db import session_scope

    with session_scope(project / "todo.db", write=True) as session:  # a `run --grid` run now, not queued
        plans = plan_runs(session, resolve_item(session, "exp"), project, "typed", grid=parse_grid(["steps=1,2"]))
        _ids, grid = create_runs(session, plans, project, None)
    result = cli("queue", "cancel", grid, ok=False)
    assert result.exit_code == 1 and f"`research runs cancel --sweep {grid}`" in result.stderr, result.output
    assert {r["status"] for r in rows(project).values()} == {"queued"}


def test_a_run_whose_queue_process_died_goes_back_to_the_queue(cli, project):
    cli("run", "exp", "-n", "typed", "--grid", "steps=1,2", "--queue")
    run_dir = project / "runs" / "1"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"kind": "metric", "name": "loss", "value": 1}\n')
    (run_dir / "output.ipynb").write_text("{}")
    pid = dead_pid()
    execute(project, "UPDATE run SET status = 'running', pid = ?, host = ?, heartbeat_at = '2026-01-01T00:00:00+00:00' "
            "WHERE id = 1", pid, __import__("socket").gethostname())
    # A cancel asked of a running entry whose process then died: it ends, it does not go back.
    execute(project, "UPDATE run SET status = 'running', pid = ?, host = ?, reason = 'cancelled from the queue' "
            "WHERE id = 2", pid, __import__("socket").gethostname())
    result = cli("queue", "--json")
    assert "put 1 run(s) whose `research queue work` process died back in the queue" in result.stderr
    (entry,) = json.loads(result.stdout)
    assert entry["id"] == 1 and entry["state"] == "queued" and entry["pid"] is None
    assert "process died (last heartbeat 2026-01-01" in entry["note"]
    first = rows(project)[1]
    assert first["status"] == "queued" and first["started_at"] is None and first["host"] is None
    assert sorted(p.name for p in run_dir.iterdir()) == ["attempts"]
    assert (run_dir / "attempts" / "1" / "metrics.jsonl").exists() and (run_dir / "attempts" / "1" / "output.ipynb").exists()
    second = rows(project)[2]
    assert (second["status"], second["reason"]) == ("interrupted", "cancelled from the queue")


def test_two_processes_claiming_at_once_never_take_the_same_run(cli, project):
    """The claim alone, many times over: two processes take every entry once between them."""
    cli("run", "exp", "-n", "typed", "--grid", "steps=0..59", "--queue")
    # Both begin together, once imported: each says it is ready, then waits for the other.
    code = ("import sys, time\nfrom pathlib import Path\nfrom research.runs.queue import claim_next\n"
            "db, me, other = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])\nme.touch()\n"
            "while not other.exists():\n    time.sleep(0.001)\nids = []\n"
            "while (run := claim_next(db)) is not None:\n    ids.append(run.id)\n    time.sleep(0.002)\nprint(' '.join(map(str, ids)))\n")
    ready = [project / "ready-0", project / "ready-1"]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(project / "todo.db"), str(ready[n]), str(ready[1 - n])],
                              env=research_env(project / "todo.db"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in range(2)]
    taken = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        taken.append([int(x) for x in out.split()])
    assert sorted(taken[0] + taken[1]) == list(range(1, 61))
    assert not set(taken[0]) & set(taken[1])
    assert {r["status"] for r in rows(project).values()} == {"running"}
    assert len({r["pid"] for r in rows(project).values()}) == 2


# --------------------------------------------------------------------------- working (notebooks run)


@pytest.mark.slow
def test_queue_work_until_empty_runs_each_entry_and_a_deleted_notebook_fails_alone(cli, project):
    shutil.copy(project / "notebooks" / "typed.ipynb", project / "notebooks" / "gone.ipynb")
    cli("link", "exp", "notebooks/gone.ipynb")
    cli("run", "exp", "-n", "typed", "-p", "steps=2", "--queue")
    cli("run", "exp", "-n", "gone", "--queue")
    cli("run", "exp", "-n", "sleep", "-p", "seconds=30", "--timeout", "2", "--queue")
    cli("run", "exp", "-n", "typed", "-p", "steps=4", "--queue")
    (project / "notebooks" / "gone.ipynb").unlink()
    result = cli("queue", "work", "--until-empty", "-j", "2", ok=False)
    assert result.exit_code == 1, result.output  # not every run succeeded
    lines = {int(line.split()[1]): line for line in result.stdout.splitlines()}
    assert sorted(lines) == [1, 2, 3, 4]
    assert lines[2] == "run 2 failed in 0.0s (notebook notebooks/gone.ipynb no longer exists)"
    assert "Traceback" not in result.output
    got = rows(project)
    assert [got[i]["status"] for i in (1, 2, 3, 4)] == ["succeeded", "failed", "timeout", "succeeded"]
    assert "limit 2 s" in got[3]["reason"]  # the limit it was queued with
    assert cli.json("runs", "show", "4")["metrics"]["loss"] == pytest.approx(1.5)
    assert cli.json("queue") == []
    assert "run 1 started: notebooks/typed.ipynb" in result.stderr


@pytest.mark.slow
def test_two_queue_work_processes_share_the_queue_without_taking_a_run_twice(cli, project):
    cli("run", "exp", "-n", "typed", "--grid", "steps=1..6", "--queue")
    workers = [research(project, "queue", "work", "--until-empty") for _ in range(2)]
    outputs = [finish(w) for w in workers]
    for worker, (_out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    done = [[int(line.split()[1]) for line in out.splitlines()] for out, _err in outputs]
    started = [[int(line.split()[1]) for line in err.splitlines() if " started: " in line] for _out, err in outputs]
    assert sorted(done[0] + done[1]) == list(range(1, 7)) == sorted(started[0] + started[1])
    got = rows(project)
    assert all(r["status"] == "succeeded" for r in got.values())
    for run_id, row in got.items():  # each ran once: one loss per step, and the folder of one attempt
        history = cli.json("runs", "show", str(run_id))["metric_history"]
        assert len([m for m in history if m["name"] == "loss"]) == row["id"]
        assert not (project / "runs" / str(run_id) / "attempts").exists()


@pytest.mark.slow
def test_sigkill_of_queue_work_mid_run_puts_the_run_back_and_another_process_completes_it(cli, project):
    cli("run", "exp", "-n", "sleep", "-p", "seconds=30", "--queue")
    first = research(project, "queue", "work")
    metrics = project / "runs" / "1" / "metrics.jsonl"
    try:
        wait_for(lambda: metrics.exists() and "kernel_pid" in metrics.read_text())
        assert rows(project)[1]["status"] == "running" and rows(project)[1]["pid"] == first.pid
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        finish(first, 10)
    entry = wait_for(lambda: [e for e in cli.json("queue") if e["state"] == "queued"])[0]  # any command requeues it
    assert entry["id"] == 1 and "process died" in entry["note"]
    assert (project / "runs" / "1" / "attempts" / "1" / "metrics.jsonl").exists()
    execute(project, "UPDATE run SET params_given = json_set(params_given, '$.seconds', '0.5'), "
            "params = json_set(params, '$.seconds', 0.5) WHERE id = 1")  # the second attempt is short
    second = research(project, "queue", "work", "--until-empty")
    out, err = finish(second)
    assert second.returncode == 0, err
    assert out.startswith("run 1 succeeded")
    detail = cli.json("runs", "show", "1")
    assert detail["status"] == "succeeded" and detail["pid"] == second.pid
    assert [m["name"] for m in detail["metric_history"]] == ["kernel_pid", "woke"]  # the first attempt's not counted


@pytest.mark.slow
def test_sigterm_of_queue_work_puts_its_runs_back_and_a_cancel_stops_one_run(cli, project):
    cli("run", "exp", "-n", "sleep", "--grid", "seconds=30,31", "--queue")
    worker = research(project, "queue", "work", "-j", "2")
    try:
        for run_id in (1, 2):
            metrics = project / "runs" / str(run_id) / "metrics.jsonl"
            wait_for(lambda metrics=metrics: metrics.exists() and "kernel_pid" in metrics.read_text())
        result = cli("queue", "cancel", "2")  # stopped by its process, which goes on
        assert result.stdout == "run 2 interrupted (cancelled from the queue)\n", result.output
        assert worker.poll() is None and rows(project)[1]["status"] == "running"
        running = cli.json("queue")
        assert [(e["id"], e["state"], e["pid"]) for e in running] == [(1, "running", worker.pid)]
        worker.send_signal(signal.SIGTERM)
        out, err = finish(worker, 60)
    finally:
        finish(worker, 10)
    assert worker.returncode == 143, err
    assert "run 1 back in the queue: its `research queue work` process was stopped (SIGTERM)" in err
    assert "run 2 interrupted" in out and "Traceback" not in err
    got = rows(project)
    assert got[1]["status"] == "queued" and got[1]["pid"] is None and "stopped (SIGTERM)" in got[1]["reason"]
    assert (got[2]["status"], got[2]["reason"]) == ("interrupted", "cancelled from the queue")
    assert (project / "runs" / "1" / "attempts" / "1" / "output.ipynb").exists()  # the notebook so far, set aside
    assert (project / "runs" / "2" / "output.ipynb").exists()
