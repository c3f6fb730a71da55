"""Reserving credit for items whose size is not known before they are produced.

A decoder learns how large its output is only once it has decoded it; a
DataLoader never knows. The loader must still reserve credit *before* the item
is produced, so it reserves an estimate and trues the ledger up when the item
arrives. :class:`SizeEstimator` makes the estimate from what the dataset offers:

* a **hint** (``dataset.item_size_hint(index)``, e.g. a JPEG's file size): the
  estimate is the hint times a running high quantile of the ratio
  ``actual / hint`` seen so far, so it scales with each item (capped by the
  estimate from sizes alone, for hints that are only a rough guide);
* a **key** (``dataset.item_size_key(index)``, e.g. a resolution class or a
  source): quantiles are kept per key, falling back to all items until a key
  has ``min_samples`` of its own;
* neither: a running high quantile of all sizes seen.

Each estimate comes with an *upper bound*, the largest comparable size (or ratio)
seen in the window. The scheduler keeps credit free for the worst excess of the
items still in production (``upper - estimate``), so one item under-reserved by
as much as anything seen before cannot push the real bytes over the budget.
Before any item has been seen there is nothing to go on: the first item is
reserved at the whole budget and travels alone.

The quantile is exact over a sliding window (a sorted list kept beside a deque):
O(log w) to find the place, O(w) to insert, small for windows of a few hundred.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass


class WindowQuantile:
    """Exact quantiles over the last ``window`` samples."""

    def __init__(self, window: int):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self._order: deque[float] = deque()  # arrival order, to drop the oldest
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._order)

    def add(self, x: float) -> None:
        if len(self._order) == self.window:
            old = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._order.append(x)
        bisect.insort(self._sorted, x)

    def quantile(self, q: float) -> float:
        """The sample at rank ceil(q * n) (nearest-rank definition); needs a sample."""
        n = len(self._sorted)
        rank = min(n, max(1, math.ceil(q * n)))
        return self._sorted[rank - 1]

    def max(self) -> float:
        return self._sorted[-1]


@dataclass
class Estimate:
    reserve: int  # bytes to reserve
    upper: int  # largest size this item plausibly has (for the headroom)


class SizeEstimator:
    """Running estimate of an item's size from its hint, its key and what was seen."""

    def __init__(self, quantile: float = 0.9, window: int = 256, min_samples: int = 8):
        if not 0 < quantile <= 1:
            raise ValueError("quantile must be in (0, 1]")
        self.quantile, self.window, self.min_samples = quantile, window, min_samples
        self._stats: dict[tuple[bool, Hashable], WindowQuantile] = {}
        self.seen = 0

    def _window(self, hinted: bool, key: Hashable) -> WindowQuantile | None:
        """The per-key window if it has enough samples, else the one over all keys."""
        own = self._stats.get((hinted, key))
        if own is not None and (len(own) >= self.min_samples or key is None):
            return own
        return self._stats.get((hinted, None)) or own

    def _from(self, hinted: bool, key: Hashable, scale: float) -> Estimate | None:
        w = self._window(hinted, key)
        if w is None or len(w) == 0:
            return None
        # too few samples to trust a quantile: the largest seen
        q = w.max() if len(w) < self.min_samples else w.quantile(self.quantile)
        return Estimate(max(1, math.ceil(q * scale)), max(1, math.ceil(w.max() * scale)))

    def estimate(self, key: Hashable = None, hint: int | None = None) -> Estimate | None:
        """What to reserve for an item; None before anything was seen.

        With a hint, the smaller of the hint-scaled estimate and the one from sizes
        alone: a hint whose ratio to the size varies widely (a noisy picture
        compresses worse) would otherwise over-reserve large files.
        """
        plain = self._from(False, key, 1.0)
        if hint is None or hint <= 0 or plain is None:
            return plain
        scaled = self._from(True, key, float(hint))
        if scaled is None:
            return plain
        return Estimate(min(plain.reserve, scaled.reserve), min(plain.upper, scaled.upper))

    def observe(self, actual: int, key: Hashable = None, hint: int | None = None) -> None:
        """Learn from an item whose real size is now known."""
        samples = [(False, float(actual))]
        if hint is not None and hint > 0:
            samples.append((True, actual / hint))
        for hinted, x in samples:
            for k in {key, None}:
                w = self._stats.get((hinted, k))
                if w is None:
                    w = self._stats[(hinted, k)] = WindowQuantile(self.window)
                w.add(x)
        self.seen += 1


@dataclass
class ReservationStats:
    """How the reservations made on estimates compared with the sizes that arrived."""

    estimated: int = 0  # items reserved on an estimate (not an exact size)
    short: int = 0  # of those, items larger than their reservation
    short_bytes: int = 0  # total bytes by which reservations fell short
    short_max_bytes: int = 0  # the largest single shortfall
    excess_bytes: int = 0  # total bytes reserved beyond the real sizes

    def record(self, reserved: int, actual: int) -> None:
        self.estimated += 1
        if actual > reserved:
            self.short += 1
            self.short_bytes += actual - reserved
            self.short_max_bytes = max(self.short_max_bytes, actual - reserved)
        else:
            self.excess_bytes += reserved - actual

    @property
    def short_fraction(self) -> float:
        return self.short / self.estimated if self.estimated else 0.0
