"""Real papermill runs of the tiny notebooks in tests/notebooks (research.runs.child).

Every run checks that no kernel (or runner) process is left behind: we look for
live processes whose environment names the run's directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from research.record import RUN_DIR_ENV
from research.runs.child import (
    INTERRUPTS,
    ExecutionOutcome,
    InterruptSignals,
    execute_notebook,
    handle_interrupts,
    read_records,
)
from research.runs.environment import capture_environment, sha256_file

NOTEBOOKS = Path(__file__).parent / "notebooks"


@pytest.fixture(autouse=True)
def _clear_interrupts():
    INTERRUPTS.clear()
    yield
    INTERRUPTS.clear()


def processes_of(run_dir: Path) -> list[psutil.Process]:
    """Live processes started for this run (runner child, kernel, the kernel's children)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(RUN_DIR_ENV) == str(run_dir):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def assert_no_orphans(outcome: ExecutionOutcome, run_dir: Path) -> None:
    deadline = time.monotonic() + 3  # a zombie may take a moment to be reaped
    while processes_of(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_of(run_dir) == []
    for pid in (outcome.pid, outcome.kernel_pid):
        if pid is not None and psutil.pid_exists(pid):
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE or (
                RUN_DIR_ENV not in psutil.Process(pid).environ()
            )


def run(tmp_path: Path, notebook: str, parameters: dict | None = None, **kwargs):
    run_dir = tmp_path / "run"
    outcome = execute_notebook(
        NOTEBOOKS / notebook,
        run_dir / "output.ipynb",
        parameters or {},
        run_dir,
        tmp_path,
        **kwargs,
    )
    return outcome, run_dir


# --------------------------------------------------------------------------- outcomes


@pytest.mark.slow
def test_success_with_params_metrics_progress_and_log(tmp_path):
    progress, starts, lines = [], [], []
    outcome, run_dir = run(
        tmp_path,
        "typed.ipynb",
        {"steps": 2, "name": "007", "flag": True, "sizes": [3], "cfg": {"k": "v"}},
        on_start=starts.append,
        on_progress=lambda done, total: progress.append((done, total)),
        log_output=True,
        on_log=lines.append,
    )
    assert outcome.status == "succeeded", outcome
    assert outcome.reason is None and outcome.error is None
    assert outcome.kernel_name == "python3"
    assert starts == [outcome.pid]
    assert outcome.cells_total == 4  # markdown, parameters, injected parameters, code
    assert outcome.cells_done == 4 and progress[0] == (0, 4) and progress[-1] == (4, 4)
    assert outcome.output_exists and (run_dir / "output.ipynb").is_file()
    metrics, artifacts = read_records(run_dir)
    values = {m["name"]: m["value"] for m in metrics}
    assert [m["value"] for m in metrics if m["name"] == "loss"] == [0.0, 0.5]
    assert values["name"] == "007"
    assert values["flag"] is True and values["sizes"] == [3] and values["cfg"] == {"k": "v"}
    assert values["types"] == ["int", "float", "str", "bool", "list", "dict"]
    assert artifacts == []
    assert any("[record] name = 007" in line for line in lines)  # --log-output
    assert not any("without encryption" in line for line in lines)  # kernel transport noise
    assert_no_orphans(outcome, run_dir)


@pytest.mark.slow
def test_failure_in_cell_3_keeps_earlier_metrics(tmp_path):
    outcome, run_dir = run(tmp_path, "fail_cell3.ipynb", {"x": 5})
    assert outcome.status == "failed"
    assert outcome.reason == "ValueError: boom 6 (cell 3)"
    error = outcome.error
    # cell 3 of the input notebook, although papermill injected a parameters cell before it
    assert error["cell_index"] == 3
    assert error["ename"] == "ValueError" and error["evalue"] == "boom 6"
    assert error["traceback"] and not any("\x1b[" in line for line in error["traceback"])
    assert "boom" in error["traceback"][-1]
    metrics, _ = read_records(run_dir)
    assert [(m["name"], m["value"]) for m in metrics] == [("before", 1.5)]
    # papermill's output notebook, with the error marked
    nb = json.loads((run_dir / "output.ipynb").read_text())
    tags = [t for cell in nb["cells"] for t in cell["metadata"].get("tags", [])]
    assert "papermill-error-cell-tag" in tags
    assert_no_orphans(outcome, run_dir)


@pytest.mark.slow
def test_timeout_kills_the_run_and_keeps_the_notebook(tmp_path):
    started = time.monotonic()
    beats = []
    outcome, run_dir = run(
        tmp_path,
        "sleep.ipynb",
        timeout=5,
        on_heartbeat=lambda: beats.append(time.monotonic()),
        heartbeat_interval=0.5,
    )
    assert outcome.status == "timeout"
    assert outcome.reason == f"timed out after {outcome.duration_s:.1f} s (limit 5 s)"
    assert time.monotonic() - started < 5 + 8
    assert len(beats) >= 5
    assert outcome.output_exists
    nb = json.loads((run_dir / "output.ipynb").read_text())
    assert nb["cells"]  # the notebook as far as it got
    assert_no_orphans(outcome, run_dir)


@pytest.mark.slow
def test_interrupt_by_signal_stops_the_run(tmp_path):
    """A real SIGINT to this process, routed by handle_interrupts, ends the run as interrupted."""

    def on_progress(done, total):
        if done == 2:  # parameters and the kernel_pid cell done: now it sleeps
            os.kill(os.getpid(), signal.SIGINT)

    started = time.monotonic()
    with handle_interrupts() as interrupts:
        outcome, run_dir = run(tmp_path, "sleep.ipynb", on_progress=on_progress)
        assert interrupts.is_set()
    assert outcome.status == "interrupted"
    assert outcome.reason == "interrupted by SIGINT"
    assert time.monotonic() - started < 30
    metrics, _ = read_records(run_dir)
    assert [m["name"] for m in metrics] == ["kernel_pid"]
    kernel_pid = metrics[0]["value"]
    assert kernel_pid == outcome.kernel_pid
    assert outcome.output_exists
    assert_no_orphans(outcome, run_dir)
    # handlers are restored
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.slow
def test_unresponsive_runner_is_killed_with_its_kernel(tmp_path):
    """A runner that ignores SIGTERM (here: stopped) is SIGKILLed after the grace period."""
    child = {}

    def on_progress(done, total):
        if done == 2 and "stopped" not in child:
            os.kill(child["pid"], signal.SIGSTOP)
            child["stopped"] = True

    outcome, run_dir = run(
        tmp_path,
        "sleep.ipynb",
        timeout=4,
        kill_grace=1.0,
        on_start=lambda pid: child.update(pid=pid),
        on_progress=on_progress,
    )
    assert child.get("stopped")
    assert outcome.status == "timeout"
    assert outcome.duration_s >= 4 + 1  # the limit, then the grace before the kill
    assert outcome.reason == f"timed out after {outcome.duration_s:.1f} s (limit 4 s)"
    assert outcome.kernel_pid is not None
    assert_no_orphans(outcome, run_dir)


@pytest.mark.slow
def test_runner_killed_with_sigkill_leaves_no_kernel(tmp_path):
    """If the process calling execute_notebook dies, its child stops the kernel and exits."""
    run_dir = tmp_path / "run"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from research.runs.child import execute_notebook\n"
        "nb, run_dir = Path(sys.argv[1]), Path(sys.argv[2])\n"
        "execute_notebook(nb, run_dir / 'out.ipynb', {}, run_dir, run_dir)\n"
    )
    runner = subprocess.Popen(
        [sys.executable, "-c", script, str(NOTEBOOKS / "sleep.ipynb"), str(run_dir)]
    )
    try:
        deadline = time.monotonic() + 60
        while not read_records(run_dir)[0] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert read_records(run_dir)[0], "the notebook never started"
        runner.kill()
        runner.wait()
        deadline = time.monotonic() + 10
        while processes_of(run_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_of(run_dir) == []
    finally:
        if runner.poll() is None:
            runner.kill()
    nb = json.loads((run_dir / "out.ipynb").read_text())
    assert nb["cells"]


def test_interrupted_before_start_does_not_run(tmp_path):
    interrupts = InterruptSignals()
    interrupts.trigger("SIGTERM")
    outcome, run_dir = run(tmp_path, "typed.ipynb", interrupts=interrupts)
    assert outcome.status == "interrupted" and outcome.reason == "interrupted by SIGTERM"
    assert outcome.pid is None and not outcome.output_exists


@pytest.mark.slow
def test_notebook_without_kernelspec_runs_with_python3(tmp_path):
    outcome, run_dir = run(tmp_path, "no_kernelspec.ipynb", {"a": 21})
    assert outcome.status == "succeeded", outcome
    assert outcome.kernel_name == "python3"
    metrics, _ = read_records(run_dir)
    assert [(m["name"], m["value"]) for m in metrics] == [("double", 42)]
    nb = json.loads((run_dir / "output.ipynb").read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert_no_orphans(outcome, run_dir)


def test_missing_kernel_fails_with_one_line(tmp_path):
    outcome, run_dir = run(tmp_path, "typed.ipynb", kernel_name="no-such-kernel")
    assert outcome.status == "failed"
    assert outcome.reason.startswith("no such kernel: 'no-such-kernel'")
    assert "\n" not in outcome.reason
    assert outcome.kernel_pid is None
    assert_no_orphans(outcome, run_dir)


@pytest.mark.slow
def test_kernel_death_fails_with_reason(tmp_path):
    outcome, run_dir = run(tmp_path, "kernel_death.ipynb")
    assert outcome.status == "failed"
    assert outcome.reason == "kernel died (exit code 3) in cell 1"
    assert outcome.error["ename"] == "DeadKernelError" and outcome.error["cell_index"] == 1
    assert outcome.output_exists
    assert_no_orphans(outcome, run_dir)


@pytest.mark.slow
def test_kernel_killed_like_the_oom_killer_does(tmp_path):
    outcome, run_dir = run(tmp_path, "kernel_death.ipynb", {"sig": int(signal.SIGKILL)})
    assert outcome.status == "failed"
    # cell 2 of the executed notebook, cell 1 of ours: papermill injected the parameters
    assert outcome.reason == "kernel died (killed by SIGKILL; out of memory?) in cell 1"
    assert_no_orphans(outcome, run_dir)


@pytest.mark.slow
def test_parallel_runs_from_threads_are_independent_and_quiet(tmp_path, capfd):
    def one(i):
        run_dir = tmp_path / f"run{i}"
        outcome = execute_notebook(
            NOTEBOOKS / "typed.ipynb",
            run_dir / "out.ipynb",
            {"steps": i + 1, "name": f"r{i}"},
            run_dir,
            tmp_path,
        )
        return outcome, run_dir

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, range(2)))
    for i, (outcome, run_dir) in enumerate(results):
        assert outcome.status == "succeeded", outcome
        metrics, _ = read_records(run_dir)
        assert sum(m["name"] == "loss" for m in metrics) == i + 1
        assert {m["value"] for m in metrics if m["name"] == "name"} == {f"r{i}"}
        assert_no_orphans(outcome, run_dir)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # nothing spilled onto the terminal


# --------------------------------------------------------------------------- helpers


def test_handle_interrupts_turns_signals_into_a_flag():
    with handle_interrupts() as interrupts:
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupts.wait(2)
        assert interrupts.signal_name == "SIGTERM" and not interrupts.forced
        os.kill(os.getpid(), signal.SIGINT)  # a second signal: no grace period
        deadline = time.monotonic() + 2
        while not interrupts.forced and time.monotonic() < deadline:
            time.sleep(0.01)
        assert interrupts.forced
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_read_records_tolerates_a_truncated_last_line(tmp_path):
    lines = [
        {"kind": "metric", "name": "loss", "value": 1.0, "step": 0, "time": 1.0},
        {"kind": "artifact", "name": "plot.png", "path": "/x/plot.png", "time": 2.0},
        {"kind": "metric", "name": "loss", "value": 0.5, "step": 1, "time": 3.0},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"kind": "metric", "na'
    (tmp_path / "metrics.jsonl").write_text(text)
    metrics, artifacts = read_records(tmp_path)
    assert metrics == [lines[0], lines[2]]
    assert artifacts == [lines[1]]
    assert read_records(tmp_path / "missing") == ([], [])


def test_capture_environment(tmp_path):
    env = capture_environment(tmp_path)
    assert env["git_commit"] is None and env["git_dirty"] is None
    assert env["host"] and env["python"].count(".") == 2
    assert env["torch"] and env["papermill"]
    assert env["device"] == "cpu" or isinstance(env["device"], str)
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        return
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("1")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    env = capture_environment(tmp_path)
    assert len(env["git_commit"]) == 40 and env["git_dirty"] is False
    (tmp_path / "a.txt").write_text("2")
    assert capture_environment(tmp_path)["git_dirty"] is True


def test_detect_device_reads_nvidia_smi(tmp_path, monkeypatch):
    from research.runs import environment

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3'\necho 'NVIDIA A100-SXM4-40GB'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    environment._gpu_names.cache_clear()
    try:
        assert environment.detect_device("2.4.0+cu121") == "NVIDIA H100 80GB HBM3"
        assert environment.detect_device("2.4.0+cpu") == "cpu"  # a CPU-only torch build
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
        assert environment.detect_device("2.4.0") == "NVIDIA A100-SXM4-40GB"
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        assert environment.detect_device("2.4.0") == "cpu"
    finally:
        environment._gpu_names.cache_clear()


def test_sha256_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_the_child_finds_the_package_it_was_started_from():
    """The runner process gets the folder holding `research` on its path (not the package itself)."""
    from research.runs.child import _runner_env

    first = Path(_runner_env(None)["PYTHONPATH"].split(os.pathsep)[0])
    assert (first / "research" / "__init__.py").is_file()
