"""The three measurements of the experiment, each returning plain numbers and arrays.

``run_decode``  -- cached vs full-recompute decoding: logit agreement, per-token
                   cost vs context, speedup and fitted log-log slopes.
``run_stream``  -- a briefly trained model over a long switching stream with the
                   dense / sink+window / window-only / sliding-window-recompute
                   policies: loss, memory and per-token latency.
``run_drift``   -- prequential online learning across regimes for several methods
                   and seeds, in one drift scenario (abrupt, gradual, recurring):
                   accuracy matrices, forgetting, recovery against a common
                   reference, detection; ``tune_methods`` picks each method's
                   hyper-parameters on validation seeds with an equal budget.

The benchmark script prints these figures; the notebook records and plots them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time

import numpy as np
import torch

from experiments.incremental.data import drift_schedule, make_regimes, switching_stream
from experiments.incremental.model import Transformer, TransformerConfig, seeded_model
from experiments.incremental.online import (
    METHODS,
    OnlineConfig,
    detection_delays,
    recovery_tokens,
    reference_plateau,
    run_online,
)
from experiments.incremental.stats import paired_interval, t_interval
from experiments.incremental.streaming import (
    cached_logits,
    loglog_slope,
    recompute_logits,
    stream_eval,
    time_cached,
    time_recompute,
)
from experiments.incremental.train import TrainConfig, evaluate, train_offline


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def run_decode(
    model_cfg: TransformerConfig,
    cached_contexts=(128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
    recompute_contexts=(128, 256, 512, 1024, 2048, 4096, 8192),
    check_len: int = 2048,
    device="cpu",
    seed: int = 0,
    model=None,
) -> dict:
    """Cached vs recompute. The per-token cost at context n is one cached step over
    n keys vs one full forward over the n-token prefix (what recompute pays to
    produce the next token). Slopes are fitted on all contexts and on n >= 2048
    (where the context-dependent part of the cost has the most weight)."""
    model = (model or seeded_model(model_cfg, seed)).to(device).eval()
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(model.cfg.vocab_size, (check_len,), generator=g).to(device)
    ref = recompute_logits(model, tokens)  # (T, V)
    diff_steps = (cached_logits(model, tokens) - ref).abs().max().item()
    diff_prefill = (cached_logits(model, tokens, prefill=check_len // 2) - ref).abs().max().item()
    cc, rc = [int(n) for n in cached_contexts], [int(n) for n in recompute_contexts]
    cached = time_cached(model, cc, device=device, seed=seed)
    recompute = time_recompute(model, rc, device=device, seed=seed)
    ref_n = check_len if (check_len in cc and check_len in rc) else max(set(cc) & set(rc))

    def upper(ctx, ts):
        idx = [i for i, n in enumerate(ctx) if n >= 2048]
        return loglog_slope([ctx[i] for i in idx], ts[idx]) if len(idx) >= 2 else math.nan

    return {
        "max_abs_diff": max(diff_steps, diff_prefill),
        "cached_contexts": cc,
        "recompute_contexts": rc,
        "cached_s": cached,
        "recompute_s": recompute,
        "speedup_context": ref_n,
        "speedup": float(recompute[rc.index(ref_n)] / cached[cc.index(ref_n)]),
        "slope_cached": loglog_slope(cc, cached),
        "slope_recompute": loglog_slope(rc, recompute),
        "slope_cached_upper": upper(cc, cached),
        "slope_recompute_upper": upper(rc, recompute),
    }


def run_decode_batches(
    model_cfg: TransformerConfig,
    batches=(1, 8, 32),
    contexts=(256, 512, 1024, 2048),
    device="cpu",
    seed: int = 0,
    model=None,
) -> dict:
    """KV-cached decoding against recompute at several batch sizes: per-step latency and
    tokens per second (batch / step time) against context length, side by side."""
    from experiments.incremental.cache import decode_attention

    model = (model or seeded_model(model_cfg, seed)).to(device).eval()
    contexts = [int(n) for n in contexts]
    rows = []
    for b in batches:
        cached = time_cached(model, contexts, device=device, seed=seed, batch_size=b)
        recompute = time_recompute(model, contexts, device=device, seed=seed, batch_size=b)
        for n, c, r in zip(contexts, cached, recompute, strict=True):
            rows.append(
                dict(batch=b, context=n, cached_s=float(c), recompute_s=float(r),
                     cached_tok_s=b / float(c), recompute_tok_s=b / float(r),
                     speedup=float(r / c))
            )  # fmt: skip
    kernel, why = decode_attention(device)
    return {"rows": rows, "attention": kernel, "attention_why": why}


def pretrain(
    model_cfg: TransformerConfig,
    train_cfg: TrainConfig,
    device="cpu",
    regime_seed: int = 0,
    n_regimes: int = 4,
) -> tuple[Transformer, list, dict]:
    """Train a fresh model briefly on the regime mixture; returns (model, regimes, info)."""
    regimes = make_regimes(model_cfg.vocab_size, n_regimes, seed=regime_seed)
    model = seeded_model(model_cfg, train_cfg.seed).to(device)
    t0 = time.perf_counter()
    losses = train_offline(model, regimes, train_cfg, device)
    g = torch.Generator().manual_seed(12_345)
    held = [src.sample(32, train_cfg.seq_len, g).to(device) for src in regimes]
    evals = [evaluate(model, h) for h in held]
    info = {
        "train_s": time.perf_counter() - t0,
        "train_loss": losses,
        "heldout_nll": float(np.mean([e[0] for e in evals])),
        "heldout_acc": float(np.mean([e[1] for e in evals])),
        "oracle_nll": float(np.mean([s.entropy_rate() for s in regimes])),
        "oracle_acc": float(np.mean([s.oracle_accuracy() for s in regimes])),
    }
    return model, regimes, info


def run_stream(
    model: Transformer,
    regimes,
    n_sink: int = 4,
    window: int = 60,
    n_windows: int = 32,
    segment: int = 512,
    device="cpu",
    seed: int = 0,
    policies=("dense", "sink", "window", "recompute"),
) -> dict:
    """Loss, memory and latency of each cache policy over ``n_windows`` cache-lengths
    of a stream that changes regime every ``segment`` tokens."""
    capacity = n_sink + window
    g = torch.Generator().manual_seed(20_000 + seed)
    stream = switching_stream(regimes, n_windows * capacity, segment, g)
    model = model.to(device).eval()
    runs = {p: stream_eval(model, stream, p, n_sink, window, device) for p in policies}
    out = {"stream_len": stream.numel(), "capacity": capacity, "n_windows": n_windows, "runs": runs}
    # Latency: 10th percentile of the per-token times in the first and the last quarter of the
    # tokens after the cache is full. A low percentile is the cost of an undisturbed step: on
    # a shared CPU the median moves with other processes' load (seen: +-50% between quarters).
    quarter = max(capacity, (stream.numel() - capacity) // 4)
    first = slice(capacity, capacity + quarter)
    last = slice(stream.numel() - quarter, stream.numel())
    for p, r in runs.items():
        out[f"nll_{p}"] = float(
            r["nll"][capacity:].mean()
        )  # predictions made after evictions begin
        out[f"latency_{p}_first_ms"] = 1e3 * float(np.percentile(r["latency"][first], 10))
        out[f"latency_{p}_last_ms"] = 1e3 * float(np.percentile(r["latency"][last], 10))
        out[f"latency_{p}_growth"] = out[f"latency_{p}_last_ms"] / out[f"latency_{p}_first_ms"]
        out[f"mem_{p}_growth"] = float(r["bytes_in_use"][-1] / r["bytes_in_use"][capacity - 1])
        out[f"mem_{p}_final_kib"] = float(r["bytes_in_use"][-1] / 1024)
    if "recompute" in runs:
        for p in runs:
            out[f"nll_ratio_{p}_vs_recompute"] = out[f"nll_{p}"] / out["nll_recompute"]
    return out


def _mean_std(xs) -> tuple[float, float]:
    xs = np.asarray([x for x in xs if not math.isnan(x)], float)
    if xs.size == 0:
        return math.nan, math.nan
    return float(xs.mean()), float(xs.std(ddof=1)) if xs.size > 1 else 0.0


# Every method gets six configurations: its learning rate and, where it has one, its main knob
# (replay / A-GEM: the memory's share of the batch; EWC: lambda). Equal budgets, so no method
# wins by having been tuned more (the comparison of Sec. 5 in Mirzadeh et al. 2020 / the
# hyper-parameter caveat of Farquhar & Gal 2018).
TUNING_GRID = {
    "naive": [{"lr": lr} for lr in (5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2)],
    "replay": [{"lr": lr, "replay_frac": f} for lr in (1e-3, 3e-3) for f in (0.25, 0.5, 0.75)],
    "agem": [{"lr": lr, "replay_frac": f} for lr in (1e-3, 3e-3) for f in (0.25, 0.5, 0.75)],
    "ewc": [{"lr": lr, "ewc_lambda": lam} for lr in (1e-3, 3e-3) for lam in (1e4, 1e5, 1e6)],
}
VALIDATION_SEEDS = (100,)  # tuning seeds, disjoint from the test seeds
TEST_SEEDS = (0, 1, 2, 3, 4)

# What tune_methods(TransformerConfig(), OnlineConfig()) chose for each method: the best final
# average accuracy of its six TUNING_GRID entries on VALIDATION_SEEDS, abrupt scenario (seed
# 100: naive 0.174, replay 0.497, A-GEM 0.175, EWC 0.282; 236 s on one core).
# benchmarks/incremental.py --tune reruns the search, prints its table and checks it agrees.
TUNED_HYPERPARAMETERS = {
    "naive": {"lr": 1e-3},
    "replay": {"lr": 1e-3, "replay_frac": 0.75},
    "agem": {"lr": 1e-3, "replay_frac": 0.25},
    "ewc": {"lr": 1e-3, "ewc_lambda": 1e5},
}


def tune_methods(
    model_cfg: TransformerConfig,
    online_cfg: OnlineConfig,
    grid=None,
    seeds=VALIDATION_SEEDS,
    scenario: str = "abrupt",
    n_regimes: int = 4,
    device="cpu",
    progress=None,
) -> dict:
    """Grid search per method on validation seeds, one criterion for all: the final average
    accuracy (mean of the last row of R, averaged over ``seeds``). Returns each method's
    grid with its scores and the chosen (argmax) configuration."""
    grid = TUNING_GRID if grid is None else grid
    table, chosen = {}, {}
    for method, configs in grid.items():
        rows = []
        for overrides in configs:
            cfg = dataclasses.replace(online_cfg, **overrides)
            scores = []
            for seed in seeds:
                regimes = make_regimes(model_cfg.vocab_size, n_regimes, seed=seed)
                schedule = drift_schedule(scenario, n_regimes, cfg.segment_steps)
                r = run_online(method, regimes, model_cfg, cfg, seed, device, schedule=schedule)
                scores.append(r["avg_acc"])
            rows.append({"config": dict(overrides), "score": float(np.mean(scores))})
            if progress:
                progress(f"tune {method} {overrides}: avg_acc={rows[-1]['score']:.3f}")
        table[method] = rows
        chosen[method] = max(rows, key=lambda row: row["score"])["config"]
    return {"grid": table, "chosen": chosen, "seeds": list(seeds), "scenario": scenario,
            "criterion": "final average accuracy"}  # fmt: skip


def page_hinkley_false_alarms(
    model_cfg: TransformerConfig,
    online_cfg: OnlineConfig,
    seeds=(0, 1, 2),
    steps: int = 240,
    device="cpu",
) -> dict:
    """Page-Hinkley's alarms on a stationary stream (one regime, no drift at all) while
    a naive online learner trains on it: every alarm is false. Per 100k tokens."""
    alarms, tokens = [], 0
    for seed in seeds:
        regime = make_regimes(model_cfg.vocab_size, 1, seed=seed)
        cfg = dataclasses.replace(online_cfg, segment_steps=steps)
        r = run_online("naive", regime, model_cfg, cfg, seed=seed, device=device)
        alarms.append(len(r["detected_steps"]))
        tokens += len(r["preq_loss"]) * r["tokens_per_step"]
    return {
        "alarms_per_seed": alarms,
        "tokens": tokens,
        "false_alarms_per_100k_tokens": 1e5 * sum(alarms) / tokens,
    }


def reference_levels(
    model_cfg: TransformerConfig,
    online_cfg: OnlineConfig,
    regimes,
    seed: int,
    device="cpu",
    cache: dict | None = None,
) -> list[float]:
    """The common recovery reference of every regime: a fresh model (same seed) trained by
    the same prequential loop on that regime alone for one segment (naive on a one-regime
    stream); its plateau is the mean prequential accuracy over the segment's last 20%.
    ``cache`` (a dict the caller keeps) holds each (seed, regime, configs) run once."""
    cache = {} if cache is None else cache
    levels = []
    for regime in regimes:
        key = (
            seed,
            hashlib.sha256(regime.P.numpy().tobytes()).hexdigest(),
            dataclasses.astuple(model_cfg),
            dataclasses.astuple(online_cfg),
        )
        if key not in cache:
            r = run_online("naive", [regime], model_cfg, online_cfg, seed=seed, device=device)
            cache[key] = reference_plateau(r["preq_acc"])
        levels.append(cache[key])
    return levels


def _per_seed_mean(xs) -> float:
    """Mean of one seed's values that are not NaN (NaN when none is)."""
    xs = [x for x in xs if not math.isnan(x)]
    return float(np.mean(xs)) if xs else math.nan


def _recovery_of(run: dict, returning: bool) -> float:
    """One seed's mean recovery over the drifts into a regime seen before (``returning``)
    or into a new one."""
    pairs = zip(run["tokens_to_recover"], run["returning_drift"], strict=True)
    return _per_seed_mean([t for t, back in pairs if back == returning])


def run_drift(
    model_cfg: TransformerConfig,
    online_cfg: OnlineConfig,
    methods=METHODS,
    seeds=TEST_SEEDS,
    n_regimes: int = 4,
    device="cpu",
    progress=None,
    scenario: str = "abrupt",
    hyperparameters=None,
    references: dict | None = None,
) -> dict:
    """Every method on every seed of one drift scenario (``data.drift_schedule`` over
    ``n_regimes`` segments; each seed has its own regimes, initialisation and stream, the
    same for every method).

    ``hyperparameters`` maps a method to its ``OnlineConfig`` overrides (default
    ``TUNED_HYPERPARAMETERS``; ``{}`` runs ``online_cfg`` as given). ``references`` is a
    cache of reference plateaus the caller may share between scenarios.

    ``summary`` holds (mean, sample std) over seeds; ``intervals`` holds (mean, 95%
    t half-width, n) over seeds, and paired per-seed comparisons against naive. Per-seed
    recovery and detection delays are means over that seed's drifts; drifts never
    recovered (or never detected) are counted, not averaged."""
    hyperparameters = TUNED_HYPERPARAMETERS if hyperparameters is None else hyperparameters
    references = {} if references is None else references
    schedule = drift_schedule(scenario, n_regimes, online_cfg.segment_steps)
    naive_cfg = dataclasses.replace(online_cfg, **hyperparameters.get("naive", {}))
    runs = {m: [] for m in methods}
    for seed in seeds:
        regimes = make_regimes(model_cfg.vocab_size, max(schedule.order) + 1, seed=seed)
        levels = reference_levels(model_cfg, naive_cfg, regimes, seed, device, references)
        incoming = schedule.order[1:]  # the regime each drift moves to
        returning = [r in schedule.order[: k + 1] for k, r in enumerate(incoming)]
        for m in methods:
            cfg = dataclasses.replace(online_cfg, **hyperparameters.get(m, {}))
            t0 = time.perf_counter()
            r = run_online(m, regimes, model_cfg, cfg, seed=seed, device=device, schedule=schedule)
            r["seconds"] = time.perf_counter() - t0
            r["reference_levels"] = [levels[k] for k in incoming]
            r["tokens_to_recover"] = recovery_tokens(
                r["preq_acc_incoming"], r["drift_steps"], r["reference_levels"],
                cfg.segment_steps, r["tokens_per_step"],
            )  # fmt: skip
            r["returning_drift"] = returning
            r["detection_delay_tokens"], r["false_alarms"] = detection_delays(
                r["drift_steps"], r["detected_steps"], r["tokens_per_step"], cfg.segment_steps
            )
            runs[m].append(r)
            if progress:
                progress(
                    f"drift {scenario} {m} seed={seed}: forgetting={r['forgetting']:.3f} "
                    f"avg_acc={r['avg_acc']:.3f} ({r['seconds']:.1f}s)"
                )
    per_seed = {
        "forgetting": lambda r: r["forgetting"],
        "avg_acc": lambda r: r["avg_acc"],
        "bwt": lambda r: r["bwt"],
        "tokens_to_recover": lambda r: _per_seed_mean(r["tokens_to_recover"]),
        "tokens_to_recover_first": lambda r: _recovery_of(r, returning=False),
        "tokens_to_recover_return": lambda r: _recovery_of(r, returning=True),
        "detection_delay_tokens": lambda r: _per_seed_mean(r["detection_delay_tokens"]),
    }
    summary, intervals = {}, {m: {} for m in methods}
    for m, rs in runs.items():
        for key, value in per_seed.items():
            values = [value(r) for r in rs]
            summary[f"{m}_{key}"] = _mean_std(values)
            intervals[m][key] = t_interval(values)
        summary[f"{m}_never_recovered"] = sum(
            math.isnan(t) for r in rs for t in r["tokens_to_recover"]
        )
        summary[f"{m}_missed_drifts"] = sum(
            math.isnan(t) for r in rs for t in r["detection_delay_tokens"]
        )
        summary[f"{m}_false_alarms"] = sum(r["false_alarms"] for r in rs)
        summary[f"{m}_extra_compute_frac"] = float(
            np.mean(
                [r["extra_seq_passes"] / (len(r["preq_loss"]) * online_cfg.batch_size) for r in rs]
            )
        )
    if "naive" in runs:
        naive = runs["naive"]
        for m in methods:
            if m == "naive":
                continue
            forgetting = [r["forgetting"] for r in runs[m]]
            naive_forgetting = [r["forgetting"] for r in naive]
            ratios = [f / n for f, n in zip(forgetting, naive_forgetting, strict=True)]
            summary[f"{m}_vs_naive_forgetting_ratio"] = float(
                np.mean(forgetting) / np.mean(naive_forgetting)
            )
            summary[f"{m}_vs_naive_forgetting_ratio_per_seed"] = (min(ratios), max(ratios))
            intervals[m]["forgetting_ratio_vs_naive"] = paired_interval(
                forgetting, naive_forgetting, "ratio"
            )
            intervals[m]["avg_acc_diff_vs_naive"] = paired_interval(
                [r["avg_acc"] for r in runs[m]], [r["avg_acc"] for r in naive], "difference"
            )
    return {
        "runs": runs,
        "summary": summary,
        "intervals": intervals,
        "seeds": list(seeds),
        "methods": list(methods),
        "scenario": scenario,
        "regime_order": list(schedule.order),
        "hyperparameters": {m: dict(hyperparameters.get(m, {})) for m in methods},
    }
