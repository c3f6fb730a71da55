"""An oracle schedule: the best a loader starting items in sampler order could do.

The benchmark asks how little memory a loader can hold and still keep pace. To
tell a weak scheduler from a workload that allows no better, this module
schedules a workload with perfect knowledge: every item's size and production
time, and every consumer step, are known in advance, and moving an item from
producer to consumer costs ``transfer_s`` (zero by default). The rules are the
loader's own:

* an item's bytes are in flight from the start of its production until the
  consumer's step with it ends (as :func:`~experiments.backpressure.measure.peak_in_flight`
  measures real runs);
* a production may start only while the in-flight bytes plus the item's size fit
  the budget, or when nothing is in flight (an item larger than the budget goes
  alone);
* at most ``num_workers`` items are in production at once;
* the consumer takes items in sampler order, each as soon as it is produced and
  the previous step has ended.

The oracle starts items in sampler order, each at the earliest moment these
rules allow. Among schedules that start items in sampler order no other is
faster. By induction over the items: say another such schedule starts item i
at time t, and the oracle started every earlier item no later and ended its
production and step no later. An earlier item in flight (or producing) at t in
the oracle's schedule has started by t and not yet ended, so it is in flight (or
producing) at t in the other schedule as well. Hence i fits at t in the oracle's
schedule too, and the oracle starts it at t or before. The same argument shows
that the oracle's throughput never falls as the budget grows, so
:func:`oracle_budget_for` can bisect on it. Schedules that start a later item
first are not covered and can be faster, when a slow production is known far
enough ahead to begin before the items in front of it.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class OracleSchedule:
    """Per-item times (seconds from the start) of the oracle's schedule at one budget."""

    budget_bytes: int
    start: list[float]  # production starts
    ready: list[float]  # production (and transfer) ends
    got: list[float]  # the consumer takes the item
    end: list[float]  # the consumer's step with it ends: its credit returns
    peak_bytes: int  # largest in-flight bytes

    @property
    def throughput(self) -> float:
        """Items per second from the first batch to the end of the last step (as measured)."""
        n = len(self.got)
        return n / max(self.end[-1] - self.got[0], 1e-12)

    @property
    def stall_s(self) -> float:
        """Time the consumer waits after its first batch."""
        return sum(g - e for g, e in zip(self.got[1:], self.end[:-1], strict=True))


def oracle_schedule(
    sizes: Sequence[int],
    produce_s: Sequence[float],
    step_s: Sequence[float],
    budget_bytes: int,
    num_workers: int,
    transfer_s: float = 0.0,
) -> OracleSchedule:
    """The earliest in-order schedule of items ``sizes`` / ``produce_s`` consumed in ``step_s``.

    Event-driven: time only moves to the next production end or step end, the only
    moments at which a blocked start can become possible.
    """
    n = len(sizes)
    if n == 0 or not len(produce_s) == len(step_s) == n:
        raise ValueError("sizes, produce_s and step_s need one entry per item (at least one)")
    if budget_bytes <= 0 or num_workers < 1 or transfer_s < 0:
        raise ValueError("budget_bytes and num_workers must be positive, transfer_s >= 0")
    if min(sizes) <= 0 or min(produce_s) < 0 or min(step_s) < 0:
        raise ValueError("sizes must be positive and times non-negative")
    nan = float("nan")
    start, ready, got, end = [nan] * n, [nan] * n, [nan] * n, [nan] * n
    producing: list[float] = []  # heap of production end times
    in_flight = count = peak = 0
    next_start = next_take = 0
    consuming: int | None = None  # item whose step is running
    t = 0.0
    while True:
        while producing and producing[0] <= t:
            heapq.heappop(producing)
        if consuming is not None and end[consuming] <= t:  # the step ended: credit returns
            in_flight -= sizes[consuming]
            count -= 1
            consuming = None
        if consuming is None:
            if next_take == n:
                break
            if next_take < next_start and ready[next_take] <= t:
                got[next_take] = t
                end[next_take] = t + step_s[next_take]
                consuming, next_take = next_take, next_take + 1
        while (
            next_start < n
            and len(producing) < num_workers
            and (count == 0 or in_flight + sizes[next_start] <= budget_bytes)
        ):
            i = next_start
            start[i], ready[i] = t, t + produce_s[i] + transfer_s
            heapq.heappush(producing, ready[i])
            in_flight += sizes[i]
            count += 1
            peak = max(peak, in_flight)
            next_start += 1
        # Next event: a step end or a production end (the item the consumer waits
        # for is still producing). Something is always pending: if the next item to
        # take was not started, nothing was in flight, so it started just above.
        pending = [end[consuming]] if consuming is not None else []
        if producing:
            pending.append(producing[0])
        t = max(t, min(pending))
    return OracleSchedule(budget_bytes, start, ready, got, end, peak)


def oracle_budget_for(
    sizes: Sequence[int],
    produce_s: Sequence[float],
    step_s: Sequence[float],
    target_throughput: float,
    num_workers: int,
    transfer_s: float = 0.0,
    resolution_bytes: int = 4096,
) -> OracleSchedule | None:
    """The oracle's schedule at the smallest budget reaching ``target_throughput``.

    ``None`` if even an unlimited budget does not reach it. Bisection to
    ``resolution_bytes``; valid because the oracle's throughput never falls as the
    budget grows.
    """

    def at(budget: int) -> OracleSchedule:
        return oracle_schedule(sizes, produce_s, step_s, budget, num_workers, transfer_s)

    hi = sum(sizes)  # everything may be in flight at once: no budget binds
    best = at(hi)
    if best.throughput < target_throughput:
        return None
    lo = 0  # invariant: budget lo misses the target, hi reaches it
    while hi - lo > resolution_bytes:
        mid = (lo + hi) // 2
        trial = at(mid)
        if trial.throughput >= target_throughput:
            hi, best = mid, trial
        else:
            lo = mid
    return best
