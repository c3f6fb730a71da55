"""Measuring the backpressure loader against torch's DataLoader on a workload.

Both loaders are driven by the same consumer loop (:func:`consume`), which
timestamps every item. An item's bytes are *in flight* from the moment its
producer starts allocating it until the consumer finishes the step that used it;
the peak of the sum over items is computed the same way for every loader
(:func:`peak_in_flight`, with a quadratic reference :func:`peak_in_flight_reference`).
For the backpressure loader its credit ledger, which also counts credit reserved
before production starts, is reported too and is never lower.

Throughput is measured from the first batch to the end of the last step; the
consumer's limit is the throughput it would reach if ``next()`` never waited
(items / time spent in steps), so ``throughput / limit = 1 - stall``.

:func:`oracle_reference` sets the runs beside :mod:`.oracle`'s schedule of the
same workload, with the consumer's measured step times: how close the loader
comes to the best possible at each budget, and how far any such loader could go.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from experiments.backpressure.loader import MB, BackpressureConfig, BackpressureLoader
from experiments.backpressure.oracle import oracle_budget_for, oracle_schedule
from experiments.backpressure.workloads import (
    SHARING_STRATEGY,
    SyntheticDataset,
    Workload,
    make_workload,
    set_sharing_strategy,
)

# -- one run ----------------------------------------------------------------


@dataclass
class Run:
    """What one pass of a consumer over a loader measured."""

    loader: str  # "backpressure" or "dataloader"
    setting: str  # e.g. "budget=16MB" or "workers=4,prefetch=2"
    items: int
    throughput: float  # items/s from the first batch to the last step's end
    limit: float  # items/s of the same consumer had it never waited
    stall_fraction: float  # time waiting in next() after the first batch / that span
    time_to_first_batch_s: float
    next_p50_s: float
    next_p99_s: float
    peak_bytes: int  # peak in-flight bytes, production start -> step end (same for all loaders)
    mean_bytes: float  # time-averaged in-flight bytes over the run
    ledger_peak_bytes: int | None = None  # backpressure only: credit ledger peak (>= peak)
    violations: int | None = None  # backpressure only: grants above the budget
    producer_blocked_s: float | None = None
    intervals: list = field(default_factory=list, repr=False)  # (start, end, nbytes) per item
    depth: list = field(default_factory=list, repr=False)  # (t, depth, item k) for backpressure
    ledger: list = field(default_factory=list, repr=False)  # (t, bytes, items, budget)
    budget_bytes: int | None = None

    @property
    def throughput_ratio(self) -> float:
        return self.throughput / self.limit


def consume(loader_iter, step_s: list[float], t0: float) -> dict:
    """Drive ``loader_iter`` like a training loop; per-item timestamps relative to ``t0``."""
    rows = []  # (index, nbytes, t_start, t_request, t_got, t_done)
    it = iter(loader_iter)
    k = 0
    while True:
        # Not `for item in ...`: a for loop (and enumerate's cached tuple) keeps the
        # previous batch alive into the next next() call, which would time its
        # freeing as waiting for the loader.
        t_req = time.monotonic()
        try:
            item = next(it)
        except StopIteration:
            break
        t_got = time.monotonic()
        time.sleep(step_s[min(k, len(step_s) - 1)])  # the training step
        t_done = time.monotonic()
        rows.append(
            (int(item["index"]), item["data"].numel(), float(item["t_start"]), t_req, t_got, t_done)
        )
        del item  # the step is over: drop the batch before asking for the next
        k += 1
    return {"rows": rows, "t0": t0}


def summarize(rows, t0: float, loader: str, setting: str) -> Run:
    n = len(rows)
    t_got0, t_end = rows[0][4], rows[-1][5]
    span = max(t_end - t_got0, 1e-9)
    busy = sum(r[5] - r[4] for r in rows)
    waits = [r[4] - r[3] for r in rows[1:]]
    intervals = [(r[2] - t0, r[5] - t0, r[1]) for r in rows]
    return Run(
        loader=loader,
        setting=setting,
        items=n,
        throughput=n / span,
        limit=n / busy,
        stall_fraction=sum(waits) / span,
        time_to_first_batch_s=rows[0][4] - t0,
        next_p50_s=float(np.percentile(waits, 50)) if waits else float("nan"),
        next_p99_s=float(np.percentile(waits, 99)) if waits else float("nan"),
        peak_bytes=peak_in_flight(intervals),
        mean_bytes=mean_in_flight(intervals),
        intervals=intervals,
    )


def peak_in_flight(intervals) -> int:
    """Max over time of the bytes of items with start <= t < end (sweep line, O(n log n))."""
    events = [(s, 1, b) for s, _, b in intervals] + [(e, 0, -b) for _, e, b in intervals]
    events.sort()  # at equal times a release (0) sorts before an acquire (1)
    cur = peak = 0
    for _, _, delta in events:
        cur += delta
        peak = max(peak, cur)
    return peak


def peak_in_flight_reference(intervals) -> int:
    """Readable O(n^2) version of :func:`peak_in_flight`: the peak is at some start time."""
    return max(
        (sum(b for s2, e2, b in intervals if s2 <= s < e2) for s, _, _ in intervals), default=0
    )


def mean_in_flight(intervals) -> float:
    """Time-averaged in-flight bytes between the first start and the last end."""
    if not intervals:
        return 0.0
    lo = min(s for s, _, _ in intervals)
    hi = max(e for _, e, _ in intervals)
    return sum(b * (e - s) for s, e, b in intervals) / max(hi - lo, 1e-9)


def in_flight_curve(intervals, items: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Step curve (t, bytes in flight) for plotting; ``items=True`` counts items instead."""
    w = [1 if items else b for _, _, b in intervals]
    events = sorted(
        [(s, 1, x) for (s, _, _), x in zip(intervals, w, strict=True)]
        + [(e, 0, -x) for (_, e, _), x in zip(intervals, w, strict=True)]
    )
    t, y, cur = [], [], 0
    for when, _, delta in events:
        cur += delta
        t.append(when)
        y.append(cur)
    return np.array(t), np.array(y)


# -- the two loaders on a workload ----------------------------------------------------


def run_backpressure(
    wl: Workload, budget_bytes: int, num_workers: int = 4, workers: str = "process", **overrides
) -> Run:
    """One pass of the backpressure loader over ``wl``."""
    ds = SyntheticDataset(wl.sizes, wl.produce_s)
    overrides.setdefault("sharing_strategy", SHARING_STRATEGY)
    cfg = BackpressureConfig(
        budget_bytes=budget_bytes, num_workers=num_workers, workers=workers, **overrides
    )
    loader = BackpressureLoader(ds, cfg)
    it = iter(loader)
    try:
        out = consume(it, wl.step_s, it.t0)
    finally:
        it.close()
    st = it.stats()
    run = summarize(out["rows"], it.t0, "backpressure", f"budget={budget_bytes / MB:g}MB")
    run.ledger_peak_bytes = st.peak_in_flight_bytes
    run.violations = st.violations
    run.producer_blocked_s = st.producer_blocked_s
    run.depth = st.depth_timeline
    run.ledger = st.timeline
    run.budget_bytes = budget_bytes
    return run


def run_dataloader(wl: Workload, num_workers: int, prefetch_factor: int) -> Run:
    """One pass of ``torch.utils.data.DataLoader`` (worker processes) over ``wl``."""
    ds = SyntheticDataset(wl.sizes, wl.produce_s)
    t0 = time.monotonic()
    dl = torch.utils.data.DataLoader(
        ds,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor,
        worker_init_fn=functools.partial(set_sharing_strategy, strategy=SHARING_STRATEGY),
    )
    it = iter(dl)
    try:
        out = consume(it, wl.step_s, t0)
    finally:
        del it
    return summarize(
        out["rows"], t0, "dataloader", f"workers={num_workers},prefetch={prefetch_factor}"
    )


# -- figures --------------------------------------------------------------------------


def frontier(ours: list[Run], baseline: list[Run], tol: float = 0.03) -> dict:
    """Peak in-flight bytes at comparable throughput.

    Among DataLoader settings within ``tol`` of the best DataLoader throughput, the
    one with the lowest peak; likewise among backpressure budgets; their ratio
    (> 1: the backpressure loader holds less). Peaks are measured the same way for
    both loaders; the ratio against the backpressure loader's credit ledger (which
    also counts credit reserved ahead of production) is given as well.
    """
    best = max(r.throughput for r in baseline)
    dl_ok = [r for r in baseline if r.throughput >= (1 - tol) * best]
    dl = min(dl_ok, key=lambda r: r.peak_bytes)
    bp_ok = [r for r in ours if r.throughput >= (1 - tol) * best]
    bp = min(bp_ok, key=lambda r: r.peak_bytes) if bp_ok else max(ours, key=lambda r: r.throughput)
    return {
        "best_dataloader_throughput": best,
        "dataloader_within_tol": [r.setting for r in dl_ok],
        "dataloader": dl,
        "backpressure": bp,
        "comparable": bool(bp_ok),
        "throughput_vs_best": bp.throughput / best,
        "peak_ratio": dl.peak_bytes / bp.peak_bytes,
        "peak_ratio_ledger": dl.peak_bytes / bp.ledger_peak_bytes,
        "mean_ratio": dl.mean_bytes / bp.mean_bytes,
    }


def measured_steps(wl: Workload, limit: float) -> list[float]:
    """The workload's step times, shifted so their mean matches a measured consumer limit.

    A sleeping step overshoots by a roughly constant amount, so the oracle is held
    to the consumer the real runs had, not to the nominal one.
    """
    overshoot = max(0.0, 1 / limit - sum(wl.step_s) / len(wl.step_s))
    return [s + overshoot for s in wl.step_s]


def oracle_reference(
    wl: Workload,
    ours: list[Run],
    baseline: list[Run],
    front: dict,
    num_workers: int,
    tol: float = 0.03,
) -> dict:
    """What the best in-order loader could do (:mod:`.oracle`) beside the measured runs.

    For each backpressure budget run, the oracle's throughput at that budget and
    the run's fraction of it (both with the run's own measured steps); and the
    smallest budget at which the oracle reaches the frontier's throughput (within
    ``tol`` of the best DataLoader, with that run's steps), and the peak ratio it
    would give: the best figure any in-order loader could print.
    """
    at_budget = []
    for r in ours:
        o = oracle_schedule(
            wl.sizes, wl.produce_s, measured_steps(wl, r.limit), r.budget_bytes, num_workers
        )
        at_budget.append((r.setting, o.throughput, r.throughput / o.throughput))
    best = max(baseline, key=lambda r: r.throughput)
    least = oracle_budget_for(
        wl.sizes,
        wl.produce_s,
        measured_steps(wl, best.limit),
        (1 - tol) * best.throughput,
        num_workers,
    )
    return {
        "at_budget": at_budget,  # (setting, oracle items/s, measured / oracle)
        "least_budget_bytes": least.budget_bytes if least else None,
        "least_peak_bytes": least.peak_bytes if least else None,
        "best_peak_ratio": front["dataloader"].peak_bytes / least.peak_bytes if least else None,
    }


def settling(run: Run, change_at: int, band: int = 1) -> dict:
    """How the depth target settles after the step change at item ``change_at``.

    The settled value is the median depth over the last half of the items after the
    change; ``settle_items`` counts items from the change until depth stays within
    ``band`` of it for good; ``reversals`` counts direction changes of depth after
    the change (0 or 1 = no oscillation).
    """
    d = [depth for _, depth, k in run.depth if k >= change_at]
    if not d:
        return {
            "settle_items": math.inf,
            "final": float("nan"),
            "reversals": 0,
            "max_dev_after": float("nan"),
        }
    final = float(np.median(d[len(d) // 2 :]))
    settle = len(d)
    for i in range(len(d) - 1, -1, -1):
        if abs(d[i] - final) > band:
            break
        settle = i
    steps = [b - a for a, b in zip(d, d[1:], strict=False) if b != a]
    reversals = sum(1 for a, b in zip(steps, steps[1:], strict=False) if (a > 0) != (b > 0))
    after = d[settle:] or [final]
    return {
        "settle_items": settle,
        "final": final,
        "reversals": reversals,
        "max_dev_after": max(abs(x - final) for x in after),
        "before": float(
            np.median([depth for _, depth, k in run.depth if k < change_at][-20:] or [0])
        ),
    }


# -- a whole comparison on one workload ---------------------------------------------------


@dataclass
class SuiteConfig:
    n_items: int = 200  # items per run
    scale: float = 1.0  # item-size multiplier (quick runs: 1/4)
    speed: float = 1.0  # time divisor (quick runs: 2)
    budgets_mb: tuple = (16, 24, 32, 64)  # backpressure budgets swept (at scale 1)
    dl_workers: tuple = (1, 2, 4, 8)  # DataLoader num_workers swept
    dl_prefetch: tuple = (1, 2, 4, 8)  # DataLoader prefetch_factor swept
    num_workers: int = 4  # backpressure producers
    workers: str = "process"  # backpressure producer kind (DataLoader always uses processes)
    seed: int = 0
    repeats: int = 1  # passes per setting, combined by :func:`combine_repeats`


def combine_repeats(runs: list[Run]) -> Run:
    """One figure per setting from repeated passes: the pass of median throughput,
    with the largest peak and the total of violations over all passes.

    The median damps a pass that a busy machine slowed down; taking the largest
    peak keeps the memory figure conservative, the same way for both loaders.
    """
    ranked = sorted(runs, key=lambda r: r.throughput)
    median = ranked[(len(ranked) - 1) // 2]
    return dataclasses.replace(
        median,
        peak_bytes=max(r.peak_bytes for r in runs),
        ledger_peak_bytes=None
        if median.ledger_peak_bytes is None
        else max(r.ledger_peak_bytes for r in runs),
        violations=None if median.violations is None else sum(r.violations for r in runs),
    )


def run_workload(name: str, cfg: SuiteConfig, log: Callable[[str], None] = print) -> dict:
    """Backpressure budgets and DataLoader settings, ``cfg.repeats`` passes each, on ``name``.

    The passes of every setting are interleaved (all settings once, then again),
    so a slow spell of the machine does not fall on one setting only.
    """
    wl = make_workload(name, cfg.n_items, seed=cfg.seed, scale=cfg.scale, speed=cfg.speed)
    settings = [("bp", mb) for mb in cfg.budgets_mb] + [
        ("dl", (nw, pf)) for nw in cfg.dl_workers for pf in cfg.dl_prefetch
    ]
    passes: dict = {s: [] for s in settings}
    for _ in range(cfg.repeats):
        for kind, arg in settings:
            if kind == "bp":
                run = run_backpressure(wl, int(arg * MB * cfg.scale), cfg.num_workers, cfg.workers)
            else:
                run = run_dataloader(wl, *arg)
            passes[(kind, arg)].append(run)
    ours, baseline = [], []
    for (kind, _), runs in passes.items():
        run = combine_repeats(runs)
        log(format_run(run))
        (ours if kind == "bp" else baseline).append(run)
    front = frontier(ours, baseline)
    oracle = oracle_reference(wl, ours, baseline, front, cfg.num_workers)
    log(
        "  oracle (in order, knowing every size and time, no transfer cost), items/s at our "
        "budgets and our fraction of it: "
        + ", ".join(
            f"{setting} {thr:.1f} ({frac:.3f})" for setting, thr, frac in oracle["at_budget"]
        )
    )
    result = {
        "workload": wl,
        "ours": ours,
        "dataloader": baseline,
        "frontier": front,
        "oracle": oracle,
    }
    if wl.change_at is not None:
        result["settling"] = settling(max(ours, key=lambda r: r.budget_bytes), wl.change_at)
    return result


def format_run(r: Run) -> str:
    ledger = (
        f" ledger {r.ledger_peak_bytes / MB:5.1f}" if r.ledger_peak_bytes is not None else " " * 13
    )
    viol = f" violations {r.violations}" if r.violations is not None else ""
    return (
        f"  {r.loader:12s} {r.setting:21s} {r.throughput:6.1f} it/s  {r.throughput_ratio:5.3f} of limit"
        f"  stall {100 * r.stall_fraction:4.1f}%  peak {r.peak_bytes / MB:5.1f} MB{ledger}"
        f"  mean {r.mean_bytes / MB:5.1f} MB{viol}"
    )
