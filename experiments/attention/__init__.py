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

``attention`` is the entry point. q is (B, H, Nq, D), k and v (B, Hkv, Nk, D) with H a
multiple of Hkv (grouped-query attention); query row i sits at position
p = i + Nk - Nq (the queries are the last Nq positions, as when decoding with a KV
cache). Mask semantics (query i attends key j iff):

    (not causal or j <= p)  and  (window == 0 or |p - j| < window or j < sinks)

On CUDA, "auto" runs the Triton kernels, and falls back, with one warning naming
why, to SDPA (no window, queries and keys aligned) or the blockwise path (any
mask, O(N) memory) for what the kernels do not take (float64, head_dim > 256,
Triton not installed) or when they fail to compile or launch.
"""

from __future__ import annotations

import warnings

import torch

from experiments.attention.blockwise import blockwise_attention, blockwise_backward
from experiments.attention.reference import check_inputs, naive_attention, sdpa_attention

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

_warned: set[str] = set()


def triton_available() -> bool:
    """True if Triton can be imported (it need not have a GPU to be importable)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot take these inputs, or None if they can."""
    if not triton_available():
        return "Triton is not installed"
    from experiments.attention.triton_kernel import unsupported_reason

    return unsupported_reason(q, k, v)


def fallback_impl(q: torch.Tensor, k: torch.Tensor, *, causal: bool, window: int) -> str:
    """SDPA where its fused kernels take the mask as is, else the O(N)-memory blockwise path.

    A window, or a causal mask with fewer queries than keys, would need a dense (Nq, Nk)
    mask for SDPA (its ``is_causal`` aligns top-left), so those go blockwise.
    """
    aligned = not causal or q.shape[2] == k.shape[2]
    return "sdpa" if window == 0 and aligned else "blockwise"


def choose_impl(
    q: torch.Tensor,
    impl: str = "auto",
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    *,
    causal: bool = False,
    window: int = 0,
    sinks: int = 0,
) -> str:
    """The implementation ``attention`` runs: "auto" is Triton on CUDA (or its fallback,
    see ``fallback_impl``), blockwise elsewhere; any other ``impl`` is taken as asked."""
    return _plan(q, k, v, impl, causal=causal, window=window)[0]


def _plan(q, k, v, impl, *, causal, window) -> tuple[str, str | None]:
    """(implementation, why Triton was not used on CUDA or None)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl, None
    if not q.is_cuda:
        return "blockwise", None
    k = q if k is None else k
    reason = triton_unsupported(q, k, q if v is None else v)
    if reason is None:
        return "triton", None
    return fallback_impl(q, k, causal=causal, window=window), reason


def _warn_fallback(impl: str, reason: str) -> None:
    message = f"attention: using {impl} instead of the Triton kernels: {reason}"
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _failure(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"they failed to compile or launch ({type(exc).__name__}: {first[:200]})"


def _blockwise_gradients(exc, q, k, v, out, lse, dout, **opts):
    """Backward fallback: the blockwise backward from the Triton forward's O and L."""
    _warn_fallback("the blockwise backward", _failure(exc))
    return blockwise_backward(q, k, v, out, lse, dout.contiguous(), **opts)


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
    """Exact attention softmax(Q K^T * scale + mask) V; q (B, H, Nq, D), k, v (B, Hkv, Nk, D).

    Query row i sits at position p = i + Nk - Nq and attends key j iff
    ``(not causal or j <= p)`` and ``(window == 0 or |p - j| < window or j < sinks)``:
    ``window`` keeps the ``window`` nearest keys on each side (with ``causal``: the
    key itself and the ``window - 1`` before it), ``sinks`` keeps the first ``sinks``
    keys visible to every query. ``scale`` defaults to 1/sqrt(D).

    ``impl``: "auto" (Triton on CUDA with a warned fallback, blockwise PyTorch
    elsewhere), "triton", "blockwise", "naive" or "sdpa".
    """
    kwargs = dict(causal=causal, window=window, sinks=sinks, scale=scale)
    chosen, reason = _plan(q, k, v, impl, causal=causal, window=window)
    if chosen == "triton" and impl == "auto":
        check_inputs(q, k, v, window, sinks, causal=causal)  # user errors are not failures
        try:
            return triton_attention(q, k, v, on_backward_failure=_blockwise_gradients, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # a compile or launch failure of the forward kernel
            chosen, reason = fallback_impl(q, k, causal=causal, window=window), _failure(exc)
    if reason is not None:
        _warn_fallback(chosen, reason)
    if chosen == "triton":
        return triton_attention(q, k, v, **kwargs)
    if chosen == "blockwise":
        return blockwise_attention(q, k, v, **kwargs)
    if chosen == "naive":
        return naive_attention(q, k, v, **kwargs)
    return sdpa_attention(q, k, v, **kwargs)
