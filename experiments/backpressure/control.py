"""Control loops of the backpressure loader: adaptive depth and memory pressure.

Adaptive depth is Little's law, L = lambda * W. The consumer drains items at
lambda = 1 / C (C: its step time); an item takes W = S to produce (S: producer
latency). To never starve the consumer, an item must be requested S seconds
before it is needed, i.e. about S / C steps ahead, plus the one being consumed:

    depth(size) = ceil((S_hat(size) + k * dev + B) / C_hat) + 1

C_hat, S_hat and dev are exponentially weighted moving averages (EWMAs):

* S_hat(size): producer latency in proportion to item size, the per-byte cost
  being the ratio of the EWMAs of latency and size, so a large item is requested
  earlier than a small one;
* dev: the EWMA of the absolute residual |S - S_hat|, the safety margin of TCP's
  retransmission timer (Jacobson/Karels: SRTT + 4 * RTTVAR);
* B: a burst allowance for what averages cannot see (a producer that goes quiet
  for a while): every consumer stall adds its duration to B, which leaks 1% per
  step, a leaky integrator in the spirit of AIMD congestion control.

The depth reported in the timelines is the one for an item of average size. It
grows at once and shrinks only when the raw value falls ``shrink_hysteresis``
below the next integer down, so noise does not make it oscillate.

Memory pressure is a thermostat with hysteresis: a probe returns memory use as a
fraction (CUDA: 1 - free/total from ``torch.cuda.mem_get_info``; CPU: process
RSS over a limit, or 1 - available/total of the host). Above ``high`` the budget
scale halves (at most once per ``interval_s``); below ``low`` it grows back; in
between it holds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


class Ewma:
    """Exponentially weighted moving average; the first sample initialises it."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.value: float | None = None

    def update(self, x: float) -> float:
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)
        return self.value

    def get(self, default: float = 0.0) -> float:
        return default if self.value is None else self.value


class LatencyModel:
    """Producer latency in proportion to item size: S_hat(size) = size * EWMA(S) / EWMA(size).

    The ratio of two EWMAs is a robust per-byte cost; when latency has a fixed part
    it over-predicts large items (they are requested a little early, which is safe)
    and under-predicts small ones by less than ``dev``, the EWMA of |S - S_hat|.
    A sample is clipped at S_hat + clip * dev before it enters the averages, so a
    single stall does not inflate the depth, while a lasting change still moves
    them geometrically fast.
    """

    def __init__(self, alpha: float, clip: float = 4.0):
        self.x, self.y = Ewma(alpha), Ewma(alpha)  # size, latency
        self.dev = Ewma(alpha)  # EWMA of |residual|
        self.clip = clip
        self.n = 0

    def predict(self, size: float) -> float:
        if self.n == 0:
            return 0.0
        mx = self.x.get()
        return self.y.get() * (size / mx) if mx > 0 else self.y.get()

    def update(self, size: float, latency: float) -> None:
        if self.n > 0:  # residual against the model before this sample
            pred = self.predict(size)
            # winsorise: one outlier moves the averages by at most `clip` deviations
            latency = min(latency, pred + self.clip * max(self.dev.get(), 1e-4))
            self.dev.update(abs(latency - pred))
        else:
            self.dev.update(latency / 2)  # no history yet: a wide margin
        self.x.update(size)
        self.y.update(latency)
        self.n += 1

    @property
    def mean_size(self) -> float:
        return self.x.get()


@dataclass
class DepthConfig:
    adaptive: bool = True  # False: depth = max_depth, only the byte budget limits
    initial_depth: int | None = None  # before any measurement; None: num_workers + 1
    min_depth: int = 1  # 1 = no prefetch at all; 2 = double buffering
    max_depth: int = 64  # hard cap on items in flight
    alpha: float = 0.2  # EWMA weight of a new sample
    k_dev: float = 2.0  # safety margin, in mean absolute deviations of latency
    burst_leak: float = 0.01  # fraction of the burst allowance B forgotten per step
    stall_floor_s: float = 0.0005  # waits shorter than this are not stalls
    shrink_hysteresis: float = 0.2  # shrink only when raw depth < current - 1 - this


class DepthController:
    """Little's-law target for the number of items in flight."""

    def __init__(self, cfg: DepthConfig):
        self.cfg = cfg
        self.latency = LatencyModel(cfg.alpha)
        self.step = Ewma(cfg.alpha)  # consumer step time C
        self.burst = 0.0  # burst allowance B, seconds
        self.depth = (cfg.initial_depth or 2) if cfg.adaptive else cfg.max_depth

    def _clamp(self, d: float) -> int:
        return int(min(self.cfg.max_depth, max(self.cfg.min_depth, d)))

    def raw_depth(self, size: float | None = None) -> float:
        """Little's law before rounding: (S_hat + k dev + B) / C_hat + 1."""
        c = self.step.get()
        if self.latency.n == 0 or c <= 0:
            return float(self.depth)
        s = self.latency.predict(self.latency.mean_size if size is None else size)
        return (s + self.cfg.k_dev * self.latency.dev.get() + self.burst) / c + 1

    def depth_for(self, size: float) -> int:
        """Depth target seen by an item of ``size`` bytes (gates its request)."""
        if not self.cfg.adaptive:
            return self.cfg.max_depth
        if self.latency.n == 0 or self.step.value is None:
            return self.depth
        return self._clamp(max(self.depth, math.ceil(self.raw_depth(size))))

    def observe_latency(self, size: float, seconds: float) -> None:
        self.latency.update(size, seconds)
        self._retarget()

    def observe_step(self, seconds: float) -> None:
        self.step.update(seconds)
        self._retarget()

    def observe_wait(self, seconds: float) -> None:
        """The consumer waited ``seconds`` for an item still in production: a stall.

        Stalls feed the burst allowance; every step leaks part of it.
        """
        stall = seconds if seconds > self.cfg.stall_floor_s else 0.0
        self.burst = self.burst * (1 - self.cfg.burst_leak) + stall
        self._retarget()

    def _retarget(self) -> None:
        if not self.cfg.adaptive or self.latency.n == 0 or self.step.value is None:
            return
        raw = self.raw_depth()
        if math.ceil(raw) > self.depth:
            self.depth = self._clamp(math.ceil(raw))  # grow at once: a stall costs throughput
        elif raw < self.depth - 1 - self.cfg.shrink_hysteresis:
            self.depth = self._clamp(math.ceil(raw))  # shrink past the hysteresis band


# -- memory pressure ---------------------------------------------------------------


def cuda_probe(device=None) -> Callable[[], float]:
    """Fraction of CUDA device memory in use, from ``torch.cuda.mem_get_info``."""
    import torch

    def probe() -> float:
        free, total = torch.cuda.mem_get_info(device)
        return 1.0 - free / total

    return probe


def cpu_probe(rss_limit_bytes: int | None = None) -> Callable[[], float]:
    """Process RSS over ``rss_limit_bytes`` if given, else host memory in use."""
    import psutil

    proc = psutil.Process()

    def probe() -> float:
        if rss_limit_bytes:
            return proc.memory_info().rss / rss_limit_bytes
        vm = psutil.virtual_memory()
        return 1.0 - vm.available / vm.total

    return probe


def default_probe(device: str = "auto", rss_limit_bytes: int | None = None) -> Callable[[], float]:
    """CUDA free memory on a CUDA device, RSS / available memory on CPU."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda"):
        return cuda_probe(device)
    return cpu_probe(rss_limit_bytes)


@dataclass
class PressureConfig:
    high: float = 0.90  # memory-use fraction above which the budget shrinks
    low: float = 0.80  # ... below which it recovers (high > low: hysteresis)
    shrink: float = 0.5  # budget scale multiplier per interval while above high
    grow: float = 1.25  # ... while below low
    min_scale: float = 1 / 16  # the budget never shrinks below this fraction
    interval_s: float = 0.05  # at most one change per interval


class MemoryPressure:
    """Hysteresis thermostat turning a memory probe into a budget scale in (0, 1]."""

    def __init__(self, probe: Callable[[], float], cfg: PressureConfig | None = None):
        self.cfg = cfg or PressureConfig()
        if not self.cfg.low < self.cfg.high:
            raise ValueError("pressure watermarks need low < high")
        self.probe = probe
        self.scale = 1.0
        self.pressured = False  # True between crossing high and crossing back below low
        self.last_use = 0.0
        self._last_change = -math.inf

    def update(self, now: float | None = None) -> float:
        """Read the probe and move the scale; returns the scale."""
        now = time.monotonic() if now is None else now
        if now - self._last_change < self.cfg.interval_s:
            return self.scale
        use = self.last_use = float(self.probe())
        if use >= self.cfg.high:
            self.pressured = True
            self.scale = max(self.cfg.min_scale, self.scale * self.cfg.shrink)
            self._last_change = now
        elif use <= self.cfg.low:
            self.pressured = False
            if self.scale < 1.0:
                self.scale = min(1.0, self.scale * self.cfg.grow)
                self._last_change = now
        return self.scale

    def micro_batches(self) -> int:
        """How many micro-batches a step should be split into at the current scale."""
        return max(1, math.ceil(1.0 / self.scale - 1e-9))
