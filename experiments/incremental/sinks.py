"""Attention sinks on real text: does window-only attention collapse once the first
tokens leave the cache, and do a few kept "sink" tokens restore it?

StreamingLLM (Xiao et al. 2023, arXiv:2309.17453) observed that pretrained LLMs put a
large share of every query's attention on the first few tokens whatever they say
(attention sinks), so a sliding window that evicts them breaks the model, while
keeping 4 of them beside the window matches sliding-window recompute. Their Sec. 3.3
proposes pretraining with a dedicated learnable sink token at the start of every
sample, after which one kept token suffices.

This module runs that experiment at a size a CPU trains in minutes:

* ``train_text_model`` -- a byte-level Transformer trained on the standard library's
  source (``text.py``), either plainly or with ``SINK_TOKEN`` prepended to every
  training sequence (the paper's remedy). Both see the same windows in the same order
  from the same initialisation, so the two models are a paired comparison.
* ``attention_mass_on_first`` -- per layer and head, the attention mass each query
  puts on the first token(s), beside what uniform attention over the causal prefix
  would put there: the measurement that says whether the model has a sink at all.
* ``run_sink_experiment`` -- streams held-out text far past the training context
  through dense attention, window-only, sinks + window and sliding-window recompute
  (``streaming.stream_eval``) and returns per-token NLL against position.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from experiments.incremental.model import Transformer, TransformerConfig, seeded_model
from experiments.incremental.streaming import stream_eval
from experiments.incremental.text import VOCAB, stdlib_stream
from experiments.incremental.train import TrainConfig, lm_loss, train_lm

SINK_TOKEN = VOCAB  # one id past the bytes, used only by the sink-token model
SINK_THRESHOLD = 0.3  # a head "has a sink" above this mean mass on the first token


@dataclass
class SinkExperimentConfig:
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    train_steps: int = 1500  # AdamW steps per model (~5 min each on one CPU core)
    batch_size: int = 16
    seq_len: int = 128  # training context (sink token included for the sink model)
    lr: float = 2e-3
    weight_decay: float = 0.1
    cache: int = 64  # tokens every bounded policy keeps (sinks + window), < seq_len
    sink_counts: tuple[int, ...] = (1, 2, 4, 8)
    stream_multiple: int = 16  # held-out stream length, in training contexts
    n_streams: int = 8  # held-out streams, side by side in one batch
    probe_every: int = 250  # steps between attention-mass probes during training
    seed: int = 0

    def model_config(self) -> TransformerConfig:
        return TransformerConfig(
            vocab_size=VOCAB + 1, n_layer=self.n_layer, n_head=self.n_head, d_model=self.d_model
        )


def with_sink(seqs: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T + 1): ``SINK_TOKEN`` in front of every sequence."""
    return torch.cat([torch.full_like(seqs[:, :1], SINK_TOKEN), seqs], dim=1)


def text_batches(tokens: torch.Tensor, batch_size: int, seq_len: int, sink_token: bool):
    """A sampler for ``train_lm``: ``batch_size`` random windows of ``tokens``, each
    ``seq_len`` long; with ``sink_token`` the window's last byte makes room for
    ``SINK_TOKEN`` in front, so both variants draw identical windows from one generator."""

    def sample(g: torch.Generator) -> torch.Tensor:
        start = torch.randint(tokens.numel() - seq_len, (batch_size,), generator=g)
        seqs = torch.stack([tokens[s : s + seq_len] for s in start.tolist()])  # (B, T)
        return with_sink(seqs[:, :-1]) if sink_token else seqs

    return sample


def train_text_model(
    cfg: SinkExperimentConfig,
    sink_token: bool,
    train_tokens: torch.Tensor,
    device="cpu",
    probe: torch.Tensor | None = None,
) -> tuple[Transformer, dict]:
    """A fresh model (seed ``cfg.seed``) trained on ``train_tokens``; returns (model, info).

    With ``probe`` (B, T) text, ``info["mass_history"]`` holds (step, per-layer attention
    mass on the first token) every ``cfg.probe_every`` steps: whether a sink is forming.
    """
    model = seeded_model(cfg.model_config(), cfg.seed).to(device)
    train_cfg = TrainConfig(
        steps=cfg.train_steps,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        lr=cfg.lr,
        warmup=min(100, cfg.train_steps // 10 + 1),
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
    )
    history = []

    def probe_mass(step: int, m: Transformer) -> None:
        if probe is not None and (step % cfg.probe_every == 0 or step == cfg.train_steps):
            history.append((step, attention_mass_on_first(m, probe)["per_layer"]))

    t0 = time.perf_counter()
    batches = text_batches(train_tokens, cfg.batch_size, cfg.seq_len, sink_token)
    losses = train_lm(model, batches, train_cfg, device, on_step=probe_mass)
    info = {"train_s": time.perf_counter() - t0, "train_loss": losses, "mass_history": history}
    return model, info


@torch.no_grad()
def attention_mass_on_first(
    model: Transformer,
    seqs: torch.Tensor,
    n_first: int = 1,
    min_query: int = 16,
    n_recent: int = 8,
) -> dict:
    """Mean attention weight on keys 0..n_first-1 from queries at positions >= min_query.

    Returns ``per_layer`` (n_layer,) averaged over heads, ``per_head`` (n_layer, nh),
    ``uniform``: what attention spread evenly over each causal prefix would put on
    those keys (n_first / (i + 1), averaged over the same queries), and ``sink_rate``:
    the fraction of heads whose mean mass exceeds ``SINK_THRESHOLD`` (Gu et al. 2024,
    "When Attention Sink Emerges in Language Models", arXiv:2410.10781: Sink_1^eps with
    eps = 0.3). A sink is a mass far above ``uniform``; attention that avoids the first
    tokens sits below it. ``recent_per_layer`` is the mass on each query's ``n_recent``
    most recent keys (itself included): how local the attention is.
    """
    model.eval()
    T = seqs.shape[1]
    per_head, recent = [], []
    offset = torch.arange(T)[:, None] - torch.arange(T)[None, :]  # query minus key position
    is_recent = ((offset >= 0) & (offset < n_recent)).to(seqs.device)  # (T, T)
    x = model.tok_emb(seqs)  # (B, T, C)
    for block in model.blocks:
        probs = block.attn.attention_probs(block.ln1(x), model.rotary)  # (B, nh, T, T)
        mass = probs[:, :, min_query:, :n_first].sum(-1)  # (B, nh, T - min_query)
        per_head.append(mass.mean(dim=(0, 2)))
        recent.append((probs * is_recent)[:, :, min_query:].sum(-1).mean())
        x = block(x, model.rotary, 0)
    per_head = torch.stack(per_head).cpu().numpy()  # (n_layer, nh)
    queries = np.arange(min_query, T)
    return {
        "per_layer": per_head.mean(axis=1),
        "per_head": per_head,
        "uniform": float(np.mean(n_first / (queries + 1))),
        "sink_rate": float((per_head > SINK_THRESHOLD).mean()),
        "recent_per_layer": torch.stack(recent).cpu().numpy(),
    }


def held_out_streams(tokens: torch.Tensor, n_streams: int, length: int) -> torch.Tensor:
    """(n_streams, length) windows of held-out text, evenly spaced (deterministic)."""
    if tokens.numel() < length:
        raise ValueError(f"held-out text has {tokens.numel()} tokens, fewer than {length}")
    starts = np.linspace(0, tokens.numel() - length, n_streams).astype(int)
    return torch.stack([tokens[s : s + length] for s in starts])


def policy_runs(cfg: SinkExperimentConfig) -> list[tuple[str, str, int]]:
    """(label, stream_eval policy, n_sink) for every policy compared, at one cache size."""
    runs = [("dense", "dense", 0), ("window", "window", 0)]
    runs += [(f"sink{n}", "sink", n) for n in cfg.sink_counts]
    return runs + [("recompute", "recompute", 0)]


def stream_model(
    model: Transformer,
    streams: torch.Tensor,
    cfg: SinkExperimentConfig,
    sink_token: bool,
    device="cpu",
) -> dict[str, np.ndarray]:
    """Per-token NLL (B, N-1) of each policy on the held-out ``streams`` (B, N).

    Entry i is the NLL of text token i+1 for both model variants: the sink-token model
    streams ``SINK_TOKEN`` first and its first prediction (from the sink alone) is
    dropped, so its curves line up with the plain model's token for token.
    """
    if sink_token:
        streams = with_sink(streams)
    out = {}
    for label, policy, n_sink in policy_runs(cfg):
        window = cfg.cache - n_sink
        # Sliding-window recompute re-runs the text exactly as the model was trained on
        # it: after the sink token, for the model that always had one.
        r = stream_eval(model, streams, policy, n_sink, window, device, keep_first=int(sink_token))
        out[label] = r["nll"][:, 1:] if sink_token else r["nll"]
    return out


def nll_at_multiples(nll: np.ndarray, seq_len: int, multiples=(4, 8, 16)) -> dict[int, float]:
    """Mean NLL over the training context of tokens ending at each multiple of it
    (positions [(k-1) T, k T) of the text), over all streams."""
    out = {}
    for k in multiples:
        lo, hi = (k - 1) * seq_len, min(k * seq_len, nll.shape[1])
        if lo < hi:
            out[k] = float(nll[:, lo:hi].mean())
    return out


def run_sink_experiment(
    cfg: SinkExperimentConfig | None = None, device="cpu", progress=None
) -> dict:
    """Train the plain and the sink-token model, measure their attention on the first
    tokens, and stream held-out text through every policy. See the module docstring."""
    cfg = cfg or SinkExperimentConfig()
    if cfg.cache >= cfg.seq_len:
        raise ValueError("the cache must be shorter than the training context")
    say = progress or (lambda _msg: None)
    train, held = stdlib_stream("train"), stdlib_stream("held_out")
    n_stream = cfg.stream_multiple * cfg.seq_len
    streams = held_out_streams(held, cfg.n_streams, n_stream)
    probe = held_out_streams(held, cfg.n_streams, cfg.seq_len)  # attention-mass inputs
    out = {"config": cfg, "stream_len": n_stream, "models": {}}
    for variant, sink_token in (("plain", False), ("sink_token", True)):
        x = with_sink(probe[:, :-1]).to(device) if sink_token else probe.to(device)
        model, info = train_text_model(cfg, sink_token, train, device, probe=x)
        say(f"sinks: trained {variant} model in {info['train_s']:.0f} s")
        held_nll = lm_loss(model, x)[0].item()
        mass = {n: attention_mass_on_first(model, x, n_first=n) for n in (1, 4)}
        t0 = time.perf_counter()
        nll = stream_model(model, streams, cfg, sink_token, device)
        say(f"sinks: streamed {variant} model in {time.perf_counter() - t0:.0f} s")
        at = {label: nll_at_multiples(v, cfg.seq_len) for label, v in nll.items()}
        ratios = {
            label: {k: v / at["recompute"][k] for k, v in by_k.items()}
            for label, by_k in at.items()
        }
        out["models"][variant] = {
            **info,
            "heldout_nll": held_nll,
            "mass_first": mass[1],
            "mass_first4": mass[4],
            "nll": nll,
            "nll_at": at,
            "ratio_vs_recompute": ratios,
        }
    return out


def quick_config() -> SinkExperimentConfig:
    """A seconds-long configuration for the notebook's quick mode and tests (no sinks
    develop in so few steps: it exercises the pipeline, not the finding)."""
    return replace(
        SinkExperimentConfig(),
        n_layer=2,
        d_model=64,
        train_steps=30,
        batch_size=8,
        seq_len=64,
        cache=32,
        stream_multiple=4,
        n_streams=2,
        probe_every=10,
    )
