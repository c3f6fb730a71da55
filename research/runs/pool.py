"""Running several runs at once on this machine: a thread per run (each run has its own kernel process)."""

from __future__ import annotations

from collections.abc import Callable

from research.runs.lifecycle import RunResult


def run_in_parallel(
    tasks: list[Callable[[], RunResult]], jobs: int, on_done: Callable[[RunResult], None] | None = None
) -> list[RunResult]:
    """Run callables on up to ``jobs`` threads (each run has its own kernel process), in order."""
    from concurrent.futures import ThreadPoolExecutor

    def wrapped(task):
        result = task()
        if on_done:
            on_done(result)
        return result

    if jobs <= 1:
        return [wrapped(task) for task in tasks]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="run") as pool:
        futures = [pool.submit(wrapped, task) for task in tasks]
        return [f.result() for f in futures]
