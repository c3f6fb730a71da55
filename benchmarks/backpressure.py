"""Benchmark the backpressure loader against torch.utils.data.DataLoader.

Three synthetic workloads (experiments/backpressure/workloads.py): heavy-tailed
item sizes (0.5-8 MB), a consumer that slows 5x mid-run, and a bursty producer.
On each, the backpressure loader runs at several byte budgets and the DataLoader
at num_workers x prefetch_factor in {1, 2, 4, 8}^2, all driven by the same
consumer loop. Each setting runs three times (interleaved) and is reported by its
pass of median throughput, with the largest peak of its passes. Producer and
consumer costs are sleeps; items are real tensors of their stated sizes. Both
loaders use worker processes sending tensors through shared memory the same way;
the backpressure loader is also run once with worker threads, the natural choice
for I/O-like producers like these.

    python benchmarks/backpressure.py            # about 8 minutes on 2 CPU cores
    python benchmarks/backpressure.py --quick    # about 20 seconds: smaller items, one pass
    python benchmarks/backpressure.py --json out.json

Acceptance figures printed (from issue 4): budget violations at every credit
grant (target 0); in the consumer-bound regime, throughput / consumer limit
(>= 0.97) and stall (< 2%); peak in-flight bytes at throughput within 3% of the
best DataLoader setting, as a ratio DataLoader / backpressure on workloads 1 and 2
(>= 2x); after the 5x slowdown, items until the depth target settles (<= 50) and
whether it oscillates. Timings on a shared machine are noisy: compare ratios from
one run, and see the load average printed first.

Beside each workload an oracle (experiments/backpressure/oracle.py) schedules the
same items knowing every size and time in advance, with no transfer cost: no loader
that starts items in sampler order does better. It prints its throughput at our
budgets, our fraction of it, and the best peak ratio any such loader could reach.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from experiments.backpressure import MB  # noqa: E402
from experiments.backpressure.measure import (  # noqa: E402
    SuiteConfig,
    combine_repeats,
    format_run,
    run_backpressure,
    run_workload,
)
from experiments.backpressure.workloads import WORKLOADS  # noqa: E402

THROUGHPUT_TARGET, STALL_TARGET, PEAK_RATIO_TARGET, SETTLE_TARGET = 0.97, 0.02, 2.0, 50


def section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def suite_config(quick: bool, items: int | None, workers: str, repeats: int | None) -> SuiteConfig:
    if quick:
        return SuiteConfig(
            n_items=items or 80,
            scale=1 / 4,  # 0.125-2 MB items
            speed=2.0,
            budgets_mb=(12, 24, 64),
            dl_workers=(2, 4),
            dl_prefetch=(1, 2),
            workers=workers,
            repeats=repeats or 1,
        )
    return SuiteConfig(
        n_items=items or 160,
        budgets_mb=(7, 8, 10, 12, 16, 24, 64),
        workers=workers,
        repeats=repeats or 3,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small items, short runs, reduced sweep"
    )
    parser.add_argument(
        "--items", type=int, default=None, help="items per run (default 160; quick 80)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="passes per setting (default 3; quick 1)"
    )
    parser.add_argument(
        "--workers",
        choices=("process", "thread"),
        default="process",
        help="backpressure producers in the comparison (DataLoader always uses processes)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the figures as JSON here"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings(
        "ignore", message=".*worker processes in total.*"
    )  # DataLoader on 2 cores

    cfg = suite_config(args.quick, args.items, args.workers, args.repeats)
    t_start = time.monotonic()
    print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {cfg.n_items} items per run, "
        f"sizes x{cfg.scale:g}, times /{cfg.speed:g}; backpressure: {cfg.num_workers} {cfg.workers} producers; "
        f"{cfg.repeats} pass(es) per setting"
    )

    results = {}
    for name in WORKLOADS:
        section(f"workload {name}")
        results[name] = run_workload(name, cfg)

    # The consumer-bound regime: heavy-tailed items, four producers outpace the consumer.
    wl = results["heavy_tailed"]["workload"]
    budget = int(64 * MB * cfg.scale)
    section(f"consumer-bound regime: heavy_tailed, budget {budget / MB:g} MB")
    bound = {args.workers: max(results["heavy_tailed"]["ours"], key=lambda r: r.budget_bytes)}
    other = "thread" if args.workers == "process" else "process"
    bound[other] = combine_repeats(
        [run_backpressure(wl, budget, cfg.num_workers, other) for _ in range(cfg.repeats)]
    )
    for kind, run in bound.items():
        print(f"  {kind:8s}{format_run(run)}")

    section("acceptance figures")
    figures: dict = {"load_average": os.getloadavg()[0], "quick": args.quick, "items": cfg.n_items}
    all_ours = [r for res in results.values() for r in res["ours"]] + list(bound.values())
    violations = sum(r.violations for r in all_ours)
    figures["budget_violations"] = violations
    print(
        f"1. budget violations over {len(all_ours) * cfg.repeats} backpressure passes, checked at every credit grant: "
        f"{violations}  {verdict(violations == 0)} (target 0)"
    )

    print(
        f"2. consumer-bound regime (heavy_tailed, budget {budget / MB:g} MB; target >= {THROUGHPUT_TARGET} of the "
        f"consumer's limit, stall < {100 * STALL_TARGET:.0f}%):"
    )
    for kind, run in bound.items():
        ok = run.throughput_ratio >= THROUGHPUT_TARGET and run.stall_fraction < STALL_TARGET
        figures[f"consumer_bound_{kind}"] = {
            "throughput_vs_limit": run.throughput_ratio,
            "stall_fraction": run.stall_fraction,
        }
        print(
            f"   {kind} producers: throughput {run.throughput_ratio:.3f} of limit, stall "
            f"{100 * run.stall_fraction:.1f}%, next() p50 {1e3 * run.next_p50_s:.2f} ms "
            f"p99 {1e3 * run.next_p99_s:.1f} ms  {verdict(ok)}"
        )

    print(
        f"3. peak in-flight bytes at throughput within 3% of the best DataLoader setting, "
        f"DataLoader / backpressure (target >= {PEAK_RATIO_TARGET:g}x on heavy_tailed and slowdown):"
    )
    for name in WORKLOADS:
        f = results[name]["frontier"]
        dl, bp = f["dataloader"], f["backpressure"]
        ok = f["comparable"] and f["peak_ratio"] >= PEAK_RATIO_TARGET
        figures[f"frontier_{name}"] = {
            "best_dataloader_items_per_s": f["best_dataloader_throughput"],
            "dataloader_setting": dl.setting,
            "dataloader_settings_within_3pct": f["dataloader_within_tol"],
            "dataloader_peak_mb": dl.peak_bytes / MB,
            "backpressure_setting": bp.setting,
            "backpressure_peak_mb": bp.peak_bytes / MB,
            "backpressure_ledger_peak_mb": bp.ledger_peak_bytes / MB,
            "throughput_vs_best_dataloader": f["throughput_vs_best"],
            "peak_ratio": f["peak_ratio"],
            "peak_ratio_ledger": f["peak_ratio_ledger"],
            "mean_ratio": f["mean_ratio"],
        }
        tag = verdict(ok) if name != "bursty" else "(not a target)"
        print(
            f"   {name:12s} {f['peak_ratio']:.2f}x peak ({f['peak_ratio_ledger']:.2f}x against our credit "
            f"ledger), {f['mean_ratio']:.2f}x time-averaged; DataLoader {dl.setting} "
            f"{dl.peak_bytes / MB:.1f} MB vs backpressure {bp.setting} {bp.peak_bytes / MB:.1f} MB; "
            f"throughput {f['throughput_vs_best']:.3f}x the best DataLoader's  {tag}"
        )
        print(
            f"   {'':12s} DataLoader settings within 3% of its best: {', '.join(f['dataloader_within_tol'])}"
        )
        if not f["comparable"]:
            print("   (no backpressure budget reached within 3% of the best DataLoader throughput)")
        o = results[name]["oracle"]
        figures[f"frontier_{name}"]["oracle"] = o
        if o["least_budget_bytes"] is None:
            print(f"   {'':12s} oracle: no budget reaches that throughput")
        else:
            print(
                f"   {'':12s} oracle (the best in-order schedule) first reaches that throughput at "
                f"{o['least_budget_bytes'] / MB:.2f} MB: at best {o['best_peak_ratio']:.2f}x; "
                f"ours is {min(frac for _, _, frac in o['at_budget']):.3f}-"
                f"{max(frac for _, _, frac in o['at_budget']):.3f} of its throughput at our budgets"
            )

    s = results["slowdown"]["settling"]
    ok = s["settle_items"] <= SETTLE_TARGET and s["max_dev_after"] <= 1
    figures["slowdown_settling"] = s
    print(
        f"4. depth after the 5x slowdown: {s['before']:.0f} -> {s['final']:.0f}; settles within 1 of its "
        f"final value after {s['settle_items']} items (target <= {SETTLE_TARGET}), largest deviation "
        f"after that {s['max_dev_after']:.0f}, {s['reversals']} direction changes after the change  "
        f"{verdict(ok)}"
    )
    print(f"\ntotal {time.monotonic() - t_start:.0f} s; load average now {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
