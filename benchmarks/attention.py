"""Benchmark streaming attention: error, measured memory, CPU speed, GPU throughput.

Implementations: naive (materialises the (N, N) scores), blockwise PyTorch
(online softmax), Triton (fused kernels; GPU, or the CPU interpreter for error
only) and PyTorch SDPA. See experiments/attention/ for the algorithms and
experiments/attention/measure.py for how memory is measured (fresh worker process,
peak RSS reset before each call, cap enforced with RLIMIT_AS).

    python benchmarks/attention.py            # 2-3 minutes on 2 CPU cores
    python benchmarks/attention.py --quick    # about 30 seconds
    python benchmarks/attention.py --json out.json
    python benchmarks/attention.py --skip memory speed --json gpu.json   # on a GPU machine
    python benchmarks/attention.py --skip memory speed --gpu-quick       # shorter GPU tables

Acceptance figures printed (from issue 6): fp32 error vs float64 <= 1e-5 (forward),
<= 1e-4 (gradients); fp16/bf16 error <= 2x naive's at the same dtype; peak extra
memory at N=4096 >= 10x below naive; log-log slope of memory vs N ~2 (naive) and
~1 (blockwise); the N where naive fails under a memory cap while blockwise runs;
blockwise forward vs SDPA on CPU at N=4096.

GPU section (CUDA only; without CUDA it prints "GPU part not run: no CUDA device").
The FlashAttention-2 paper's setup: B*N = 16K tokens, H*D = 2048, float16 and
bfloat16, causal and not, time = triton.testing.do_bench median (10 ms warm-up,
40 ms of timed calls, L2 flushed between calls).

* Dense throughput, forward and forward+backward (``torch.autograd.grad`` of the
  output, forward included): ours (``experiments.attention.triton_attention``) vs
  SDPA restricted to its flash backend and to its cuDNN backend (a backend that is
  missing or refuses a case reads "n/a"). N 1K-16K, D 64/128. TFLOP/s from
  measure.attention_flops (4*B*H*N^2*D forward, halved when causal; forward+backward
  3.5x forward), % of datasheet peak (measure.peak_tflops), ratios ours/flash and
  ours/cuDNN, and the largest output / gradient difference from ours as a check.
* Window + sinks (window 1024 and 256, 4 sinks; N 4K-16K) against FlexAttention
  (``torch.compile(flex_attention, dynamic=False)``, one compiled function for
  all cases, with a BlockMask built per case outside the timed region; its build
  time is reported). FLOPs = 4*B*H*pairs*D forward, with the attended (i, j) pairs
  counted exactly by ``attended_pairs`` (a closed form, tested against a
  brute-force count of ``reference.allowed_mask``).
* Peak memory of every implementation's forward+backward, per case
  (``torch.cuda.max_memory_allocated`` minus the memory allocated before the call).
* Targets, PASS/FAIL on the worst case: forward >= 0.8x SDPA flash and
  forward+backward >= 0.7x at N >= 4K; window + sinks >= 1.0x FlexAttention; and the
  FlashAttention-2 paper's own figures printed beside ours, marked as theirs.

Each case and each implementation runs in its own try/except: a failure reads
"n/a" or "error" in its cell, with a one-line reason under the row, and the run
goes on; rows are printed (flushed) as they complete. ``--gpu-budget-s`` (default
300 s full, 210 s quick) stops starting new cases once spent (the rest are
reported as skipped), with the dense tables held to 30% / 60% of it so the window
tables always get a turn.

Estimated H200 time of the GPU section (not yet measured; estimated from case counts,
~0.4 s to compile one Triton kernel configuration as measured on a CPU here, ~0.15 s
per autotuning candidate, ~3 s / ~6 s to compile FlexAttention forward / backward per
shape): full, 80 dense + 96 window cases, about 5-6 minutes, so the 300 s budget may
skip the last window cases; --gpu-quick (48 dense, N 1K/4K/16K; 32 window, bfloat16,
N 4K/16K), about 3 minutes. Most of it is one-off compilation: Triton autotuning of
ours per (N, D, dtype, mask) and FlexAttention's compile per shape and grad mode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from experiments.attention import triton_available  # noqa: E402
from experiments.attention.measure import (  # noqa: E402
    attention_flops,
    compare_forward_times,
    errors_vs_float64,
    load_average,
    loglog_slope,
    measure_peak_memory,
    peak_tflops,
    time_fn,
)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---------------------------------------------------------------------------------------
# Error against float64
# ---------------------------------------------------------------------------------------


def _interpreter_errors(n: int) -> dict:
    """Triton errors on CPU tensors under TRITON_INTERPRET=1, in a child process."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, __file__, "--interpreter-child", str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _interpreter_child(n: int) -> None:
    kw = dict(b=1, h=2, n=n, d=64, causal=True, seed=0)
    out = {
        "triton float32": errors_vs_float64("triton", dtype=torch.float32, **kw),
        "triton float16": errors_vs_float64("triton", dtype=torch.float16, **kw),
        "naive float16": errors_vs_float64("naive", dtype=torch.float16, **kw),
    }
    print(json.dumps(out))


def run_errors(device: torch.device, quick: bool) -> dict:
    n = 256 if quick else 1024
    section(f"Error vs float64 naive (B=1, H=4, N={n}, D=64, causal; max abs, fwd and dQ/dK/dV)")
    kw = dict(b=1, h=4, n=n, d=64, device=device, causal=True, seed=0)
    impls = ["blockwise", "triton", "sdpa"] if device.type == "cuda" else ["blockwise", "sdpa"]
    results: dict = {}
    print(f"{'impl':<10} {'dtype':<9} {'fwd err':>10} {'grad err':>10}  criterion")
    for dtype_name, dtype in DTYPES.items():
        naive = errors_vs_float64("naive", dtype=dtype, **kw)
        results[f"naive {dtype_name}"] = naive
        print(f"{'naive':<10} {dtype_name:<9} {naive['fwd']:>10.2e} {naive['grad']:>10.2e}")
        for impl in impls:
            err = errors_vs_float64(impl, dtype=dtype, **kw)
            results[f"{impl} {dtype_name}"] = err
            if dtype == torch.float32:
                ok = err["fwd"] <= 1e-5 and err["grad"] <= 1e-4
                rule = "fwd <= 1e-5, grad <= 1e-4"
            else:
                ok = err["fwd"] <= 2 * naive["fwd"] and err["grad"] <= 2 * naive["grad"]
                rule = "<= 2x naive"
            tag = verdict(ok) if impl != "sdpa" else "(baseline)"
            print(
                f"{impl:<10} {dtype_name:<9} {err['fwd']:>10.2e} {err['grad']:>10.2e}  {rule} {tag}"
            )
    if device.type != "cuda":
        if triton_available():
            n_interp = 64 if quick else 128
            interp = _interpreter_errors(n_interp)
            results["triton interpreter"] = interp
            print(
                f"-- Triton kernels under TRITON_INTERPRET=1 (CPU, B=1, H=2, N={n_interp}, D=64):"
            )
            if "error" in interp:
                print(f"   failed: {interp['error']}")
            else:
                for key, err in interp.items():
                    print(f"{key:<20} {err['fwd']:>10.2e} {err['grad']:>10.2e}")
        else:
            print("-- Triton not installed: Triton error not measured")
    return results


# ---------------------------------------------------------------------------------------
# Memory (measured, CPU)
# ---------------------------------------------------------------------------------------


def run_memory(quick: bool) -> dict:
    b, h, d = 1, 8, 64
    if quick:
        ns, ref_n, cap_mib, train_n = [512, 1024, 2048, 4096], 2048, 512, 1024
    else:
        ns, ref_n, cap_mib, train_n = [1024, 2048, 4096, 8192, 16384], 4096, 2048, 4096
    section(
        f"Peak extra memory, measured (CPU RSS; B={b}, H={h}, D={d}, float32, causal forward; "
        f"cap {cap_mib} MiB enforced with RLIMIT_AS)"
    )
    impls = ["naive", "blockwise", "sdpa"]
    common = dict(b=b, h=h, d=d, causal=True, cap_mib=cap_mib)
    cases = [dict(common, impl=impl, n=n) for impl in impls for n in ns]
    start = time.perf_counter()
    rows = measure_peak_memory(cases)
    by = {(r["impl"], r["n"]): r for r in rows}
    print(f"{'N':>6} " + " ".join(f"{impl + ' MiB':>14}" for impl in impls))
    for n in ns:
        cells = []
        for impl in impls:
            r = by[(impl, n)]
            cells.append(f"{r['peak_extra_mib']:>14.1f}" if r["ok"] else f"{'> cap (OOM)':>14}")
        print(f"{n:>6} " + " ".join(cells))

    out: dict = {"cap_mib": cap_mib, "rows": rows}
    naive_ref, block_ref = by[("naive", ref_n)], by[("blockwise", ref_n)]
    if naive_ref["ok"] and block_ref["ok"]:
        ratio = naive_ref["peak_extra_mib"] / block_ref["peak_extra_mib"]
        out["ratio_at_ref_n"] = ratio
        print(
            f"naive / blockwise peak at N={ref_n}: {ratio:.1f}x  (criterion >= 10x: {verdict(ratio >= 10)})"
        )
    for impl in impls:
        pts = [(n, by[(impl, n)]["peak_extra_mib"]) for n in ns if by[(impl, n)]["ok"]]
        if len(pts) >= 2:
            slope = loglog_slope([p[0] for p in pts], [p[1] for p in pts])
            out[f"slope_{impl}"] = slope
            span = f"N {pts[0][0]}-{pts[-1][0]}"
            print(f"log-log slope of peak vs N, {impl:<9}: {slope:.2f}  ({span})")
            if len(pts) >= 3:
                tail = loglog_slope([p[0] for p in pts[-2:]], [p[1] for p in pts[-2:]])
                out[f"slope_{impl}_last_doubling"] = tail
                print(f"   last doubling ({pts[-2][0]}->{pts[-1][0]}): {tail:.2f}")
    wall = [n for n in ns if not by[("naive", n)]["ok"] and by[("blockwise", n)]["ok"]]
    out["naive_fails_blockwise_runs_n"] = wall[0] if wall else None
    if wall:
        largest = max(n for n in ns if by[("blockwise", n)]["ok"])
        print(
            f"memory wall: naive fails under the {cap_mib} MiB cap from N={wall[0]}; "
            f"blockwise runs up to N={largest} (largest tried)"
        )
    else:
        print(f"memory wall: naive did not exceed the {cap_mib} MiB cap for N <= {max(ns)}")

    train = measure_peak_memory(
        [dict(b=b, h=h, d=d, causal=True, impl=impl, n=train_n, backward=True) for impl in impls]
    )
    tby = {r["impl"]: r for r in train}
    print(
        f"forward+backward at N={train_n}: "
        + ", ".join(f"{i} {tby[i]['peak_extra_mib']:.1f} MiB" for i in impls)
        + f"; naive/blockwise {tby['naive']['peak_extra_mib'] / tby['blockwise']['peak_extra_mib']:.1f}x"
    )
    out["train"] = train
    print(f"(memory section took {time.perf_counter() - start:.0f} s)")
    return out


# ---------------------------------------------------------------------------------------
# Speed on CPU
# ---------------------------------------------------------------------------------------


def run_cpu_speed(quick: bool) -> dict:
    b, h, d = 1, 8, 64
    n = 2048 if quick else 4096
    repeats = 2  # per thread count; best of interleaved rounds
    default_threads = torch.get_num_threads()
    section(
        f"CPU forward time (B={b}, H={h}, N={n}, D={d}, float32, best of {repeats} interleaved rounds)"
    )
    load = load_average()
    print(
        f"1-min load average before timing: {load if load is None else f'{load:.1f}'} "
        f"on {os.cpu_count()} CPUs. Blockwise runs hundreds of small multi-threaded ops; on a busy "
        "machine their thread barriers stall, so it is timed with one thread as well."
    )
    out: dict = {"n": n, "load_average": load}
    print(
        f"{'threads':>7} {'mask':<11} {'naive s':>8} {'blockwise s':>12} {'sdpa s':>8} "
        f"{'blockwise/sdpa':>15} {'naive/blockwise':>16}"
    )
    for threads in sorted({default_threads, 1}, reverse=True):
        for label, causal in (("non-causal", False), ("causal", True)):
            t = compare_forward_times(
                ["naive", "blockwise", "sdpa"],
                b=b, h=h, n=n, d=d, causal=causal, repeats=repeats, threads=threads,
            )  # fmt: skip
            ratio = t["blockwise"] / t["sdpa"]
            out[f"{label} threads={threads}"] = dict(
                t, blockwise_over_sdpa=ratio, naive_over_blockwise=t["naive"] / t["blockwise"]
            )
            print(
                f"{threads:>7} {label:<11} {t['naive']:>8.3f} {t['blockwise']:>12.3f} "
                f"{t['sdpa']:>8.3f} {ratio:>14.2f}x {t['naive'] / t['blockwise']:>15.2f}x"
            )
    load = load_average()
    print(f"1-min load average after timing: {load if load is None else f'{load:.1f}'}")
    for threads in sorted({default_threads, 1}, reverse=True):
        worst = max(
            out[f"{label} threads={threads}"]["blockwise_over_sdpa"]
            for label in ("non-causal", "causal")
        )
        print(
            f"blockwise within 3x of SDPA, {threads} thread(s), worse mask {worst:.2f}x: {verdict(worst <= 3)}"
        )
    return out


# ---------------------------------------------------------------------------------------
# GPU: throughput, window + sinks against FlexAttention, peak memory, targets
#
# The table logic below takes the device, the implementations and the timer as
# arguments, so tests/test_attention_benchmark.py runs it on CPU with tiny shapes and
# CPU stand-ins; run_gpu() plugs in triton.testing.do_bench and the CUDA
# implementations.
# ---------------------------------------------------------------------------------------

TOKENS, HIDDEN = 16384, 2048  # FlashAttention-2 paper setup: B*N = 16K tokens, H*D = 2048
FWD, TRAIN = "forward", "forward+backward"
BACKWARD_FACTOR = 2.5  # backward FLOPs / forward FLOPs (5 matmuls vs 2, FA2 paper Sec. 4.1)
MIB = 1024 * 1024

# The FlashAttention-2 paper's own figures (Dao 2023, "FlashAttention-2: Faster Attention
# with Better Parallelism and Work Partitioning", arXiv:2307.08691), printed beside ours.
# Confirmed against the paper's text: abstract; Sec. 1 ("up to 73% of the theoretical max
# throughput in the forward pass, and up to 63% ... in the backward pass"); Sec. 4 ("up to
# 230 TFLOPs/s, 73% of the theoretical maximum TFLOPs/s on A100 GPUs"; "up to 225 TFLOPs/s
# (72% model FLOPs utilization) per A100 GPU"); Sec. 4.1 (H100: "up to 335 TFLOPs/s").
FA2_PAPER = {
    "source": "Dao 2023, FlashAttention-2, arXiv:2307.08691 (reported by the paper, not measured here)",
    "a100_forward_pct_peak_max": 73,
    "a100_backward_pct_peak_max": 63,
    "a100_attention_tflops_max": 230,
    "a100_gpt_training_tflops_per_gpu_max": 225,
    "a100_gpt_training_mfu_pct": 72,
    "h100_fwd_bwd_tflops_max_no_hopper_features": 335,
}
FA2_PAPER_LINES = (
    "FlashAttention-2 paper (Dao 2023, arXiv:2307.08691; theirs, reported by the paper, "
    "not measured here):",
    "  A100 80GB SXM4, their attention benchmark (same B*N = 16K, H*D = 2048 setup): forward up "
    "to 73% of theoretical peak, backward up to 63%; up to 230 TFLOP/s",
    "  end-to-end GPT-style training (1.3B/2.7B, 8x A100 80GB SXM): up to 225 TFLOP/s per A100 "
    "(72% model FLOPs utilization)",
    "  H100 80GB SXM5, same code without Hopper-specific instructions (no TMA, no 4th-gen "
    "tensor-core instructions): up to 335 TFLOP/s (forward+backward, their Fig. 7)",
)


def flush_print(*args, **kwargs) -> None:
    """print, flushed: a run that is cut short (or piped to a file) keeps every line."""
    print(*args, **kwargs, flush=True)


class Unavailable(Exception):
    """Raised by an implementation that cannot run here at all: its cells read "n/a"."""


@dataclass
class Impl:
    """One implementation (one column group) in a table.

    ``prepare(case)`` runs outside the timed region and returns ``fn(q, k, v) -> out``,
    or ``(fn, info)`` with ``info`` a json-able dict copied into the cell (FlexAttention
    reports its block-mask build time this way). ``context()`` is entered around
    preparation, the checking call, timing and the memory measurement (SDPA backend
    selection). An exception before timing reads "n/a" when ``missing_ok`` (a backend
    that does not support the case) or when it is ``Unavailable``; otherwise, and for
    anything raised while timing, the cell reads "error".
    """

    name: str
    prepare: Callable[[dict], Any]
    context: Callable[[], AbstractContextManager] = nullcontext
    missing_ok: bool = False


def one_line(exc: BaseException, limit: int = 160) -> str:
    """``Type: first non-empty line of the message``, cut to ``limit`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_oom(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return (bool(oom) and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


def paper_shape(n: int, d: int, *, tokens: int = TOKENS, hidden: int = HIDDEN) -> tuple[int, int]:
    """(B, H) of the FA2 benchmark setup: B*N = ``tokens``, H*D = ``hidden``."""
    return max(1, tokens // n), max(1, hidden // d)


def attended_pairs(n: int, *, causal: bool, window: int = 0, sinks: int = 0) -> int:
    """Exact number of (query i, key j) pairs the mask of ``reference.allowed_mask`` keeps.

    Closed form, column by column: the queries that see key j form one interval, i in
    [j - w + 1, j + w - 1] (non-causal) or [j, j + w - 1] (causal) clipped to [0, n),
    for a window column, and every i (causal: i >= j) for a sink column j < sinks.
    The sums of min(w - 1, t) over those ranges are arithmetic series (``_clipped_sum``).
    """
    if window <= 0:
        return n * (n + 1) // 2 if causal else n * n
    s, c = min(sinks, n), window - 1
    if causal:
        sink_pairs = s * n - s * (s - 1) // 2  # sum over j < s of (n - j)
        window_pairs = (n - s) + _clipped_sum(n - 1 - s, c)  # sum_j 1 + min(c, n - 1 - j)
    else:
        sink_pairs = s * n
        window_pairs = (n - s) + _clipped_sum(n - 1 - s, c) + _clipped_sum(n - 1, c)
        window_pairs -= _clipped_sum(s - 1, c)  # sum over j in [s, n) of min(c, j)
    return sink_pairs + window_pairs


def _clipped_sum(a: int, c: int) -> int:
    """sum_{t=0}^{a} min(c, t), 0 for a < 0."""
    if a < 0:
        return 0
    if a <= c:
        return a * (a + 1) // 2
    return c * (c + 1) // 2 + (a - c) * c


def dense_cases(ns, ds, dtypes, mode, *, causals=(False, True), tokens=TOKENS, hidden=HIDDEN):
    """Cases of the dense throughput table, FLOPs from measure.attention_flops."""
    cases = []
    for dtype in dtypes:
        for d in ds:
            for causal in causals:
                for n in ns:
                    b, h = paper_shape(n, d, tokens=tokens, hidden=hidden)
                    flops = attention_flops(b, h, n, d, causal=causal)
                    if mode == TRAIN:
                        flops += attention_flops(b, h, n, d, causal=causal, backward=True)
                    cases.append(
                        dict(mode=mode, dtype=dtype, d=d, n=n, b=b, h=h, causal=causal,
                             window=0, sinks=0, flops=flops)
                    )  # fmt: skip
    return cases


def window_cases(ns, ds, dtypes, windows, mode, *, sinks=4, causals=(False, True),
                 tokens=TOKENS, hidden=HIDDEN):  # fmt: skip
    """Cases of the window + sinks table; FLOPs = 4 * B * H * pairs * D (x3.5 fwd+bwd)."""
    cases = []
    for dtype in dtypes:
        for d in ds:
            for causal in causals:
                for window in windows:
                    for n in ns:
                        b, h = paper_shape(n, d, tokens=tokens, hidden=hidden)
                        pairs = attended_pairs(n, causal=causal, window=window, sinks=sinks)
                        flops = 4.0 * b * h * pairs * d
                        if mode == TRAIN:
                            flops *= 1 + BACKWARD_FACTOR
                        cases.append(
                            dict(mode=mode, dtype=dtype, d=d, n=n, b=b, h=h, causal=causal,
                                 window=window, sinks=sinks, pairs=pairs,
                                 density=pairs / (n * n), flops=flops)
                        )  # fmt: skip
    return cases


def case_inputs(case: dict, device) -> tuple:
    """Seeded q, k, v (B, H, N, D) drawn on ``device`` (requires_grad for fwd+bwd), and dO."""
    device = torch.device(device)
    dtype = DTYPES[case["dtype"]]
    train = case["mode"] == TRAIN
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (case["b"], case["h"], case["n"], case["d"])
    q, k, v = (
        torch.randn(shape, generator=gen, device=device, dtype=dtype).requires_grad_(train)
        for _ in range(3)
    )
    grad = torch.randn(shape, generator=gen, device=device, dtype=dtype) if train else None
    return q, k, v, grad


def _make_call(fn, q, k, v, grad):
    if grad is None:

        def forward():
            with torch.no_grad():
                return fn(q, k, v)

        return forward
    return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad)


def _tensors(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _all_finite(out) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _tensors(out))


def _max_abs_diff(a, b) -> float:
    return max(
        (x.detach().float() - y.detach().float()).abs().max().item()
        for x, y in zip(_tensors(a), _tensors(b), strict=True)
    )


def measure_case(case: dict, impls: list[Impl], *, device, timer, peak_memory=None,
                 peaks: dict | None = None) -> dict:  # fmt: skip
    """Time every implementation on one case; the first implementation is the subject ("ours").

    ``timer(call) -> ms``; ``peak_memory(call) -> MiB`` (fwd+bwd cases only, if given);
    ``peaks``: datasheet TFLOP/s by dtype name, for % of peak. Never raises for a
    failing implementation: its cell gets status "n/a" or "error" and a reason.
    Returns the case plus ``impls`` (cells by name) and ``ratios`` (subject's throughput
    over each other implementation's, i.e. their time / subject's time).
    """
    row = dict(case, impls={}, ratios={})
    try:
        q, k, v, grad = case_inputs(case, device)
    except Exception as exc:  # e.g. out of memory for the inputs themselves
        row["error"] = one_line(exc)
        return row
    subject_out = None
    peak = (peaks or {}).get(case["dtype"])
    for index, impl in enumerate(impls):
        cell, out = _measure_impl(impl, case, q, k, v, grad, timer, peak_memory)
        if cell["status"] == "ok":
            cell["tflops"] = case["flops"] / (cell["ms"] * 1e-3) / 1e12
            cell["pct_peak"] = 100 * cell["tflops"] / peak if peak else None
            if index == 0:
                subject_out = out
            elif subject_out is not None:
                try:
                    cell["max_abs_diff_vs_" + impls[0].name] = _max_abs_diff(out, subject_out)
                except Exception as exc:  # a check only: never lose the timing for it
                    cell["diff_error"] = one_line(exc)
        row["impls"][impl.name] = cell
        del out
    first = row["impls"][impls[0].name]
    for impl in impls[1:]:
        other = row["impls"][impl.name]
        if first["status"] == "ok" and other["status"] == "ok":
            row["ratios"][f"{impls[0].name}/{impl.name}"] = other["ms"] / first["ms"]
    del q, k, v, grad, subject_out
    return row


def _measure_impl(impl: Impl, case, q, k, v, grad, timer, peak_memory) -> tuple[dict, Any]:
    stage, info = "prepare", {}
    try:
        with impl.context():
            prepared = impl.prepare(case)
            fn, info = prepared if isinstance(prepared, tuple) else (prepared, {})
            call = _make_call(fn, q, k, v, grad)
            stage = "first call"
            out = call()  # compiles / autotunes; raises here for an unsupported case
            if not _all_finite(out):
                return {"status": "error", "reason": "non-finite output", **info}, None
            stage = "timing"
            ms = float(timer(call))
            if not ms > 0:  # also NaN
                return {"status": "error", "reason": f"timer returned {ms}", **info}, None
            cell = {"status": "ok", "ms": ms, **info}
            if peak_memory is not None and grad is not None:
                stage = "memory"
                cell["peak_mib"] = float(peak_memory(call))
            return cell, out
    except Exception as exc:
        unsupported = stage in ("prepare", "first call") and (
            isinstance(exc, Unavailable) or (impl.missing_ok and not is_oom(exc))
        )
        status = "n/a" if unsupported else "error"
        return {"status": status, "reason": f"{stage}: {one_line(exc)}", **info}, None


def run_cases(cases, impls, *, device, timer, peak_memory=None, peaks=None, deadline=None,
              cleanup=None, on_row=None) -> list[dict]:  # fmt: skip
    """measure_case for each case in order; past ``deadline`` (time.perf_counter()) the
    remaining cases are recorded as skipped. ``cleanup()`` runs after each case
    (torch.cuda.empty_cache on a GPU); ``on_row(row)`` prints it."""
    rows = []
    for case in cases:
        if deadline is not None and time.perf_counter() > deadline:
            row = dict(case, impls={}, ratios={}, skipped="time budget")
        else:
            try:
                row = measure_case(
                    case, impls, device=device, timer=timer, peak_memory=peak_memory, peaks=peaks
                )
            except Exception as exc:  # measure_case catches per implementation; a last net
                row = dict(case, impls={}, ratios={}, error=one_line(exc))
            if cleanup is not None:
                try:
                    cleanup()
                except Exception as exc:
                    row.setdefault("cleanup_error", one_line(exc))
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


# -- timers and memory -------------------------------------------------------------------


def wall_timer(*, repeats: int = 3, warmup: int = 1, device="cpu") -> Callable[[Callable], float]:
    """A timer for CPU runs: median wall time of ``call()`` in ms (synchronised on CUDA)."""

    def timer(call) -> float:
        return 1e3 * time_fn(call, repeats=repeats, warmup=warmup, device=device)

    return timer


def cuda_timer(*, warmup: int = 10, rep: int = 40) -> Callable[[Callable], float]:
    """triton.testing.do_bench's median in ms (it flushes L2 between calls).

    ``warmup`` / ``rep`` are do_bench's time targets in ms (its defaults are 25 / 100);
    shorter targets keep the whole section within budget and still give >= 10 timed
    calls for every case shorter than 4 ms.
    """
    import inspect

    import triton.testing

    has_mode = "return_mode" in inspect.signature(triton.testing.do_bench).parameters

    def timer(call) -> float:
        if has_mode:
            return triton.testing.do_bench(call, warmup=warmup, rep=rep, return_mode="median")
        return triton.testing.do_bench(call, warmup=warmup, rep=rep, quantiles=[0.5])[0]

    return timer


def cuda_peak_mib(call) -> float:
    """Peak CUDA memory of one ``call()`` beyond what was allocated before it, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return peak / MIB


# -- implementations ---------------------------------------------------------------------


def attention_impl(name: str, fn, *, missing_ok: bool = False) -> Impl:
    """An implementation with this package's signature ``fn(q, k, v, causal=, window=, sinks=)``."""

    def prepare(case):
        return partial(fn, causal=case["causal"], window=case["window"], sinks=case["sinks"])

    return Impl(name, prepare, missing_ok=missing_ok)


def sdpa_backend_impl(name: str, backend: str) -> Impl:
    """F.scaled_dot_product_attention restricted to one backend ("FLASH_ATTENTION",
    "CUDNN_ATTENTION", "MATH", ...); a backend that is missing or refuses a case is n/a."""
    import torch.nn.functional as F

    def context():
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
        except ImportError as exc:
            raise Unavailable(f"torch.nn.attention.sdpa_kernel: {exc}") from exc
        if not hasattr(SDPBackend, backend):
            raise Unavailable(f"this torch has no SDPBackend.{backend}")
        return sdpa_kernel(getattr(SDPBackend, backend))

    def prepare(case):
        if case["window"] > 0:
            raise Unavailable("SDPA backends here take no window + sinks mask")
        return partial(F.scaled_dot_product_attention, is_causal=case["causal"])

    return Impl(name, prepare, context=_Deferred(context), missing_ok=True)


class _Deferred:
    """A context factory whose construction errors surface inside ``with`` (inside the try)."""

    def __init__(self, make):
        self.make = make

    def __call__(self):
        return _DeferredContext(self.make)


class _DeferredContext:
    def __init__(self, make):
        self.make, self.inner = make, None

    def __enter__(self):
        self.inner = self.make()
        return self.inner.__enter__()

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)


def flex_mask_mod(causal: bool, window: int, sinks: int, device):
    """FlexAttention mask_mod for ``reference.allowed_mask`` with Nq == Nk.

    The parameters are captured 0-d tensors, not Python numbers, so one compiled
    flex_attention graph serves every (causal, window, sinks) of a shape: dynamo
    lifts captured tensors to graph inputs instead of specialising on their values
    (a test checks on CPU that changing them does not recompile).
    """
    c_t = torch.tensor(bool(causal), device=device)
    w_t = torch.tensor(int(window), device=device)
    s_t = torch.tensor(int(sinks), device=device)

    if window <= 0:

        def causal_only(b, h, q_idx, kv_idx):
            return (~c_t) | (kv_idx <= q_idx)

        return causal_only

    def window_sinks(b, h, q_idx, kv_idx):
        near = (q_idx - kv_idx).abs() < w_t
        return ((~c_t) | (kv_idx <= q_idx)) & (near | (kv_idx < s_t))

    return window_sinks


def flex_impl(device, *, compile: bool = True, name: str = "flex") -> Impl:
    """FlexAttention with a BlockMask built per case, outside the timed region.

    ``compile=True``: one ``torch.compile(flex_attention, dynamic=False)`` shared by all
    cases (it recompiles once per shape and grad mode); the first call of each new shape
    pays the compile, outside timing. ``compile=False`` runs flex_attention eagerly
    (its unfused reference path; for tests). The cell's info: block-mask build time (ms)
    and the block mask's sparsity (% of blocks skipped).
    """
    device = torch.device(device)
    state: dict = {}

    def flex_fn():
        if "fn" not in state:
            try:
                from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            except ImportError as exc:
                raise Unavailable(f"no FlexAttention in this torch: {exc}") from exc
            fn = flex_attention
            if compile:
                import torch._dynamo

                for limit in ("cache_size_limit", "recompile_limit"):
                    if hasattr(torch._dynamo.config, limit):
                        setattr(torch._dynamo.config, limit, max(128, getattr(torch._dynamo.config, limit)))  # fmt: skip
                fn = torch.compile(flex_attention, dynamic=False)
            state.update(fn=fn, create_block_mask=create_block_mask)
        return state["fn"], state["create_block_mask"]

    def prepare(case):
        fn, create_block_mask = flex_fn()
        n = case["n"]
        mask_mod = flex_mask_mod(case["causal"], case["window"], case["sinks"], device)
        _sync(device)
        start = time.perf_counter()
        block_mask = create_block_mask(mask_mod, None, None, n, n, device=str(device))
        _sync(device)
        info = {"mask_build_ms": 1e3 * (time.perf_counter() - start)}
        try:
            info["block_sparsity_pct"] = float(block_mask.sparsity())
        except Exception:  # informational only
            pass
        return partial(fn, block_mask=block_mask), info

    return Impl(name, prepare)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# -- tables --------------------------------------------------------------------------------


@dataclass
class Column:
    header: str
    width: int
    cell: Callable[[dict], str]


def _ok(row, name):
    cell = row.get("impls", {}).get(name)
    return cell if cell and cell.get("status") == "ok" else None


def _status(row, name) -> str:
    if row.get("skipped"):
        return "skip"
    if row.get("error"):
        return "error"
    cell = row.get("impls", {}).get(name)
    return cell["status"] if cell else "-"


def impl_value(name: str, key: str, fmt: str = "{:.1f}") -> Callable[[dict], str]:
    def cell(row):
        ok = _ok(row, name)
        if ok is None:
            return _status(row, name)
        value = ok.get(key)
        return "?" if value is None else fmt.format(value)

    return cell


def ratio_value(key: str) -> Callable[[dict], str]:
    def cell(row):
        value = row.get("ratios", {}).get(key)
        return "-" if value is None else f"{value:.2f}x"

    return cell


def max_diff_value(row) -> str:
    diffs = [
        value
        for cell in row.get("impls", {}).values()
        for key, value in cell.items()
        if key.startswith("max_abs_diff_vs_")
    ]
    return f"{max(diffs):.1e}" if diffs else "-"


def case_columns(*, window: bool = False) -> list[Column]:
    cols = [
        Column("dtype", 8, lambda r: r["dtype"]),
        Column("D", 4, lambda r: str(r["d"])),
        Column("N", 6, lambda r: str(r["n"])),
        Column("causal", 6, lambda r: "yes" if r["causal"] else "no"),
    ]
    if window:
        cols += [
            Column("window", 6, lambda r: str(r["window"])),
            Column("pairs%", 6, lambda r: f"{100 * r['density']:.1f}"),
        ]
    return cols + [
        Column("B", 3, lambda r: str(r["b"])),
        Column("H", 3, lambda r: str(r["h"])),
    ]


def dense_columns(subject: str, baselines: list[str]) -> list[Column]:
    cols = case_columns() + [
        Column(f"{subject} ms", 9, impl_value(subject, "ms", "{:.3f}")),
        Column(f"{subject} TF/s", 9, impl_value(subject, "tflops")),
        Column("%peak", 5, impl_value(subject, "pct_peak", "{:.0f}")),
    ]
    cols += [Column(f"{b} TF/s", max(9, len(b) + 5), impl_value(b, "tflops")) for b in baselines]
    cols += [Column(f"{subject}/{b}", max(8, len(subject) + len(b) + 1), ratio_value(f"{subject}/{b}")) for b in baselines]  # fmt: skip
    return cols + [Column("max|diff|", 9, max_diff_value)]


def window_columns(subject: str, baseline: str) -> list[Column]:
    return case_columns(window=True) + [
        Column(f"{subject} ms", 9, impl_value(subject, "ms", "{:.3f}")),
        Column(f"{subject} TF/s", 9, impl_value(subject, "tflops")),
        Column(f"{baseline} ms", 9, impl_value(baseline, "ms", "{:.3f}")),
        Column(f"{baseline} TF/s", 9, impl_value(baseline, "tflops")),
        Column(f"{subject}/{baseline}", 9, ratio_value(f"{subject}/{baseline}")),
        Column("mask ms", 7, impl_value(baseline, "mask_build_ms", "{:.1f}")),
        Column("max|diff|", 9, max_diff_value),
    ]


def memory_columns(names: list[str], *, window: bool = False) -> list[Column]:
    cols = case_columns(window=window)
    return cols + [Column(f"{n} MiB", max(9, len(n) + 4), impl_value(n, "peak_mib", "{:.0f}")) for n in names]  # fmt: skip


def format_header(cols: list[Column]) -> str:
    return " ".join(f"{c.header:>{c.width}}" for c in cols)


def format_row(cols: list[Column], row: dict) -> str:
    return " ".join(f"{c.cell(row):>{c.width}}" for c in cols)


def row_notes(row: dict) -> list[str]:
    """One indented line per failed cell: ``name: n/a (reason)`` / ``name: error: reason``."""
    if row.get("skipped"):
        return []
    if row.get("error"):
        return [f"    error: {row['error']}"]
    notes = []
    for name, cell in row.get("impls", {}).items():
        if cell["status"] == "n/a":
            notes.append(f"    {name}: n/a ({cell['reason']})")
        elif cell["status"] == "error":
            notes.append(f"    {name}: error: {cell['reason']}")
    return notes


def run_table(title: str, cases, impls, columns, *, print_fn=None, **kwargs) -> list[dict]:
    """Print ``title`` and the header, run the cases (run_cases), printing each row as it
    completes, flushed (so a run cut short still shows what it measured)."""
    print_fn = print_fn or flush_print
    print_fn(f"-- {title}")
    print_fn(format_header(columns))

    seen: set[str] = set()  # a reason repeated row after row is printed once

    def on_row(row):
        if not row.get("skipped"):
            print_fn(format_row(columns, row))
            for note in row_notes(row):
                if note not in seen:
                    seen.add(note)
                    print_fn(note)

    rows = run_cases(cases, impls, on_row=on_row, **kwargs)
    skipped = sum(1 for r in rows if r.get("skipped"))
    if skipped:
        print_fn(f"   ({skipped} of {len(rows)} cases skipped: the section's time budget ran out)")
    return rows


def print_memory_table(title, rows, names, *, window=False, print_fn=None) -> None:
    print_fn = print_fn or flush_print
    cols = memory_columns(names, window=window)
    print_fn(f"-- {title}")
    print_fn(format_header(cols))
    for row in rows:
        if not row.get("skipped"):
            print_fn(format_row(cols, row))


# -- targets -------------------------------------------------------------------------------


def check_target(label: str, rows, ratio: str, threshold: float, *, min_n: int = 0) -> dict:
    """Worst ``ratio`` over ``rows`` with N >= ``min_n`` against ``threshold``.

    PASS/FAIL on the measured rows; FAIL as well if the subject itself failed on a row
    (that is not a missing baseline); "NOT MEASURED" when no row has the ratio.
    """
    subject = ratio.split("/")[0]
    eligible = [r for r in rows if r["n"] >= min_n]
    measured = [r for r in eligible if ratio in r.get("ratios", {})]
    subject_failed = [
        r for r in eligible
        if r.get("error") or (r.get("impls", {}).get(subject, {}).get("status") == "error")
    ]  # fmt: skip
    result = dict(label=label, ratio=ratio, threshold=threshold, min_n=min_n,
                  cases=len(eligible), measured=len(measured), subject_failed=len(subject_failed))  # fmt: skip
    if not measured:
        result.update(verdict="NOT MEASURED", worst=None)
        return result
    worst = min(measured, key=lambda r: r["ratios"][ratio])
    value = worst["ratios"][ratio]
    where = f"{worst['dtype']} D={worst['d']} N={worst['n']} {'causal' if worst['causal'] else 'non-causal'}"
    if worst.get("window"):
        where += f" window={worst['window']}"
    ok = value >= threshold and not subject_failed
    result.update(verdict="PASS" if ok else "FAIL", worst=value, worst_case=where)
    return result


def format_target(t: dict) -> str:
    scope = f" at N >= {t['min_n']}" if t["min_n"] else ""
    head = f"{t['label']} >= {t['threshold']:.1f}x{scope}"
    if t["worst"] is None:
        return f"{head}: {t['verdict']} (no case measured both)"
    extra = (
        f"; {t['cases'] - t['measured']} of {t['cases']} cases not measured"
        if t["measured"] < t["cases"]
        else ""
    )
    if t["subject_failed"]:
        extra += f"; {t['subject_failed']} cases where ours failed"
    return f"{head}: {t['verdict']} (worst {t['worst']:.2f}x, {t['worst_case']}{extra})"


def best_cell(rows, name: str, key: str):
    values = [(c[key], r) for r in rows if (c := _ok(r, name)) and c.get(key) is not None]
    return max(values, key=lambda p: p[0]) if values else (None, None)


def backward_pct_peak(fwd_rows, train_rows, name: str, peaks: dict) -> float | None:
    """Best backward-only % of peak: (fwd+bwd time - fwd time) of the same case, 2.5x fwd FLOPs."""
    fwd = {(r["dtype"], r["d"], r["n"], r["causal"]): r for r in fwd_rows}
    best = None
    for r in train_rows:
        f = fwd.get((r["dtype"], r["d"], r["n"], r["causal"]))
        a, b = (_ok(f, name) if f else None), _ok(r, name)
        peak = peaks.get(r["dtype"])
        if a and b and peak and b["ms"] > a["ms"]:
            tflops = BACKWARD_FACTOR * f["flops"] / ((b["ms"] - a["ms"]) * 1e-3) / 1e12
            best = max(best or 0.0, 100 * tflops / peak)
    return best


# -- the GPU run ---------------------------------------------------------------------------


GPU_MODES = {
    # Estimated on an H200 (not yet measured): see the module docstring.
    "full": dict(
        dense_ns=[1024, 2048, 4096, 8192, 16384], window_ns=[4096, 8192, 16384],
        ds=[64, 128], dtypes=["float16", "bfloat16"], window_dtypes=["float16", "bfloat16"],
        windows=[1024, 256], budget_s=300,
    ),
    "quick": dict(
        dense_ns=[1024, 4096, 16384], window_ns=[4096, 16384],
        ds=[64, 128], dtypes=["float16", "bfloat16"], window_dtypes=["bfloat16"],
        windows=[1024, 256], budget_s=210,
    ),
}  # fmt: skip
SINKS = 4
GPU_DEVICE = "cuda"  # a test points run_gpu at the CPU, with stand-ins for the CUDA parts


def gpu_implementations(device) -> tuple[list[Impl], list[Impl]]:
    """(dense impls, window impls) on CUDA: ours (Triton), SDPA flash, SDPA cuDNN; ours, flex."""
    from experiments.attention import triton_attention

    ours = attention_impl("ours", triton_attention)
    dense = [ours, sdpa_backend_impl("flash", "FLASH_ATTENTION"), sdpa_backend_impl("cudnn", "CUDNN_ATTENTION")]  # fmt: skip
    return dense, [ours, flex_impl(device, compile=True)]


def run_gpu(quick: bool, *, budget_s: float | None = None) -> dict:
    section("GPU: Triton attention vs SDPA flash / cuDNN, window + sinks vs FlexAttention")
    if not torch.cuda.is_available():
        print("GPU part not run: no CUDA device (torch.cuda.is_available() is False).")
        return {"run": False}
    if not triton_available():
        print("GPU part not run: Triton is not installed.")
        return {"run": False}
    import triton

    mode = "quick" if quick else "full"
    cfg = dict(GPU_MODES[mode], mode=mode)
    if budget_s is not None:
        cfg["budget_s"] = float(budget_s)
    device = torch.device(GPU_DEVICE)
    name = torch.cuda.get_device_name()
    out: dict = {"run": True, "device": name}
    try:
        dense_impls, window_impls = gpu_implementations(device)
        gpu_report(
            cfg, dense_impls, window_impls, device=device, device_name=name,
            timer=cuda_timer(), peak_memory=cuda_peak_mib, cleanup=torch.cuda.empty_cache,
            peaks={dt: peak_tflops(name, DTYPES[dt]) for dt in cfg["dtypes"]},
            versions={"torch": torch.__version__, "triton": triton.__version__},
            timing="triton.testing.do_bench median", out=out,
        )  # fmt: skip
    except Exception as exc:  # keep what was measured; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        out["error"] = one_line(exc)
        flush_print(f"GPU section stopped early: {out['error']} (results so far are kept)")
    return out


def gpu_report(cfg: dict, dense_impls: list[Impl], window_impls: list[Impl], *, device,
               device_name: str, timer, peak_memory=None, cleanup=None, peaks=None,
               versions=None, timing: str = "", print_fn=None, out=None) -> dict:  # fmt: skip
    """The GPU section once the implementations and the timer are chosen (run_gpu does that
    on CUDA; the tests call it on CPU with tiny ``cfg`` and stand-ins).

    ``cfg``: GPU_MODES keys plus ``mode``, optionally ``tokens``/``hidden``/``sinks`` and
    ``target_min_n`` (4096: the dense targets count N >= 4K only).
    The first implementation of each list is "ours"; the dense baselines are named
    "flash" and "cudnn", the window baseline "flex" (the targets look them up).
    Results go into ``out`` (a new dict if None) as each table completes, so a caller
    that catches an exception still has the finished tables; ``out`` is returned.
    """
    start = time.perf_counter()
    print_fn = print_fn or flush_print
    peaks = peaks or {}
    tokens, hidden = cfg.get("tokens", TOKENS), cfg.get("hidden", HIDDEN)
    sinks, budget = cfg.get("sinks", SINKS), float(cfg["budget_s"])
    dense_names = [i.name for i in dense_impls]
    window_names = [i.name for i in window_impls]
    subject = dense_names[0]
    shown_peaks = ", ".join(f"{dt} {p if p else 'unknown'}" for dt, p in peaks.items())
    print_fn(
        f"device: {device_name}; {', '.join(f'{k} {v}' for k, v in (versions or {}).items())}; "
        f"{cfg['mode']} mode, time budget {budget:.0f} s; datasheet dense peak TFLOP/s: "
        f"{shown_peaks or 'unknown'}"
    )
    print_fn(
        f"setup (FlashAttention-2 paper): B*N = {tokens} tokens, H*D = {hidden}; time = "
        f"{timing or 'timer'}; TFLOP/s from 4*B*H*N^2*D forward (halved when causal), x3.5 "
        "forward+backward; window tables use 4*B*H*pairs*D with the attended pairs counted "
        "exactly; max|diff| = largest difference of a baseline's output (forward) or "
        f"gradients (fwd+bwd) from {subject}'s; a failure reason repeated row after row is "
        "printed once"
    )
    common = dict(device=device, timer=timer, peaks=peaks, cleanup=cleanup, print_fn=print_fn)
    shape = dict(tokens=tokens, hidden=hidden)
    out = {} if out is None else out
    out.update({
        "run": True, "device": device_name, **(versions or {}), "mode": cfg["mode"],
        "budget_s": budget, "peak_tflops": peaks, "fa2_paper": FA2_PAPER,
        "settings": dict(cfg, sinks=sinks, tokens=tokens, hidden=hidden),
    })  # fmt: skip
    # Section deadlines: a slow first section cannot starve the later ones.
    deadlines = [start + budget * share for share in (0.3, 0.6, 1.0)]

    dense = out["dense"] = {}
    for index, mode_name in enumerate((FWD, TRAIN)):
        cases = dense_cases(cfg["dense_ns"], cfg["ds"], cfg["dtypes"], mode_name, **shape)
        dense[mode_name] = run_table(
            f"dense {mode_name} ({len(cases)} cases); ratios are throughput, "
            f"{subject} / baseline",
            cases, dense_impls, dense_columns(subject, dense_names[1:]),
            deadline=deadlines[index], peak_memory=peak_memory if mode_name == TRAIN else None,
            **common,
        )  # fmt: skip
    print_memory_table(
        "peak memory, dense forward+backward (MiB above the inputs)",
        dense[TRAIN], dense_names, print_fn=print_fn,
    )  # fmt: skip

    window = out["window"] = {}
    for mode_name in (FWD, TRAIN):
        cases = window_cases(
            cfg["window_ns"], cfg["ds"], cfg["window_dtypes"], cfg["windows"], mode_name,
            sinks=sinks, **shape,
        )  # fmt: skip
        window[mode_name] = run_table(
            f"window + {sinks} sinks, {mode_name} ({len(cases)} cases); mask ms = "
            f"{window_names[1]} BlockMask build, outside timing",
            cases, window_impls, window_columns(subject, window_names[1]),
            deadline=deadlines[2], peak_memory=peak_memory if mode_name == TRAIN else None,
            **common,
        )  # fmt: skip
    print_memory_table(
        "peak memory, window + sinks forward+backward (MiB above the inputs)",
        window[TRAIN], window_names, window=True, print_fn=print_fn,
    )  # fmt: skip

    print_fn("\n-- targets")
    min_n = cfg.get("target_min_n", 4096)
    targets = [
        check_target(f"forward {subject}/flash", dense[FWD], f"{subject}/flash", 0.8, min_n=min_n),
        check_target(f"forward+backward {subject}/flash", dense[TRAIN], f"{subject}/flash", 0.7, min_n=min_n),
        check_target(f"window+sinks forward {subject}/flex", window[FWD], f"{subject}/flex", 1.0),
        check_target(f"window+sinks forward+backward {subject}/flex", window[TRAIN], f"{subject}/flex", 1.0),
    ]  # fmt: skip
    for t in targets:
        print_fn(format_target(t))
    for mode_name in (FWD, TRAIN):
        key = f"{subject}/cudnn"
        ratios = [r["ratios"][key] for r in dense[mode_name] if key in r.get("ratios", {})]
        if ratios:
            print_fn(
                f"(no target) {mode_name} {key}: worst {min(ratios):.2f}x, best {max(ratios):.2f}x"
            )
    out["targets"] = targets

    best = {}
    for mode_name in (FWD, TRAIN):
        best[mode_name] = {
            "pct_peak": best_cell(dense[mode_name], subject, "pct_peak")[0],
            "tflops": best_cell(dense[mode_name], subject, "tflops")[0],
        }
    best["backward_pct_peak"] = backward_pct_peak(dense[FWD], dense[TRAIN], subject, peaks)
    out["ours_best"] = best
    for line in FA2_PAPER_LINES:
        print_fn(line)

    def pct(value):
        return "n/a" if value is None else f"{value:.0f}%"

    def tflops(value):
        return "n/a" if value is None else f"{value:.0f} TFLOP/s"

    print_fn(
        f"{subject} on this {device_name} (measured here, dense table): forward up to "
        f"{pct(best[FWD]['pct_peak'])} of datasheet peak ({tflops(best[FWD]['tflops'])}); "
        f"forward+backward up to {pct(best[TRAIN]['pct_peak'])} "
        f"({tflops(best[TRAIN]['tflops'])}); backward alone (fwd+bwd time minus fwd time) up "
        f"to {pct(best['backward_pct_peak'])}"
    )
    out["wall_s"] = time.perf_counter() - start
    print_fn(f"(GPU section took {out['wall_s']:.0f} s)")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, about 30 s on CPU")
    parser.add_argument(
        "--gpu-quick", action="store_true", help="the quick GPU tables (implied by --quick)"
    )
    parser.add_argument(
        "--gpu-budget-s",
        type=float,
        help="start no GPU case after this many seconds (default 300 full, 210 quick)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["errors", "memory", "speed", "gpu"]
    )
    parser.add_argument("--interpreter-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.interpreter_child:
        _interpreter_child(args.interpreter_child)
        return {}

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"streaming attention benchmark: device {device} ({name}), torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, {'quick' if args.quick else 'full'} run"
    )
    start = time.perf_counter()
    results: dict = {"device": str(device), "device_name": name, "quick": args.quick}
    if "errors" not in args.skip:
        results["errors"] = run_errors(device, args.quick)
    if "memory" not in args.skip:
        results["memory"] = run_memory(args.quick)
    if "speed" not in args.skip:
        results["cpu_speed"] = run_cpu_speed(args.quick)
    if "gpu" not in args.skip:
        results["gpu"] = run_gpu(args.quick or args.gpu_quick, budget_s=args.gpu_budget_s)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
