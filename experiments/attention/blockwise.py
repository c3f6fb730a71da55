"""Blockwise attention in PyTorch: online softmax forward, recomputing backward.

The algorithm is FlashAttention-2 (Dao, 2023, "FlashAttention-2: Faster Attention
with Better Parallelism and Work Partitioning"; Dao et al., 2022, "FlashAttention")
written with PyTorch tensor ops instead of a fused kernel. The online softmax
(Milakov & Gimelshein, 2018, "Online normalizer calculation for softmax") is the
streaming trick: like a windowed aggregation over a stream, each query block keeps
a running max ``m``, a running sum ``l`` and an unnormalised output ``acc`` while
key/value blocks go past, and rescales them whenever the max grows:

    m_new = max(m, rowmax(S_j));  alpha = exp(m - m_new);  P_j = exp(S_j - m_new)
    l     = alpha * l + rowsum(P_j);  acc = alpha * acc + P_j V_j

At the end O = acc / l and the log-sum-exp L = m + log(l). Only O and L (O(N) per
head) are saved for backward, which recomputes each score tile from Q, K and L:

    P = exp(Q K^T * scale - L);  dV += P^T dO;  dP = dO V^T
    dS = P * (dP - rowsum(dO * O));  dQ += dS K * scale;  dK += dS^T Q * scale

The score tile is (block_q, block_k) at a time, never (Nq, Nk). Tiles that the mask
leaves empty (the future under ``causal``, keys outside the sliding window that
are not sinks) are skipped, and tiles the mask leaves whole skip the mask.

Queries may be fewer than keys (decoding with a KV cache; query row i sits at
position i + Nk - Nq) and may have more heads than keys and values (grouped-query
attention). For GQA the G = Hq // Hkv query heads that share a key/value head are
stacked as extra rows of one tile, (B, Hkv, G * block_q, D) against (B, Hkv,
block_k, D), so K and V are never repeated and dK, dV sum over the group for free.
Mask semantics are defined in ``reference.py``. Half-precision inputs are computed
in float32 and the output is cast back, as the fused kernels do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from experiments.attention.reference import allowed_mask, check_inputs, default_scale


@dataclass(frozen=True)
class BlockConfig:
    block_q: int = 128  # query rows per tile
    block_k: int = 128  # key/value rows per tile


DEFAULT_BLOCKS = BlockConfig()


def tile_status(
    p0: int, p1: int, k0: int, k1: int, *, causal: bool, window: int, sinks: int
) -> str:
    """Whether the mask keeps no pair ("skip"), every pair ("full") or some ("partial")
    of the tile with queries at absolute positions [p0, p1) and keys [k0, k1).

    Positions, not rows: query row i is at position i + Nk - Nq (see ``reference.py``).
    """
    gap = max(0, k0 - (p1 - 1), p0 - (k1 - 1))  # smallest |p - j| in the tile
    live = (not causal or k0 <= p1 - 1) and (window == 0 or gap < window or k0 < sinks)
    if not live:
        return "skip"
    # Every pair passes the window iff every non-sink key j >= max(k0, sinks) is near enough.
    k_far = max(k0, sinks)  # first key of the tile the window applies to
    widest = max(p1 - 1 - k_far, k1 - 1 - p0)  # largest |p - j| over those keys
    in_window = window == 0 or k_far >= k1 or widest < window
    full = (not causal or k1 - 1 <= p0) and in_window
    return "full" if full else "partial"


def _hidden(n_q, n_k, q0, q1, k0, k1, causal, window, sinks, device) -> torch.Tensor:
    """(bq, bk) mask of the pairs the attention mask hides in one tile (rows q0:q1)."""
    ok = allowed_mask(
        n_q,
        n_k,
        causal=causal,
        window=window,
        sinks=sinks,
        device=device,
        q_range=(q0, q1),
        k_range=(k0, k1),
    )
    return ok.logical_not_()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _group_rows(x: torch.Tensor, q0: int, q1: int, hkv: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows q0:q1 of x (B, Hq, Nq, ...) as (B, Hkv, G * bq, ...) in ``dtype``: the G query
    heads sharing one key/value head become extra rows of one tile."""
    b, hq = x.shape[:2]
    tile = x[:, :, q0:q1].to(dtype)  # (B, Hq, bq, ...)
    return tile.reshape(b, hkv, (hq // hkv) * (q1 - q0), *x.shape[3:])


def blockwise_forward(q, k, v, *, causal, window, sinks, scale, blocks=DEFAULT_BLOCKS):
    """Online-softmax forward on q (B, Hq, Nq, D), k, v (B, Hkv, Nk, D).

    Returns O (B, Hq, Nq, D) in the input dtype and L (B, Hq, Nq), the natural-log
    log-sum-exp of the scaled, masked scores, in float32 (float64 for float64 inputs).
    """
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g, offset = hq // hkv, nk - nq
    cdt = _compute_dtype(q.dtype)
    out = torch.empty(b, hkv, g, nq, d, dtype=q.dtype, device=q.device)  # (B, Hkv, G, Nq, D)
    lse = torch.empty(b, hkv, g, nq, dtype=cdt, device=q.device)  # (B, Hkv, G, Nq)
    neg_inf = float("-inf")
    for q0 in range(0, nq, blocks.block_q):
        q1 = min(nq, q0 + blocks.block_q)
        bq = q1 - q0
        qi = _group_rows(q, q0, q1, hkv, cdt) * scale  # (B, Hkv, G*bq, D)
        m = torch.full((b, hkv, g * bq), neg_inf, dtype=cdt, device=q.device)  # running max
        l_sum = torch.zeros((b, hkv, g * bq), dtype=cdt, device=q.device)  # running sum
        acc = torch.zeros((b, hkv, g * bq, d), dtype=cdt, device=q.device)  # unnormalised O
        for k0 in range(0, nk, blocks.block_k):
            k1 = min(nk, k0 + blocks.block_k)
            status = tile_status(
                q0 + offset, q1 + offset, k0, k1, causal=causal, window=window, sinks=sinks
            )
            if status == "skip":
                continue
            s = qi @ k[:, :, k0:k1].to(cdt).transpose(-2, -1)  # (B, Hkv, G*bq, bk)
            if status == "partial":
                hidden = _hidden(nq, nk, q0, q1, k0, k1, causal, window, sinks, q.device)
                s.view(b, hkv, g, bq, k1 - k0).masked_fill_(hidden, neg_inf)
            m_new = torch.maximum(m, s.amax(dim=-1))
            # A row can be fully masked in every tile seen so far; keep exp() away from -inf - -inf.
            m_safe = torch.where(m_new == neg_inf, 0.0, m_new)
            p = s.sub_(m_safe[..., None]).exp_()  # (B, Hkv, G*bq, bk), in s's storage
            alpha = torch.exp(m - m_safe)  # (B, Hkv, G*bq); 0 where m was -inf
            l_sum = alpha * l_sum + p.sum(dim=-1)
            acc = acc.mul_(alpha[..., None]).add_(p @ v[:, :, k0:k1].to(cdt))
            m = m_new
        out[:, :, :, q0:q1] = (acc / l_sum[..., None]).to(q.dtype).view(b, hkv, g, bq, d)
        lse[:, :, :, q0:q1] = (m + torch.log(l_sum)).view(b, hkv, g, bq)
    return out.view(b, hq, nq, d), lse.view(b, hq, nq)


def blockwise_backward(
    q, k, v, out, lse, dout, *, causal, window, sinks, scale, blocks=DEFAULT_BLOCKS
):
    """Recomputing backward. Returns dQ, dK, dV in the input dtype.

    ``out`` and ``dout`` are (B, Hq, Nq, D) and ``lse`` is the (B, Hq, Nq) natural-log
    log-sum-exp saved by the forward (any strides, including a stride-0 ``dout``).
    """
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g, offset = hq // hkv, nk - nq
    cdt = _compute_dtype(q.dtype)
    delta = (dout.to(cdt) * out.to(cdt)).sum(dim=-1)  # (B, Hq, Nq) = rowsum(dO * O)
    dq = torch.zeros(b, hkv, g, nq, d, dtype=cdt, device=q.device)  # (B, Hkv, G, Nq, D)
    dk = torch.zeros(b, hkv, nk, d, dtype=cdt, device=q.device)
    dv = torch.zeros(b, hkv, nk, d, dtype=cdt, device=q.device)
    q_tiles = [(q0, min(nq, q0 + blocks.block_q)) for q0 in range(0, nq, blocks.block_q)]
    for k0 in range(0, nk, blocks.block_k):
        k1 = min(nk, k0 + blocks.block_k)
        kj = k[:, :, k0:k1].to(cdt)  # (B, Hkv, bk, D)
        vj = v[:, :, k0:k1].to(cdt)
        for q0, q1 in q_tiles:
            status = tile_status(
                q0 + offset, q1 + offset, k0, k1, causal=causal, window=window, sinks=sinks
            )
            if status == "skip":
                continue
            bq = q1 - q0
            qi = _group_rows(q, q0, q1, hkv, cdt)  # (B, Hkv, G*bq, D)
            doi = _group_rows(dout, q0, q1, hkv, cdt)
            lse_i = _group_rows(lse, q0, q1, hkv, cdt)  # (B, Hkv, G*bq)
            delta_i = _group_rows(delta, q0, q1, hkv, cdt)
            s = (qi @ kj.transpose(-2, -1)).mul_(scale)  # (B, Hkv, G*bq, bk)
            p = s.sub_(lse_i[..., None]).exp_()  # probabilities, recomputed in place
            if status == "partial":
                hidden = _hidden(nq, nk, q0, q1, k0, k1, causal, window, sinks, q.device)
                p.view(b, hkv, g, bq, k1 - k0).masked_fill_(hidden, 0.0)
            dv[:, :, k0:k1] += p.transpose(-2, -1) @ doi  # sums over the G*bq rows
            dp = doi @ vj.transpose(-2, -1)  # (B, Hkv, G*bq, bk)
            ds = p.mul_(dp.sub_(delta_i[..., None]))  # dS, reusing p's storage
            dq[:, :, :, q0:q1] += (ds @ kj).mul_(scale).view(b, hkv, g, bq, d)
            dk[:, :, k0:k1] += (ds.transpose(-2, -1) @ qi).mul_(scale)
    return dq.view(b, hq, nq, d).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class BlockwiseAttention(torch.autograd.Function):
    """Autograd wrapper: saves Q, K, V, O and L (no (Nq, Nk) tensor) for backward."""

    @staticmethod
    def forward(ctx, q, k, v, causal, window, sinks, scale, blocks):
        out, lse = blockwise_forward(
            q, k, v, causal=causal, window=window, sinks=sinks, scale=scale, blocks=blocks
        )
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.opts = dict(causal=causal, window=window, sinks=sinks, scale=scale, blocks=blocks)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = blockwise_backward(q, k, v, out, lse, dout.contiguous(), **ctx.opts)
        return dq, dk, dv, None, None, None, None, None


def blockwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int = 0,
    sinks: int = 0,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> torch.Tensor:
    """Blockwise (FlashAttention-style) attention, differentiable.

    q (B, Hq, Nq, D), k and v (B, Hkv, Nk, D) with Hq a multiple of Hkv; returns
    (B, Hq, Nq, D). Mask semantics (bottom-right aligned) are in ``reference.py``.
    """
    check_inputs(q, k, v, window, sinks, causal=causal)
    blocks = BlockConfig(block_q or DEFAULT_BLOCKS.block_q, block_k or DEFAULT_BLOCKS.block_k)
    if blocks.block_q < 1 or blocks.block_k < 1:
        raise ValueError(f"block sizes must be >= 1, got {blocks}")
    scale = default_scale(q.shape[-1], scale)
    return BlockwiseAttention.apply(q, k, v, bool(causal), int(window), int(sinks), scale, blocks)


def blockwise_forward_with_lse(
    q, k, v, *, causal=False, window=0, sinks=0, scale=None, blocks=DEFAULT_BLOCKS
):
    """Forward only, returning (O, L); used by tests to check the saved log-sum-exp."""
    check_inputs(q, k, v, window, sinks, causal=causal)
    scale = default_scale(q.shape[-1], scale)
    with torch.no_grad():
        return blockwise_forward(
            q, k, v, causal=causal, window=window, sinks=sinks, scale=scale, blocks=blocks
        )
