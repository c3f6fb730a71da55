"""Measuring the backpressure loader against torch's DataLoader on a workload.

Both loaders are driven by the same consumer loop (:func:`consume`), which
timestamps every item. An item's bytes are *in flight* from the moment its
producer starts allocating it until the consumer finishes the step that used it;
the peak of the sum over items is computed the same way for every loader
(:func:`peak_in_flight`, with a quadratic reference :func:`peak_in_flight_reference`).
For the backpressure loader its credit ledger, which also counts credit reserved
before production starts, is reported too and is never lower.

Memory is also *measured*, not only accounted: :class:`MemoryWatch` reads the
peak resident set of the consumer's process (the kernel's ``VmHWM``, reset per
run) and samples ``/dev/shm``, where process producers of both loaders put their
items, every 2 ms; both are reported above their levels at the start of the run.
The consumer touches one byte of every page of each batch, as a training step
reading it would, so the pages it maps count in its resident set.

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
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from experiments.backpressure.loader import MB, BackpressureConfig, BackpressureLoader
from experiments.backpressure.oracle import oracle_budget_for, oracle_schedule
from experiments.backpressure.workloads import (
    SHARING_STRATEGY,
    Workload,
    make_workload,
    set_sharing_strategy,
    workload_dataset,
)
from experiments.process_memory import peak_bytes, reset_peak, rss_bytes

# -- measured memory ----------------------------------------------------------------


def shm_used_bytes(path: str = "/dev/shm") -> int | None:
    """Bytes in use on the shared-memory file system; None where there is none."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return (st.f_blocks - st.f_bfree) * st.f_frsize


class MemoryWatch:
    """Peak RSS of this process and peak ``/dev/shm`` use while the block runs.

    Both are given above their values at the start. RSS's peak is the kernel's
    own counter where it can be reset (Linux), else the largest sample; shared
    memory is sampled every ``interval_s`` by a thread (statvfs, no GIL held).
    """

    def __init__(self, interval_s: float = 0.002, shm_path: str = "/dev/shm"):
        self.interval_s, self.shm_path = interval_s, shm_path
        self.rss_peak_bytes = 0  # above the start
        self.shm_peak_bytes: int | None = None  # above the start; None without /dev/shm
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._rss_max = max(self._rss_max, rss_bytes())
            shm = shm_used_bytes(self.shm_path)
            if shm is not None:
                self._shm_max = max(self._shm_max, shm)

    def __enter__(self) -> MemoryWatch:
        self._resettable = reset_peak()
        self._rss0 = self._rss_max = rss_bytes()
        self._shm0 = shm_used_bytes(self.shm_path)
        self._shm_max = self._shm0 or 0
        self._thread = threading.Thread(target=self._sample, daemon=True, name="memory-watch")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        peak = peak_bytes(True) if self._resettable else self._rss_max
        self.rss_peak_bytes = max(0, max(peak, self._rss_max) - self._rss0)
        if self._shm0 is not None:
            self.shm_peak_bytes = max(0, self._shm_max - self._shm0)


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
    rss_peak_bytes: int = 0  # measured: the consumer process's peak RSS above its start
    shm_peak_bytes: int | None = None  # measured: peak /dev/shm use above its start
    ledger_peak_bytes: int | None = None  # backpressure only: credit ledger peak
    violations: int | None = None  # backpressure only: grants or true-ups above the budget
    over_budget_bytes: int | None = None  # backpressure: most in-flight bytes exceeded the budget
    sizes: str | None = None  # backpressure: "known" or "estimated" item sizes
    under_reserved: float | None = None  # estimated sizes: fraction of items reserved short
    short_max_bytes: int | None = None  # ... and the largest shortfall
    producer_blocked_s: float | None = None
    intervals: list = field(default_factory=list, repr=False)  # (start, end, nbytes) per item
    depth: list = field(default_factory=list, repr=False)  # (t, depth, item k) for backpressure
    ledger: list = field(default_factory=list, repr=False)  # (t, bytes, items, budget)
    budget_bytes: int | None = None

    @property
    def throughput_ratio(self) -> float:
        return self.throughput / self.limit

    @property
    def measured_peak_bytes(self) -> int:
        """Measured memory in flight: /dev/shm for process producers, else this process's RSS."""
        return self.shm_peak_bytes if self.shm_peak_bytes else self.rss_peak_bytes


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
        data = item["data"]
        int(data.view(-1)[::4096].sum())  # read every page, as a step using the batch would
        time.sleep(step_s[min(k, len(step_s) - 1)])  # the training step
        t_done = time.monotonic()
        rows.append(
            (int(item["index"]), data.numel(), float(item["t_start"]), t_req, t_got, t_done)
        )
        del item, data  # the step is over: drop the batch before asking for the next
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
    wl: Workload,
    budget_bytes: int,
    num_workers: int = 4,
    workers: str = "process",
    known_sizes: bool = False,
    **overrides,
) -> Run:
    """One pass of the backpressure loader over ``wl`` (sizes estimated unless ``known_sizes``)."""
    ds = workload_dataset(wl, known_sizes)
    overrides.setdefault("sharing_strategy", SHARING_STRATEGY)
    cfg = BackpressureConfig(
        budget_bytes=budget_bytes, num_workers=num_workers, workers=workers, **overrides
    )
    loader = BackpressureLoader(ds, cfg)
    with MemoryWatch() as mem:
        it = iter(loader)
        try:
            out = consume(it, wl.step_s, it.t0)
        finally:
            it.close()
    st = it.stats()
    sizes = "known" if known_sizes else "estimated"
    setting = f"budget={budget_bytes / MB:g}MB,{workers},{sizes}"
    run = summarize(out["rows"], it.t0, "backpressure", setting)
    run.rss_peak_bytes, run.shm_peak_bytes = mem.rss_peak_bytes, mem.shm_peak_bytes
    run.ledger_peak_bytes = st.peak_in_flight_bytes
    run.violations = st.violations
    run.over_budget_bytes = max(0, run.peak_bytes - budget_bytes)
    run.sizes = sizes
    if not known_sizes:
        run.under_reserved = st.reservations.short_fraction
        run.short_max_bytes = st.reservations.short_max_bytes
    run.producer_blocked_s = st.producer_blocked_s
    run.depth = st.depth_timeline
    run.ledger = st.timeline
    run.budget_bytes = budget_bytes
    return run


def run_dataloader(
    wl: Workload, num_workers: int, prefetch_factor: int, pin_memory: bool = False
) -> Run:
    """One pass of ``torch.utils.data.DataLoader`` (worker processes) over ``wl``."""
    ds = workload_dataset(wl)
    with MemoryWatch() as mem:
        t0 = time.monotonic()
        dl = torch.utils.data.DataLoader(
            ds,
            batch_size=None,
            shuffle=False,
            num_workers=num_workers,
            prefetch_factor=prefetch_factor,
            pin_memory=pin_memory,
            worker_init_fn=functools.partial(set_sharing_strategy, strategy=SHARING_STRATEGY),
        )
        it = iter(dl)
        try:
            out = consume(it, wl.step_s, t0)
        finally:
            del it
    setting = f"workers={num_workers},prefetch={prefetch_factor}" + (
        ",pinned" if pin_memory else ""
    )
    run = summarize(out["rows"], t0, "dataloader", setting)
    run.rss_peak_bytes, run.shm_peak_bytes = mem.rss_peak_bytes, mem.shm_peak_bytes
    return run


# -- figures --------------------------------------------------------------------------


def accounted_peak(r: Run) -> int:
    return r.peak_bytes


def measured_peak(r: Run) -> int:
    return r.measured_peak_bytes


def frontier(
    ours: list[Run],
    baseline: list[Run],
    tol: float = 0.03,
    peak: Callable[[Run], int] = accounted_peak,
) -> dict:
    """Peak memory at comparable throughput.

    Among DataLoader settings within ``tol`` of the best DataLoader throughput, the
    one with the lowest peak; likewise among backpressure budgets; their ratio
    (> 1: the backpressure loader holds less). ``peak`` picks the memory figure:
    in-flight bytes as accounted (the same way for both loaders) or as measured
    (:func:`measured_peak`). The ratio against the backpressure loader's credit
    ledger is given as well.
    """
    best = max(r.throughput for r in baseline)
    dl_ok = [r for r in baseline if r.throughput >= (1 - tol) * best]
    dl = min(dl_ok, key=peak)
    bp_ok = [r for r in ours if r.throughput >= (1 - tol) * best]
    bp = min(bp_ok, key=peak) if bp_ok else max(ours, key=lambda r: r.throughput)
    return {
        "best_dataloader_throughput": best,
        "dataloader_within_tol": [r.setting for r in dl_ok],
        "dataloader": dl,
        "backpressure": bp,
        "comparable": bool(bp_ok),
        "throughput_vs_best": bp.throughput / best,
        "peak_ratio": peak(dl) / max(peak(bp), 1),
        "peak_ratio_ledger": dl.peak_bytes / bp.ledger_peak_bytes,
        "mean_ratio": dl.mean_bytes / bp.mean_bytes,
    }


def pareto(runs: list[Run], peak: Callable[[Run], int] = accounted_peak) -> list[Run]:
    """The runs no other run beats on both throughput and peak memory, by memory."""
    ranked = sorted(runs, key=lambda r: (peak(r), -r.throughput))
    front, best = [], -math.inf
    for r in ranked:
        if r.throughput > best:
            front.append(r)
            best = r.throughput
    return front


def oracle_curve(wl: Workload, steps: list[float], num_workers: int, points: int = 24) -> list:
    """(peak bytes, items/s) of the oracle at budgets from the largest item up to no limit."""
    lo, hi = max(wl.sizes), sum(wl.sizes)
    budgets = np.unique(np.geomspace(lo, min(hi, 16 * lo), points).astype(int))
    out = []
    for budget in budgets:
        o = oracle_schedule(wl.sizes, wl.produce_s, steps, int(budget), num_workers)
        out.append((o.peak_bytes, o.throughput))
    return out


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
    for r in ours:  # each run against the oracle at its budget, with its own steps
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
    # backpressure (producer kind, sizes) modes, each at every budget; the first is the main one
    modes: tuple = (("process", "estimated"), ("thread", "estimated"), ("process", "known"))
    dl_workers: tuple = tuple(range(1, 9))  # DataLoader num_workers swept
    dl_prefetch: tuple = (1, 2, 4, 8)  # DataLoader prefetch_factor swept
    dl_pin_memory: tuple | None = None  # pin_memory values; None: (False, True) with CUDA
    num_workers: int = 4  # backpressure producers (a workload may set its own)
    seed: int = 0
    repeats: int = 1  # passes per setting, combined by :func:`combine_repeats`


def _median(xs):
    return float(np.median(xs))


def combine_repeats(runs: list[Run]) -> Run:
    """One point per setting from repeated passes: the median of each figure.

    Throughput and every memory figure are medians over the passes (the timelines
    are the median-throughput pass's), the same way for both loaders; budget
    figures are the worst over the passes: violations summed, the largest excess.
    """
    ranked = sorted(runs, key=lambda r: r.throughput)
    middle = ranked[(len(ranked) - 1) // 2]

    def med(name):
        values = [getattr(r, name) for r in runs]
        return None if any(v is None for v in values) else type(values[0])(_median(values))

    def worst(name, combine):
        values = [getattr(r, name) for r in runs]
        return None if any(v is None for v in values) else combine(values)

    return dataclasses.replace(
        middle,
        throughput=_median([r.throughput for r in runs]),
        limit=_median([r.limit for r in runs]),
        stall_fraction=_median([r.stall_fraction for r in runs]),
        peak_bytes=med("peak_bytes"),
        mean_bytes=med("mean_bytes"),
        rss_peak_bytes=med("rss_peak_bytes"),
        shm_peak_bytes=med("shm_peak_bytes"),
        ledger_peak_bytes=med("ledger_peak_bytes"),
        violations=worst("violations", sum),
        over_budget_bytes=worst("over_budget_bytes", max),
        under_reserved=worst("under_reserved", _median),
        short_max_bytes=worst("short_max_bytes", max),
    )


def mode_name(workers: str, sizes: str) -> str:
    return f"{workers},{sizes}"


def run_workload(name: str, cfg: SuiteConfig, log: Callable[[str], None] = print) -> dict:
    """Backpressure budgets (every mode) and the DataLoader grid, ``cfg.repeats`` passes each.

    The passes of every setting are interleaved (all settings once, then again),
    so a slow spell of the machine does not fall on one setting only.
    """
    wl = make_workload(name, cfg.n_items, seed=cfg.seed, scale=cfg.scale, speed=cfg.speed)
    num_workers = wl.num_workers or cfg.num_workers
    pins = cfg.dl_pin_memory
    if pins is None:
        pins = (False, True) if torch.cuda.is_available() else (False,)
    settings = [("bp", (mb, w, sz)) for w, sz in cfg.modes for mb in cfg.budgets_mb] + [
        ("dl", (nw, pf, pin)) for nw in cfg.dl_workers for pf in cfg.dl_prefetch for pin in pins
    ]
    passes: dict = {s: [] for s in settings}
    for _ in range(cfg.repeats):
        for kind, arg in settings:
            if kind == "bp":
                mb, w, sz = arg
                budget = int(mb * MB * cfg.scale)
                run = run_backpressure(wl, budget, num_workers, w, known_sizes=sz == "known")
            else:
                run = run_dataloader(wl, *arg)
            passes[(kind, arg)].append(run)
    ours: dict[str, list[Run]] = {mode_name(*m): [] for m in cfg.modes}
    baseline = []
    for (kind, arg), runs in passes.items():
        run = combine_repeats(runs)
        log(format_run(run))
        if kind == "bp":
            ours[mode_name(arg[1], arg[2])].append(run)
        else:
            baseline.append(run)
    main = mode_name(*cfg.modes[0])
    fronts = {m: frontier(runs, baseline) for m, runs in ours.items()}
    measured = {m: frontier(runs, baseline, peak=measured_peak) for m, runs in ours.items()}
    oracle = {
        m: oracle_reference(wl, runs, baseline, fronts[m], num_workers) for m, runs in ours.items()
    }
    best_dl = max(baseline, key=lambda r: r.throughput)
    curve = oracle_curve(wl, measured_steps(wl, best_dl.limit), num_workers)
    for m in ours:
        log(
            f"  oracle at our budgets ({m}), items/s and our fraction of it: "
            + ", ".join(
                f"{setting.split(',')[0]} {thr:.1f} ({frac:.3f})"
                for setting, thr, frac in oracle[m]["at_budget"]
            )
        )
    result = {
        "workload": wl,
        "num_workers": num_workers,
        "main_mode": main,
        "modes": ours,
        "ours": ours[main],
        "dataloader": baseline,
        "frontier": fronts[main],
        "frontiers": fronts,
        "measured_frontiers": measured,
        "oracle": oracle[main],
        "oracles": oracle,
        "oracle_curve": curve,
    }
    if wl.change_at is not None:
        result["settling"] = settling(max(ours[main], key=lambda r: r.budget_bytes), wl.change_at)
    return result


def format_run(r: Run) -> str:
    ledger = (
        f" ledger {r.ledger_peak_bytes / MB:5.1f}" if r.ledger_peak_bytes is not None else " " * 13
    )
    shm = f" shm {r.shm_peak_bytes / MB:5.1f}" if r.shm_peak_bytes is not None else ""
    extra = ""
    if r.violations is not None:
        extra = f"  over budget {r.over_budget_bytes / MB:4.2f} MB"
        if r.under_reserved is not None:
            extra += f", {100 * r.under_reserved:4.1f}% reserved short"
    return (
        f"  {r.loader:12s} {r.setting:33s} {r.throughput:6.1f} it/s  {r.throughput_ratio:5.3f} of limit"
        f"  stall {100 * r.stall_fraction:4.1f}%  peak {r.peak_bytes / MB:5.1f} MB{ledger}"
        f"  measured: rss {r.rss_peak_bytes / MB:5.1f}{shm}{extra}"
    )
