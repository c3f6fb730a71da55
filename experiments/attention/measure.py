"""Measuring attention: error against float64, wall time, measured peak memory.

Shared by ``benchmarks/attention.py`` and ``notebooks/streaming_attention.ipynb``.

Peak memory is *measured*, not computed from tensor sizes. Each implementation
runs in a fresh worker process (``python -m experiments.attention.measure``) that,
per case, allocates the inputs, reads its resident set size (RSS), resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``, Linux), runs the call and
reads the peak back (``VmHWM``). Peak extra memory = peak RSS - RSS before the
call, so it counts everything the call touched: outputs, temporaries, allocator
overhead. The worker pins glibc's malloc thresholds so freed blocks go back to the
OS instead of being silently reused by the next case, and runs torch on one thread.
Where the peak counter cannot
be reset (not Linux), every case gets its own process and ``ru_maxrss`` instead.

A memory cap is enforced for real, not compared on paper: with ``cap_mib`` set,
the worker lowers its address-space limit (``RLIMIT_AS``) to its current size plus
the cap before the call, so an implementation that needs more fails to allocate.

On CUDA, peak memory is ``torch.cuda.max_memory_allocated`` minus the memory
allocated before the call (exact for PyTorch's caching allocator), and a cap is
checked after the run: a case that went over it is reported as failed.
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from experiments.process_memory import (
    peak_bytes,
    reset_peak,
    rss_bytes,
    run_worker,
    vm_size_bytes,
)

MIB = 1024 * 1024

# Dense peak TFLOP/s by device name fragment: (16-bit tensor cores, float32 without TF32).
# Vendor datasheet numbers, SXM parts unless the name says otherwise.
PEAK_TFLOPS = {
    "H200": (989.0, 67.0),
    "H100 PCIe": (756.0, 51.0),
    "H100": (989.0, 67.0),
    "A100": (312.0, 19.5),
    "L40S": (362.0, 91.6),
    "A10G": (125.0, 31.2),
    "L4": (121.0, 30.3),
    "RTX 4090": (165.2, 82.6),
    "RTX 3090": (71.0, 35.6),
}


def peak_tflops(device_name: str, dtype: torch.dtype) -> float | None:
    """Datasheet dense peak for the device, or None if it is not in the table."""
    for fragment, (half, single) in PEAK_TFLOPS.items():
        if fragment in device_name:
            return single if dtype == torch.float32 else half
    return None


def attention_flops(
    b: int, h: int, n: int, d: int, *, causal: bool, backward: bool = False
) -> float:
    """4*B*H*N^2*D for the forward (two matmuls), halved for causal; backward is 2.5x forward."""
    flops = 4.0 * b * h * n * n * d
    if causal:
        flops /= 2
    return flops * 2.5 if backward else flops


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float64": torch.float64,
        "fp64": torch.float64,
    }
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(table)}")
    return table[name]


LAYOUTS = ("contiguous", "transposed")


def make_inputs(
    b,
    h,
    n,
    d,
    *,
    dtype=torch.float32,
    device="cpu",
    seed=0,
    requires_grad=False,
    n_kv=None,
    h_kv=None,
    layout="contiguous",
):
    """Seeded q (B, H, N, D) and k, v (B, h_kv or H, n_kv or N, D), drawn in float64 on
    the CPU then cast.

    q, k, v are drawn in that order from one generator, so without ``n_kv``/``h_kv``
    the draws are those of the self-attention inputs. ``layout="transposed"`` gives
    the same values as non-contiguous views: each tensor is stored as (B, N, H, D)
    and returned as ``.transpose(1, 2)`` (the layout a (B, N, H*D) projection gives).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    kv_shape = (b, h if h_kv is None else h_kv, n if n_kv is None else n_kv, d)
    gen = torch.Generator().manual_seed(seed)
    tensors = [
        torch.randn(shape, generator=gen, dtype=torch.float64)
        for shape in ((b, h, n, d), kv_shape, kv_shape)
    ]
    tensors = [t.to(device=device, dtype=dtype) for t in tensors]
    if layout == "transposed":
        # empty + copy_, not .contiguous(): that keeps strides as they are when N or H is 1
        tensors = [
            t.new_empty(t.shape[0], t.shape[2], t.shape[1], t.shape[3])
            .copy_(t.transpose(1, 2))
            .transpose(1, 2)
            for t in tensors
        ]
    return [t.requires_grad_(requires_grad) for t in tensors]


def impl_fn(impl: str) -> Callable:
    from experiments import attention as A

    fns = {
        "naive": A.naive_attention,
        "blockwise": A.blockwise_attention,
        "sdpa": A.sdpa_attention,
        "triton": A.triton_attention,
    }
    return fns[impl]


# ---------------------------------------------------------------------------------------
# Error against a float64 reference
# ---------------------------------------------------------------------------------------


def errors_vs_float64(
    impl,
    *,
    b=1,
    h=4,
    n=512,
    d=64,
    dtype=torch.float32,
    device="cpu",
    causal=True,
    window=0,
    sinks=0,
    seed=0,
    backward=True,
    n_kv=None,
    h_kv=None,
    layout="contiguous",
    grad_kind="random",
) -> dict:
    """Max abs error of forward output and of dQ, dK, dV against naive attention in float64.

    Inputs are drawn once, cast to ``dtype``, and the reference gets exactly those
    (cast) values in float64, so only the attention computation's error is measured.
    ``n_kv``/``h_kv`` give keys and values their own length and head count (see
    ``make_inputs``), ``layout="transposed"`` makes q, k, v non-contiguous views.
    ``grad_kind``: the upstream gradient, "random" (seeded normal) or
    "ones_expanded" (all ones with stride 0, as ``out.sum().backward()`` gives).
    """
    if grad_kind not in ("random", "ones_expanded"):
        raise ValueError(f"grad_kind must be 'random' or 'ones_expanded', got {grad_kind!r}")
    fn = impl_fn(impl)
    opts = dict(causal=causal, window=window, sinks=sinks)
    q, k, v = make_inputs(
        b,
        h,
        n,
        d,
        dtype=dtype,
        device=device,
        seed=seed,
        requires_grad=backward,
        n_kv=n_kv,
        h_kv=h_kv,
        layout=layout,
    )
    ref_in = [t.detach().to(torch.float64).contiguous().requires_grad_(backward) for t in (q, k, v)]
    ref = impl_fn("naive")(*ref_in, **opts)
    out = fn(q, k, v, **opts)
    result = {"fwd": (out.detach().to(torch.float64) - ref.detach()).abs().max().item()}
    if backward:
        if grad_kind == "random":
            gen = torch.Generator().manual_seed(seed + 1)
            grad = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(ref.device)
            grad_in = grad.to(dtype)
        else:  # one stored element, stride 0 in every dim
            grad = torch.ones((), dtype=torch.float64, device=ref.device).expand(ref.shape)
            grad_in = torch.ones((), dtype=dtype, device=out.device).expand(out.shape)
        ref_grads = torch.autograd.grad(ref, ref_in, grad)
        grads = torch.autograd.grad(out, (q, k, v), grad_in)
        result["grad"] = max(
            (g.to(torch.float64) - r).abs().max().item()
            for g, r in zip(grads, ref_grads, strict=True)
        )
    return result


# ---------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------


def time_fn(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1, device=None) -> float:
    """Median wall time of ``fn()`` in seconds (CUDA-synchronised on a GPU)."""
    cuda = device is not None and torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare_forward_times(
    impls,
    *,
    b,
    h,
    n,
    d,
    dtype=torch.float32,
    device="cpu",
    causal=True,
    window=0,
    sinks=0,
    repeats=3,
    threads: int | None = None,
) -> dict[str, float]:
    """Best-of-``repeats`` forward time per implementation, in seconds, measured side by side.

    Rounds are interleaved (impl A, B, C, then A, B, C again ...) after one warm-up
    call each, so a burst of load from other processes hits every implementation
    alike; the minimum is the least disturbed run. ``threads`` sets torch's CPU
    intra-op threads for the measurement (None: leave as is).
    """
    q, k, v = make_inputs(b, h, n, d, dtype=dtype, device=device)
    opts = dict(causal=causal, window=window, sinks=sinks)
    calls = {impl: (lambda fn=impl_fn(impl): fn(q, k, v, **opts)) for impl in impls}
    best = {impl: math.inf for impl in impls}
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for call in calls.values():
                call()
            for _ in range(repeats):
                for impl, call in calls.items():
                    best[impl] = min(best[impl], time_fn(call, repeats=1, warmup=0, device=device))
    finally:
        torch.set_num_threads(saved_threads)
    return best


def load_average() -> float | None:
    """1-minute load average (runnable processes), or None where unsupported."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------------------------------
# Peak memory, measured
# ---------------------------------------------------------------------------------------


def _run_case(case: dict, resettable: bool) -> dict:
    """Run one case in this (worker) process and measure its peak extra memory."""
    impl, n, backward = case["impl"], case["n"], case.get("backward", False)
    device = torch.device(case.get("device", "cpu"))
    dtype = parse_dtype(case.get("dtype", "float32"))
    opts = dict(
        causal=case.get("causal", True), window=case.get("window", 0), sinks=case.get("sinks", 0)
    )
    fn = impl_fn(impl)
    q, k, v = make_inputs(
        case["b"],
        case["h"],
        n,
        case["d"],
        dtype=dtype,
        device=device,
        requires_grad=backward,
        n_kv=case.get("n_kv"),
        h_kv=case.get("h_kv"),
    )
    grad = torch.ones_like(q) if backward else None  # the output is q's shape

    def call():
        if backward:
            torch.autograd.grad(fn(q, k, v, **opts), (q, k, v), grad)
        else:
            with torch.no_grad():
                fn(q, k, v, **opts)

    result = dict(case)
    cap = case.get("cap_mib")
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        try:
            call()
            torch.cuda.synchronize()
            peak_mib = (torch.cuda.max_memory_allocated() - before) / MIB
            ok = cap is None or peak_mib <= cap  # on a GPU the cap is checked after the run
            result.update(ok=ok, peak_extra_mib=peak_mib if ok else None)
        except torch.cuda.OutOfMemoryError:
            result.update(ok=False, peak_extra_mib=None)
        return result

    before = rss_bytes()
    reset_peak()
    limits = None
    if cap is not None:
        import resource

        limits = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm_size_bytes() + int(cap * MIB), limits[1]))
    start = time.perf_counter()
    try:
        call()
        ok = True
    except (RuntimeError, MemoryError) as exc:  # torch reports a failed allocation as RuntimeError
        if "alloc" not in str(exc).lower() and not isinstance(exc, MemoryError):
            raise
        ok = False
    finally:
        if limits is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, limits)
    seconds = time.perf_counter() - start
    peak = peak_bytes(resettable)
    result.update(
        ok=ok, seconds=seconds, peak_extra_mib=max(0, peak - before) / MIB if ok else None
    )
    return result


def _worker_main() -> None:
    """Worker entry point: JSON list of cases on stdin, JSON list of results on stdout."""
    cases = json.loads(sys.stdin.read())
    # One thread: per-thread scratch buffers do not vary with the machine, and a shared
    # machine cannot stall the worker's thread pool. Time is measured elsewhere.
    torch.set_num_threads(1)
    resettable = reset_peak()
    if cases:  # warm up: load kernels, start thread pools, outside any measurement
        warm = dict(cases[0], n=min(64, cases[0]["n"]), cap_mib=None)
        if warm.get("n_kv") is not None:
            warm["n_kv"] = min(64, warm["n_kv"])  # still >= n: min(64, n) <= min(64, n_kv)
        _run_case(warm, resettable)
    results = [_run_case(case, resettable) for case in cases]
    print(json.dumps(results))


def measure_peak_memory(cases: list[dict], *, timeout: float = 600) -> list[dict]:
    """Measure each case's peak extra memory in a fresh worker process (see module docstring).

    A case is a dict with impl, n, b, h, d and optionally n_kv, h_kv (keys' length
    and heads), dtype, device, causal, window, sinks, backward, cap_mib. Returns the cases with ``ok`` (False when the
    cap made an allocation fail) and ``peak_extra_mib`` added.
    """
    if reset_peak():  # one worker per implementation, cases in the given order
        groups: dict[tuple, list[dict]] = {}
        for case in cases:
            groups.setdefault((case["impl"], case.get("backward", False)), []).append(case)
        batches = list(groups.values())
    else:  # the peak cannot be reset: one worker per case
        batches = [[case] for case in cases]
    results = []
    for batch in batches:
        results.extend(run_worker("experiments.attention.measure", batch, timeout=timeout))
    return results


def loglog_slope(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    num = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True))
    den = sum((a - mx) ** 2 for a in lx)
    return num / den


if __name__ == "__main__":
    _worker_main()
