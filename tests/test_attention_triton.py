"""Triton attention kernels: every mask under the interpreter, sm_90a readiness, GPU.

Triton decides between compiling and interpreting when a kernel is decorated, from
``TRITON_INTERPRET``. So the interpreter checks run in one child process started
with ``TRITON_INTERPRET=1`` (this file run as a script), whatever else this pytest
process has imported; its results come back as JSON and each test asserts on one
case. Shapes are small (the interpreter runs on the CPU, in NumPy) and the launch
config is the one fixed interpreter config (16 x 16 tiles), so a few dozen rows
already cross many tile boundaries.

The reference is written here, independently of the package: float64 softmax over
an explicit mask built from the definition (query row i at position i + Nk - Nq
attends key j iff (not causal or j <= p) and (window == 0 or |p - j| < window or
j < sinks)), keys and values repeated per query head for grouped-query attention.

Tolerances, as error / max(1, largest reference magnitude): float32 forward <= 1e-5,
gradients <= 1e-4 (the interpreter computes float32 products exactly; on a GPU
float32 uses three-pass TF32); float16 at most 2x the error of float16 naive
attention (the interpreter's bfloat16 dot is wrong, so bfloat16 is GPU-only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from tests.support import REPO_ROOT

try:
    import importlib.util

    HAVE_TRITON = importlib.util.find_spec("triton") is not None
except (ImportError, ValueError):
    HAVE_TRITON = False

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@dataclass(frozen=True)
class Case:
    name: str
    n_q: int
    d: int = 16
    n_k: int | None = None  # None: n_q
    h: int = 2
    h_kv: int | None = None  # None: h
    b: int = 1
    causal: bool = False
    window: int = 0
    sinks: int = 0
    dtype: str = "float32"
    layout: str = "contiguous"  # or "transposed": (B, N, H, D) storage viewed as (B, H, N, D)
    grad: str = "random"  # or "ones_expanded": a stride-0 upstream gradient
    max_logit: float | None = None  # rescale q so the largest |score| is this


CASES = [
    Case("causal", 40, causal=True),
    Case("noncausal", 40, b=2),
    Case("window_sinks_causal", 70, causal=True, window=9, sinks=3),
    Case("window_sinks_noncausal", 70, window=9, sinks=3),
    # sinks far beyond the window: sink blocks right of the window (the old kernel skipped them)
    Case("sinks_far_beyond_window", 200, h=1, window=4, sinks=100),
    Case("sinks_beyond_window_n96", 96, h=1, window=8, sinks=40),
    Case("sinks_beyond_window_causal", 200, h=1, causal=True, window=4, sinks=100),
    Case("window_1", 50, window=1),
    Case("window_1_causal_sinks", 50, causal=True, window=1, sinks=2),
    Case("sinks_at_least_n", 20, h=1, window=5, sinks=20),
    Case("window_and_sinks_exceed_n", 20, h=1, window=50, sinks=100),
    Case("ragged_n", 37, d=32, causal=True),
    Case("n_equals_1", 1, causal=True),
    Case("d40", 33, d=40, window=6, sinks=2),
    Case("d64", 33, d=64, causal=True),
    Case("d128", 24, d=128, h=1, causal=True, window=7, sinks=1),
    Case("d256", 20, d=256, h=1, dtype="float16"),  # float32 at D = 256 falls back
    Case("noncontiguous", 45, layout="transposed", causal=True, window=10, sinks=2),
    Case("stride0_grad", 45, grad="ones_expanded", causal=True),
    Case("large_logits", 48, max_logit=50.0, causal=True),
    Case("large_logits_window", 48, max_logit=50.0, window=8, sinks=2),
    Case("decode_one_query", 1, n_k=77, causal=True),
    Case("decode_cache_causal", 19, n_k=100, causal=True),
    Case("decode_cache_window_sinks", 21, n_k=90, causal=True, window=12, sinks=4),
    Case("decode_cache_noncausal", 19, n_k=60),
    Case("gqa", 40, h=4, h_kv=2, causal=True),
    Case("gqa_mqa_window", 33, h=4, h_kv=1, window=6, sinks=2),
    Case("gqa_decode", 9, n_k=50, h=6, h_kv=2, causal=True, b=2),
    Case("fp16_causal", 48, d=32, causal=True, dtype="float16"),
    Case("fp16_window_sinks", 48, d=32, causal=True, window=10, sinks=2, dtype="float16"),
    Case("fp16_gqa_decode", 17, n_k=64, h=4, h_kv=2, d=32, causal=True, dtype="float16"),
]
IDS = [c.name for c in CASES]


# --- the reference and one case -----------------------------------------------------------


def visible(n_q: int, n_k: int, causal: bool, window: int, sinks: int) -> torch.Tensor:
    """(Nq, Nk) boolean mask, element by element from the definition."""
    ok = torch.zeros(n_q, n_k, dtype=torch.bool)
    for i in range(n_q):
        p = i + n_k - n_q
        for j in range(n_k):
            ok[i, j] = (not causal or j <= p) and (window == 0 or abs(p - j) < window or j < sinks)
    return ok


def reference(q, k, v, case: Case, scale: float) -> torch.Tensor:
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    mask = visible(q.shape[2], k.shape[2], case.causal, case.window, case.sinks)
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v


def _draw(case: Case, device: str, seed: int = 11):
    gen = torch.Generator().manual_seed(seed)
    n_k, h_kv = case.n_k or case.n_q, case.h_kv or case.h
    shapes = [(case.b, case.h, case.n_q, case.d), (case.b, h_kv, n_k, case.d)]
    q, k, v = (
        torch.randn(*shapes[min(i, 1)], generator=gen, dtype=torch.float64) for i in range(3)
    )
    scale = case.d**-0.5
    if case.max_logit:  # scores of +-max_logit: softmax rows close to one-hot
        g = case.h // h_kv
        s = (q @ k.repeat_interleave(g, 1).transpose(-1, -2)) * scale
        q = q * (case.max_logit / s.abs().max())
    dtype = getattr(torch, case.dtype)

    def place(t):
        t = t.to(dtype)
        if case.layout == "transposed":
            t = t.transpose(1, 2).contiguous().to(device).transpose(1, 2)
            assert not t.is_contiguous()
            return t
        return t.to(device)

    return q, k, v, [place(t) for t in (q, k, v)], scale


def case_errors(case: Case, impl, device: str = "cpu") -> dict:
    """Errors of impl (and of naive attention at the same dtype) against float64."""
    from experiments.attention import naive_attention

    q64, k64, v64, (q, k, v), scale = _draw(case, device)
    opts = dict(causal=case.causal, window=case.window, sinks=case.sinks)
    ref_in = [t.detach().to(torch.float64).cpu().requires_grad_() for t in (q, k, v)]
    ref = reference(*ref_in, case, scale)
    if case.grad == "ones_expanded":
        grad = torch.ones((), dtype=torch.float64).expand(ref.shape)
    else:
        grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=ref.dtype)
    ref_grads = torch.autograd.grad(ref, ref_in, grad)
    result = {}
    for label, fn in (("impl", impl), ("naive", naive_attention)):
        if label == "naive" and case.dtype == "float32":
            continue
        ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        if case.layout == "transposed":  # clone() keeps the strides; keep them non-contiguous
            ins = [t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in (q, k, v)]  # fmt: skip
        out = fn(*ins, **opts)
        g = grad.to(device=device, dtype=out.dtype)
        if case.grad == "ones_expanded":
            g = torch.ones((), dtype=out.dtype, device=device).expand(out.shape)
            assert g.stride() == (0, 0, 0, 0)
        grads = torch.autograd.grad(out, ins, g)
        fwd = (out.detach().double().cpu() - ref.detach()).abs().max().item()
        result[label] = {
            "fwd": fwd / max(1.0, ref.abs().max().item()),
            "grad": max(
                (a.double().cpu() - r).abs().max().item() / max(1.0, r.abs().max().item())
                for a, r in zip(grads, ref_grads, strict=True)
            ),
        }
    return result


def _lse_error(case: Case, device: str = "cpu") -> float:
    from experiments.attention.triton_kernel import triton_forward_with_lse

    q64, k64, v64, (q, k, v), scale = _draw(case, device)
    if case.dtype != "float32":
        return 0.0  # checked through the output at 16 bits
    _, lse = triton_forward_with_lse(q, k, v, causal=case.causal, window=case.window, sinks=case.sinks)  # fmt: skip
    group = q64.shape[1] // k64.shape[1]
    s = (q64 @ k64.repeat_interleave(group, 1).transpose(-1, -2)) * scale
    mask = visible(case.n_q, case.n_k or case.n_q, case.causal, case.window, case.sinks)
    lse_ref = torch.logsumexp(s.masked_fill(~mask, float("-inf")), -1)
    err = (lse.double().cpu() - lse_ref).abs().max().item()
    return err / max(1.0, lse_ref.abs().max().item())


def _offsets_past_2_31() -> dict:
    """Batch strides of 2**30 elements: batch 2 starts 2**31 elements in, past int32.

    The buffers are 4 GiB of virtual memory, but only the tiles read are touched."""
    from experiments.attention import triton_attention

    b, h, n, d, stride_b = 3, 1, 24, 16, 2**30
    gen = torch.Generator().manual_seed(2)
    views = []
    for _ in range(3):
        buffer = torch.empty(stride_b * (b - 1) + h * n * d, dtype=torch.float16)
        view = buffer.as_strided((b, h, n, d), (stride_b, n * d, d, 1))
        view.copy_(torch.randn(b, h, n, d, generator=gen))
        views.append(view)
    q, k, v = (t.requires_grad_() for t in views)
    out = triton_attention(q, k, v, causal=True)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    ref_in = [t.detach().double().requires_grad_() for t in views]
    case = Case("offsets", n, d=d, h=h, b=b, causal=True)
    ref = reference(*ref_in, case, d**-0.5)
    ref_grads = torch.autograd.grad(ref, ref_in, torch.ones_like(ref))
    return {
        "fwd_last_batch": (out[2].double() - ref[2]).abs().max().item(),
        "grad_last_batch": max((g[2].double() - r[2]).abs().max().item() for g, r in zip(grads, ref_grads, strict=True)),
    }  # fmt: skip


def _child_main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from experiments.attention import triton_attention

    results = {}
    try:
        results["offsets_past_2_31"] = _offsets_past_2_31()
    except Exception as exc:
        results["offsets_past_2_31"] = {"error": f"{type(exc).__name__}: {exc}"}
    for case in CASES:
        try:
            results[case.name] = case_errors(case, triton_attention)
            results[case.name]["lse"] = _lse_error(case)
        except Exception as exc:  # report per case; the test shows the message
            results[case.name] = {"error": f"{type(exc).__name__}: {exc}"}
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
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_errors(res: dict, dtype: str) -> None:
    assert "error" not in res, res.get("error")
    err = res["impl"]
    if dtype == "float32":
        assert err["fwd"] <= 1e-5, err
        assert err["grad"] <= 1e-4, err
    else:
        assert err["fwd"] <= 2 * res["naive"]["fwd"], res
        assert err["grad"] <= 2 * res["naive"]["grad"], res


@needs_triton
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_triton_interpreter_matches_float64(interpreter_results, case):
    res = interpreter_results[case.name]
    check_errors(res, case.dtype)
    assert res["lse"] <= 1e-6  # the saved log-sum-exp, float32, relative to its size


@needs_triton
def test_head_offsets_past_2_31_elements(interpreter_results):
    """B*H*N*D >= 2**31: the per-(batch, head) offsets are 64-bit (float16 error level)."""
    res = interpreter_results["offsets_past_2_31"]
    assert "error" not in res, res.get("error")
    assert res["fwd_last_batch"] <= 2e-3 and res["grad_last_batch"] <= 1e-2, res


@needs_triton
def test_launch_grids_are_one_dimensional():
    """CUDA limits grid axes y and z to 65,535; every launch puts all programs on x."""
    import inspect

    from experiments.attention import triton_kernel as tk

    source = inspect.getsource(tk.triton_forward) + inspect.getsource(tk.triton_backward)
    grids = [line.strip() for line in source.splitlines() if line.strip().startswith("return (")]
    assert len(grids) == 3 and all(g.endswith(",)") for g in grids), grids
    assert "[(b * h * triton.cdiv(n_q, DELTA_BLOCK_M),)]" in source


def test_reference_mask_is_the_definition():
    """The test's own reference: a few masks worked out by hand."""
    assert visible(3, 3, True, 0, 0).int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert visible(1, 4, True, 0, 0).int().tolist() == [[1, 1, 1, 1]]  # the newest query
    assert visible(2, 4, True, 0, 0).int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert visible(4, 4, False, 1, 1).int().tolist() == [
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 0, 1, 0],
        [1, 0, 0, 1],
    ]


def test_package_reference_agrees_with_this_reference():
    """naive_attention (the package's reference) against the definition here, float64."""
    from experiments.attention import naive_attention

    for case in CASES:
        if case.dtype != "float32":
            continue
        q, k, v, _, scale = _draw(case, "cpu")
        opts = dict(causal=case.causal, window=case.window, sinks=case.sinks)
        torch.testing.assert_close(
            naive_attention(q, k, v, **opts), reference(q, k, v, case, scale), rtol=0, atol=1e-12
        )


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
    assert "need CUDA tensors" in out.stdout


# --- GPU readiness on the CPU: compile for sm_90a and read ptxas's report ----------------


@pytest.fixture(scope="module")
def sm90_report():
    """Each kernel x dtype x head dim (64, 128) x mask mode at its first candidate config,
    compiled in child processes (no interpreter, no GPU)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    out = REPO_ROOT / ".pytest_cache" / "sm90_report.json"
    out.parent.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "experiments.attention.compile_report", "--first", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=900)
    if "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("Triton's ptxas is not available")
    rows = json.loads(out.read_text())
    print(proc.stdout)  # the table, shown with -s or on failure
    return rows


@needs_triton
def test_every_kernel_variant_compiles_for_sm90(sm90_report):
    from experiments.attention.compile_report import DTYPES, MASKS

    kinds = {(r["kernel"], r["dtype"], r["head_dim"], r["mask"]) for r in sm90_report}
    assert len(kinds) == 3 * len(DTYPES) * 2 * len(MASKS)
    errors = [r for r in sm90_report if "error" in r]
    assert not errors, errors[:3]


@needs_triton
def test_no_spills_for_16_bit_inputs_up_to_d128(sm90_report):
    for r in sm90_report:
        assert r["registers"] <= 255
        if r["dtype"] in ("float16", "bfloat16"):
            assert r["spill_store_bytes"] == 0 and r["spill_load_bytes"] == 0, r


@needs_triton
def test_float32_spills_stay_small(sm90_report):
    """float32 tiles are twice as wide; a few spilled registers are tolerated, not more."""
    for r in sm90_report:
        if r["dtype"] == "float32":
            assert r["spill_store_bytes"] <= 256, r


def test_ptxas_report_parsing():
    from experiments.attention.compile_report import parse_ptxas

    log = (
        "ptxas info    : Compiling entry function '_attn_fwd' for 'sm_90a'\n"
        "ptxas info    : Function properties for _attn_fwd\n"
        "    40 bytes stack frame, 36 bytes spill stores, 44 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 8 bytes smem\n"
    )
    res = parse_ptxas(log)
    assert (res.registers, res.stack_bytes, res.spill_store_bytes, res.spill_load_bytes) == (
        255,
        40,
        36,
        44,
    )
    with pytest.raises(ValueError):
        parse_ptxas("ptxas fatal : Unsupported .version")


# --- GPU -------------------------------------------------------------------------------

GPU_CASES = [
    Case(
        f"gpu_{c.name}_{dtype}",
        c.n_q * 13 + 5,
        d=c.d,
        n_k=c.n_k and c.n_k * 13 + 5,
        h=c.h,
        h_kv=c.h_kv,
        b=c.b,
        causal=c.causal,
        window=c.window if c.window <= 1 else c.window * 13,
        sinks=c.sinks * 13,
        dtype=dtype,
        layout=c.layout,
        grad=c.grad,
        max_logit=c.max_logit,
    )  # fmt: skip
    for c in CASES
    if not c.name.startswith("fp16_")
    for dtype in ("float16", "bfloat16", "float32")
    if not (dtype == "float32" and c.d > 128)
]


@pytest.mark.gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("case", GPU_CASES, ids=[c.name for c in GPU_CASES])
def test_triton_on_gpu_matches_float64(case):
    """The interpreter's cases scaled up 13x (ragged against every tile size)."""
    from experiments.attention import triton_attention

    check_errors(case_errors(case, triton_attention, device="cuda"), case.dtype)


@pytest.mark.gpu
@needs_cuda
@needs_triton
def test_dispatcher_falls_back_on_gpu_with_one_warning():
    import warnings

    from experiments import attention as A

    q = torch.randn(1, 2, 64, 16, device="cuda", dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = A.attention(q, q, q, causal=True)
        A.attention(q, q, q, causal=True)
    assert len([w for w in caught if "instead of the Triton kernels" in str(w.message)]) <= 1
    torch.testing.assert_close(out, A.naive_attention(q, q, q, causal=True))


if __name__ == "__main__":
    _child_main()
