"""Online learning on a drifting stream: prequential training, replay, A-GEM,
a Page-Hinkley drift detector and continual-learning metrics.

The stream is a ``data.DriftSchedule``: segments of ``segment_steps`` steps, each drawn
from one regime, switched abruptly, ramped gradually or revisiting earlier regimes
(Gama et al. 2014). At every step it delivers ``batch_size`` fresh sequences; the
learner is first *tested* on them (prequential, "test-then-train", Dawid 1984; Gama et
al. 2013) and then takes one optimizer step. Methods, all at equal compute (one
forward+backward over ``batch_size`` sequences per step) and the same stream:

* ``naive``  -- online SGD (AdamW) on the fresh sequences only.
* ``replay`` -- experience replay (Chaudhry et al. 2019, "On Tiny Episodic
  Memories"): a share ``replay_frac`` of the batch drawn from a reservoir-sampled
  memory (Vitter 1985, Algorithm R), which holds a uniform sample of everything seen,
  the rest fresh sequences.
* ``agem``   -- Averaged GEM (Chaudhry et al. 2019, arXiv:1812.00420): gradient
  on the fresh part of the batch, projected so it does not increase the loss on the
  memory part (``replay_frac`` of the batch, from the same reservoir):
  g <- g - (g.g_ref / g_ref.g_ref) g_ref when g.g_ref < 0.
* ``ewc``    -- online Elastic Weight Consolidation (Kirkpatrick et al. 2017;
  Schwarz et al. 2018, "Progress & Compress"): trains on the fresh sequences like
  ``naive`` plus a penalty (lambda/2) sum_i F_i (theta_i - theta*_i)^2. It
  consolidates (F <- gamma F + F_new, theta* <- theta) whenever the drift detector
  fires, with F_new the diagonal empirical Fisher (per-sequence squared gradients) on the last ``fisher_seqs``
  sequences seen before the alarm. Its only extra compute is that Fisher pass
  (a few batches per detected drift, reported as ``extra_seq_passes``).

The ``PageHinkley`` test (Page 1954; Gama et al. 2014 survey, Sec. 3.2) watches the
prequential loss and flags increases in its mean: the regime changes.

Metrics follow Lopez-Paz & Ranzato 2017 (GEM) and Chaudhry et al. 2018 (RWalk):
``R[i, j]`` = accuracy on held-out data of segment j's regime after training on segment i;
average accuracy = mean_j R[K-1, j]; backward transfer BWT = mean_{j<K-1}
(R[K-1, j] - R[j, j]); forgetting f_j = max_{l<K-1} R[l, j] - R[K-1, j], averaged
over j < K-1. Recovery after a drift is measured against one common reference per
regime (``recovery_tokens``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from experiments.incremental.data import DriftSchedule, MarkovSource
from experiments.incremental.model import TransformerConfig, seeded_model
from experiments.incremental.train import evaluate, lm_loss

METHODS = ("naive", "replay", "agem", "ewc")


class PageHinkley:
    """Page-Hinkley test for an increase in the mean of a stream.

    m_t = sum_{i<=t} (x_i - mean_i - delta); alarm when m_t - min_{i<=t} m_i > threshold.
    ``delta`` is the change size tolerated, ``threshold`` (lambda) trades delay for
    false alarms. The statistics restart after every alarm.
    """

    def __init__(self, delta: float = 0.05, threshold: float = 1.0, min_samples: int = 10):
        self.delta, self.threshold, self.min_samples = delta, threshold, min_samples
        self.reset()

    def reset(self) -> None:
        self.n, self.mean, self.m, self.m_min = 0, 0.0, 0.0, 0.0

    def update(self, x: float) -> bool:
        """Add one observation; True when a change is detected (then resets)."""
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.m += x - self.mean - self.delta
        self.m_min = min(self.m_min, self.m)
        if self.n >= self.min_samples and self.m - self.m_min > self.threshold:
            self.reset()
            return True
        return False


def detect(values, **kwargs) -> list[int]:
    """Indices at which a fresh PageHinkley(**kwargs) fires on ``values``."""
    ph = PageHinkley(**kwargs)
    return [i for i, x in enumerate(values) if ph.update(float(x))]


class Reservoir:
    """Reservoir sampling (Algorithm R): a uniform sample of all sequences offered."""

    def __init__(
        self, capacity: int, generator: torch.Generator, draws: torch.Generator | None = None
    ):
        """``generator`` decides which sequences are kept, ``draws`` (default: the same)
        which are sampled, so keeping and replaying need not share one random stream."""
        self.capacity, self.g, self.seen, self.items = capacity, generator, 0, []
        self.draws = draws or generator

    def add(self, seqs: torch.Tensor) -> None:
        for s in seqs:
            self.seen += 1
            if len(self.items) < self.capacity:
                self.items.append(s.clone())
            else:
                j = int(torch.randint(self.seen, (1,), generator=self.g))
                if j < self.capacity:
                    self.items[j] = s.clone()

    def sample(self, n: int) -> torch.Tensor:
        idx = torch.randint(len(self.items), (n,), generator=self.draws)
        return torch.stack([self.items[i] for i in idx])

    def __len__(self) -> int:
        return len(self.items)


def continual_metrics(R) -> dict:
    """Average accuracy, backward transfer and forgetting of an accuracy matrix R (K, K)."""
    R = np.asarray(R, dtype=float)
    K = R.shape[0]
    final = R[-1]
    bwt = float(np.mean([final[j] - R[j, j] for j in range(K - 1)])) if K > 1 else 0.0
    forget = [R[: K - 1, j].max() - final[j] for j in range(K - 1)]
    return {
        "avg_acc": float(final.mean()),
        "bwt": bwt,
        "forgetting": float(np.mean(forget)) if forget else 0.0,
        "forgetting_per_regime": [float(f) for f in forget],
    }


def reference_plateau(acc, tail: float = 0.2) -> float:
    """Mean prequential accuracy over the last ``tail`` of a run: the level a learner
    reaches on a regime when it sees nothing else (the recovery reference)."""
    acc = np.asarray(acc, float)
    return float(acc[-max(1, round(tail * acc.size)) :].mean())


def recovery_tokens(
    acc,
    drift_steps,
    reference_levels,
    segment_steps: int,
    tokens_per_step: int,
    frac: float = 0.9,
    smooth: int = 5,
) -> list[float]:
    """Tokens after each drift until the prequential accuracy reaches ``frac`` of one
    common reference level for the incoming regime.

    ``reference_levels[k]`` is the plateau of a reference learner trained on drift k's
    regime alone (``reference_plateau``), the same for every method, so methods are
    compared against one bar rather than each against its own final level. ``acc`` is the
    accuracy on the incoming regime's sequences (NaN at steps with none, as at the start
    of a gradual ramp); it is a trailing mean over ``smooth`` steps within the segment,
    skipping NaN. NaN if it never gets there before the next drift.
    """
    acc = np.asarray(acc, float)
    out = []
    for d, level in zip(drift_steps, reference_levels, strict=True):
        seg = acc[d : d + segment_steps]
        windows = [seg[max(0, i - smooth + 1) : i + 1] for i in range(len(seg))]
        rolled = np.array(
            [w[~np.isnan(w)].mean() if (~np.isnan(w)).any() else -1.0 for w in windows]
        )
        hit = np.nonzero(rolled >= frac * level)[0]
        out.append(float((hit[0] + 1) * tokens_per_step) if hit.size else math.nan)
    return out


@dataclass
class OnlineConfig:
    segment_steps: int = 60  # optimizer steps per regime
    batch_size: int = 8  # fresh sequences per step = compute per step (sequences)
    seq_len: int = 64  # tokens per sequence
    lr: float = 2e-3  # constant AdamW learning rate (run_drift: each method's tuned one)
    memory: int = 512  # reservoir capacity (sequences) for replay and A-GEM
    replay_frac: float = 0.5  # replay / A-GEM: share of the batch drawn from the memory (tuned)
    eval_seqs: int = 32  # held-out sequences per regime for the accuracy matrix
    ph_delta: float = 0.05  # Page-Hinkley tolerance (nats)
    ph_threshold: float = 1.0  # Page-Hinkley alarm threshold (nats)
    ewc_lambda: float = 1e5  # EWC penalty weight (tuned: experiment.TUNED_HYPERPARAMETERS)
    ewc_gamma: float = 1.0  # online-EWC decay of old Fisher terms
    fisher_seqs: int = 32  # recent sequences used for the Fisher estimate at an alarm


def _flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _set_flat_grad(model, flat: torch.Tensor) -> None:
    i = 0
    for p in model.parameters():
        n = p.numel()
        p.grad.copy_(flat[i : i + n].view_as(p))
        i += n


class OnlineEWC:
    """Diagonal-Fisher anchor, refreshed at each detected drift."""

    def __init__(self, model, lam: float, gamma: float):
        self.lam, self.gamma = lam, gamma
        self.fisher = [torch.zeros_like(p) for p in model.parameters()]
        self.anchor = None  # theta* (None until the first consolidation)

    def consolidate(self, model, seqs: torch.Tensor) -> int:
        """F <- gamma F + the empirical Fisher, the mean over sequences of each one's
        squared loss gradient (per sample: squaring a mini-batch mean gradient would
        shrink it by the batch size and drop the per-sample variance); theta* <- theta.
        Returns the number of sequences used."""
        new = [torch.zeros_like(p) for p in model.parameters()]
        for seq in seqs:
            model.zero_grad(set_to_none=True)
            lm_loss(model, seq[None])[0].backward()
            for f, p in zip(new, model.parameters(), strict=True):
                f += p.grad.detach() ** 2 / seqs.shape[0]
        model.zero_grad(set_to_none=True)
        self.fisher = [self.gamma * f + n for f, n in zip(self.fisher, new, strict=True)]
        self.anchor = [p.detach().clone() for p in model.parameters()]
        return seqs.shape[0]

    def penalty(self, model) -> torch.Tensor:
        if self.anchor is None:
            return torch.zeros(())
        total = sum(
            (f * (p - a) ** 2).sum()
            for f, p, a in zip(self.fisher, model.parameters(), self.anchor, strict=True)
        )
        return 0.5 * self.lam * total


def run_online(
    method: str,
    regimes: list[MarkovSource],
    model_cfg: TransformerConfig,
    cfg: OnlineConfig,
    seed: int = 0,
    device="cpu",
    schedule: DriftSchedule | None = None,
) -> dict:
    """Prequential run of one method over the stream ``schedule`` describes (default:
    regimes 0..K-1, abrupt switches); see the module docstring. ``acc_matrix[i, j]`` is the
    accuracy on segment j's regime after segment i."""
    schedule = schedule or DriftSchedule(tuple(range(len(regimes))), cfg.segment_steps)
    if schedule.segment_steps != cfg.segment_steps:
        raise ValueError("schedule.segment_steps must equal cfg.segment_steps")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    # One generator per source of randomness, so every method sees the same fresh stream
    # whatever it draws from its memory (the comparison is paired); none is global.
    stream_g = torch.Generator().manual_seed(seed)
    keep_g = torch.Generator().manual_seed(1_000_000 + seed)  # reservoir replacements
    replay_g = torch.Generator().manual_seed(2_000_000 + seed)  # replay / A-GEM draws
    model = seeded_model(model_cfg, seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    memory = Reservoir(cfg.memory, keep_g, replay_g)
    stream_digest = hashlib.sha256()
    eval_g = torch.Generator().manual_seed(10_000 + seed)
    held_out = [src.sample(cfg.eval_seqs, cfg.seq_len, eval_g).to(device) for src in regimes]
    K, B = len(schedule.order), cfg.batch_size
    n_mem = min(B - 1, max(1, round(B * cfg.replay_frac)))  # replayed sequences per step
    n_fresh = B - n_mem  # fresh sequences trained on beside them (replay, A-GEM)
    R = np.zeros((K, K))
    preq_loss, preq_acc, preq_acc_incoming = [], [], []
    ph = PageHinkley(cfg.ph_delta, cfg.ph_threshold)
    detections = []
    ewc = OnlineEWC(model, cfg.ewc_lambda, cfg.ewc_gamma) if method == "ewc" else None
    recent: list[torch.Tensor] = []  # last fisher_seqs sequences (FIFO), for EWC
    extra_seq_passes = 0
    for seg in range(K):
        for i in range(cfg.segment_steps):
            step = seg * cfg.segment_steps + i
            fresh, incoming = schedule.sample(regimes, step, B, cfg.seq_len, stream_g)
            stream_digest.update(fresh.numpy().tobytes())
            fresh = fresh.to(device)
            # test ...
            loss, acc = evaluate(model, fresh)
            preq_loss.append(loss)
            preq_acc.append(acc)
            # accuracy on the incoming regime's sequences alone: during a gradual ramp the
            # batch is mostly the outgoing regime, whose accuracy says nothing of recovery
            if incoming.all():
                preq_acc_incoming.append(acc)
            elif incoming.any():
                preq_acc_incoming.append(evaluate(model, fresh[incoming.to(device)])[1])
            else:
                preq_acc_incoming.append(math.nan)
            if ph.update(loss):
                detections.append(len(preq_loss) - 1)
                if ewc is not None and recent:  # the alarm batch itself is not used
                    extra_seq_passes += ewc.consolidate(model, torch.stack(recent).to(device))
            # ... then train
            model.train()
            opt.zero_grad(set_to_none=True)
            if method == "naive" or len(memory) == 0:
                lm_loss(model, fresh)[0].backward()
            elif method == "ewc":
                (lm_loss(model, fresh)[0] + ewc.penalty(model)).backward()
            elif method == "replay":
                batch = torch.cat([fresh[:n_fresh], memory.sample(n_mem).to(device)])
                lm_loss(model, batch)[0].backward()
            else:  # agem
                lm_loss(model, memory.sample(n_mem).to(device))[0].backward()
                g_ref = _flat_grad(model)
                opt.zero_grad(set_to_none=False)
                lm_loss(model, fresh[:n_fresh])[0].backward()
                grad = _flat_grad(model)
                dot = grad @ g_ref
                if dot < 0:
                    _set_flat_grad(model, grad - dot / (g_ref @ g_ref) * g_ref)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            memory.add(fresh.cpu())
            recent = (recent + list(fresh.cpu()))[-cfg.fisher_seqs :]
        acc_on = {r: evaluate(model, held_out[r])[1] for r in set(schedule.order)}
        R[seg] = [acc_on[r] for r in schedule.order]
    tokens_per_step = B * cfg.seq_len
    drifts = schedule.drift_steps
    return {
        "method": method,
        "seed": seed,
        "acc_matrix": R,
        **continual_metrics(R),
        "preq_loss": np.array(preq_loss),
        "preq_acc": np.array(preq_acc),
        "preq_acc_incoming": np.array(preq_acc_incoming),  # NaN where none came from it
        "drift_steps": drifts,
        "detected_steps": detections,
        "tokens_per_step": tokens_per_step,
        "extra_seq_passes": extra_seq_passes,
        "stream_digest": stream_digest.hexdigest(),  # equal across methods for one seed
        "regime_order": list(schedule.order),
    }


def detection_delays(
    drift_steps, detected_steps, tokens_per_step: int, horizon: int
) -> tuple[list, int]:
    """Delay (tokens) from each true drift to the first alarm within ``horizon`` steps
    (NaN if missed), and the number of alarms not matched to any drift."""
    delays, used = [], set()
    for d in drift_steps:
        hits = [s for s in detected_steps if d <= s < d + horizon]
        delays.append(float((hits[0] - d + 1) * tokens_per_step) if hits else math.nan)
        used.update(hits[:1])
    false_alarms = sum(1 for s in detected_steps if s not in used)
    return delays, false_alarms
