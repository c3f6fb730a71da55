"""Executors beyond this process: a real Dask cluster on 127.0.0.1, and submitit's local executor
through the same code path as Slurm (job array, result files, ingest by `research runs`, cancel)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import FIXTURE_NOTEBOOKS, research_env, wait_for

FIXTURES = FIXTURE_NOTEBOOKS
BOOT_TIMEOUT_S = 60


@pytest.fixture
def project(cli, isolated):
    shutil.copytree(FIXTURES, isolated / "notebooks", ignore=shutil.ignore_patterns("*.py"))
    cli("add", "Experiment", "--slug", "exp")
    cli("link", "exp", "notebooks/typed.ipynb")
    return isolated


def run_rows(path: Path) -> list[dict]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM run ORDER BY id")]
    finally:
        conn.close()



def _research(*args, cwd: Path, **kw) -> subprocess.Popen:
    env = {**research_env(), "RESEARCH_DB": str(cwd / "todo.db")}
    return subprocess.Popen([sys.executable, "-m", "research", *args], cwd=cwd, env=env, **kw)


# --------------------------------------------------------------------------- settings (fast)


def test_settings_from_pyproject_research_toml_and_flags(isolated):
    from research.errors import ResearchError
    from research.executors import load_settings

    (isolated / "pyproject.toml").write_text(
        '[tool.research]\nexecutor = "slurm"\n[tool.research.slurm]\npartition = "gpu"\ntime_limit = 30\n'
        '[tool.research.dask]\nscheduler = "tcp://head:8786"\n'
    )
    settings = load_settings(isolated)
    assert settings.executor == "slurm" and settings.options == {"partition": "gpu", "time_limit": 30}
    (isolated / "research.toml").write_text('[slurm]\ntime_limit = 90\narray_parallelism = 4\n')
    settings = load_settings(isolated, assignments=["gpus_per_task=2", "partition=debug"])
    assert settings.options == {"partition": "debug", "time_limit": 90, "array_parallelism": 4, "gpus_per_task": 2}
    assert load_settings(isolated, "dask").options == {"scheduler": "tcp://head:8786"}
    assert load_settings(isolated, "dask", "tcp://other:1").get("scheduler") == "tcp://other:1"
    with pytest.raises(ResearchError, match="unknown slurm setting 'gpus'.*known: .*gpus_per_task"):
        load_settings(isolated, assignments=["gpus=1"])
    with pytest.raises(ResearchError, match="'time_limit' .* expects int, got 'soon'"):
        load_settings(isolated, assignments=["time_limit=soon"])
    with pytest.raises(ResearchError, match="--scheduler is for the dask executor"):
        load_settings(isolated, "local", "tcp://x:1")
    with pytest.raises(ResearchError, match="unknown executor 'ray'"):
        load_settings(isolated, "ray")


def test_engine_problems_are_reported_before_any_row_is_written(cli, project):
    if shutil.which("sbatch") is None:
        result = cli("run", "exp", "--executor", "slurm", ok=False)
        assert result.exit_code == 1 and "sbatch not found" in result.stderr and "cluster" in result.stderr
    result = cli("run", "exp", "-x", "dask", "--scheduler", "tcp://127.0.0.1:9", "-E", "connect_timeout=1", ok=False)
    assert result.exit_code == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.stderr
    result = cli("run", "exp", "-x", "slurm", "-E", "partitio=gpu", ok=False)
    assert "unknown slurm setting 'partitio'" in result.stderr
    result = cli("run", "exp", "-x", "slurm", "-E", "cluster=local", "-p", "stepz=1", ok=False)
    assert "unknown parameter 'stepz'" in result.stderr
    assert "--no-wait is for the slurm executor" in cli("run", "exp", "--no-wait", ok=False).stderr
    assert run_rows(project / "todo.db") == []


def test_runs_of_a_dask_client_that_died_end_interrupted(cli, project):
    from research.backlog.items import resolve_item
    from research.runs.plan import create_runs, plan_runs
    from research.store.db import session_scope

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with session_scope(project / "todo.db", write=True) as session:
        plans = plan_runs(session, resolve_item(session, "exp"), project)
        (run_id,), _ = create_runs(session, plans, project, None, executor="dask")
    conn = sqlite3.connect(project / "todo.db")
    conn.execute("UPDATE run SET status = 'running', pid = ?, external_id = 'tcp://127.0.0.1:9/k' WHERE id = ?",
                 (dead.pid, run_id))
    conn.commit()
    conn.close()
    listed = cli.json("runs")
    assert listed[0]["status"] == "interrupted" and "Dask client" in listed[0]["reason"]
    assert listed[0]["executor"] == "dask" and listed[0]["external_id"] == "tcp://127.0.0.1:9/k"


def test_cli_import_does_not_import_the_engines():
    code = "import sys, research.cli; print([m for m in ('distributed', 'dask', 'submitit') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=research_env(), check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- a real Dask cluster


class DaskCluster:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1, torn down by the fixture."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.processes: list[subprocess.Popen] = []
        self.address: str | None = None
        self.workers: list[subprocess.Popen] = []

    def _spawn(self, *args: str, env: dict[str, str], log: str) -> subprocess.Popen:
        out = open(self.folder / log, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "dask", *args], cwd=self.folder, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.processes.append(proc)
        return proc

    def start(self, workers: int = 2, allowed_failures: int | None = None,
              worker_env: dict[str, str] | None = None) -> DaskCluster:
        env = research_env()
        if allowed_failures is not None:
            env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = str(allowed_failures)
        scheduler_file = self.folder / "scheduler.json"
        self._spawn("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(scheduler_file), env=env, log="scheduler.log")
        wait_for(lambda: scheduler_file.exists() and scheduler_file.stat().st_size > 0, BOOT_TIMEOUT_S)
        self.address = json.loads(scheduler_file.read_text())["address"]
        for n in range(workers):
            self.workers.append(self._spawn(
                "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--no-nanny",
                "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{n}", "--memory-limit", "0",
                "--local-directory", str(self.folder / f"w{n}"), env={**env, **(worker_env or {})},
                log=f"worker{n}.log"))
        from distributed import Client

        with Client(self.address, timeout=BOOT_TIMEOUT_S, set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=BOOT_TIMEOUT_S)
        return self

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def dask_cluster(tmp_path_factory):
    clusters: list[DaskCluster] = []

    def start(**kw) -> DaskCluster:
        cluster = DaskCluster(tmp_path_factory.mktemp("dask"))
        clusters.append(cluster)
        return cluster.start(**kw)

    yield start
    for cluster in clusters:
        cluster.stop()


@pytest.mark.slow
def test_dask_sweep_on_a_real_cluster_records_every_run(cli, project, dask_cluster):
    cluster = dask_cluster()
    result = cli("run", "exp", "--grid", "steps=1,2", "--grid", "lr=0.1,0.2", "--executor", "dask",
                 "--scheduler", cluster.address)
    assert result.stdout.count("succeeded") == 4
    runs = cli.json("runs", "exp")
    assert [(r["params"]["steps"], r["params"]["lr"]) for r in runs] == [(1, 0.1), (1, 0.2), (2, 0.1), (2, 0.2)]
    assert len({r["sweep_id"] for r in runs}) == 1
    for run in runs:
        assert run["status"] == "succeeded" and run["executor"] == "dask"
        assert run["external_id"].startswith(cluster.address + "/research-run-")
        assert run["metrics"]["loss"] == pytest.approx(run["params"]["lr"] * (run["params"]["steps"] - 1))
        run_dir = project / "runs" / str(run["id"])
        assert (run_dir / "output.ipynb").stat().st_size > 0 and (run_dir / "metrics.jsonl").exists()
        assert json.loads((run_dir / "run.json").read_text())["status"] == "succeeded"
    detail = cli.json("runs", "show", "4")
    assert len([m for m in detail["metric_history"] if m["name"] == "loss"]) == 2
    assert detail["environment"]["python"] and detail["environment"]["device"] == "cpu"
    assert len(detail["notebook_sha256"]) == 64 and detail["started_at"] <= detail["ended_at"]
    assert cli.json("show", "exp")["status"] == "active"
    assert "dask tcp://127.0.0.1" in cli("runs").stdout  # the table shows executor and external id


@pytest.mark.slow
def test_dask_worker_killed_mid_run_fails_that_run_and_the_sweep_ends(cli, project, dask_cluster):
    from distributed import Client

    cluster = dask_cluster(allowed_failures=0)  # no retry on another worker: the run fails
    cli("link", "exp", "notebooks/sleep.ipynb")
    runner = _research("run", "exp", "-n", "sleep", "--grid", "seconds=6,6.5", "--executor", "dask",
                       "--scheduler", cluster.address, cwd=project,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: [r["status"] for r in run_rows(project / "todo.db")] == ["running", "running"])
        with Client(cluster.address, timeout=30, set_as_default=False) as client:
            busy = wait_for(lambda: {w: keys for w, keys in client.processing().items() if keys})
            address, keys = sorted(busy.items())[0]
            pid = client.run(os.getpid, workers=[address])[address]
        victim = int(keys[0].split("-")[2])  # research-run-<id>-<token>
        time.sleep(1.0)  # the kernel is running the sleep
        os.kill(pid, signal.SIGKILL)
        out, err = runner.communicate(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 1, err
    rows = {r["id"]: r for r in run_rows(project / "todo.db")}
    assert rows[victim]["status"] == "failed" and "KilledWorker" in rows[victim]["reason"]
    (survivor,) = [r for rid, r in rows.items() if rid != victim]
    assert survivor["status"] == "succeeded"
    assert f"run {victim} failed" in out


# --------------------------------------------------------------------------- submitit (the Slurm path)

ARTIFACT_CELL = (
    "from pathlib import Path\nfrom research import record, record_artifact\n"
    "Path(f'table-{n}.txt').write_text('n=' + str(n))\nrecord_artifact(f'table-{n}.txt')\nrecord('n2', n * n)"
)


@pytest.mark.slow
def test_submitit_local_sweep_is_collected_by_research_runs(cli, project, write_notebook):
    write_notebook(project / "notebooks" / "artifact.ipynb", ARTIFACT_CELL, parameters="n = 1")
    cli("link", "exp", "notebooks/artifact.ipynb")
    result = cli("run", "exp", "-n", "artifact", "--grid", "n=1,2,3", "--executor", "slurm",
                 "-E", "cluster=local", "--no-wait")
    assert "submitted 3 run(s) to slurm" in result.stderr
    rows = run_rows(project / "todo.db")
    assert [r["executor"] for r in rows] == ["slurm"] * 3
    assert all(r["external_id"].startswith("local:") for r in rows)
    # Every `research runs` collects what finished (here: submitit's result files).
    runs = wait_for(lambda: _when_all(cli.json("runs", "exp"), "succeeded"), timeout=120, every=1.0)
    for run in runs:
        n = run["params"]["n"]
        assert run["metrics"]["n2"] == n * n
        job_folder = project / "runs" / ".submitit" / run["external_id"].removeprefix("local:")
        assert list(job_folder.glob("*_result.pkl")), "results travel through submitit's result files"
        run_dir = project / "runs" / str(run["id"])
        assert (run_dir / "artifacts" / f"table-{n}.txt").read_text() == f"n={n}"
        detail = cli.json("runs", "show", str(run["id"]))
        assert detail["artifacts"] == [str((run_dir / "artifacts" / f"table-{n}.txt").resolve())]
        assert (run_dir / "output.ipynb").exists()
    assert "collected 0 finished run(s); 0 still" in cli("runs", "--sync").stderr


@pytest.mark.slow
def test_submitit_local_cancel_stops_the_jobs_and_keeps_their_notebooks(cli, project):
    cli("link", "exp", "notebooks/sleep.ipynb")
    cli("run", "exp", "-n", "sleep", "--grid", "seconds=60,61", "-x", "slurm", "-E", "cluster=local", "--no-wait")
    rows = run_rows(project / "todo.db")
    folders = [project / "runs" / ".submitit" / r["external_id"].removeprefix("local:") for r in rows]
    # The jobs have started their notebooks (each job logs a line before it runs one).
    wait_for(lambda: all("research: run" in "".join(p.read_text() for p in f.glob("*_log.out")) for f in folders))
    time.sleep(2.0)
    sweep = rows[0]["sweep_id"]
    result = cli("runs", "cancel", "--sweep", sweep)
    assert [line.split()[2] for line in result.stdout.splitlines()] == ["interrupted", "interrupted"]
    for row in run_rows(project / "todo.db"):
        assert row["status"] == "interrupted", row
        assert (project / "runs" / str(row["id"]) / "output.ipynb").exists()  # the notebook so far came back
    for row in rows:
        pid = int(row["external_id"].removeprefix("local:"))
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout=30)
    assert "nothing to cancel" in cli("runs", "cancel", "--sweep", sweep).stderr


@pytest.mark.slow
def test_submitit_local_job_that_vanishes_ends_failed_with_the_engine_reason(cli, project):
    import psutil

    cli("link", "exp", "notebooks/sleep.ipynb")
    cli("run", "exp", "-n", "sleep", "-p", "seconds=60", "-x", "slurm", "-E", "cluster=local", "--no-wait")
    (row,) = run_rows(project / "todo.db")
    controller = psutil.Process(int(row["external_id"].removeprefix("local:")))
    for proc in [*controller.children(recursive=True), controller]:
        proc.kill()
    controller.wait(timeout=10)
    (listed,) = wait_for(lambda: _when_all(cli.json("runs"), "failed"), timeout=30)
    assert listed["status"] == "failed"
    assert f"slurm job {row['external_id']} is gone without a result" in listed["reason"]


def _when_all(rows: list[dict], status: str) -> list[dict] | None:
    """The rows once every one has this status (`research runs` collects as it lists)."""
    return rows if rows and all(r["status"] == status for r in rows) else None


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] == "Z"
    except (OSError, IndexError):
        return True


# --------------------------------------------------------------------------- a real single-node Slurm

SLURM_DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "scancel", "squeue")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def slurm_conf(tmp_path_factory):
    """munged, slurmctld and slurmd (Debian's slurm-wlm packages) in the foreground, on free ports."""
    import socket

    if os.geteuid() != 0 or any(shutil.which(name) is None for name in SLURM_DAEMONS):
        pytest.skip("needs root and Debian's slurmctld, slurmd, slurm-client and munge packages")
    folder = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "munge"):
        (folder / sub).mkdir(mode=0o700)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=research-test", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        f"StateSaveLocation={folder}/state", f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid", f"SlurmdPidFile={folder}/slurmd.pid",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "MpiDefault=none",
        "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "AuthType=auth/munge", f"AuthInfo=socket={folder}/munge/munge.sock", "ReturnToService=2",
        f"SlurmctldLogFile={folder}/slurmctld.log", f"SlurmdLogFile={folder}/slurmd.log",
        f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", "",
    ]))
    env = {**research_env(), "SLURM_CONF": str(conf)}
    commands = [
        ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={folder}/munge/munge.sock",
         f"--pid-file={folder}/munge/munged.pid", f"--log-file={folder}/munge/munged.log",
         f"--seed-file={folder}/munge/seed"],
        ["slurmctld", "-D", "-c", "-f", str(conf)],
        ["slurmd", "-D", "-c", "-f", str(conf), "-N", host],
    ]
    daemons = []
    try:
        for command in commands:
            daemons.append(subprocess.Popen(command, env=env, cwd=folder, start_new_session=True,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.5)

        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            return out.returncode == 0 and out.stdout.strip() == "idle"

        try:
            wait_for(idle, timeout=30, every=0.5)
        except AssertionError:
            pytest.skip("a single-node Slurm did not come up here")
        yield conf
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        for proc in reversed(daemons):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in daemons:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.mark.slow
def test_real_slurm_job_array_results_and_cancel(cli, project, slurm_conf, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm_conf))
    result = cli("run", "exp", "--grid", "steps=1,2,3", "-x", "slurm", "-E", "time_limit=5", "-E", "partition=debug")
    assert result.stdout.count("succeeded") == 3
    runs = cli.json("runs", "exp")
    arrays = {r["external_id"].split("_")[0] for r in runs}
    assert len(arrays) == 1 and sorted(r["external_id"].split("_")[1] for r in runs) == ["0", "1", "2"]
    assert [r["metrics"]["loss"] for r in runs] == pytest.approx([0.0, 0.5, 1.0])
    # Cancelled on the engine: scancel, the job stops its notebook and sends it back.
    cli("link", "exp", "notebooks/sleep.ipynb")
    cli("run", "exp", "-n", "sleep", "-p", "seconds=60", "-x", "slurm", "--no-wait")
    row = run_rows(project / "todo.db")[-1]
    folder = project / "runs" / ".submitit" / row["external_id"]
    wait_for(lambda: "research: run" in "".join(p.read_text() for p in folder.glob("*_log.out")), timeout=60)
    time.sleep(2.0)
    assert "interrupted" in cli("runs", "cancel", str(row["id"])).stdout
    detail = cli.json("runs", "show", str(row["id"]))
    assert detail["status"] == "interrupted" and (project / detail["output_path"]).exists()
