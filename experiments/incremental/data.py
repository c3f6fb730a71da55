"""Synthetic token streams: sparse Markov regimes and a stream that drifts between them.

Each *regime* is a first-order Markov chain over a shared alphabet: every state
has ``branching`` likely successors (weights from a Dirichlet) plus a small
uniform floor. Different regimes share the tokens but not the transitions, so a
model fit to regime A predicts regime B badly (the conflict that produces
catastrophic forgetting), while a model that reads its context can tell the
regimes apart after a few tokens (what replay can teach it). Everything is
generated from seeds in the experiment: no downloads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MarkovSource:
    """One regime: a row-stochastic transition matrix P (V, V)."""

    P: torch.Tensor  # (V, V), rows sum to 1

    @property
    def vocab_size(self) -> int:
        return self.P.shape[0]

    def sample(self, n_seq: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """-> (n_seq, length) int64 tokens; the first token is uniform."""
        V = self.vocab_size
        cum = self.P.cumsum(dim=1)  # (V, V)
        out = torch.empty(n_seq, length, dtype=torch.long)
        out[:, 0] = torch.randint(V, (n_seq,), generator=generator)
        u = torch.rand(length, n_seq, 1, generator=generator)  # one uniform per draw
        for t in range(1, length):
            rows = cum[out[:, t - 1]]  # (n_seq, V)
            out[:, t] = torch.searchsorted(rows, u[t]).squeeze(1).clamp_(max=V - 1)
        return out

    def stationary(self, iters: int = 500) -> torch.Tensor:
        pi = torch.full((self.vocab_size,), 1.0 / self.vocab_size, dtype=torch.float64)
        P = self.P.double()
        for _ in range(iters):
            pi = pi @ P
        return pi

    def oracle_accuracy(self) -> float:
        """Top-1 next-token accuracy of the true chain (the ceiling for any model)."""
        return float((self.stationary() * self.P.double().max(dim=1).values).sum())

    def entropy_rate(self) -> float:
        """Cross-entropy (nats/token) of the true chain: the loss floor."""
        P = self.P.double()
        h = -(P * P.clamp_min(1e-30).log()).sum(dim=1)
        return float((self.stationary() * h).sum())


def make_regimes(
    vocab_size: int = 32, n_regimes: int = 4, branching: int = 3, floor: float = 0.02, seed: int = 0
) -> list[MarkovSource]:
    """``n_regimes`` sparse random chains over ``vocab_size`` tokens."""
    g = torch.Generator().manual_seed(seed)
    regimes = []
    for _ in range(n_regimes):
        P = torch.zeros(vocab_size, vocab_size)
        for s in range(vocab_size):
            succ = torch.randperm(vocab_size, generator=g)[:branching]
            w = -torch.rand(branching, generator=g).log()  # Exp(1) draws: normalised, Dirichlet(1)
            P[s, succ] = w / w.sum()
        P = (1 - floor) * P + floor / vocab_size
        regimes.append(MarkovSource(P / P.sum(dim=1, keepdim=True)))
    return regimes


def mixture_batch(
    regimes: list[MarkovSource], n_seq: int, length: int, generator: torch.Generator
) -> torch.Tensor:
    """(n_seq, length) sequences, each from one regime picked uniformly (offline training)."""
    which = torch.randint(len(regimes), (n_seq,), generator=generator)
    out = torch.empty(n_seq, length, dtype=torch.long)
    for r, src in enumerate(regimes):
        idx = (which == r).nonzero().squeeze(1)
        if idx.numel():
            out[idx] = src.sample(idx.numel(), length, generator)
    return out


def switching_stream(
    regimes: list[MarkovSource], length: int, segment: int, generator: torch.Generator
) -> torch.Tensor:
    """One long (length,) stream that moves to the next regime every ``segment`` tokens."""
    parts, r = [], 0
    while sum(p.numel() for p in parts) < length:
        parts.append(regimes[r % len(regimes)].sample(1, segment, generator)[0])
        r += 1
    return torch.cat(parts)[:length]


SCENARIOS = ("abrupt", "gradual", "recurring")


@dataclass(frozen=True)
class DriftSchedule:
    """Which regime feeds each step of a drifting stream, in the taxonomy of Gama et al.
    2014 ("A survey on concept drift adaptation", Sec. 2.2: abrupt, gradual, recurring).

    The stream has ``len(order)`` segments of ``segment_steps`` steps; segment s draws from
    regime ``order[s]``. With ``ramp_steps > 0`` (gradual drift) the first ``ramp_steps``
    steps of every later segment mix the outgoing and the incoming regime: each fresh
    sequence comes from the incoming one with probability i / ramp_steps at step i of the
    ramp (0 at its start, 1 from step ``ramp_steps`` of the segment on), drawn from the
    stream's own generator.
    """

    order: tuple[int, ...]  # regime index of each segment
    segment_steps: int
    ramp_steps: int = 0  # 0 = abrupt switches; below segment_steps, so P(new) reaches 1

    def __post_init__(self):
        if not 0 <= self.ramp_steps < self.segment_steps:
            raise ValueError("ramp_steps must be in [0, segment_steps)")

    @property
    def n_steps(self) -> int:
        return len(self.order) * self.segment_steps

    @property
    def drift_steps(self) -> list[int]:
        """First step of every drift (the start of the ramp for gradual drift)."""
        return [s * self.segment_steps for s in range(1, len(self.order))]

    def mixing(self, step: int) -> tuple[int, int, float]:
        """(outgoing regime, incoming regime, P(a fresh sequence is from the incoming one))."""
        seg, i = divmod(step, self.segment_steps)
        if seg == 0 or i >= self.ramp_steps:
            return self.order[seg], self.order[seg], 1.0
        return self.order[seg - 1], self.order[seg], i / self.ramp_steps

    def sample(
        self, regimes: list[MarkovSource], step: int, n_seq: int, length: int, generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (n_seq, length) fresh sequences of ``step`` and an (n_seq,) bool mask of
        those from the incoming regime. Outside a ramp this is one regime's ``sample`` and
        draws nothing else, so abrupt streams are unchanged."""
        old, new, p_new = self.mixing(step)
        if p_new >= 1.0:
            return regimes[new].sample(n_seq, length, generator), torch.ones(n_seq, dtype=bool)
        from_new = torch.rand(n_seq, generator=generator) < p_new
        out = torch.empty(n_seq, length, dtype=torch.long)
        for regime, mask in ((old, ~from_new), (new, from_new)):
            idx = mask.nonzero().squeeze(1)
            if idx.numel():
                out[idx] = regimes[regime].sample(idx.numel(), length, generator)
        return out, from_new


def drift_schedule(
    scenario: str, n_segments: int, segment_steps: int, ramp_frac: float = 0.5, period: int = 2
) -> DriftSchedule:
    """``abrupt``: regimes 0, 1, ..., n_segments-1, switched at once. ``gradual``: the same
    order, each switch ramped over ``ramp_frac`` of a segment. ``recurring``: regimes
    0, 1, ..., period-1 revisited in turn (A B A B for period 2), switched at once, so a
    returning regime shows how fast a learner re-learns what it has seen."""
    if scenario == "abrupt":
        return DriftSchedule(tuple(range(n_segments)), segment_steps)
    if scenario == "gradual":
        ramp = min(segment_steps - 1, max(1, round(ramp_frac * segment_steps)))
        return DriftSchedule(tuple(range(n_segments)), segment_steps, ramp)
    if scenario == "recurring":
        return DriftSchedule(tuple(s % period for s in range(n_segments)), segment_steps)
    raise ValueError(f"unknown scenario {scenario!r}; choose from {SCENARIOS}")
