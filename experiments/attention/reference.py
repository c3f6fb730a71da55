"""Reference attention: the mask semantics, naive attention and an SDPA wrapper.

Shapes: ``q`` is (B, Hq, Nq, D) and ``k``, ``v`` are (B, Hkv, Nk, D). ``Hq`` must be a
multiple of ``Hkv``: with ``G = Hq // Hkv``, query head ``h`` uses key/value head
``h // G`` (grouped-query attention, Ainslie et al., 2023, "GQA"; ``Hkv == 1`` is
multi-query attention, ``Hkv == Hq`` plain multi-head attention). The output is
(B, Hq, Nq, D).

Everything in this package shares one definition of which keys a query may see.
Queries are aligned to the *end* of the keys (bottom-right, as in FlashAttention-2
and KV-cache decoding): query row ``i`` (0 .. Nq-1) sits at absolute position
``p = i + (Nk - Nq)``, and it attends key ``j`` (0 .. Nk-1) iff

    (not causal or j <= p)  and  (window == 0 or |p - j| < window or j < sinks)

* ``causal``: no key from the future.
* ``window`` (sliding window, 0 = unlimited): only the ``window`` nearest keys
  on each side (with ``causal``, the key itself and the ``window - 1`` before it).
* ``sinks`` (attention sinks): the first ``sinks`` keys stay visible to every
  query whatever the window, as in StreamingLLM (Xiao et al., 2023,
  "Efficient Streaming Language Models with Attention Sinks"). Sinks only matter
  when ``window > 0``.

With ``Nq == Nk`` (self-attention) ``p = i``. With ``Nq == 1`` and ``causal`` the one
query is the newest token and sees every key (decoding with a KV cache). When
``causal`` or ``window > 0``, ``Nq <= Nk`` is required, so every query keeps at
least key ``j = p`` and no row of the softmax is empty; without a mask any
``Nq``, ``Nk`` are allowed.

``naive_attention`` materialises the full (Nq, Nk) score matrix, like the textbook
formula softmax(Q K^T * scale) V (Vaswani et al., 2017). It is the reference for
error and the baseline for memory. ``sdpa_attention`` calls PyTorch's
``scaled_dot_product_attention`` with the same mask, as the speed baseline.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    sinks: int,
    *,
    causal: bool = False,
) -> None:
    """Raise ValueError unless q (B, Hq, Nq, D), k and v (B, Hkv, Nk, D) and the mask are valid."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"expected {name} of shape (B, H, N, D), got {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(
            f"k and v must share one shape (B, Hkv, Nk, D); got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    (b, hq, nq, d), (bk, hkv, nk, dk) = q.shape, k.shape
    if b != bk:
        raise ValueError(f"q and k must share the batch size B; got {b} and {bk}")
    if d != dk:
        raise ValueError(f"q, k, v must share the head dim D; got {d} for q and {dk} for k, v")
    if hq < 1 or hkv < 1:
        raise ValueError(f"q and k, v need at least one head; got Hq={hq}, Hkv={hkv}")
    if hq % hkv != 0:
        raise ValueError(
            f"the query heads Hq={hq} must be a multiple of the key/value heads Hkv={hkv}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k, v must be on one device")
    if nq == 0 or nk == 0:
        raise ValueError(f"sequence lengths must be at least 1, got Nq={nq}, Nk={nk}")
    if window < 0 or sinks < 0:
        raise ValueError(f"window and sinks must be >= 0, got window={window}, sinks={sinks}")
    if has_mask(causal, window) and nq > nk:
        raise ValueError(
            f"with causal or a window, queries cannot outnumber keys; got Nq={nq} > Nk={nk}"
        )


def default_scale(head_dim: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def allowed_mask(
    n_q: int,
    n_k: int | None = None,
    *,
    causal: bool = False,
    window: int = 0,
    sinks: int = 0,
    device: torch.device | str | None = None,
    q_range: tuple[int, int] | None = None,
    k_range: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Boolean mask, True where query row i may attend key j (see the module docstring).

    ``n_k`` defaults to ``n_q`` (self-attention). By default the full (n_q, n_k) mask;
    ``q_range`` (query rows) / ``k_range`` (keys) = (start, stop) give one tile of it,
    which is how the blockwise implementation builds its masks. Rows are shifted to
    absolute positions by ``n_k - n_q`` here, so callers never apply the offset.
    """
    n_k = n_q if n_k is None else n_k
    q0, q1 = q_range or (0, n_q)
    k0, k1 = k_range or (0, n_k)
    p = torch.arange(q0, q1, device=device)[:, None] + (n_k - n_q)  # (bq, 1) positions
    j = torch.arange(k0, k1, device=device)[None, :]  # (1, bk)
    ok = torch.ones(q1 - q0, k1 - k0, dtype=torch.bool, device=device)
    if causal:
        ok &= j <= p
    if window > 0:
        ok &= ((p - j).abs() < window) | (j < sinks)
    return ok  # (bq, bk)


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
    """softmax(Q K^T * scale + mask) V in the inputs' dtype, materialising (B, Hq, Nq, Nk) scores."""
    check_inputs(q, k, v, window, sinks, causal=causal)
    nq, d = q.shape[-2], q.shape[-1]
    hq, hkv, nk = q.shape[1], k.shape[1], k.shape[2]
    if hq != hkv:  # GQA: each key/value head serves Hq // Hkv consecutive query heads
        k = k.repeat_interleave(hq // hkv, dim=1)  # (B, Hq, Nk, D)
        v = v.repeat_interleave(hq // hkv, dim=1)
    scale = default_scale(d, scale)
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, Hq, Nq, Nk)
    if has_mask(causal, window):
        mask = allowed_mask(nq, nk, causal=causal, window=window, sinks=sinks, device=q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (B, Hq, Nq, Nk)
    return probs @ v  # (B, Hq, Nq, D)


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

    Plain causal self-attention (Nq == Nk) uses ``is_causal`` (eligible for the flash
    backend). SDPA's ``is_causal`` aligns queries top-left when Nq != Nk, so causal
    with Nq != Nk, like any sliding window, gets an explicit boolean (Nq, Nk) mask,
    which rules the flash backend out. Hq != Hkv uses SDPA's ``enable_gqa``.
    """
    check_inputs(q, k, v, window, sinks, causal=causal)
    nq, nk = q.shape[-2], k.shape[-2]
    gqa = dict(enable_gqa=True) if q.shape[1] != k.shape[1] else {}
    if window > 0 or (causal and nq != nk):
        mask = allowed_mask(nq, nk, causal=causal, window=window, sinks=sinks, device=q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, **gqa)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, **gqa)
