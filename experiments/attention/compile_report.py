"""GPU readiness without a GPU: compile each attention kernel for sm_90a and read ptxas.

Triton compiles for any target on a machine with no GPU, and ships the ``ptxas``
it assembles with. This module compiles each kernel variant (kernel x input dtype
x head dim x mask mode x launch configuration) to PTX with ``triton.compile``,
assembles that PTX with Triton's ptxas and the flags Triton itself uses, and parses
ptxas's resource report: registers per thread, stack frame, spill stores and loads.

Specialisation follows a typical launch: contiguous (B, H, N, D) inputs, so the
innermost strides are the constant 1, other strides, the lengths and all pointers
16-divisible; the group size, window and sinks are runtime values.

    python -m experiments.attention.compile_report            # every candidate config
    python -m experiments.attention.compile_report --first    # the first candidate only
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
MASKS = {  # name: (CAUSAL, HAS_WINDOW)
    "none": (False, False),
    "causal": (True, False),
    "window": (False, True),
    "causal+window": (True, True),
}
ARCH = 90  # sm_90a: H100/H200

_POINTER_TYPES = {"LSE": "*fp32", "DELTA": "*fp32"}
_TRITON_TYPE = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}
_FLOAT_ARGS = {"qk_scale", "sm_scale"}
_RUNTIME_INTS = {"GROUP", "WINDOW", "SINKS"}  # no divisibility assumed


@dataclass(frozen=True)
class Variant:
    kernel: str  # "fwd", "dkdv" or "dq"
    dtype: str
    head_dim: int
    mask: str
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class Resources:
    registers: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    shared_bytes: int


def variants(*, first_only: bool = False, head_dims=(64, 128), dtypes=tuple(DTYPES)):
    """Every (kernel, dtype, head dim, mask, candidate config) combination."""
    from experiments.attention import triton_kernel as tk

    for kernel, dtype, d, mask in itertools.product(tk.KERNELS, dtypes, head_dims, MASKS):
        key = (kernel, tk.head_dim_class(tk.block_d_for(d)), tk.width_class(DTYPES[dtype]))
        cands = tk.CANDIDATES.get(key, [])  # none where the dispatcher falls back
        for cfg in cands[:1] if first_only else cands:
            yield Variant(kernel, dtype, d, mask, cfg.block_m, cfg.block_n, cfg.num_warps,
                          cfg.num_stages)  # fmt: skip


def _source(v: Variant):
    from triton.compiler import ASTSource

    from experiments.attention import triton_kernel as tk

    fn = {"fwd": tk._attn_fwd, "dkdv": tk._attn_bwd_dkdv, "dq": tk._attn_bwd_dq}[v.kernel]
    dtype = DTYPES[v.dtype]
    causal, has_window = MASKS[v.mask]
    consts = dict(
        HEAD_DIM=v.head_dim,
        BLOCK_D=tk.block_d_for(v.head_dim),
        BLOCK_M=v.block_m,
        BLOCK_N=v.block_n,
        CAUSAL=causal,
        HAS_WINDOW=has_window,
        PRECISION=tk._precision_for_target(dtype),
    )
    signature, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in consts:
            signature[name] = "constexpr"
        elif name.startswith("stride_") and name.endswith("d"):
            signature[name] = "constexpr"  # contiguous: the innermost stride is 1
            consts[name] = 1
        elif name in _FLOAT_ARGS:
            signature[name] = "fp32"
        elif name[0].isupper() and name not in tk.INT_ARGS:
            signature[name] = _POINTER_TYPES.get(name, _TRITON_TYPE[dtype])
            attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if name not in _RUNTIME_INTS:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)


_REPORT = {
    "stack_bytes": r"(\d+) bytes stack frame",
    "spill_store_bytes": r"(\d+) bytes spill stores",
    "spill_load_bytes": r"(\d+) bytes spill loads",
    "registers": r"Used (\d+) registers",
}


def parse_ptxas(log: str) -> Resources:
    """Registers, stack and spills from ``ptxas -v`` output (one kernel)."""
    found = {}
    for field, pattern in _REPORT.items():
        match = re.search(pattern, log)
        if not match:
            raise ValueError(f"ptxas report has no {field}: {log!r}")
        found[field] = int(match.group(1))
    shared = re.search(r"(\d+) bytes smem", log)
    return Resources(shared_bytes=int(shared.group(1)) if shared else 0, **found)


def compile_variant(v: Variant) -> dict:
    """Compile one variant for sm_90a; its resources, or the error."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas

    row = asdict(v)
    try:
        kernel = triton.compile(
            _source(v),
            target=GPUTarget("cuda", ARCH, 32),
            options=dict(num_warps=v.num_warps, num_stages=v.num_stages),
        )
        with tempfile.TemporaryDirectory() as tmp:
            ptx = os.path.join(tmp, "kernel.ptx")
            with open(ptx, "w") as fh:
                fh.write(kernel.asm["ptx"])
            cmd = [get_ptxas(ARCH).path, "-v", "--regAllocOptLevel=2", f"--gpu-name=sm_{ARCH}a",
                   ptx, "-o", os.path.join(tmp, "kernel.cubin")]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row.update(asdict(parse_ptxas(proc.stdout + proc.stderr)))
        row["shared_bytes"] = kernel.metadata.shared
    except Exception as exc:  # reported per variant
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
    return row


def report(vs, *, workers: int | None = None) -> list[dict]:
    """Compile variants in parallel worker processes (each compile is single-threaded)."""
    vs = list(vs)
    workers = workers or min(len(vs), os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(compile_variant, vs))


def print_table(rows: list[dict]) -> None:
    head = (f"{'kernel':<5} {'dtype':<9} {'D':>4} {'mask':<14} {'BM':>4} {'BN':>4} {'w':>2} "
            f"{'s':>2} {'regs':>5} {'stack':>6} {'spill st':>9} {'spill ld':>9} {'smem KB':>8}")  # fmt: skip
    print(head)
    for r in rows:
        cfg = (f"{r['kernel']:<5} {r['dtype']:<9} {r['head_dim']:>4} {r['mask']:<14} "
               f"{r['block_m']:>4} {r['block_n']:>4} {r['num_warps']:>2} {r['num_stages']:>2}")  # fmt: skip
        if "error" in r:
            print(f"{cfg} error: {r['error']}")
        else:
            print(f"{cfg} {r['registers']:>5} {r['stack_bytes']:>6} {r['spill_store_bytes']:>9} "
                  f"{r['spill_load_bytes']:>9} {r['shared_bytes'] / 1024:>8.1f}")  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", action="store_true", help="only the first candidate config")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--kernels", nargs="+", default=None)
    parser.add_argument("--masks", nargs="+", default=list(MASKS), choices=list(MASKS))
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    vs = [
        v
        for v in variants(
            first_only=args.first, head_dims=tuple(args.head_dims), dtypes=tuple(args.dtypes)
        )
        if (args.kernels is None or v.kernel in args.kernels) and v.mask in args.masks
    ]
    rows = report(vs)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
