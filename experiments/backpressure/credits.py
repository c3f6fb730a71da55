"""Byte credits: the flow-control ledger of the backpressure loader.

Credit-based flow control (Flink's network stack, Reactive Streams' ``request(n)``)
lets a producer send only what the consumer has granted. Here the grant is in
*bytes*: before an item is produced, its size is taken from a shared pool of
``budget`` bytes; it goes back when the consumer has *finished* the step that
used the item. A grant fits when ``in_flight + size <= budget``, or when nothing
is in flight at all (an item larger than the whole budget still travels, alone,
so nothing deadlocks). The scheduler adds a second gate, the adaptive depth from
:mod:`experiments.backpressure.control`.

Grants are made in sampler order, so the item the consumer needs next is never
starved by later ones. A grant made on an estimated size is trued up when the
item arrives (``adjust``). Every grant and true-up is checked against the budget:
excesses are counted in ``violations`` and the largest in ``over_max``; the ledger also keeps a timeline of
(time, bytes, count, budget) and the time the producer side spent blocked.
"""

from __future__ import annotations

import threading
import time


class ByteCredits:
    """A byte-denominated credit pool shared by the scheduler and the consumer."""

    def __init__(self, budget_bytes: int, record_timeline: bool = True):
        if budget_bytes <= 0:
            raise ValueError("budget_bytes must be positive")
        self.cond = threading.Condition()
        self.budget = int(budget_bytes)  # current budget; memory pressure may lower it
        self.in_flight = 0  # bytes granted and not yet returned
        self.count = 0  # items granted and not yet returned
        self.granted_total = 0  # bytes ever granted (for the balance check)
        self.returned_total = 0  # bytes ever returned
        self.peak = 0  # largest in_flight seen
        self.violations = 0  # grants or true-ups that left in_flight > budget, others in flight
        self.over_max = 0  # the most bytes in_flight exceeded the budget by (others in flight)
        self.blocked_s = 0.0  # time the scheduler held the next item back (credit or depth)
        self.closed = False
        self.record_timeline = record_timeline
        self.timeline: list[tuple[float, int, int, int]] = []  # (t, bytes, count, budget)

    # -- producer side (the scheduler) ----------------------------------------------
    def fits(self, nbytes: int) -> bool:
        """Whether a grant of ``nbytes`` may be made now (call with ``cond`` held)."""
        if self.count == 0:
            return True  # alone in flight: always allowed, even if larger than the budget
        return self.in_flight + nbytes <= self.budget

    def grant(self, nbytes: int) -> None:
        """Take ``nbytes`` of credit (call with ``cond`` held, after ``fits``)."""
        self.in_flight += nbytes
        self.count += 1
        self.granted_total += nbytes
        self.peak = max(self.peak, self.in_flight)
        self._check_over()
        self._mark()

    def _check_over(self) -> None:
        if self.in_flight > self.budget and self.count > 1:
            self.violations += 1
            self.over_max = max(self.over_max, self.in_flight - self.budget)

    def adjust(self, reserved: int, actual: int) -> None:
        """True up a grant made on an estimate once the item's real size is known."""
        if actual == reserved:
            return
        with self.cond:
            self.in_flight += actual - reserved
            self.granted_total += actual - reserved
            if actual > reserved:
                self.peak = max(self.peak, self.in_flight)
                self._check_over()
            self._mark()
            self.cond.notify_all()

    # -- consumer side -------------------------------------------------------------
    def release(self, nbytes: int) -> None:
        """Return the credit of one item whose step has finished."""
        with self.cond:
            self.in_flight -= nbytes
            self.count -= 1
            self.returned_total += nbytes
            assert self.in_flight >= 0 and self.count >= 0, "credit released twice"
            self._mark()
            self.cond.notify_all()

    def set_budget(self, budget_bytes: int) -> None:
        with self.cond:
            self.budget = max(1, int(budget_bytes))
            self._mark()
            self.cond.notify_all()

    def close(self) -> None:
        """Mark the pool closed and wake every waiter."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _mark(self) -> None:
        if self.record_timeline:
            self.timeline.append((time.monotonic(), self.in_flight, self.count, self.budget))
