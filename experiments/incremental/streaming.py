"""Streaming inference: cached vs recomputed decoding, and bounded-memory streams.

Measurements used by the benchmark and the notebook:

* ``cached_logits`` / ``recompute_logits`` -- the same next-token logits two ways
  (KV cache vs the full sequence through the reference path).
* ``time_cached`` / ``time_recompute`` -- per-token latency as a function of
  context length n: one cached decode step attends over n keys (O(n)); full
  recompute re-runs the n-token prefix (O(n d^2 + n^2 d)). ``loglog_slope`` fits
  the growth exponent.
* ``stream_eval`` -- next-token NLL, per-token latency and cache bytes over a long
  stream for four policies: ``dense`` (full KVCache), ``sink`` (StreamingLLM sinks
  + window), ``window`` (window-only ablation, same cache size) and ``recompute``
  (sliding-window recompute: the last n_sink + window tokens re-run from scratch
  for every token, the quality baseline of StreamingLLM's Table/Fig. 3).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from experiments.incremental.cache import KVCache, SinkWindowCache
from experiments.incremental.model import Transformer


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def recompute_logits(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """tokens: (T,) -> (T, vocab) logits from one full forward (reference)."""
    return model(tokens[None])[0]


@torch.no_grad()
def cached_logits(model: Transformer, tokens: torch.Tensor, prefill: int = 0) -> torch.Tensor:
    """tokens: (T,) -> (T, vocab): prefill ``prefill`` tokens at once, then one per step."""
    T = tokens.numel()
    cache = KVCache(model, batch_size=1, max_len=T)
    out = []
    if prefill:
        out.append(model(tokens[None, :prefill], cache)[0])  # (prefill, vocab)
    for t in range(prefill, T):
        out.append(model(tokens[None, t : t + 1], cache)[0])  # (1, vocab)
    return torch.cat(out)


@torch.no_grad()
def time_cached(
    model: Transformer,
    contexts,
    device="cpu",
    min_reps: int = 24,
    budget_s: float = 0.1,
    seed: int = 0,
    batch_size: int = 1,
) -> np.ndarray:
    """Seconds of one cached decode step (``batch_size`` sequences, one new token each)
    that attends over n keys, for each n: the
    minimum over at least ``min_reps`` repeats, more while under ``budget_s`` per point
    (the minimum is the run least disturbed by other processes, the timeit convention).

    The step's cost does not depend on the cached values, so the cache is filled
    with random keys/values instead of prefilling n real tokens (which would cost
    a full O(n^2) forward per point); every repeat rewrites the same slot n-1.
    ``cached_logits`` checks the real path.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in contexts:
        cache = KVCache(model, batch_size=batch_size, max_len=n)
        cache.k.copy_(torch.randn(cache.k.shape, generator=g))  # CPU draws: any device
        cache.v.copy_(torch.randn(cache.v.shape, generator=g))
        token = torch.randint(model.cfg.vocab_size, (batch_size, 1), generator=g).to(device)
        ts = []
        while len(ts) <= min_reps or (sum(ts) < budget_s and len(ts) < 500):
            cache.length = n - 1  # the step writes token n-1 and attends over n keys
            _sync(device)
            t0 = time.perf_counter()
            model(token, cache)
            _sync(device)
            ts.append(time.perf_counter() - t0)
        out.append(float(np.min(ts[1:])))  # ts[0] is a warm-up
    return np.array(out)


@torch.no_grad()
def time_recompute(
    model: Transformer,
    contexts,
    device="cpu",
    min_reps: int = 3,
    budget_s: float = 0.5,
    seed: int = 0,
    batch_size: int = 1,
) -> np.ndarray:
    """Seconds of one full forward over n tokens (what recompute pays for the next token):
    the minimum over at least ``min_reps`` repeats, more while under ``budget_s`` per point."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in contexts:
        tokens = torch.randint(model.cfg.vocab_size, (batch_size, n), generator=g).to(device)
        model(tokens[:, : min(n, 16)])  # warm-up
        ts = []
        while len(ts) < min_reps or (sum(ts) < budget_s and len(ts) < 100):
            _sync(device)
            t0 = time.perf_counter()
            model(tokens)
            _sync(device)
            ts.append(time.perf_counter() - t0)
        out.append(float(np.min(ts)))
    return np.array(out)


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y against log x (cost ~ x^slope)."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


POLICIES = ("dense", "sink", "window", "recompute")


def policy_cache(
    model: Transformer, policy: str, n_tokens: int, n_sink: int, window: int, batch_size: int = 1
):
    """The cache a policy streams ``n_tokens`` through; None for sliding-window recompute."""
    if policy == "dense":
        return KVCache(model, batch_size, max_len=n_tokens)
    if policy == "sink":
        return SinkWindowCache(model, batch_size, n_sink=n_sink, window=window)
    if policy == "window":  # the same memory as "sink", no sinks
        return SinkWindowCache(model, batch_size, n_sink=0, window=n_sink + window)
    if policy == "recompute":
        return None
    raise ValueError(f"unknown policy {policy!r}; choose from {POLICIES}")


def recompute_context(stream: torch.Tensor, t: int, capacity: int, keep_first: int = 0):
    """The tokens sliding-window recompute re-runs to predict token t + 1 of ``stream``
    (B, N): the last ``capacity`` tokens up to t, of which the first ``keep_first`` are
    the stream's own first tokens (a model pretrained with a sink token at the start of
    every sequence sees it there too)."""
    if t + 1 <= capacity:
        return stream[:, : t + 1]
    recent = stream[:, t + 1 - (capacity - keep_first) : t + 1]
    return torch.cat([stream[:, :keep_first], recent], dim=1)


@torch.no_grad()
def stream_eval(
    model: Transformer,
    stream: torch.Tensor,
    policy: str,
    n_sink: int = 4,
    window: int = 60,
    device="cpu",
    keep_first: int = 0,
) -> dict:
    """Run ``stream`` ((N,), or (B, N) for B streams side by side) through one cache
    policy, one token per step.

    Returns ``nll`` ((N-1,) or (B, N-1)) of predicting token t+1 from the context the
    policy keeps, ``latency`` (N,) seconds per step, and ``bytes_in_use`` (N,) of the
    KV state after each step. ``keep_first`` is passed to ``recompute_context``.
    """
    single = stream.dim() == 1
    stream = stream.to(device).reshape(-1, stream.shape[-1])  # (B, N)
    (B, N), capacity = stream.shape, n_sink + window
    cache = policy_cache(model, policy, N, n_sink, window, batch_size=B)
    logits = torch.empty(B, N, model.cfg.vocab_size, device=device)
    latency, mem = np.empty(N), np.empty(N, dtype=np.int64)
    elem = next(model.parameters()).element_size()
    kv_bytes_per_token = 2 * model.cfg.n_layer * model.cfg.d_model * elem * B  # K, V, all layers
    for t in range(N):
        _sync(device)
        t0 = time.perf_counter()
        if cache is None:  # sliding-window recompute, positions 0.. every step
            logits[:, t] = model(recompute_context(stream, t, capacity, keep_first))[:, -1]
        else:
            logits[:, t] = model(stream[:, t : t + 1], cache)[:, -1]
        _sync(device)
        latency[t] = time.perf_counter() - t0
        if cache is None:  # recompute keeps only tokens; its K/V are transient
            mem[t] = min(t + 1, capacity) * kv_bytes_per_token
        else:
            mem[t] = cache.bytes_in_use
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        stream[:, 1:].reshape(-1),
        reduction="none",
    ).view(B, N - 1)
    nll = nll.cpu().numpy()
    return {"nll": nll[0] if single else nll, "latency": latency, "bytes_in_use": mem}
