"""Markdown import and export: the seed conventions, other backlogs, round trips, bad files."""

from __future__ import annotations

import random
import sqlite3
import textwrap

import pytest

from tests.conftest import Cli


def backlog_state(cli) -> dict:
    """Everything a Markdown round trip must keep, keyed by each item's path of titles."""
    items = {}
    exported = cli.json("list", "--all")
    by_id = {i["id"]: i for i in exported}

    def path(item):
        titles = []
        while item:
            titles.append(item["title"])
            item = by_id.get(item["parent_id"])
        return tuple(reversed(titles))

    # Markdown writes a checklist before child headings, so only the order among
    # siblings of the same kind is kept, not raw positions.
    siblings: dict[tuple, list] = {}
    for item in exported:
        siblings.setdefault((item["parent_id"], item["kind"]), []).append(item)
    rank = {}
    for group in siblings.values():
        for n, item in enumerate(sorted(group, key=lambda i: (i["position"], i["id"]))):
            rank[item["id"]] = n

    for item in exported:
        detail = cli.json("show", item["id"])
        items[path(item)] = {
            "kind": item["kind"],
            "status": item["status"],
            "priority": item["priority"],
            "estimate": item["estimate"],
            "estimate_days": (item["estimate_min_days"], item["estimate_max_days"]),
            "tags": item["tags"],
            "scores": (item["innovation"], item["practicality"], item["feasibility"], item["score"]),
            "body": detail["body"],
            "order": rank[item["id"]],
            "notes": [(n["date"], n["title"], n["text"]) for n in detail["notes"]],
            "outcomes": [(o["kind"], o["ref"], o["text"]) for o in detail["outcomes"]],
        }
    return items


def global_notes(db_path) -> list:
    conn = sqlite3.connect(db_path)
    try:
        return list(conn.execute("SELECT date, title, text FROM note WHERE item_id IS NULL ORDER BY id"))
    finally:
        conn.close()


def fresh_cli(isolated, name: str) -> Cli:
    cli = Cli()
    cli("--db", isolated / name, "init", "--empty")
    return cli


def test_seed_imports_faithfully(cli, isolated, seed_todo):
    result = cli("import", seed_todo)
    assert "69 added" in result.stderr
    items = {i["title"]: i for i in cli.json("list", "--all")}
    flink = items["深入研究流式处理技术：框架设计哲学"]
    assert flink["priority"] == "high"
    assert flink["estimate"] == "2-3天深度学习"
    assert (flink["estimate_min_days"], flink["estimate_max_days"]) == (2, 3)
    assert flink["tags"] == ["大数据系统", "分布式计算"]
    assert (flink["innovation"], flink["practicality"], flink["feasibility"]) == (3, 4, 5)
    assert flink["progress"] == {"done": 0, "total": 15}
    streaming = items['探索"流式深度学习"：实时学习的模型架构与系统设计']
    assert streaming["priority"] == "critical"
    assert (streaming["innovation"], streaming["practicality"], streaming["feasibility"], streaming["score"]) == (5, 4, 3, 4.0)
    assert items["研究具体技术迁移：背压机制在内存管理中的应用"]["score"] == 4.0
    # Bold-titled checklist entries keep their title; nested entries are their tasks.
    kafka = items["Kafka Streams 设计模式研究"]
    assert kafka["kind"] == "task" and kafka["parent_id"] == flink["id"]
    children = cli.json("show", kafka["id"])["children"]
    assert [c["title"] for c in children][:2] == ["流处理表的抽象设计", "状态存储与恢复机制"]
    # Questions and experiment ideas stay in the body.
    body = cli.json("show", streaming["id"])["body"]
    assert "**实践项目想法**" in body and "实现一个支持流式数据的简单Transformer" in body
    assert "概念漂移" in body and "- [ ]" not in body
    # Hierarchy: the numbered directions sit under the list heading.
    listing = items["📋 研究方向清单"]
    assert flink["parent_id"] == listing["id"]
    # The dated research note became a note with that date.
    notes = global_notes(isolated / "todo.db")
    assert notes[0][0] == "2025-11-08" and "发现内存墙与流式处理的深刻类比" in notes[0][2]


def test_seed_round_trips(cli, isolated, seed_todo):
    cli("import", seed_todo)
    original = backlog_state(cli)
    exported = isolated / "export.md"
    cli("export", "-o", exported)
    other = fresh_cli(isolated, "other.db")
    other("--db", isolated / "other.db", "import", exported)
    copy = Cli()
    assert backlog_state(_with_db(copy, isolated / "other.db")) == original
    assert global_notes(isolated / "other.db") == global_notes(isolated / "todo.db")
    # The exported document keeps the seed's conventions.
    text = exported.read_text(encoding="utf-8")
    for fragment in ("**优先级**: 🔥🔥 极高", "**预计时间**: 2-3天深度学习", "**关联领域**: 大数据系统、分布式计算",
                     "- [ ] **Apache Flink 架构深度分析**", "  - [ ] Checkpoint机制与容错设计",
                     "| 流式深度学习 | ⭐⭐⭐⭐⭐ | ⭐⭐⭐⭐ | ⭐⭐⭐ | 🔥🔥🔥🔥 | 📋 规划中 |", "### 2025-11-08"):
        assert fragment in text


class _with_db:
    """A Cli bound to one database via --db."""

    def __init__(self, cli: Cli, db):
        self.cli, self.db = cli, db

    def __call__(self, *args, **kw):
        return self.cli("--db", self.db, *args, **kw)

    def json(self, *args):
        return self.cli.json("--db", self.db, *args)


def test_reimport_updates_instead_of_duplicating(cli, isolated, seed_todo):
    cli("import", seed_todo)
    text = seed_todo.read_text(encoding="utf-8")
    edited = text.replace("  - [ ] Checkpoint机制与容错设计", "  - [x] Checkpoint机制与容错设计")
    edited = edited.replace("**优先级**: 🔥 高\n**预计时间**: 2-3天", "**优先级**: 🔥🔥 极高\n**预计时间**: 2-3天")
    edited = edited.replace("  - [ ] 窗口操作的底层实现原理", "  - [ ] 窗口操作的底层实现原理\n  - [ ] Flink SQL 的优化器")
    path = isolated / "edited.md"
    path.write_text(edited, encoding="utf-8")
    result = cli("import", path)
    assert "1 added" in result.stderr and "2 changed" in result.stderr and "67 unchanged" in result.stderr
    items = {i["title"]: i for i in cli.json("list", "--all")}
    assert len(items) == 70
    assert items["Checkpoint机制与容错设计"]["status"] == "done"
    assert items["深入研究流式处理技术：框架设计哲学"]["priority"] == "critical"
    again = cli("import", path)
    assert "0 added, 0 changed, 70 unchanged, 0 note(s) added" in again.stderr


def test_dry_run_changes_nothing(cli, seed_todo):
    result = cli("import", seed_todo, "--dry-run")
    assert "would import" in result.stderr and "69 added" in result.stderr
    assert cli.json("list", "--all") == []


def test_import_is_undone_as_a_whole(cli, seed_todo):
    cli("add", "mine")
    cli("import", seed_todo)
    cli("undo")
    assert [i["title"] for i in cli.json("list", "--all")] == ["mine"]


ENGLISH = textwrap.dedent(
    """\
    # Lab backlog

    ## Systems
    **Priority**: critical
    **Estimate**: 3-4 days
    **Area**: kernels, memory
    **Status**: 🚀 active

    Why attention is memory-bound.

    - [x] read FlashAttention
    - [ ] write the kernel 🔥
      - benchmark on H100
    - [ ] profile ⏸️ #gpu

    **Open questions**:
    - Does the online softmax lose precision in fp16?

    ### 2025-10-01
    Kernel compiles; numbers are off by 1e-3.

    ## Ideas
    ### Speculative decoding for streams
    2025-09-14 10:30
    Draft model on the edge, verifier in the cloud.

    ### Plain idea
    Nothing but text.
    """
)


def test_english_backlog_with_ideas_and_timestamps(cli, isolated):
    path = isolated / "lab.md"
    path.write_text(ENGLISH, encoding="utf-8")
    cli("import", path)
    items = {i["title"]: i for i in cli.json("list", "--all")}
    systems = items["Systems"]
    assert (systems["priority"], systems["status"], systems["tags"]) == ("critical", "active", ["kernels", "memory"])
    assert (systems["estimate_min_days"], systems["estimate_max_days"]) == (3, 4)
    assert items["read FlashAttention"]["status"] == "done"
    kernel = items["write the kernel"]
    assert kernel["priority"] == "high"
    assert cli.json("show", kernel["id"])["body"] == "- benchmark on H100"
    assert items["profile"]["status"] == "paused" and items["profile"]["tags"] == ["gpu"]
    detail = cli.json("show", systems["id"])
    assert detail["notes"][0]["date"] == "2025-10-01"
    assert "Does the online softmax" in detail["body"]
    idea = items["Speculative decoding for streams"]
    assert idea["created_at"].startswith("2025-09-1")
    assert cli.json("show", idea["id"])["body"] == "Draft model on the edge, verifier in the cloud."
    assert items["Plain idea"]["parent_id"] == items["Ideas"]["id"]
    # And back out in English conventions.
    text = cli("export").stdout
    assert "**Priority**: 🔥🔥 critical" in text and "**Status**: 🚀 active" in text
    assert "- [ ] write the kernel 🔥" in text and "- [ ] profile ⏸️ #gpu" in text


def test_plain_heading_tree_and_bare_checklists(cli, isolated):
    path = isolated / "plain.md"
    path.write_text("# A\n## B\n### C\n## D\n- [ ] one\n- [x] two\n", encoding="utf-8")
    cli("import", path)
    items = {i["title"]: i for i in cli.json("list", "--all")}
    assert set(items) == {"B", "C", "D", "one", "two"}  # the single H1 is the document title
    assert items["C"]["parent_id"] == items["B"]["id"]
    assert cli.json("show", items["D"]["id"])["progress"] == {"done": 1, "total": 2}
    several = isolated / "several.md"
    several.write_text("# X\n# Y\n## Z\n", encoding="utf-8")
    cli("import", several)
    items = {i["title"]: i for i in cli.json("list", "--all")}
    assert items["Z"]["parent_id"] == items["Y"]["id"]


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("# T\n## A\n### 2025-13-40\nnote\n", 3, "bad date"),
        ("# T\n## A\n```\ncode\n", 4, "unterminated code fence"),
        ("# T\n## A\n**Priority**: someday\n", 3, "unknown priority"),
        ("# T\n## A\n## M\n| Topic | Innovation |\n|---|---|\n| A | ⭐⭐ | extra |\n", 6, "matrix row has 3 cells"),
        ("# T\n## A\n- [ ] **x**\n- [ ] \n", 4, "checklist entry without text"),
    ],
)
def test_malformed_files_fail_with_line_number_and_change_nothing(cli, isolated, text, line, message):
    cli("add", "existing")
    before = cli.json("list", "--all")
    path = isolated / "bad.md"
    path.write_text(text, encoding="utf-8")
    result = cli("import", path, ok=False)
    assert result.exit_code == 1
    assert f"bad.md:{line}:" in result.stderr and message in result.stderr
    assert cli.json("list", "--all") == before


def test_non_utf8_file_is_refused(cli, isolated):
    path = isolated / "latin1.md"
    path.write_bytes("## caf\xe9\n".encode("latin-1"))
    result = cli("import", path, ok=False)
    assert result.exit_code == 1 and "not UTF-8" in result.stderr


WORDS = ["流式", "attention", "背压", "kernel", "缓存", "drift", "Flink", "窗口", "memory", "梯度"]


def _random_backlog(cli, rng: random.Random) -> None:
    from itertools import count

    serial = count()

    def title():
        return f"{rng.choice(WORDS)} {rng.choice(WORDS)} {next(serial)}"

    def body():
        if rng.random() < 0.4:
            return ""
        lines = [f"{rng.choice(WORDS)} {rng.choice(WORDS)}。"]
        if rng.random() < 0.5:
            lines += ["", "**Questions**:", f"- why {rng.choice(WORDS)}?", f"- how {rng.choice(WORDS)}?"]
        return "\n".join(lines)

    def item(parent, depth, task=False):
        args = ["add", title()]
        if parent:
            args += ["--parent", parent]
        if task:
            args += ["--task", "--priority", rng.choice(["medium", "high", "critical"])]
            args += ["--status", rng.choice(["planned", "done", "active", "paused", "dropped", "writing-up"])]
        else:
            args += ["--priority", rng.choice(["low", "medium", "high", "critical"])]
            args += ["--status", rng.choice(["planned", "active", "paused", "done", "writing-up", "dropped"])]
            if rng.random() < 0.5:
                args += ["--estimate", rng.choice(["2-3天", "3-4 days", "1 week", "4h"])]
            for _ in range(rng.randint(0, 2)):
                args += ["--tag", rng.choice(WORDS)]
            if rng.random() < 0.4:
                args += ["--innovation", str(rng.randint(1, 5)), "--practicality", str(rng.randint(1, 5)), "--feasibility", str(rng.randint(1, 5))]
        text = body()
        if text and not task:
            args += ["--body", text]
        new_id = cli(*args).stdout.split("\t")[0]
        if not task:
            if rng.random() < 0.3:
                cli("note", new_id, f"finding {rng.choice(WORDS)}", "--date", f"2025-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}")
            if rng.random() < 0.2:
                cli("done", new_id, "--outcome", f"code:experiments/{rng.choice(['a', 'b'])}.py", "--text", "impl")
            if depth < 2:
                for _ in range(rng.randint(0, 3)):
                    item(new_id, depth + 1)
            for _ in range(rng.randint(0, 3)):
                item(new_id, depth + 1, task=True)
        elif depth < 4 and rng.random() < 0.3:
            item(new_id, depth + 1, task=True)

    for _ in range(rng.randint(1, 4)):
        item(None, 0)
    if rng.random() < 0.5:
        cli("note", "a backlog-wide thought", "--date", "2025-11-08")


@pytest.mark.parametrize("seed", range(5))
def test_generated_backlogs_round_trip(cli, isolated, seed):
    _random_backlog(cli, random.Random(seed))
    original = backlog_state(cli)
    assert original
    exported = isolated / "gen.md"
    cli("export", "-o", exported)
    fresh_cli(isolated, "copy.db")("--db", isolated / "copy.db", "import", exported)
    assert backlog_state(_with_db(Cli(), isolated / "copy.db")) == original
    assert global_notes(isolated / "copy.db") == global_notes(isolated / "todo.db")


def test_json_export(cli, seed_todo):
    import json

    cli("import", seed_todo)
    data = json.loads(cli("export", "--format", "json").stdout)
    assert data["format"] == "research-backlog" and len(data["items"]) == 69
    assert data["layout"]["title"] == "CS336 深度探索 TODO"
