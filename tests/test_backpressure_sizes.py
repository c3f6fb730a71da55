"""Size estimates for items of unknown size, the JPEG workload, and measured memory."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.backpressure import MB
from experiments.backpressure.measure import MemoryWatch, Run, combine_repeats, shm_used_bytes
from experiments.backpressure.sizes import ReservationStats, SizeEstimator, WindowQuantile
from experiments.backpressure.workloads import (
    JpegDataset,
    make_workload,
    workload_dataset,
)

KB = 2**10


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 1e9, allow_nan=False), min_size=1, max_size=80),
    st.integers(1, 30),
    st.floats(0.01, 1.0),
)
def test_window_quantile_is_the_nearest_rank_quantile_of_the_last_samples(xs, window, q):
    w = WindowQuantile(window)
    for x in xs:
        w.add(x)
    recent = xs[-window:]
    assert len(w) == len(recent)
    assert w.quantile(q) == np.quantile(recent, q, method="inverted_cdf")
    assert w.max() == max(recent)


def test_estimate_is_a_high_quantile_and_the_largest_seen_is_its_bound():
    est = SizeEstimator(quantile=0.9, window=100, min_samples=8)
    assert est.estimate() is None  # nothing seen: the loader sends the first item alone
    for size in range(1, 11):
        est.observe(size * KB)
    e = est.estimate()
    assert (e.reserve, e.upper) == (9 * KB, 10 * KB)


def test_few_samples_reserve_the_largest_seen():
    est = SizeEstimator(min_samples=8)
    for size in (3, 1, 2):
        est.observe(size * KB)
    assert est.estimate().reserve == 3 * KB


def test_keys_keep_their_own_quantiles_once_they_have_enough_samples():
    est = SizeEstimator(quantile=1.0, min_samples=4)
    for _ in range(4):
        est.observe(100 * KB, key="large")
    est.observe(10 * KB, key="small")  # one sample: falls back to all items
    assert est.estimate(key="small").reserve == 100 * KB
    for _ in range(3):
        est.observe(10 * KB, key="small")
    assert est.estimate(key="small").reserve == 10 * KB
    assert est.estimate(key="large").reserve == 100 * KB
    assert est.estimate(key="never seen").reserve == 100 * KB


def test_a_hint_scales_the_estimate_and_sizes_alone_cap_it():
    est = SizeEstimator(quantile=1.0, min_samples=1)
    for hint in (10, 20, 40):
        est.observe(10 * hint, hint=hint)  # decoded = 10 x file size
    assert est.estimate(hint=30).reserve == 300
    assert est.estimate(hint=1000).reserve == 400  # no larger than any size seen


def test_reservation_stats_count_shortfalls_and_excess():
    r = ReservationStats()
    r.record(reserved=10, actual=4)
    r.record(reserved=10, actual=25)
    r.record(reserved=10, actual=12)
    assert (r.estimated, r.short, r.short_bytes, r.short_max_bytes, r.excess_bytes) == (
        3,
        2,
        17,
        15,
        6,
    )
    assert r.short_fraction == pytest.approx(2 / 3)


# -- the JPEG workload ------------------------------------------------------------------


def test_jpeg_workload_decodes_real_images_whose_size_the_file_only_hints():
    wl = make_workload("jpeg", 12, seed=1, scale=1 / 8)
    assert len(wl.images) == 12 and all(p > 0 for p in wl.produce_s)
    assert max(wl.sizes) <= wl.max_item_nbytes
    ds = workload_dataset(wl)
    assert not hasattr(ds, "item_nbytes")  # sizes are not known in advance
    ratios = []
    for i in range(12):
        item = ds[i]
        h, w, c = item["data"].shape
        assert c == 3 and item["data"].dtype == torch.uint8 and item["data"].numel() == wl.sizes[i]
        ratios.append(wl.sizes[i] / ds.item_size_hint(i))
    assert min(ratios) > 1 and max(ratios) / min(ratios) > 1.5  # compression varies with content
    known = workload_dataset(wl, known_sizes=True)
    assert [known.item_nbytes(i) for i in range(12)] == wl.sizes


def test_jpeg_dataset_matches_pillow():
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")  # lossless: the decode must match exactly
    item = JpegDataset([buf.getvalue()])[0]
    assert np.array_equal(item["data"].numpy(), pixels)


# -- measured memory and repeats -------------------------------------------------------------


def test_memory_watch_sees_resident_and_shared_memory():
    with MemoryWatch() as mem:
        local = torch.ones(32 * MB, dtype=torch.uint8)  # written: resident
        time.sleep(0.02)
        del local
    assert mem.rss_peak_bytes >= 30 * MB
    if shm_used_bytes() is None:
        pytest.skip("no /dev/shm here")
    with MemoryWatch() as shared:
        t = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(16 * MB))
        t.fill_(1)
        time.sleep(0.02)
        del t
    assert shared.shm_peak_bytes >= 15 * MB


def _run(throughput, peak, violations=0, over=0):
    return Run(
        "backpressure",
        "x",
        10,
        throughput,
        100.0,
        0.0,
        0.0,
        0.0,
        0.0,
        peak,
        peak / 2,
        violations=violations,
        over_budget_bytes=over,
    )


def test_repeats_combine_to_medians_and_worst_budget_figures():
    runs = [_run(80, 10, 0, 0), _run(90, 30, 2, 5), _run(70, 20, 1, 0)]
    combined = combine_repeats(runs)
    assert combined.throughput == 80 and combined.peak_bytes == 20
    assert combined.violations == 3 and combined.over_budget_bytes == 5
