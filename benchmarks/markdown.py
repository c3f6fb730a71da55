"""Import and export of generated Markdown backlogs of 2,500 to 40,000 items.

Each document is written in the seed's conventions (directions under headings with
labelled priority, estimate and area; bold topic tasks with nested sub-tasks; open
questions; dated notes; a priority matrix), with some Obsidian Tasks marks and Logseq
keywords mixed in. For each size it prints:

- the whole `research import FILE` and `research export -o FILE` processes, timed as a
  user runs them (the median of --repeats runs, each into a fresh database);
- the library calls inside them (parse alone, import into the database, export), so
  the process start-up is visible separately;
- the log-log slope of each time against the item count (least squares over the sizes).

The export checks its own output: byte-identical to the imported file, and, after one
change per 50 items, every other line unchanged.

    python benchmarks/markdown.py [--sizes 2500,5000,10000,40000] [--repeats 3] [--json]

Targets (issue 13): 10,000 items imported in at most 1.5 s and exported in at most 0.5 s;
slopes at most 1.1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _project import compile_bytecode, research_cmd  # noqa: E402

PRIORITIES = ["🔥 高", "🔥🔥 极高", "中", "低"]
ESTIMATES = ["2-3天深度学习", "5-7天研究 + 实践", "3-4 days", "1 week"]
AREAS = ["大数据系统、分布式计算", "深度学习、在线学习", "systems, kernels"]
TOPICS = ["Checkpoint机制与容错设计", "状态后端的设计哲学", "KV cache eviction", "online softmax", "背压控制",
          "gradient accumulation", "窗口操作的底层实现原理", "paged attention"]


def generate(n_items: int, seed: int = 0) -> str:
    """A seed-like backlog with about ``n_items`` items (headings and tasks)."""
    rng = random.Random(seed)
    out = ["# 研究待办 generated", "", "## 🎯 文档说明", "", "**目的**: 生成的基准文档", "", "---", ""]
    count = 0
    direction = 0
    matrix = []
    while count < n_items:
        direction += 1
        out += [f"## {direction}. 研究方向 {direction}: streaming {rng.choice(TOPICS)}",
                f"**优先级**: {rng.choice(PRIORITIES)}", f"**预计时间**: {rng.choice(ESTIMATES)}",
                f"**关联领域**: {rng.choice(AREAS)}", "", f"为什么这个方向重要：{rng.choice(TOPICS)} 的内存墙。", "",
                "**具体研究内容**:"]
        count += 1
        for group in range(3):
            done = "x" if rng.random() < 0.2 else " "
            out.append(f"- [{done}] **{rng.choice(TOPICS)} 专题 {direction}.{group}**")
            count += 1
            for sub in range(4):
                mark = " " if rng.random() < 0.7 else "x"
                tail = ""
                if rng.random() < 0.1:
                    tail = f" 📅 2026-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} ⏫"
                elif rng.random() < 0.1:
                    tail = " 🔥 #kernels"
                out.append(f"  - [{mark}] {rng.choice(TOPICS)} 子任务 {direction}.{group}.{sub}{tail}")
                count += 1
            out.append("")
        out += ["**深度思考问题**:", f"- 如何平衡 {rng.choice(TOPICS)} 与性能？", "- 这些设计如何应用到深度学习系统？", ""]
        if rng.random() < 0.2:
            out += [f"### 2025-11-{rng.randint(10, 28)}", f"- ✅ 读完了 {rng.choice(TOPICS)} 的论文", ""]
        if len(matrix) < 20:
            matrix.append(f"| 研究方向 {direction} | ⭐⭐⭐ | ⭐⭐⭐⭐ | ⭐⭐ | 🔥🔥🔥 | 📋 规划中 |")
        out += ["---", ""]
    out += ["## 📊 研究优先级矩阵", "", "| 话题 | 创新性 | 实用性 | 可行性 | 综合评分 | 当前状态 |",
            "|------|--------|--------|--------|----------|----------|", *matrix, "", "---", "",
            "## 📝 研究笔记", "", "### 2025-11-08", "- ✅ 创建文档", "", "**最后更新**: 2025-11-08"]
    return "\n".join(out) + "\n"


def count_items(db: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM item").fetchone()[0]
    finally:
        conn.close()


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def measure(n_items: int, repeats: int, folder: Path) -> dict:
    text = generate(n_items)
    source = folder / f"backlog-{n_items}.md"
    source.write_text(text, encoding="utf-8")
    result: dict = {"requested": n_items, "bytes": len(text.encode())}
    env = {**os.environ}
    env.pop("RESEARCH_NOW", None)
    process_import, process_export = [], []
    for r in range(repeats):
        db = folder / f"p{n_items}-{r}.db"
        env["RESEARCH_DB"] = str(db)
        subprocess.run([*research_cmd(), "init", "--empty"], env=env, cwd=folder, check=True, capture_output=True)
        process_import.append(timed([*research_cmd(), "import", str(source)], env, folder))
        out = folder / f"out-{n_items}-{r}.md"
        process_export.append(timed([*research_cmd(), "export", "-o", str(out)], env, folder))
        if out.read_bytes() != source.read_bytes():
            raise SystemExit(f"export of {n_items} items is not byte-identical to the imported file")
        result["items"] = count_items(db)
    result["process_import_s"] = statistics.median(process_import)
    result["process_export_s"] = statistics.median(process_export)
    result.update(library(source, folder, n_items, repeats))
    return result


def library(source: Path, folder: Path, n_items: int, repeats: int) -> dict:
    """The library calls a command makes, timed inside one process (no start-up)."""
    from research.backlog.markdown.importer import cycle_collector_paused, import_new_file
    from research.backlog.markdown.parse import parse_document
    from research.store.db import create_database, dispose_engines

    text = source.read_text(encoding="utf-8")
    parse_times, import_times, export_times, edited_times = [], [], [], []
    for r in range(repeats):
        with cycle_collector_paused():  # as `research import` parses
            start = time.perf_counter()
            parse_document(text)
            parse_times.append(time.perf_counter() - start)
        db = folder / f"lib{n_items}-{r}.db"
        create_database(db)
        start = time.perf_counter()
        import_new_file(db, source)  # what `research import` of a new file runs
        import_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        exported = _export(db)
        export_times.append(time.perf_counter() - start)
        assert exported == text
        changed = _change_some(db, every=50)
        start = time.perf_counter()
        edited = _export(db)
        edited_times.append(time.perf_counter() - start)
        _check_local(text, edited, changed)
        dispose_engines()
    return {
        "parse_s": statistics.median(parse_times),
        "import_s": statistics.median(import_times),
        "export_s": statistics.median(export_times),
        "export_after_changes_s": statistics.median(edited_times),
    }


def _export(db: Path) -> str:
    """What `research export` does after start-up: plain SQLite, no ORM."""
    from research.backlog.markdown.export import export_text
    from research.store.db import connect_raw

    conn = connect_raw(db)
    try:
        return export_text(conn, None, "2026-01-01")[0]
    finally:
        conn.close()


def _change_some(db: Path, every: int) -> int:
    """Tick or untick one task in ``every`` and raise one heading's priority in ``every``."""
    from sqlmodel import select

    from research.backlog.items import ChangeLog, set_status
    from research.store.db import session_scope
    from research.store.models import Item

    changed = 0
    with session_scope(db, write=True) as session:
        log = ChangeLog(session)
        for n, item in enumerate(session.exec(select(Item).order_by(Item.id))):
            if n % every:
                continue
            if item.kind == "task":
                set_status(session, log, item, "planned" if item.status == "done" else "done", action="check")
            else:
                log.updated(item, {"priority": "critical" if item.priority != "critical" else "high"})
            changed += 1
    return changed


def _check_local(before: str, after: str, changed: int) -> None:
    old, new = before.split("\n"), after.split("\n")
    if len(old) != len(new):
        raise SystemExit("a field change added or removed lines")
    differing = sum(a != b for a, b in zip(old, new, strict=True))
    if differing > changed * 2:  # a matrix row can carry a heading's change too
        raise SystemExit(f"{differing} lines differ for {changed} changes")


def slope(points: list[tuple[float, float]]) -> float:
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2500,5000,10000,40000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    compile_bytecode()
    import gc

    gc.set_threshold(50_000, 20, 20)  # as the `research` process sets it (research/__main__.py)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"load average at start: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            rows.append(measure(n, args.repeats, Path(tmp)))
            print(f"  measured {rows[-1]['items']} items", file=sys.stderr)
    columns = ["process_import_s", "process_export_s", "parse_s", "import_s", "export_s", "export_after_changes_s"]
    slopes = {c: slope([(r["items"], r[c]) for r in rows]) for c in columns} if len(rows) > 1 else {}
    if args.json:
        print(json.dumps({"rows": rows, "slopes": slopes}, indent=2))
        return
    print(f"{'items':>7} {'MB':>5} | {'import':>7} {'export':>7} (whole process) | {'parse':>6} {'import':>7} "
          f"{'export':>7} {'export*':>8} (library)")
    for r in rows:
        print(f"{r['items']:>7} {r['bytes'] / 1e6:>5.2f} | {r['process_import_s']:>6.2f}s {r['process_export_s']:>6.2f}s "
              f"                 | {r['parse_s']:>5.2f}s {r['import_s']:>6.2f}s {r['export_s']:>6.2f}s {r['export_after_changes_s']:>7.2f}s")
    if slopes:
        print("log-log slope (time against items):", ", ".join(f"{c} {v:.2f}" for c, v in slopes.items()))
    ten = next((r for r in rows if abs(r["items"] - 10000) < 500), None)
    if ten:
        print(f"10,000 items: import {ten['process_import_s']:.2f} s (target ≤ 1.5 s), "
              f"export {ten['process_export_s']:.2f} s (target ≤ 0.5 s), whole processes")
    print("export* = after one change per 50 items; every export was checked against the imported file")


if __name__ == "__main__":
    main()
