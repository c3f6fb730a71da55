"""Fused attention in Triton: FlashAttention-2 forward and backward with the same masks.

Algorithm: FlashAttention-2 (Dao, 2023), as in blockwise.py, but each tile lives in
on-chip memory (registers/shared memory) and one kernel launch covers all tiles.
The structure follows the Triton fused-attention tutorial (Tillet et al.), written
here from scratch with plain pointer arithmetic so it also runs under the Triton
interpreter (``TRITON_INTERPRET=1``, CPU tensors) for testing without a GPU.

Kernels (one program per tile row, grid = (row blocks, B * H)):

* ``_attn_fwd``: one query block; loops over the key/value blocks that the mask
  can reach (the sink blocks, then the causal/sliding-window range), keeping the
  online-softmax state (m, l, acc) in float32; writes O and the log-sum-exp L.
* ``_attn_bwd_dkdv``: one key/value block; loops over the query blocks that can
  see it, recomputing P = exp(Q K^T * scale - L) and accumulating dK and dV.
* ``_attn_bwd_dq``: one query block; loops over its key/value blocks like the
  forward and accumulates dQ. Splitting dQ from dK/dV avoids atomics.

Inputs may be float16, bfloat16 (GPU only; the interpreter has no bfloat16) or
float32. float32 uses IEEE products in ``tl.dot`` (no TF32), to stay within 1e-5
of a float64 reference. Ragged N and head dims that are not a power of two are
handled with load/store masks. Mask semantics are defined in ``reference.py``.

Triton is imported when this module is imported; import it lazily
(``experiments.attention`` does) so CPU-only users without Triton are unaffected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from experiments.attention.reference import check_inputs, default_scale


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# ---------------------------------------------------------------------------------------
# Kernels (kept out of the formatter: one argument per line would bury the code)
# ---------------------------------------------------------------------------------------

# fmt: off


@triton.jit
def _allowed(offs_m, offs_n, N, WINDOW, SINKS, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """(BLOCK_M, BLOCK_N) mask: query row offs_m may attend key offs_n, both inside [0, N)."""
    i = offs_m[:, None]
    j = offs_n[None, :]
    ok = (i < N) & (j < N)
    if CAUSAL:
        ok = ok & (j <= i)
    if HAS_WINDOW:
        dist = tl.where(i >= j, i - j, j - i)
        ok = ok & ((dist < WINDOW) | (j < SINKS))
    return ok


@triton.jit
def _kv_ranges(start_m, N, WINDOW, SINKS, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Key blocks a query block [start_m, start_m + BLOCK_M) can reach.

    Returns (sink_hi, lo, hi): sink blocks [0, sink_hi) and the main range [lo, hi),
    all multiples of BLOCK_N and disjoint (sink_hi <= lo).
    """
    hi = N
    if CAUSAL:
        hi = tl.minimum(N, start_m + BLOCK_M)
    lo = 0
    sink_hi = 0
    if HAS_WINDOW:
        if not CAUSAL:
            hi = tl.minimum(N, start_m + BLOCK_M - 1 + WINDOW)
        lo = tl.maximum(0, start_m - WINDOW + 1)
        lo = (lo // BLOCK_N) * BLOCK_N
        sink_hi = tl.minimum(lo, tl.cdiv(SINKS, BLOCK_N) * BLOCK_N)
    return sink_hi, lo, hi


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, offs_m, start, stop,
                    stride_kn, stride_kd, stride_vn, stride_vd, sm_scale, N, D, WINDOW, SINKS,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                    HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    """Online-softmax update of (acc, l, m) over key blocks [start, stop)."""
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(start, stop, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < N) & (offs_d[None, :] < D)
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                    mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale  # (BLOCK_M, BLOCK_N)
        ok = _allowed(offs_m, offs_n, N, WINDOW, SINKS, CAUSAL, HAS_WINDOW)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # fully masked rows so far
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, Out, LSE, sm_scale,
              stride_qb, stride_qh, stride_qn, stride_qd,
              stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_ob, stride_oh, stride_on, stride_od,
              H, N, D, WINDOW, SINKS,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    row_mask = (offs_m[:, None] < N) & (offs_d[None, :] < D)
    q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=row_mask, other=0.0)  # (BLOCK_M, BLOCK_D)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    sink_hi, lo, hi = _kv_ranges(start_m, N, WINDOW, SINKS, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, offs_m, 0, sink_hi,
                                    stride_kn, stride_kd, stride_vn, stride_vd, sm_scale,
                                    N, D, WINDOW, SINKS, BLOCK_N, BLOCK_D, CAUSAL, HAS_WINDOW,
                                    PRECISION)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, offs_m, lo, hi,
                                    stride_kn, stride_kd, stride_vn, stride_vd, sm_scale,
                                    N, D, WINDOW, SINKS, BLOCK_N, BLOCK_D, CAUSAL, HAS_WINDOW,
                                    PRECISION)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # only padding rows (offs_m >= N) can have l = 0
    out = acc / l_safe[:, None]
    o_base = Out + off_b * stride_ob + off_h * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=row_mask)
    lse = m_i + tl.log(l_safe)
    tl.store(LSE + off_bh * N + offs_m, lse, mask=offs_m < N)  # LSE is contiguous (B*H, N)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, sm_scale,
                   stride_b, stride_h, stride_n, stride_d,
                   H, N, D, WINDOW, SINKS,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    """dK, dV for one key block. All of Q, K, V, dO, dK, dV share one contiguous layout."""
    start_n = tl.program_id(0) * BLOCK_N
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    base = off_b * stride_b + off_h * stride_h
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < N) & (offs_d[None, :] < D)
    kv_off = base + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d
    k = tl.load(K + kv_off, mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
    v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # Query blocks that can see keys [start_n, start_n + BLOCK_N).
    lo = 0
    hi = N
    if CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M
    if HAS_WINDOW:
        has_sinks = start_n < SINKS  # sink keys are seen by every (later) query
        hi = tl.where(has_sinks, N, tl.minimum(N, start_n + BLOCK_N - 1 + WINDOW))
        if not CAUSAL:
            lo = tl.where(has_sinks, 0, (tl.maximum(0, start_n - WINDOW + 1) // BLOCK_M) * BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_mask = (offs_m[:, None] < N) & (offs_d[None, :] < D)
        q_off = base + offs_m[:, None] * stride_n + offs_d[None, :] * stride_d
        q = tl.load(Q + q_off, mask=row_mask, other=0.0)  # (BLOCK_M, BLOCK_D)
        do = tl.load(DO + q_off, mask=row_mask, other=0.0)
        lse = tl.load(LSE + off_bh * N + offs_m, mask=offs_m < N, other=0.0)
        delta = tl.load(DELTA + off_bh * N + offs_m, mask=offs_m < N, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale  # (BLOCK_M, BLOCK_N)
        ok = _allowed(offs_m, offs_n, N, WINDOW, SINKS, CAUSAL, HAS_WINDOW)
        p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)
        dv = tl.dot(tl.trans(p).to(do.dtype), do, dv, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dk = tl.dot(tl.trans(ds).to(q.dtype), q, dk, input_precision=PRECISION)
    dk = dk * sm_scale
    tl.store(DK + kv_off, dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse, delta, K, V, base, offs_m, start, stop,
                       stride_n, stride_d, sm_scale, N, D, WINDOW, SINKS,
                       BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                       HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(start, stop, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < N) & (offs_d[None, :] < D)
        kv_off = base + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d
        k = tl.load(K + kv_off, mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
        v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale
        ok = _allowed(offs_m, offs_n, N, WINDOW, SINKS, CAUSAL, HAS_WINDOW)
        p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, sm_scale,
                 stride_b, stride_h, stride_n, stride_d,
                 H, N, D, WINDOW, SINKS,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    """dQ for one query block, over the same key blocks as the forward."""
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    base = off_b * stride_b + off_h * stride_h
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_mask = (offs_m[:, None] < N) & (offs_d[None, :] < D)
    q_off = base + offs_m[:, None] * stride_n + offs_d[None, :] * stride_d
    q = tl.load(Q + q_off, mask=row_mask, other=0.0)
    do = tl.load(DO + q_off, mask=row_mask, other=0.0)
    lse = tl.load(LSE + off_bh * N + offs_m, mask=offs_m < N, other=0.0)
    delta = tl.load(DELTA + off_bh * N + offs_m, mask=offs_m < N, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    sink_hi, lo, hi = _kv_ranges(start_m, N, WINDOW, SINKS, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, K, V, base, offs_m, 0, sink_hi,
                            stride_n, stride_d, sm_scale, N, D, WINDOW, SINKS,
                            BLOCK_N, BLOCK_D, CAUSAL, HAS_WINDOW, PRECISION)
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, K, V, base, offs_m, lo, hi,
                            stride_n, stride_d, sm_scale, N, D, WINDOW, SINKS,
                            BLOCK_N, BLOCK_D, CAUSAL, HAS_WINDOW, PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + q_off, dq.to(DQ.dtype.element_ty), mask=row_mask)


# fmt: on

# ---------------------------------------------------------------------------------------
# Launch configuration and autograd wrapper
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def kernel_config(dtype: torch.dtype, block_d: int, backward: bool) -> KernelConfig:
    """One fixed launch configuration (no autotuning, so the interpreter can run it too).

    GPU choices follow common FlashAttention-2 Triton settings; they were not tuned
    on hardware here. float32 tiles are twice as large in bytes, so they are smaller.
    """
    if interpreting():
        return KernelConfig(16, 16, 1, 1)  # small tiles keep the CPU interpreter quick
    if backward:
        if dtype == torch.float32 and block_d > 64:
            return KernelConfig(32, 32, 8, 2)
        if dtype == torch.float32 or block_d > 64:
            return KernelConfig(32, 64, 4 if block_d <= 64 else 8, 2)
        return KernelConfig(64, 64, 4, 2)
    if dtype == torch.float32:
        return KernelConfig(64, 32, 4, 2)
    return KernelConfig(128, 64, 4 if block_d <= 64 else 8, 3)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # "tf32" is ignored for 16-bit inputs


def _check_device(q: torch.Tensor) -> None:
    if not q.is_cuda and not interpreting():
        raise ValueError(
            "triton attention needs CUDA tensors (or TRITON_INTERPRET=1 with CPU tensors)"
        )
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"triton attention supports float16, bfloat16 and float32, not {q.dtype}")
    if q.shape[-1] > 256:
        raise ValueError(f"triton attention supports head_dim <= 256, got {q.shape[-1]}")


def triton_forward(q, k, v, *, causal, window, sinks, scale):
    """Launch ``_attn_fwd``. Returns O (B, H, N, D) and L (B, H, N) float32."""
    b, h, n, d = q.shape
    block_d = max(16, triton.next_power_of_2(d))
    cfg = kernel_config(q.dtype, block_d, backward=False)
    out = torch.empty_like(q)
    lse = torch.empty(b, h, n, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(n, cfg.block_m), b * h)
    _attn_fwd[grid](
        q,
        k,
        v,
        out,
        lse,
        scale,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        h,
        n,
        d,
        window,
        sinks,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_D=block_d,
        CAUSAL=causal,
        HAS_WINDOW=window > 0,
        PRECISION=_precision(q.dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out, lse


def triton_backward(q, k, v, out, lse, dout, *, causal, window, sinks, scale):
    """Launch the two backward kernels. q, k, v, out, dout must be contiguous."""
    b, h, n, d = q.shape
    block_d = max(16, triton.next_power_of_2(d))
    cfg = kernel_config(q.dtype, block_d, backward=True)
    delta = (dout.float() * out.float()).sum(dim=-1).contiguous()  # (B, H, N) = rowsum(dO * O)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    common = dict(
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_D=block_d,
        CAUSAL=causal,
        HAS_WINDOW=window > 0,
        PRECISION=_precision(q.dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    _attn_bwd_dkdv[(triton.cdiv(n, cfg.block_n), b * h)](
        q, k, v, dout, lse, delta, dk, dv, scale, *q.stride(), h, n, d, window, sinks, **common
    )
    _attn_bwd_dq[(triton.cdiv(n, cfg.block_m), b * h)](
        q, k, v, dout, lse, delta, dq, scale, *q.stride(), h, n, d, window, sinks, **common
    )
    return dq, dk, dv


class TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, window, sinks, scale):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse = triton_forward(q, k, v, causal=causal, window=window, sinks=sinks, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.opts = dict(causal=causal, window=window, sinks=sinks, scale=scale)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = triton_backward(q, k, v, out, lse, dout.contiguous(), **ctx.opts)
        return dq, dk, dv, None, None, None, None


def triton_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int = 0,
    sinks: int = 0,
    scale: float | None = None,
) -> torch.Tensor:
    """Fused Triton attention on (B, H, N, D) tensors, differentiable."""
    check_inputs(q, k, v, window, sinks)
    _check_device(q)
    scale = default_scale(q.shape[-1], scale)
    return TritonAttention.apply(q, k, v, bool(causal), int(window), int(sinks), scale)


def triton_forward_with_lse(q, k, v, *, causal=False, window=0, sinks=0, scale=None):
    """Forward only, returning (O, L); used by tests to check the saved log-sum-exp."""
    check_inputs(q, k, v, window, sinks)
    _check_device(q)
    scale = default_scale(q.shape[-1], scale)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return triton_forward(
        q, k, v, causal=bool(causal), window=int(window), sinks=int(sinks), scale=scale
    )
