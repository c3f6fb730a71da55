"""Fused attention in Triton: FlashAttention-2 forward and backward with the same masks.

Algorithm: FlashAttention-2 (Dao, 2023), as in blockwise.py, but each tile lives in
on-chip memory and one kernel launch covers all tiles. The structure follows the
Triton fused-attention tutorial (Tillet et al.), written here from scratch with
plain pointer arithmetic so it also runs under the Triton interpreter
(``TRITON_INTERPRET=1``, CPU tensors) for testing without a GPU.

Shapes: q (B, H, Nq, D); k, v (B, Hkv, Nk, D) with H a multiple of Hkv (grouped-query
attention: query head h reads key/value head h // (H / Hkv)). Query row i sits at
position i + Nk - Nq (a KV cache: the queries are the last Nq positions), so a
causal mask is aligned bottom-right. Mask semantics are defined in ``reference.py``.

Kernels (1-D grids, so no grid axis limits B * H; pointer offsets are 64-bit per head):

* ``_attn_fwd``: one query block. Its key blocks are split by the mask into masked
  edges (sink blocks, the window's left edge, the diagonal, ragged ends) and a fully
  visible middle that runs without any mask arithmetic. Online softmax in base 2:
  log2(e) is folded into the score scale so each step is one FMA and one ``exp2``.
  Writes O and the natural-log log-sum-exp L.
* ``_attn_bwd_delta``: delta = rowsum(dO * O), the backward's per-row constant.
* ``_attn_bwd_dkdv``: one key/value block, looping over the query heads of its group
  and the query blocks that can see it. It computes S^T = K Q^T directly, so P^T
  and dS^T come out in the layout the dK and dV products need (no transposes of
  register tiles).
* ``_attn_bwd_dq``: one query block over the same key blocks as the forward;
  splitting dQ from dK/dV avoids atomics.

Inputs may be float16, bfloat16 (GPU only: the interpreter's bfloat16 dot is wrong)
or float32; float32 products use three-pass TF32 (``tf32x3``: tensor cores at close
to float32 accuracy). Inputs are read through their strides (no copies, and
nothing extra saved for backward); a stride-0 upstream gradient is read as is.
Launch configurations are autotuned on CUDA among candidates that compile without
register spills for sm_90a (``compile_report.py`` checks them); the interpreter
uses one fixed small configuration.

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

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256
MAX_FLOAT32_HEAD_DIM = 128  # float32 tiles at D = 256 spill kilobytes per thread
SPAN_LIMIT = 2**31  # elements one head may span: in-head offsets are 32-bit


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# ---------------------------------------------------------------------------------------
# Kernels (kept out of the formatter: one argument per line would bury the code)
# ---------------------------------------------------------------------------------------

# fmt: off


@triton.jit
def _visible(i, j, N_Q, N_K, WINDOW, SINKS, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Query rows i may attend keys j (broadcast tensors of row and key indices)."""
    p = i + (N_K - N_Q)  # the query's position among the keys
    ok = (i < N_Q) & (j < N_K)
    if CAUSAL:
        ok = ok & (j <= p)
    if HAS_WINDOW:
        dist = tl.where(p >= j, p - j, j - p)
        ok = ok & ((dist < WINDOW) | (j < SINKS))
    return ok


@triton.jit
def _key_blocks(start_m, N_Q, N_K, WINDOW, SINKS, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Key blocks query rows [start_m, start_m + BLOCK_M) can reach, split by the mask.

    Returns (sink_hi, lo, full_lo, full_hi, hi), all block starts multiples of BLOCK_N:
    masked blocks [0, sink_hi) and [lo, full_lo), unmasked [full_lo, full_hi) (every
    query of the block sees every key of those), masked [full_hi, hi).
    """
    p_first = start_m + N_K - N_Q
    p_last = tl.minimum(start_m + BLOCK_M, N_Q) - 1 + N_K - N_Q  # last real row
    hi = N_K
    if CAUSAL:
        hi = tl.minimum(N_K, p_last + 1)
    lo = 0
    sink_hi = 0
    if HAS_WINDOW:
        sink_cap = hi  # sink keys past the causal limit are still invisible
        if not CAUSAL:
            hi = tl.minimum(N_K, p_last + WINDOW)
        lo = (tl.maximum(0, p_first - WINDOW + 1) // BLOCK_N) * BLOCK_N
        sink_end = tl.cdiv(SINKS, BLOCK_N) * BLOCK_N
        sink_hi = tl.minimum(sink_end, lo)
        hi = tl.maximum(hi, tl.minimum(sink_end, sink_cap))  # sinks beyond the window
    # Keys [j_lo, j_hi) are visible to every row of the block.
    j_lo = 0
    j_hi = N_K
    if CAUSAL:
        j_hi = tl.minimum(j_hi, p_first + 1)
    if HAS_WINDOW:
        j_lo = tl.maximum(0, p_last - WINDOW + 1)
        j_hi = tl.minimum(j_hi, p_first + WINDOW)
    full_lo = tl.minimum(tl.maximum(tl.cdiv(j_lo, BLOCK_N) * BLOCK_N, lo), hi)
    full_hi = tl.maximum(tl.minimum((j_hi // BLOCK_N) * BLOCK_N, hi), full_lo)
    return sink_hi, lo, full_lo, full_hi, hi


@triton.jit
def _query_blocks(start_n, N_Q, N_K, WINDOW, SINKS, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Query blocks that can see keys [start_n, start_n + BLOCK_N), split by the mask.

    Returns (lo, full_lo, full_hi, hi) in query rows, multiples of BLOCK_M: masked
    [lo, full_lo), unmasked [full_lo, full_hi), masked [full_hi, hi).
    """
    shift = N_K - N_Q  # row i is at position i + shift
    n_last = tl.minimum(start_n + BLOCK_N, N_K) - 1
    lo = 0
    hi = N_Q
    if CAUSAL:
        lo = (tl.maximum(0, start_n - shift) // BLOCK_M) * BLOCK_M
    i_lo = 0
    i_hi = N_Q
    if CAUSAL:
        i_lo = n_last - shift
    if HAS_WINDOW:
        if start_n >= SINKS:  # sink keys are seen by every (causally later) query
            hi = tl.maximum(0, tl.minimum(N_Q, n_last + WINDOW - shift))
            if not CAUSAL:
                lo = (tl.maximum(0, start_n - WINDOW + 1 - shift) // BLOCK_M) * BLOCK_M
        if n_last >= SINKS:  # not every key of the block is a sink
            i_hi = tl.minimum(i_hi, start_n + WINDOW - shift)
            if not CAUSAL:
                i_lo = tl.maximum(i_lo, n_last - WINDOW + 1 - shift)
    hi = tl.maximum(hi, lo)
    full_lo = tl.minimum(tl.maximum(tl.cdiv(tl.maximum(i_lo, 0), BLOCK_M) * BLOCK_M, lo), hi)
    full_hi = tl.maximum(tl.minimum((tl.maximum(i_hi, 0) // BLOCK_M) * BLOCK_M, hi), full_lo)
    return lo, full_lo, full_hi, hi


@triton.jit
def _fwd_steps(acc, l_i, m_i, q, k_base, v_base, offs_m, start, stop, jump_at, jump_by,
               stride_kn, stride_kd, stride_vn, stride_vd, qk_scale, N_Q, N_K, WINDOW, SINKS,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
               CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, MASKED: tl.constexpr,
               PRECISION: tl.constexpr):
    """Online-softmax update of (acc, l, m) over key blocks x in [start, stop), each read
    at x + jump_by once x >= jump_at (two disjoint block ranges in one loop)."""
    offs_d = tl.arange(0, BLOCK_D)
    for x in range(start, stop, BLOCK_N):
        start_n = tl.where(x >= jump_at, x + jump_by, x)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = offs_d[None, :] < HEAD_DIM
        if MASKED:
            kv_mask = kv_mask & (offs_n[:, None] < N_K)
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                    mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        if MASKED:
            ok = _visible(offs_m[:, None], offs_n[None, :], N_Q, N_K, WINDOW, SINKS, CAUSAL,
                          HAS_WINDOW)
            s = tl.where(ok, s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            p = tl.exp2(s * qk_scale - m_new[:, None])  # one FMA per score
            alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, Out, LSE, qk_scale,
              stride_qb, stride_qh, stride_qn, stride_qd,
              stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_ob, stride_oh, stride_on, stride_od,
              H, GROUP, N_Q, N_K, WINDOW, SINKS, TUNE_NQ, TUNE_NK,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    # Program ids run over query blocks fastest (one head's blocks share K, V in L2),
    # last block first: under a causal mask the longest rows start first.
    pid = tl.program_id(0)
    n_m = tl.cdiv(N_Q, BLOCK_M)
    start_m = (n_m - 1 - pid % n_m) * BLOCK_M
    off_bh = (pid // n_m).to(tl.int64)
    off_b = off_bh // H
    off_h = off_bh % H
    off_hk = off_h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_base = K + off_b * stride_kb + off_hk * stride_kh
    v_base = V + off_b * stride_vb + off_hk * stride_vh
    row_mask = (offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=row_mask, other=0.0)  # (BLOCK_M, BLOCK_D)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max, base 2
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    sink_hi, lo, full_lo, full_hi, hi = _key_blocks(start_m, N_Q, N_K, WINDOW, SINKS,
                                                    BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    if HAS_WINDOW:  # sink blocks, then the window's left edge (none without a window)
        acc, l_i, m_i = _fwd_steps(acc, l_i, m_i, q, k_base, v_base, offs_m,
                                   0, sink_hi + full_lo - lo, sink_hi, lo - sink_hi,
                                   stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                                   N_Q, N_K, WINDOW, SINKS, BLOCK_N, BLOCK_D, HEAD_DIM,
                                   CAUSAL, HAS_WINDOW, True, PRECISION)
    acc, l_i, m_i = _fwd_steps(acc, l_i, m_i, q, k_base, v_base, offs_m,
                               full_lo, full_hi, full_hi, 0,
                               stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                               N_Q, N_K, WINDOW, SINKS, BLOCK_N, BLOCK_D, HEAD_DIM,
                               CAUSAL, HAS_WINDOW, False, PRECISION)
    acc, l_i, m_i = _fwd_steps(acc, l_i, m_i, q, k_base, v_base, offs_m,
                               full_hi, hi, hi, 0,
                               stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                               N_Q, N_K, WINDOW, SINKS, BLOCK_N, BLOCK_D, HEAD_DIM,
                               CAUSAL, HAS_WINDOW, True, PRECISION)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # only padding rows (offs_m >= N_Q) see no key
    out = acc / l_safe[:, None]
    o_base = Out + off_b * stride_ob + off_h * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=row_mask)
    lse = (m_i + tl.log2(l_safe)) / 1.4426950408889634  # natural log
    tl.store(LSE + off_bh * N_Q + offs_m, lse, mask=offs_m < N_Q)  # LSE is (B*H, N_Q)


@triton.jit
def _attn_bwd_delta(Out, DO, DELTA,
                    stride_ob, stride_oh, stride_on, stride_od,
                    stride_dob, stride_doh, stride_don, stride_dod,
                    H, N_Q, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O) in float32, (B*H, N_Q)."""
    pid = tl.program_id(0)
    n_m = tl.cdiv(N_Q, BLOCK_M)
    start_m = (pid % n_m) * BLOCK_M
    off_bh = (pid // n_m).to(tl.int64)
    off_b = off_bh // H
    off_h = off_bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(Out + off_b * stride_ob + off_h * stride_oh
                + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od, mask=mask, other=0.0)
    do = tl.load(DO + off_b * stride_dob + off_h * stride_doh
                 + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + off_bh * N_Q + offs_m, delta, mask=offs_m < N_Q)


@triton.jit
def _dkdv_steps(dk, dv, k, v, q_base, do_base, lse_base, delta_base, offs_n, start, stop,
                stride_qn, stride_qd, stride_don, stride_dod, qk_scale, N_Q, N_K, WINDOW, SINKS,
                BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, MASKED: tl.constexpr,
                PRECISION: tl.constexpr):
    """Accumulate dK, dV of one key block over query blocks [start, stop)."""
    offs_d = tl.arange(0, BLOCK_D)
    for start_m in range(start, stop, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N_Q
        d_ok = offs_d < HEAD_DIM
        qT = tl.load(q_base + offs_d[:, None] * stride_qd + offs_m[None, :] * stride_qn,
                     mask=d_ok[:, None] & row_ok[None, :], other=0.0)  # (BLOCK_D, BLOCK_M)
        do = tl.load(do_base + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod,
                     mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
        # Padding rows get L = +inf, so their probabilities are exactly 0.
        lse2 = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf")) * 1.4426950408889634
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        sT = tl.dot(k, qT, input_precision=PRECISION)  # (BLOCK_N, BLOCK_M) = K Q^T
        pT = tl.exp2(sT * qk_scale - lse2[None, :])
        if MASKED:
            ok = _visible(offs_m[None, :], offs_n[:, None], N_Q, N_K, WINDOW, SINKS, CAUSAL,
                          HAS_WINDOW)
            pT = tl.where(ok, pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, qk_scale, sm_scale,
                   stride_qb, stride_qh, stride_qn, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_dob, stride_doh, stride_don, stride_dod,
                   stride_dkb, stride_dkh, stride_dkn, stride_dkd,
                   H, GROUP, N_Q, N_K, WINDOW, SINKS, TUNE_NQ, TUNE_NK,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    """dK, dV for one key/value block, summed over the query heads of its group.
    DK and DV share one layout (both are allocated here)."""
    pid = tl.program_id(0)
    n_n = tl.cdiv(N_K, BLOCK_N)
    start_n = (pid % n_n) * BLOCK_N
    off_bhk = (pid // n_n).to(tl.int64)
    h_kv = H // GROUP
    off_b = off_bhk // h_kv
    off_hk = off_bhk % h_kv
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < N_K) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(K + off_b * stride_kb + off_hk * stride_kh
                + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
    v = tl.load(V + off_b * stride_vb + off_hk * stride_vh
                + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo, full_lo, full_hi, hi = _query_blocks(start_n, N_Q, N_K, WINDOW, SINKS, BLOCK_M, BLOCK_N,
                                             CAUSAL, HAS_WINDOW)
    for g in range(0, GROUP):
        off_h = off_hk * GROUP + g
        q_base = Q + off_b * stride_qb + off_h * stride_qh
        do_base = DO + off_b * stride_dob + off_h * stride_doh
        row_base = (off_b * H + off_h) * N_Q
        dk, dv = _dkdv_steps(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base,
                             offs_n, lo, full_lo, stride_qn, stride_qd, stride_don, stride_dod,
                             qk_scale, N_Q, N_K, WINDOW, SINKS, BLOCK_M, BLOCK_D, HEAD_DIM,
                             CAUSAL, HAS_WINDOW, True, PRECISION)
        dk, dv = _dkdv_steps(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base,
                             offs_n, full_lo, full_hi, stride_qn, stride_qd, stride_don, stride_dod,
                             qk_scale, N_Q, N_K, WINDOW, SINKS, BLOCK_M, BLOCK_D, HEAD_DIM,
                             CAUSAL, HAS_WINDOW, False, PRECISION)
        dk, dv = _dkdv_steps(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base,
                             offs_n, full_hi, hi, stride_qn, stride_qd, stride_don, stride_dod,
                             qk_scale, N_Q, N_K, WINDOW, SINKS, BLOCK_M, BLOCK_D, HEAD_DIM,
                             CAUSAL, HAS_WINDOW, True, PRECISION)
    out_off = (off_b * stride_dkb + off_hk * stride_dkh
               + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd)
    tl.store(DK + out_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_steps(dq, q, do, lse2, delta, k_base, v_base, offs_m, start, stop, jump_at, jump_by,
              stride_kn, stride_kd, stride_vn, stride_vd, qk_scale, N_Q, N_K, WINDOW, SINKS,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, MASKED: tl.constexpr,
              PRECISION: tl.constexpr):
    """Accumulate dQ of one query block over key blocks, as in _fwd_steps."""
    offs_d = tl.arange(0, BLOCK_D)
    for x in range(start, stop, BLOCK_N):
        start_n = tl.where(x >= jump_at, x + jump_by, x)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = offs_d[None, :] < HEAD_DIM
        if MASKED:
            kv_mask = kv_mask & (offs_n[:, None] < N_K)
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                    mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        p = tl.exp2(s * qk_scale - lse2[:, None])
        if MASKED:
            ok = _visible(offs_m[:, None], offs_n[None, :], N_Q, N_K, WINDOW, SINKS, CAUSAL,
                          HAS_WINDOW)
            p = tl.where(ok, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, qk_scale, sm_scale,
                 stride_qb, stride_qh, stride_qn, stride_qd,
                 stride_kb, stride_kh, stride_kn, stride_kd,
                 stride_vb, stride_vh, stride_vn, stride_vd,
                 stride_dob, stride_doh, stride_don, stride_dod,
                 stride_dqb, stride_dqh, stride_dqn, stride_dqd,
                 H, GROUP, N_Q, N_K, WINDOW, SINKS, TUNE_NQ, TUNE_NK,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    """dQ for one query block, over the same key blocks as the forward."""
    pid = tl.program_id(0)
    n_m = tl.cdiv(N_Q, BLOCK_M)
    start_m = (n_m - 1 - pid % n_m) * BLOCK_M
    off_bh = (pid // n_m).to(tl.int64)
    off_b = off_bh // H
    off_h = off_bh % H
    off_hk = off_h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < N_Q
    row_mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + off_b * stride_qb + off_h * stride_qh
                + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=row_mask, other=0.0)
    do = tl.load(DO + off_b * stride_dob + off_h * stride_doh
                 + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=row_mask,
                 other=0.0)
    lse2 = tl.load(LSE + off_bh * N_Q + offs_m, mask=row_ok, other=float("inf")) * 1.4426950408889634
    delta = tl.load(DELTA + off_bh * N_Q + offs_m, mask=row_ok, other=0.0)
    k_base = K + off_b * stride_kb + off_hk * stride_kh
    v_base = V + off_b * stride_vb + off_hk * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    sink_hi, lo, full_lo, full_hi, hi = _key_blocks(start_m, N_Q, N_K, WINDOW, SINKS,
                                                    BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    if HAS_WINDOW:
        dq = _dq_steps(dq, q, do, lse2, delta, k_base, v_base, offs_m,
                       0, sink_hi + full_lo - lo, sink_hi, lo - sink_hi,
                       stride_kn, stride_kd, stride_vn, stride_vd, qk_scale, N_Q, N_K, WINDOW,
                       SINKS, BLOCK_N, BLOCK_D, HEAD_DIM, CAUSAL, HAS_WINDOW, True, PRECISION)
    dq = _dq_steps(dq, q, do, lse2, delta, k_base, v_base, offs_m, full_lo, full_hi, full_hi, 0,
                   stride_kn, stride_kd, stride_vn, stride_vd, qk_scale, N_Q, N_K, WINDOW,
                   SINKS, BLOCK_N, BLOCK_D, HEAD_DIM, CAUSAL, HAS_WINDOW, False, PRECISION)
    dq = _dq_steps(dq, q, do, lse2, delta, k_base, v_base, offs_m, full_hi, hi, hi, 0,
                   stride_kn, stride_kd, stride_vn, stride_vd, qk_scale, N_Q, N_K, WINDOW,
                   SINKS, BLOCK_N, BLOCK_D, HEAD_DIM, CAUSAL, HAS_WINDOW, True, PRECISION)
    tl.store(DQ + off_b * stride_dqb + off_h * stride_dqh
             + offs_m[:, None] * stride_dqn + offs_d[None, :] * stride_dqd,
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_mask)


# fmt: on

# ---------------------------------------------------------------------------------------
# Launch configurations
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def triton(self) -> triton.Config:
        return triton.Config(
            {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n},
            num_warps=self.num_warps,
            num_stages=self.num_stages,
        )


KERNELS = ("fwd", "dkdv", "dq")
INT_ARGS = ("H", "GROUP", "N_Q", "N_K", "WINDOW", "SINKS", "TUNE_NQ", "TUNE_NK")
INTERPRETER_CONFIG = KernelConfig(16, 16, 1, 1)  # small tiles keep the CPU interpreter quick
DELTA_BLOCK_M = 64

# Autotuning candidates per kernel, head-dim class (BLOCK_D <= 64, then 128, then 256)
# and input width (16-bit or float32), chosen by compiling for sm_90a with Triton's own
# ptxas: every candidate, of every dtype and mask mode, has zero spill bytes (``python -m experiments.attention.compile_report`` prints the table;
# tests/test_attention_triton.py checks the first of each list in CI). Not timed on a
# GPU here: the autotuner picks among them on the device. dK/dV tiles keep BLOCK_N
# key rows as the dot's M dimension, so their small BLOCK_M is the N dimension.
_C = KernelConfig
CANDIDATES: dict[tuple[str, int, str], list[KernelConfig]] = {
    ("fwd", 64, "16"): [_C(128, 64, 8, 3), _C(128, 128, 8, 3), _C(64, 64, 4, 4), _C(128, 32, 4, 4)],
    ("fwd", 128, "16"): [_C(128, 64, 8, 2), _C(128, 32, 8, 3), _C(64, 64, 4, 3), _C(64, 32, 4, 3)],
    ("fwd", 256, "16"): [_C(64, 32, 4, 2)],
    ("fwd", 64, "32"): [_C(64, 32, 4, 3), _C(64, 32, 4, 2), _C(32, 32, 4, 3)],
    ("fwd", 128, "32"): [_C(32, 32, 4, 2), _C(32, 64, 8, 1), _C(32, 32, 4, 1)],
    ("dkdv", 64, "16"): [_C(32, 128, 8, 3), _C(32, 128, 8, 2), _C(32, 64, 8, 3)],
    ("dkdv", 128, "16"): [_C(16, 128, 8, 2), _C(16, 64, 8, 2)],
    ("dkdv", 256, "16"): [_C(16, 32, 8, 1), _C(16, 16, 4, 1)],
    ("dkdv", 64, "32"): [_C(32, 32, 8, 2), _C(16, 32, 4, 2)],
    ("dkdv", 128, "32"): [_C(16, 16, 8, 1)],
    ("dq", 64, "16"): [_C(128, 32, 8, 3), _C(128, 64, 8, 2), _C(64, 32, 4, 3)],
    ("dq", 128, "16"): [_C(128, 32, 8, 2), _C(64, 64, 8, 2), _C(64, 32, 4, 2)],
    ("dq", 256, "16"): [_C(64, 16, 4, 1)],
    ("dq", 64, "32"): [_C(64, 32, 8, 1), _C(32, 32, 8, 2)],
    ("dq", 128, "32"): [_C(16, 32, 4, 1)],
}


def head_dim_class(block_d: int) -> int:
    return 64 if block_d <= 64 else block_d


def width_class(dtype: torch.dtype) -> str:
    return "32" if dtype == torch.float32 else "16"


def candidates(kernel: str, dtype: torch.dtype, block_d: int) -> list[KernelConfig]:
    """Autotuning candidates of one kernel for inputs of ``dtype`` and padded head dim."""
    return CANDIDATES[(kernel, head_dim_class(block_d), width_class(dtype))]


def block_d_for(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _dtype_of_args(named_args: dict) -> torch.dtype:
    return named_args["Q"].dtype


def _pruner(kernel: str):
    def prune(configs, named_args, **kwargs):
        allowed = set(candidates(kernel, _dtype_of_args(named_args), kwargs["BLOCK_D"]))
        return [c for c in configs if _from_triton(c) in allowed]

    return prune


def _from_triton(config: triton.Config) -> KernelConfig:
    return KernelConfig(
        config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages
    )


_TUNE_KEY = ["TUNE_NQ", "TUNE_NK", "HEAD_DIM", "GROUP", "CAUSAL", "HAS_WINDOW"]
_RAW = {"fwd": _attn_fwd, "dkdv": _attn_bwd_dkdv, "dq": _attn_bwd_dq}
_TUNED: dict = {}


def _kernel(name: str):
    """(kernel, fixed launch options or None): the raw kernel with the interpreter's one
    configuration, or on CUDA the autotuned kernel over the candidates."""
    if interpreting():
        cfg = INTERPRETER_CONFIG
        options = dict(
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
        return _RAW[name], options
    if name not in _TUNED:
        every = {c for key, cands in CANDIDATES.items() if key[0] == name for c in cands}
        _TUNED[name] = triton.autotune(
            configs=[c.triton() for c in sorted(every, key=repr)],
            key=_TUNE_KEY,
            prune_configs_by={"early_config_prune": _pruner(name)},
        )(_RAW[name])
    return _TUNED[name], {}


def _precision_for_target(dtype: torch.dtype) -> str:
    """``tl.dot`` precision on a GPU: three-pass TF32 for float32 (ignored for 16-bit)."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if interpreting() else _precision_for_target(dtype)


def _bucket(n: int) -> int:
    return triton.next_power_of_2(n)  # autotune once per power-of-two length, not per length


# ---------------------------------------------------------------------------------------
# What the kernels support (the dispatcher falls back on anything else)
# ---------------------------------------------------------------------------------------


def _head_span(t: torch.Tensor) -> int:
    """Elements between a head's first and last element (in-head offsets are 32-bit)."""
    return (t.shape[2] - 1) * abs(t.stride(2)) + (t.shape[3] - 1) * abs(t.stride(3)) + 1


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why these (already validated) inputs cannot run on the kernels, or None."""
    if not q.is_cuda and not interpreting():
        return "the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 with CPU tensors)"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the Triton kernels take float16, bfloat16 or float32, not {q.dtype}"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"the Triton kernels take head_dim <= {MAX_HEAD_DIM}, not {q.shape[-1]}"
    if q.dtype == torch.float32 and q.shape[-1] > MAX_FLOAT32_HEAD_DIM:
        return (
            f"float32 at head_dim > {MAX_FLOAT32_HEAD_DIM} spills registers in every "
            "configuration tried (compile_report.py)"
        )
    if max(_head_span(t) for t in (q, k, v)) >= SPAN_LIMIT:
        return "one head spans 2**31 elements or more (the kernels' in-head offsets are 32-bit)"
    return None


# ---------------------------------------------------------------------------------------
# Launches and the autograd wrapper
# ---------------------------------------------------------------------------------------


def _common(q, k, causal, window, sinks) -> tuple[dict, dict]:
    b, h, n_q, d = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    args = dict(H=h, GROUP=h // h_kv, N_Q=n_q, N_K=n_k, WINDOW=window, SINKS=sinks)
    args.update(TUNE_NQ=_bucket(n_q), TUNE_NK=_bucket(n_k))
    consts = dict(
        HEAD_DIM=d,
        BLOCK_D=block_d_for(d),
        CAUSAL=bool(causal),
        HAS_WINDOW=window > 0,
        PRECISION=_precision(q.dtype),
    )
    return args, consts


def triton_forward(q, k, v, *, causal, window, sinks, scale):
    """Launch ``_attn_fwd``. Returns O (B, H, Nq, D) and L (B, H, Nq) float32."""
    b, h, n_q, _ = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h, n_q, dtype=torch.float32, device=q.device)
    args, consts = _common(q, k, causal, window, sinks)
    kernel, options = _kernel("fwd")

    def grid(meta):
        return (b * h * triton.cdiv(n_q, meta["BLOCK_M"]),)

    kernel[grid](
        q, k, v, out, lse, scale * LOG2E,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        **args, **consts, **options,
    )  # fmt: skip
    return out, lse


def triton_backward(q, k, v, out, lse, dout, *, causal, window, sinks, scale):
    """Launch the three backward kernels; any strides in, contiguous gradients out."""
    b, h, n_q, d = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    args, consts = _common(q, k, causal, window, sinks)
    delta = torch.empty(b, h, n_q, dtype=torch.float32, device=q.device)
    _attn_bwd_delta[(b * h * triton.cdiv(n_q, DELTA_BLOCK_M),)](
        out, dout, delta, *out.stride(), *dout.stride(), h, n_q,
        HEAD_DIM=d, BLOCK_D=consts["BLOCK_D"], BLOCK_M=DELTA_BLOCK_M,
    )  # fmt: skip
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    dkdv, options = _kernel("dkdv")

    def dkdv_grid(meta):
        return (b * h_kv * triton.cdiv(n_k, meta["BLOCK_N"]),)

    dkdv[dkdv_grid](
        q, k, v, dout, lse, delta, dk, dv, scale * LOG2E, scale,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(),
        **args, **consts, **options,
    )  # fmt: skip
    dq_kernel, options = _kernel("dq")

    def dq_grid(meta):
        return (b * h * triton.cdiv(n_q, meta["BLOCK_M"]),)

    dq_kernel[dq_grid](
        q, k, v, dout, lse, delta, dq, scale * LOG2E, scale,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(),
        **args, **consts, **options,
    )  # fmt: skip
    return dq, dk, dv


def _checked(q, k, v, causal, window, sinks, scale) -> float:
    """Validate inputs the kernels can take (ValueError otherwise); the softmax scale."""
    check_inputs(q, k, v, window, sinks, causal=causal)
    reason = unsupported_reason(q, k, v)
    if reason:
        raise ValueError(reason)
    return default_scale(q.shape[-1], scale)


class TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, window, sinks, scale, on_backward_failure):
        out, lse = triton_forward(q, k, v, causal=causal, window=window, sinks=sinks, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.opts = dict(causal=causal, window=window, sinks=sinks, scale=scale)
        ctx.on_backward_failure = on_backward_failure
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        try:
            dq, dk, dv = triton_backward(q, k, v, out, lse, dout, **ctx.opts)
        except Exception as exc:  # a compile or launch failure of the backward kernels
            if ctx.on_backward_failure is None:
                raise
            dq, dk, dv = ctx.on_backward_failure(exc, q, k, v, out, lse, dout, **ctx.opts)
        return dq, dk, dv, None, None, None, None, None


def triton_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int = 0,
    sinks: int = 0,
    scale: float | None = None,
    on_backward_failure=None,
) -> torch.Tensor:
    """Fused Triton attention: q (B, H, Nq, D), k and v (B, Hkv, Nk, D); differentiable.

    ``on_backward_failure(exc, q, k, v, out, lse, dout, **opts)``, if given, computes
    the gradients when the backward kernels fail to compile or launch (the dispatcher
    passes a blockwise fallback); otherwise the failure propagates.
    """
    scale = _checked(q, k, v, causal, window, sinks, scale)
    return TritonAttention.apply(
        q, k, v, bool(causal), int(window), int(sinks), scale, on_backward_failure
    )


def triton_forward_with_lse(q, k, v, *, causal=False, window=0, sinks=0, scale=None):
    """Forward only, returning (O, L); used by tests to check the saved log-sum-exp."""
    scale = _checked(q, k, v, causal, window, sinks, scale)
    return triton_forward(
        q, k, v, causal=bool(causal), window=int(window), sinks=int(sinks), scale=scale
    )
