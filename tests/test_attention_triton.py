"""Triton attention kernels: forward and backward under the interpreter, compile check, GPU.

Triton decides between compiling and interpreting when a kernel is decorated, from
``TRITON_INTERPRET``. So the interpreter checks run in one child process started
with ``TRITON_INTERPRET=1`` (this file run as a script), whatever else this pytest
process has imported; its results come back as JSON and each test asserts on one
case. Shapes are small (the interpreter runs on the CPU, in NumPy) and the launch
config is the one fixed interpreter config.

Tolerances against a float64 reference: float32 forward <= 1e-5, gradients <= 1e-4;
float16 at most 2x the naive implementation's error in float16 (the interpreter has
no bfloat16, so bfloat16 is covered by the GPU tests only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.support import REPO_ROOT

try:
    import importlib.util

    HAVE_TRITON = importlib.util.find_spec("triton") is not None
except (ImportError, ValueError):
    HAVE_TRITON = False

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")

# (name, dtype, b, h, n, d, causal, window, sinks)
CASES = [
    ("causal_fp32", "float32", 1, 2, 40, 16, True, 0, 0),
    ("noncausal_fp32", "float32", 2, 1, 40, 16, False, 0, 0),
    ("window_sinks_causal_fp32", "float32", 1, 2, 70, 16, True, 9, 3),
    ("window_sinks_noncausal_fp32", "float32", 1, 2, 70, 16, False, 9, 3),
    ("sinks_span_blocks_fp32", "float32", 1, 1, 80, 16, True, 20, 18),
    ("window_and_sinks_exceed_n_fp32", "float32", 1, 1, 20, 16, False, 50, 100),
    ("ragged_n_fp32", "float32", 1, 2, 37, 32, True, 0, 0),
    ("n_equals_1_fp32", "float32", 1, 2, 1, 16, True, 0, 0),
    ("d_not_power_of_two_fp32", "float32", 1, 2, 33, 24, False, 0, 0),
    ("causal_fp16", "float16", 1, 2, 48, 32, True, 0, 0),
    ("window_sinks_fp16", "float16", 1, 2, 48, 32, True, 10, 2),
]
IDS = [c[0] for c in CASES]


def _run_case(dtype_name, b, h, n, d, causal, window, sinks) -> dict:
    """Errors of Triton (and, in half precision, naive) against float64. Runs in the child."""
    from experiments.attention.blockwise import blockwise_forward_with_lse
    from experiments.attention.measure import errors_vs_float64, make_inputs
    from experiments.attention.triton_kernel import triton_forward_with_lse

    dtype = getattr(torch, dtype_name)
    kw = dict(b=b, h=h, n=n, d=d, dtype=dtype, causal=causal, window=window, sinks=sinks, seed=11)
    result = {"triton": errors_vs_float64("triton", **kw)}
    if dtype != torch.float32:
        result["naive"] = errors_vs_float64("naive", **kw)
    q, k, v = make_inputs(b, h, n, d, dtype=torch.float32, seed=11)
    _, lse = triton_forward_with_lse(q, k, v, causal=causal, window=window, sinks=sinks)
    _, lse_ref = blockwise_forward_with_lse(
        *(t.double() for t in (q, k, v)), causal=causal, window=window, sinks=sinks
    )
    result["lse"] = (lse.double() - lse_ref).abs().max().item()
    return result


def _child_main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    results = {}
    for name, *args in CASES:
        try:
            results[name] = _run_case(*args)
        except Exception as exc:  # report per case; the test shows the message
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(results))


@pytest.fixture(scope="module")
def interpreter_results():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, __file__],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_triton
@pytest.mark.parametrize("name,dtype,b,h,n,d,causal,window,sinks", CASES, ids=IDS)
def test_triton_interpreter_matches_reference(
    interpreter_results, name, dtype, b, h, n, d, causal, window, sinks
):
    res = interpreter_results[name]
    assert "error" not in res, res.get("error")
    assert res["lse"] <= 1e-5  # the saved log-sum-exp, float32
    if dtype == "float32":
        assert res["triton"]["fwd"] <= 1e-5
        assert res["triton"]["grad"] <= 1e-4
    else:
        assert res["triton"]["fwd"] <= 2 * res["naive"]["fwd"]
        assert res["triton"]["grad"] <= 2 * res["naive"]["grad"]


@needs_triton
def test_triton_rejects_cpu_tensors_without_interpreter():
    code = (
        "import torch\n"
        "from experiments.attention import triton_attention\n"
        "q = torch.randn(1, 1, 8, 16)\n"
        "try:\n"
        "    triton_attention(q, q, q)\n"
        "except ValueError as e:\n"
        "    print('ValueError', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        check=True,
    )
    assert "needs CUDA tensors" in out.stdout


@needs_triton
@pytest.mark.slow
def test_triton_kernels_compile_for_sm90():
    """The interpreter does not type-check like the compiler: compile all three kernels
    to a CUDA binary for sm_90 (no GPU needed; ptxas ships with Triton)."""
    code = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from experiments.attention import triton_kernel as tk
import torch

target = GPUTarget("cuda", 90, 32)
for fn, bwd in ((tk._attn_fwd, False), (tk._attn_bwd_dkdv, True), (tk._attn_bwd_dq, True)):
    cfg = tk.kernel_config(torch.float16, 64, backward=bwd)
    consts = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=64, CAUSAL=True,
                  HAS_WINDOW=True, PRECISION="tf32")
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ("LSE", "DELTA"):
            sig[name] = "*fp32"
        elif name in ("Q", "K", "V", "Out", "DO", "DK", "DV", "DQ"):
            sig[name] = "*fp16"
        else:
            sig[name] = "fp32" if name == "sm_scale" else "i32"
    src = ASTSource(fn=fn, signature=sig,
                    constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    kernel = triton.compile(src, target=target,
                            options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    assert kernel.asm["cubin"], fn.__name__
    print(fn.__name__, "ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("ptxas not available")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count(" ok") == 3


# --- GPU -------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@needs_triton
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("causal,window,sinks", [(True, 0, 0), (False, 0, 0), (True, 256, 4)])
@pytest.mark.parametrize("n,d", [(1000, 64), (517, 128)])
def test_triton_on_gpu(dtype, causal, window, sinks, n, d):
    from experiments.attention.measure import errors_vs_float64

    kw = dict(
        b=2,
        h=3,
        n=n,
        d=d,
        dtype=getattr(torch, dtype),
        device="cuda",
        causal=causal,
        window=window,
        sinks=sinks,
        seed=7,
    )
    triton_err = errors_vs_float64("triton", **kw)
    if dtype == "float32":
        assert triton_err["fwd"] <= 1e-5
        assert triton_err["grad"] <= 1e-4
    else:
        naive_err = errors_vs_float64("naive", **kw)
        assert triton_err["fwd"] <= 2 * naive_err["fwd"]
        assert triton_err["grad"] <= 2 * naive_err["grad"]


if __name__ == "__main__":
    _child_main()
