"""Tests of the oracle schedule (experiments/backpressure/oracle.py): pure arithmetic, no loader."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from experiments.backpressure.oracle import oracle_budget_for, oracle_schedule


def _fastest_in_order_by_search(sizes, produce, step, budget, workers):
    """Brute force: try every in-order set of integer start times; the earliest last step end."""
    n = len(sizes)
    horizon = sum(produce) + sum(step)
    best = None
    for starts in itertools.combinations_with_replacement(range(horizon + 1), n):
        ready = [s + p for s, p in zip(starts, produce, strict=True)]
        end = []
        for i in range(n):
            got = max(ready[i], end[-1] if end else 0)
            end.append(got + step[i])
        feasible = True
        for i, t in enumerate(starts):
            earlier = [j for j in range(i) if starts[j] <= t < end[j]]
            in_flight = sum(sizes[j] for j in earlier)
            producing = sum(1 for j in range(i) if starts[j] <= t < ready[j])
            if producing >= workers or (earlier and in_flight + sizes[i] > budget):
                feasible = False
                break
        if feasible and (best is None or end[-1] < best):
            best = end[-1]
    return best


def test_two_items_that_do_not_fit_together_run_one_after_the_other():
    o = oracle_schedule([3, 3], [1.0, 1.0], [0.5, 0.5], budget_bytes=5, num_workers=2)
    assert o.start == [0.0, 1.5]  # the second waits for the first step's credit
    assert o.got == [1.0, 2.5] and o.end == [1.5, 3.0]
    assert o.peak_bytes == 3 and o.stall_s == pytest.approx(1.0)
    assert o.throughput == pytest.approx(2 / 2.0)
    both = oracle_schedule([3, 3], [1.0, 1.0], [0.5, 0.5], budget_bytes=6, num_workers=2)
    assert both.start == [0.0, 0.0] and both.end == [1.5, 2.0] and both.peak_bytes == 6


def test_workers_limit_productions_and_an_oversize_item_goes_alone():
    o = oracle_schedule([1, 1, 1], [1.0] * 3, [0.1] * 3, budget_bytes=100, num_workers=1)
    assert o.start == [0.0, 1.0, 2.0] and o.end[-1] == pytest.approx(3.1)
    big = oracle_schedule([10, 1], [1.0, 1.0], [0.5, 0.5], budget_bytes=4, num_workers=2)
    assert big.start == [0.0, 1.5] and big.peak_bytes == 10


def test_zero_step_and_zero_production_times_terminate():
    o = oracle_schedule([1, 2, 3], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], budget_bytes=3, num_workers=1)
    assert o.end == [0.0, 0.0, 0.0] and o.peak_bytes == 3


def test_unlimited_budget_with_fast_producers_reaches_the_consumer_limit():
    steps = [0.01] * 50
    o = oracle_schedule([100] * 50, [0.002] * 50, steps, budget_bytes=10**9, num_workers=2)
    assert o.stall_s == pytest.approx(0.0)
    assert o.throughput == pytest.approx(50 / sum(steps))


@pytest.mark.parametrize("seed", range(12))
def test_oracle_is_the_fastest_in_order_schedule_on_small_cases(seed):
    rng = np.random.default_rng(seed)
    n = 4
    sizes = [int(x) for x in rng.integers(1, 6, n)]
    produce = [int(x) for x in rng.integers(0, 4, n)]
    step = [int(x) for x in rng.integers(0, 3, n)]
    budget, workers = int(rng.integers(3, 9)), int(rng.integers(1, 3))
    o = oracle_schedule(sizes, produce, step, budget, workers)
    assert o.end[-1] == _fastest_in_order_by_search(sizes, produce, step, budget, workers)


def test_throughput_never_falls_as_the_budget_grows_and_peak_respects_it():
    rng = np.random.default_rng(3)
    for _ in range(10):
        n = 60
        sizes = [int(x) for x in rng.integers(1, 50, n)]
        produce = [float(x) for x in rng.uniform(0, 0.05, n)]
        step = [float(x) for x in rng.uniform(0.001, 0.02, n)]
        last = 0.0
        for budget in range(10, 400, 15):
            o = oracle_schedule(sizes, produce, step, budget, num_workers=3)
            assert o.throughput >= last - 1e-9
            assert o.peak_bytes <= max(budget, max(sizes))
            last = o.throughput


def test_budget_for_a_target_is_the_smallest_that_reaches_it():
    rng = np.random.default_rng(5)
    sizes = [int(x) for x in rng.integers(1000, 50000, 80)]
    produce = [0.001 + s * 2e-7 for s in sizes]
    step = [0.004] * 80
    limit = 80 / sum(step)
    o = oracle_budget_for(sizes, produce, step, 0.9 * limit, num_workers=4, resolution_bytes=64)
    assert o.throughput >= 0.9 * limit
    below = oracle_schedule(sizes, produce, step, o.budget_bytes - 64, num_workers=4)
    assert below.throughput < 0.9 * limit
    assert oracle_budget_for(sizes, produce, step, 1.01 * limit, num_workers=4) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sizes": [], "produce_s": [], "step_s": []},
        {"sizes": [1, 2], "produce_s": [0.1], "step_s": [0.1, 0.1]},
        {"sizes": [0], "produce_s": [0.1], "step_s": [0.1]},
        {"sizes": [1], "produce_s": [-0.1], "step_s": [0.1]},
        {"sizes": [1], "produce_s": [0.1], "step_s": [0.1], "budget_bytes": 0},
        {"sizes": [1], "produce_s": [0.1], "step_s": [0.1], "num_workers": 0},
    ],
)
def test_bad_input_is_refused(kwargs):
    args = {"budget_bytes": 10, "num_workers": 1, **kwargs}
    with pytest.raises(ValueError):
        oracle_schedule(**args)
