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
import types
from pathlib import Path

import pytest
import torch

from experiments import attention as A
from experiments.attention.blockwise import blockwise_forward_with_lse, tile_status
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


def test_dispatcher_picks_blockwise_on_cpu():
    q, _, _ = make_inputs(1, 1, 4, 4)
    assert A.choose_impl(q) == "blockwise"
    for impl in ("naive", "blockwise", "sdpa", "triton"):
        assert A.choose_impl(q, impl) == impl


def test_dispatcher_picks_triton_on_cuda(monkeypatch):
    fake_cuda = types.SimpleNamespace(is_cuda=True)
    monkeypatch.setattr(A, "triton_available", lambda: True)
    assert A.choose_impl(fake_cuda) == "triton"
    monkeypatch.setattr(A, "triton_available", lambda: False)
    assert A.choose_impl(fake_cuda) == "blockwise"  # CUDA without Triton still works


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
