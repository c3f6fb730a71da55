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

The score tile is (block_q, block_k) at a time, never (N, N). Tiles that the mask
leaves empty (the future under ``causal``, keys outside the sliding window that
are not sinks) are skipped, and tiles the mask leaves whole skip the mask.
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
    q0: int, q1: int, k0: int, k1: int, *, causal: bool, window: int, sinks: int
) -> str:
    """Whether the mask keeps no pair ("skip"), every pair ("full") or some ("partial")
    of the tile with queries [q0, q1) and keys [k0, k1)."""
    gap = max(0, k0 - (q1 - 1), q0 - (k1 - 1))  # smallest |i - j| in the tile
    live = (not causal or k0 <= q1 - 1) and (window == 0 or gap < window or k0 < sinks)
    if not live:
        return "skip"
    widest = max(q1 - 1 - k0, k1 - 1 - q0)  # largest |i - j| in the tile
    full = (not causal or k1 - 1 <= q0) and (window == 0 or widest < window or k1 - 1 < sinks)
    return "full" if full else "partial"


def _hidden(n, q0, q1, k0, k1, causal, window, sinks, device) -> torch.Tensor:
    """(bq, bk) mask of the pairs the attention mask hides in one tile."""
    ok = allowed_mask(
        n,
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


def blockwise_forward(q, k, v, *, causal, window, sinks, scale, blocks=DEFAULT_BLOCKS):
    """Online-softmax forward. Returns O (B, H, N, D) in the input dtype and L (B, H, N) float32+."""
    b, h, n, d = q.shape
    cdt = _compute_dtype(q.dtype)
    out = torch.empty_like(q)  # (B, H, N, D)
    lse = torch.empty(b, h, n, dtype=cdt, device=q.device)  # (B, H, N)
    neg_inf = float("-inf")
    for q0 in range(0, n, blocks.block_q):
        q1 = min(n, q0 + blocks.block_q)
        qi = q[:, :, q0:q1].to(cdt) * scale  # (B, H, bq, D)
        m = torch.full((b, h, q1 - q0), neg_inf, dtype=cdt, device=q.device)  # running max
        l_sum = torch.zeros((b, h, q1 - q0), dtype=cdt, device=q.device)  # running sum
        acc = torch.zeros((b, h, q1 - q0, d), dtype=cdt, device=q.device)  # unnormalised O
        for k0 in range(0, n, blocks.block_k):
            k1 = min(n, k0 + blocks.block_k)
            status = tile_status(q0, q1, k0, k1, causal=causal, window=window, sinks=sinks)
            if status == "skip":
                continue
            s = qi @ k[:, :, k0:k1].to(cdt).transpose(-2, -1)  # (B, H, bq, bk)
            if status == "partial":
                hidden = _hidden(n, q0, q1, k0, k1, causal, window, sinks, q.device)
                s.masked_fill_(hidden, neg_inf)
            m_new = torch.maximum(m, s.amax(dim=-1))
            # A row can be fully masked in every tile seen so far; keep exp() away from -inf - -inf.
            m_safe = torch.where(m_new == neg_inf, 0.0, m_new)
            p = s.sub_(m_safe[..., None]).exp_()  # (B, H, bq, bk), in s's storage
            alpha = torch.exp(m - m_safe)  # (B, H, bq); 0 where m was -inf
            l_sum = alpha * l_sum + p.sum(dim=-1)
            acc = acc.mul_(alpha[..., None]).add_(p @ v[:, :, k0:k1].to(cdt))
            m = m_new
        out[:, :, q0:q1] = (acc / l_sum[..., None]).to(q.dtype)
        lse[:, :, q0:q1] = m + torch.log(l_sum)
    return out, lse


def blockwise_backward(
    q, k, v, out, lse, dout, *, causal, window, sinks, scale, blocks=DEFAULT_BLOCKS
):
    """Recomputing backward. Returns dQ, dK, dV in the input dtype."""
    b, h, n, d = q.shape
    cdt = _compute_dtype(q.dtype)
    delta = (dout.to(cdt) * out.to(cdt)).sum(dim=-1)  # (B, H, N) = rowsum(dO * O)
    dq = torch.zeros(b, h, n, d, dtype=cdt, device=q.device)
    dk = torch.zeros(b, h, n, d, dtype=cdt, device=q.device)
    dv = torch.zeros(b, h, n, d, dtype=cdt, device=q.device)
    for k0 in range(0, n, blocks.block_k):
        k1 = min(n, k0 + blocks.block_k)
        kj = k[:, :, k0:k1].to(cdt)  # (B, H, bk, D)
        vj = v[:, :, k0:k1].to(cdt)
        for q0 in range(0, n, blocks.block_q):
            q1 = min(n, q0 + blocks.block_q)
            status = tile_status(q0, q1, k0, k1, causal=causal, window=window, sinks=sinks)
            if status == "skip":
                continue
            qi = q[:, :, q0:q1].to(cdt)  # (B, H, bq, D)
            doi = dout[:, :, q0:q1].to(cdt)
            s = (qi @ kj.transpose(-2, -1)).mul_(scale)  # (B, H, bq, bk)
            p = s.sub_(lse[:, :, q0:q1, None]).exp_()  # probabilities, recomputed in place
            if status == "partial":
                hidden = _hidden(n, q0, q1, k0, k1, causal, window, sinks, q.device)
                p.masked_fill_(hidden, 0.0)
            dv[:, :, k0:k1] += p.transpose(-2, -1) @ doi
            dp = doi @ vj.transpose(-2, -1)  # (B, H, bq, bk)
            ds = p.mul_(dp.sub_(delta[:, :, q0:q1, None]))  # dS, reusing p's storage
            dq[:, :, q0:q1] += (ds @ kj).mul_(scale)
            dk[:, :, k0:k1] += (ds.transpose(-2, -1) @ qi).mul_(scale)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class BlockwiseAttention(torch.autograd.Function):
    """Autograd wrapper: saves Q, K, V, O and L (no (N, N) tensor) for backward."""

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
    """Blockwise (FlashAttention-style) attention on (B, H, N, D) tensors, differentiable."""
    check_inputs(q, k, v, window, sinks)
    blocks = BlockConfig(block_q or DEFAULT_BLOCKS.block_q, block_k or DEFAULT_BLOCKS.block_k)
    if blocks.block_q < 1 or blocks.block_k < 1:
        raise ValueError(f"block sizes must be >= 1, got {blocks}")
    scale = default_scale(q.shape[-1], scale)
    return BlockwiseAttention.apply(q, k, v, causal, int(window), int(sinks), scale, blocks)


def blockwise_forward_with_lse(
    q, k, v, *, causal=False, window=0, sinks=0, scale=None, blocks=DEFAULT_BLOCKS
):
    """Forward only, returning (O, L); used by tests to check the saved log-sum-exp."""
    check_inputs(q, k, v, window, sinks)
    scale = default_scale(q.shape[-1], scale)
    with torch.no_grad():
        return blockwise_forward(
            q, k, v, causal=causal, window=window, sinks=sinks, scale=scale, blocks=blocks
        )
