"""KV caches for incremental decoding: a preallocated full cache and a bounded
attention-sink + sliding-window cache (StreamingLLM).

* ``KVCache`` -- the standard cache. Buffers of shape (n_layer, B, nh, max_len, hs)
  are allocated once; step t writes one slot and attends over slots 0..t, so a
  token costs O(t) instead of the O(t^2) of re-running the whole prefix
  (full recompute, ``Transformer.forward`` without a cache). Keys are stored
  already rotated: their positions never change.
* ``SinkWindowCache`` -- StreamingLLM (Xiao et al. 2023, "Efficient Streaming
  Language Models with Attention Sinks", arXiv:2309.17453). The first ``n_sink``
  tokens stay forever ("attention sinks"); the rest is a ring buffer holding the
  last ``window`` tokens. Positions are assigned *inside the cache*: the sinks are
  0..n_sink-1 and the window continues from n_sink in order of age, so the
  positions the model sees never exceed the cache size, however long the stream.
  Keys are therefore stored unrotated and rotated at read time. With
  ``n_sink=0`` it is the window-only ablation.
* ``SinkWindowCacheReference`` -- the same policy written the slow, obvious way
  (append with ``torch.cat``, evict the oldest window token by slicing); the test
  of the ring buffer's wrap-around compares against it.

Every cache exposes ``attend(layer, q, k, v)`` (called by each attention layer with
unrotated (B, nh, T, hs) tensors), ``advance(T)`` (called once per forward) and
``nbytes`` / ``bytes_in_use`` for the memory figures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from experiments.incremental.model import Transformer, apply_rotary


def decode_attention(device) -> tuple[str, str]:
    """Which attention a ``KVCache`` step runs on ``device``, and why."""
    if torch.device(device).type == "cuda":
        return (
            "experiments.attention (Triton)",
            "its kernels take Nq < Nk queries against the cache, causal aligned bottom-right",
        )
    return (
        "SDPA",
        "on a CPU experiments.attention runs its blockwise PyTorch path, a Python loop over "
        "key tiles that is slower than SDPA's fused kernel for a few queries",
    )


class KVCache:
    """Preallocated full KV cache; keys stored rotated at their absolute position.

    A step attends with ``decode_attention(device)``: on CUDA the package's fused
    kernels (T new queries against the L + T cached keys), on a CPU PyTorch's SDPA.
    """

    def __init__(self, model: Transformer, batch_size: int, max_len: int, device=None, dtype=None):
        cfg = model.cfg
        p = next(model.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        shape = (cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, max_len, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, max_len, hs)
        self.rotary, self.max_len, self.length = model.rotary, max_len, 0
        self._rope = None  # (cos, sin) of the current step, shared by all layers

    def attend(self, layer, q, k, v):
        T, L = q.shape[2], self.length
        if L + T > self.max_len:
            raise ValueError(f"KVCache full: {L} + {T} > max_len={self.max_len}")
        if layer == 0:
            self._rope = self.rotary(torch.arange(L, L + T, device=q.device))  # (T, hs/2) x2
        cos, sin = self._rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        self.k[layer, :, :, L : L + T] = k
        self.v[layer, :, :, L : L + T] = v
        keys = self.k[layer, :, :, : L + T]  # (B, nh, L+T, hs)
        vals = self.v[layer, :, :, : L + T]  # (B, nh, L+T, hs)
        if q.is_cuda:  # the fused kernels take T queries against L + T keys, causal bottom-right
            from experiments.attention import attention

            return attention(q, keys, vals, causal=True)
        mask = None
        if T > 1:  # new token i (at position L+i) sees cached slots 0..L+i
            mask = torch.ones(T, L + T, dtype=torch.bool, device=q.device).tril(diagonal=L)
        return F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask)

    def advance(self, T: int) -> None:
        self.length += T

    @property
    def nbytes(self) -> int:
        """Bytes allocated (fixed at construction)."""
        return self.k.nbytes + self.v.nbytes

    @property
    def bytes_in_use(self) -> int:
        """Bytes holding live tokens: grows linearly with the stream."""
        return self.nbytes * self.length // self.max_len


class SinkWindowCache:
    """Attention sinks + ring-buffer sliding window, positions assigned in the cache.

    Slot layout: slots 0..n_sink-1 hold the first n_sink tokens of the stream;
    token t >= n_sink lives in slot n_sink + (t - n_sink) % window. One token per
    step (streaming decode).
    """

    def __init__(
        self,
        model: Transformer,
        batch_size: int,
        n_sink: int = 4,
        window: int = 60,
        device=None,
        dtype=None,
    ):
        cfg = model.cfg
        p = next(model.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        assert window >= 1 and n_sink >= 0
        self.n_sink, self.window, self.capacity = n_sink, window, n_sink + window
        shape = (cfg.n_layer, batch_size, cfg.n_head, self.capacity, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # unrotated keys
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.rotary, self.seen = model.rotary, 0  # tokens seen so far in the stream
        self._step = None  # (slot, size, (cos_k, sin_k), (cos_q, sin_q)) of the current step

    def slot_positions(self, t: int) -> tuple[int, torch.Tensor]:
        """For the step that writes token t: (its slot, in-cache positions of slots 0..size-1)."""
        S, W = self.n_sink, self.window
        slot = t if t < S else S + (t - S) % W
        size = min(t + 1, self.capacity)
        pos = torch.arange(size, device=self.k.device)
        if t >= self.capacity:  # wrapped: the oldest window token sits right after `slot`
            oldest = t - W + 1  # first token still in the window
            ring = torch.arange(W, device=self.k.device)
            pos[S:] = S + (ring - (oldest - S)) % W  # age rank inside the window
        return slot, pos

    def attend(self, layer, q, k, v):
        assert q.shape[2] == 1, "SinkWindowCache decodes one token per step"
        if layer == 0:
            slot, pos = self.slot_positions(self.seen)
            size = pos.numel()
            q_pos = pos[slot : slot + 1]  # the new token: position size-1
            self._step = (slot, size, self.rotary(pos), self.rotary(q_pos))
        slot, size, (cos_k, sin_k), (cos_q, sin_q) = self._step
        self.k[layer, :, :, slot : slot + 1] = k  # overwrite the evicted token (if any)
        self.v[layer, :, :, slot : slot + 1] = v
        keys = apply_rotary(self.k[layer, :, :, :size], cos_k, sin_k)  # (B, nh, size, hs)
        q = apply_rotary(q, cos_q, sin_q)  # (B, nh, 1, hs)
        # Every live slot is in the past (or is the token itself): no mask needed.
        return F.scaled_dot_product_attention(q, keys, self.v[layer, :, :, :size])

    def advance(self, T: int) -> None:
        self.seen += T

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @property
    def bytes_in_use(self) -> int:
        return self.nbytes * min(self.seen, self.capacity) // self.capacity


class SinkWindowCacheReference:
    """Readable reference for SinkWindowCache: append, then drop the oldest window token."""

    def __init__(self, model: Transformer, n_sink: int = 4, window: int = 60):
        self.n_sink, self.capacity, self.rotary = n_sink, n_sink + window, model.rotary
        self.k = [None] * model.cfg.n_layer  # per layer: (B, nh, size, hs), unrotated, oldest first
        self.v = [None] * model.cfg.n_layer

    def attend(self, layer, q, k, v):
        assert q.shape[2] == 1
        ks = k if self.k[layer] is None else torch.cat([self.k[layer], k], dim=2)
        vs = v if self.v[layer] is None else torch.cat([self.v[layer], v], dim=2)
        if ks.shape[2] > self.capacity:  # evict the oldest non-sink token
            S = self.n_sink
            ks = torch.cat([ks[:, :, :S], ks[:, :, S + 1 :]], dim=2)
            vs = torch.cat([vs[:, :, :S], vs[:, :, S + 1 :]], dim=2)
        self.k[layer], self.v[layer] = ks, vs
        size = ks.shape[2]
        cos, sin = self.rotary(torch.arange(size, device=q.device))  # positions = age order
        q = apply_rotary(q, cos[-1:], sin[-1:])
        return F.scaled_dot_product_attention(q, apply_rotary(ks, cos, sin), vs)

    def advance(self, T: int) -> None:
        pass
