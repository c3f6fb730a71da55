"""The backlog through the CLI: items, statuses, checklists, notes, outcomes, undo, errors."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from tests.support import REPO_ROOT


def add(cli, title, *options) -> int:
    return int(cli("add", title, *options).stdout.split("\t")[0])


def test_add_list_show_json(cli):
    direction = add(cli, "Streaming deep learning", "--priority", "critical", "--estimate", "5-7天研究 + 实践", "-t", "online learning", "-t", "edge")
    task = add(cli, "KV cache management", "--parent", direction, "--task")
    items = cli.json("list")
    assert [i["title"] for i in items] == ["Streaming deep learning"]  # its task is counted, not listed
    assert [i["title"] for i in cli.json("list", "--tasks")] == ["Streaming deep learning", "KV cache management"]
    first = items[0]
    assert first["priority"] == "critical"
    assert first["estimate_min_days"] == 5 and first["estimate_max_days"] == 7
    assert first["tags"] == ["online learning", "edge"]
    assert first["progress"] == {"done": 0, "total": 1}
    assert set(first) >= {"id", "slug", "parent_id", "kind", "status", "score", "created_at", "updated_at"}
    detail = cli.json("show", "streaming-deep-learning")
    assert detail["id"] == direction
    assert detail["children"][0]["id"] == task
    assert detail["history"][0]["action"] == "created"


def test_empty_list_json_is_empty_array(cli):
    assert cli("list", "--json").stdout.strip() == "[]"
    result = cli("list")
    assert result.stdout == ""
    assert "empty" in result.stderr


def test_status_commands_and_timestamps(cli):
    item = add(cli, "Backpressure")
    cli("start", item)
    shown = cli.json("show", item)
    assert shown["status"] == "active" and shown["started_at"]
    cli("pause", item)
    cli("status", item, "🚀")
    assert cli.json("show", item)["status"] == "active"
    cli("done", item, "--outcome", "code:experiments/backpressure", "--outcome", "document:notes/report.md", "--text", "loader")
    shown = cli.json("show", item)
    assert shown["status"] == "done" and shown["done_at"]
    assert [(o["kind"], o["ref"]) for o in shown["outcomes"]] == [
        ("code", "experiments/backpressure"),
        ("document", "notes/report.md"),
    ]
    assert cli.json("list") == []
    assert len(cli.json("list", "--all")) == 1
    cli("status", item, "进行中")
    shown = cli.json("show", item)
    assert shown["status"] == "active" and shown["done_at"] is None
    cli("drop", item)
    assert cli.json("list", "--status", "dropped")[0]["id"] == item


def test_checklist_progress_and_tree(cli):
    parent = add(cli, "Flink architecture")
    tasks = [add(cli, f"topic {n}", "--parent", parent, "--task") for n in range(3)]
    cli("check", tasks[0])
    cli("check", tasks[2])
    assert cli.json("show", parent)["progress"] == {"done": 2, "total": 3}
    cli("uncheck", tasks[2])
    assert cli.json("show", parent)["progress"] == {"done": 1, "total": 3}
    tree = cli("list", "--tree", "--all", "--tasks").stdout
    assert "1/3" in tree
    assert tree.index("Flink architecture") < tree.index("topic 0")
    default = cli("list").stdout  # the item with its progress; the tasks are not rows
    assert "Flink architecture" in default and "1/3" in default and "topic 0" not in default


def test_checking_what_is_not_a_checklist_task_needs_force_or_a_yes(cli, monkeypatch):
    heading = add(cli, "Streaming systems")
    for n in range(45):
        add(cli, f"topic {n}", "--parent", heading, "--task")
    result = cli("check", heading, ok=False)
    assert result.exit_code == 1 and result.stderr.strip() == (
        f"Error: {heading} “Streaming systems” is not a checklist task (45 open items under it); "
        "pass --force to check it")
    assert cli.json("show", heading)["status"] == "planned"
    monkeypatch.setattr("research.cli.ask.interactive", lambda: True)
    result = cli("check", heading, ok=False, input="n\n")
    assert result.exit_code == 1 and "check it anyway?" in result.stderr
    assert cli.json("show", heading)["status"] == "planned"
    cli("check", heading, input="y\n")
    assert cli.json("show", heading)["status"] == "done"
    monkeypatch.setattr("research.cli.ask.interactive", lambda: False)
    cli("uncheck", heading, "--force")
    assert cli.json("show", heading)["status"] == "planned"
    task = add(cli, "topic 45", "--parent", heading, "--task")
    cli("check", task)  # a task: no question
    assert cli.json("show", task)["status"] == "done"


def test_filters_and_sorting(cli):
    a = add(cli, "alpha idea", "-P", "low", "-t", "systems")
    b = add(cli, "beta idea", "-P", "high", "--innovation", "5", "--practicality", "4", "--feasibility", "3")
    c = add(cli, "gamma", "-P", "critical", "--parent", a)
    assert [i["id"] for i in cli.json("list")] == [c, b, a]  # priority order
    assert [i["id"] for i in cli.json("list", "--sort", "score")][0] == b
    assert cli.json("show", b)["score"] == pytest.approx(4.0)
    assert [i["id"] for i in cli.json("list", "--tag", "systems")] == [a]
    assert [i["id"] for i in cli.json("list", "--under", a)] == [c]
    assert [i["id"] for i in cli.json("list", "--search", "idea")] == [b, a]
    assert [i["id"] for i in cli.json("list", "--priority", "🔥")] == [b]


def test_edit_and_move(cli):
    a = add(cli, "first")
    b = add(cli, "second")
    cli("edit", a, "--title", "renamed", "--slug", "my-slug", "--estimate", "2 weeks", "-t", "x")
    shown = cli.json("show", "my-slug")
    assert shown["title"] == "renamed"
    assert shown["estimate_min_days"] == 14
    cli("mv", a, "--parent", b)
    assert cli.json("show", a)["parent_id"] == b
    result = cli("mv", b, "--parent", a, ok=False)
    assert result.exit_code == 1 and "under itself" in result.stderr
    cli("mv", a, "--top")
    assert cli.json("show", a)["parent_id"] is None


def test_rm_and_undo_bring_back_subtree(cli):
    parent = add(cli, "direction")
    child = add(cli, "topic", "--parent", parent)
    task = add(cli, "task", "--parent", child, "--task")
    cli("note", child, "a finding")
    cli("done", task, "--outcome", "document:x.md")
    before = cli.json("show", child)
    refused = cli("rm", parent, ok=False)
    assert refused.exit_code != 0 and "--yes" in refused.stderr
    cli("rm", parent, "--yes")
    assert cli.json("list", "--all") == []
    cli("undo")
    after = cli.json("show", child)
    assert after["notes"] == before["notes"]
    assert after["children"] == before["children"]
    assert cli.json("show", task)["outcomes"][0]["ref"] == "x.md"


def test_undo_reverts_one_command_at_a_time(cli):
    item = add(cli, "thing")
    cli("start", item)
    cli("edit", item, "--title", "renamed")
    cli("undo")
    assert cli.json("show", item)["title"] == "thing"
    cli("undo")
    assert cli.json("show", item)["status"] == "planned"
    cli("undo")
    assert cli.json("list", "--all") == []
    result = cli("undo", ok=False)
    assert result.exit_code == 1 and "nothing to undo" in result.stderr


def test_notes_on_items_and_backlog(cli):
    item = add(cli, "thing")
    cli("note", item, "on the item", "--date", "2025-11-08")
    cli("note", "on the whole backlog")
    notes = cli.json("show", item)["notes"]
    assert notes == [{"id": notes[0]["id"], "date": "2025-11-08", "title": None, "text": "on the item", "created_at": notes[0]["created_at"]}]
    result = cli("note", item, "x", "--date", "2025-13-01", ok=False)
    assert result.exit_code == 1 and "bad date" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (("show", "nope"), "no item with id or slug 'nope'"),
        (("start", "42"), "no item with id or slug '42'"),
        (("add", "x", "--priority", "urgentish"), "unknown priority"),
        (("add", "x", "--status", "sleeping"), "unknown status"),
        (("add", "x", "--parent", "missing"), "no item"),
        (("import", "missing.md"), "no such file"),
        (("export", "--format", "pdf"), "unknown format"),
        (("done", "1", "--outcome", "poster"), "KIND:REF"),
    ],
)
def test_user_errors_are_one_line_and_change_nothing(cli, isolated, args, message):
    add(cli, "existing")
    snapshot = _dump(isolated / "todo.db")
    result = cli(*args, ok=False)
    assert result.exit_code == 1
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")
    assert "Traceback" not in result.stderr + result.stdout
    assert _dump(isolated / "todo.db") == snapshot


def _dump(path) -> list:
    conn = sqlite3.connect(path)
    try:
        return [list(conn.execute(f"SELECT * FROM {t} ORDER BY 1")) for t in ("item", "note", "outcome", "event")]
    finally:
        conn.close()


def test_every_command_has_help(cli):
    from typer.main import get_command

    from research.cli import app

    def walk(group, prefix=()):
        for name, command in group.commands.items():
            yield (*prefix, name), command
            if hasattr(command, "commands"):
                yield from walk(command, (*prefix, name))

    for path, command in walk(get_command(app)):
        assert (command.help or "").strip(), f"`research {' '.join(path)}` has no help text"
        result = cli(*path, "--help")
        assert "Usage" in result.stdout


def test_cli_import_does_not_import_torch():
    code = (
        "import sys, research.cli\n"
        "heavy = [m for m in ('torch', 'papermill', 'sqlmodel', 'pandas', 'optuna', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert out.stdout.strip() == ""


def test_backlog_commands_do_not_import_torch(isolated):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from research.cli import app\n"
        "r = CliRunner()\n"
        "for args in (['init', '--empty'], ['add', 'x'], ['list'], ['list', '--tree'], ['show', '1'], ['note', '1', 'n'], ['export']):\n"
        "    res = r.invoke(app, args)\n"
        "    assert res.exit_code == 0, (args, res.output)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=isolated, check=True)
    assert out.stdout.strip() == "False"


def test_python_dash_m_entry_point(isolated):
    out = subprocess.run([sys.executable, "-m", "research", "--help"], capture_output=True, text=True, cwd=isolated)
    assert out.returncode == 0 and "backlog" in out.stdout


def test_show_reads_without_the_orm(cli, isolated):
    """`show` is a read command: plain sqlite3 through store.rows, like `list`."""
    parent = add(cli, "探索 KV cache eviction", "--priority", "high")
    add(cli, "H2O baseline", "--task", "--parent", str(parent))
    cli("note", str(parent), "first note")
    code = ("import sys\nfrom research.cli import app\n"
            "app(['show', '探索', '--json'], standalone_mode=False)\n"
            "print('sqlalchemy' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], cwd=isolated, capture_output=True, text=True, check=True,
                         env={**os.environ, "RESEARCH_DB": str(isolated / "todo.db")})
    assert out.stderr.split() == ["False"]
    shown = json.loads(out.stdout)
    assert shown["id"] == parent and shown["progress"] == {"done": 0, "total": 1}
    assert [c["title"] for c in shown["children"]] == ["H2O baseline"]
    assert [n["text"] for n in shown["notes"]] == ["first note"]
    assert [e["action"] for e in shown["history"]][:1] == ["created"]


def test_a_slug_prefix_names_one_item(cli):
    first = add(cli, "探索 KV cache eviction")
    assert cli.json("show", "探索")["id"] == first
    add(cli, "探索 paged attention")
    assert "begins several slugs" in cli("show", "探索", ok=False).stderr
    assert cli.json("show", "探索-p")["title"] == "探索 paged attention"


def test_list_fits_the_terminal(cli, monkeypatch):
    import io
    import re
    import shutil

    from research import render
    from research.backlog.views import Backlog
    from research.store.db import find_database

    parent = add(cli, "流式处理方向: a long research direction title about streaming checkpoints", "-t", "systems")
    for n in range(3):
        add(cli, f"检查点机制 checkpoint topic {n} with a title long enough to wrap", "--parent", parent, "--task")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=None: os.terminal_size((80, 24)))
    backlog = Backlog.load_file(find_database(None))
    render.write_items_table([backlog.row(item, 0) for item in backlog.items])
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in out.getvalue().splitlines()]
    assert len(lines) == 5
    assert max(render.cell_width(line) for line in lines) <= 80
    assert any("…" in line for line in lines)  # long titles are cut, not wrapped


def test_add_writes_without_the_orm(cli, isolated):
    """`add` writes one row and its event with plain sqlite3 (backlog.rules), and undo takes it back."""
    parent = add(cli, "KV cache eviction", "--priority", "high")
    code = ("import sys\nfrom research.cli import app\n"
            f"app(['add', 'read the H2O paper', '--task', '--parent', '{parent}', '-t', 'inference'], standalone_mode=False)\n"
            "print('sqlalchemy' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], cwd=isolated, capture_output=True, text=True, check=True,
                         env={**os.environ, "RESEARCH_DB": str(isolated / "todo.db")})
    assert out.stderr.splitlines()[-1] == "False"
    assert "added task" in out.stderr and "under" in out.stderr
    task = cli.json("show", "read-the-h2o-paper")
    assert (task["kind"], task["parent_id"], task["tags"], task["position"]) == ("task", parent, ["inference"], 0)
    assert task["history"][0]["action"] == "created" and task["history"][0]["after"]["slug"] == "read-the-h2o-paper"
    assert cli.json("show", parent)["progress"] == {"done": 0, "total": 1}
    cli("undo")
    assert cli("show", "read-the-h2o-paper", ok=False).exit_code == 1


def test_an_id_past_sqlites_range_names_nothing(cli):
    add(cli, "Exp")
    result = cli("show", "99999999999999999999999", ok=False)
    assert result.exit_code == 1 and "no item with id or slug" in result.stderr
    assert "no run" in cli("runs", "show", "99999999999999999999999", ok=False).stderr


def test_an_all_digit_slug_is_refused(cli):
    twelve = add(cli, "Twelve")
    result = cli("add", "x", "--slug", "12", ok=False)
    assert result.exit_code == 1 and "all digits" in result.stderr
    assert "all digits" in cli("edit", twelve, "--slug", "007", ok=False).stderr


def test_json_output_stays_json_with_nan(capsys):
    from research import render

    render.print_json([{"metrics": {"loss": float("nan"), "best": float("inf"), "ok": 1.5}}])
    assert json.loads(capsys.readouterr().out) == [{"metrics": {"loss": None, "best": None, "ok": 1.5}}]
