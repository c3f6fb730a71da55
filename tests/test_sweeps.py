"""`research sweep`: search spaces, trials on every executor, pruning, fail-fast, resume after
Ctrl-C or SIGKILL, and `sweep show`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from research.errors import ResearchError
from research.sweeps.space import check_space, parse_space
from tests.support import FIXTURE_NOTEBOOKS, research_env, wait_for
from tests.support import table_rows as rows
from tests.test_executors import dask_cluster, slurm_conf  # noqa: F401  (fixtures)

QUADRATIC = "notebooks/quadratic.ipynb"
SPACE = ["--space", "x=uniform(-3,3)", "--space", "y=uniform(-4,0)", "--space", "opt=choice(adam,sgd)"]


@pytest.fixture
def project(cli, isolated):
    shutil.copytree(FIXTURE_NOTEBOOKS, isolated / "notebooks", ignore=shutil.ignore_patterns("*.py"))
    cli("add", "Quadratic", "--slug", "quad")
    cli("link", "quad", QUADRATIC)
    return isolated



# --------------------------------------------------------------------------- the space (no runs)


class _Spec:
    def __init__(self, type_name):
        self.name, self.type_name, self.default, self.default_repr, self.help = "p", type_name, None, "", ""


def test_space_kinds_parse_and_describe():
    space = parse_space(["lr=loguniform(1e-5,1e-2)", "layers=int(2,8)", "opt=choice(adam,sgd)",
                         "dropout=uniform(0,0.5)", "width=int(16,256,16)", "heads=logint(1,64)"])
    assert [d.describe() for d in space.values()] == [
        "loguniform(1e-05, 0.01)", "int(2, 8)", "choice(adam, sgd)", "uniform(0, 0.5)", "int(16, 256, 16)",
        "logint(1, 64)"]
    assert space["layers"].grid_values() == [2, 3, 4, 5, 6, 7, 8]
    assert space["width"].grid_values()[:3] == [16, 32, 48]
    assert parse_space(["flag=choice(True,false,3,0.5,text)"])["flag"].choices == (True, "false", 3, 0.5, "text")


@pytest.mark.parametrize("text, message", [
    ("lr", "write NAME=KIND(ARGS)"),
    ("lr=normal(0,1)", "unknown distribution 'normal'"),
    ("lr=uniform(1)", "uniform(LOW,HIGH)"),
    ("lr=uniform(a,1)", "'a' is not a number"),
    ("lr=uniform(1,1)", "LOW must be below HIGH"),
    ("lr=loguniform(0,1)", "needs LOW > 0"),
    ("n=int(1.5,3)", "takes whole numbers"),
    ("n=int(1,3,0)", "the step must be at least 1"),
    ("o=choice()", "at least one value"),
    ("o=choice(a,a)", "a value given twice"),
    ("lr=uniform(0,inf)", "bounds must be finite"),
])
def test_a_malformed_space_is_one_clear_error(text, message):
    with pytest.raises(ResearchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_space([text])


def test_a_space_is_checked_against_the_notebooks_types():
    specs = {"lr": _Spec("float"), "layers": _Spec("int"), "opt": _Spec("str"), "flag": _Spec("bool")}
    with pytest.raises(ResearchError, match="declares no parameter 'lrr'; known: lr, layers"):
        check_space(parse_space(["lrr=uniform(0,1)"]), specs, "nb.ipynb", set())
    with pytest.raises(ResearchError, match=r"declares layers: int; uniform\(\) gives floats, use int\(1,4\)"):
        check_space(parse_space(["layers=uniform(1,4)"]), specs, "nb.ipynb", set())
    with pytest.raises(ResearchError, match="use choice"):
        check_space(parse_space(["opt=int(1,4)"]), specs, "nb.ipynb", set())
    with pytest.raises(ResearchError, match="flag.*expects bool"):
        check_space(parse_space(["flag=choice(yes,maybe)"]), specs, "nb.ipynb", set())
    with pytest.raises(ResearchError, match="given with -p and searched"):
        check_space(parse_space(["lr=uniform(0,1)"]), specs, "nb.ipynb", {"lr"})
    checked = check_space(parse_space(["flag=choice(yes,no)", "lr=int(1,3)"]), specs, "nb.ipynb", set())
    assert checked["flag"].choices == (True, False) and checked["lr"].is_int


@given(st.floats(-1e6, 1e6, allow_nan=False), st.floats(1e-6, 1e6, allow_nan=False))
def test_any_finite_interval_round_trips_through_json(low, width):
    from research.sweeps.space import space_from_json, space_to_json

    space = parse_space([f"v=uniform({low!r},{low + width!r})"])
    assert space_from_json(json.loads(json.dumps(space_to_json(space)))) == space


# --------------------------------------------------------------------------- through the CLI


def test_showing_and_listing_sweeps_does_not_import_optuna(cli, project):
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom research.cli import app\n"
            "r = CliRunner()\nres = r.invoke(app, ['sweep', 'list'])\nassert res.exit_code == 0, res.output\n"
            "print('optuna' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=project,
                         env=research_env(project / "todo.db"), check=True)
    assert out.stdout.strip() == "False"


def test_bad_sweeps_write_nothing(cli, project):
    before = rows(project / "todo.db", "event")
    for args, message in [
        ([*SPACE, "--trials", "2"], "--maximize METRIC or --minimize METRIC"),
        ([*SPACE, "--minimize", "loss"], "--sampler tpe needs --trials N"),
        (["--space", "z=uniform(0,1)", "--trials", "2", "--minimize", "loss"], "declares no parameter 'z'"),
        (["--space", "x=gauss(0,1)", "--trials", "2", "--minimize", "loss"], "unknown distribution 'gauss'"),
        (["--space", "opt=uniform(0,1)", "--trials", "2", "--minimize", "loss"], "declares opt: str"),
        (["--space", "x=uniform(0,1)", "-p", "x=1", "--trials", "2", "--minimize", "loss"], "given with -p"),
        (["--space", "x=uniform(0,1)", "--sampler", "grid", "--minimize", "loss"], "--sampler grid needs choice()"),
        (["--space", "x=uniform(0,1)", "-p", "steps=many", "--trials", "2", "--minimize", "loss"], "steps"),
        (["--space", "x=uniform(0,1)", "--trials", "2", "--minimize", "loss", "--prune", "mean"], "unknown pruner"),
        (["--space", "x=uniform(0,1)", "--trials", "2", "--minimize", "loss", "--sampler", "cmaes"], "unknown sampler"),
    ]:
        result = cli("sweep", "quad", *args, ok=False)
        assert result.exit_code == 1, args
        assert message in result.stderr and result.stderr.count("\n") == 1, (args, result.stderr)
    assert cli("sweep", "nosuch", *SPACE, "--trials", "1", "--minimize", "loss", ok=False).exit_code == 1
    assert rows(project / "todo.db") == [] and rows(project / "todo.db", "sweep") == []
    assert rows(project / "todo.db", "event") == before
    for args, message in [(["resume", "nope"], "no sweep 'nope'"), (["show", "nope"], "no sweep 'nope'")]:
        result = cli("sweep", *args, ok=False)
        assert result.exit_code == 1 and message in result.stderr


@pytest.mark.slow
def test_a_sweep_runs_its_trials_and_show_ranks_them(cli, project):
    result = cli("sweep", "quad", *SPACE, "--trials", "4", "--minimize", "loss", "--sampler", "random",
                 "--seed", "3", "-j", "2")
    assert "finished, 4/4 trials; best trial" in result.stdout
    assert result.stderr.count("trial ") >= 4
    (sweep,) = rows(project / "todo.db", "sweep")
    assert sweep["status"] == "finished" and sweep["pid"] is None
    runs = rows(project / "todo.db")
    assert sorted(r["trial"] for r in runs) == [0, 1, 2, 3]
    assert {r["sweep_id"] for r in runs} == {sweep["id"]} and all(r["status"] == "succeeded" for r in runs)
    detail = cli.json("sweep", "show", sweep["id"])
    values = [t["value"] for t in detail["trials"]]
    assert values == sorted(values) and len(values) == 4
    for trial in detail["trials"]:  # the objective is the notebook's own loss of the values it was given
        p = trial["params"]
        expected = (p["x"] - 1) ** 2 + (p["y"] + 2) ** 2 + (0.5 if p["opt"] == "sgd" else 0.0)
        assert trial["value"] == pytest.approx(expected)
        assert -3 <= p["x"] <= 3 and -4 <= p["y"] <= 0 and p["opt"] in ("adam", "sgd")
    assert detail["best"] == detail["trials"][0]
    # The item's best run follows the sweep's: the link took the sweep's objective as its rule.
    shown = cli.json("show", "quad")
    best_runs = [r["id"] for r in shown["runs"] if r["best"]]
    assert best_runs == [detail["best"]["run"]]
    text = cli("sweep", "show", sweep["id"]).stdout
    assert f"best: trial {detail['best']['trial']}" in text and "best so far by trial" in text
    out = project / "charts"
    cli("sweep", "show", sweep["id"], "-o", str(out))
    pngs = sorted(p.name for p in out.iterdir())
    assert pngs == [f"sweep-{sweep['id']}-sweeps.png", f"sweep-{sweep['id']}-trials.png"]
    assert all((out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)
    page = project / "sweep.html"
    cli("sweep", "show", sweep["id"], "-o", str(page))
    assert page.read_text().count("data:image/png;base64,") == 2
    listed = cli.json("sweep", "list")
    assert listed[0]["id"] == sweep["id"] and listed[0]["ended"] == 4 and listed[0]["best"] == detail["best"]["value"]
    result = cli("sweep", "resume", sweep["id"], ok=False)
    assert result.exit_code == 1 and "is finished (4 trials); nothing to resume" in result.stderr


@pytest.mark.slow
def test_the_same_seed_asks_the_same_trials(cli, project):
    first = cli("sweep", "quad", *SPACE, "--trials", "3", "--minimize", "loss", "--seed", "11")
    second = cli("sweep", "quad", *SPACE, "--trials", "3", "--minimize", "loss", "--seed", "11")
    by_sweep: dict[str, list] = {}
    for run in rows(project / "todo.db"):
        by_sweep.setdefault(run["sweep_id"], []).append(json.loads(run["params"]))
    a, b = by_sweep.values()
    assert a == b and first.stdout.split(":")[-1] == second.stdout.split(":")[-1]


@pytest.mark.slow
def test_a_metric_no_trial_records_is_said_after_the_first_trial(cli, project):
    result = cli("sweep", "quad", *SPACE, "--trials", "5", "--maximize", "accuracy", ok=False)
    assert result.exit_code == 1
    assert "trial 0 recorded no metric 'accuracy' (it recorded loss)" in result.stderr
    assert len(rows(project / "todo.db")) == 1
    (sweep,) = rows(project / "todo.db", "sweep")
    assert sweep["status"] == "failed" and "accuracy" in sweep["reason"]


@pytest.mark.slow
def test_fail_fast_stops_at_the_first_failed_trial(cli, project, write_notebook):
    write_notebook(project / "notebooks" / "fragile.ipynb",
                   _code("from research import record\nif x > 0:\n    raise ValueError('x too large')\nrecord('loss', x * x)"),
                   parameters="x: float = 0.0")
    cli("add", "Fragile", "--slug", "fragile")
    cli("link", "fragile", "notebooks/fragile.ipynb")
    result = cli("sweep", "fragile", "--space", "x=choice(-1,1,-2,-3)", "--sampler", "grid", "--minimize", "loss",
                 "--fail-fast", ok=False)
    assert result.exit_code == 1 and "--fail-fast: trial 1 failed: ValueError: x too large" in result.stderr
    assert [r["status"] for r in rows(project / "todo.db")] == ["succeeded", "failed"]
    # Without it, a failed trial is one trial among the others.
    result = cli("sweep", "fragile", "--space", "x=choice(-1,1,-2,-3)", "--sampler", "grid", "--minimize", "loss")
    assert "finished, 4/4 trials; best trial 0" in result.stdout and "with x=-1" in result.stdout


@pytest.mark.slow
def test_a_queued_fail_fast_sweep_cancels_its_own_trials_and_queue_work_goes_on(cli, project, write_notebook):
    """Stopping a sweep's trials stops those runs, not the `queue work` process driving it."""
    write_notebook(project / "notebooks" / "fragile.ipynb",
                   _code("import time\nfrom research import record\nif x > 0:\n    raise ValueError('x too large')\n"
                         "time.sleep(4)\nrecord('loss', x * x)"),
                   parameters="x: float = 0.0")
    cli("add", "Fragile", "--slug", "fragile")
    cli("link", "fragile", "notebooks/fragile.ipynb")
    cli("sweep", "fragile", "--space", "x=choice(1,-1,-2,-3)", "--sampler", "grid", "--seed", "3",
        "--minimize", "loss", "--fail-fast", "-j", "2", "--queue")
    cli("run", "quad", "--queue")
    result = cli("queue", "work", "--until-empty", "-j", "2", ok=False)
    assert result.exit_code == 1, result.stderr  # a failed sweep, not an interrupted worker (130)
    (sweep,) = [s for s in rows(project / "todo.db", "sweep")]
    assert sweep["status"] == "failed" and "--fail-fast" in sweep["reason"]
    runs = rows(project / "todo.db")
    (plain,) = [r for r in runs if r["sweep_id"] != sweep["id"]]
    assert plain["status"] == "succeeded"  # the queue was worked on after the sweep
    assert not [r for r in runs if r["status"] in ("queued", "running")]
    assert "interrupted" in [r["status"] for r in runs]  # the trial in flight when one failed was stopped


@pytest.mark.slow
def test_the_median_pruner_stops_trials_behind_the_others(cli, project):
    result = cli("sweep", "quad", "--space", "x=uniform(-3,3)", "--space", "y=uniform(-4,0)", "-p", "steps=6",
                 "-p", "pause=0.3", "--trials", "10", "--minimize", "loss", "--sampler", "random", "--seed", "5",
                 "--prune", "median")
    assert "finished, 10/10 trials" in result.stdout
    runs = rows(project / "todo.db")
    pruned = [r for r in runs if r["status"] == "pruned"]
    assert pruned and all(r["trial"] >= 3 for r in pruned)  # three trials to learn from first
    assert all(r["reason"].startswith("pruned at step") for r in pruned)
    for run in pruned:  # it stopped early: fewer steps recorded than the six a full trial records
        steps = [json.loads(line)["step"] for line in (project / "runs" / str(run["id"]) / "metrics.jsonl").open()]
        assert len(steps) < 6
    assert sum(r["status"] == "succeeded" for r in runs) == 10 - len(pruned)
    assert "pruned at step" in result.stderr


@pytest.mark.slow
def test_a_grid_sweep_visits_each_point_once_even_across_a_resume(cli, project):
    result = cli("sweep", "quad", "--space", "x=int(0,2)", "--space", "opt=choice(adam,sgd)", "--sampler", "grid",
                 "--minimize", "loss", "--seed", "2", "--trials", "4")
    assert "finished, 4/4 trials" in result.stdout
    (sweep,) = rows(project / "todo.db", "sweep")
    conn = sqlite3.connect(project / "todo.db")
    with conn:  # as if it had been asked for all six points: the next two are the ones not yet run
        conn.execute("UPDATE sweep SET trials = 6, status = 'stopped' WHERE id = ?", (sweep["id"],))
    conn.close()
    cli("sweep", "resume", sweep["id"])
    points = [(json.loads(r["params"])["x"], json.loads(r["params"])["opt"]) for r in rows(project / "todo.db")]
    assert sorted(points) == sorted((float(x), o) for x in (0, 1, 2) for o in ("adam", "sgd"))


def _start_sweep(project: Path, trials: int, pause: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "research", "sweep", "quad", *SPACE, "-p", "steps=4", "-p", f"pause={pause}",
         "--trials", str(trials), "--minimize", "loss", "--seed", "7", "-j", "2"],
        cwd=project, env=research_env(project / "todo.db"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ended(project: Path) -> list[dict]:
    return [r for r in rows(project / "todo.db") if r["status"] in ("succeeded", "failed", "pruned")]


def _assert_every_trial_ran_once(project: Path, trials: int, kept: dict[int, int]) -> None:
    runs = rows(project / "todo.db")
    assert not [r for r in runs if r["status"] in ("queued", "running")]
    done = [r for r in runs if r["status"] == "succeeded"]
    assert sorted(r["trial"] for r in done) == list(range(trials))  # each trial ended once
    assert {r["trial"]: r["id"] for r in done if r["trial"] in kept} == kept  # none that ended ran again
    for run in runs:
        if run["status"] == "interrupted":  # a retried trial ran again with the same values
            again = next(r for r in done if r["trial"] == run["trial"])
            assert json.loads(again["params"]) == json.loads(run["params"])


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_sweep_killed_or_interrupted_resumes_with_no_trial_lost_or_run_twice(cli, project, how):
    proc = _start_sweep(project, trials=6, pause=0.4)
    try:
        wait_for(lambda: len(_ended(project)) >= 2 and any(r["status"] == "running" for r in rows(project / "todo.db")),
                 timeout=90)
        os.kill(proc.pid, getattr(signal, how))
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    kept = {r["trial"]: r["id"] for r in _ended(project)}
    if how == "SIGINT":
        assert proc.returncode == 130 and "research sweep resume" in proc.stderr.read()
        assert rows(project / "todo.db", "sweep")[0]["status"] == "stopped"
    (sweep,) = rows(project / "todo.db", "sweep")
    time.sleep(0.5)  # a SIGKILLed sweep's runners see their parent gone and stop
    result = cli("sweep", "resume", sweep["id"])
    assert "finished, 6/6 trials" in result.stdout
    _assert_every_trial_ran_once(project, 6, kept)


@pytest.mark.slow
def test_a_queued_sweep_is_worked_by_queue_work_and_survives_its_worker_being_killed(cli, project):
    result = cli("sweep", "quad", *SPACE, "-p", "steps=4", "-p", "pause=0.4", "--trials", "5", "--minimize", "loss",
                 "--seed", "4", "--queue")
    sweep_id = result.stdout.split()[1]
    assert "queued: 5 trials" in result.stdout and rows(project / "todo.db") == []
    listed = cli.json("queue")
    assert listed == [dict(listed[0], sweep=sweep_id, state="waiting", trials=5, trials_ended=0)]
    worker = subprocess.Popen([sys.executable, "-m", "research", "queue", "work", "-j", "2"], cwd=project,
                              env=research_env(project / "todo.db"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(_ended(project)) >= 1 and any(r["status"] == "running" for r in rows(project / "todo.db")),
                 timeout=90)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    kept = {r["trial"]: r["id"] for r in _ended(project)}
    time.sleep(0.5)
    result = cli("queue", "work", "--until-empty")
    assert f"sweep {sweep_id}: finished, 5/5 trials" in result.stdout
    _assert_every_trial_ran_once(project, 5, kept)
    assert cli("queue").stderr.strip() == "The queue is empty."
    refused = cli("sweep", "quad", *SPACE, "--trials", "2", "--minimize", "loss", "--queue", "-x", "dask", ok=False)
    assert refused.exit_code == 1 and "--queue stores the sweep" in refused.stderr


def test_queue_cancel_takes_a_waiting_sweep_and_refuses_one_being_driven(cli, project):
    first = cli("sweep", "quad", *SPACE, "--trials", "3", "--minimize", "loss", "--queue").stdout.split()[1]
    second = cli("sweep", "quad", *SPACE, "--trials", "3", "--minimize", "loss", "--queue").stdout.split()[1]
    result = cli("queue", "cancel", first)
    assert result.stdout.strip() == f"sweep {first}: cancelled from queue 'default'"
    (stopped,) = [s for s in rows(project / "todo.db", "sweep") if s["id"] == first]
    assert stopped["status"] == "stopped" and stopped["reason"] == "cancelled from the queue"
    assert [entry["sweep"] for entry in cli.json("queue")] == [second]
    again = cli("queue", "cancel", first, ok=False)
    assert again.exit_code == 1 and "is stopped: not in the queue" in again.stderr
    before = rows(project / "todo.db", "sweep")
    unknown = cli("queue", "cancel", "nosuch", ok=False)
    assert unknown.exit_code == 1 and unknown.stderr.count("\n") == 1
    # A sweep a live `queue work` drives (this test's own process stands in for it) is refused.
    conn = sqlite3.connect(project / "todo.db")
    conn.execute("UPDATE sweep SET status = 'running', pid = ?, host = ? WHERE id = ?", (os.getpid(), socket.gethostname(), second))
    conn.commit()
    conn.close()
    before = rows(project / "todo.db", "sweep")
    driven = cli("queue", "cancel", second, ok=False)
    assert driven.exit_code == 1 and "is being driven by `queue work`" in driven.stderr
    assert rows(project / "todo.db", "sweep") == before  # nothing written
    result = cli("queue", "work", "--until-empty")
    assert rows(project / "todo.db") == []  # the cancelled sweep ran no trial (the driven one is not ours to take)
    assert result.exit_code == 0
    resumed = cli("sweep", "resume", first)
    assert "finished, 3/3 trials" in resumed.stdout


@pytest.mark.slow
def test_a_sweep_on_a_real_dask_cluster(cli, project, dask_cluster):  # noqa: F811
    cluster = dask_cluster()
    result = cli("sweep", "quad", *SPACE, "--trials", "3", "--minimize", "loss", "--seed", "1", "-j", "2",
                 "-x", "dask", "--scheduler", cluster.address)
    assert "finished, 3/3 trials" in result.stdout
    runs = rows(project / "todo.db")
    assert [r["executor"] for r in runs] == ["dask"] * 3 and all(r["status"] == "succeeded" for r in runs)
    assert sorted(r["trial"] for r in runs) == [0, 1, 2]


@pytest.mark.slow
def test_a_sweep_on_submitit_local(cli, project):
    result = cli("sweep", "quad", "--space", "x=choice(0,1)", "--sampler", "grid", "--minimize", "loss",
                 "-x", "slurm", "-E", "cluster=local")
    assert "finished, 2/2 trials; best trial" in result.stdout and "with x=1" in result.stdout
    assert [r["executor"] for r in rows(project / "todo.db")] == ["slurm"] * 2


@pytest.mark.slow
def test_a_sweep_on_a_real_slurm(cli, project, slurm_conf, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SLURM_CONF", str(slurm_conf))
    result = cli("sweep", "quad", "--space", "x=choice(0,1,2)", "--sampler", "grid", "--minimize", "loss", "-j", "2",
                 "-x", "slurm", "-E", "time_limit=5", "-E", "partition=debug")
    assert "finished, 3/3 trials; best trial" in result.stdout and "with x=1" in result.stdout
    runs = rows(project / "todo.db")
    assert [r["executor"] for r in runs] == ["slurm"] * 3 and all(r["status"] == "succeeded" for r in runs)


def _code(source: str):
    from nbformat.v4 import new_code_cell

    return new_code_cell(source)
