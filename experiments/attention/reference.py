"""Reference attention: the mask semantics, naive attention and an SDPA wrapper.

Everything in this package shares one definition of which keys a query may see.
With queries and keys both indexed ``0 .. N-1``, query ``i`` attends key ``j`` iff

    (not causal or j <= i)  and  (window == 0 or |i - j| < window or j < sinks)

* ``causal``: no key from the future.
* ``window`` (sliding window, 0 = unlimited): only the ``window`` nearest keys
  on each side (with ``causal``, the key itself and the ``window - 1`` before it).
* ``sinks`` (attention sinks): the first ``sinks`` keys stay visible to every
  query whatever the window, as in StreamingLLM (Xiao et al., 2023,
  "Efficient Streaming Language Models with Attention Sinks"). Sinks only matter
  when ``window > 0``.

Every query keeps at least key ``j = i``, so no row of the softmax is empty.

``naive_attention`` materialises the full (N, N) score matrix, like the textbook
formula softmax(Q K^T * scale) V (Vaswani et al., 2017). It is the reference for
error and the baseline for memory. ``sdpa_attention`` calls PyTorch's
``scaled_dot_product_attention`` with the same mask, as the speed baseline.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, sinks: int
) -> None:
    """Raise ValueError unless q, k, v are (B, H, N, D) self-attention inputs with valid masks."""
    if q.dim() != 4:
        raise ValueError(f"expected q of shape (B, H, N, D), got {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k, v must share one shape (B, H, N, D); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k, v must be on one device")
    if q.shape[2] == 0:
        raise ValueError("sequence length N must be at least 1")
    if window < 0 or sinks < 0:
        raise ValueError(f"window and sinks must be >= 0, got window={window}, sinks={sinks}")


def default_scale(head_dim: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def allowed_mask(
    n: int,
    *,
    causal: bool = False,
    window: int = 0,
    sinks: int = 0,
    device: torch.device | str | None = None,
    q_range: tuple[int, int] | None = None,
    k_range: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Boolean mask, True where query i may attend key j (see the module docstring).

    By default the full (n, n) mask; ``q_range``/``k_range`` = (start, stop) give one
    tile of it, which is how the blockwise implementation builds its masks.
    """
    q0, q1 = q_range or (0, n)
    k0, k1 = k_range or (0, n)
    i = torch.arange(q0, q1, device=device)[:, None]  # (nq, 1)
    j = torch.arange(k0, k1, device=device)[None, :]  # (1, nk)
    ok = torch.ones(q1 - q0, k1 - k0, dtype=torch.bool, device=device)
    if causal:
        ok &= j <= i
    if window > 0:
        ok &= ((i - j).abs() < window) | (j < sinks)
    return ok  # (nq, nk)


def has_mask(causal: bool, window: int) -> bool:
    return causal or window > 0


def naive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int = 0,
    sinks: int = 0,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(Q K^T * scale + mask) V in the inputs' dtype, materialising (B, H, N, N) scores."""
    check_inputs(q, k, v, window, sinks)
    n, d = q.shape[-2], q.shape[-1]
    scale = default_scale(d, scale)
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, N, N)
    if has_mask(causal, window):
        mask = allowed_mask(n, causal=causal, window=window, sinks=sinks, device=q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (B, H, N, N)
    return probs @ v  # (B, H, N, D)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int = 0,
    sinks: int = 0,
    scale: float | None = None,
) -> torch.Tensor:
    """PyTorch's fused scaled_dot_product_attention with the same mask semantics.

    Plain causal uses ``is_causal`` (eligible for the flash backend); a sliding
    window needs an explicit boolean (N, N) mask, which rules the flash backend out.
    """
    check_inputs(q, k, v, window, sinks)
    n = q.shape[-2]
    if window > 0:
        mask = allowed_mask(n, causal=causal, window=window, sinks=sinks, device=q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
