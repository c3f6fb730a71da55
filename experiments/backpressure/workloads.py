"""Synthetic workloads, the torch DataLoader baseline, and how runs are measured.

Producer and consumer costs are simulated with ``time.sleep`` (a decode step, a
training step), but every item is a real tensor of its stated size whose pages
are written, so the memory in flight is real memory. Workloads:

1. ``heavy_tailed``: item sizes from a Pareto law (alpha 1.5) truncated to
   0.5-8 MB (mean 1.3 MB); producing an item takes 3 ms + 8 ms per MB (7-67 ms);
   the consumer step is 10 ms. Four producers outpace the consumer on average
   (consumer-bound), but a large item takes up to 7 steps to produce.
2. ``slowdown``: the same items; the consumer step is 5 ms, then 25 ms from the
   middle of the run on (5x slower).
3. ``bursty``: 1-2 MB items produced in 6 ms, except for a storage hiccup every
   32 items: 4 items in a row take 120 ms. Consumer step 10 ms.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.multiprocessing

from experiments.backpressure.loader import MB

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


def truncated_pareto(
    rng: np.random.Generator, n: int, lo: float, hi: float, alpha: float
) -> np.ndarray:
    """Inverse-CDF samples of a Pareto(alpha) law with support [lo, hi]."""
    u = rng.random(n)
    return lo / (1 - u * (1 - (lo / hi) ** alpha)) ** (1 / alpha)


def make_workload(
    name: str, n: int = 240, seed: int = 0, scale: float = 1.0, speed: float = 1.0
) -> Workload:
    """Build workload ``name`` with ``n`` items.

    ``scale`` multiplies item sizes (quick runs use 1/8), ``speed`` divides all times.
    """
    rng = np.random.default_rng(seed)
    if name in ("heavy_tailed", "slowdown"):
        mb = truncated_pareto(rng, n, 0.5, 8.0, alpha=1.5)  # (n,) sizes in MB
        produce = 0.003 + 0.008 * mb  # 3 ms + 8 ms per MB: 7-67 ms
        step = np.full(n, 0.010)  # 10 ms step: consumer-bound with 4 workers
        change_at = None
        if name == "slowdown":
            change_at = n // 2
            step = np.full(n, 0.005)
            step[change_at:] *= 5  # the consumer slows 5x mid-run
    elif name == "bursty":
        mb = rng.uniform(1.0, 2.0, n)
        produce = np.full(n, 0.006)
        period, hiccup_items = 32, 4
        for start in range(period - hiccup_items, n, period):
            produce[start : start + hiccup_items] = 0.120  # a storage hiccup
        step = np.full(n, 0.010)
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
    """DataLoader ``worker_init_fn``: the same tensor sharing and warm-up as our workers."""
    torch.multiprocessing.set_sharing_strategy(strategy)
    torch.zeros(1).share_memory_()  # pay shared-memory set-up now, not on the first item


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
