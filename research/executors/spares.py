"""Spare runner processes: started ahead of the runs that will use them.

Starting a runner (``runs.child.start_runner``) takes a moment: a fork from the fork server
and its kernel's start (about a second of papermill and ipykernel imports without one);
a spare started while the previous run executes hides that. The local executor keeps a
pool per ``research run``; the Dask executor's in-process LocalCluster, whose workers are
threads of this process, shares ``SPARES`` (anywhere else ``take`` finds none and a run
starts its own runner).
"""

from __future__ import annotations

import threading


class SparePool:
    """At most one spare per run still expected, and no more than ``size`` at once."""

    def __init__(self, first=None) -> None:
        self._lock = threading.Lock()
        self._stock = [first] if first is not None else []
        self._expected = 0  # runs that may still take a spare
        self._size = 1
        self._closed = False

    def expect(self, runs: int, size: int) -> None:
        """``runs`` more runs will come, up to ``size`` at a time: start spares for them."""
        with self._lock:
            self._expected += runs
            self._size = max(1, size)
            self._closed = False
            self._refill()

    def take(self):
        """A started runner for the run about to start, or None (it starts its own)."""
        with self._lock:
            self._expected = max(0, self._expected - 1)
            runner = None
            while self._stock and runner is None:
                candidate = self._stock.pop(0)
                runner = candidate if candidate.poll() is None else None  # one that died is skipped
            self._refill()
        return runner

    def clear(self) -> None:
        """Stop the spares nobody took; start no more until ``expect`` is called again."""
        from research.runs.child import discard_runner

        with self._lock:
            self._closed = True
            stock, self._stock, self._expected = self._stock, [], 0
        for runner in stock:
            discard_runner(runner)

    def _refill(self) -> None:
        from research.runs.child import INTERRUPTS, start_runner

        if self._closed or INTERRUPTS.is_set():
            return
        want = min(self._size, self._expected) - len(self._stock)
        self._stock.extend(start_runner() for _ in range(max(0, want)))


SPARES = SparePool()
