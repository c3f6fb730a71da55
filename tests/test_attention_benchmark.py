"""The GPU section of benchmarks/attention.py, exercised on CPU.

The table logic takes the device, the implementations and the timer as arguments;
here it runs with tiny shapes, float32, a wall-clock timer and CPU stand-ins:
blockwise attention for "ours", SDPA's CPU flash and math backends, cuDNN (not
available on CPU: "n/a"), and FlexAttention run eagerly (its CPU path has no
backward: that cell reads "error"). The attended-pair count is checked against a
brute-force count of ``reference.allowed_mask``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.attention import blockwise_attention, naive_attention
from experiments.attention.reference import allowed_mask

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "benchmarks_attention", ROOT / "benchmarks" / "attention.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()
CPU = torch.device("cpu")
TINY = dict(tokens=128, hidden=32)  # N=32 -> B=4, N=64 -> B=2; D=16 -> H=2


def _flex_available() -> bool:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


needs_flex = pytest.mark.skipif(
    not _flex_available(), reason="torch.nn.attention.flex_attention is not in this torch"
)


def _finite_positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def _fake_peak(call):
    call()
    return 1.5


# ---------------------------------------------------------------------------------------
# Shapes, FLOPs and the attended-pair count
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1024, 2048, 4096, 8192, 16384])
@pytest.mark.parametrize("d", [64, 128])
def test_paper_shape_keeps_tokens_and_hidden(n, d):
    b, h = bench.paper_shape(n, d)
    assert b * n == 16384 and h * d == 2048


def test_dense_flops_forward_backward_is_3_5x_forward():
    fwd = bench.dense_cases([64], [16], ["float32"], bench.FWD, **TINY)
    train = bench.dense_cases([64], [16], ["float32"], bench.TRAIN, **TINY)
    for f, t in zip(fwd, train, strict=True):
        b, h, n, d = f["b"], f["h"], f["n"], f["d"]
        expected = 4.0 * b * h * n * n * d / (2 if f["causal"] else 1)
        assert f["flops"] == pytest.approx(expected)
        assert t["flops"] == pytest.approx(3.5 * expected)


PAIR_CASES = [
    (n, window, sinks, causal)
    for n in (1, 7, 32, 65)
    for window in (0, 1, 3, 16, 100)
    for sinks in (0, 1, 4, 70)
    for causal in (False, True)
]


@pytest.mark.parametrize("n,window,sinks,causal", PAIR_CASES)
def test_attended_pairs_matches_brute_force(n, window, sinks, causal):
    brute = int(allowed_mask(n, causal=causal, window=window, sinks=sinks).sum())
    assert bench.attended_pairs(n, causal=causal, window=window, sinks=sinks) == brute


def test_window_cases_count_pairs_exactly():
    cases = bench.window_cases([64], [16], ["float32"], [8], bench.TRAIN, sinks=2, **TINY)
    for case in cases:
        mask = allowed_mask(64, causal=case["causal"], window=8, sinks=2)
        pairs = int(mask.sum())
        assert case["pairs"] == pairs
        assert case["density"] == pytest.approx(pairs / 64**2)
        assert case["flops"] == pytest.approx(3.5 * 4 * case["b"] * case["h"] * pairs * 16)


# ---------------------------------------------------------------------------------------
# The dense table on CPU
# ---------------------------------------------------------------------------------------


def _raiser(exc):
    def prepare(case):
        def fn(q, k, v):
            raise exc

        return fn

    return prepare


def _dense_impls():
    return [
        bench.attention_impl("ours", blockwise_attention),
        bench.sdpa_backend_impl("flash", "FLASH_ATTENTION"),  # SDPA's CPU flash kernel
        bench.sdpa_backend_impl("math", "MATH"),
        bench.sdpa_backend_impl("cudnn", "CUDNN_ATTENTION"),  # no CPU kernel: n/a
        bench.Impl("optional", _raiser(RuntimeError("unsupported here")), missing_ok=True),
        bench.Impl("broken", _raiser(ValueError("bug\nsecond line"))),
    ]


@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
def test_dense_table_runs_on_cpu(mode, capsys):
    impls = _dense_impls()
    cases = bench.dense_cases([32, 64], [16], ["float32"], mode, **TINY)
    names = [i.name for i in impls]
    rows = bench.run_table(
        "tiny", cases, impls, bench.dense_columns("ours", names[1:]),
        device=CPU, timer=bench.wall_timer(repeats=1), peak_memory=_fake_peak,
        peaks={"float32": 1.0},
    )  # fmt: skip
    assert len(rows) == 4  # 2 N x non-causal/causal
    for row in rows:
        assert {"mode", "dtype", "d", "n", "b", "h", "causal", "flops", "impls", "ratios"} <= set(
            row
        )
        assert row["mode"] == mode and row["b"] * row["n"] == 128 and row["h"] * row["d"] == 32
        for name in ("ours", "flash", "math"):
            cell = row["impls"][name]
            assert cell["status"] == "ok", cell
            assert _finite_positive(cell["ms"]) and _finite_positive(cell["tflops"])
            assert _finite_positive(cell["pct_peak"])
            assert cell["tflops"] == pytest.approx(row["flops"] / (cell["ms"] * 1e-3) / 1e12)
            if mode == "forward+backward":
                assert cell["peak_mib"] == 1.5
            else:
                assert "peak_mib" not in cell
        for name in ("flash", "math"):
            assert row["impls"][name]["max_abs_diff_vs_ours"] < 1e-5  # float32, same inputs
            assert _finite_positive(row["ratios"][f"ours/{name}"])
        assert row["impls"]["cudnn"]["status"] == "n/a"
        assert row["impls"]["optional"]["status"] == "n/a"
        assert "unsupported here" in row["impls"]["optional"]["reason"]
        broken = row["impls"]["broken"]
        assert broken["status"] == "error" and broken["reason"] == "first call: ValueError: bug"
        assert set(row["ratios"]) == {"ours/flash", "ours/math"}
    json.dumps(rows)  # the rows go into the benchmark's JSON as they are
    out = capsys.readouterr().out
    assert "cudnn: n/a (" in out and "broken: error: first call: ValueError: bug" in out
    header = out.splitlines()[1]
    for line in out.splitlines()[2:]:
        if not line.startswith("    "):  # table rows line up with the header
            assert len(line) == len(header)


def test_oom_is_an_error_even_for_an_optional_backend():
    oom = bench.Impl("opt", _raiser(RuntimeError("CUDA out of memory. Tried")), missing_ok=True)
    case = bench.dense_cases([32], [16], ["float32"], bench.FWD, causals=(True,), **TINY)[0]
    row = bench.measure_case(
        case, [bench.attention_impl("ours", blockwise_attention), oom], device=CPU,
        timer=bench.wall_timer(repeats=1),
    )  # fmt: skip
    assert row["impls"]["opt"]["status"] == "error"
    assert row["impls"]["ours"]["status"] == "ok" and row["ratios"] == {}


def test_failing_subject_gives_no_ratio_and_fails_the_target():
    impls = [bench.Impl("ours", _raiser(ValueError("x"))), bench.sdpa_backend_impl("flash", "MATH")]
    cases = bench.dense_cases([32], [16], ["float32"], bench.FWD, **TINY)
    rows = bench.run_cases(cases, impls, device=CPU, timer=bench.wall_timer(repeats=1))
    assert all(r["ratios"] == {} and r["impls"]["flash"]["status"] == "ok" for r in rows)
    target = bench.check_target("fwd", rows, "ours/flash", 0.8)
    assert target["verdict"] == "NOT MEASURED" and target["subject_failed"] == 2


def test_input_failure_is_a_row_error_and_the_run_continues(capsys):
    good = bench.dense_cases([32], [16], ["float32"], bench.FWD, causals=(False,), **TINY)
    bad = [dict(good[0], dtype="no-such-dtype")]
    impls = [bench.attention_impl("ours", blockwise_attention)]
    rows = bench.run_table(
        "t", bad + good, impls, bench.dense_columns("ours", []), device=CPU,
        timer=bench.wall_timer(repeats=1),
    )  # fmt: skip
    assert rows[0]["error"].startswith("KeyError") and rows[0]["impls"] == {}
    assert rows[1]["impls"]["ours"]["status"] == "ok"
    assert "    error: KeyError" in capsys.readouterr().out


def test_deadline_skips_the_remaining_cases(capsys):
    cases = bench.dense_cases([32, 64], [16], ["float32"], bench.FWD, **TINY)
    impls = [bench.attention_impl("ours", blockwise_attention)]
    rows = bench.run_table(
        "t", cases, impls, bench.dense_columns("ours", []), device=CPU,
        timer=bench.wall_timer(repeats=1), deadline=time.perf_counter() - 1,
    )  # fmt: skip
    assert all(r["skipped"] == "time budget" and r["impls"] == {} for r in rows)
    assert "4 of 4 cases skipped" in capsys.readouterr().out
    assert bench.check_target("x", rows, "ours/flash", 0.8)["verdict"] == "NOT MEASURED"


# ---------------------------------------------------------------------------------------
# Targets and summaries
# ---------------------------------------------------------------------------------------


def _row(n, ratio, *, subject="ok"):
    return dict(dtype="float16", d=64, n=n, causal=False, window=0,
                impls={"ours": {"status": subject}}, ratios={} if ratio is None else {"ours/flash": ratio})  # fmt: skip


def test_check_target_worst_case_over_large_n():
    rows = [_row(1024, 0.1), _row(4096, 0.9), _row(16384, 0.85)]
    t = bench.check_target("forward ours/flash", rows, "ours/flash", 0.8, min_n=4096)
    assert t["verdict"] == "PASS" and t["worst"] == 0.85 and "N=16384" in t["worst_case"]
    assert bench.format_target(t).startswith("forward ours/flash >= 0.8x at N >= 4096: PASS")
    t = bench.check_target("f", rows + [_row(8192, 0.79)], "ours/flash", 0.8, min_n=4096)
    assert t["verdict"] == "FAIL"
    t = bench.check_target("f", rows + [_row(8192, None, subject="error")], "ours/flash", 0.8, min_n=4096)  # fmt: skip
    assert t["verdict"] == "FAIL" and "1 cases where ours failed" in bench.format_target(t)
    t = bench.check_target("f", rows + [_row(8192, None, subject="ok")], "ours/flash", 0.8, min_n=4096)  # fmt: skip
    assert t["verdict"] == "PASS" and "1 of 3 cases not measured" in bench.format_target(t)


def test_backward_pct_peak_from_paired_rows():
    fwd = [dict(dtype="float16", d=64, n=4096, causal=False, flops=1e12, impls={"ours": {"status": "ok", "ms": 10.0}})]  # fmt: skip
    train = [dict(fwd[0], flops=3.5e12, impls={"ours": {"status": "ok", "ms": 35.0}})]
    # backward: 2.5e12 FLOPs in 25 ms = 100 TFLOP/s = 50% of a 200 TFLOP/s peak
    assert bench.backward_pct_peak(fwd, train, "ours", {"float16": 200.0}) == pytest.approx(50.0)
    assert bench.backward_pct_peak(fwd, train, "ours", {"float16": None}) is None


def test_one_line():
    assert bench.one_line(RuntimeError("a\n\n  b")) == "RuntimeError: a"
    assert bench.one_line(ValueError()) == "ValueError"
    assert len(bench.one_line(ValueError("x" * 500))) == 160


def test_fa2_paper_lines_are_marked_as_theirs():
    text = "\n".join(bench.FA2_PAPER_LINES)
    assert "theirs" in text and "reported by the paper" in text
    for figure in ("73%", "63%", "230 TFLOP/s", "225 TFLOP/s", "72%", "335 TFLOP/s"):
        assert figure in text


# ---------------------------------------------------------------------------------------
# FlexAttention on CPU (forward only: its CPU path has no backward)
# ---------------------------------------------------------------------------------------


@needs_flex
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,sinks", [(8, 2), (3, 0), (1, 5), (100, 4), (0, 0)])
def test_flex_mask_mod_matches_allowed_mask(causal, window, sinks):
    from torch.nn.attention.flex_attention import create_mask

    n = 40
    mask_mod = bench.flex_mask_mod(causal, window, sinks, CPU)
    got = create_mask(mask_mod, None, None, n, n, device="cpu")[0, 0]
    expected = allowed_mask(n, causal=causal, window=window, sinks=sinks)
    assert torch.equal(got.bool(), expected)


def _flex_matches_naive(impl, cases):
    for case in cases:
        q, k, v, _ = bench.case_inputs(case, CPU)
        fn, info = impl.prepare(case)
        with torch.no_grad():
            out = fn(q, k, v)
        ref = naive_attention(
            q, k, v, causal=case["causal"], window=case["window"], sinks=case["sinks"]
        )
        assert (out - ref).abs().max().item() <= 1e-5, case
        assert info["mask_build_ms"] > 0


@needs_flex
def test_flex_eager_matches_naive_attention():
    cases = bench.window_cases([32, 64], [16], ["float32"], [8, 3], bench.FWD, sinks=2, **TINY)
    _flex_matches_naive(bench.flex_impl(CPU, compile=False), cases)


@needs_flex
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
def test_window_table_runs_on_cpu(mode, capsys):
    impls = [bench.attention_impl("ours", blockwise_attention), bench.flex_impl(CPU, compile=False)]
    cases = bench.window_cases([32, 64], [16], ["float32"], [8], mode, sinks=2, **TINY)
    rows = bench.run_table(
        "tiny window", cases, impls, bench.window_columns("ours", "flex"),
        device=CPU, timer=bench.wall_timer(repeats=1), peak_memory=_fake_peak,
    )  # fmt: skip
    assert len(rows) == 4
    for row in rows:
        ours, flex = row["impls"]["ours"], row["impls"]["flex"]
        assert ours["status"] == "ok" and _finite_positive(ours["tflops"])
        if mode == "forward":
            assert flex["status"] == "ok" and _finite_positive(flex["tflops"])
            assert flex["max_abs_diff_vs_ours"] < 1e-5
            assert _finite_positive(flex["mask_build_ms"])
            assert _finite_positive(row["ratios"]["ours/flex"])
        else:  # FlexAttention has no backward on CPU: reported, and the table goes on
            assert flex["status"] == "error" and "first call" in flex["reason"]
            assert ours["peak_mib"] == 1.5
    json.dumps(rows)
    bench.print_memory_table("mem", rows, ["ours", "flex"], window=True)
    assert "ours MiB" in capsys.readouterr().out


@needs_flex
@pytest.mark.slow
def test_flex_compiled_on_cpu_matches_naive_without_recompiling():
    """torch.compile(flex_attention) with the inductor CPU backend (a C++ compiler; about
    10-40 s): correct for several masks of one shape, compiled once for all of them."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    impl = bench.flex_impl(CPU, compile=True)
    cases = [
        c
        for c in bench.window_cases([64], [16], ["float32"], [8, 3, 16], bench.FWD, sinks=2, **TINY)
    ]
    _flex_matches_naive(impl, cases[:1])
    graphs = counters["stats"]["unique_graphs"]
    _flex_matches_naive(impl, cases[1:])  # other windows and causal: same graph
    assert counters["stats"]["unique_graphs"] == graphs


# ---------------------------------------------------------------------------------------
# The GPU section on a machine without CUDA
# ---------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_without_cuda_says_the_gpu_part_was_not_run():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "attention.py"), "--quick", "--skip",
           "errors", "memory", "speed"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "GPU part not run: no CUDA device" in proc.stdout


@pytest.mark.parametrize("mode,dense,window", [("full", 40, 48), ("quick", 24, 16)])
def test_gpu_modes_case_counts(mode, dense, window):
    cfg = bench.GPU_MODES[mode]
    assert len(bench.dense_cases(cfg["dense_ns"], cfg["ds"], cfg["dtypes"], bench.FWD)) == dense
    cases = bench.window_cases(
        cfg["window_ns"], cfg["ds"], cfg["window_dtypes"], cfg["windows"], bench.TRAIN
    )
    assert len(cases) == window
    assert all(c["b"] * c["n"] == 16384 and c["h"] * c["d"] == 2048 for c in cases)


@needs_flex
def test_gpu_report_runs_end_to_end_on_cpu(capsys):
    """The whole GPU section (tables, memory, targets, the paper's figures) with CPU stand-ins."""
    cfg = dict(mode="tiny", dense_ns=[32, 64], window_ns=[64], ds=[16], dtypes=["float32"],
               window_dtypes=["float32"], windows=[8], budget_s=120, sinks=2, target_min_n=64,
               **TINY)  # fmt: skip
    dense = [
        bench.attention_impl("ours", blockwise_attention),
        bench.sdpa_backend_impl("flash", "FLASH_ATTENTION"),
        bench.sdpa_backend_impl("cudnn", "CUDNN_ATTENTION"),
    ]
    window = [
        bench.attention_impl("ours", blockwise_attention),
        bench.flex_impl(CPU, compile=False),
    ]
    out = bench.gpu_report(
        cfg, dense, window, device=CPU, device_name="cpu", timer=bench.wall_timer(repeats=1),
        peak_memory=_fake_peak, peaks={"float32": 1.0},
    )  # fmt: skip
    json.dumps(out)
    assert out["run"] and len(out["dense"]["forward"]) == 4 and len(out["window"]["forward"]) == 2
    verdicts = [t["verdict"] for t in out["targets"]]
    assert all(v in ("PASS", "FAIL") for v in verdicts[:3])
    assert verdicts[3] == "NOT MEASURED"  # FlexAttention has no backward on CPU
    assert out["ours_best"]["forward"]["tflops"] > 0
    text = capsys.readouterr().out
    for expected in ("-- dense forward (4 cases)", "-- window + 2 sinks, forward+backward",
                     "peak memory, dense forward+backward", "forward ours/flash >= 0.8x at N >= 64:",
                     "FlashAttention-2 paper (Dao 2023", "GPU section took", "cudnn: n/a ("):  # fmt: skip
        assert expected in text


def test_gpu_implementations_names_and_ours_needs_cuda():
    dense, window = bench.gpu_implementations(CPU)
    assert [i.name for i in dense] == ["ours", "flash", "cudnn"]
    assert [i.name for i in window] == ["ours", "flex"]
    case = bench.dense_cases([32], [16], ["float32"], bench.FWD, causals=(True,), **TINY)[0]
    row = bench.measure_case(case, dense[:2], device=CPU, timer=bench.wall_timer(repeats=1))
    assert row["impls"]["ours"]["status"] == "error"  # the Triton kernels want CUDA tensors
    assert row["impls"]["flash"]["status"] == "ok" and row["ratios"] == {}


@needs_flex
def test_run_gpu_and_main_wiring_with_cuda_parts_stubbed(monkeypatch, tmp_path, capsys):
    """run_gpu() and main()'s GPU flags, with the CUDA pieces replaced by CPU stand-ins."""
    tiny = dict(dense_ns=[32, 64], window_ns=[64], ds=[16], dtypes=["float32"],
                window_dtypes=["float32"], windows=[8], budget_s=120, tokens=128, hidden=32)  # fmt: skip
    monkeypatch.setitem(bench.GPU_MODES, "quick", tiny)
    monkeypatch.setattr(bench, "GPU_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200 (stub)")
    monkeypatch.setattr(bench, "cuda_timer", lambda: bench.wall_timer(repeats=1))
    monkeypatch.setattr(bench, "cuda_peak_mib", _fake_peak)
    monkeypatch.setattr(
        bench,
        "gpu_implementations",
        lambda device: (
            [bench.attention_impl("ours", blockwise_attention),
             bench.sdpa_backend_impl("flash", "FLASH_ATTENTION"),
             bench.sdpa_backend_impl("cudnn", "CUDNN_ATTENTION")],
            [bench.attention_impl("ours", blockwise_attention), bench.flex_impl(device, compile=False)],
        ),
    )  # fmt: skip
    out_json = tmp_path / "gpu.json"
    results = bench.main(
        ["--gpu-quick", "--gpu-budget-s", "90", "--skip", "errors", "memory", "speed",
         "--json", str(out_json)]
    )  # fmt: skip
    gpu = results["gpu"]
    assert gpu["run"] and gpu["mode"] == "quick" and gpu["budget_s"] == 90
    assert gpu["device"] == "NVIDIA H200 (stub)"
    assert gpu["peak_tflops"] == {"float32": 67.0}  # H200's float32 datasheet figure
    assert json.loads(out_json.read_text())["gpu"]["targets"][0]["label"] == "forward ours/flash"
    assert "GPU section took" in capsys.readouterr().out


def test_zero_time_and_a_failing_check_do_not_break_a_row():
    case = bench.dense_cases([32], [16], ["float32"], bench.FWD, causals=(True,), **TINY)[0]
    ours = bench.attention_impl("ours", blockwise_attention)
    row = bench.measure_case(case, [ours], device=CPU, timer=lambda call: 0.0)
    assert row["impls"]["ours"] == {"status": "error", "reason": "timer returned 0.0"}
    # a baseline whose output has another shape: timed, the difference check reports why not
    odd = bench.Impl("odd", lambda case: lambda q, k, v: q[..., :3])
    row = bench.measure_case(case, [ours, odd], device=CPU, timer=bench.wall_timer(repeats=1))
    assert row["impls"]["odd"]["status"] == "ok" and "diff_error" in row["impls"]["odd"]


def test_run_gpu_keeps_partial_results_when_the_report_fails(monkeypatch, capsys):
    monkeypatch.setattr(bench, "GPU_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stub")

    def boom(device):
        raise RuntimeError("no implementations")

    monkeypatch.setattr(bench, "gpu_implementations", boom)
    out = bench.run_gpu(True)
    assert out == {"run": True, "device": "stub", "error": "RuntimeError: no implementations"}
    assert "GPU section stopped early" in capsys.readouterr().out
