"""Runs through the fork server (research.runs.forkserver): runners and kernels forked from one
process that imported papermill and ipykernel once, each still a fresh process of its own.

Every run checks that nothing is left behind: no process that names the run's folder in its
environment (forked processes show their own, see runs.proctitle), and no child of the
server or of a runner.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from research.record import RUN_DIR_ENV
from research.runs import forkserver
from research.runs.child import INTERRUPTS, execute_notebook, handle_interrupts, read_records
from tests.support import FIXTURE_NOTEBOOKS, REPO_ROOT, write_notebook

IDENTITY = (
    "import os, sys\n"
    "from research import record\n"
    "record('pid', os.getpid())\n"
    "record('ppid', os.getppid())\n"
    "record('cwd', os.getcwd())\n"
    "record('leaked', globals().get('marker', 'none'))\n"
    "record('module_leaked', getattr(sys, 'research_marker', 'none'))\n"
    "record('preloaded', 'colorsys' in sys.modules)\n"
    "marker = 'set'\n"
    "sys.research_marker = 'set'"
)


@pytest.fixture(autouse=True)
def _clear_interrupts():
    INTERRUPTS.clear()
    yield
    INTERRUPTS.clear()


@pytest.fixture
def server():
    started = forkserver.start()
    assert started is not None, "fork servers are off here (RESEARCH_FORKSERVER=0, or not Linux)"
    yield started
    started.close()
    assert forkserver.active() is None


def identity_notebook(folder: Path) -> Path:
    return write_notebook(folder / "identity.ipynb", IDENTITY)


def run(tmp_path: Path, notebook: Path, name: str = "run", parameters: dict | None = None, **kwargs):
    run_dir = tmp_path / name
    outcome = execute_notebook(notebook, run_dir / "output.ipynb", parameters or {}, run_dir, tmp_path, **kwargs)
    return outcome, run_dir


def values(run_dir: Path) -> dict:
    return {m["name"]: m["value"] for m in read_records(run_dir)[0]}


def live(processes) -> list[psutil.Process]:
    found = []
    for proc in processes:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def processes_of(run_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(RUN_DIR_ENV) == str(run_dir):
                found.append(proc)
        except psutil.Error:
            pass
    return live(found)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return live(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def assert_nothing_left(run_dir: Path, server: forkserver.ForkServer | None = None) -> None:
    assert wait_for(lambda: not processes_of(run_dir)), processes_of(run_dir)
    if server is not None and server.alive:
        assert wait_for(lambda: not descendants(server.process.pid)), descendants(server.process.pid)


# --------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_a_run_through_the_server_succeeds_and_records_metrics(server, tmp_path):
    seen = {}

    def on_start(pid):  # the runner is the server's child, showing the runner's command
        proc = psutil.Process(pid)
        seen.update(ppid=proc.ppid(), cmdline=proc.cmdline(), env=proc.environ())

    progress = []
    outcome, run_dir = run(tmp_path, FIXTURE_NOTEBOOKS / "typed.ipynb", parameters={"steps": 2, "name": "007"},
                           on_start=on_start, on_progress=lambda done, total: progress.append(done))
    assert outcome.status == "succeeded", outcome
    assert outcome.cells_done == outcome.cells_total == 4 and progress[-1] == 4
    metrics = read_records(run_dir)[0]
    assert [m["value"] for m in metrics if m["name"] == "loss"] == [0.0, 0.5]
    assert values(run_dir)["name"] == "007"
    assert seen["ppid"] == server.process.pid
    assert "research.runs.papermill_child" in seen["cmdline"] and "research.runs.forkserver" not in seen["cmdline"]
    assert seen["env"].get(RUN_DIR_ENV) == str(run_dir)
    assert outcome.output_exists
    assert_nothing_left(run_dir, server)


@pytest.mark.slow
def test_two_runs_get_distinct_fresh_kernels(server, tmp_path):
    notebook = identity_notebook(tmp_path)
    first, first_dir = run(tmp_path, notebook, "first")
    second, second_dir = run(tmp_path, notebook, "second")
    assert first.status == second.status == "succeeded", (first, second)
    a, b = values(first_dir), values(second_dir)
    assert a["pid"] != b["pid"] and server.process.pid not in (a["pid"], b["pid"])
    assert (a["pid"], b["pid"]) == (first.kernel_pid, second.kernel_pid)
    assert (a["ppid"], b["ppid"]) == (first.pid, second.pid)  # each kernel is its own runner's child
    assert a["cwd"] == b["cwd"] == str(tmp_path)
    # The first run set a global and a module attribute: the second kernel has neither.
    assert b["leaked"] == "none" and b["module_leaked"] == "none"
    assert a["preloaded"] is False and b["preloaded"] is False
    assert_nothing_left(first_dir, server)
    assert_nothing_left(second_dir, server)


@pytest.mark.slow
def test_parallel_runs_through_one_server(server, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    notebook = identity_notebook(tmp_path)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda i: run(tmp_path, notebook, f"run{i}"), range(4)))
    assert all(outcome.status == "succeeded" for outcome, _ in results), results
    assert len({values(run_dir)["pid"] for _, run_dir in results}) == 4
    for _, run_dir in results:
        assert_nothing_left(run_dir, server)


@pytest.mark.slow
def test_kernels_show_their_own_command_and_environment(server, tmp_path):
    notebook = write_notebook(
        tmp_path / "me.ipynb",
        "import psutil\nfrom research import record\nme = psutil.Process()\n"
        "record('cmdline', me.cmdline())\nrecord('run_dir', me.environ().get('RESEARCH_RUN_DIR'))",
    )
    outcome, run_dir = run(tmp_path, notebook)
    assert outcome.status == "succeeded", outcome
    found = values(run_dir)
    assert found["cmdline"][:3] == [sys.executable, "-m", "ipykernel_launcher"]
    assert found["cmdline"][3] == "-f" and found["cmdline"][4].endswith(".json")
    assert found["run_dir"] == str(run_dir)


@pytest.mark.slow
def test_kernel_death_through_the_server(server, tmp_path):
    outcome, run_dir = run(tmp_path, FIXTURE_NOTEBOOKS / "kernel_death.ipynb")
    assert outcome.status == "failed"
    assert outcome.reason == "kernel died (exit code 3) in cell 1"
    killed, killed_dir = run(tmp_path, FIXTURE_NOTEBOOKS / "kernel_death.ipynb", "killed", {"sig": int(signal.SIGKILL)})
    assert killed.reason == "kernel died (killed by SIGKILL; out of memory?) in cell 1"
    assert_nothing_left(run_dir, server)
    assert_nothing_left(killed_dir, server)


# --------------------------------------------------------------------------- stopping runs


@pytest.mark.slow
def test_timeout_through_the_server_leaves_nothing_behind(server, tmp_path):
    outcome, run_dir = run(tmp_path, FIXTURE_NOTEBOOKS / "sleep.ipynb", timeout=4)
    assert outcome.status == "timeout"
    assert outcome.reason == f"timed out after {outcome.duration_s:.1f} s (limit 4 s)"
    assert outcome.output_exists
    assert_nothing_left(run_dir, server)


@pytest.mark.slow
def test_interrupt_through_the_server_leaves_nothing_behind(server, tmp_path):
    def on_progress(done, total):
        if done == 2:  # the kernel_pid cell is done: now it sleeps
            os.kill(os.getpid(), signal.SIGINT)

    with handle_interrupts():
        outcome, run_dir = run(tmp_path, FIXTURE_NOTEBOOKS / "sleep.ipynb", on_progress=on_progress)
    assert outcome.status == "interrupted" and outcome.reason == "interrupted by SIGINT"
    assert values(run_dir)["kernel_pid"] == outcome.kernel_pid
    assert outcome.output_exists
    assert_nothing_left(run_dir, server)


@pytest.mark.slow
def test_a_stopped_runner_is_killed_with_its_kernel(server, tmp_path):
    """A forked runner that ignores SIGTERM (stopped) is killed after the grace, kernel too."""
    child = {}

    def on_progress(done, total):
        if done == 2 and "stopped" not in child:
            os.kill(child["pid"], signal.SIGSTOP)
            child["stopped"] = True

    outcome, run_dir = run(tmp_path, FIXTURE_NOTEBOOKS / "sleep.ipynb", timeout=4, kill_grace=1.0,
                           on_start=lambda pid: child.update(pid=pid), on_progress=on_progress)
    assert child.get("stopped") and outcome.status == "timeout"
    assert outcome.duration_s >= 4 + 1 and outcome.kernel_pid is not None
    assert_nothing_left(run_dir, server)


# --------------------------------------------------------------------------- falling back


@pytest.mark.slow
def test_a_killed_server_falls_back_to_popen(server, tmp_path):
    server.process.kill()
    server.process.wait()
    assert wait_for(lambda: forkserver.active() is None)
    parents = []
    outcome, run_dir = run(tmp_path, identity_notebook(tmp_path),
                           on_start=lambda pid: parents.append(psutil.Process(pid).ppid()))
    assert outcome.status == "succeeded", outcome
    assert parents == [os.getpid()]  # started by this process, the plain way
    assert_nothing_left(run_dir)


@pytest.mark.slow
def test_a_server_killed_mid_run_does_not_fail_the_run(server, tmp_path):
    notebook = write_notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(2)", "from research import record\nrecord('done', 1)")

    def on_progress(done, total):
        if done == 1 and server.process.poll() is None:
            server.process.kill()

    outcome, run_dir = run(tmp_path, notebook, on_progress=on_progress)
    assert server.process.poll() is not None
    assert outcome.status == "succeeded", outcome
    assert values(run_dir) == {"done": 1}
    assert_nothing_left(run_dir)


def test_a_runner_the_server_cannot_start_exactly_is_started_with_popen(server, tmp_path):
    """A variable read as the interpreter starts differs from the server's: no fork."""
    from research.runs.child import _runner_env

    env = _runner_env(None)
    assert server.spawn_runner({**env, "PYTHONWARNINGS": "error::DeprecationWarning"}, str(tmp_path)) is None
    assert server.spawn_runner(env, str(tmp_path / "missing")) is None
    runner = server.spawn_runner(env, str(tmp_path))  # as the server was started: forked
    assert runner is not None
    runner.stdin.close()  # no job: it ends at once, and the server reports how
    assert runner.wait(timeout=10) == 2 and runner.poll() == 2
    runner.stdout.close()
    runner.stderr.close()


def test_fork_servers_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(forkserver.DISABLE_ENV, "0")
    assert forkserver.start() is None and forkserver.active() is None


# --------------------------------------------------------------------------- preload


@pytest.mark.slow
def test_preload_imports_the_module_in_every_kernel(tmp_path):
    notebook = identity_notebook(tmp_path)
    with forkserver.start(["colorsys"]):
        outcome, run_dir = run(tmp_path, notebook)
    assert outcome.status == "succeeded", outcome
    assert values(run_dir)["preloaded"] is True  # imported before the first cell: no cost to import it


@pytest.mark.slow
def test_preloaded_numpy_is_reseeded_in_every_kernel(tmp_path):
    notebook = write_notebook(tmp_path / "draw.ipynb", "import numpy as np\nfrom research import record\nrecord('draw', float(np.random.random()))")
    with forkserver.start(["numpy"]) as server:
        draws = [values(run(tmp_path, notebook, f"run{i}")[1])["draw"] for i in range(2)]
        assert_nothing_left(tmp_path / "run1", server)
    assert draws[0] != draws[1]


@pytest.mark.slow
def test_a_preload_that_fails_is_said_once_and_the_run_goes_on(tmp_path, capfd):
    with forkserver.start(["no_such_module_for_research"]):
        outcome, _ = run(tmp_path, identity_notebook(tmp_path))
    assert outcome.status == "succeeded", outcome
    err = capfd.readouterr().err
    assert err.count("--preload no_such_module_for_research: ModuleNotFoundError") == 1


def identity_project(tmp_path: Path):
    """A folder with the identity notebook, and a function running `research` there as a
    user would (its environment, changeable, beside it)."""
    (tmp_path / "notebooks").mkdir()
    write_notebook(tmp_path / "notebooks" / "identity.ipynb", IDENTITY, parameters="x = 0")
    env = {**os.environ, "RESEARCH_DB": str(tmp_path / "todo.db"), "PYTHONPATH": str(REPO_ROOT)}

    def research(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "research", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=240)

    return env, research


@pytest.mark.slow
def test_research_run_preload_sweep(tmp_path):
    """`research run --preload` from the command line: a -j 2 sweep whose kernels have it."""
    env, research = identity_project(tmp_path)
    for args in (("init", "--empty"), ("add", "Identity", "--slug", "ident"), ("link", "ident", "notebooks/identity.ipynb")):
        assert research(*args).returncode == 0
    done = research("run", "ident", "--grid", "x=0..3", "-j", "2", "--preload", "colorsys")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("succeeded") == 4
    runs = [values(tmp_path / "runs" / str(run_id)) for run_id in range(1, 5)]
    assert all(found["preloaded"] is True for found in runs)
    assert len({found["pid"] for found in runs}) == 4
    refused = research("run", "ident", "--preload", "colorsys", "--executor", "dask", "--scheduler", "tcp://127.0.0.1:1")
    assert refused.returncode == 1 and "--preload is for runs on this machine" in refused.stderr


@pytest.mark.slow
def test_queue_work_forks_its_runs_and_preloads(tmp_path):
    """`research queue work --preload` runs queued runs through a fork server: each run's
    kernel has the module imported (only a forked kernel can), and each is a fresh process."""
    env, research = identity_project(tmp_path)
    for args in (("init", "--empty"), ("add", "Identity", "--slug", "ident"), ("link", "ident", "notebooks/identity.ipynb"),
                 ("run", "ident", "--grid", "x=0..2", "--queue")):
        assert research(*args).returncode == 0
    done = research("queue", "work", "--until-empty", "-j", "2", "--preload", "colorsys")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("succeeded") == 3
    runs = [values(tmp_path / "runs" / str(run_id)) for run_id in range(1, 4)]
    assert all(found["preloaded"] is True for found in runs)
    assert len({found["pid"] for found in runs}) == 3
    plain = research("run", "ident", "-p", "x=9", "--queue")
    assert plain.returncode == 0
    env["RESEARCH_FORKSERVER"] = "0"  # servers off: the same queue works, without the preload
    done = research("queue", "work", "--until-empty", "--preload", "colorsys")
    assert done.returncode == 0, done.stderr
    assert values(tmp_path / "runs" / "4")["preloaded"] is False
