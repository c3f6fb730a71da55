"""Running linked notebooks through the CLI: records, statuses, sweeps, faults, concurrency."""

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

from tests.support import FIXTURE_NOTEBOOKS, REPO_ROOT, Cli, wait_for

FIXTURES = FIXTURE_NOTEBOOKS


@pytest.fixture
def project(cli, isolated):
    """A project folder (the test's temp dir) with the fixture notebooks and one item."""
    shutil.copytree(FIXTURES, isolated / "notebooks", ignore=shutil.ignore_patterns("*.py"))
    cli("add", "Experiment", "--slug", "exp")
    cli("link", "exp", "notebooks/typed.ipynb", "--best", "max:score")
    return isolated


def run_rows(path: Path) -> list[dict]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM run ORDER BY id")]
    finally:
        conn.close()


@pytest.mark.slow
def test_successful_run_records_everything(cli, project):
    result = cli("run", "exp", "-p", "steps=4", "-p", "name=007", "-p", "sizes=[3, 4]", "-p", "cfg={b: 2}")
    assert "run 1 succeeded" in result.stdout
    detail = cli.json("runs", "show", "1")
    assert detail["status"] == "succeeded"
    assert detail["params_given"] == {"steps": "4", "name": "007", "sizes": "[3, 4]", "cfg": "{b: 2}"}
    assert detail["params"]["steps"] == 4 and detail["params"]["name"] == "007"
    assert detail["params"]["sizes"] == [3, 4] and detail["params"]["cfg"] == {"b": 2}
    assert detail["params"]["lr"] == 0.5  # notebook default, resolved
    assert detail["metrics"]["loss"] == pytest.approx(1.5)  # last step of lr * i
    assert detail["metrics"]["types"] == ["int", "float", "str", "bool", "list", "dict"]
    assert len([m for m in detail["metric_history"] if m["name"] == "loss"]) == 4
    assert detail["notebook_sha256"] and len(detail["notebook_sha256"]) == 64
    assert detail["environment"]["device"] == "cpu" and detail["environment"]["python"]
    assert detail["started_at"] <= detail["ended_at"] and detail["duration_s"] > 0
    run_dir = project / "runs" / "1"
    assert (run_dir / "output.ipynb").exists() and (run_dir / "metrics.jsonl").exists()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "succeeded" and record["metrics"]["loss"] == pytest.approx(1.5)
    # The first run of a planned item starts it, as an event.
    shown = cli.json("show", "exp")
    assert shown["status"] == "active"
    assert any(e["action"] == "status" and e["after"]["status"] == "active" for e in shown["history"])
    assert shown["runs"][0]["id"] == 1


@pytest.mark.slow
def test_failure_in_cell_3_is_recorded_with_metrics_before_it(cli, project):
    cli("link", "exp", "notebooks/fail_cell3.ipynb")
    result = cli("run", "exp", "--notebook", "fail_cell3", ok=False)
    assert result.exit_code == 1
    assert "failed" in result.stdout and "ValueError: boom 2" in result.stdout
    detail = cli.json("runs", "show", "1")
    assert detail["status"] == "failed"
    assert detail["error"]["cell_index"] == 3 and detail["error"]["ename"] == "ValueError"
    assert detail["error"]["evalue"] == "boom 2" and any("boom" in line for line in detail["error"]["traceback"])
    assert detail["metrics"] == {"before": 1.5}
    show = cli("show", "exp").stdout
    assert "cell 3: ValueError: boom 2" in show
    text = cli("runs", "show", "1").stdout
    assert "Error in cell 3" in text


@pytest.mark.slow
def test_timeout_ends_run_as_timeout(cli, project):
    cli("link", "exp", "notebooks/sleep.ipynb")
    result = cli("run", "exp", "-n", "sleep", "-p", "seconds=30", "--timeout", "3", ok=False)
    assert result.exit_code == 1
    row = run_rows(project / "todo.db")[0]
    assert row["status"] == "timeout" and "timed out" in row["reason"]
    assert (project / "runs" / "1" / "output.ipynb").exists()


def test_bad_parameters_are_rejected_before_anything_runs(cli, project):
    result = cli("run", "exp", "-p", "stepz=3", ok=False)
    assert result.exit_code == 1 and "unknown parameter 'stepz'" in result.stderr and "known: steps" in result.stderr
    result = cli("run", "exp", "-p", "steps=many", ok=False)
    assert result.exit_code == 1 and "parameter 'steps' expects int, got 'many'" in result.stderr
    result = cli("run", "exp", "--grid", "lr=0.1,fast", ok=False)
    assert "expects float" in result.stderr
    assert run_rows(project / "todo.db") == []
    plan = json.loads(cli("run", "exp", "-p", "name=007", "--dry-run", "--json").stdout)
    assert plan[0]["params"]["name"] == "007"


def test_link_errors(cli, project):
    assert "notebook not found" in cli("link", "exp", "notebooks/missing.ipynb", ok=False).stderr
    cli("add", "Other", "--slug", "other")
    assert "no linked notebook" in cli("run", "other", ok=False).stderr
    names = [e["notebook"] for e in cli.json("notebooks")]
    assert "notebooks/typed.ipynb" in names
    cli("unlink", "exp")
    assert cli.json("show", "exp")["links"] == []


def test_a_notebook_without_a_parameters_cell_links_and_runs_as_papermill_runs_it(cli, project):
    """papermill runs a notebook with no cell tagged 'parameters' (it injects -p values at the top)."""
    cli("add", "Plain", "--slug", "plain")
    cli("link", "plain", "notebooks/no_params.ipynb")
    listed = {e["notebook"]: e for e in cli.json("notebooks")}["notebooks/no_params.ipynb"]
    assert listed["parameters"] == [] and "no cell tagged 'parameters'" in listed["error"]
    assert "succeeded" in cli("run", "plain").stdout
    refused = cli("run", "plain", "-p", "x=2", ok=False)
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
    assert "declares no 'x'" in refused.stderr and "--no-check" in refused.stderr
    assert "succeeded" in cli("run", "plain", "-p", "x=2", "--no-check").stdout
    runs = cli.json("runs", "plain")
    out = json.loads((project / "runs" / str(runs[-1]["id"]) / "output.ipynb").read_text(encoding="utf-8"))
    first = out["cells"][0]
    assert "injected-parameters" in first["metadata"]["tags"] and "x = 2" in "".join(first["source"])


@pytest.mark.slow
def test_sweep_in_parallel_then_query_compare_rerun_and_rm(cli, project):
    result = cli("run", "exp", "--grid", "steps=1,2", "--grid", "lr=0.1,0.2", "-j", "2")
    assert result.stdout.count("succeeded") == 4
    runs = cli.json("runs", "exp")
    assert len(runs) == 4 and len({r["sweep_id"] for r in runs}) == 1 and runs[0]["sweep_id"]
    assert [(r["params"]["steps"], r["params"]["lr"]) for r in runs] == [(1, 0.1), (1, 0.2), (2, 0.1), (2, 0.2)]
    assert len(cli.json("runs", "--sweep", runs[0]["sweep_id"])) == 4
    picked = cli.json("runs", "--where", "params.steps = 2 and metrics.loss > 0.15")
    assert [r["id"] for r in picked] == [4]
    either = cli.json("runs", "--where", "params.lr = 0.1 or (params.steps = 1 and not params.lr < 0.15)")
    assert [r["id"] for r in either] == [1, 2, 3]
    assert "bad --where" in cli("runs", "--where", "metrics.loss >", ok=False).stderr
    table = cli.json("compare", "1", "4", "--only-changed")
    assert {row["name"] for row in table["rows"]} == {"steps", "lr", "loss"}
    cli("rerun", "4", "-p", "lr=0.3")
    rerun = cli.json("runs", "show", "5")
    assert rerun["params"]["steps"] == 2 and rerun["params"]["lr"] == 0.3
    cli("runs", "rm", "5", "--yes")
    assert len(cli.json("runs")) == 4
    cli("undo")
    assert len(cli.json("runs")) == 5 and cli.json("runs", "show", "5")["metrics"]["loss"] == pytest.approx(0.3)


def _research(*args, cwd: Path, **kw):
    env = {**os.environ, "RESEARCH_DB": str(cwd / "todo.db")}
    return subprocess.Popen([sys.executable, "-m", "research", *args], cwd=cwd, env=env, **kw)



@pytest.mark.slow
def test_sigkilled_runner_is_recovered_by_the_next_command(cli, project):
    cli("link", "exp", "notebooks/sleep.ipynb")
    runner = _research("run", "exp", "-n", "sleep", "-p", "seconds=60", cwd=project,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (project / "runs" / "1" / "metrics.jsonl").exists())  # the kernel is running
        assert run_rows(project / "todo.db")[0]["status"] == "running"
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
    finally:
        if runner.poll() is None:
            runner.kill()
    listed = cli.json("runs")
    assert listed[0]["status"] == "interrupted" and "runner died" in listed[0]["reason"]
    # The orphaned runner notices its parent is gone and stops its kernel.
    kernel_pid = json.loads((project / "runs" / "1" / "metrics.jsonl").read_text().splitlines()[0])["value"]
    wait_for(lambda: not Path(f"/proc/{kernel_pid}").exists(), timeout=30)


def _sleeping_runner(cli, project: Path, *params: str) -> subprocess.Popen:
    """`research run` of the sleep notebook in its own process, once the first run's kernel is busy."""
    cli("link", "exp", "notebooks/sleep.ipynb")
    runner = _research("run", "exp", "-n", "sleep", *params, cwd=project,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (project / "runs" / "1" / "metrics.jsonl").exists())
    return runner


@pytest.mark.slow
def test_sigint_interrupts_a_run_and_keeps_its_notebook(cli, project):
    runner = _sleeping_runner(cli, project, "-p", "seconds=60")
    runner.send_signal(signal.SIGINT)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 130, err
    assert "interrupted" in out
    row = run_rows(project / "todo.db")[0]
    assert row["status"] == "interrupted" and "SIGINT" in row["reason"]
    assert (project / "runs" / "1" / "output.ipynb").exists()
    assert "Traceback" not in err


def _processes_of(project: Path) -> list:
    """Live processes started for this project's runs (workers and kernels inherit RESEARCH_DB)."""
    import psutil

    db = str(project / "todo.db")
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RESEARCH_DB") == db and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            pass
    return found


@pytest.mark.slow
def test_sigint_during_a_sweep_stops_the_spare_worker_and_its_kernel_too(cli, project):
    runner = _sleeping_runner(cli, project, "--grid", "seconds=60,61,62")

    def workers():
        return [p for p in _processes_of(project) if "research.runs.papermill_child" in " ".join(p.cmdline())]

    wait_for(lambda: len(workers()) == 2)  # the first run's, and a spare for the next one
    runner.send_signal(signal.SIGINT)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 130, err
    assert [row["status"] for row in run_rows(project / "todo.db")] == ["interrupted"] * 3
    wait_for(lambda: not _processes_of(project), timeout=30)


@pytest.mark.slow
def test_concurrent_processes_lose_no_rows(cli, project):
    """Parallel runs and notes from several processes at once: every row and metric lands."""
    runners = [_research("run", "exp", "--grid", f"steps={n},{n + 1}", "-j", "2", cwd=project,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for n in (2, 4)]
    writers = [_research("note", "exp", f"note {n}", cwd=project, stderr=subprocess.PIPE, text=True) for n in range(8)]
    for proc in writers + runners:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        assert "locked" not in err
    rows = run_rows(project / "todo.db")
    assert len(rows) == 4 and all(r["status"] == "succeeded" for r in rows)
    conn = sqlite3.connect(project / "todo.db")
    steps = {r["id"]: json.loads(r["params"])["steps"] for r in rows}
    counts = dict(conn.execute("SELECT run_id, count(*) FROM metric WHERE name = 'loss' GROUP BY run_id"))
    assert counts == steps
    assert conn.execute("SELECT count(*) FROM note").fetchone()[0] == 8
    conn.close()


def test_init_links_the_shipped_experiments(isolated, monkeypatch):
    shutil.copytree(REPO_ROOT / "notebooks", isolated / "notebooks")
    cli = Cli()
    cli("init")
    items = {i["slug"]: i for i in cli.json("list")}
    for slug, notebook in (("backpressure-dataloader", "backpressure_dataloader"),
                           ("incremental-transformer", "incremental_transformer"),
                           ("streaming-attention", "streaming_attention")):
        assert slug in items
        links = cli.json("show", slug)["links"]
        if (isolated / "notebooks" / f"{notebook}.ipynb").exists():
            assert links[0]["notebook"] == f"notebooks/{notebook}.ipynb"
    again = cli("init")
    assert "Already initialised" in again.stderr
    assert len(cli.json("list")) == len(items)


def test_where_nested_too_deeply_is_one_line(cli):
    result = cli("runs", "--where", "not " * 5000 + "status = failed", ok=False)
    assert result.exit_code == 1 and "nested too deeply" in result.stderr
    result = cli("runs", "--where", "(" * 3000 + "status = failed" + ")" * 3000, ok=False)
    assert result.exit_code == 1 and "nested too deeply" in result.stderr


def test_a_parameter_both_given_and_swept_is_refused(cli, project):
    result = cli("run", "exp", "--grid", "steps=1,2", "-p", "steps=3", "--dry-run", ok=False)
    assert result.exit_code == 1 and "steps: given with -p and swept with --grid" in result.stderr


@pytest.mark.slow
def test_sigterm_interrupts_a_run_and_exits_143(cli, project):
    runner = _sleeping_runner(cli, project, "-p", "seconds=60")
    runner.send_signal(signal.SIGTERM)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 143, err  # 128 + SIGTERM, as a shell reports it
    row = run_rows(project / "todo.db")[0]
    assert row["status"] == "interrupted" and "SIGTERM" in row["reason"]
    assert "Traceback" not in err


def _add_runs(path: Path, *runs: tuple[dict, dict]) -> None:
    """Runs of item 1 with these (params, metrics), recorded without running anything."""
    from research.store.db import session_scope
    from research.store.models import Metric, Run

    with session_scope(path, write=True) as session:
        for params, metrics in runs:
            run = Run(item_id=1, status="succeeded", notebook="notebooks/x.ipynb", params=params,
                      queued_at="2025-11-11T10:00:00+00:00")
            session.add(run)
            session.flush()
            for name, value in metrics.items():
                session.add(Metric(run_id=run.id, name=name, value=value, step=0))


def test_where_compares_by_type_and_names_a_field_no_run_has(cli, isolated):
    cli("add", "Experiment", "--slug", "exp")
    _add_runs(isolated / "todo.db",
              ({"name": "abc", "steps": 9}, {"loss": 0.5}),
              ({"name": "10", "steps": 10}, {"loss": 2.0}),
              ({"steps": 100}, {}))

    def ids(expr: str) -> list[int]:
        return [r["id"] for r in cli.json("runs", "--where", expr)]

    assert ids("params.steps > 9") == [2, 3]  # numerically: as text, '100' < '9'
    assert ids("params.steps < 10") == [1]
    assert ids("params.name > 5") == []  # text against a number matches nothing...
    assert ids("params.name != 5") == []  # ...not even !=
    assert ids("params.name = '10'") == [2] and ids("params.name > 'abb'") == [1]
    assert ids("params.name != abc") == [2]  # run 3 has no name: != does not match it
    assert ids("params.name = null") == [3] and ids("params.name != null") == [1, 2]
    assert ids("metrics.loss >= 0.5 and metrics.loss < 2") == [1]
    result = cli("runs", "--where", "metrics.los > 1")
    assert result.stdout == "" and "No runs." in result.stderr
    assert "--where: no run has 'metrics.los' (did you mean 'metrics.loss'?)" in result.stderr
    assert "--where: no run has 'params.zzz' (there are: params.name, params.steps)" in cli(
        "runs", "--where", "params.zzz = 1").stderr
    assert "no run has" not in cli("runs", "--where", "params.name = abc").stderr
    result = cli("runs", "--where", "params.name > 5 or params.steps = 9")
    assert [r["id"] for r in json.loads(cli("runs", "--where", "params.name > 5 or params.steps = 9", "--json").stdout)] == [1]
    assert result.stderr.strip() == "--where: params.name > 5 matches no run: params.name holds text (quote it to compare text: '5')"
    assert cli("runs", "--where", "params.steps > 5").stderr == ""


def test_dry_run_is_a_table_and_json_on_request(cli, project):
    table = cli("run", "exp", "--grid", "steps=1..3", "-p", "name=007", "--dry-run").stdout.splitlines()
    assert table[0].split() == ["#", "Item", "Notebook", "Params"]
    assert [line.split() for line in table[1:]] == [
        [str(n), "exp", "notebooks/typed.ipynb", "name=007", f"steps={n}"] for n in (1, 2, 3)]
    plans = cli.json("run", "exp", "--grid", "steps=1..3", "--dry-run")
    assert [p["params"]["steps"] for p in plans] == [1, 2, 3] and plans[0]["params"]["lr"] == 0.5
    assert "--json goes with --dry-run" in cli("run", "exp", "--json", ok=False).stderr


def test_a_grid_of_over_1000_runs_needs_yes_without_a_terminal(cli, project):
    result = cli("run", "exp", "--grid", "steps=0..999", "--grid", "lr=1..1000", ok=False)
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: refusing to queue 1,000,000 runs (over 1,000) without confirmation; "
                                     "pass --yes")
    result = cli("run", "exp", "--grid", "stepz=0..999", "--grid", "lr=1..1000", ok=False)
    assert "unknown parameter 'stepz'" in result.stderr  # said before the question
    result = cli("run", "exp", "--grid", "steps=0..1000", "--dry-run", ok=False)
    assert "refusing to show 1,001 planned runs" in result.stderr and result.stdout == ""
    assert run_rows(project / "todo.db") == []
    assert len(cli.json("run", "exp", "--grid", "steps=0..1000", "--dry-run", "--yes")) == 1001
    assert len(cli.json("run", "exp", "--grid", "steps=1..1000", "--dry-run")) == 1000  # 1,000 itself: no question


def test_a_grid_of_over_1000_runs_asks_on_a_terminal(cli, project, monkeypatch):
    monkeypatch.setattr("research.cli.ask.interactive", lambda: True)
    result = cli("run", "exp", "--grid", "steps=1..2000", ok=False, input="n\n")
    assert result.exit_code == 1 and "Queue 2,000 runs?" in result.stderr
    assert run_rows(project / "todo.db") == []
    result = cli("run", "exp", "--grid", "steps=1..2000", "--dry-run", "--json", input="y\n")
    echoed, shown = result.stdout.split("\n", 1)  # CliRunner echoes the typed answer to stdout
    assert "Show 2,000 planned runs?" in result.stderr and echoed.strip() == "y" and len(json.loads(shown)) == 2000


@pytest.mark.slow
def test_a_database_outside_the_project_links_and_runs_the_projects_notebooks(isolated, monkeypatch):
    repo, lab = isolated / "repo", isolated / "lab"
    shutil.copytree(REPO_ROOT / "notebooks", repo / "notebooks")
    shutil.copy(FIXTURES / "typed.ipynb", repo / "notebooks" / "typed.ipynb")
    (repo / "src").mkdir()
    lab.mkdir()
    monkeypatch.setenv("RESEARCH_DB", str(lab / "todo.db"))
    monkeypatch.chdir(repo / "src")  # found upward, as git finds .git
    cli = Cli()
    result = cli("init")
    assert "no project" not in result.stderr
    assert cli.json("show", "streaming-attention")["links"][0]["notebook"] == "notebooks/streaming_attention.ipynb"
    plan = cli.json("run", "streaming-attention", "-p", "quick=true", "--dry-run")
    assert plan[0]["params"]["quick"] is True
    cli("add", "Experiment", "--slug", "exp")
    cli("link", "exp", "../notebooks/typed.ipynb")
    assert "run 1 succeeded" in cli("run", "exp", "-p", "steps=2").stdout
    assert (lab / "runs" / "1" / "output.ipynb").is_file()  # outputs beside the database
    assert not (repo / "runs").exists() and not (repo / "src" / "runs").exists()
    assert cli.json("runs", "show", "1")["metrics"]["loss"] == pytest.approx(0.5)


def test_init_with_no_project_says_so_in_one_line(isolated, monkeypatch):
    (isolated / "elsewhere").mkdir()
    monkeypatch.chdir(isolated / "elsewhere")
    result = Cli()("init")
    notes = [line for line in result.stderr.splitlines() if "no project" in line]
    assert len(notes) == 1 and "notebooks/" in notes[0]
    assert Cli().json("show", "streaming-attention")["links"] == []
    assert "no project" not in Cli()("init", "--empty").stderr


@pytest.mark.slow
def test_figures_show_in_the_output_notebook_and_each_png_is_stored_once(cli, project, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # a headless machine's setting: figures still show
    cli("link", "exp", "notebooks/figures.ipynb")
    assert "run 1 succeeded" in cli("run", "exp", "-n", "figures").stdout
    run_dir = project / "runs" / "1"
    output = json.loads((run_dir / "output.ipynb").read_text())
    images = {"".join(cell["source"]).splitlines()[-1]: sum("image/png" in o.get("data", {}) for o in cell["outputs"])
              for cell in output["cells"] if cell["cell_type"] == "code"}
    assert images["record_figure(fig, 'line.png', dpi=50)"] == 1  # shown once, though Agg draws nothing itself
    assert sum(images.values()) == 1
    pngs = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*.png"))
    assert pngs == ["artifacts/line.png", "bars.png"]  # one copy each
    artifacts = cli.json("runs", "show", "1")["artifacts"]
    assert sorted(Path(a).name for a in artifacts) == ["bars.png", "line.png"]
    assert all(Path(a).is_file() for a in artifacts)


def test_a_kernel_that_dies_before_answering_is_started_once_more(monkeypatch):
    """No cell has run when a kernel dies before its first reply, so one more start is
    safe; any other start failure, or a second death, still ends the run."""
    from research.runs import papermill_child as child

    calls = []
    deaths = {"left": 1}

    def start(kernel_name, cwd):
        calls.append(kernel_name)
        if deaths["left"]:
            deaths["left"] -= 1
            raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(child, "_start_kernel", start)
    monkeypatch.setattr(child, "_shutdown_kernel", lambda km: None)
    child._start_kernel_retrying("python3", ".")
    assert calls == ["python3", "python3"]
    calls.clear()
    deaths["left"] = 2
    with pytest.raises(RuntimeError, match="died before replying"):
        child._start_kernel_retrying("python3", ".")
    assert len(calls) == 2

    def unresponsive(kernel_name, cwd):
        raise RuntimeError("kernel didn't respond to its set-up")

    monkeypatch.setattr(child, "_start_kernel", unresponsive)
    with pytest.raises(RuntimeError, match="didn't respond"):
        child._start_kernel_retrying("python3", ".")
