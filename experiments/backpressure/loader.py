"""A DataLoader with credit-based, byte-budgeted backpressure and adaptive depth.

Pipeline (one pass)::

    sampler -> scheduler --(task)--> producers --(item)--> receiver --> consumer next()
               thread                threads or            thread           |
               ^ reserves credit     processes                              |
               +----------------- credit returns when the step ends --------+

* The scheduler looks ahead in the sampler. It *reserves* each item's size in
  bytes from the credit pool (:class:`~experiments.backpressure.credits.ByteCredits`)
  in sampler order, once the item, or a later one that must start early, is
  within its adaptive depth (:class:`~experiments.backpressure.control.DepthController`);
  it *releases* a reserved task to the workers just in time. Memory is thus
  reserved before it is allocated, and allocated only shortly before it is used.
* Workers (threads, or processes for CPU-bound decoding) take tasks from one
  shared queue (whoever is free takes the next), produce the item and send it
  back with its real size and production time. A receiver thread takes results
  off the queue as they arrive (for processes, mapping their shared memory) and
  feeds the latency EWMAs.
* The consumer's ``next()`` returns items in sampler order (``in_order=False``:
  as they arrive). Credit goes back when the consumer *finishes* the step: at the
  next ``next()`` by default, or explicitly with ``ack()`` / ``with it.step()``.
  A reclaimer thread does the returning: it drops the loader's reference to the
  batch, then releases its credit. Unmapping a batch that came through shared
  memory costs 0.1-0.2 ms; done there, it is off the training thread, and when
  the consumer dropped its own reference first (``del batch``, or ``with
  it.step()``), the memory is gone before its credit is granted again.
* Memory pressure (:class:`~experiments.backpressure.control.MemoryPressure`)
  scales the budget down above a high watermark and back up below a low one.

Sizes: by default the loader does not know an item's size before it is produced,
as a DataLoader does not. It reserves an estimate (:mod:`~experiments.backpressure.sizes`:
a running high quantile of the sizes seen, per key when the dataset offers
``item_size_key(index)``, scaled by ``item_size_hint(index)`` when it offers a
hint such as a file size), keeps credit free for the worst excess of the items
still in production (up to ``max_item_bytes``, or ``dataset.max_item_nbytes``, a
bound such as the largest resolution, where one is known; else the largest size
seen), and trues the ledger up when each item arrives; how often
and by how much reservations fell short is in the stats. Given exact sizes
(``size_fn(index)``, or a ``dataset.item_nbytes(index)`` method) the budget holds
exactly: the known-size mode, an upper bound on what estimates can do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import heapq
import os
import pickle
import queue
import threading
import time
import traceback
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from experiments.backpressure.control import (
    DepthConfig,
    DepthController,
    MemoryPressure,
    PressureConfig,
    default_probe,
)
from experiments.backpressure.credits import ByteCredits
from experiments.backpressure.sizes import ReservationStats, SizeEstimator

MB = 2**20


@dataclass
class BackpressureConfig:
    budget_bytes: int = 64 * MB  # in-flight bytes stay below this (an oversize item goes alone)
    num_workers: int = 2  # producer workers
    workers: str = "thread"  # "thread" or "process" (for CPU-bound decoding)
    in_order: bool = True  # deliver in sampler order; False: as produced
    auto_ack: bool = True  # next() finishes the previous step; False: call ack() / use step()
    depth: DepthConfig = field(default_factory=DepthConfig)  # Little's-law depth control
    pressure: PressureConfig | None = field(default_factory=PressureConfig)  # None: no signal
    device: str = "auto"  # where memory pressure is read: "cuda..." (mem_get_info) or "cpu"
    rss_limit_bytes: int | None = None  # CPU probe: RSS over this limit instead of host memory
    item_bytes_hint: int | None = None  # fixed reservation for items of unknown size
    size_quantile: float = 0.9  # unknown sizes: reserve this running quantile of those seen
    size_window: int = 256  # ... over the last this many items
    size_headroom_items: int = 1  # keep credit free for the worst excess of this many guessed items
    max_item_bytes: int | None = None  # a bound on any item's size, if known (else: largest seen)
    mp_context: str = "fork"  # multiprocessing start method for process workers
    sharing_strategy: str | None = None  # torch tensor sharing for processes; None: default
    poll_s: float = 0.05  # how often blocked waits re-check liveness and budget
    hold_deadlock_s: float = 2.0  # raise if unacked batches hold all credit this long
    shutdown_timeout_s: float = 5.0  # per worker join on close()
    record_timeline: bool = True  # keep (t, bytes, count, budget) for every credit event


# -- workers ------------------------------------------------------------------------


@dataclass
class WorkerInfo:
    id: int
    num_workers: int


_worker_local = threading.local()


def get_worker_info() -> WorkerInfo | None:
    """Inside a producer (thread or process): its id and the worker count, else None.

    Iterable datasets use it to shard, as with ``torch.utils.data.get_worker_info``.
    """
    return getattr(_worker_local, "info", None)


def nbytes_of(obj, _seen: tuple[set, dict] | None = None) -> int:
    """Bytes an item's tensors/arrays/buffers denote, nested; no storage counted twice.

    A tensor counts the bytes it views, not its whole storage: a row taken from a
    dataset-sized tensor (``TensorDataset``) costs one row. Views of one storage
    inside an item add up to at most that storage's size.
    """
    # The views already counted, and the bytes counted so far per storage.
    views, per_storage = (set(), {}) if _seen is None else _seen
    if hasattr(obj, "untyped_storage"):  # torch.Tensor
        storage = obj.untyped_storage()
        key = storage.data_ptr()
        view = (key, obj.storage_offset(), tuple(obj.shape), obj.stride(), obj.element_size())
        if view in views:
            return 0
        views.add(view)
        counted = per_storage.get(key, 0)
        total = min(counted + obj.numel() * obj.element_size(), storage.nbytes())
        per_storage[key] = total
        return total - counted
    if hasattr(obj, "nbytes") and hasattr(obj, "dtype"):  # numpy array
        return int(obj.nbytes)
    if isinstance(obj, bytes | bytearray | memoryview):
        return len(obj)
    if isinstance(obj, dict):
        return sum(nbytes_of(v, (views, per_storage)) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(nbytes_of(v, (views, per_storage)) for v in obj)
    return 0


class _ExceptionInfo:
    """A worker's exception in picklable form, re-raised in the consumer with its traceback."""

    def __init__(self, exc: BaseException, where: str):
        self.exc_type = type(exc)
        self.type_name = type(exc).__qualname__
        self.where = where
        self.text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

    def reraise(self):
        msg = f"Caught {self.type_name} in {self.where}.\nOriginal traceback:\n{self.text}"
        try:
            exc = self.exc_type(msg)
        except Exception:
            exc = RuntimeError(msg)
        raise exc

    def __reduce__(self):
        try:  # a class defined inside a function does not pickle: fall back to RuntimeError
            pickle.dumps(self.exc_type)
            exc_type = self.exc_type
        except Exception:
            exc_type = RuntimeError
        return _rebuild_exception_info, (exc_type, self.type_name, self.where, self.text)


def _rebuild_exception_info(exc_type, type_name, where, text):
    info = _ExceptionInfo.__new__(_ExceptionInfo)
    info.exc_type, info.type_name, info.where, info.text = exc_type, type_name, where, text
    return info


def _worker_loop(
    dataset,
    task_q,
    result_q,
    worker_id,
    num_workers,
    iterable,
    is_process,
    parent_pid,
    sharing_strategy,
):
    """Producer main loop: take (seq, index) tasks until a None sentinel."""
    _worker_local.info = WorkerInfo(worker_id, num_workers)
    if is_process:
        from multiprocessing.reduction import ForkingPickler

        import torch
        import torch.multiprocessing  # registers tensor-in-shared-memory pickling

        torch.set_num_threads(1)
        if sharing_strategy:
            torch.multiprocessing.set_sharing_strategy(sharing_strategy)
        torch.zeros(1).share_memory_()  # pay shared-memory set-up now, not on the first item

        def send(msg):  # pickle here so an unpicklable item becomes an error, not a lost item
            try:
                data = ForkingPickler.dumps(msg)
            except Exception as e:
                data = ForkingPickler.dumps(
                    ("error", msg[1], worker_id, _ExceptionInfo(e, f"process worker {worker_id}"))
                )
            result_q.put(bytes(data))
    else:
        send = result_q.put
    where = f"{'process' if is_process else 'thread'} worker {worker_id}"
    it, exhausted = None, False
    while True:
        try:
            task = task_q.get(timeout=1.0)
        except queue.Empty:
            if is_process and os.getppid() != parent_pid:
                break  # the parent died: do not linger
            continue
        if task is None:
            break
        seq, index = task
        t_start = time.monotonic()
        try:
            if iterable:
                if exhausted:
                    raise StopIteration
                if it is None:
                    it = iter(dataset)
                item = next(it)
            else:
                item = dataset[index]
        except StopIteration:
            exhausted = True
            send(("exhausted", seq, worker_id))
            continue
        except Exception as e:
            send(("error", seq, worker_id, _ExceptionInfo(e, f"{where} (index {index})")))
            continue
        send(("item", seq, worker_id, item, nbytes_of(item), t_start, time.monotonic()))
        item = None  # hold no reference while waiting: the consumer's ack must free the item
    if is_process:
        result_q.cancel_join_thread()  # never block exit on results nobody will read


# -- scheduler and receiver (threads in the consumer's process) --------------------


class _Shared:
    """State of one pass shared by the consumer, scheduler and receiver threads.

    The threads hold this object, never the iterator, so dropping the iterator
    lets the garbage collector run its finalizer and shut everything down.
    """

    def __init__(self, cfg: BackpressureConfig, probe: Callable[[], float] | None):
        self.cfg = cfg
        self.credits = ByteCredits(cfg.budget_bytes, cfg.record_timeline)
        self.lock = self.credits.cond  # one lock for the ledger, the controllers and the inbox
        depth_cfg = cfg.depth
        if depth_cfg.initial_depth is None:  # keep every producer busy until measured
            depth_cfg = dataclasses.replace(depth_cfg, initial_depth=cfg.num_workers + 1)
        self.depth = DepthController(depth_cfg)
        self.pressure = None
        if cfg.pressure is not None:
            probe = probe or default_probe(cfg.device, cfg.rss_limit_bytes)
            self.pressure = MemoryPressure(probe, cfg.pressure)
        self.reserved: dict[int, int] = {}  # seq -> bytes of credit it holds
        self.estimator = SizeEstimator(cfg.size_quantile, cfg.size_window)
        self.reservations = ReservationStats()
        self.guessed: dict[int, tuple] = {}  # seq -> (key, hint, excess) while its size is a guess
        self.delivered: set[int] = set()  # seqs handed to the consumer, step not finished
        self.pending: dict[int, tuple] = {}  # seq -> message arrived, not yet delivered
        self.arrived: dict[int, float] = {}  # seq -> when its message arrived
        self.total: int | None = None  # number of tasks, once the sampler is exhausted
        self.exhausted: set[int] = set()  # iterable workers whose shard ended
        self.warm: set[int] = set()  # workers that delivered their first item
        self.scheduler_waiting = False
        self.receiver_error: _ExceptionInfo | None = None
        self.finished: queue.SimpleQueue = queue.SimpleQueue()  # acked steps, for the reclaimer

    def return_credit(self, seq: int) -> None:
        """Give back the credit ``seq`` holds, if any (lock held)."""
        nbytes = self.reserved.pop(seq, None)
        if nbytes is not None:
            self.credits.release(nbytes)

    def refresh_budget(self) -> None:
        """Apply the memory-pressure thermostat to the budget (lock held)."""
        if self.pressure is not None:
            budget = max(1, int(self.cfg.budget_bytes * self.pressure.update()))
            if budget != self.credits.budget:
                self.credits.set_budget(budget)

    def position(self, seq: int) -> int:
        """Steps until ``seq`` is needed: 1 + reserved items before it not yet delivered."""
        return 1 + sum(1 for s in self.reserved if s < seq and s not in self.delivered)

    def undelivered(self) -> int:
        """Items holding credit that the consumer has not received yet."""
        return len(self.reserved) - len(self.delivered)

    def reservation(self, exact: int | None, key, hint) -> tuple[int, int]:
        """(bytes to reserve, plausible excess over it) for the next item (lock held)."""
        if exact is not None:
            return exact, 0
        if self.cfg.item_bytes_hint:
            return int(self.cfg.item_bytes_hint), 0
        est = self.estimator.estimate(key, hint)
        if est is None:  # nothing seen yet: the first item travels alone
            return max(1, self.credits.budget), 0
        upper = est.upper if self.cfg.max_item_bytes is None else self.cfg.max_item_bytes
        return est.reserve, max(0, upper - est.reserve)

    def headroom(self, excess: int) -> int:
        """Credit kept free: the largest excesses possible among the guessed items not yet
        arrived and the next one, as many as ``size_headroom_items`` (lock held)."""
        k = self.cfg.size_headroom_items
        if k <= 0:
            return 0
        return sum(heapq.nlargest(k, [excess, *(g[2] for g in self.guessed.values())]))

    def file(self, msg) -> None:
        """Record an arrived message (lock held)."""
        kind = msg[0]
        if kind == "end":
            self.total = msg[1]
            return
        seq = msg[1]
        if kind == "item":
            _, _, worker, _, nbytes, t_start, t_ready = msg
            reserved = self.reserved.get(seq, nbytes)
            guess = self.guessed.pop(seq, None)
            if guess is not None:
                key, hint, _ = guess
                self.reservations.record(reserved, nbytes)
                self.estimator.observe(nbytes, key, hint)
            self.credits.adjust(reserved, nbytes)
            self.reserved[seq] = nbytes
            if worker in self.warm:
                # W in Little's law: from production start until the item is here
                # (for processes this includes the transfer through shared memory)
                self.depth.observe_latency(nbytes, max(t_ready, time.monotonic()) - t_start)
            self.warm.add(worker)  # a worker's first item pays its start-up: not a sample
        else:  # an error or an ended shard: no item, no size to learn
            self.guessed.pop(seq, None)
            if kind == "exhausted":
                self.exhausted.add(msg[2])
        self.pending[seq] = msg  # errors too: they are raised when their turn comes
        self.arrived[seq] = time.monotonic()


def _tasks(sampler, iterable: bool, num_workers: int, shared: _Shared):
    """Yield (worker or None, index) in dispatch order."""
    if not iterable:
        for index in sampler:
            yield None, index
        return
    w = 0
    while True:  # round-robin over the workers whose shard has not ended
        with shared.lock:
            live = [i for i in range(num_workers) if i not in shared.exhausted]
        if not live:
            return
        w = next((i for i in live if i >= w), live[0])
        yield w, None
        w += 1


def _schedule(shared: _Shared, sampler, iterable, size_info, task_qs, num_workers):
    """Scheduler thread: reserve credit in sampler order, release each task just in time.

    Little's law gives each item a depth D(size): it must be handed to a worker
    once it is at most D items from the consumer. Credit is *reserved* in order
    (so the next item is never starved by later ones), as soon as the item, or a
    later one within the look-ahead, needs it; a reserved task is *released* to
    the workers only when its own position is within its D. A large, slow item
    therefore starts early while the small ones before it start just in time,
    and memory is reserved before it is allocated.
    """
    cfg, credits, depth = shared.cfg, shared.credits, shared.depth
    tasks = _tasks(sampler, iterable, num_workers, shared)
    ahead: deque = deque()  # (worker, index, (exact size or None, key, hint)): peeked
    held: dict[int, tuple] = {}  # seq -> (worker, index, size for depth): reserved, not released
    seq, sampler_done, failure = 0, False, None
    try:
        while True:
            while not sampler_done and len(ahead) < cfg.depth.max_depth:  # look ahead
                try:
                    worker, index = next(tasks)
                    info = size_info(index)
                except StopIteration:
                    sampler_done = True
                    break
                except Exception as e:  # raised to the consumer after the items before it
                    failure = _ExceptionInfo(e, "the sampler or a size function (scheduler thread)")
                    sampler_done = True
                    break
                ahead.append((worker, index, info))
            with shared.lock:
                if credits.closed:
                    return
                shared.refresh_budget()
                progressed = False
                if ahead:  # reserve the next item if it, or one after it, needs to start
                    plans = [shared.reservation(*info) for _, _, info in ahead]
                    # an estimated item may be as large as its upper bound: it is
                    # started as early as the largest item it could be would need
                    sizes = [nbytes + excess for nbytes, excess in plans]
                    needed = max(depth.depth_for(b) - t for t, b in enumerate(sizes))
                    # depth counts the items not yet delivered, plus the one in the step
                    within = credits.count == 0 or shared.undelivered() + 1 < needed
                    nbytes, excess = plans[0]
                    if within and credits.fits(nbytes + shared.headroom(excess)):
                        worker, index, (exact, key, hint) = ahead.popleft()
                        credits.grant(nbytes)
                        shared.reserved[seq] = nbytes
                        if exact is None:
                            shared.guessed[seq] = (key, hint, excess)
                        held[seq] = (worker, index, sizes[0])
                        seq += 1
                        progressed = True
                for s in sorted(held):  # release the reserved tasks whose time has come
                    worker, index, nbytes = held[s]
                    if shared.position(s) <= depth.depth_for(nbytes):
                        task_qs[worker or 0].put((s, index))
                        del held[s]
                        progressed = True
                if sampler_done and not ahead and not held:
                    msg = ("end", seq) if failure is None else ("error", seq, -1, failure)
                    break
                if not progressed:
                    t_wait = time.monotonic()
                    shared.scheduler_waiting = bool(ahead)
                    shared.lock.wait(cfg.poll_s)  # woken by acks, arrivals and budget changes
                    shared.scheduler_waiting = False
                    if ahead:
                        credits.blocked_s += time.monotonic() - t_wait
    except Exception as e:  # a bug in the scheduler itself: fail loudly, in place
        msg = ("error", seq, -1, _ExceptionInfo(e, "the scheduler thread"))
        for s in sorted(held):  # the items already reserved are still delivered
            worker, index, _ = held.pop(s)
            task_qs[worker or 0].put((s, index))
    with shared.lock:
        shared.file(msg)
        shared.lock.notify_all()


def _receive(shared: _Shared, result_q, poll_s: float):
    """Receiver thread: move results off the workers' queue as soon as they arrive.

    Unpickling (for processes: mapping the shared memory) happens here, off the
    consumer's critical path, and the latency EWMAs stay current.
    """
    while not shared.credits.closed:
        try:
            msg = result_q.get(timeout=poll_s)
            if isinstance(msg, bytes):
                msg = pickle.loads(msg)
        except queue.Empty:
            continue
        except Exception as e:  # a broken queue or an item that does not unpickle
            with shared.lock:
                shared.receiver_error = _ExceptionInfo(e, "the receiver thread")
                shared.lock.notify_all()
            return
        with shared.lock:
            shared.file(msg)
            shared.lock.notify_all()
        msg = None  # likewise: no reference to the last item while waiting


_STOP = object()  # tells the reclaimer thread to exit


def _reclaim(shared: _Shared):
    """Reclaimer thread: return the credit of finished steps, freeing each batch first.

    A job is (seq, step seconds, batch). Dropping ``batch`` here drops the
    loader's last reference to it; if the consumer has dropped its own, this is
    where its memory (for processes, a shared-memory mapping) is released.
    """
    while True:
        job = shared.finished.get()
        if job is _STOP:
            return
        seq, step_s, _batch = job
        job = _batch = None  # noqa: F841 - free the batch before its credit returns
        with shared.lock:
            shared.depth.observe_step(step_s)
            shared.delivered.discard(seq)
            shared.return_credit(seq)


# -- stats --------------------------------------------------------------------------


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class _Record:
    """What the consumer side saw; kept apart so stats outlive the iterator."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.items = self.bytes = 0
        self.latencies: list[float] = []  # next() wait, first batch excluded
        self.stall_s = 0.0
        self.t_first: float | None = None
        self.t_last = t0
        self.depth_timeline: list[tuple[float, int, int]] = []  # (t, depth, item k)

    def delivered(self, t_call: float, now: float, nbytes: int, depth: int) -> None:
        if self.t_first is None:
            self.t_first = now
        else:
            self.latencies.append(now - t_call)
            self.stall_s += now - t_call
        self.depth_timeline.append((now - self.t0, depth, self.items))
        self.items += 1
        self.bytes += nbytes
        self.t_last = now


def _stats(shared: _Shared, rec: _Record) -> LoaderStats:
    c = shared.credits
    elapsed = max(rec.t_last - rec.t0, 1e-9)
    first = rec.t_first
    since_first = max(rec.t_last - first, 1e-9) if first else float("nan")
    with c.cond:
        balanced = c.granted_total == c.returned_total + c.in_flight
        timeline = [(t - rec.t0, b, n, bud) for t, b, n, bud in c.timeline]
        blocked, peak, violations, over = c.blocked_s, c.peak, c.violations, c.over_max
        reservations = dataclasses.replace(shared.reservations)
    return LoaderStats(
        items=rec.items,
        bytes=rec.bytes,
        elapsed_s=elapsed,
        throughput_items_per_s=rec.items / elapsed,
        throughput_bytes_per_s=rec.bytes / elapsed,
        stall_fraction=rec.stall_s / since_first if first else float("nan"),
        next_p50_s=_percentile(rec.latencies, 0.50),
        next_p99_s=_percentile(rec.latencies, 0.99),
        time_to_first_batch_s=(first - rec.t0) if first else float("nan"),
        producer_blocked_s=blocked,
        peak_in_flight_bytes=peak,
        violations=violations,
        over_budget_max_bytes=over,
        reservations=reservations,
        credit_balanced=balanced,
        timeline=timeline,
        depth_timeline=list(rec.depth_timeline),
    )


@dataclass
class LoaderStats:
    items: int  # items delivered
    bytes: int  # bytes delivered
    elapsed_s: float  # from iterator creation to the last delivery (or close)
    throughput_items_per_s: float  # items / elapsed_s
    throughput_bytes_per_s: float
    stall_fraction: float  # time inside next() after the first batch / time since the first batch
    next_p50_s: float  # next() latency percentiles (first batch excluded)
    next_p99_s: float
    time_to_first_batch_s: float
    producer_blocked_s: float  # time the scheduler held the next item back (credit or depth)
    peak_in_flight_bytes: int  # largest credit ledger value
    violations: int  # grants or true-ups that left in-flight bytes above the budget
    over_budget_max_bytes: int  # the most the ledger ever exceeded the budget by
    reservations: ReservationStats  # estimated reservations against the sizes that came
    credit_balanced: bool  # granted == returned + still in flight
    timeline: list  # (t, in_flight_bytes, in_flight_items, budget_bytes), t from creation
    depth_timeline: list  # (t, depth target, item index) at every delivered item


# -- the loader ---------------------------------------------------------------------


def _is_iterable_dataset(dataset) -> bool:
    from torch.utils.data import IterableDataset

    if isinstance(dataset, IterableDataset):
        return True
    return hasattr(dataset, "__iter__") and not hasattr(dataset, "__getitem__")


class BackpressureLoader:
    """Iterable over a dataset with byte-budgeted, credit-based backpressure.

    ``dataset``: map-style (``__getitem__`` + ``__len__``) or iterable (``__iter__``).
    ``sampler``: indices to load, in order (default ``range(len(dataset))``).
    ``size_fn(index) -> bytes``: exact item size before it is produced (default
    ``dataset.item_nbytes`` if it exists); without it sizes are estimated, from
    ``dataset.item_size_hint(index)`` and ``dataset.item_size_key(index)`` where
    the dataset has them (see :mod:`~experiments.backpressure.sizes`). ``pressure_probe() -> fraction``: memory
    use, overriding the default CUDA/CPU probe. Keyword ``overrides`` set fields of
    :class:`BackpressureConfig`.
    """

    def __init__(
        self,
        dataset,
        config: BackpressureConfig | None = None,
        *,
        sampler: Iterable | None = None,
        size_fn: Callable[[object], int] | None = None,
        pressure_probe: Callable[[], float] | None = None,
        **overrides,
    ):
        cfg = config or BackpressureConfig()
        if overrides:
            cfg = BackpressureConfig(**{**cfg.__dict__, **overrides})
        if cfg.workers not in ("thread", "process"):
            raise ValueError("workers must be 'thread' or 'process'")
        if cfg.num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if cfg.max_item_bytes is None and getattr(dataset, "max_item_nbytes", None):
            cfg = dataclasses.replace(cfg, max_item_bytes=int(dataset.max_item_nbytes))
        self.dataset, self.config = dataset, cfg
        self.iterable = _is_iterable_dataset(dataset)
        self.sampler = sampler
        self.size_fn = size_fn or getattr(dataset, "item_nbytes", None)
        self.hint_fn = getattr(dataset, "item_size_hint", None)
        self.key_fn = getattr(dataset, "item_size_key", None)
        self.pressure_probe = pressure_probe
        self._last: weakref.ref | None = None
        self._last_stats: Callable[[], LoaderStats] | None = None

    def size_info(self, index) -> tuple:
        """(exact size or None, key, hint) of item ``index``, as far as they are known."""
        if index is None:  # iterable datasets: nothing is known before production
            return None, None, None
        exact = self.size_fn(index) if self.size_fn is not None else None
        key = self.key_fn(index) if self.key_fn is not None else None
        hint = self.hint_fn(index) if self.hint_fn is not None else None
        return exact, key, hint

    def __len__(self) -> int:
        if self.sampler is not None and hasattr(self.sampler, "__len__"):
            return len(self.sampler)
        return len(self.dataset)

    def __iter__(self) -> BackpressureIterator:
        self.close()  # one live pass per loader
        it = BackpressureIterator(self)
        self._last = weakref.ref(it)
        self._last_stats = functools.partial(_stats, it.shared, it.record)  # no reference to `it`
        return it

    def stats(self) -> LoaderStats | None:
        """Stats of the latest pass (also after it was closed)."""
        return self._last_stats() if self._last_stats else None

    def close(self) -> None:
        it = self._last() if self._last else None
        if it is not None:
            it.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class BackpressureIterator(Iterator):
    """One pass over the loader. ``close()`` (or garbage collection) stops the workers."""

    def __init__(self, loader: BackpressureLoader):
        cfg = self.cfg = loader.config
        self._closed = False
        self.t0 = time.monotonic()
        self.shared = sh = _Shared(cfg, loader.pressure_probe)
        if loader.sampler is not None:
            sampler = loader.sampler
        else:
            sampler = None if loader.iterable else range(len(loader.dataset))
        n = cfg.num_workers
        self._is_process = cfg.workers == "process"
        if self._is_process:
            import torch.multiprocessing as tmp

            ctx = tmp.get_context(cfg.mp_context)
            make_q, make_worker = ctx.Queue, ctx.Process
        else:
            make_q, make_worker = queue.Queue, threading.Thread
        self._result_q = make_q()
        # Map-style: one shared task queue (a free worker takes the next task).
        # Iterable: one queue per worker, each producing from its own shard.
        self._task_qs = [make_q() for _ in range(n if loader.iterable else 1)]
        self._workers = []
        for w in range(n):
            tq = self._task_qs[w if loader.iterable else 0]
            args = (
                loader.dataset,
                tq,
                self._result_q,
                w,
                n,
                loader.iterable,
                self._is_process,
                os.getpid(),
                cfg.sharing_strategy,
            )
            worker = make_worker(target=_worker_loop, args=args, daemon=True, name=f"bp-worker-{w}")
            worker.start()  # processes fork before this pass starts any thread of its own
            self._workers.append(worker)
        self._receiver = threading.Thread(
            target=_receive, args=(sh, self._result_q, cfg.poll_s), daemon=True, name="bp-receiver"
        )
        self._scheduler = threading.Thread(
            target=_schedule,
            args=(sh, sampler, loader.iterable, loader.size_info, self._task_qs, n),
            daemon=True,
            name="bp-scheduler",
        )
        self._reclaimer = threading.Thread(
            target=_reclaim, args=(sh,), daemon=True, name="bp-reclaimer"
        )
        self._receiver.start()
        self._scheduler.start()
        self._reclaimer.start()
        # consumer-side state
        self._next_seq = 0  # in order: the seq to deliver next
        self._delivered: deque = deque()  # (seq, t_delivered, batch) awaiting ack
        self.record = _Record(self.t0)
        # The finalizer holds no reference to self: garbage collection shuts the pass down.
        self._finalizer = weakref.finalize(
            self,
            _shutdown,
            sh,
            [self._scheduler, self._receiver, self._reclaimer],
            self._workers,
            self._task_qs,
            self._result_q,
            self._is_process,
            cfg.shutdown_timeout_s,
        )

    # -- consumer API -------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self):
        return self._next(auto_ack=self.cfg.auto_ack)

    def _next(self, auto_ack: bool):
        t_call = time.monotonic()
        if auto_ack:
            self.ack(len(self._delivered))  # calling next() means the previous step is done
        if self._closed:
            raise StopIteration
        try:
            seq, msg = self._take()
        except BaseException:  # end of data, a worker's error, or KeyboardInterrupt
            self.close()
            raise
        item, nbytes = msg[3], msg[4]
        now = time.monotonic()
        with self.shared.lock:
            self.shared.delivered.add(seq)
            # A stall is waiting for an item not yet produced; the first wait is start-up.
            late = self.shared.arrived.pop(seq, now) - t_call
            if self.record.t_first is not None:
                self.shared.depth.observe_wait(max(0.0, late))
        self._delivered.append((seq, now, item))
        self.record.delivered(t_call, now, nbytes, self.shared.depth.depth)
        return item

    def ack(self, n: int = 1) -> None:
        """Finish the ``n`` oldest delivered batches: their credit returns to the producers."""
        now = time.monotonic()
        for _ in range(min(n, len(self._delivered))):
            seq, t_delivered, batch = self._delivered.popleft()
            self.shared.finished.put((seq, now - t_delivered, batch))  # the reclaimer returns it

    @contextlib.contextmanager
    def step(self):
        """``with it.step() as batch:`` the batch's credit returns when the block exits."""
        batch = self._next(auto_ack=False)
        try:
            yield batch
        finally:
            self.ack()

    # -- receiving ----------------------------------------------------------------
    def _take(self) -> tuple[int, tuple]:
        """The next item message, in order (or as arrived); raises worker errors."""
        sh = self.shared
        held_since = None
        with sh.lock:
            while True:
                if sh.receiver_error is not None:
                    sh.receiver_error.reraise()
                found = self._pop_ready()
                if found is not None:
                    seq, msg = found
                    if msg[0] == "item":
                        return seq, msg
                    sh.return_credit(seq)  # an error or an ended shard: no item
                    sh.arrived.pop(seq, None)
                    if msg[0] == "error":
                        msg[3].reraise()
                    continue
                if sh.total is not None and self._next_seq >= sh.total and not sh.pending:
                    raise StopIteration
                sh.lock.wait(self.cfg.poll_s)
                self._check_alive()
                held_since = self._check_held(held_since)

    def _pop_ready(self):
        pending = self.shared.pending
        if self.cfg.in_order:
            seq = self._next_seq
            if seq not in pending:
                return None
        elif pending:
            seq = next(iter(pending))  # the earliest arrival
        else:
            return None
        self._next_seq += 1
        return seq, pending.pop(seq)

    def _check_alive(self) -> None:
        if self._is_process:
            dead = [w for w in self._workers if not w.is_alive()]
            if dead:
                codes = ", ".join(f"{w.name}: exit code {w.exitcode}" for w in dead)
                raise RuntimeError(f"backpressure worker process exited unexpectedly ({codes})")

    def _check_held(self, since: float | None) -> float | None:
        """Raise if batches the consumer has not acked hold all the credit (a self-deadlock)."""
        sh = self.shared
        stuck = (
            sh.scheduler_waiting
            and self._delivered
            and sh.credits.count == len(self._delivered)
            and not sh.pending
        )
        if not stuck:
            return None
        now = time.monotonic()
        if since is None:
            return now
        if now - since > self.cfg.hold_deadlock_s:
            raise RuntimeError(
                f"{len(self._delivered)} unacknowledged batches hold all the credit; "
                "call ack() (or use `with it.step()`) when a step finishes"
            )
        return since

    # -- lifecycle ----------------------------------------------------------------
    def close(self) -> None:
        """Stop the scheduler, receiver and workers; return all credit. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.record.t_first is None:
            self.record.t_last = time.monotonic()
        self._delivered.clear()  # their credit is returned by the shutdown
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def workers(self) -> list:
        return list(self._workers)

    def stats(self) -> LoaderStats:
        return _stats(self.shared, self.record)


def _shutdown(shared, threads, workers, task_qs, result_q, is_process, timeout_s):
    """Stop everything (from close(), or from the finalizer when the iterator is collected)."""
    shared.credits.close()  # wakes the scheduler; the receiver sees it at its next poll
    shared.finished.put(_STOP)  # the reclaimer returns what is queued before it, then exits
    for t in threads:
        t.join(timeout_s)
    for q in task_qs:
        for _ in workers:
            q.put(None)
    deadline = time.monotonic() + timeout_s
    for w in workers:
        while w.is_alive() and time.monotonic() < deadline:
            w.join(0.05)
            if is_process:  # keep the pipe drained so no worker blocks on a full pipe
                with contextlib.suppress(Exception):
                    while True:
                        result_q.get_nowait()
        if w.is_alive():
            if is_process:
                w.terminate()
                w.join(1.0)
            else:
                warnings.warn(
                    f"{w.name} did not stop within {timeout_s}s", RuntimeWarning, stacklevel=2
                )
    if is_process:
        for q in [*task_qs, result_q]:
            q.cancel_join_thread()
            q.close()
    with shared.lock:  # return every outstanding credit so the ledger balances
        for seq in list(shared.reserved):
            shared.return_credit(seq)
        shared.pending.clear()
        shared.arrived.clear()
        shared.delivered.clear()
