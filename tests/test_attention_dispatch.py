"""The attention dispatcher: which implementation runs, and the warned fallbacks on CUDA.

No GPU is needed: a CUDA tensor is stood in for where only ``is_cuda`` and the shape
matter, and the Triton launch is replaced by one that fails, to check that "auto"
falls back with exactly one warning naming why and still returns the right result.
"""

from __future__ import annotations

import importlib.util
import types
import warnings

import pytest
import torch

from experiments import attention as A
from experiments.attention.blockwise import blockwise_forward_with_lse
from experiments.attention.measure import make_inputs

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(A, "_warned", set())


def fake_cuda(nq=8, d=16):
    return types.SimpleNamespace(is_cuda=True, shape=(1, 2, nq, d))


def fake_kv(nk=8, d=16):
    return types.SimpleNamespace(is_cuda=True, shape=(1, 2, nk, d))


def test_cpu_auto_is_blockwise_without_a_warning():
    q, k, v = make_inputs(1, 1, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert A.choose_impl(q) == "blockwise"
        A.attention(q, k, v, causal=True)
    for impl in ("naive", "blockwise", "sdpa", "triton"):
        assert A.choose_impl(q, impl) == impl
    with pytest.raises(ValueError, match="impl must be one of"):
        A.choose_impl(q, "flash")


def test_cuda_auto_is_triton_when_supported(monkeypatch):
    monkeypatch.setattr(A, "triton_unsupported", lambda q, k, v: None)
    assert A.choose_impl(fake_cuda()) == "triton"


@pytest.mark.parametrize(
    "nq,nk,causal,window,expected",
    [
        (8, 8, False, 0, "sdpa"),
        (8, 8, True, 0, "sdpa"),
        (1, 8, False, 0, "sdpa"),  # no mask: any lengths
        (1, 8, True, 0, "blockwise"),  # SDPA's is_causal aligns top-left
        (8, 8, True, 4, "blockwise"),  # a window needs a dense mask in SDPA
        (8, 8, False, 4, "blockwise"),
    ],
)
def test_cuda_fallback_when_unsupported(monkeypatch, nq, nk, causal, window, expected):
    monkeypatch.setattr(A, "triton_unsupported", lambda q, k, v: "Triton is not installed")
    q, k = fake_cuda(nq), fake_kv(nk)
    assert A.choose_impl(q, "auto", k, k, causal=causal, window=window) == expected


def test_failed_triton_launch_falls_back_with_one_warning(monkeypatch):
    """A compile or launch failure in the forward: same result from the fallback, one warning."""
    monkeypatch.setattr(A, "_plan", lambda q, k, v, impl, **kw: ("triton", None))

    def broken(*args, **kwargs):
        raise RuntimeError("PTX assembly aborted\nmore detail")

    monkeypatch.setattr(A, "triton_attention", broken)
    q, k, v = make_inputs(1, 2, 40, 16, dtype=torch.float64, seed=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = A.attention(q, k, v, causal=True, window=9, sinks=2)
        A.attention(q, k, v, causal=True, window=9, sinks=2)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "instead of the Triton kernels" in messages[0]
    assert "RuntimeError: PTX assembly aborted" in messages[0] and "more detail" not in messages[0]
    ref = A.naive_attention(q, k, v, causal=True, window=9, sinks=2)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_user_errors_are_not_mistaken_for_kernel_failures(monkeypatch):
    monkeypatch.setattr(A, "_plan", lambda q, k, v, impl, **kw: ("triton", None))
    monkeypatch.setattr(A, "triton_attention", lambda *a, **kw: pytest.fail("launched"))
    q = torch.randn(1, 3, 8, 16)
    kv = torch.randn(1, 2, 8, 16)  # 3 query heads cannot share 2 key/value heads
    with pytest.raises(ValueError):
        A.attention(q, kv, kv)


def test_out_of_memory_is_not_a_fallback(monkeypatch):
    monkeypatch.setattr(A, "_plan", lambda q, k, v, impl, **kw: ("triton", None))

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(A, "triton_attention", oom)
    q, k, v = make_inputs(1, 1, 8, 16)
    with pytest.raises(torch.OutOfMemoryError):
        A.attention(q, k, v)


@pytest.mark.parametrize("shape", [(1, 2, 37, 16), (2, 4, 19, 24)])
def test_backward_fallback_gives_blockwise_gradients(shape):
    """When the backward kernels fail, the gradients come from the blockwise backward,
    computed from the forward's own O and L."""
    b, h, n, d = shape
    q, k, v = make_inputs(b, h, n, d, dtype=torch.float64, seed=4, requires_grad=True)
    opts = dict(causal=True, window=7, sinks=2, scale=d**-0.5)
    out, lse = blockwise_forward_with_lse(q, k, v, **opts)
    dout = torch.randn_like(out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grads = A._blockwise_gradients(RuntimeError("no kernel image"), q, k, v, out, lse, dout, **opts)  # fmt: skip
    assert any("blockwise backward" in str(w.message) for w in caught)
    ref = torch.autograd.grad(A.naive_attention(q, k, v, **opts), (q, k, v), dout)
    for got, want in zip(grads, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@needs_triton
def test_unsupported_reasons(monkeypatch):
    from experiments.attention import triton_kernel as tk

    monkeypatch.setattr(tk, "interpreting", lambda: False)
    cpu = torch.randn(1, 1, 4, 16)
    assert "CUDA tensors" in tk.unsupported_reason(cpu, cpu, cpu)
    monkeypatch.setattr(tk, "interpreting", lambda: True)
    assert tk.unsupported_reason(cpu, cpu, cpu) is None
    f64 = cpu.double()
    assert "float64" in tk.unsupported_reason(f64, f64, f64)
    f32_256 = torch.randn(1, 1, 4, 256)
    assert "spills registers" in tk.unsupported_reason(f32_256, f32_256, f32_256)
    half_256 = f32_256.half()
    assert tk.unsupported_reason(half_256, half_256, half_256) is None
    wide = torch.randn(1, 1, 4, 300)
    assert "head_dim" in tk.unsupported_reason(wide, wide, wide)
    # a head spanning 2**31 elements: the kernels' in-head offsets would overflow
    huge = torch.empty_strided((1, 1, 2, 16), (0, 0, 2**31, 1), device="meta")
    assert "2**31" in tk.unsupported_reason(huge, huge, huge)
