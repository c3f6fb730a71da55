"""Tests for the attention-sink experiment on real text (experiments/incremental/sinks.py)
and the batched streaming evaluation it runs on. Seeded; tolerances explicit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from experiments.incremental.model import TransformerConfig, seeded_model
from experiments.incremental.sinks import (
    SINK_TOKEN,
    attention_mass_on_first,
    held_out_streams,
    nll_at_multiples,
    quick_config,
    run_sink_experiment,
    stream_model,
    text_batches,
)
from experiments.incremental.streaming import POLICIES, recompute_context, stream_eval
from experiments.incremental.train import TrainConfig, train_lm

ATOL = 1e-5  # fp32 NLL, one batched run against the same streams run one by one


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster than two fighting over small ops."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_model(vocab: int = 40, seed: int = 0):
    cfg = TransformerConfig(vocab_size=vocab, n_layer=2, d_model=32, n_head=4)
    return seeded_model(cfg, seed).eval()


def streams(b: int, n: int, vocab: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randint(vocab, (b, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("policy", POLICIES)
def test_batched_stream_eval_equals_one_stream_at_a_time(policy):
    model, x = small_model(), streams(3, 50)
    batched = stream_eval(model, x, policy, n_sink=2, window=10, keep_first=1)
    assert batched["nll"].shape == (3, 49)
    for b in range(3):
        alone = stream_eval(model, x[b], policy, n_sink=2, window=10, keep_first=1)
        assert alone["nll"].shape == (49,)
        np.testing.assert_allclose(batched["nll"][b], alone["nll"], atol=ATOL, rtol=0)


def test_recompute_context_keeps_the_first_tokens_and_the_most_recent():
    x = torch.arange(20)[None]  # (1, 20)
    assert recompute_context(x, 3, capacity=8).tolist() == [[0, 1, 2, 3]]
    assert recompute_context(x, 7, capacity=8).tolist() == [list(range(8))]
    assert recompute_context(x, 12, capacity=8).tolist() == [list(range(5, 13))]
    assert recompute_context(x, 12, capacity=8, keep_first=1).tolist() == [[0] + list(range(6, 13))]


def test_attention_probs_reproduce_the_reference_attention():
    model = small_model()
    attn, x = (
        model.blocks[0].attn,
        torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(0)),
    )
    probs = attn.attention_probs(x, model.rotary)  # (2, nh, 12, 12)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 12), atol=1e-6)
    assert probs.triu(1).abs().max().item() == 0.0  # causal
    _, _, v = attn.qkv(x).split(32, dim=2)
    v = v.view(2, 12, 4, 8).transpose(1, 2)
    y = (probs @ v).transpose(1, 2).reshape(2, 12, 32)
    assert torch.allclose(attn.proj(y), attn(x, model.rotary, 0), atol=1e-6)


def test_attention_mass_equals_uniform_when_attention_is_uniform():
    model = small_model()
    for block in model.blocks:  # zero queries and keys: every score is 0, softmax is uniform
        torch.nn.init.zeros_(block.attn.qkv.weight[:64])
    x = streams(2, 40)
    for n_first in (1, 4):
        m = attention_mass_on_first(model, x, n_first=n_first, min_query=8)
        assert m["per_head"].shape == (2, 4)
        np.testing.assert_allclose(m["per_layer"], m["uniform"], rtol=1e-5)
        assert m["sink_rate"] == 0.0
        np.testing.assert_allclose(m["recent_per_layer"], np.mean(8 / np.arange(9, 41)), rtol=1e-5)
    whole = attention_mass_on_first(model, x, n_first=40, min_query=8)  # every key
    np.testing.assert_allclose(whole["per_layer"], 1.0, rtol=1e-5)
    assert whole["sink_rate"] == 1.0


def test_plain_and_sink_token_batches_are_the_same_windows():
    text = torch.arange(1000) % 256
    before = torch.random.get_rng_state()
    plain = text_batches(text, 4, 16, sink_token=False)(torch.Generator().manual_seed(3))
    sunk = text_batches(text, 4, 16, sink_token=True)(torch.Generator().manual_seed(3))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert plain.shape == sunk.shape == (4, 16)
    assert (sunk[:, 0] == SINK_TOKEN).all()
    assert torch.equal(sunk[:, 1:], plain[:, :-1])


def test_sink_token_curves_line_up_with_the_plain_model():
    cfg = quick_config()
    model = seeded_model(cfg.model_config(), 0).eval()
    x = streams(2, 48, vocab=256)
    plain = stream_model(model, x, cfg, sink_token=False)
    sunk = stream_model(model, x, cfg, sink_token=True)
    assert (
        set(plain)
        == set(sunk)
        == {"dense", "window", "sink1", "sink2", "sink4", "sink8", "recompute"}
    )
    for label in plain:
        assert plain[label].shape == sunk[label].shape == (2, 47)
    # Until the cache fills, every policy sees the whole prefix: the same predictions.
    for label in ("window", "sink4", "recompute"):
        np.testing.assert_allclose(
            plain[label][:, : cfg.cache - 1], plain["dense"][:, : cfg.cache - 1], atol=ATOL
        )


def test_nll_at_multiples_averages_the_context_ending_at_each_multiple():
    nll = np.tile(np.arange(64, dtype=float), (2, 1))  # (2, 64), value = position
    at = nll_at_multiples(nll, seq_len=8, multiples=(4, 8, 16))
    assert at == {4: np.mean(np.arange(24, 32)), 8: np.mean(np.arange(56, 64))}  # 16x: beyond


def test_held_out_streams_refuse_text_shorter_than_a_stream():
    with pytest.raises(ValueError, match="fewer than"):
        held_out_streams(torch.arange(10), 2, 11)
    s = held_out_streams(torch.arange(100), 3, 10)
    assert s[:, 0].tolist() == [0, 45, 90]


def test_sink_experiment_runs_end_to_end_on_the_quick_config():
    before = torch.random.get_rng_state()
    r = run_sink_experiment(quick_config())
    assert torch.equal(torch.random.get_rng_state(), before)
    assert set(r["models"]) == {"plain", "sink_token"}
    for m in r["models"].values():
        assert m["mass_first"]["per_layer"].shape == (2,)
        assert [step for step, _ in m["mass_history"]] == [0, 10, 20, 30]
        assert all(mass.shape == (2,) for _, mass in m["mass_history"])
        assert math.isfinite(m["heldout_nll"]) and m["heldout_nll"] < math.log(257) + 0.1
        assert m["ratio_vs_recompute"]["recompute"] == {4: 1.0}
        for by_k in m["ratio_vs_recompute"].values():
            assert all(0.5 < v < 2.0 for v in by_k.values())


def test_train_lm_probes_before_every_step_and_after_the_last():
    model = small_model()
    seen = []
    cfg = TrainConfig(steps=3, batch_size=2, seq_len=8, warmup=1)
    losses = train_lm(
        model, lambda g: torch.randint(40, (2, 8), generator=g), cfg,
        on_step=lambda step, m: seen.append((step, m.training)),
    )  # fmt: skip
    assert len(losses) == 3
    assert seen == [(0, True), (1, True), (2, True), (3, False)]
