"""Tests for experiments/incremental: caches, drift detection, continual metrics, notebook.

All seeded; tolerances are explicit. The notebook run is marked slow (~1 min).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.incremental import (
    METHODS,
    KVCache,
    OnlineConfig,
    PageHinkley,
    Reservoir,
    SinkWindowCache,
    SinkWindowCacheReference,
    Transformer,
    TransformerConfig,
    cached_logits,
    continual_metrics,
    detect,
    drift_schedule,
    make_regimes,
    recompute_logits,
    recovery_tokens,
    reference_plateau,
    run_online,
    stream_eval,
)
from tests.support import assert_figures_shown_and_stored_once

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread, as the benchmark runs: on a shared 2-core box two threads made small
    training steps several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ATOL = 1e-4  # fp32 logits, cached vs recomputed (the acceptance tolerance)


def tiny_model(n_layer: int = 2, d_model: int = 64, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(n_layer=n_layer, d_model=d_model, n_head=4)).eval()


def tokens(n: int, seed: int = 0, vocab: int = 32) -> torch.Tensor:
    return torch.randint(vocab, (n,), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("prefill", [0, 1, 40])
def test_kv_cache_matches_full_recompute(prefill):
    model, x = tiny_model(), tokens(96)
    ref = recompute_logits(model, x)
    got = cached_logits(model, x, prefill=prefill)
    assert got.shape == ref.shape == (96, 32)
    assert (got - ref).abs().max().item() <= ATOL


@torch.no_grad()
def test_kv_cache_chunks_use_offset_causal_mask():
    model, x = tiny_model(n_layer=3), tokens(64, seed=1)
    cache = KVCache(model, batch_size=1, max_len=64)
    parts = [model(x[None, a:b], cache)[0] for a, b in [(0, 10), (10, 11), (11, 37), (37, 64)]]
    assert (torch.cat(parts) - recompute_logits(model, x)).abs().max().item() <= ATOL
    assert cache.length == 64 and cache.bytes_in_use == cache.nbytes


@torch.no_grad()
def test_kv_cache_refuses_to_overflow():
    model = tiny_model()
    cache = KVCache(model, batch_size=1, max_len=4)
    model(tokens(4)[None], cache)
    with pytest.raises(ValueError, match="full"):
        model(tokens(1)[None], cache)


# --------------------------------------------------------------------------- sink + window


def test_sink_window_slot_positions_at_wraparound():
    cache = SinkWindowCache(tiny_model(n_layer=1), 1, n_sink=2, window=4)
    # before the wrap: token t in slot t at position t
    slot, pos = cache.slot_positions(3)
    assert slot == 3 and pos.tolist() == [0, 1, 2, 3]
    # token 6 overwrites token 2 (slot 2); the ring holds tokens 6, 3, 4, 5 in slots 2..5,
    # so by age the positions are 5, 2, 3, 4 after the sinks at 0, 1.
    slot, pos = cache.slot_positions(6)
    assert slot == 2 and pos.tolist() == [0, 1, 5, 2, 3, 4]
    slot, pos = cache.slot_positions(9)  # tokens 6..9 in slots 2, 3, 4, 5
    assert slot == 5 and pos.tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("n_sink", [0, 4])
@torch.no_grad()
def test_sink_window_ring_matches_reference_across_wraparound(n_sink):
    model, x = tiny_model(n_layer=2), tokens(3 * 20 + 7, seed=2)
    window = 16
    fast = SinkWindowCache(model, 1, n_sink=n_sink, window=window)
    ref = SinkWindowCacheReference(model, n_sink=n_sink, window=window)
    sizes = []
    for t in range(x.numel()):
        a = model(x[None, t : t + 1], fast)[0, -1]
        b = model(x[None, t : t + 1], ref)[0, -1]
        assert (a - b).abs().max().item() <= 1e-5, f"step {t}"
        sizes.append(fast.bytes_in_use)
    cap = n_sink + window
    assert max(sizes) == fast.nbytes == sizes[cap - 1] == sizes[-1]  # bounded, flat after filling
    assert ref.k[0].shape[2] == cap


@torch.no_grad()
def test_sink_window_one_layer_equals_recompute_on_kept_tokens():
    """With one layer a token's K/V depend on the token only, so the bounded cache must
    equal a full forward over exactly the tokens it keeps (sinks + last window)."""
    model, x = tiny_model(n_layer=1), tokens(100, seed=3)
    S, W = 3, 12
    cache = SinkWindowCache(model, 1, n_sink=S, window=W)
    for t in range(x.numel()):
        got = model(x[None, t : t + 1], cache)[0, -1]
        kept = torch.cat([x[: min(S, t + 1)], x[max(S, t + 1 - W) : t + 1]])
        assert kept.numel() == min(t + 1, S + W)
        want = model(kept[None])[0, -1]
        assert (got - want).abs().max().item() <= ATOL, f"step {t}"


def test_stream_eval_policies_bounded_memory():
    model, x = tiny_model(), tokens(80, seed=4)
    out = {
        p: stream_eval(model, x, p, n_sink=2, window=14)
        for p in ("dense", "sink", "window", "recompute")
    }
    for r in out.values():
        assert r["nll"].shape == (79,) and np.isfinite(r["nll"]).all()
        assert r["latency"].shape == (80,)
    assert out["sink"]["bytes_in_use"][-1] == out["sink"]["bytes_in_use"][15]
    assert out["dense"]["bytes_in_use"][-1] == 5 * out["dense"]["bytes_in_use"][15]
    # before any eviction every policy sees the same context
    for p in ("sink", "window", "recompute"):
        np.testing.assert_allclose(out[p]["nll"][:15], out["dense"]["nll"][:15], atol=1e-4)


# --------------------------------------------------------------------------- drift detection


def test_page_hinkley_fires_on_step_change_only_after_it():
    rng = np.random.default_rng(0)
    x = np.concatenate([1.0 + 0.1 * rng.standard_normal(300), 2.0 + 0.1 * rng.standard_normal(300)])
    alarms = detect(x, delta=0.05, threshold=1.0)
    assert alarms, "no alarm on a +1.0 step in the mean"
    assert 300 <= alarms[0] <= 305  # within a few samples of the change
    assert all(a >= 300 for a in alarms)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_page_hinkley_silent_on_stationary_and_decreasing_streams(seed):
    rng = np.random.default_rng(seed)
    assert detect(1.0 + 0.1 * rng.standard_normal(3000), delta=0.05, threshold=1.0) == []
    learning_curve = 3.0 * np.exp(-np.arange(500) / 50) + 1.0 + 0.1 * rng.standard_normal(500)
    assert detect(learning_curve, delta=0.05, threshold=1.0) == []


def test_page_hinkley_resets_after_alarm():
    ph = PageHinkley(delta=0.0, threshold=0.5, min_samples=1)
    fired = [ph.update(v) for v in [0.0] * 5 + [1.0] * 5]
    assert fired.index(True) == 5 and ph.n < 5


# --------------------------------------------------------------------------- metrics


def test_continual_metrics_on_hand_made_matrix():
    R = [
        [0.9, 0.1, 0.1],
        [0.5, 0.8, 0.1],
        [0.3, 0.6, 0.7],
    ]
    m = continual_metrics(R)
    assert m["avg_acc"] == pytest.approx((0.3 + 0.6 + 0.7) / 3, abs=1e-12)
    assert m["bwt"] == pytest.approx(((0.3 - 0.9) + (0.6 - 0.8)) / 2, abs=1e-12)
    assert m["forgetting"] == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2, abs=1e-12)
    # K=2: only regime 0 counts; improving on it afterwards is negative forgetting
    m = continual_metrics([[0.6, 0.0], [0.8, 0.9]])
    assert m["forgetting"] == pytest.approx(-0.2) and m["bwt"] == pytest.approx(0.2)
    # forgetting uses the best earlier accuracy, not the diagonal: regime 0 peaks after segment 1
    m = continual_metrics([[0.6, 0.1, 0.0], [0.8, 0.9, 0.0], [0.5, 0.9, 0.7]])
    assert m["forgetting_per_regime"] == pytest.approx([0.3, 0.0])
    assert m["bwt"] == pytest.approx(((0.5 - 0.6) + (0.9 - 0.9)) / 2)


def test_recovery_is_measured_against_one_common_reference():
    seg, tps = 20, 100
    # a method that climbs back linearly to 0.8 after a drift at step 20 ...
    acc = np.concatenate([np.full(seg, 0.8), np.linspace(0.0, 0.8, 10), np.full(seg - 10, 0.8)])
    # ... against a reference learner whose last 20% (4 of 20 steps) average 0.6
    reference = np.r_[np.zeros(16), np.full(4, 0.6)]
    level = reference_plateau(reference)
    assert level == pytest.approx(0.6)
    (t,) = recovery_tokens(acc, [seg], [level], seg, tokens_per_step=tps, frac=0.9, smooth=5)
    rolled = [acc[seg + max(0, i - 4) : seg + i + 1].mean() for i in range(seg)]
    first = next(i for i, r in enumerate(rolled) if r >= 0.9 * 0.6)
    assert t == tps * (first + 1) == 1000  # 5-step mean 0.533 at step 8, 0.622 at step 9
    # the bar is the reference's, not the method's own plateau: a lower plateau recovers sooner,
    # a reference above anything the method reaches gives NaN
    (sooner,) = recovery_tokens(acc, [seg], [0.3], seg, tokens_per_step=tps)
    assert sooner < t
    assert math.isnan(recovery_tokens(acc, [seg], [1.0], seg, tokens_per_step=tps)[0])
    # steps with no sequence from the incoming regime (a gradual ramp's start) are skipped
    ramp = acc.copy()
    ramp[seg : seg + 3] = math.nan
    assert recovery_tokens(ramp, [seg], [level], seg, tokens_per_step=tps) == [t]
    ramp[seg:] = math.nan
    assert math.isnan(recovery_tokens(ramp, [seg], [level], seg, tokens_per_step=tps)[0])


def test_reservoir_is_uniform_and_bounded():
    g = torch.Generator().manual_seed(0)
    res = Reservoir(200, g)
    for start in range(0, 20_000, 50):
        res.add(torch.arange(start, start + 50)[:, None])
    kept = torch.stack(res.items).float().squeeze(1)
    assert len(res) == 200 and res.seen == 20_000
    assert abs(kept.mean().item() - 10_000) < 1_000  # uniform over 0..19999: sd of the mean ~ 408
    assert res.sample(7).shape == (7, 1)


# --------------------------------------------------------------------------- online learning


@pytest.mark.parametrize("method", METHODS)
def test_run_online_smoke(method):
    cfg = TransformerConfig(n_layer=1, d_model=32, n_head=2)
    regimes = make_regimes(32, n_regimes=3, seed=0)
    ocfg = OnlineConfig(segment_steps=3, batch_size=4, seq_len=16, memory=16, eval_seqs=4)
    out = run_online(method, regimes, cfg, ocfg, seed=0)
    assert out["acc_matrix"].shape == (3, 3)
    assert len(out["preq_loss"]) == 9 and np.isfinite(out["preq_loss"]).all()
    assert out["drift_steps"] == [3, 6] and out["regime_order"] == [0, 1, 2]


def _small_online():
    cfg = TransformerConfig(n_layer=1, d_model=32, n_head=2)
    regimes = make_regimes(32, n_regimes=2, seed=0)
    # memory 8 < the 4 x 5 sequences seen: the reservoir replaces, replay draws
    ocfg = OnlineConfig(segment_steps=5, batch_size=4, seq_len=16, memory=8, eval_seqs=4)
    return cfg, regimes, ocfg


def test_every_method_sees_the_same_fresh_stream():
    """Paired comparison: the reservoir and the replay draws have their own generators."""
    cfg, regimes, ocfg = _small_online()
    digests = {m: run_online(m, regimes, cfg, ocfg, seed=3)["stream_digest"] for m in METHODS}
    assert len(set(digests.values())) == 1, digests
    assert run_online("naive", regimes, cfg, ocfg, seed=4)["stream_digest"] != digests["naive"]


@pytest.mark.parametrize("scenario", ["gradual", "recurring"])
def test_every_method_sees_the_same_fresh_stream_in_each_scenario(scenario):
    cfg, _, ocfg = _small_online()
    regimes = make_regimes(32, n_regimes=3, seed=0)
    schedule = drift_schedule(scenario, 3, ocfg.segment_steps)
    digests = {
        m: run_online(m, regimes, cfg, ocfg, seed=3, schedule=schedule)["stream_digest"]
        for m in METHODS
    }
    assert len(set(digests.values())) == 1, digests
    abrupt = run_online("naive", regimes, cfg, ocfg, seed=3)["stream_digest"]
    assert abrupt != digests["naive"]  # the scenario does change the stream


def test_library_calls_leave_the_global_rng_alone():
    from experiments.incremental import TrainConfig, pretrain, run_decode

    cfg, regimes, ocfg = _small_online()
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    for method in METHODS:
        run_online(method, regimes, cfg, ocfg, seed=0)
    model, _, _ = pretrain(cfg, TrainConfig(steps=2, batch_size=2, seq_len=16), n_regimes=2)
    run_decode(
        cfg, cached_contexts=(16, 32), recompute_contexts=(16, 32), check_len=32, model=model
    )
    assert torch.equal(torch.get_rng_state(), before)


def test_drift_scenarios_and_tuning_leave_the_global_rng_alone():
    from experiments.incremental import run_drift, tune_methods

    cfg, _, ocfg = _small_online()
    ocfg = dataclasses.replace(ocfg, segment_steps=4)
    torch.manual_seed(99)
    before = torch.get_rng_state()
    regimes = make_regimes(32, n_regimes=2, seed=0)
    drift_schedule("gradual", 2, 4).sample(regimes, 5, 8, 16, torch.Generator().manual_seed(0))
    run_drift(cfg, ocfg, methods=("naive", "replay"), seeds=(0,), n_regimes=2, scenario="gradual")
    tune_methods(cfg, ocfg, grid={"naive": [{"lr": 1e-3}]}, n_regimes=2)
    assert torch.equal(torch.get_rng_state(), before)


def test_seeded_model_matches_a_manual_seed_and_restores_the_rng():
    from experiments.incremental.model import seeded_model

    cfg = TransformerConfig(n_layer=1, d_model=32, n_head=2)
    torch.manual_seed(7)
    expected = Transformer(cfg).state_dict()
    state = torch.get_rng_state()
    got = seeded_model(cfg, 7).state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert torch.equal(torch.get_rng_state(), state)


def test_ewc_fisher_is_per_sample():
    """The empirical Fisher is the mean of per-sequence squared gradients, not the
    square of the mean gradient (which the batch size would shrink)."""
    from experiments.incremental.online import OnlineEWC
    from experiments.incremental.train import lm_loss

    cfg = TransformerConfig(n_layer=1, d_model=32, n_head=2)
    model = Transformer(cfg)
    seqs = torch.stack([tokens(12, seed=s) for s in range(3)])
    grads = []
    for seq in seqs:
        model.zero_grad(set_to_none=True)
        lm_loss(model, seq[None])[0].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    ewc = OnlineEWC(model, lam=1.0, gamma=1.0)
    assert ewc.consolidate(model, seqs) == 3
    for i, f in enumerate(ewc.fisher):
        per_sample = sum(g[i] ** 2 for g in grads) / 3
        torch.testing.assert_close(f, per_sample, rtol=1e-5, atol=1e-12)
    total = sum(f.sum() for f in ewc.fisher)
    mean_sq = sum((sum(g[i] for g in grads) / 3).pow(2).sum() for i in range(len(grads[0])))
    assert total > 1.5 * mean_sq  # three different sequences: their gradients disagree


def test_regimes_conflict_and_are_learnable():
    regimes = make_regimes(32, n_regimes=4, seed=0)
    for r in regimes:
        assert 0.4 < r.oracle_accuracy() < 0.8
    # the most likely successor differs between regimes for most states
    top = torch.stack([r.P.argmax(1) for r in regimes])  # (K, V)
    assert (top[0] != top[1]).float().mean() > 0.8


# --------------------------------------------------------------------------- notebook


@pytest.mark.slow
def test_notebook_quick_end_to_end(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    run_dir = tmp_path / "run"
    monkeypatch.setenv("RESEARCH_RUN_DIR", str(run_dir))
    papermill.execute_notebook(
        str(REPO / "notebooks" / "incremental_transformer.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters={"quick": True},
        kernel_name="python3",
        cwd=str(REPO),
        progress_bar=False,
    )
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    metrics = {e["name"]: e["value"] for e in lines if e["kind"] == "metric"}
    for name in (
        "cache_max_abs_diff",
        "cache_speedup_2048",
        "cache_slope_cached",
        "cache_slope_recompute",
        "stream_nll_ratio_sink_vs_recompute",
        "stream_nll_ratio_window_vs_recompute",
        "stream_mem_growth_sink",
        "drift_abrupt_forgetting_naive",
        "drift_abrupt_forgetting_replay_ci95",
        "drift_abrupt_replay_vs_naive_forgetting_ratio",
        "drift_abrupt_tokens_to_recover_replay",
        "decode_speedup_batch32",
        "memory_slope_bytes_per_token_dense",
        "sink_mass_first_token_layer0_plain",
        "sink_mass_first_token_layer1_sink_token",
        "sink_nll_ratio_window_vs_recompute_4x_sink_token",
        "sink_nll_ratio_sink4_vs_recompute_4x_plain",
        "notebook_wall_s",
    ):
        assert name in metrics, name
    assert metrics["cache_max_abs_diff"] <= ATOL
    assert metrics["stream_mem_growth_sink"] == 1.0
    artifacts = [e for e in lines if e["kind"] == "artifact"]
    assert {Path(a["path"]).suffix for a in artifacts} == {".png"} and len(artifacts) >= 7
    assert_figures_shown_and_stored_once(tmp_path / "out.ipynb", run_dir)


def test_regimes_depend_only_on_their_seed():
    a = make_regimes(32, n_regimes=2, seed=5)
    torch.manual_seed(123)  # the global RNG must not matter
    torch.rand(17)
    b = make_regimes(32, n_regimes=2, seed=5)
    assert all(torch.equal(x.P, y.P) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for RSS")
def test_measured_stream_memory_grows_only_for_the_dense_cache():
    """Peak RSS of a fresh worker: the dense cache grows by its K/V bytes per token
    (2 layers x 128 wide x K and V x 4 bytes = 2,048), a sink + window cache not at all."""
    from experiments.incremental.memory import measure_stream_memory

    cfg = TransformerConfig(n_layer=2, d_model=128)
    mem = measure_stream_memory(cfg, lengths=(256, 1024, 2048), policies=("dense", "sink"))
    kv = mem["kv_bytes_per_token"]
    assert kv == 2048
    assert 0.75 * kv <= mem["policies"]["dense"]["bytes_per_token"] <= 1.25 * kv, mem
    assert abs(mem["policies"]["sink"]["bytes_per_token"]) <= 0.1 * kv, mem


@pytest.mark.parametrize("batch,prefill", [(4, 0), (3, 9), (8, 1)])
def test_kv_cache_matches_recompute_at_batch_above_one(batch, prefill):
    """Every sequence of a batch decoded through the cache gives the full forward's logits."""
    model = tiny_model()
    seqs = torch.stack([tokens(40, seed=s) for s in range(batch)])  # (B, T)
    ref = model(seqs)  # (B, T, vocab), full recompute
    cache = KVCache(model, batch_size=batch, max_len=40)
    with torch.no_grad():
        outs = [model(seqs[:, :prefill], cache)] if prefill else []
        outs += [model(seqs[:, t : t + 1], cache) for t in range(prefill, 40)]
    got = torch.cat(outs, dim=1)
    assert (got - ref).abs().max().item() <= ATOL
    # sequences do not leak into each other: sequence 0 alone gives the same logits
    alone = model(seqs[:1])
    assert (got[:1] - alone).abs().max().item() <= ATOL


def test_batched_decode_timings_are_per_batch():
    from experiments.incremental import run_decode_batches

    cfg = TransformerConfig(n_layer=1, d_model=32, n_head=2)
    out = run_decode_batches(cfg, batches=(1, 4), contexts=(32, 64))
    assert [(r["batch"], r["context"]) for r in out["rows"]] == [(1, 32), (1, 64), (4, 32), (4, 64)]
    for r in out["rows"]:
        assert r["cached_s"] > 0 and r["recompute_s"] > 0
        assert r["cached_tok_s"] == pytest.approx(r["batch"] / r["cached_s"])
    assert out["attention"] == "SDPA" and "blockwise" in out["attention_why"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kv_cache_on_cuda_uses_the_attention_kernels_and_matches_recompute():
    model = tiny_model().cuda()
    seqs = torch.stack([tokens(50, seed=s) for s in range(4)]).cuda()
    ref = model(seqs)
    cache = KVCache(model, batch_size=4, max_len=50)
    with torch.no_grad():
        got = torch.cat([model(seqs[:, :10], cache)] + [model(seqs[:, t : t + 1], cache) for t in range(10, 50)], 1)  # fmt: skip
    assert (got - ref).abs().max().item() <= 1e-3  # the float32 kernels use three-pass TF32


def test_stdlib_stream_is_real_deterministic_and_split_by_file(tmp_path):
    from experiments.incremental.text import VOCAB, stdlib_files, stdlib_stream

    train = stdlib_stream("train", max_bytes=200_000)
    assert train.numel() == 200_000 and int(train.max()) < VOCAB
    assert torch.equal(train, stdlib_stream("train", max_bytes=200_000))  # same every time
    assert b"def " in bytes(train[:50_000].tolist())  # real source text
    files = stdlib_files()
    assert files and not any("test" in p.parts or p.name.startswith("test_") for p in files)
    # a tiny tree of our own: each file lands on exactly one side
    for i in range(40):
        (tmp_path / f"mod{i}.py").write_text(f"x = {i}\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "skip.py").write_text("skipped\n")
    both = bytes(stdlib_stream("train", root=tmp_path, held_out_fraction=0.5).tolist())
    held = bytes(stdlib_stream("held_out", root=tmp_path, held_out_fraction=0.5).tolist())
    lines = set(both.decode().splitlines()) | set(held.decode().splitlines())
    assert set(both.decode().splitlines()).isdisjoint(held.decode().splitlines())
    assert lines == {f"x = {i}" for i in range(40)}
    with pytest.raises(ValueError):
        stdlib_stream("validation")


def test_page_hinkley_false_alarms_are_counted_on_a_stationary_stream(monkeypatch):
    import experiments.incremental.experiment as E

    cfg, _, ocfg = _small_online()
    out = E.page_hinkley_false_alarms(cfg, ocfg, seeds=(0, 1), steps=6)
    assert out["tokens"] == 2 * 6 * ocfg.batch_size * ocfg.seq_len
    assert len(out["alarms_per_seed"]) == 2
    # every alarm on a stream with one regime is false: force some and count them
    import experiments.incremental.online as O

    monkeypatch.setattr(O.PageHinkley, "update", lambda self, x: True)
    forced = E.page_hinkley_false_alarms(cfg, ocfg, seeds=(0,), steps=6)
    assert forced["alarms_per_seed"] == [6]
    assert forced["false_alarms_per_100k_tokens"] == pytest.approx(1e5 * 6 / forced["tokens"])


# --------------------------------------------------------------------------- drift scenarios


@settings(max_examples=50, deadline=None)
@given(
    n_segments=st.integers(2, 6),
    segment_steps=st.integers(2, 80),
    ramp_frac=st.floats(0.05, 1.0),
)
def test_gradual_mixing_rises_monotonically_to_one(n_segments, segment_steps, ramp_frac):
    schedule = drift_schedule("gradual", n_segments, segment_steps, ramp_frac=ramp_frac)
    for d in schedule.drift_steps:
        p = [schedule.mixing(step)[2] for step in range(d, d + segment_steps)]
        assert p[0] == 0.0  # the ramp starts with the outgoing regime only
        assert all(a <= b for a, b in zip(p, p[1:], strict=False))
        assert p[-1] == 1.0 and p[schedule.ramp_steps - 1] < 1.0
        old, new, _ = schedule.mixing(d)
        assert (old, new) == (
            schedule.order[d // segment_steps - 1],
            schedule.order[d // segment_steps],
        )
    assert all(schedule.mixing(s)[2] == 1.0 for s in range(segment_steps))  # first segment pure


def test_gradual_stream_draws_the_new_regime_in_proportion():
    regimes = make_regimes(32, n_regimes=2, seed=0)
    schedule = drift_schedule("gradual", 2, segment_steps=20, ramp_frac=0.5)
    assert schedule.ramp_steps == 10 and schedule.mixing(27) == (0, 1, 0.7)
    g = torch.Generator().manual_seed(0)
    # step 20 + 7: P(new) = 0.7; tell the regimes apart by each sequence's likelihood
    seqs, incoming = schedule.sample(regimes, 27, 2000, 16, g)

    def loglik(P, s):
        return P[s[:-1], s[1:]].log().sum()

    from_new = [loglik(regimes[1].P, s) > loglik(regimes[0].P, s) for s in seqs]
    assert np.mean(from_new) == pytest.approx(0.7, abs=0.04)  # sd of the share ~0.01
    assert np.mean(np.array(from_new) == incoming.numpy()) > 0.97  # the mask says which
    first, none_new = schedule.sample(regimes, 20, 4, 16, g)
    assert first.shape == (4, 16) and not none_new.any()  # P(new) = 0 at the ramp's start


def test_recurring_schedule_revisits_regimes():
    schedule = drift_schedule("recurring", 4, segment_steps=5)
    assert schedule.order == (0, 1, 0, 1) and schedule.ramp_steps == 0
    assert drift_schedule("recurring", 6, 5, period=3).order == (0, 1, 2, 0, 1, 2)
    assert schedule.drift_steps == [5, 10, 15]
    assert [schedule.mixing(s)[1] for s in (0, 5, 10, 15)] == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="unknown scenario"):
        drift_schedule("sudden", 4, 5)


def test_recurring_run_evaluates_each_segment_on_its_regime():
    cfg, regimes, ocfg = _small_online()
    schedule = drift_schedule("recurring", 4, ocfg.segment_steps)
    out = run_online("naive", regimes, cfg, ocfg, seed=0, schedule=schedule)
    R = out["acc_matrix"]
    assert R.shape == (4, 4) and out["regime_order"] == [0, 1, 0, 1]
    np.testing.assert_array_equal(R[:, 0], R[:, 2])  # the same regime, the same held-out set


def test_gradual_run_measures_accuracy_on_the_incoming_regime():
    cfg, regimes, ocfg = _small_online()
    ocfg = dataclasses.replace(ocfg, segment_steps=6)
    schedule = drift_schedule("gradual", 2, 6)  # ramp over steps 6..8
    out = run_online("naive", regimes, cfg, ocfg, seed=0, schedule=schedule)
    acc, incoming = out["preq_acc"], out["preq_acc_incoming"]
    assert math.isnan(incoming[6])  # P(new) = 0: no sequence from the incoming regime
    pure = [s for s in range(12) if schedule.mixing(s)[2] == 1.0]
    np.testing.assert_array_equal(incoming[pure], acc[pure])


# --------------------------------------------------------------------------- intervals, tuning


def test_t_interval_matches_the_textbook_value():
    from experiments.incremental.stats import paired_interval, t_interval, t_quantile_975

    # scipy.stats.t.interval(0.95, 4, loc=3, scale=sem([1, 2, 3, 4, 5])) = (1.0368, 4.9632)
    mean, half, n = t_interval([1, 2, 3, 4, 5, math.nan])
    assert (mean, n) == (3.0, 5) and half == pytest.approx(1.9632, abs=1e-4)
    assert t_quantile_975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile_975(60) == pytest.approx(2.0003, abs=1e-3)  # the expansion beyond 30
    assert t_quantile_975(120) == pytest.approx(1.9799, abs=1e-3)
    assert math.isnan(t_interval([2.0])[1])
    diff = paired_interval([3, 5, 7], [1, 2, 3], "difference")  # differences 2, 3, 4
    assert diff[0] == pytest.approx(3) and diff[1] == pytest.approx(4.3027 / math.sqrt(3), 1e-4)
    assert paired_interval([2, 4], [1, 2], "ratio")[:2] == (2.0, 0.0)


def test_tune_methods_picks_the_argmax_of_its_grid(monkeypatch):
    import experiments.incremental.experiment as E

    cfg, _, ocfg = _small_online()
    grid = {
        "naive": [{"lr": 1e-3}, {"lr": 3e-3}],
        "replay": [{"replay_frac": 0.25}, {"replay_frac": 0.75}],
    }
    real = E.tune_methods(cfg, ocfg, grid=grid, seeds=(100, 101), n_regimes=2)
    for m, rows in real["grid"].items():
        assert [r["config"] for r in rows] == grid[m]
        assert real["chosen"][m] == max(rows, key=lambda r: r["score"])["config"]
    # with scores known in advance: the chosen config is the best one, not the first or last
    score = {1e-3: 0.2, 2e-3: 0.9, 3e-3: 0.5}
    monkeypatch.setattr(E, "run_online", lambda m, r, mc, c, *a, **k: {"avg_acc": score[c.lr]})
    fake = E.tune_methods(cfg, ocfg, grid={"ewc": [{"lr": lr} for lr in score]}, n_regimes=2)
    assert fake["chosen"] == {"ewc": {"lr": 2e-3}}
    assert [r["score"] for r in fake["grid"]["ewc"]] == [0.2, 0.9, 0.5]


def test_run_drift_reports_intervals_and_reuses_reference_runs(monkeypatch):
    import experiments.incremental.experiment as E

    cfg, _, ocfg = _small_online()
    calls = []
    real = E.run_online
    monkeypatch.setattr(
        E, "run_online", lambda m, r, *a, **k: calls.append((m, len(r))) or real(m, r, *a, **k)
    )
    cache: dict = {}
    out = {
        sc: E.run_drift(cfg, ocfg, methods=("naive", "replay"), seeds=(0, 1), n_regimes=3,
                        scenario=sc, references=cache)
        for sc in ("abrupt", "recurring")
    }  # fmt: skip
    # one reference run per (seed, regime): 2 seeds x 3 regimes, none repeated for recurring
    assert sum(1 for m, n in calls if n == 1) == 6 and len(cache) == 6
    iv = out["abrupt"]["intervals"]
    mean, half, n = iv["replay"]["forgetting"]
    assert (
        n == 2
        and half >= 0
        and mean == pytest.approx(out["abrupt"]["summary"]["replay_forgetting"][0])
    )
    assert set(iv["replay"]) >= {"forgetting_ratio_vs_naive", "avg_acc_diff_vs_naive"}
    rec = out["recurring"]["runs"]["naive"][0]
    assert rec["returning_drift"] == [False, True]  # A B A: the second drift returns to A
    naive_levels = out["abrupt"]["runs"]["naive"][0]["reference_levels"]  # into B, C
    assert rec["reference_levels"][0] == naive_levels[0]  # the same reference for B
