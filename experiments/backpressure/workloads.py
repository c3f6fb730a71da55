"""Synthetic workloads, the torch DataLoader baseline, and how runs are measured.

Producer and consumer costs are simulated with ``time.sleep`` (a decode step, a
training step), but every item is a real tensor of its stated size whose pages
are written, so the memory in flight is real memory. Workloads:

1. ``heavy_tailed``: item sizes from a Pareto law (alpha 1.5) truncated to
   0.5-8 MB; producing an item costs time in proportion to its size; the consumer
   step is fixed. Producers outpace the consumer on average (consumer-bound).
2. ``slowdown``: the same items; the consumer step becomes 5x slower halfway.
3. ``bursty``: 1-2 MB items; the producer is fast except for periodic hiccups
   (every ``period`` items, ``hiccup_items`` of them take 20x longer).

In-flight bytes of an item are counted from the moment its producer starts
allocating it until the consumer finishes the step that used it; the peak of the
sum over items is computed the same way for every loader (:func:`peak_in_flight`,
with a quadratic reference :func:`peak_in_flight_reference`). For the backpressure
loader its own credit ledger, which also covers credit reserved before production
starts, is reported as well and is never lower.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.multiprocessing

from experiments.backpressure.loader import MB, BackpressureConfig, BackpressureLoader

WORKLOADS = ("heavy_tailed", "slowdown", "bursty")
SHARING_STRATEGY = "file_system"  # worker processes of both loaders send tensors this way


@dataclass
class Workload:
    name: str
    sizes: list[int]  # bytes of item i
    produce_s: list[float]  # producer cost of item i
    step_s: list[float]  # consumer step time when it consumes the k-th item
    change_at: int | None = None  # item index of a step change, if any

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def consumer_limit(self) -> float:
        """Items per second of a consumer that never waits."""
        return len(self.step_s) / sum(self.step_s)


def truncated_pareto(rng: np.random.Generator, n: int, lo: float, hi: float, alpha: float) -> np.ndarray:
    """Inverse-CDF samples of a Pareto(alpha) law with support [lo, hi]."""
    u = rng.random(n)
    return lo / (1 - u * (1 - (lo / hi) ** alpha)) ** (1 / alpha)


def make_workload(name: str, n: int = 240, seed: int = 0, scale: float = 1.0, speed: float = 1.0) -> Workload:
    """Build workload ``name`` with ``n`` items.

    ``scale`` multiplies item sizes (quick runs use 1/8), ``speed`` divides all times.
    """
    rng = np.random.default_rng(seed)
    if name in ("heavy_tailed", "slowdown"):
        mb = truncated_pareto(rng, n, 0.5, 8.0, alpha=1.5)  # (n,) sizes in MB
        produce = 0.002 + 0.006 * mb  # 2 ms + 6 ms per MB: 5-50 ms
        step = np.full(n, 0.006)  # 6 ms step: consumer-bound with 4 workers
        change_at = None
        if name == "slowdown":
            change_at = n // 2
            step = np.full(n, 0.003)
            step[change_at:] *= 5  # the consumer slows 5x mid-run
    elif name == "bursty":
        mb = rng.uniform(1.0, 2.0, n)
        produce = np.full(n, 0.004)
        period, hiccup_items = 32, 4
        for start in range(period - hiccup_items, n, period):
            produce[start : start + hiccup_items] = 0.080  # a storage hiccup
        step = np.full(n, 0.006)
        change_at = None
    else:
        raise ValueError(f"unknown workload {name!r}; choose one of {WORKLOADS}")
    sizes = [max(1, int(m * MB * scale)) for m in mb]
    return Workload(name, sizes, [p / speed for p in produce], [s / speed for s in step], change_at)


def _new_tensor(nbytes: int) -> torch.Tensor:
    """An uninitialised uint8 tensor; in a worker process, directly in shared memory.

    Allocating in shared memory (as DataLoader's default collate does for batches)
    spares the copy into shared memory when the item is sent to the consumer;
    both loaders get the same treatment.
    """
    if multiprocessing.parent_process() is None:
        return torch.empty(nbytes, dtype=torch.uint8)
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))


def set_sharing_strategy(_worker_id: int, strategy: str = "file_system") -> None:
    """DataLoader ``worker_init_fn``: the same tensor-sharing strategy as our workers."""
    torch.multiprocessing.set_sharing_strategy(strategy)


class SyntheticDataset:
    """Map-style dataset whose item ``i`` is ``sizes[i]`` real bytes costing ``produce_s[i]``.

    ``item_nbytes`` tells the backpressure loader the size before production.
    ``fail_at``: indices whose production raises (for error-propagation tests).
    """

    def __init__(self, sizes: list[int], produce_s: list[float] | float = 0.0, fail_at=()):
        self.sizes = list(sizes)
        n = len(self.sizes)
        self.produce_s = list(produce_s) if isinstance(produce_s, list | tuple) else [produce_s] * n
        self.fail_at = set(fail_at)

    def __len__(self) -> int:
        return len(self.sizes)

    def item_nbytes(self, i: int) -> int:
        return self.sizes[i]

    def __getitem__(self, i: int) -> dict:
        t_start = time.monotonic()
        if i in self.fail_at:
            raise ValueError(f"synthetic failure producing item {i}")
        data = _new_tensor(self.sizes[i])  # (nbytes,) uint8
        data.fill_(i % 251)  # write every page: the memory is real
        remaining = self.produce_s[i] - (time.monotonic() - t_start)
        if remaining > 0:
            time.sleep(remaining)
        return {"index": i, "data": data, "t_start": t_start}


# -- measuring a run ----------------------------------------------------------------


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
    ledger_peak_bytes: int | None = None  # backpressure only: its credit ledger peak (>= peak_bytes)
    violations: int | None = None  # backpressure only: grants above the budget
    producer_blocked_s: float | None = None
    intervals: list = field(default_factory=list, repr=False)  # (start, end, nbytes), t from creation
    depth: list = field(default_factory=list, repr=False)  # (t, depth, item k) for backpressure
    ledger: list = field(default_factory=list, repr=False)  # (t, bytes, items, budget) for backpressure
    budget_bytes: int | None = None

    @property
    def throughput_ratio(self) -> float:
        return self.throughput / self.limit


def consume(loader_iter, step_s: list[float], t0: float) -> dict:
    """Drive ``loader_iter`` like a training loop; per-item timestamps relative to ``t0``."""
    rows = []  # (index, nbytes, t_start, t_request, t_got, t_done)
    t_req = time.monotonic()
    for k, item in enumerate(loader_iter):
        t_got = time.monotonic()
        time.sleep(step_s[min(k, len(step_s) - 1)])  # the training step
        t_done = time.monotonic()
        rows.append((int(item["index"]), item["data"].numel(), float(item["t_start"]), t_req, t_got, t_done))
        del item  # the step is over: drop the batch before asking for the next
        t_req = time.monotonic()
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
    return max((sum(b for s2, e2, b in intervals if s2 <= s < e2) for s, _, _ in intervals), default=0)


def mean_in_flight(intervals) -> float:
    """Time-averaged in-flight bytes between the first start and the last end."""
    if not intervals:
        return 0.0
    lo = min(s for s, _, _ in intervals)
    hi = max(e for _, e, _ in intervals)
    return sum(b * (e - s) for s, e, b in intervals) / max(hi - lo, 1e-9)


def in_flight_curve(intervals) -> tuple[np.ndarray, np.ndarray]:
    """Step curve (t, bytes) of in-flight bytes, for plotting."""
    events = sorted([(s, 1, b) for s, _, b in intervals] + [(e, 0, -b) for _, e, b in intervals])
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
    cfg = BackpressureConfig(budget_bytes=budget_bytes, num_workers=num_workers, workers=workers, **overrides)
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
    return summarize(out["rows"], t0, "dataloader", f"workers={num_workers},prefetch={prefetch_factor}")


# -- figures --------------------------------------------------------------------------


def frontier(ours: list[Run], baseline: list[Run], tol: float = 0.03) -> dict:
    """Peak in-flight bytes at comparable throughput.

    Among DataLoader settings within ``tol`` of the best DataLoader throughput, the
    one with the lowest peak; likewise among backpressure budgets; their ratio.
    The backpressure peak is its credit ledger's (never below the measured one).
    """
    best = max(r.throughput for r in baseline)
    dl_ok = [r for r in baseline if r.throughput >= (1 - tol) * best]
    dl = min(dl_ok, key=lambda r: r.peak_bytes)
    bp_ok = [r for r in ours if r.throughput >= (1 - tol) * best]
    bp = min(bp_ok, key=lambda r: r.ledger_peak_bytes) if bp_ok else max(ours, key=lambda r: r.throughput)
    return {
        "best_dataloader_throughput": best,
        "dataloader": dl,
        "backpressure": bp,
        "comparable": bool(bp_ok),
        "throughput_vs_best": bp.throughput / best,
        "peak_ratio": dl.peak_bytes / bp.ledger_peak_bytes,
        "mean_ratio": dl.mean_bytes / bp.mean_bytes,
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
        return {"settle_items": math.inf, "final": float("nan"), "reversals": 0, "max_dev_after": float("nan")}
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
        "before": float(np.median([depth for _, depth, k in run.depth if k < change_at][-20:] or [0])),
    }
