"""Brief offline pretraining on the synthetic regimes, and held-out evaluation.

The streaming-inference comparisons only mean something for a model that has
learned the source, so the experiment trains the small Transformer for a few
hundred AdamW steps (Loshchilov & Hutter 2019) on sequences drawn from a mixture
of the Markov regimes in ``data.py``; each sequence comes from one regime, so the
model must read its context to know which chain it is in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from experiments.incremental.data import MarkovSource, mixture_batch
from experiments.incremental.model import Transformer


@dataclass
class TrainConfig:
    steps: int = 300  # AdamW steps; ~15 s on one CPU core at the default size
    batch_size: int = 16  # sequences per step
    seq_len: int = 128  # training context; the streaming caches stay below it
    lr: float = 3e-3  # peak learning rate
    warmup: int = 20  # linear warm-up steps, then cosine decay to lr/10
    weight_decay: float = 0.01
    seed: int = 0


def lm_loss(model: Transformer, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """seqs: (B, T) -> (mean next-token NLL, top-1 accuracy) over the B*(T-1) predictions."""
    logits = model(seqs[:, :-1])  # (B, T-1, vocab)
    targets = seqs[:, 1:]  # (B, T-1)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    acc = (logits.argmax(-1) == targets).float().mean()
    return loss, acc


def train_offline(
    model: Transformer, regimes: list[MarkovSource], cfg: TrainConfig, device="cpu"
) -> list[float]:
    """Train in place on the regime mixture; returns the loss per step."""
    return train_lm(
        model, lambda g: mixture_batch(regimes, cfg.batch_size, cfg.seq_len, g), cfg, device
    )


def train_lm(
    model: Transformer, sample_batch, cfg: TrainConfig, device="cpu", on_step=None
) -> list[float]:
    """AdamW with linear warm-up and cosine decay to lr/10 on ``sample_batch(generator)``
    -> (B, T) token batches (the generator is seeded from ``cfg.seed``, nothing global).
    ``on_step(step, model)``, if given, is called before each step and after the last
    (step == cfg.steps), e.g. to probe the model during training. Trains in place;
    returns the loss per step."""
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    losses = []
    for step in range(cfg.steps):
        if on_step is not None:
            on_step(step, model)
            model.train()
        if step < cfg.warmup:
            lr = cfg.lr * (step + 1) / cfg.warmup
        else:
            frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
            lr = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        seqs = sample_batch(g).to(device)
        loss, _ = lm_loss(model, seqs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    if on_step is not None:
        on_step(cfg.steps, model)
    return losses


@torch.no_grad()
def evaluate(model: Transformer, seqs: torch.Tensor) -> tuple[float, float]:
    """Held-out (NLL, accuracy) on (B, T) sequences."""
    was_training = model.training
    model.eval()
    loss, acc = lm_loss(model, seqs)
    model.train(was_training)
    return loss.item(), acc.item()
