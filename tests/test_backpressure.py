"""Tests of the backpressure loader (experiments/backpressure).

Every test runs under a SIGALRM deadline (the deadlock guard) and is checked for
leaked loader threads and worker processes afterwards. Producer/consumer costs are
tiny sleeps, so the invariants hold regardless of machine speed.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import signal
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.backpressure import (
    MB,
    BackpressureLoader,
    DepthConfig,
    DepthController,
    MemoryPressure,
    PressureConfig,
    accumulate_gradients,
    cpu_probe,
    default_probe,
    get_worker_info,
    train_step,
)
from experiments.backpressure.measure import (
    measured_steps,
    peak_in_flight,
    peak_in_flight_reference,
    run_backpressure,
    settling,
)
from experiments.backpressure.oracle import oracle_schedule
from experiments.backpressure.workloads import SyntheticDataset, make_workload
from tests.support import assert_figures_shown_and_stored_once

REPO = Path(__file__).resolve().parents[1]
KB = 2**10
DEADLINES = {"test_notebook_quick_run_records_metrics": 170}  # seconds; others get 30


def _bp_threads():
    return [t for t in threading.enumerate() if t.name.startswith("bp-") and t.is_alive()]


@pytest.fixture(autouse=True)
def deadlock_guard(request):
    """Fail (instead of hanging CI) if a test runs past its deadline; then check for leaks."""
    seconds = DEADLINES.get(request.node.originalname, 30)

    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded its {seconds}s deadline: deadlock?")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    gc.collect()
    deadline = time.monotonic() + 5
    while (_bp_threads() or multiprocessing.active_children()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _bp_threads(), f"leaked loader threads: {_bp_threads()}"
    assert not multiprocessing.active_children(), "leaked worker processes"


def _random_dataset(n=60, seed=0, lo=4 * KB, hi=64 * KB, produce_s=0.0, known_sizes=True, **kw):
    """Random sizes, told to the loader in advance unless ``known_sizes=False``."""
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(lo, hi, n)]
    if produce_s == "random":
        produce_s = [float(x) for x in rng.uniform(0, 0.004, n)]
    return SyntheticDataset(sizes, produce_s, known_sizes=known_sizes, **kw)


def _consume(iterable, step_s=0.0):
    out = []
    for item in iterable:
        out.append(int(item["index"]))
        if step_s:
            time.sleep(step_s)
    return out


# -- invariants ------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["thread", "process"])
def test_budget_never_exceeded_and_credit_balances(workers):
    ds = _random_dataset(n=80, produce_s="random")
    budget = 160 * KB  # a few items at a time
    loader = BackpressureLoader(ds, budget_bytes=budget, num_workers=3, workers=workers)
    assert _consume(loader, step_s=0.001) == list(range(80))  # sampler order
    st = loader.stats()
    assert st.items == 80 and st.bytes == sum(ds.sizes)
    assert st.violations == 0
    assert st.peak_in_flight_bytes <= budget
    assert st.credit_balanced
    for _, nbytes, count, bud in st.timeline:  # every ledger event, not only the peak
        assert nbytes <= bud or count == 1
    assert st.timeline[-1][1] == 0 and st.timeline[-1][2] == 0  # all credit returned


def test_item_larger_than_budget_travels_alone():
    sizes = [8 * KB] * 10
    sizes[4] = 100 * KB  # bigger than the whole budget
    ds = SyntheticDataset(sizes, known_sizes=True)
    loader = BackpressureLoader(ds, budget_bytes=32 * KB, num_workers=2)
    assert _consume(loader) == list(range(10))
    st = loader.stats()
    assert st.violations == 0 and st.credit_balanced
    over = [(b, c) for _, b, c, bud in st.timeline if b > bud]
    assert over and all(c == 1 for _, c in over)  # it was in flight alone


def test_sampler_order_and_unordered_delivery():
    ds = _random_dataset(n=40, produce_s="random")
    order = list(range(39, -1, -2))  # a custom sampler
    assert _consume(BackpressureLoader(ds, sampler=order, num_workers=3)) == order
    loader = BackpressureLoader(ds, num_workers=3, in_order=False, budget_bytes=256 * KB)
    got = _consume(loader)
    assert sorted(got) == list(range(40))
    assert loader.stats().violations == 0


def test_size_unknown_is_estimated_and_accounted():
    ds = SyntheticDataset([16 * KB] * 20)  # sizes not offered: the loader estimates them
    loader = BackpressureLoader(ds, budget_bytes=64 * KB, num_workers=2)
    assert _consume(loader) == list(range(20))
    st = loader.stats()
    assert st.credit_balanced and st.violations == 0  # every estimate is exact here
    assert st.peak_in_flight_bytes <= 64 * KB
    assert st.reservations.estimated == 20 and st.reservations.short == 0


def test_rows_of_a_dataset_tensor_cost_a_row_not_the_whole_tensor():
    from torch.utils.data import TensorDataset

    from experiments.backpressure import nbytes_of

    data = torch.zeros(100, 1000)
    row = data[3]
    assert nbytes_of(row) == 4000
    assert nbytes_of((row, data[4], row)) == 8000  # the same view twice counts once
    assert nbytes_of((data, data[1])) == data.untyped_storage().nbytes()  # capped
    ds = TensorDataset(data, torch.arange(100))
    loader = BackpressureLoader(ds, budget_bytes=200 * KB, num_workers=2)
    assert [int(i) for _, i in loader] == list(range(100))
    st = loader.stats()
    assert st.reservations.short_max_bytes <= 4008 and st.over_budget_max_bytes == 0


def _one_surprise(headroom_items):
    """Twelve 8 KB items, then a 48 KB one nobody announced, then more small ones."""
    sizes = [8 * KB] * 40
    sizes[12] = 48 * KB
    ds = SyntheticDataset(sizes, produce_s=0.004)
    ds.max_item_nbytes = 48 * KB  # the dataset declares a bound, not the sizes
    loader = BackpressureLoader(
        ds, budget_bytes=60 * KB, num_workers=4, size_headroom_items=headroom_items
    )
    assert _consume(loader, step_s=0.001) == list(range(40))
    return loader.stats()


def test_headroom_absorbs_an_item_larger_than_its_estimate():
    st = _one_surprise(headroom_items=1)
    r = st.reservations
    assert r.short == 1 and r.short_max_bytes == 40 * KB  # reserved 8 KB, came as 48 KB
    assert st.violations == 0 and st.over_budget_max_bytes == 0  # the headroom held it
    assert st.credit_balanced


def test_without_headroom_a_surprise_goes_over_and_is_counted():
    st = _one_surprise(headroom_items=0)
    assert st.reservations.short == 1
    assert st.violations >= 1 and 0 < st.over_budget_max_bytes <= 40 * KB
    assert st.credit_balanced


class ShardedStream(torch.utils.data.IterableDataset):
    """Yields the integers below n, sharded over the loader's workers."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        info = get_worker_info()
        for i in range(info.id, self.n, info.num_workers):
            yield {
                "index": i,
                "data": torch.zeros(1024, dtype=torch.uint8),
                "t_start": time.monotonic(),
            }


@pytest.mark.parametrize("workers", ["thread", "process"])
def test_iterable_dataset(workers):
    loader = BackpressureLoader(
        ShardedStream(25), budget_bytes=8 * KB, num_workers=3, workers=workers
    )
    got = _consume(loader)
    assert sorted(got) == list(range(25))
    assert got == sorted(got)  # round-robin over in-order shards restores the order
    assert loader.stats().credit_balanced


# -- credit returns when the step finishes --------------------------------------------


def test_credit_returns_on_ack_not_on_dequeue():
    ds = SyntheticDataset([10 * KB] * 6)
    loader = BackpressureLoader(ds, budget_bytes=20 * KB, num_workers=2, auto_ack=False)
    it = iter(loader)
    credits = it.shared.credits
    with it.step() as batch:
        assert batch["index"] == 0
        time.sleep(0.05)
        with credits.cond:
            assert credits.in_flight == 20 * KB  # the batch in use still holds credit
    rest = []
    for _ in range(5):
        with it.step() as batch:
            rest.append(int(batch["index"]))
    assert rest == [1, 2, 3, 4, 5]
    with pytest.raises(StopIteration):
        next(it)
    assert loader.stats().credit_balanced


@pytest.mark.parametrize("workers", ["thread", "process"])
def test_credit_returns_off_the_consumer_thread_after_the_batch_is_freed(workers):
    ds = SyntheticDataset([10 * KB] * 4)
    loader = BackpressureLoader(ds, budget_bytes=40 * KB, num_workers=2, workers=workers)
    it = iter(loader)
    credits = it.shared.credits
    seen = []  # (thread name, batch still alive) at every credit release
    release = credits.release

    def spy(nbytes):
        seen.append((threading.current_thread().name, alive() is not None))
        release(nbytes)

    credits.release = spy
    batch = next(it)
    alive = weakref.ref(batch["data"])
    del batch  # the consumer drops its reference when the step ends
    rest = [int(b["index"]) for b in it]
    assert rest == [1, 2, 3]
    first = seen[0]
    assert first == ("bp-reclaimer", False), seen
    assert loader.stats().credit_balanced


def test_holding_several_batches_is_limited_by_bytes_not_depth():
    ds = SyntheticDataset([10 * KB] * 12)
    loader = BackpressureLoader(ds, budget_bytes=100 * KB, num_workers=2, auto_ack=False)
    it = iter(loader)
    held = [next(it) for _ in range(6)]  # more batches than the depth target, within budget
    assert [int(b["index"]) for b in held] == list(range(6))
    it.ack(6)
    rest = [int(next(it)["index"]) for _ in range(6)]
    assert rest == list(range(6, 12))
    it.close()
    assert loader.stats().violations == 0 and loader.stats().credit_balanced


def test_unacked_batches_holding_all_credit_raise_instead_of_hanging():
    ds = SyntheticDataset([10 * KB] * 6)
    loader = BackpressureLoader(
        ds, budget_bytes=20 * KB, num_workers=2, auto_ack=False, hold_deadlock_s=0.3
    )
    it = iter(loader)
    next(it), next(it)  # two batches, never acked: all the credit is held
    with pytest.raises(RuntimeError, match="unacknowledged"):
        next(it)
    assert it.closed


# -- errors and shutdown ---------------------------------------------------------------


@pytest.mark.parametrize("workers", ["thread", "process"])
def test_worker_exception_reaches_consumer_with_traceback(workers):
    ds = _random_dataset(n=20, fail_at={7})
    loader = BackpressureLoader(ds, num_workers=2, workers=workers)
    got = []
    with pytest.raises(ValueError) as info:
        for item in loader:
            got.append(int(item["index"]))
    assert got == list(range(7))  # every item before the failing one was delivered
    msg = str(info.value)
    assert "synthetic failure producing item 7" in msg
    assert "Traceback" in msg and "__getitem__" in msg and "worker" in msg


def test_sampler_exception_is_raised_in_place():
    def sampler():
        yield from range(5)
        raise KeyError("sampler broke")

    loader = BackpressureLoader(_random_dataset(n=10), sampler=sampler(), num_workers=2)
    got = []
    with pytest.raises(KeyError, match="sampler broke"):
        for item in loader:
            got.append(int(item["index"]))
    assert got == list(range(5))


@pytest.mark.parametrize("workers", ["thread", "process"])
def test_close_and_garbage_collection_stop_workers(workers):
    ds = _random_dataset(n=200, produce_s=0.002)
    loader = BackpressureLoader(ds, num_workers=2, workers=workers, budget_bytes=128 * KB)
    it = iter(loader)
    next(it), next(it)
    workers_ = it.workers
    it.close()
    assert not any(w.is_alive() for w in workers_)
    assert it.shared.credits.in_flight == 0 and loader.stats().credit_balanced

    it = iter(loader)
    next(it)
    workers_ = it.workers
    del it  # no close(): the finalizer runs on collection
    gc.collect()
    deadline = time.monotonic() + 10
    while any(w.is_alive() for w in workers_) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(w.is_alive() for w in workers_)


def test_early_exit_from_loop_does_not_deadlock():
    ds = _random_dataset(n=500, produce_s=0.001)
    loader = BackpressureLoader(ds, num_workers=3, budget_bytes=100 * KB)
    for item in loader:  # producers are blocked on credit when the loop is left
        if item["index"] == 3:
            break
    loader.close()
    assert not _bp_threads()
    with BackpressureLoader(ds, num_workers=2) as loader2:  # context manager form
        assert int(next(iter(loader2))["index"]) == 0


# -- control loops ---------------------------------------------------------------------


def test_depth_follows_littles_law_and_settles():
    ctl = DepthController(DepthConfig(alpha=0.2, k_dev=2.0))
    rng = np.random.default_rng(0)
    depths = []
    for k in range(200):
        step = 0.010 if k < 100 else 0.050  # the consumer slows 5x
        ctl.observe_step(step * (1 + 0.05 * rng.standard_normal()))
        ctl.observe_latency(1 * MB, 0.030 * (1 + 0.05 * rng.standard_normal()))
        depths.append(ctl.depth)
    # Little's law: 30 ms latency / 10 ms steps = 3 in production + 1 in use (+ margin)
    assert depths[99] == 5
    assert depths[-1] == 2  # 30 / 50 + 1 (+ margin) -> 2
    after = depths[100:]
    settle = next(i for i in range(len(after)) if all(d == after[-1] for d in after[i:]))
    assert settle <= 50
    assert len(set(after[settle:])) == 1  # no oscillation once settled
    # a larger item gets a larger depth (it must start earlier)
    assert ctl.depth_for(8 * MB) > ctl.depth_for(1 * MB)


def test_memory_pressure_hysteresis():
    readings = iter([0.5, 0.95, 0.95, 0.85, 0.85, 0.7, 0.7, 0.85])
    cfg = PressureConfig(high=0.9, low=0.8, shrink=0.5, grow=2.0, interval_s=0.0)
    mp = MemoryPressure(lambda: next(readings), cfg)
    scales, micro = [], []
    for i in range(8):
        scales.append(mp.update(now=float(i)))
        micro.append(mp.micro_batches())
    assert scales == [1.0, 0.5, 0.25, 0.25, 0.25, 0.5, 1.0, 1.0]
    # above high: shrink; between the watermarks: hold (hysteresis); below low: recover
    assert micro == [1, 2, 4, 4, 4, 2, 1, 1]


def test_memory_pressure_shrinks_loader_budget_without_violations():
    use = {"v": 0.5}
    loader = BackpressureLoader(
        _random_dataset(n=60, produce_s=0.001),
        budget_bytes=256 * KB,
        num_workers=2,
        pressure=PressureConfig(high=0.9, low=0.8, interval_s=0.0),
        pressure_probe=lambda: use["v"],
    )
    it = iter(loader)
    for k, _ in enumerate(it):
        if k == 10:
            use["v"] = 0.99  # pressure: the budget halves down to its floor
        if k == 40:
            use["v"] = 0.5
    st = loader.stats()
    budgets = [b for *_, b in st.timeline]
    assert min(budgets) == 256 * KB // 16 and budgets[-1] > min(budgets)
    assert st.violations == 0 and st.credit_balanced


def test_memory_probes_return_fractions():
    use = cpu_probe()()  # host memory in use
    assert 0.0 < use < 1.0
    assert cpu_probe(rss_limit_bytes=2**50)() < 1e-3  # RSS over a huge limit
    assert default_probe("cpu")() == pytest.approx(use, abs=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_probe_reads_mem_get_info():
    x = torch.empty(64 * MB, dtype=torch.uint8, device="cuda")
    free, total = torch.cuda.mem_get_info()
    assert default_probe("cuda")() == pytest.approx(1 - free / total, abs=0.01)
    del x


# -- gradient accumulation -------------------------------------------------------------


def _mlp_and_batch(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    x = torch.randn(22, 16)  # (B, d_in); 22 does not divide evenly
    y = torch.randint(0, 4, (22,))  # (B,)
    return model, (x, y)


def _loss(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)  # mean over the batch


@pytest.mark.parametrize("micro", [1, 2, 3, 7, 22])
def test_accumulated_gradient_equals_full_batch_gradient(micro):
    model, batch = _mlp_and_batch()
    full = torch.autograd.grad(_loss(model, batch), list(model.parameters()))
    model.zero_grad()
    loss = accumulate_gradients(model, _loss, batch, micro_batches=micro)
    torch.testing.assert_close(loss, _loss(model, batch).detach(), atol=1e-6, rtol=1e-5)
    for g_full, p in zip(full, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g_full, atol=1e-6, rtol=1e-5)


def test_train_step_splits_under_pressure_with_same_update():
    readings = iter([0.95, 0.95])
    mp = MemoryPressure(lambda: next(readings), PressureConfig(interval_s=0.0))
    mp.update(now=0.0), mp.update(now=1.0)  # scale 1/4: split into 4 micro-batches
    model_a, batch = _mlp_and_batch()
    model_b, _ = _mlp_and_batch()
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1)
    _, used_a = train_step(model_a, opt_a, _loss, batch)
    _, used_b = train_step(model_b, opt_b, _loss, batch, pressure=mp)
    assert used_a == 1 and used_b == 4
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)


# -- measurement helpers ---------------------------------------------------------------


def test_peak_in_flight_sweep_matches_reference():
    rng = np.random.default_rng(1)
    for _ in range(20):
        starts = rng.uniform(0, 1, 30)
        intervals = [
            (float(s), float(s + rng.uniform(0.01, 0.3)), int(rng.integers(1, 100))) for s in starts
        ]
        assert peak_in_flight(intervals) == peak_in_flight_reference(intervals)


def test_workloads_have_the_stated_shapes():
    wl = make_workload("heavy_tailed", 400)
    sizes = np.array(wl.sizes) / MB
    assert 0.5 <= sizes.min() and sizes.max() <= 8.0
    slow = make_workload("slowdown", 100)
    assert slow.step_s[slow.change_at] == pytest.approx(5 * slow.step_s[0])


def test_backpressure_run_on_a_small_workload():
    wl = make_workload("slowdown", 120, scale=1 / 64, speed=2.0)  # 8-128 KB items
    run = run_backpressure(
        wl, budget_bytes=1 * MB, num_workers=3, workers="thread", known_sizes=True
    )
    assert run.items == 120 and run.violations == 0
    assert run.peak_bytes <= run.ledger_peak_bytes <= 1 * MB
    s = settling(run, wl.change_at)
    assert s["final"] < s["before"]  # a slower consumer needs fewer items in flight


def test_a_real_run_does_not_beat_the_oracle_schedule():
    wl = make_workload("heavy_tailed", 100, scale=1 / 64, speed=2.0)  # 8-128 KB items
    budget = int(1.2 * max(wl.sizes))  # tight: the largest items go nearly alone
    run = run_backpressure(wl, budget, num_workers=3, workers="thread", known_sizes=True)
    steps = measured_steps(wl, run.limit)
    oracle = oracle_schedule(wl.sizes, wl.produce_s, steps, budget, num_workers=3)
    unbounded = oracle_schedule(wl.sizes, wl.produce_s, steps, sum(wl.sizes), num_workers=3)
    assert oracle.throughput < 0.95 * unbounded.throughput  # the budget binds
    assert run.peak_bytes <= budget and oracle.peak_bytes <= budget
    # the oracle knows every time in advance and pays nothing to move an item
    assert run.throughput <= 1.02 * oracle.throughput


# -- the notebook end to end -----------------------------------------------------------


@pytest.mark.slow
def test_notebook_quick_run_records_metrics(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("RESEARCH_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(REPO / "notebooks" / "backpressure_dataloader.ipynb"),
        str(out),
        parameters={"quick": True},
        kernel_name="python3",
        cwd=str(REPO),
        progress_bar=False,
    )
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    metrics = {r["name"]: r["value"] for r in records if r["kind"] == "metric"}
    for name in (
        "budget_violations",
        "throughput_vs_consumer_limit",
        "stall_fraction",
        "peak_in_flight_ratio_vs_dataloader",
        "throughput_vs_best_dataloader",
        "throughput_items_per_s",
        "worst_throughput_vs_oracle",
        "peak_measured_ratio_vs_dataloader",
        "estimated_over_budget_fraction",
        "estimated_under_reserved_fraction",
    ):
        assert name in metrics, name
    assert metrics["budget_violations"] == 0  # exact sizes
    assert metrics["budget_binds"] == 1.0  # quick=true demonstrates backpressure
    assert metrics["depth_after_slowdown"] < metrics["depth_before_slowdown"]
    assert 0 < metrics["estimated_under_reserved_fraction"] < 0.5
    assert 0 < metrics["worst_throughput_vs_oracle"] <= 1.05  # the oracle is the fastest
    artifacts = [r for r in records if r["kind"] == "artifact"]
    assert artifacts and all(os.path.exists(a["path"]) for a in artifacts)
    assert_figures_shown_and_stored_once(out, tmp_path / "run")  # under Agg too


def test_a_jpeg_run_estimates_sizes_and_measures_memory():
    wl = make_workload("jpeg", 40, scale=1 / 16, speed=2.0)
    budget = 2 * max(wl.sizes)
    run = run_backpressure(wl, budget, num_workers=2, workers="thread")
    assert run.items == 40 and run.sizes == "estimated"
    assert 0 <= run.under_reserved < 1 and run.over_budget_bytes >= 0
    assert run.rss_peak_bytes > 0
    known = run_backpressure(wl, budget, num_workers=2, workers="thread", known_sizes=True)
    assert known.violations == 0 and known.over_budget_bytes == 0 and known.under_reserved is None
