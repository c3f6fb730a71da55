"""Benchmark streaming attention: error, measured memory, CPU speed, GPU throughput.

Implementations: naive (materialises the (N, N) scores), blockwise PyTorch
(online softmax), Triton (fused kernels; GPU, or the CPU interpreter for error
only) and PyTorch SDPA. See experiments/attention/ for the algorithms and
experiments/attention/measure.py for how memory is measured (fresh worker process,
peak RSS reset before each call, cap enforced with RLIMIT_AS).

    python benchmarks/attention.py            # 2-3 minutes on 2 CPU cores
    python benchmarks/attention.py --quick    # about 30 seconds
    python benchmarks/attention.py --json out.json

Acceptance figures printed (from issue 6): fp32 error vs float64 <= 1e-5 (forward),
<= 1e-4 (gradients); fp16/bf16 error <= 2x naive's at the same dtype; peak extra
memory at N=4096 >= 10x below naive; log-log slope of memory vs N ~2 (naive) and
~1 (blockwise); the N where naive fails under a memory cap while blockwise runs;
blockwise forward vs SDPA on CPU at N=4096; on a GPU, Triton forward TFLOP/s, % of
peak and ratio to SDPA's flash backend for N 1K-16K, D 64/128.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

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
    make_inputs,
    measure_peak_memory,
    peak_tflops,
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
# GPU
# ---------------------------------------------------------------------------------------


def _gpu_seconds(fn, *, flash: bool) -> float:
    """Median CUDA time of fn() in seconds (triton.testing.do_bench), optionally SDPA flash only."""
    import triton.testing
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if flash:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return triton.testing.do_bench(fn) / 1e3
    return triton.testing.do_bench(fn) / 1e3


def _forward_call(fn, q, k, v, causal):
    def call():
        with torch.no_grad():
            return fn(q, k, v, causal=causal)

    return call


def _train_call(fn, q, k, v, grad):
    return lambda: torch.autograd.grad(fn(q, k, v, causal=True), (q, k, v), grad)


def run_gpu(quick: bool) -> dict:
    section("GPU throughput (Triton forward vs SDPA flash backend)")
    if not torch.cuda.is_available():
        print("GPU part not run: no CUDA device (torch.cuda.is_available() is False).")
        return {"run": False}
    if not triton_available():
        print("GPU part not run: Triton is not installed.")
        return {"run": False}
    from experiments.attention import sdpa_attention, triton_attention

    name = torch.cuda.get_device_name()
    print(f"device: {name}")
    dtype = torch.float16
    peak = peak_tflops(name, dtype)
    print(f"dense float16 peak: {peak if peak else 'unknown'} TFLOP/s (datasheet)")
    ns = [1024, 4096, 16384] if quick else [1024, 2048, 4096, 8192, 16384]
    tokens, hidden = 16384, 2048  # FlashAttention-2 paper setup: B*N = 16K tokens, H*D = 2048
    rows = []
    print(
        f"{'D':>4} {'N':>6} {'causal':>6} {'triton ms':>10} {'TFLOP/s':>8} {'%peak':>6} "
        f"{'sdpa ms':>8} {'TFLOP/s':>8} {'triton/sdpa':>11}"
    )
    for d in (64, 128):
        for n in ns:
            for causal in (False, True):
                b, h = max(1, tokens // n), hidden // d
                q, k, v = make_inputs(b, h, n, d, dtype=dtype, device="cuda")
                flops = attention_flops(b, h, n, d, causal=causal)
                t_tri = _gpu_seconds(_forward_call(triton_attention, q, k, v, causal), flash=False)
                t_sdpa = _gpu_seconds(_forward_call(sdpa_attention, q, k, v, causal), flash=True)
                row = dict(d=d, n=n, b=b, h=h, causal=causal, triton_s=t_tri, sdpa_s=t_sdpa)
                row["triton_tflops"] = flops / t_tri / 1e12
                row["sdpa_tflops"] = flops / t_sdpa / 1e12
                row["triton_over_sdpa_throughput"] = t_sdpa / t_tri
                row["triton_pct_peak"] = 100 * row["triton_tflops"] / peak if peak else None
                rows.append(row)
                pct = f"{row['triton_pct_peak']:>5.1f}%" if peak else f"{'?':>6}"
                print(
                    f"{d:>4} {n:>6} {str(causal):>6} {t_tri * 1e3:>10.3f} {row['triton_tflops']:>8.1f} "
                    f"{pct} {t_sdpa * 1e3:>8.3f} {row['sdpa_tflops']:>8.1f} "
                    f"{row['triton_over_sdpa_throughput']:>10.2f}x"
                )
                del q, k, v
    worst = min(r["triton_over_sdpa_throughput"] for r in rows)
    print(
        f"Triton forward >= 0.7x SDPA flash throughput (worst {worst:.2f}x): {verdict(worst >= 0.7)}"
    )

    train = []
    for d in (64, 128):  # forward+backward, one size per head dim
        n = 4096
        b, h = tokens // n, hidden // d
        q, k, v = make_inputs(b, h, n, d, dtype=dtype, device="cuda", requires_grad=True)
        grad = torch.randn_like(q)
        flops = attention_flops(b, h, n, d, causal=True) * 3.5  # forward + backward (2.5x)
        t_tri = _gpu_seconds(_train_call(triton_attention, q, k, v, grad), flash=False)
        t_sdpa = _gpu_seconds(_train_call(sdpa_attention, q, k, v, grad), flash=True)
        train.append(dict(d=d, n=n, triton_s=t_tri, sdpa_s=t_sdpa))
        print(
            f"fwd+bwd D={d} N={n} causal: triton {t_tri * 1e3:.2f} ms ({flops / t_tri / 1e12:.1f} "
            f"TFLOP/s), sdpa flash {t_sdpa * 1e3:.2f} ms ({flops / t_sdpa / 1e12:.1f} TFLOP/s)"
        )
    return {"run": True, "device": name, "rows": rows, "train": train}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, about 30 s on CPU")
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
        results["gpu"] = run_gpu(args.quick)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
