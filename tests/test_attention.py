"""Streaming attention: blockwise PyTorch vs naive vs SDPA, the dispatcher, memory, the notebook.

Triton kernels are tested in test_attention_triton.py (under TRITON_INTERPRET=1).
All inputs are seeded; tolerances are explicit:

* float64: blockwise and naive agree to 1e-10 (same maths, different order).
* float32 against a float64 reference: forward <= 1e-5, gradients <= 1e-4 (the
  issue's acceptance figures).
* float16/bfloat16: error against float64 at most 2x naive's at the same dtype
  (the FlashAttention test rule).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments import attention as A
from experiments.attention.blockwise import BlockConfig, blockwise_forward_with_lse, tile_status
from experiments.attention.measure import errors_vs_float64, make_inputs, measure_peak_memory
from experiments.attention.reference import allowed_mask
from tests.support import REPO_ROOT, assert_figures_shown_and_stored_once

# (name, n, d, causal, window, sinks, block_q, block_k)
CASES = [
    ("causal", 96, 32, True, 0, 0, 32, 32),
    ("noncausal", 96, 32, False, 0, 0, 32, 32),
    ("window_sinks_causal", 100, 16, True, 9, 4, 16, 32),
    ("window_sinks_noncausal", 100, 16, False, 9, 4, 32, 16),
    ("window_no_sinks", 64, 16, True, 1, 0, 16, 16),  # each query sees only itself
    ("ragged_n", 77, 32, True, 0, 0, 32, 16),  # N not a multiple of either block
    ("n_equals_1", 1, 32, True, 0, 0, 32, 32),
    ("d_not_power_of_two", 50, 24, False, 0, 0, 16, 16),
    ("sinks_beyond_window_block", 130, 8, True, 20, 40, 32, 16),
    ("window_and_sinks_exceed_n", 20, 8, False, 50, 100, 8, 8),
]
IDS = [c[0] for c in CASES]


def _grads(out, inputs, seed=123):
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, inputs, grad)


def _inputs(n, d, dtype, seed=0, b=2, h=3):
    return make_inputs(b, h, n, d, dtype=dtype, seed=seed, requires_grad=True)


def test_allowed_mask_matches_definition():
    n, window, sinks = 13, 4, 2
    for causal in (False, True):
        mask = allowed_mask(n, causal=causal, window=window, sinks=sinks)
        for i in range(n):
            for j in range(n):
                want = (not causal or j <= i) and (abs(i - j) < window or j < sinks)
                assert bool(mask[i, j]) == want, (causal, i, j)
    assert allowed_mask(5).all()  # no causal, no window: everything
    assert torch.equal(allowed_mask(6, causal=True), torch.ones(6, 6, dtype=torch.bool).tril())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,sinks", [(0, 0), (5, 0), (5, 3), (1, 7)])
def test_tile_status_matches_mask(causal, window, sinks):
    n = 40
    full = allowed_mask(n, causal=causal, window=window, sinks=sinks)
    for q0 in range(0, n, 7):
        for k0 in range(0, n, 6):
            q1, k1 = min(n, q0 + 7), min(n, k0 + 6)
            tile = full[q0:q1, k0:k1]
            want = "skip" if not tile.any() else ("full" if tile.all() else "partial")
            got = tile_status(q0, q1, k0, k1, causal=causal, window=window, sinks=sinks)
            assert got == want, (q0, k0)


@pytest.mark.parametrize("name,n,d,causal,window,sinks,bq,bk", CASES, ids=IDS)
def test_blockwise_matches_naive_float64(name, n, d, causal, window, sinks, bq, bk):
    opts = dict(causal=causal, window=window, sinks=sinks)
    q, k, v = _inputs(n, d, torch.float64)
    ref = A.naive_attention(q, k, v, **opts)
    out = A.blockwise_attention(q, k, v, block_q=bq, block_k=bk, **opts)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    for g, r in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v)), strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name,n,d,causal,window,sinks,bq,bk", CASES, ids=IDS)
def test_sdpa_agrees_with_naive_float64(name, n, d, causal, window, sinks, bq, bk):
    """SDPA is the speed baseline; check it implements the same mask semantics."""
    opts = dict(causal=causal, window=window, sinks=sinks)
    q, k, v = _inputs(n, d, torch.float64)
    ref = A.naive_attention(q, k, v, **opts)
    out = A.sdpa_attention(q, k, v, **opts)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    for g, r in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v)), strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name,n,d,causal,window,sinks,bq,bk", CASES, ids=IDS)
def test_blockwise_float32_within_acceptance(name, n, d, causal, window, sinks, bq, bk):
    """float32 blockwise against a float64 reference: fwd <= 1e-5, grads <= 1e-4."""
    opts = dict(causal=causal, window=window, sinks=sinks)
    q, k, v = _inputs(n, d, torch.float32)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = A.naive_attention(q64, k64, v64, **opts)
    out = A.blockwise_attention(q, k, v, block_q=bq, block_k=bk, **opts)
    assert (out.double() - ref).abs().max().item() <= 1e-5
    grads = _grads(out, (q, k, v))
    ref_grads = _grads(ref, (q64, k64, v64))
    for g, r in zip(grads, ref_grads, strict=True):
        assert (g.double() - r).abs().max().item() <= 1e-4


@pytest.mark.parametrize("causal,window,sinks", [(True, 0, 0), (False, 0, 0), (True, 64, 4)])
def test_blockwise_saves_logsumexp(causal, window, sinks):
    q, k, v = make_inputs(1, 2, 200, 32, dtype=torch.float64, seed=3)
    out, lse = blockwise_forward_with_lse(q, k, v, causal=causal, window=window, sinks=sinks)
    scores = (q @ k.transpose(-2, -1)) / 32**0.5
    mask = allowed_mask(200, causal=causal, window=window, sinks=sinks)
    want = scores.masked_fill(~mask, float("-inf")).logsumexp(dim=-1)
    assert lse.shape == (1, 2, 200)
    torch.testing.assert_close(lse, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_error_at_most_twice_naive(dtype, causal):
    """FlashAttention's rule: at the same dtype, at most 2x the naive implementation's error."""
    kw = dict(b=1, h=2, n=256, d=64, dtype=dtype, causal=causal, seed=5)
    naive = errors_vs_float64("naive", **kw)
    blockwise = errors_vs_float64("blockwise", **kw)
    assert blockwise["fwd"] <= 2 * naive["fwd"]
    assert blockwise["grad"] <= 2 * naive["grad"]
    assert blockwise["fwd"] < (
        2e-2 if dtype == torch.bfloat16 else 3e-3
    )  # and small in absolute terms


def test_blockwise_keeps_dtype_and_no_nan_in_fully_masked_tiles():
    # window=1 makes most tiles a row sees fully masked; rows must still be finite.
    q, k, v = make_inputs(1, 1, 70, 8, dtype=torch.float16, seed=2)
    out = A.blockwise_attention(q, k, v, causal=True, window=1, block_q=16, block_k=16)
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, v)  # each query attends only itself


def test_blockwise_default_blocks_larger_input():
    q, k, v = make_inputs(1, 2, 300, 64, dtype=torch.float64, seed=4)
    for opts in (dict(causal=True), dict(causal=True, window=100, sinks=4)):
        torch.testing.assert_close(
            A.blockwise_attention(q, k, v, **opts),
            A.naive_attention(q, k, v, **opts),
            rtol=0,
            atol=1e-10,
        )


def test_inputs_are_validated():
    q, k, v = make_inputs(1, 1, 8, 4)
    with pytest.raises(ValueError, match="shape"):
        A.attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="share one shape"):
        A.attention(q, k[:, :, :4], v)
    with pytest.raises(ValueError, match="window and sinks"):
        A.attention(q, k, v, window=-1)
    with pytest.raises(ValueError, match="impl"):
        A.attention(q, k, v, impl="flash")


# --- dispatcher ----------------------------------------------------------------------


# The choice between Triton and its fallbacks on CUDA: tests/test_attention_dispatch.py.


def test_dispatcher_routes_calls(monkeypatch):
    calls = []
    for impl in ("naive", "blockwise", "sdpa", "triton"):
        monkeypatch.setattr(
            A, f"{impl}_attention", lambda *a, _impl=impl, **kw: calls.append((_impl, kw))
        )
    q, k, v = make_inputs(1, 1, 4, 4)
    A.attention(q, k, v, causal=True, window=3, sinks=1)
    A.attention(q, k, v, impl="sdpa")
    assert calls[0] == ("blockwise", dict(causal=True, window=3, sinks=1, scale=None))
    assert calls[1][0] == "sdpa"


def test_dispatcher_auto_on_cpu_matches_naive():
    q, k, v = make_inputs(2, 2, 33, 16, dtype=torch.float64, seed=9)
    torch.testing.assert_close(
        A.attention(q, k, v, causal=True, window=8, sinks=2),
        A.naive_attention(q, k, v, causal=True, window=8, sinks=2),
        rtol=0,
        atol=1e-10,
    )


def test_package_import_does_not_import_triton():
    import subprocess
    import sys

    code = "import sys, experiments.attention; print('triton' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert out.stdout.strip() == "False"


# --- memory, measured -----------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for RSS")
def test_measured_memory_blockwise_far_below_naive_and_cap_enforced():
    common = dict(b=1, h=4, d=64, causal=True)
    cases = [
        dict(common, impl="naive", n=1024),
        dict(common, impl="naive", n=2048, cap_mib=32),
        dict(common, impl="blockwise", n=1024),
        dict(common, impl="blockwise", n=2048, cap_mib=32),
    ]
    naive, naive_capped, blockwise, blockwise_capped = measure_peak_memory(cases)
    # naive materialises at least one (B, H, N, N) float32 matrix: 16 MiB at N=1024
    assert naive["ok"] and naive["peak_extra_mib"] >= 16
    assert blockwise["ok"] and blockwise["peak_extra_mib"] * 5 <= naive["peak_extra_mib"]
    # under a 32 MiB cap, naive at N=2048 (64 MiB of scores) cannot allocate; blockwise runs
    assert not naive_capped["ok"]
    assert blockwise_capped["ok"]


# --- GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dispatcher_picks_triton_on_real_cuda():
    q, _, _ = make_inputs(1, 1, 4, 4, device="cuda")
    assert A.choose_impl(q) == ("triton" if A.triton_available() else "blockwise")


# --- notebook --------------------------------------------------------------------------


def test_notebook_declares_typed_parameters():
    papermill = pytest.importorskip("papermill")
    params = papermill.inspect_notebook(str(REPO_ROOT / "notebooks" / "streaming_attention.ipynb"))
    want = {
        "seq_lens": ("list[int]", "[512, 1024, 2048, 4096]"),
        "head_dim": ("int", "64"),
        "dtype": ("str", '"float32"'),
        "causal": ("bool", "True"),
        "window": ("int", "0"),
        "sinks": ("int", "0"),
        "device": ("str", '"auto"'),
        "quick": ("bool", "False"),
    }
    for name, (type_name, default) in want.items():
        assert name in params, name
        assert (params[name]["inferred_type_name"], params[name]["default"]) == (type_name, default)


@pytest.mark.slow
def test_notebook_quick_run_records_figures(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("RESEARCH_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    papermill.execute_notebook(
        str(REPO_ROOT / "notebooks" / "streaming_attention.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters={"quick": True},
        kernel_name="python3",
        cwd=str(REPO_ROOT),
        progress_bar=False,
    )
    entries = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    metrics = {e["name"]: e["value"] for e in entries if e["kind"] == "metric"}
    for name in (
        "memory_ratio_naive_over_blockwise",
        "memory_slope_naive",
        "memory_slope_blockwise",
        "fwd_err_blockwise",
        "grad_err_blockwise",
        "time_ratio_blockwise_over_sdpa",
    ):
        assert name in metrics, name
    assert metrics["memory_ratio_naive_over_blockwise"] > 3
    assert metrics["fwd_err_blockwise"] <= 1e-5
    assert metrics["grad_err_blockwise"] <= 1e-4
    artifacts = [e for e in entries if e["kind"] == "artifact"]
    assert {Path(a["path"]).name for a in artifacts} >= {"memory_vs_n.png", "time_vs_n.png"}
    assert all(os.path.exists(a["path"]) for a in artifacts)
    assert_figures_shown_and_stored_once(tmp_path / "out.ipynb", tmp_path)  # under Agg too


# --- decoding (Nq < Nk) and grouped-query attention (Hq > Hkv) --------------------------
#
# Shapes: q (B, Hq, Nq, D), k and v (B, Hkv, Nk, D); query row i sits at position
# i + Nk - Nq (bottom-right alignment). The float64 naive reference is itself checked
# against an explicit loop over the definition first.


def _allowed(i, j, nq, nk, causal, window, sinks):
    """The mask definition, one pair at a time."""
    p = i + nk - nq
    return (not causal or j <= p) and (window == 0 or abs(p - j) < window or j < sinks)


def _loop_attention(q, k, v, *, causal=False, window=0, sinks=0, scale=None):
    """Attention written out pair by pair from the definition (float64, tiny shapes only)."""
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    scale = d**-0.5 if scale is None else scale
    out = torch.zeros(b, hq, nq, d, dtype=torch.float64)
    for bi in range(b):
        for h in range(hq):
            kh = h // (hq // hkv)
            for i in range(nq):
                keys = [j for j in range(nk) if _allowed(i, j, nq, nk, causal, window, sinks)]
                scores = torch.stack([(q[bi, h, i] * k[bi, kh, j]).sum() * scale for j in keys])
                weights = torch.exp(scores - scores.max())
                weights = weights / weights.sum()
                for w, j in zip(weights, keys, strict=True):
                    out[bi, h, i] += w * v[bi, kh, j]
    return out


def _gqa_inputs(b, hq, hkv, nq, nk, d, dtype=torch.float64, seed=0, layout="contiguous"):
    return make_inputs(
        b, hq, nq, d, dtype=dtype, seed=seed, requires_grad=True, n_kv=nk, h_kv=hkv, layout=layout
    )


@pytest.mark.parametrize(
    "hq,hkv,nq,nk,causal,window,sinks",
    [
        (4, 2, 3, 7, True, 0, 0),
        (4, 2, 3, 7, True, 3, 1),
        (2, 1, 4, 9, False, 2, 2),
        (2, 2, 7, 7, True, 2, 0),
        (3, 1, 5, 2, False, 0, 0),  # more queries than keys: allowed without a mask
    ],
)
def test_naive_matches_a_loop_over_the_definition(hq, hkv, nq, nk, causal, window, sinks):
    opts = dict(causal=causal, window=window, sinks=sinks)
    q, k, v = (t.detach() for t in _gqa_inputs(2, hq, hkv, nq, nk, 5, seed=21))
    torch.testing.assert_close(
        A.naive_attention(q, k, v, **opts), _loop_attention(q, k, v, **opts), rtol=0, atol=1e-12
    )


def test_make_inputs_default_draws_unchanged_and_kv_shapes():
    gen = torch.Generator().manual_seed(7)  # the draws existing figures were made with
    want = [torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64).float() for _ in range(3)]
    got = make_inputs(2, 3, 5, 4, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    q, k, v = make_inputs(2, 4, 5, 8, seed=7, n_kv=11, h_kv=2)
    assert (q.shape, k.shape, v.shape) == ((2, 4, 5, 8), (2, 2, 11, 8), (2, 2, 11, 8))
    q_t, k_t, v_t = make_inputs(2, 4, 5, 8, seed=7, n_kv=11, h_kv=2, layout="transposed")
    for a, b in zip((q, k, v), (q_t, k_t, v_t), strict=True):
        assert torch.equal(a, b) and not b.is_contiguous()
    assert q_t.stride(1) == 8 and q_t.stride(2) == 4 * 8  # stored as (B, N, H, D)


@pytest.mark.parametrize("nq,nk", [(1, 13), (5, 13), (13, 13), (4, 9)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,sinks", [(0, 0), (3, 0), (3, 2), (1, 20)])
def test_allowed_mask_bottom_right_matches_definition(nq, nk, causal, window, sinks):
    opts = dict(causal=causal, window=window, sinks=sinks)
    mask = allowed_mask(nq, nk, **opts)
    assert mask.shape == (nq, nk)
    for i in range(nq):
        for j in range(nk):
            assert bool(mask[i, j]) == _allowed(i, j, nq, nk, **opts), (i, j)
    if causal or window:
        assert mask.any(dim=-1).all()  # no empty softmax row
    # A tile: q_range in query rows, k_range in keys; the offset is applied inside.
    tile = allowed_mask(nq, nk, q_range=(nq // 2, nq), k_range=(2, nk - 1), **opts)
    assert torch.equal(tile, mask[nq // 2 :, 2 : nk - 1])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,sinks", [(0, 0), (5, 0), (5, 3), (1, 7), (4, 13)])
def test_tile_status_matches_mask_with_fewer_queries(causal, window, sinks):
    nq, nk = 23, 40  # query row i at position i + 17
    full = allowed_mask(nq, nk, causal=causal, window=window, sinks=sinks)
    for q0 in range(0, nq, 5):
        for k0 in range(0, nk, 6):
            q1, k1 = min(nq, q0 + 5), min(nk, k0 + 6)
            tile = full[q0:q1, k0:k1]
            want = "skip" if not tile.any() else ("full" if tile.all() else "partial")
            p0, p1 = q0 + nk - nq, q1 + nk - nq
            got = tile_status(p0, p1, k0, k1, causal=causal, window=window, sinks=sinks)
            assert got == want, (q0, k0)


# (name, b, hq, hkv, nq, nk, d, causal, window, sinks, block_q, block_k)
KV_CASES = [
    ("decode_1_causal", 2, 2, 2, 1, 100, 16, True, 0, 0, 16, 32),
    ("nq7_causal", 2, 2, 2, 7, 100, 16, True, 0, 0, 4, 32),
    ("nq33_causal", 1, 3, 3, 33, 100, 16, True, 0, 0, 16, 16),
    ("nq33_window_sinks_causal", 1, 2, 2, 33, 100, 16, True, 9, 4, 16, 16),
    ("nq33_window_sinks_noncausal", 1, 2, 2, 33, 100, 16, False, 9, 4, 8, 32),
    ("decode_1_window_sinks", 2, 2, 2, 1, 100, 16, True, 9, 4, 8, 16),
    ("gqa_8_2_causal", 1, 8, 2, 48, 48, 16, True, 0, 0, 16, 16),
    ("gqa_8_2_noncausal", 1, 8, 2, 48, 48, 16, False, 0, 0, 16, 32),
    ("mqa_4_1_causal", 2, 4, 1, 40, 40, 16, True, 0, 0, 16, 8),
    ("mqa_4_1_noncausal", 2, 4, 1, 40, 40, 16, False, 0, 0, 32, 16),
    ("gqa_decode_window_sinks", 1, 8, 2, 7, 100, 16, True, 9, 4, 4, 16),
    ("gqa_nq_lt_nk_causal", 1, 4, 1, 33, 100, 40, True, 0, 0, 16, 32),
    ("sinks_far_beyond_window", 1, 2, 2, 200, 200, 16, False, 4, 100, 32, 32),
    ("window_1_decode", 1, 2, 2, 9, 50, 16, True, 1, 0, 4, 8),
    ("window_1_noncausal", 1, 2, 1, 30, 30, 16, False, 1, 0, 8, 8),
    ("sinks_at_least_n", 1, 2, 2, 12, 20, 16, False, 3, 50, 8, 8),
    ("ragged_blocks", 1, 2, 1, 37, 77, 40, True, 11, 2, 16, 32),
    ("d40_noncausal", 2, 2, 2, 20, 45, 40, False, 0, 0, 8, 16),
    ("more_queries_than_keys_unmasked", 1, 4, 2, 50, 20, 16, False, 0, 0, 16, 8),
]
KV_IDS = [c[0] for c in KV_CASES]


def _check_against_naive(fn, q, k, v, opts, *, atol=1e-10, grad=None):
    """fn's output and dQ, dK, dV against float64 naive attention on contiguous copies."""
    ref_in = [t.detach().double().contiguous().requires_grad_() for t in (q, k, v)]
    ref = A.naive_attention(*ref_in, **opts)
    out = fn(q, k, v, **opts)
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=atol)
    if grad is None:
        gen = torch.Generator().manual_seed(123)
        grad = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(out, (q, k, v), grad.to(out.dtype))  # float64: as is, strides too
    ref_grads = torch.autograd.grad(ref, ref_in, grad.double())
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        assert g.shape == r.shape, name
        torch.testing.assert_close(g.double(), r, rtol=0, atol=atol, msg=f"d{name}")


@pytest.mark.parametrize("impl", ["blockwise", "sdpa"])
@pytest.mark.parametrize("name,b,hq,hkv,nq,nk,d,causal,window,sinks,bq,bk", KV_CASES, ids=KV_IDS)
def test_kv_cache_and_gqa_match_naive_float64(
    impl, name, b, hq, hkv, nq, nk, d, causal, window, sinks, bq, bk
):
    opts = dict(causal=causal, window=window, sinks=sinks)
    q, k, v = _gqa_inputs(b, hq, hkv, nq, nk, d, seed=len(name))
    if impl == "blockwise":
        fn = lambda *a, **kw: A.blockwise_attention(*a, block_q=bq, block_k=bk, **kw)  # noqa: E731
    else:
        fn = A.sdpa_attention
    _check_against_naive(fn, q, k, v, opts)


def test_decoding_one_query_causal_sees_every_key():
    """Nq = 1 with causal is the newest token: it attends all Nk keys, like no mask."""
    q, k, v = (t.detach() for t in _gqa_inputs(1, 4, 2, 1, 30, 8, seed=5))
    want = A.naive_attention(q, k, v)
    for fn in (A.naive_attention, A.blockwise_attention, A.sdpa_attention):
        torch.testing.assert_close(fn(q, k, v, causal=True), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", ["blockwise", "sdpa"])
@pytest.mark.parametrize(
    "hq,hkv,nq,nk,causal,window,sinks",
    [(4, 2, 19, 50, True, 7, 3), (2, 2, 30, 30, False, 0, 0), (4, 1, 1, 40, True, 0, 0)],
)
def test_transposed_inputs_and_stride0_gradient(impl, hq, hkv, nq, nk, causal, window, sinks):
    """Non-contiguous q, k, v ((B, N, H, D) storage) and a stride-0 upstream gradient."""
    opts = dict(causal=causal, window=window, sinks=sinks)
    q, k, v = _gqa_inputs(2, hq, hkv, nq, nk, 16, seed=8, layout="transposed")
    assert q.stride(2) == hq * 16 and k.stride(2) == hkv * 16  # stored as (B, N, H, D)
    if impl == "blockwise":
        fn = lambda *a, **kw: A.blockwise_attention(*a, block_q=8, block_k=16, **kw)  # noqa: E731
    else:
        fn = A.sdpa_attention
    ones = torch.ones((), dtype=torch.float64).expand(2, hq, nq, 16)  # as out.sum().backward()
    assert ones.stride() == (0, 0, 0, 0)
    _check_against_naive(fn, q, k, v, opts, grad=ones)
    _check_against_naive(fn, q, k, v, opts)  # and a random gradient on the same views


def test_blockwise_backward_called_directly_with_stride0_dout_and_views():
    """The Triton fallback calls blockwise_backward with its own O and L: any strides."""
    from experiments.attention.blockwise import BlockConfig, blockwise_backward

    opts = dict(causal=True, window=6, sinks=2)
    q, k, v = (t.detach() for t in _gqa_inputs(1, 4, 2, 13, 31, 8, seed=4, layout="transposed"))
    out, lse = blockwise_forward_with_lse(q, k, v, **opts)
    assert lse.shape == (1, 4, 13) and lse.dtype == torch.float64
    dout = torch.ones((), dtype=torch.float64).expand(out.shape)
    out_t = out.transpose(1, 2).contiguous().transpose(1, 2)  # a non-contiguous O
    grads = blockwise_backward(
        q, k, v, out_t, lse, dout, scale=8**-0.5, blocks=BlockConfig(4, 8), **opts
    )
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_grads = torch.autograd.grad(A.naive_attention(*ref_in, **opts).sum(), ref_in)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


@pytest.mark.parametrize("causal,window,sinks", [(True, 0, 0), (False, 0, 0), (True, 16, 3)])
def test_large_logits(causal, window, sinks):
    """Inputs scaled so the scaled scores reach about +-50: the online max must keep
    exp() in range (float64 to 1e-10; float32 finite, with the error bounds below)."""
    q, k, v = (t.detach() for t in _gqa_inputs(1, 4, 2, 40, 90, 32, seed=13))
    q = q * (50 / ((q @ k.repeat_interleave(2, 1).transpose(-2, -1)) / 32**0.5).abs().max())
    opts = dict(causal=causal, window=window, sinks=sinks)
    scores = (q @ k.repeat_interleave(2, 1).transpose(-2, -1)) / 32**0.5
    assert 49 < scores.abs().max() <= 50.0 + 1e-9
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    fn = lambda *a, **kw: A.blockwise_attention(*a, block_q=16, block_k=16, **kw)  # noqa: E731
    _check_against_naive(fn, q, k, v, opts)
    _check_against_naive(A.sdpa_attention, q, k, v, opts)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref_in = [t.detach().double().requires_grad_() for t in (q32, k32, v32)]
    ref = A.naive_attention(*ref_in, **opts)
    out = fn(q32, k32, v32, **opts)
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max().item() <= 2e-5  # measured up to 9e-6
    # Backward recomputes P = exp(S - L) with |S|, |L| ~ 50: float32 rounding of S and L
    # (~50 * 6e-8 absolute) bounds the gradients' error relative to their size (~20),
    # measured up to 6e-6 of it here.
    for g, r in zip(_grads(out, (q32, k32, v32)), _grads(ref, ref_in), strict=True):
        assert torch.isfinite(g).all()
        assert (g.double() - r).abs().max().item() <= 1e-5 * r.abs().max().item()


@pytest.mark.parametrize("causal,window,sinks", [(True, 0, 0), (False, 0, 0), (True, 12, 3)])
def test_blockwise_saves_logsumexp_with_gqa_and_fewer_queries(causal, window, sinks):
    q, k, v = make_inputs(2, 6, 25, 16, dtype=torch.float64, seed=3, n_kv=70, h_kv=2)
    opts = dict(causal=causal, window=window, sinks=sinks)
    _, lse = blockwise_forward_with_lse(q, k, v, blocks=BlockConfig(8, 16), **opts)
    scores = (q @ k.repeat_interleave(3, dim=1).transpose(-2, -1)) / 16**0.5  # (2, 6, 25, 70)
    mask = allowed_mask(25, 70, **opts)
    want = scores.masked_fill(~mask, float("-inf")).logsumexp(dim=-1)
    assert lse.shape == (2, 6, 25)
    torch.testing.assert_close(lse, want, rtol=0, atol=1e-10)


def test_decoding_float16_is_finite_and_keeps_dtype():
    q, k, v = make_inputs(1, 4, 3, 8, dtype=torch.float16, seed=2, n_kv=70, h_kv=1)
    out = A.blockwise_attention(q, k, v, causal=True, window=1, block_q=2, block_k=16)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    # window=1: query row i (position i + 67) sees only key i + 67
    torch.testing.assert_close(out, v[:, :, 67:].expand(1, 4, 3, 8))


@pytest.mark.parametrize("fn", [A.naive_attention, A.blockwise_attention, A.sdpa_attention])
def test_gqa_and_kv_inputs_are_validated(fn):
    q, k, v = make_inputs(1, 4, 8, 4, n_kv=6, h_kv=2)
    with pytest.raises(ValueError, match="multiple"):
        fn(make_inputs(1, 3, 6, 4)[0], k, v)  # Hq = 3, Hkv = 2
    with pytest.raises(ValueError, match="outnumber"):
        fn(q, k, v, causal=True)  # Nq = 8 > Nk = 6
    with pytest.raises(ValueError, match="outnumber"):
        fn(q, k, v, window=2)
    with pytest.raises(ValueError, match="head dim"):
        fn(q, k[..., :3], v[..., :3])
    with pytest.raises(ValueError, match="batch"):
        fn(q, torch.cat([k, k]), torch.cat([v, v]))
    with pytest.raises(ValueError, match="share one shape"):
        fn(q, k, v[:, :1])
    assert fn(q, k, v).shape == (1, 4, 8, 4)  # Nq > Nk is fine without a mask


def test_errors_vs_float64_handles_kv_layout_and_stride0_gradient():
    kw = dict(b=1, h=4, n=9, d=16, n_kv=40, h_kv=2, dtype=torch.float64, window=6, sinks=2)
    for impl in ("blockwise", "sdpa"):
        for layout in ("contiguous", "transposed"):
            for grad_kind in ("random", "ones_expanded"):
                err = errors_vs_float64(impl, layout=layout, grad_kind=grad_kind, **kw)
                assert err["fwd"] <= 1e-10 and err["grad"] <= 1e-10, (impl, layout, grad_kind)
    with pytest.raises(ValueError, match="grad_kind"):
        errors_vs_float64("naive", grad_kind="zeros", **kw)


def test_run_case_accepts_n_kv_and_h_kv():
    from experiments.attention.measure import _run_case

    case = dict(impl="blockwise", n=4, n_kv=64, h_kv=1, b=1, h=2, d=8, backward=True)
    result = _run_case(case, resettable=False)
    assert result["ok"] and result["n_kv"] == 64


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_blockwise_matches_naive_on_random_small_shapes(data):
    """Property: any small shape, GQA grouping, query count, mask and tiling agrees."""
    hkv = data.draw(st.integers(1, 2), label="hkv")
    hq = hkv * data.draw(st.integers(1, 3), label="group")
    causal = data.draw(st.booleans(), label="causal")
    window = data.draw(st.integers(0, 6), label="window")
    nk = data.draw(st.integers(1, 24), label="nk")
    masked = causal or window > 0
    nq = data.draw(st.integers(1, nk if masked else 24), label="nq")
    opts = dict(causal=causal, window=window, sinks=data.draw(st.integers(0, 8), label="sinks"))
    bq, bk = data.draw(st.integers(1, 9), label="bq"), data.draw(st.integers(1, 9), label="bk")
    b, d = data.draw(st.integers(1, 2), label="b"), data.draw(st.integers(1, 6), label="d")
    layout = data.draw(st.sampled_from(["contiguous", "transposed"]), label="layout")
    q, k, v = _gqa_inputs(b, hq, hkv, nq, nk, d, seed=data.draw(st.integers(0, 99)), layout=layout)
    fn = lambda *a, **kw: A.blockwise_attention(*a, block_q=bq, block_k=bk, **kw)  # noqa: E731
    _check_against_naive(fn, q, k, v, opts)
