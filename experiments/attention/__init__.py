"""Streaming attention: blockwise online softmax in PyTorch and Triton.

Exact attention computed block by block, keeping a running max and sum per query
(FlashAttention, Dao et al. 2022; FlashAttention-2, Dao 2023) instead of the
(N, N) score matrix, with an optional streaming mask (attention sinks plus a
sliding window, StreamingLLM, Xiao et al. 2023).

Modules, one idea each:

* ``reference``: mask semantics, ``naive_attention`` (materialises scores) and
  ``sdpa_attention`` (PyTorch's fused kernel with the same mask).
* ``blockwise``: ``blockwise_attention``, an ``autograd.Function`` in PyTorch.
* ``triton_kernel``: ``triton_attention``, fused forward/backward Triton kernels
  (imported lazily: CPU-only users do not need Triton).
* ``measure``: timing and measured peak memory, shared by the benchmark and notebook.

``attention`` is the entry point. Mask semantics (query i attends key j iff):

    (not causal or j <= i)  and  (window == 0 or |i - j| < window or j < sinks)
"""

from __future__ import annotations

import torch

from experiments.attention.blockwise import blockwise_attention
from experiments.attention.reference import naive_attention, sdpa_attention

IMPLS = ("auto", "triton", "blockwise", "naive", "sdpa")

__all__ = [
    "IMPLS",
    "attention",
    "blockwise_attention",
    "choose_impl",
    "naive_attention",
    "sdpa_attention",
    "triton_attention",
    "triton_available",
]


def triton_available() -> bool:
    """True if Triton can be imported (it need not have a GPU to be importable)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def choose_impl(q: torch.Tensor, impl: str = "auto") -> str:
    """The implementation ``attention`` runs: "auto" is Triton on CUDA, blockwise elsewhere."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    return "triton" if q.is_cuda and triton_available() else "blockwise"


def triton_attention(q, k, v, **kwargs):
    """Lazy front for ``experiments.attention.triton_kernel.triton_attention``."""
    from experiments.attention.triton_kernel import triton_attention as _triton_attention

    return _triton_attention(q, k, v, **kwargs)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int = 0,
    sinks: int = 0,
    scale: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Exact attention softmax(Q K^T * scale + mask) V on (B, H, N, D) tensors.

    Query i attends key j iff ``(not causal or j <= i)`` and
    ``(window == 0 or |i - j| < window or j < sinks)``: ``window`` keeps the
    ``window`` nearest keys on each side (with ``causal``: the key itself and the
    ``window - 1`` before it), ``sinks`` keeps the first ``sinks`` keys visible to
    every query. ``scale`` defaults to 1/sqrt(D).

    ``impl``: "auto" (Triton on CUDA, blockwise PyTorch elsewhere), "triton",
    "blockwise", "naive" or "sdpa".
    """
    kwargs = dict(causal=causal, window=window, sinks=sinks, scale=scale)
    chosen = choose_impl(q, impl)
    if chosen == "triton":
        return triton_attention(q, k, v, **kwargs)
    if chosen == "blockwise":
        return blockwise_attention(q, k, v, **kwargs)
    if chosen == "naive":
        return naive_attention(q, k, v, **kwargs)
    return sdpa_attention(q, k, v, **kwargs)
