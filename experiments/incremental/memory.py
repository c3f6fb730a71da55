"""Measured memory of the streaming cache policies against stream length.

The cache sizes ``stream_eval`` reports are what the caches hold by construction;
this module measures what a stream actually costs. Each policy streams N tokens
(one decode step per token, nothing kept per token but a running loss) for
several N, in a fresh worker process (``python -m experiments.incremental.memory``):

* CPU: the kernel's peak resident set (``VmHWM``, reset before each N through
  ``/proc/self/clear_refs``) minus the resident set before the stream; glibc's
  malloc thresholds are pinned so freed blocks go back to the OS.
* CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before.

A bounded policy's peak does not grow with N; the dense cache's grows by its
K/V bytes per token. ``bytes_per_token`` is the least-squares slope of peak
against N.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import numpy as np
import torch

from experiments.incremental.model import TransformerConfig, seeded_model
from experiments.incremental.streaming import POLICIES, policy_cache
from experiments.process_memory import peak_bytes, reset_peak, rss_bytes, run_worker


@torch.no_grad()
def stream_once(model, stream: torch.Tensor, policy: str, n_sink: int, window: int) -> float:
    """Stream ``stream`` (N,) through one policy; the mean next-token NLL (nothing else kept)."""
    n, capacity = stream.numel(), n_sink + window
    cache = policy_cache(model, policy, n, n_sink, window)
    total = 0.0
    for t in range(n - 1):
        if cache is None:  # sliding-window recompute of the last `capacity` tokens
            logits = model(stream[None, max(0, t + 1 - capacity) : t + 1])[0, -1]
        else:
            logits = model(stream[None, t : t + 1], cache)[0, -1]
        total -= torch.log_softmax(logits.float(), -1)[stream[t + 1]].item()
    return total / max(1, n - 1)


def _peak_of_stream(model, stream, policy, n_sink, window, device, resettable) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        stream_once(model, stream, policy, n_sink, window)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = rss_bytes()
    reset_peak()
    stream_once(model, stream, policy, n_sink, window)
    return max(0, peak_bytes(resettable) - before)


def _worker_main() -> None:
    job = json.loads(sys.stdin.read())
    torch.set_num_threads(1)
    device = torch.device(job["device"])
    model = seeded_model(TransformerConfig(**job["model"]), job["seed"]).to(device).eval()
    gen = torch.Generator().manual_seed(job["seed"])
    vocab = model.cfg.vocab_size
    resettable = reset_peak()
    warm = torch.randint(vocab, (64,), generator=gen).to(device)
    stream_once(model, warm, job["policy"], job["n_sink"], job["window"])  # load kernels first
    peaks = []
    for n in job["lengths"]:
        stream = torch.randint(vocab, (n,), generator=gen).to(device)
        peaks.append(
            _peak_of_stream(
                model, stream, job["policy"], job["n_sink"], job["window"], device, resettable
            )
        )
    print(json.dumps(peaks))


def measure_stream_memory(
    model_cfg: TransformerConfig,
    lengths=(512, 1024, 2048, 4096),
    policies=POLICIES,
    n_sink: int = 4,
    window: int = 60,
    device="cpu",
    seed: int = 0,
    timeout: float = 600,
) -> dict:
    """Measured peak extra memory per policy and stream length, and its growth per token."""
    lengths = sorted(int(n) for n in lengths)
    out = {"lengths": lengths, "device": str(device), "policies": {}}
    for policy in policies:
        job = dict(model=asdict(model_cfg), seed=seed, policy=policy, lengths=lengths,
                   n_sink=n_sink, window=window, device=str(device))  # fmt: skip
        peaks = run_worker("experiments.incremental.memory", job, timeout=timeout)
        slope = float(np.polyfit(np.asarray(lengths, float), np.asarray(peaks, float), 1)[0])
        out["policies"][policy] = {"peak_bytes": peaks, "bytes_per_token": slope}
    elem = 4  # float32 K and V
    out["kv_bytes_per_token"] = 2 * model_cfg.n_layer * model_cfg.d_model * elem
    return out


if __name__ == "__main__":
    _worker_main()
