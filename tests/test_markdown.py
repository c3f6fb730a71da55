"""Markdown documents through the CLI: lossless round trips, the dialects, several documents,
sync with conflicts, lenient import and the bad input it must survive."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.markdown_support import Bound, doc_state, random_changes, reimported_state
from tests.support import Cli

FIXTURES = Path(__file__).parent / "fixtures" / "markdown"


def _line_diff(before: list[str], after: list[str]) -> tuple[list[str], list[str]]:
    """Lines taken out and lines put in, in order, by a line diff."""
    import difflib

    removed, added = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=before, b=after, autojunk=False).get_opcodes():
        if op in ("replace", "delete"):
            removed += before[i1:i2]
        if op in ("replace", "insert"):
            added += after[j1:j2]
    return removed, added


def items_by_title(cli) -> dict:
    return {i["title"]: i for i in cli.json("list", "--all", "--tasks")}


def export_file(cli, folder: Path, name: str = "out.md", *extra) -> bytes:
    target = folder / name
    cli("export", "-o", target, *extra)
    return target.read_bytes()


def copy_fixture(folder: Path, name: str) -> Path:
    target = folder / name
    target.write_bytes((FIXTURES / name).read_bytes())
    return target


# ---------------------------------------------------------------------------
# The user's own document


@pytest.mark.parametrize("shipped", [False, True], ids=["empty", "with-shipped-items"])
def test_seed_comes_back_byte_for_byte(isolated, seed_todo, shipped):
    cli = Cli()
    cli("init", *([] if shipped else ["--empty"]))
    result = cli("import", seed_todo)
    assert "63 added" in result.stderr
    assert export_file(cli, isolated) == seed_todo.read_bytes()
    stdout = cli("export")
    assert stdout.stdout == seed_todo.read_text(encoding="utf-8")
    if shipped:
        assert "3 item(s) in no document" in stdout.stderr


def test_seed_fields_and_document_text(cli, seed_todo):
    cli("import", seed_todo)
    items = items_by_title(cli)
    flink = items["深入研究流式处理技术：框架设计哲学"]
    assert (flink["priority"], flink["estimate"], flink["tags"]) == ("high", "2-3天深度学习", ["大数据系统", "分布式计算"])
    assert (flink["estimate_min_days"], flink["estimate_max_days"]) == (2, 3)
    assert (flink["innovation"], flink["practicality"], flink["feasibility"], flink["score"]) == (3, 4, 5, 3.0)
    assert flink["progress"] == {"done": 0, "total": 15}
    streaming = items['探索"流式深度学习"：实时学习的模型架构与系统设计']
    assert (streaming["priority"], streaming["score"]) == ("critical", 4.0)
    kafka = items["Kafka Streams 设计模式研究"]
    assert kafka["kind"] == "task" and kafka["parent_id"] == flink["id"]
    body = cli.json("show", streaming["id"])["body"]
    assert "**实践项目想法**" in body and "概念漂移" in body and "- [ ]" not in body
    # The preface, the legend and the focus are the document's text, not backlog items.
    for text_section in ("🎯 文档说明", "文档说明", "🔄 TODO维护机制", "状态标记", "成果记录", "🎯 当前焦点", "待记录..."):
        assert text_section not in items
    assert items["🌊 基于内存墙-流式处理类比的研究方向"]["created_at"].startswith("2025-11-0")
    data = json.loads(cli("export", "--format", "json").stdout)
    assert [(n["date"], n["item_id"]) for n in data["notes"]] == [("2025-11-08", None)]


def test_seed_changes_touch_only_their_lines(cli, isolated, seed_todo):
    cli("import", seed_todo)
    items = items_by_title(cli)
    cli("start", items['探索"流式深度学习"：实时学习的模型架构与系统设计']["id"])
    cli("check", items["Checkpoint机制与容错设计"]["id"])
    cli("edit", items["研究具体技术迁移：背压机制在内存管理中的应用"]["id"], "--priority", "critical")
    cli("add", "Flink SQL 优化器", "--task", "--parent", items["Apache Flink 架构深度分析"]["id"])
    cli("note", "每周回顾：进展顺利", "--date", "2025-11-15")
    before = seed_todo.read_text(encoding="utf-8").split("\n")
    after = export_file(cli, isolated).decode().split("\n")
    removed, added = _line_diff(before, after)
    assert removed == [
        "  - [ ] Checkpoint机制与容错设计",
        "**优先级**: 🔥 高",
        "| 流式深度学习 | ⭐⭐⭐⭐⭐ | ⭐⭐⭐⭐ | ⭐⭐⭐ | 🔥🔥🔥🔥 | 📋 规划中 |",
    ]
    assert added == [
        "  - [x] Checkpoint机制与容错设计",
        "  - [ ] Flink SQL 优化器",
        "**优先级**: 🔥🔥 极高",
        "| 流式深度学习 | ⭐⭐⭐⭐⭐ | ⭐⭐⭐⭐ | ⭐⭐⭐ | 🔥🔥🔥🔥 | 🚀 进行中 |",
        "### 2025-11-15",
        "每周回顾：进展顺利",
        "",
    ]
    # The new note sits after the last dated note, before the placeholder under it.
    assert after.index("### 2025-11-15") < after.index("### 待记录...")
    # Exported again into a fresh backlog, it says what the backlog says.
    assert reimported_state("\n".join(after), isolated, "again") == doc_state(cli)


def test_seed_sync_both_ways_with_a_conflict(cli, isolated, seed_todo):
    path = isolated / "todo.md"
    path.write_bytes(seed_todo.read_bytes())
    cli("import", path)
    items = items_by_title(cli)
    # The user edits the file (a tick and an estimate) while the backlog changes too.
    text = path.read_text(encoding="utf-8")
    text = text.replace("  - [ ] Kafka的流量控制机制", "  - [x] Kafka的流量控制机制")
    text = text.replace("**预计时间**: 3-4天技术调研 + 实验验证", "**预计时间**: 4-5天技术调研 + 实验验证")
    text = text.replace("  - [ ] 状态后端(State Backend)的设计哲学", "  - [x] 状态后端(State Backend)的设计哲学")
    path.write_text(text, encoding="utf-8")
    cli("check", items["JAX的内存复用技术"]["id"])
    cli("note", items["深入研究流式处理技术：框架设计哲学"]["id"], "读完 Flink 论文", "--date", "2025-11-12")
    cli("status", items["状态后端(State Backend)的设计哲学"]["id"], "dropped")  # the file ticked it
    conflict = cli("sync", path, ok=False)
    assert conflict.exit_code == 1
    assert "状态后端(State Backend)的设计哲学: status: file 'done', backlog 'dropped'" in conflict.stderr
    assert path.read_text(encoding="utf-8") == text  # nothing written
    assert items_by_title(cli)["Kafka的流量控制机制"]["status"] == "planned"  # nothing brought in
    result = cli("sync", path, "--prefer", "backlog")
    assert "2 changed" in result.stderr and "todo.md.bak" in result.stderr
    synced = path.read_text(encoding="utf-8")
    assert (isolated / "todo.md.bak").read_text(encoding="utf-8") == text
    assert "  - [x] JAX的内存复用技术" in synced and "读完 Flink 论文" in synced
    assert "  - [ ] 状态后端(State Backend)的设计哲学 ❌" in synced  # the backlog's value won
    now = items_by_title(cli)
    assert now["Kafka的流量控制机制"]["status"] == "done"
    assert now["研究具体技术迁移：背压机制在内存管理中的应用"]["estimate"] == "4-5天技术调研 + 实验验证"
    # In sync: a second sync changes nothing, and the file exports as it is.
    assert "already says" in cli("sync", path).stderr
    assert export_file(cli, isolated) == path.read_bytes()


# ---------------------------------------------------------------------------
# The dialects, one fixture each


def test_fixture_corpus_exports_byte_for_byte(isolated):
    for fixture in sorted(FIXTURES.glob("*.md")):
        cli = Bound(isolated / f"{fixture.stem}.db")
        cli("init", "--empty")
        cli("import", fixture)
        assert export_file(cli, isolated, f"{fixture.stem}.out") == fixture.read_bytes(), fixture.name


def test_seed_conventions_fixture(cli, isolated):
    cli("import", FIXTURES / "seed-conventions.md")
    items = items_by_title(cli)
    kv = items["KV 缓存的驱逐策略"]
    assert (kv["priority"], kv["status"], kv["innovation"], kv["score"]) == ("critical", "active", 4, 4.0)
    assert items["方向清单"]["parent_id"] == items["🧭 长上下文推理方向"]["id"]
    assert items["写一个小的分页分配器"]["status"] == "active"
    assert "状态标记" not in items and "文档说明" not in items
    notes = json.loads(cli("export", "--format", "json").stdout)["notes"]
    assert [(n["date"], n["title"]) for n in notes] == [("2026-03-02", None), ("2026-03-09", "汇点实验")]
    assert "#### 结果" in notes[1]["text"]  # the note keeps its sub-headings


def test_github_task_lists(cli):
    cli("import", FIXTURES / "github-tasklists.md")
    items = items_by_title(cli)
    assert items["Phase 1"]["status"] == "done" and items["Phase 1"]["progress"] == {"done": 4, "total": 4}
    assert (items["Phase 2"]["status"], items["Phase 2"]["priority"]) == ("active", "high")
    assert items["Phase 3"]["status"] == "planned"  # "Not started" is not "started"
    assert items["Streaming reader"]["kind"] == "task"
    assert cli.json("show", items["Streaming reader"]["id"])["body"] == "- keep memory flat"
    retries = cli.json("show", items["Add retries"]["id"])
    assert retries["priority"] == "high" and [n["text"] for n in retries["notes"]] == ["the server drops one request in a thousand"]
    assert items["Drop Python 3.8"]["tags"] == ["maintenance"]
    assert "Not a heading" not in items and "not a task" not in items  # inside a code fence
    assert "a plain bullet, not a task" not in items


def test_a_task_body_is_edited_in_place(cli, isolated):
    cli("import", FIXTURES / "github-tasklists.md")
    reader = items_by_title(cli)["Streaming reader"]["id"]
    cli("edit", reader, "--body", "- keep memory flat\n- and latency low")
    text = export_file(cli, isolated).decode()
    assert "1. [ ] Streaming reader\n   - keep memory flat\n   - and latency low\n2. [x] Benchmarks" in text
    assert reimported_state(text, isolated, "again") == doc_state(cli)


def test_obsidian_tasks(cli):
    cli("import", FIXTURES / "obsidian-tasks.md")
    items = items_by_title(cli)
    rerun = items["Rerun the ablation"]
    assert (rerun["due_date"], rerun["priority"]) == ("2026-04-10", "high")
    harness = items["Write the eval harness"]
    assert (harness["status"], harness["scheduled_date"], harness["start_date"]) == ("active", "2026-04-07", "2026-04-06")
    assert items["Collect the baselines"]["done_at"].startswith("2026-04-0")
    assert items["Port to JAX"]["status"] == "dropped"
    assert items["Weekly sync with the team"]["due_date"] == "2026-04-13"  # 🔁 kept as text
    assert items["Low-priority cleanup"]["priority"] == "low" and items["Urgent fix for the data loader"]["priority"] == "critical"
    assert [i["title"] for i in cli.json("list", "--due-before", "2026-04-11")] == ["Rerun the ablation"]
    assert "2026-04-10" in cli("list", "--tasks").stdout  # a Due column once any item has a due date


def test_obsidian_changes_are_written_as_signifiers(cli, isolated):
    cli("import", FIXTURES / "obsidian-tasks.md")
    items = items_by_title(cli)
    cli("check", items["Rerun the ablation"]["id"])
    cli("edit", items["Low-priority cleanup"]["id"], "--priority", "high", "--due", "2026-05-01")
    cli("uncheck", items["Collect the baselines"]["id"])
    text = export_file(cli, isolated).decode()
    assert "- [x] Rerun the ablation 📅 2026-04-10 ⏫ ✅ " in text
    assert "- [ ] Low-priority cleanup ⏫ #chores 📅 2026-05-01" in text
    assert "- [ ] Collect the baselines\n" in text
    assert reimported_state(text, isolated, "again") == doc_state(cli)


def test_logseq_page(cli, isolated):
    cli("import", FIXTURES / "logseq-page.md")
    items = items_by_title(cli)
    assert items["Review the draft of the paper"]["scheduled_date"] == "2026-04-08"
    assert (items["Fix the flaky test"]["status"], items["Fix the flaky test"]["priority"]) == ("active", "high")
    assert items["Profile the kernel"]["due_date"] == "2026-04-09"
    assert items["Port the demo to Windows"]["status"] == "dropped"
    assert items["Hear back from the reviewers"]["status"] == "paused"
    assert items["tidy the notes page"]["priority"] == "low"
    assert items["Review the draft of the paper"]["parent_id"] == items["Daily tasks"]["id"]
    cli("done", items["Review the draft of the paper"]["id"])
    cli("edit", items["Read the Mamba paper"]["id"], "--due", "2026-04-20")
    cli("add", "Write the rebuttal", "--task", "--parent", items["Daily tasks"]["id"])
    text = export_file(cli, isolated).decode()
    assert "\t- DONE Review the draft of the paper\n\t  SCHEDULED: <2026-04-08 Wed>\n" in text
    assert "\t- LATER Read the Mamba paper\n" in text and "DEADLINE: <2026-04-20 Mon>" in text
    assert "\t- TODO Write the rebuttal\n" in text
    assert reimported_state(text, isolated, "again") == doc_state(cli)


def test_front_matter_and_document_metadata(cli):
    cli("import", FIXTURES / "frontmatter-metadata.md")
    docs = cli.json("docs")
    assert docs[0]["title"] == "Retrieval project"
    items = items_by_title(cli)
    assert set(items) == {"Index build", "Query side", "Batch the queries"}
    assert (items["Index build"]["status"], items["Index build"]["estimate"]) == ("done", "2 days")
    assert (items["Query side"]["status"], items["Query side"]["due_date"]) == ("paused", "2026-05-01")


def test_experiment_log_notes_keep_their_structure(cli, isolated):
    cli("import", FIXTURES / "experiment-log.md")
    notes = json.loads(cli("export", "--format", "json").stdout)["notes"]
    assert [(n["date"], n["title"]) for n in notes] == [
        ("2026-02-01", None), ("2026-02-03", "Backward pass"), ("2026-02-05", None)]
    assert notes[0]["text"].startswith("### Setup") and "```python" in notes[0]["text"]
    cli("note", "reran with fp32: same ordering", "--date", "2026-02-07")
    text = export_file(cli, isolated).decode()
    assert text.endswith("## 2026年2月5日\n用中文写的日志也算笔记。\n\n## 2026-02-07\nreran with fp32: same ordering\n")


def test_course_checklist_with_ordered_lists(cli, isolated):
    cli("import", FIXTURES / "course-checklist.md")
    items = items_by_title(cli)
    assert items["Roofline model"]["progress"] == {"done": 1, "total": 2}
    assert items["GPipe"]["parent_id"] == items["Pipeline parallel"]["id"]
    cli("add", "Zero redundancy", "--task", "--parent", items["Week 3: distributed training"]["id"])
    cli("add", "Interleaved 1F1B", "--task", "--parent", items["Pipeline parallel"]["id"])
    text = export_file(cli, isolated).decode()
    assert "    2. [ ] 1F1B schedule\n    3. [ ] Interleaved 1F1B\n4. [ ] Zero redundancy\n" in text


def test_crlf_bom_and_no_final_newline_are_kept(cli, isolated):
    raw = "\ufeff# Título\r\n\r\n## Tarea\r\n- [ ] uno\r\n- [x] dos".encode()
    path = isolated / "crlf.md"
    path.write_bytes(raw)
    cli("import", path)
    assert export_file(cli, isolated) == raw
    cli("check", items_by_title(cli)["uno"]["id"])
    cli("add", "tres", "--task", "--parent", items_by_title(cli)["Tarea"]["id"])
    assert export_file(cli, isolated) == "\ufeff# Título\r\n\r\n## Tarea\r\n- [x] uno\r\n- [x] dos\r\n- [ ] tres".encode()


def test_two_h1s_and_setext_headings(cli, isolated):
    path = isolated / "two.md"
    path.write_text("First part\n==========\n\n- [ ] a\n\n# Second part\n\nSub\n---\n- [ ] b\n", encoding="utf-8")
    cli("import", path)
    items = items_by_title(cli)
    assert items["Sub"]["parent_id"] == items["Second part"]["id"] and items["First part"]["parent_id"] is None
    cli("edit", items["Sub"]["id"], "--title", "Renamed")
    assert export_file(cli, isolated).decode() == "First part\n==========\n\n- [ ] a\n\n# Second part\n\nRenamed\n---\n- [ ] b\n"


# ---------------------------------------------------------------------------
# Several documents


def test_a_second_document_leaves_the_first_alone(cli, isolated, seed_todo):
    cli("import", seed_todo)
    english = copy_fixture(isolated, "github-tasklists.md")
    cli("import", english)
    docs = cli.json("docs")
    assert [(d["title"], d["main"]) for d in docs] == [("CS336 深度探索 TODO", True), ("Project roadmap", False)]
    assert export_file(cli, isolated, "seed.md", "--doc", "cs336-deep-dive-todo.md") == seed_todo.read_bytes()
    assert export_file(cli, isolated, "en.md", "--doc", english) == english.read_bytes()
    assert "give --doc NAME" in cli("export", ok=False).stderr
    # A top-level item joins the main document; a child joins its parent's.
    cli("add", "新方向")
    cli("add", "Phase 4", "--parent", items_by_title(cli)["Phase 3"]["id"])
    seed_out = export_file(cli, isolated, "seed.md", "--doc", "cs336-deep-dive-todo.md").decode()
    en_out = export_file(cli, isolated, "en.md", "--doc", english).decode()
    assert "## 新方向" in seed_out and "新方向" not in en_out and "### Phase 4" in en_out
    cli("docs", "--main", "github-tasklists.md")
    cli("add", "Phase 5")
    assert "## Phase 5" in export_file(cli, isolated, "en.md", "--doc", english).decode()
    # Undo takes back the last change only; undoing the second import removes just that document.
    for _ in range(5):
        cli("undo")
    assert [d["title"] for d in cli.json("docs")] == ["CS336 深度探索 TODO"]
    assert export_file(cli, isolated, "seed.md") == seed_todo.read_bytes()


def test_shipped_items_join_a_document_only_when_moved(isolated, seed_todo):
    cli = Cli()
    cli("init")
    cli("import", seed_todo)
    assert export_file(cli, isolated) == seed_todo.read_bytes()
    cli("mv", "streaming-attention", "--doc", "cs336-deep-dive-todo.md")
    text = export_file(cli, isolated).decode()
    assert "## Streaming attention: blockwise online softmax in PyTorch and Triton" in text
    assert reimported_state(text, isolated, "again") == doc_state(cli)


def test_reimport_brings_file_edits_and_keeps_backlog_changes(cli, isolated):
    path = copy_fixture(isolated, "course-checklist.md")
    cli("import", path)
    items = items_by_title(cli)
    cli("check", items["Cache-oblivious algorithms"]["id"])
    text = path.read_text(encoding="utf-8").replace("- [ ] Triton tutorial", "- [x] Triton tutorial")
    path.write_text(text + "\n## Week 4: serving\n\n- [ ] vLLM paper\n", encoding="utf-8")
    result = cli("import", path)
    assert "1 added" in result.stderr or "2 added" in result.stderr
    now = items_by_title(cli)
    assert now["Triton tutorial 06 (fused attention)"]["status"] == "done"
    assert now["Cache-oblivious algorithms"]["status"] == "done"  # the backlog's change stays
    assert "vLLM paper" in now
    assert "- [x] Cache-oblivious algorithms" in export_file(cli, isolated).decode()


def test_importing_an_older_copy_needs_force(cli, isolated):
    path = copy_fixture(isolated, "course-checklist.md")
    cli("import", path)
    old = path.read_text(encoding="utf-8")
    cli("check", items_by_title(cli)["Cache-oblivious algorithms"]["id"])
    path.write_text(old.replace("- [x] Roofline model", "- [ ] Roofline model"), encoding="utf-8")
    os.utime(path, (1_000_000_000, 1_000_000_000))  # an old copy, restored from a backup
    result = cli("import", path, ok=False)
    assert result.exit_code == 1 and "older than the backlog" in result.stderr and "--force" in result.stderr
    assert items_by_title(cli)["Roofline model"]["status"] == "done"
    cli("import", path, "--force")
    assert items_by_title(cli)["Roofline model"]["status"] == "planned"
    assert items_by_title(cli)["Cache-oblivious algorithms"]["status"] == "done"


# ---------------------------------------------------------------------------
# Lenient import


def test_values_it_does_not_understand_stay_as_text(cli, isolated):
    path = copy_fixture(isolated, "lenient-values.md")
    result = cli("import", path)
    for message in ("lenient-values.md:4: unknown status '⚠️ BLOCKING Phase 5', kept as text",
                    "lenient-values.md:6: unknown priority '???', kept as text",
                    "lenient-values.md:10: bad date '2026-13-40' in a heading, kept as text",
                    "lenient-values.md:14: unknown checkbox '[?]', kept as text",
                    "lenient-values.md:19: unclosed code fence"):
        assert message in result.stderr
    items = items_by_title(cli)
    assert set(items) == {"Migration", "Checklist", "a real task", "Unclosed"}
    assert "⚠️ BLOCKING Phase 5" in cli.json("show", items["Migration"]["id"])["body"]
    assert export_file(cli, isolated) == path.read_bytes()


def test_strict_refuses_and_names_the_line(cli, isolated):
    path = copy_fixture(isolated, "lenient-values.md")
    result = cli("import", path, "--strict", ok=False)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {path}:4: unknown status '⚠️ BLOCKING Phase 5', kept as text (refused: --strict)"]
    assert cli.json("docs") == []


def test_dated_heading_with_only_sub_headings_is_a_note(cli, isolated):
    path = isolated / "log.md"
    path.write_text("# Log\n\n## 2023-08-01\n### Coref\nbaseline F1 61.2\n### NER\n- [ ] rerun\n", encoding="utf-8")
    cli("import", path)
    notes = json.loads(cli("export", "--format", "json").stdout)["notes"]
    assert notes[0]["date"] == "2023-08-01" and notes[0]["text"] == "### Coref\nbaseline F1 61.2\n### NER\n- [ ] rerun"
    assert cli.json("list", "--all") == []


def test_dry_run_shows_what_became_an_item_and_changes_nothing(cli, seed_todo):
    result = cli("import", seed_todo, "--dry-run")
    assert "would import" in result.stderr and "63 added" in result.stderr
    lines = result.stdout.splitlines()
    assert any("text" in line and "🎯 文档说明" in line for line in lines)
    assert any("matrix" in line for line in lines) and any("note" in line and "2025-11-08" in line for line in lines)
    assert any(line.split()[1:] == ["item", "🌊", "基于内存墙-流式处理类比的研究方向"] for line in lines)
    assert cli.json("list", "--all") == [] and cli.json("docs") == []


# ---------------------------------------------------------------------------
# Titles and bodies that round-trip


@pytest.mark.parametrize("title", ["two\nlines", "nul\x00byte", "tab\x07bell", "carriage\rreturn"])
def test_titles_must_be_one_line_of_text(cli, title):
    result = cli("add", title, ok=False)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "title" in result.stderr
    assert cli.json("list", "--all") == []


def test_bodies_and_titles_that_look_like_structure_come_back_as_written(cli, isolated):
    path = copy_fixture(isolated, "github-tasklists.md")
    cli("import", path)
    items = items_by_title(cli)
    body = "## looks like a heading\n- [ ] looks like a task\n**Status**: done\n2026-01-01 looks like a date\n```\n## in a fence\n```"
    cli("edit", items["Ideas"]["id"], "--body", body)
    cli("add", "2026-01-02 is a title", "--parent", items["Phase 3"]["id"])
    cli("add", "Notes", "--parent", items["Phase 3"]["id"])
    cli("add", "ship it ✅", "--task", "--parent", items["Phase 3"]["id"])
    cli("add", "fix #12", "--task", "--parent", items["Phase 3"]["id"])
    text = export_file(cli, isolated).decode()
    assert "\\## looks like a heading" in text and "- \\[ ] looks like a task" in text
    assert "```\n## in a fence\n```" in text
    state = reimported_state(text, isolated, "again")
    assert state == doc_state(cli)
    titles = {key[-1][1] for key, _n in state["items"]}
    assert {"2026-01-02 is a title", "Notes", "ship it ✅", "fix #12"} <= titles


def test_notes_and_outcomes_on_tasks_round_trip(cli, isolated):
    path = copy_fixture(isolated, "course-checklist.md")
    cli("import", path)
    task = items_by_title(cli)["Cache-oblivious algorithms"]
    cli("note", task["id"], "Frigo et al. 1999 first", "--date", "2026-02-02")
    cli("done", task["id"], "-o", "document:notes/cache-oblivious.md", "--text", "summary")
    text = export_file(cli, isolated).decode()
    assert "- [x] Cache-oblivious algorithms\n  - **Note** 2026-02-02: Frigo et al. 1999 first\n" \
           "  - **Outcomes**: 📄 document: notes/cache-oblivious.md — summary\n" in text
    assert reimported_state(text, isolated, "again") == doc_state(cli)


# ---------------------------------------------------------------------------
# Random changes on our fixtures (the property tests generate documents too)


# lenient-values.md ends in a code fence that never closes: by CommonMark's rules anything
# written after it is code, so lines added to its last section cannot read back as items.
ROUND_TRIP_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.md") if p.name != "lenient-values.md")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fixture", ROUND_TRIP_FIXTURES)
def test_random_changes_round_trip(isolated, fixture, seed):
    cli = Bound(isolated / "t.db")
    cli("init", "--empty")
    cli("import", FIXTURES / fixture)
    random_changes(cli, random.Random(seed), 12)
    text = export_file(cli, isolated).decode("utf-8-sig")
    assert reimported_state(text, isolated, "copy") == doc_state(cli)


def test_generated_backlog_without_documents_round_trips(cli, isolated):
    """A backlog built with the CLI alone still exports (in the seed's conventions) and reads back."""
    rng = random.Random(3)
    for n in range(4):
        cli("add", f"方向 {n}", "--priority", rng.choice(["high", "critical"]), "--innovation", "3",
            "--practicality", "4", "--feasibility", "2", "--estimate", "2-3天", "--tag", "系统")
    for n in range(6):
        cli("add", f"任务 {n}", "--task", "--parent", str(rng.randint(1, 4)), "--status", rng.choice(["planned", "done", "paused"]))
    cli("note", "1", "读完论文", "--date", "2025-10-01")
    cli("note", "backlog-wide thought", "--date", "2025-10-02")
    cli("done", "2", "-o", "code:experiments/a.py", "--text", "impl")
    text = cli("export").stdout
    assert text.startswith("# 研究待办\n") and "## 📊 研究优先级矩阵" in text and "| 方向 0 |" in text
    assert reimported_state(text, isolated, "copy") == doc_state(cli, only_documents=False)


# ---------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing changed


def _assert_refused(cli, result, *fragments):
    assert result.exit_code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unreadable_inputs_are_refused(cli, isolated):
    (isolated / "bin.md").write_bytes(b"# T\x00\x01\x02")
    (isolated / "latin1.md").write_bytes("## caf\xe9\n".encode("latin-1"))
    (isolated / "folder.md").mkdir()
    os.mkfifo(isolated / "pipe.md")
    cases = [("bin.md", "not a text file"), ("latin1.md", "not UTF-8"), ("folder.md", "is a directory"),
             ("pipe.md", "FIFO"), ("missing.md", "no such file")]
    if Path("/dev/zero").exists():
        cases.append(("/dev/zero", "character device"))
    for name, message in cases:
        _assert_refused(cli, cli("import", isolated / name if not name.startswith("/") else name, ok=False), message)
    assert cli.json("docs") == [] and cli.json("list", "--all") == []


def test_oversized_input_is_refused(cli, isolated, monkeypatch):
    import research.files

    monkeypatch.setattr(research.files, "MAX_INPUT_BYTES", 1024)
    monkeypatch.setattr(research.files.read_text_file, "__kwdefaults__", {"limit": 1024})
    (isolated / "big.md").write_text("- [ ] x\n" * 500, encoding="utf-8")
    _assert_refused(cli, cli("import", isolated / "big.md", ok=False), "larger than")


def test_export_writes_through_symlinks_and_refuses_special_files(cli, isolated):
    path = copy_fixture(isolated, "course-checklist.md")
    cli("import", path)
    real = isolated / "real.md"
    real.write_text("old\n", encoding="utf-8")
    link = isolated / "link.md"
    link.symlink_to(real)
    cli("export", "-o", link)
    assert link.is_symlink() and real.read_bytes() == path.read_bytes()
    assert (isolated / "real.md.bak").read_text(encoding="utf-8") == "old\n"
    os.mkfifo(isolated / "fifo.md")
    (isolated / "dir.md").mkdir()
    for target, message in ((isolated / "fifo.md", "FIFO"), (isolated / "dir.md", "directory"),
                            (isolated / "nope" / "out.md", "no such directory")):
        _assert_refused(cli, cli("export", "-o", target, ok=False), message)
    assert stat.S_ISFIFO(os.stat(isolated / "fifo.md").st_mode)
    assert not list(isolated.glob("*.tmp")) and not list(isolated.glob(".*.tmp"))
    if Path("/dev/null").exists():
        _assert_refused(cli, cli("export", "-o", "/dev/null", ok=False), "character device")


def test_sync_of_a_file_that_is_no_document(cli, isolated):
    path = copy_fixture(isolated, "course-checklist.md")
    _assert_refused(cli, cli("sync", path, ok=False), "not a document of this backlog", "research import")


def test_a_failed_import_leaves_the_database_as_it_was(cli, isolated):
    cli("add", "existing")
    before = sqlite3.connect(isolated / "todo.db").execute("SELECT count(*) FROM event").fetchone()
    path = copy_fixture(isolated, "lenient-values.md")
    cli("import", path, "--strict", ok=False)
    after = sqlite3.connect(isolated / "todo.db").execute("SELECT count(*) FROM event").fetchone()
    assert before == after and [i["title"] for i in cli.json("list", "--all")] == ["existing"]


def test_due_dates_reach_the_review(cli, monkeypatch):
    monkeypatch.setenv("RESEARCH_NOW", "2026-04-12T12:00:00+00:00")
    cli("import", FIXTURES / "obsidian-tasks.md")
    cli("edit", items_by_title(cli)["Port to JAX"]["id"], "--status", "planned", "--due", "2026-04-01")
    review = json.loads(cli("review", "--since", "2026-04-06", "--until", "2026-04-12", "-f", "json").stdout)
    due = {group: [e["title"] for e in entries] for group, entries in review["due"].items()}
    assert due == {"overdue": ["Port to JAX"], "in_period": ["Rerun the ablation"],
                   "upcoming": ["Weekly sync with the team"]}
    text = cli("review", "--since", "2026-04-06", "--until", "2026-04-12").stdout
    assert "## 📅 Due" in text and "| 2026-04-10 |" in text


def test_exporting_does_not_import_the_orm(isolated, seed_todo):
    import subprocess
    import sys

    cli = Cli()
    cli("init", "--empty")
    cli("import", seed_todo)
    code = ("import sys\nfrom research.cli import app\n"
            "app(['export', '-o', 'x.md'], standalone_mode=False)\n"
            "print('sqlalchemy' in sys.modules, 'markdown_it' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=isolated, capture_output=True, text=True, check=True,
                         env={**os.environ, "RESEARCH_DB": str(isolated / "todo.db")})
    assert out.stdout.split() == ["False", "False"]
    assert (isolated / "x.md").read_bytes() == seed_todo.read_bytes()


def test_long_imports_show_a_progress_bar_on_a_terminal():
    import io

    from research.render import LateProgress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    quiet, shown = Terminal(), Terminal()
    LateProgress("importing x.md", delay=60, stream=quiet)("items", 500, 1000)
    late = LateProgress("importing x.md", delay=0, stream=shown)
    late("items", 500, 1000)
    late("items", 1000, 1000)
    assert quiet.getvalue() == ""
    assert shown.getvalue().startswith("\rimporting x.md: ") and "1,000/1,000 items\n" in shown.getvalue()
    piped = io.StringIO()
    LateProgress("importing x.md", delay=0, stream=piped)("items", 1, 2)
    assert piped.getvalue() == ""


def test_a_new_row_with_a_deleted_rows_id_is_written_as_new(cli, tmp_path):
    """SQLite gives a new row the id of a deleted one; the deleted row's lines still go, and the
    new row does not take over its anchor (a Hypothesis case: the new note replaced the old one's text)."""
    source = tmp_path / "doc.md"
    source.write_text("# T\n\n## A\nbody a\n\n### 2026-01-10 old\nold note\n\n## B\n", encoding="utf-8")
    cli("import", source)
    cli("rm", "a", "--yes")
    cli("rm", "b", "--yes")
    cli("add", "N1")
    cli("note", "n1", "found KV", "--date", "2026-07-06")
    out = tmp_path / "out.md"
    cli("export", "-o", out)
    assert out.read_text(encoding="utf-8") == "# T\n\n## N1\n\n### 2026-07-06\nfound KV\n"


def test_a_new_note_does_not_swallow_the_sub_headings_after_it(cli, tmp_path):
    """(Found on a public CONTRIBUTING.md.) An H2 whose sub-items are H4s: a note written at H3
    would take the H4s in as its text on re-import; it is written at their level."""
    source = tmp_path / "doc.md"
    source.write_text("## Guidelines\n\nIntro.\n\n#### With an issue\n\nText.\n\n#### With code\n\nMore.\n", encoding="utf-8")
    cli("import", source)
    cli("note", "guidelines", "found it", "--date", "2026-09-08")
    out = tmp_path / "out.md"
    cli("export", "-o", out)
    assert "Intro.\n\n#### 2026-09-08\nfound it\n\n#### With an issue" in out.read_text(encoding="utf-8")
    cli("--db", tmp_path / "copy.db", "init", "--empty")
    cli("--db", tmp_path / "copy.db", "import", out)
    titles = {i["title"] for i in cli.json("--db", tmp_path / "copy.db", "list", "--all", "--tasks")}
    assert titles == {"Guidelines", "With an issue", "With code"}


def test_a_body_keeps_no_trailing_blank_lines(cli):
    cli("add", "Exp", "--body", "first paragraph\n\n")
    assert cli.json("show", "exp")["body"] == "first paragraph"


OUTLINE = (
    "- ## Usage\n\t- Intro line.\n\t- ### Settings\n\t\t- Under the menu you find it.\n\t- The closing line.\n"
    "- ## Media\n\t- ```clojure\n\t  [:img {:src \"x.gif\"}]\n\t  ```\n\t- ### Gifs\n\t\t- one\n"
    "- ## Queries\n\t- **Note** 2026-04-09: found it\n\t-"
)


def test_body_edits_in_a_tab_indented_outline_read_back_as_written(cli, tmp_path):
    """(Found on public Logseq pages.) New body lines take the outline's tabs; a line replacing
    one read after the entry's children goes after the body line before it (there it would run
    on into the child's text); one before a note goes under the entry; a fence opened after a
    bullet is not escaped when the entry is moved and written again."""
    source = tmp_path / "outline.md"
    source.write_text(OUTLINE, encoding="utf-8")
    cli("import", source)
    cli("edit", "usage", "--body", "- Intro line.\nplain edited")
    cli("edit", "queries", "--body", "new first\n-")
    cli("mv", "media", "--parent", "queries")
    out = tmp_path / "out.md"
    cli("export", "-o", out)
    text = out.read_text(encoding="utf-8")
    assert "- ## Usage\n\t- Intro line.\n\tplain edited\n\t- ### Settings\n" in text
    assert "- ## Queries\n\tnew first\n\t- **Note** 2026-04-09: found it\n" in text
    assert "\\```" not in text
    copy = tmp_path / "copy.db"
    cli("--db", copy, "init", "--empty")
    cli("--db", copy, "import", out)
    for slug in ("usage", "queries", "media"):
        assert cli.json("--db", copy, "show", slug)["body"] == cli.json("show", slug)["body"], slug


def test_a_setext_heading_in_a_list_entry_keeps_its_bullet(cli, tmp_path):
    """(Found on a public Logseq page.) ``- [[Features]]`` over an indented ``-`` is a setext
    heading inside the entry: its title has no bullet, a new title keeps the bullet, and a
    new body goes under the underline (between the two lines it broke the heading)."""
    source = tmp_path / "page.md"
    source.write_text("- ## Beta\n  template:: Changelog\n\t- [[Features]]\n\t\t-\n\t- [[Thanks]]\n\t\t-\n", encoding="utf-8")
    cli("import", source)
    assert [i["title"] for i in cli.json("list", "--all", "--tasks")] == ["Beta", "[[Features]]", "[[Thanks]]"]
    cli("edit", "features", "--title", "New features", "--body", "what is new")
    out = tmp_path / "out.md"
    cli("export", "-o", out)
    assert "\t- New features\n\t\t-\n" in out.read_text(encoding="utf-8")
    copy = tmp_path / "copy.db"
    cli("--db", copy, "init", "--empty")
    cli("--db", copy, "import", out)
    again = cli.json("--db", copy, "show", "new-features")
    assert (again["title"], again["body"]) == ("New features", "what is new")


def test_a_new_field_entry_and_body_under_a_list_heading_read_back_apart(cli, tmp_path):
    """(Found on a public Logseq page.) A field written as a bullet, then new body text under
    the same ``- ## Heading``: without a blank line between, the text runs on into the bullet."""
    source = tmp_path / "page.md"
    source.write_text("- ## Usage\n\t- how\n- ## Functionality\n- ## Links\n", encoding="utf-8")
    cli("import", source)
    cli("edit", "functionality", "--due", "2026-08-18", "--body", "drift text")
    out = tmp_path / "out.md"
    cli("export", "-o", out)
    copy = tmp_path / "copy.db"
    cli("--db", copy, "init", "--empty")
    cli("--db", copy, "import", out)
    again = cli.json("--db", copy, "show", "functionality")
    assert (again["due_date"], again["body"]) == ("2026-08-18", "drift text"), out.read_text(encoding="utf-8")
