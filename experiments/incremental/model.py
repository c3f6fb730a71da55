"""A small decoder-only Transformer with rotary positions, written to be cached.

Architecture: GPT-2-style pre-LayerNorm blocks (Radford et al. 2019; nanoGPT), no
learned position table; instead rotary position embeddings (RoPE, Su et al. 2021,
"RoFormer", arXiv:2104.09864) rotate queries and keys, so attention scores depend
only on the *difference* of the two positions. That property is what lets a
streaming cache re-number its positions (see ``cache.py``).

The attention layer has two paths:

* reference: no cache, the whole sequence at positions ``0..T-1`` with a causal
  mask (``Transformer.forward(idx)``). Full recompute uses this.
* fast: a cache object owns the keys and values of past tokens and assigns the
  positions (``Transformer.forward(idx, cache=cache)``); only the new tokens are
  projected. ``cache.py`` holds the caches; tests compare both paths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TransformerConfig:
    vocab_size: int = 32  # synthetic alphabet size (see data.py)
    n_layer: int = 2  # 2-4 blocks for this experiment
    n_head: int = 4  # head size = d_model // n_head
    d_model: int = 128  # residual width, 128-256
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * d_model
    rope_base: float = 10000.0  # RoPE frequency base (theta)
    dropout: float = 0.0  # kept at 0: the cache tests compare exact paths

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class Rotary(nn.Module):
    """Rotary position tables, computed on demand for any integer positions."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        assert head_dim % 2 == 0, "rotary needs an even head size"
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (hs/2,)

    def forward(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pos: (N,) integer positions -> cos, sin of shape (N, hs/2)."""
        angles = pos.to(self.inv_freq.dtype)[:, None] * self.inv_freq[None, :]  # (N, hs/2)
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + hs/2]) by the given angles ("rotate half" layout).

    x: (B, nh, T, hs); cos, sin: (T, hs/2), broadcast over batch and heads.
    """
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        assert cfg.d_model % cfg.n_head == 0
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, rotary: Rotary, layer: int, cache=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if cache is None:
            # Reference path: positions 0..T-1, causal mask over the whole sequence.
            cos, sin = rotary(torch.arange(T, device=x.device))  # (T, hs/2)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        else:
            # Fast path: the cache stores k, v, assigns positions and attends.
            y = cache.attend(layer, q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)

    @torch.no_grad()
    def attention_probs(self, x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        """The reference path's attention weights, softmax written out: (B, nh, T, T).

        For analysis (where each query puts its attention mass), not for decoding.
        """
        B, T, C = x.shape
        q, k, _ = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        cos, sin = rotary(torch.arange(T, device=x.device))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, nh, T, T)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x):
        return self.out(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn, self.mlp = CausalSelfAttention(cfg), MLP(cfg)

    def forward(self, x, rotary, layer, cache=None):
        x = x + self.attn(self.ln1(x), rotary, layer, cache)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """Decoder-only LM: token embedding -> n_layer blocks -> LayerNorm -> tied head."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying (Press & Wolf 2017)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2 scaled init of residual projections
            if name.endswith(("proj.weight", "out.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, cache=None) -> torch.Tensor:
        """idx: (B, T) token ids -> logits (B, T, vocab).

        Without a cache the tokens sit at positions 0..T-1 (full recompute). With a
        cache they continue the cached stream and the cache advances by T.
        """
        x = self.tok_emb(idx)  # (B, T, C)
        for layer, block in enumerate(self.blocks):
            x = block(x, self.rotary, layer, cache)
        if cache is not None:
            cache.advance(idx.shape[1])
        return self.head(self.ln_f(x))  # (B, T, vocab)


def seeded_model(cfg: TransformerConfig, seed: int) -> Transformer:
    """A Transformer initialised from ``seed`` without touching the caller's global RNG
    (the same weights as ``torch.manual_seed(seed); Transformer(cfg)``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Transformer(cfg)
