"""Acceptance figures for the incremental Transformer (experiments/incremental).

    python benchmarks/incremental.py            # ~13 min on one CPU core, ~10 of them drift
    python benchmarks/incremental.py --quick    # ~2 min smoke run (figures not meaningful)
    python benchmarks/incremental.py --skip decode batches stream memory sinks [--tune]
                                                # section 3 alone (--tune: 857 s)

Runs with torch.set_num_threads(1) by default (--threads to change): per-token
timings are less disturbed by other processes on a shared machine, and on a busy
2-core box two threads made training steps up to 10x slower, not faster. Step
times are the minimum over repeats (the timeit convention) for the decode sweep
and the 10th percentile over a quarter of the stream for the streaming policies. Every ratio
is measured side by side in this one run. Targets come from the backlog item:
cached logits within 1e-4 of recompute and >= 10x faster per token at 2,048
tokens; sink+window loss within 5% of sliding-window recompute over 10+ windows
with flat memory and latency; replay forgetting <= 0.5x naive at equal compute
over >= 3 seeds (abrupt drift; section 3 also runs gradual and recurring drift, with
95% t intervals over 5 test seeds and every method tuned with the same budget).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from experiments.incremental import (
    METHODS,
    SCENARIOS,
    TUNED_HYPERPARAMETERS,
    TUNING_GRID,
    VALIDATION_SEEDS,
    OnlineConfig,
    TrainConfig,
    TransformerConfig,
    page_hinkley_false_alarms,
    pretrain,
    resolve_device,
    run_decode,
    run_decode_batches,
    run_drift,
    run_stream,
    tune_methods,
)
from experiments.incremental.memory import measure_stream_memory
from experiments.incremental.sinks import (
    SINK_THRESHOLD,
    SinkExperimentConfig,
    quick_config,
    run_sink_experiment,
)

SECTIONS = ("decode", "batches", "stream", "memory", "sinks", "drift")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt_ms(x: float) -> str:
    return f"{x:.3f} ms"


def ci(interval, digits: int = 3) -> str:
    """'mean ± 95% half-width' of a (mean, half-width, n) interval."""
    m, h, _ = interval
    return f"{m:.{digits}f} ± {h:.{digits}f}"


def fmt_config(config: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in config.items())


def drift_section(model_cfg, device, seeds, methods, quick: bool, tune: bool) -> None:
    """Section 3: every method on the abrupt, gradual and recurring scenarios."""
    t0 = time.perf_counter()
    ocfg = OnlineConfig(segment_steps=25 if quick else 60)
    print(
        f"\n## 3. Online learning under drift ({len(seeds)} test seeds x {len(methods)} methods x "
        f"{len(SCENARIOS)} scenarios, 4 segments x {ocfg.segment_steps} steps x "
        f"{ocfg.batch_size} seqs x {ocfg.seq_len} tokens; equal compute: {ocfg.batch_size} "
        f"sequences per forward+backward)"
    )
    print(
        "hyper-parameters in use (TUNED_HYPERPARAMETERS: the best final average accuracy of "
        f"6 configurations per method on validation seed(s) {list(VALIDATION_SEEDS)}, abrupt "
        "scenario): " + "; ".join(f"{m} {fmt_config(TUNED_HYPERPARAMETERS[m])}" for m in methods)
    )
    if tune:
        tuned = tune_methods(
            model_cfg, ocfg, grid={m: TUNING_GRID[m] for m in methods}, device=device,
            progress=lambda m: print("  " + m, flush=True),
        )  # fmt: skip
        print(
            f"tuning on validation seed(s) {tuned['seeds']}, {tuned['scenario']} scenario, "
            f"criterion {tuned['criterion']} (* = chosen):"
        )
        print(f"{'method':>8}  {'configuration':<28} {'avg acc':>8}")
        for m, rows in tuned["grid"].items():
            for row in rows:
                star = "*" if row["config"] == tuned["chosen"][m] else " "
                print(f"{m:>8}  {fmt_config(row['config']):<28} {row['score']:>8.3f} {star}")
        same = all(tuned["chosen"][m] == TUNED_HYPERPARAMETERS[m] for m in methods)
        print(f"chosen configurations equal TUNED_HYPERPARAMETERS: {'yes' if same else 'NO'}")
    references: dict = {}  # reference plateaus, shared by the three scenarios
    n_drifts = 3 * len(seeds)
    for scenario in SCENARIOS:
        dr = run_drift(
            model_cfg, ocfg, methods=methods, seeds=seeds, device=device,
            progress=lambda m: print("  " + m, flush=True), scenario=scenario,
            references=references,
        )  # fmt: skip
        sm, iv = dr["summary"], dr["intervals"]
        order = " ".join("ABCD"[r] for r in dr["regime_order"])
        what = {
            "abrupt": "each switch at once",
            "gradual": f"each switch ramped over {ocfg.segment_steps // 2} steps, P(new) 0 -> 1",
            "recurring": "regimes revisited, each switch at once",
        }[scenario]
        print(f"\n### {scenario}: regimes {order} ({what})")
        recurring = scenario == "recurring"
        rec_head = (
            f"{'recover, new':>16} {'recover, return':>16}"
            if recurring
            else f"{'recover tokens':>16}"
        )
        print(
            f"{'method':>8} {'forgetting':>15} {'avg acc':>15} {'BWT':>16} {rec_head} {'never':>5} "
            f"{'PH delay tokens':>16} {'missed':>6} {'false':>5} {'extra':>6}"
        )
        for m in methods:
            x = iv[m]
            rec = (
                f"{ci(x['tokens_to_recover_first'], 0):>16} {ci(x['tokens_to_recover_return'], 0):>16}"
                if recurring
                else f"{ci(x['tokens_to_recover'], 0):>16}"
            )
            print(
                f"{m:>8} {ci(x['forgetting']):>15} {ci(x['avg_acc']):>15} {ci(x['bwt']):>16} "
                f"{rec} {sm[f'{m}_never_recovered']:>5} {ci(x['detection_delay_tokens'], 0):>16} "
                f"{sm[f'{m}_missed_drifts']:>3}/{n_drifts} {sm[f'{m}_false_alarms']:>5} "
                f"{100 * sm[f'{m}_extra_compute_frac']:>5.1f}%"
            )
        levels = [lv for r in dr["runs"][methods[0]] for lv in r["reference_levels"]]
        print(
            f"(mean ± 95% t half-width over {len(seeds)} seeds; recovery: tokens after a drift "
            "until the 5-step mean prequential accuracy reaches 0.9 x the plateau of a reference "
            "learner trained on the incoming regime alone (fresh init, same seed, naive, last 20% "
            f"of {ocfg.segment_steps} steps; plateaus {min(levels):.3f}..{max(levels):.3f}), "
            f"per seed averaged over its drifts; never: drifts of {n_drifts} not recovered within "
            "the segment; PH delay from the drift's first step (the start of the ramp for gradual "
            "drift), missed: no alarm within the segment)"
        )
        for m in methods:
            if m == "naive" or "naive" not in methods:
                continue
            line = (
                f"{m} vs naive, paired per seed: forgetting ratio "
                f"{ci(iv[m]['forgetting_ratio_vs_naive'])}, avg acc difference "
                f"{ci(iv[m]['avg_acc_diff_vs_naive'])}"
            )
            if m == "replay" and scenario == "abrupt":
                r = sm["replay_vs_naive_forgetting_ratio"]
                lo, hi = sm["replay_vs_naive_forgetting_ratio_per_seed"]
                ok = r <= 0.5 and len(seeds) >= 3
                line += (
                    f"; ratio of mean forgetting {r:.3f} (per seed {lo:.3f}..{hi:.3f})"
                    f"  (target <= 0.5: {verdict(ok)})"
                )
            print(line)
        if scenario == "abrupt":
            abrupt = dr
    fa = page_hinkley_false_alarms(
        model_cfg, ocfg, seeds=seeds, steps=60 if quick else 240, device=device
    )
    print(
        f"\nPage-Hinkley on a stationary stream (one regime, naive learner, {fa['tokens']:,} tokens "
        f"over {len(seeds)} seeds): {sum(fa['alarms_per_seed'])} alarms, all false = "
        f"{fa['false_alarms_per_100k_tokens']:.2f} per 100k tokens (per seed {fa['alarms_per_seed']})"
    )
    for m in [m for m in ("replay", "naive") if m in methods]:
        print(
            f"accuracy matrix R[i, j] (after segment i, on regime j), {m}, abrupt, seed {seeds[0]}:"
        )
        for row in abrupt["runs"][m][0]["acc_matrix"]:
            print("   " + " ".join(f"{x:.3f}" for x in row))
    print(f"drift section wall time {time.perf_counter() - t0:.0f} s")


def print_sink_experiment(sk: dict) -> None:
    cfg, T = sk["config"], sk["config"].seq_len
    print(
        f"\n## 2c. Attention sinks on real text (StreamingLLM): byte-level models, "
        f"n_layer={cfg.n_layer} d_model={cfg.d_model}, trained {cfg.train_steps} steps x "
        f"{cfg.batch_size} x {T} tokens of the standard library's source; {cfg.n_streams} "
        f"held-out streams of {sk['stream_len']} tokens ({cfg.stream_multiple}x the training "
        f"context), every bounded policy keeps {cfg.cache} tokens; dense keeps all "
        f"{sk['stream_len']} (its stated cap)"
    )
    for variant, m in sk["models"].items():
        name = "plain" if variant == "plain" else "learnable sink token (paper's Sec. 3.3)"
        print(
            f"\n{name}: trained in {m['train_s']:.0f} s, held-out NLL {m['heldout_nll']:.3f} "
            f"nats/byte (first 50 steps {np.mean(m['train_loss'][:50]):.3f}, "
            f"last 50 {np.mean(m['train_loss'][-50:]):.3f})"
        )
        for key, label in (("mass_first", "token 0"), ("mass_first4", "tokens 0-3")):
            mass = m[key]
            layers = " ".join(f"{x:.3f}" for x in mass["per_layer"])
            top = " ".join(f"{x:.3f}" for x in mass["per_head"].max(axis=1))
            print(
                f"  attention mass on {label:>10} per layer: {layers}  (most-attending head per "
                f"layer: {top}; uniform attention: {mass['uniform']:.3f}; heads above "
                f"{SINK_THRESHOLD}: {100 * mass['sink_rate']:.0f}%)"
            )
        history = " ".join(
            f"{step}:{'/'.join(f'{x:.3f}' for x in mass)}" for step, mass in m["mass_history"]
        )
        print(f"  mass on token 0 per layer during training (step:layers): {history}")
        recent = " ".join(f"{x:.3f}" for x in m["mass_first"]["recent_per_layer"])
        print(f"  attention mass on the 8 most recent tokens (itself included) per layer: {recent}")
        ks = sorted(m["nll_at"]["recompute"])
        head = " ".join(f"{f'NLL @{k}x':>9} {'ratio':>6}" for k in ks)
        print(f"  {'policy':>10} {head}")
        for label, at in m["nll_at"].items():
            ratio = m["ratio_vs_recompute"][label]
            cells = " ".join(f"{at[k]:>9.3f} {ratio[k]:>5.3f}x" for k in ks)
            print(f"  {label:>10} {cells}")
    print(
        "  (NLL @kx: mean over the streams of the per-token NLL on the training context of "
        "text ending at k x the training context; ratio: / sliding-window recompute)"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~30 s smoke run with small sizes")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1; 0 = torch default)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument(
        "--steps", type=int, default=None, help="pretraining steps (default 150, quick 60)"
    )
    ap.add_argument(
        "--seeds", type=int, default=None, help="drift test seeds 0..n-1 (default 5, quick 2)"
    )
    ap.add_argument(
        "--sink-steps",
        type=int,
        default=None,
        help="training steps of each real-text model in the sink experiment (default 1500)",
    )
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=SECTIONS,
        help="sections to leave out (e.g. --skip decode batches to rerun the rest)",
    )
    ap.add_argument(
        "--tune",
        action="store_true",
        help="rerun the drift hyper-parameter search on the validation seed and print it",
    )
    args = ap.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    q = args.quick
    model_cfg = TransformerConfig(n_layer=args.n_layer, d_model=args.d_model)
    steps = args.steps or (60 if q else 150)
    seeds = tuple(range(args.seeds or (2 if q else 5)))
    methods = tuple(args.methods.split(","))
    t_start = time.perf_counter()
    print(
        f"# incremental Transformer benchmark  device={device} threads={torch.get_num_threads()} "
        f"quick={q}  model: n_layer={model_cfg.n_layer} d_model={model_cfg.d_model} "
        f"n_head={model_cfg.n_head} vocab={model_cfg.vocab_size}"
    )

    # 1. Cached vs recompute ------------------------------------------------------------
    if "decode" not in args.skip:
        d = run_decode(
            model_cfg,
            cached_contexts=(128, 256, 512, 1024, 2048, 4096)
            if q
            else (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
            recompute_contexts=(128, 256, 512, 1024, 2048)
            if q
            else (128, 256, 512, 1024, 2048, 4096, 8192),
            check_len=2048,
            device=device,
        )
        print("\n## 1. KV cache vs full recompute (per generated token, random-init weights)")
        print(
            f"max |logits_cached - logits_recompute| over 2048 tokens: {d['max_abs_diff']:.2e}"
            f"  (target <= 1e-4: {verdict(d['max_abs_diff'] <= 1e-4)})"
        )
        print(f"{'context':>8} {'cached':>12} {'recompute':>12} {'ratio':>8}")
        rc = dict(zip(d["recompute_contexts"], d["recompute_s"], strict=True))
        for n, c in zip(d["cached_contexts"], d["cached_s"], strict=True):
            r = rc.get(n)
            print(
                f"{n:>8} {fmt_ms(1e3 * c):>12} "
                + (f"{fmt_ms(1e3 * r):>12} {r / c:>7.1f}x" if r else f"{'-':>12}")
            )
        print(
            f"speedup per token at {d['speedup_context']} tokens: {d['speedup']:.1f}x"
            f"  (target >= 10x: {verdict(d['speedup'] >= 10)})"
        )
        print(
            f"log-log slope of per-token cost vs context, all contexts: cached {d['slope_cached']:.2f}, "
            f"recompute {d['slope_recompute']:.2f}"
        )
        print(
            f"log-log slope for contexts >= 2048:              cached {d['slope_cached_upper']:.2f}, "
            f"recompute {d['slope_recompute_upper']:.2f}   (expected ~1 and ~2)"
        )

    # 1b. Batched decoding ----------------------------------------------------------------
    if "batches" not in args.skip:
        contexts = (256, 1024) if q else (256, 512, 1024, 2048)
        db = run_decode_batches(model_cfg, batches=(1, 8, 32), contexts=contexts, device=device)
        print(
            f"\n## 1b. Batched decoding, KV cache vs recompute (per step: every sequence of the "
            f"batch gets one token; attention: {db['attention']}, {db['attention_why']})"
        )
        print(
            f"{'batch':>5} {'context':>8} {'cached/step':>12} {'recompute/step':>15} "
            f"{'cached tok/s':>13} {'recompute tok/s':>16} {'ratio':>7}"
        )
        for r in db["rows"]:
            print(
                f"{r['batch']:>5} {r['context']:>8} {fmt_ms(1e3 * r['cached_s']):>12} "
                f"{fmt_ms(1e3 * r['recompute_s']):>15} {r['cached_tok_s']:>13.0f} "
                f"{r['recompute_tok_s']:>16.1f} {r['speedup']:>6.1f}x"
            )

    # 2. Sink + window streaming ---------------------------------------------------------
    if "stream" not in args.skip:
        train_cfg = TrainConfig(steps=steps, seq_len=64 if q else 128)
        model, regimes, info = pretrain(model_cfg, train_cfg, device=device, regime_seed=0)
        n_sink, window = (4, 28) if q else (4, 60)
        n_windows = 11 if q else 32
        s = run_stream(
            model,
            regimes,
            n_sink=n_sink,
            window=window,
            n_windows=n_windows,
            segment=256 if q else 512,
            device=device,
        )
        print(
            f"\n## 2. Bounded streaming cache (model pretrained {steps} steps in {info['train_s']:.0f} s on "
            f"4 Markov regimes, seq_len {train_cfg.seq_len}: held-out NLL {info['heldout_nll']:.3f} "
            f"vs oracle {info['oracle_nll']:.3f}, acc {info['heldout_acc']:.3f} vs oracle {info['oracle_acc']:.3f})"
        )
        print(
            f"stream: {s['stream_len']} tokens = {n_windows} cache lengths of {s['capacity']} "
            f"({n_sink} sinks + {window} window), regime changes every {256 if q else 512} tokens"
        )
        print(
            f"{'policy':>10} {'NLL':>7} {'vs recompute':>13} {'mem end':>10} {'mem growth':>11} "
            f"{'p10 first':>10} {'p10 last':>10} {'p10 growth':>10}"
        )
        for p in ("sink", "window", "recompute", "dense"):
            print(
                f"{p:>10} {s[f'nll_{p}']:>7.3f} {s[f'nll_ratio_{p}_vs_recompute']:>12.3f}x "
                f"{s[f'mem_{p}_final_kib']:>7.0f} KiB {s[f'mem_{p}_growth']:>10.2f}x "
                f"{fmt_ms(s[f'latency_{p}_first_ms']):>10} {fmt_ms(s[f'latency_{p}_last_ms']):>10} "
                f"{s[f'latency_{p}_growth']:>9.2f}x"
            )
        ratio = s["nll_ratio_sink_vs_recompute"]
        print(
            f"sink+window NLL / sliding-window recompute NLL: {ratio:.3f}  (target within 5%: "
            f"{verdict(abs(ratio - 1) <= 0.05)}); memory growth {s['mem_sink_growth']:.2f}x, latency "
            f"last/first quarter {s['latency_sink_growth']:.2f}x  (flat: "
            f"{verdict(s['mem_sink_growth'] == 1.0 and s['latency_sink_growth'] < 1.25)})"
        )
        print(
            f"window-only ablation (same memory, no sinks): NLL ratio vs recompute "
            f"{s['nll_ratio_window_vs_recompute']:.3f}, vs sink {s['nll_window'] / s['nll_sink']:.3f}"
        )
        print(
            f"dense full cache beyond the {train_cfg.seq_len}-token training length: NLL ratio vs recompute "
            f"{s['nll_ratio_dense_vs_recompute']:.3f}, memory grows {s['mem_dense_growth']:.0f}x"
        )
        print(
            f"sink step vs recompute step latency (last quarter): "
            f"{s['latency_recompute_last_ms'] / s['latency_sink_last_ms']:.1f}x faster"
        )

    # 2b. Measured memory against stream length --------------------------------------
    if "memory" not in args.skip:
        lengths = (256, 512, 1024) if q else (512, 1024, 2048, 4096)
        mem = measure_stream_memory(
            model_cfg, lengths=lengths, n_sink=4, window=60, device=device, seed=0
        )
        cuda = torch.device(device).type == "cuda"
        where = "torch.cuda.max_memory_allocated" if cuda else "peak RSS (VmHWM)"
        print(
            f"\n## 2b. Measured peak extra memory vs stream length ({where}, fresh worker per "
            f"policy, nothing kept per token; K/V of one token: {mem['kv_bytes_per_token']} bytes)"
        )
        print(
            f"{'policy':>10} "
            + " ".join(f"{'N=' + str(n):>10}" for n in mem["lengths"])
            + f" {'slope':>14}"
        )
        for p, r in mem["policies"].items():
            cells = " ".join(f"{b / 1024:>6.0f} KiB" for b in r["peak_bytes"])
            print(f"{p:>10} {cells} {r['bytes_per_token']:>8.0f} B/token")
        bounded = max(
            abs(mem["policies"][p]["bytes_per_token"]) for p in ("sink", "window", "recompute")
        )
        dense = mem["policies"]["dense"]["bytes_per_token"]
        print(
            f"bounded policies grow at most {bounded:.0f} B/token, dense {dense:.0f} B/token "
            f"({dense / mem['kv_bytes_per_token']:.2f}x its K/V bytes per token)"
        )

    # 2c. Attention sinks on real text ---------------------------------------------------
    if "sinks" not in args.skip:
        sink_cfg = quick_config() if q else SinkExperimentConfig()
        if args.sink_steps:
            sink_cfg = dataclasses.replace(sink_cfg, train_steps=args.sink_steps)
        sk = run_sink_experiment(
            sink_cfg, device=device, progress=lambda m: print("  " + m, flush=True)
        )
        print_sink_experiment(sk)

    if "drift" not in args.skip:
        drift_section(model_cfg, device, seeds, methods, quick=q, tune=args.tune)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
