"""`research review` over a synthetic three-week history built with a controlled clock.

The history runs in a UTC+8 zone so that local ISO-week boundaries differ from
UTC ones: a change at 00:30 on Monday local time is still Sunday in UTC.
Runs and metrics are inserted directly (no notebooks are executed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest


@pytest.fixture
def utc_plus_8():
    """Local time is UTC+8 for the test (a fixed zone: no tz database needed)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "CST-8"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def utc(local: str) -> str:
    """A local wall-clock time as the stored UTC timestamp."""
    return (
        datetime.fromisoformat(local)
        .astimezone()
        .astimezone(UTC)
        .isoformat(timespec="microseconds")
    )


class History:
    def __init__(self, cli, monkeypatch):
        self.cli, self.monkeypatch = cli, monkeypatch
        self.db = Path(os.environ["RESEARCH_DB"])

    def at(self, local: str) -> History:
        self.monkeypatch.setenv("RESEARCH_NOW", local)
        return self

    def add(self, title: str, *options) -> int:
        return int(self.cli("add", title, *options).stdout.split("\t")[0])

    def link(self, item_id: int, best: str) -> int:
        from research.store.db import session_scope
        from research.store.models import Link

        with session_scope(self.db, write=True) as session:
            row = Link(
                item_id=item_id,
                name="exp",
                notebook="notebooks/exp.ipynb",
                best=best,
                created_at=utc("2025-11-03T09:00"),
            )
            session.add(row)
            session.flush()
            return row.id

    def run(
        self,
        item_id: int,
        status: str,
        started: str,
        ended: str,
        metrics: dict,
        *,
        sweep=None,
        params=None,
        error=None,
        link_id=None,
    ) -> int:
        from research.store.db import session_scope
        from research.store.models import Metric, Run

        with session_scope(self.db, write=True) as session:
            run = Run(
                item_id=item_id,
                link_id=link_id,
                sweep_id=sweep,
                status=status,
                notebook="notebooks/exp.ipynb",
                params=params or {},
                queued_at=utc(started),
                started_at=utc(started),
                ended_at=utc(ended),
                error=error,
                reason=None if status == "succeeded" else f"{status} in a cell",
            )
            session.add(run)
            session.flush()
            for step, (name, value) in enumerate(metrics.items()):
                session.add(Metric(run_id=run.id, name=name, value=value, step=step))
            return run.id


@pytest.fixture
def history(cli, monkeypatch, utc_plus_8):
    """Weeks 2025-W45, W46 and W47 (Mondays: Nov 3, 10, 17), all in local time."""
    h = History(cli, monkeypatch)
    ids = {}
    # --- Week 1 (W45)
    h.at("2025-11-03T09:00")
    ids["A"] = h.add(
        "Streaming DL",
        "--priority",
        "critical",
        "--innovation",
        "5",
        "--practicality",
        "4",
        "--feasibility",
        "3",
    )
    ids["B"] = h.add(
        "Backpressure",
        "--priority",
        "high",
        "--innovation",
        "4",
        "--practicality",
        "5",
        "--feasibility",
        "4",
    )
    ids["C"] = h.add("Frameworks", "--innovation", "3", "--practicality", "4", "--feasibility", "5")
    ids["D"] = h.add(
        "Quantum",
        "--priority",
        "high",
        "--innovation",
        "3",
        "--practicality",
        "3",
        "--feasibility",
        "3",
    )
    ids["G"] = h.add("Edge-cloud")
    ids["A1"] = h.add("KV cache", "--parent", ids["A"], "--task")
    h.at("2025-11-04T09:00")
    cli("start", ids["A"])
    cli("start", ids["C"])
    cli("start", ids["G"])
    link_a = h.link(ids["A"], "max:throughput")
    ids["r1"] = h.run(
        ids["A"],
        "succeeded",
        "2025-11-05T10:00",
        "2025-11-05T10:30",
        {"throughput": 100.0},
        link_id=link_a,
    )
    h.at("2025-11-06T09:00")
    cli("note", ids["A"], "week one note")
    # Starts in W45, ends in W46: counts as succeeded in W46 but not as started.
    ids["r5"] = h.run(
        ids["A"],
        "succeeded",
        "2025-11-09T23:50",
        "2025-11-10T00:20",
        {"throughput": 90.0},
        link_id=link_a,
    )

    # --- Week 2 (W46)
    h.at("2025-11-10T00:30")  # Sunday 16:30 UTC, Monday locally
    cli("start", ids["B"])
    h.at("2025-11-10T10:00")
    ids["E"] = h.add("Serverless ML", "--priority", "low")
    ids["B1"] = h.add("Credit scheme", "--parent", ids["B"], "--task")
    h.at("2025-11-11T09:00")
    ids["H"] = h.add("Scratch idea")
    cli("start", ids["H"])
    ids["r2"] = h.run(
        ids["A"],
        "succeeded",
        "2025-11-11T10:00",
        "2025-11-11T10:20",
        {"throughput": 120.0},
        link_id=link_a,
    )
    ids["r3"] = h.run(
        ids["A"],
        "succeeded",
        "2025-11-11T11:00",
        "2025-11-11T11:20",
        {"throughput": 150.0},
        link_id=link_a,
    )
    error = {
        "cell_index": 3,
        "ename": "ValueError",
        "evalue": "boom 2\nmore detail",
        "traceback": ["Traceback", "ValueError: boom 2"],
    }
    ids["r4"] = h.run(
        ids["A"],
        "failed",
        "2025-11-11T12:00",
        "2025-11-11T12:05",
        {"before": 1.5},
        error=error,
        link_id=link_a,
    )
    ids["s"] = [
        h.run(
            ids["B"],
            "succeeded",
            "2025-11-11T14:00",
            "2025-11-11T14:10",
            {"loss": loss, "acc": 0.9},
            sweep="sw1",
            params={"lr": lr, "block": 64},
        )
        for lr, loss in ((0.1, 0.5), (0.2, 0.4), (0.3, 0.45))
    ]
    h.at("2025-11-12T09:00")
    cli("rm", ids["H"], "--yes")
    cli("pause", ids["G"])
    cli("start", ids["D"])
    cli("undo")  # undone: D never started in W46
    h.at("2025-11-13T09:00")
    cli(
        "done",
        ids["A1"],
        "--outcome",
        "code:experiments/kv",
        "--outcome",
        "document:notes/kv.md",
        "--text",
        "KV cache study",
    )
    h.at("2025-11-14T09:00")
    cli("note", ids["B"], "sweep looks good")
    cli("note", "weekly thoughts")
    h.at("2025-11-15T09:00")
    cli("drop", ids["E"])
    h.at("2025-11-16T23:30")  # Sunday 15:30 UTC
    cli("note", ids["A"], "late night\nsecond line")

    # --- Week 3 (W47)
    h.at("2025-11-17T00:10")  # still Sunday (W46) in UTC, Monday of W47 locally
    cli("start", ids["D"])
    cli("note", ids["A"], "first thing in week three")
    h.at("2025-11-18T09:00")
    h.add("Later topic", "--priority", "critical")
    h.run(
        ids["A"],
        "succeeded",
        "2025-11-18T10:00",
        "2025-11-18T10:20",
        {"throughput": 200.0},
        link_id=link_a,
    )
    h.run(
        ids["C"],
        "failed",
        "2025-11-18T11:00",
        "2025-11-18T11:01",
        {},
        error={"cell_index": 1, "ename": "KeyError", "evalue": "x"},
    )
    cli("done", ids["B"], "--outcome", "document:notes/bp.md")
    cli("edit", ids["A"], "--priority", "low")
    cli("note", ids["C"], "week three note")
    h.at("2025-11-19T09:00")  # "now" for the reports below
    return ids


def week2(cli, *extra):
    return cli.json_review("--week", "2025-W46", *extra)


@pytest.fixture
def cli(cli):
    cli.json_review = lambda *args: json.loads(cli("review", "--format", "json", *args).stdout)
    return cli


def test_week_two_counts(cli, history):
    data = week2(cli)
    assert data["period"]["start"] == "2025-11-10" and data["period"]["end"] == "2025-11-16"
    assert data["period"]["start_utc"] == "2025-11-09T16:00:00.000000+00:00"
    assert data["counts"] == {
        "items_added": 2,  # E, H (deleted since, but added this week)
        "items_started": 2,  # B, H (D's start was undone)
        "items_paused": 1,
        "items_finished": 0,
        "items_dropped": 1,
        "tasks_added": 1,  # B1
        "tasks_ticked": 1,  # A1
        "runs_started": 6,
        "runs_succeeded": 6,  # r5 ended this week
        "runs_failed": 1,
        "notes_written": 3,
    }


def test_week_two_moved_grouped_by_direction(cli, history):
    moved = week2(cli)["moved"]
    ids = history
    assert [g["direction"]["title"] for g in moved] == [
        "Streaming DL",
        "Backpressure",
        "Edge-cloud",
        "Serverless ML",
        "Scratch idea",
    ]
    flat = [(c["item_id"], c["from"], c["to"]) for g in moved for c in g["changes"]]
    assert flat == [
        (ids["A1"], "planned", "done"),
        (ids["B"], "planned", "active"),
        (ids["G"], "active", "paused"),
        (ids["E"], "planned", "dropped"),
        (ids["H"], "planned", "active"),
    ]
    assert moved[1]["changes"][0]["date"] == "2025-11-10"


def test_week_two_finished_with_outcomes(cli, history):
    finished = week2(cli)["finished"]
    assert [(f["id"], f["title"], f["direction"]) for f in finished] == [
        (history["A1"], "KV cache", "Streaming DL")
    ]
    assert [(o["kind"], o["ref"], o["text"]) for o in finished[0]["outcomes"]] == [
        ("code", "experiments/kv", "KV cache study"),
        ("document", "notes/kv.md", "KV cache study"),
    ]


def test_week_two_experiments(cli, history):
    ids = history
    exp = week2(cli)["experiments"]
    a, b = exp["items"]
    assert (a["id"], a["runs"], a["by_status"]) == (ids["A"], 4, {"succeeded": 3, "failed": 1})
    assert (a["metric"], a["goal"], a["best"], a["best_run"]) == (
        "throughput",
        "max",
        150.0,
        ids["r3"],
    )
    assert (a["previous_best"], a["change"], a["change_pct"]) == (100.0, 50.0, 50.0)
    # No link rule: the first numeric metric, minimized because it is a loss.
    assert (b["id"], b["runs"], b["metric"], b["goal"], b["best"], b["best_run"]) == (
        ids["B"],
        3,
        "loss",
        "min",
        0.4,
        ids["s"][1],
    )
    assert b["previous_best"] is None and b["change"] is None
    assert exp["failures"] == [
        {
            "run_id": ids["r4"],
            "item_id": ids["A"],
            "slug": "streaming-dl",
            "title": "Streaming DL",
            "notebook": "notebooks/exp.ipynb",
            "status": "failed",
            "ended_at": utc("2025-11-11T12:05"),
            "cell_index": 3,
            "ename": "ValueError",
            "error": "ValueError: boom 2",
            "reason": "failed in a cell",
        }
    ]
    [sweep] = exp["sweeps"]
    assert (sweep["sweep_id"], sweep["item_id"], sweep["metric"], sweep["params"]) == (
        "sw1",
        ids["B"],
        "loss",
        ["lr"],
    )
    assert [(r["run_id"], r["params"], r["value"]) for r in sweep["rows"]] == [
        (ids["s"][0], {"lr": 0.1}, 0.5),
        (ids["s"][1], {"lr": 0.2}, 0.4),
        (ids["s"][2], {"lr": 0.3}, 0.45),
    ]


def test_week_two_charts_data(cli, history):
    ids = history
    charts = week2(cli)["charts"]
    per_day = charts["runs_per_day"]
    assert per_day["days"][0] == "2025-11-10" and len(per_day["days"]) == 7
    assert per_day["by_status"] == {
        "succeeded": [0, 5, 0, 0, 0, 0, 0],
        "failed": [0, 1, 0, 0, 0, 0, 0],
    }
    series = {s["item_id"]: s for s in charts["key_metrics"]}
    # The previous week's runs give the line its context; later runs are left out.
    assert [p["run_id"] for p in series[ids["A"]]["points"]] == [
        ids["r1"],
        ids["r5"],
        ids["r2"],
        ids["r3"],
    ]


def test_week_two_backlog_charts_data(cli, history):
    ids = history
    charts = week2(cli)["charts"]
    progress = [
        {k: p[k] for k in ("id", "done", "open", "done_at_start", "total_at_start", "total", "ticked", "added")}
        for p in charts["progress"]
    ]
    assert progress == [
        {"id": ids["A"], "done": 1, "open": 0, "done_at_start": 0, "total_at_start": 1, "total": 1,
         "ticked": 1, "added": 0},
        {"id": ids["B"], "done": 0, "open": 1, "done_at_start": 0, "total_at_start": 0, "total": 1,
         "ticked": 0, "added": 1},
    ]
    burndown = charts["burndown"]
    assert burndown["start"] == {"items": 5, "tasks": 1}  # A, B, C, D, G; A1
    # E added Monday, H added Tuesday and deleted Wednesday, A1 ticked Thursday, E dropped Saturday.
    assert burndown["items"] == [6, 7, 6, 6, 6, 5, 5]
    assert burndown["tasks"] == [2, 2, 2, 1, 1, 1, 1]
    assert charts["flow"] == [
        {"from": "planned", "to": "active", "items": 2, "tasks": 0},  # B, H (D's start undone)
        {"from": "planned", "to": "done", "items": 0, "tasks": 1},  # A1
        {"from": "planned", "to": "dropped", "items": 1, "tasks": 0},  # E
        {"from": "active", "to": "paused", "items": 1, "tasks": 0},  # G
    ]
    # The current week: days still to come have no value.
    current = cli.json_review()["charts"]["burndown"]
    assert current["items"][2] is not None and current["items"][3:] == [None] * 4


def test_quarter_and_its_previous_quarter(cli, history):
    quarter = cli.json_review("--quarter", "2025-Q4")
    p = quarter["period"]
    assert (p["kind"], p["label"], p["start"], p["end"]) == ("quarter", "2025-Q4", "2025-10-01", "2025-12-31")
    assert p["previous"] == {"start": "2025-07-01", "end": "2025-09-30"}
    assert quarter["counts"] == cli.json_review("--month", "2025-11")["counts"]
    assert len(quarter["charts"]["burndown"]["days"]) == 92
    first = cli.json_review("--quarter", "2026Q1")["period"]
    assert (first["start"], first["previous"]["start"]) == ("2026-01-01", "2025-10-01")
    assert cli.json_review("--quarter", "q4")["period"]["label"] == "2025-Q4"  # this year's
    text = cli("review", "--quarter", "2025-Q4").stdout
    assert text.startswith("# Review 2025-Q4 (2025-10-01 – 2025-12-31)\n")


def test_notes_render_as_markdown_and_nothing_unsafe_passes(cli, isolated, monkeypatch):
    monkeypatch.setenv("RESEARCH_NOW", "2025-11-12T09:00")
    cli("add", "流式 attack surface")
    hostile = (
        "**创建时间**: 2025-11-08 and `code`\n\n"
        "<script>alert(1)</script>\n\n"
        '<img src=x onerror="alert(2)">\n\n'
        "[click](javascript:alert(3)) [tab](java\tscript:alert(4)) [ok](https://example.org/a?b=1)\n\n"
        "![pic](data:image/png;base64,AAAA)\n\n"
        "- one\n- two"
    )
    cli("note", "1", hostile)
    page = cli("review", "--week", "2025-W46", "--format", "html").stdout
    note = page[page.index('<div class="note">') :].split("</div>", 1)[0]
    assert "<strong>创建时间</strong>: 2025-11-08" in note and "**" not in note
    assert "<code>code</code>" in note and "<li>one</li>" in note
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in note
    assert "<img" not in note and "&lt;img src=x onerror=" in note
    assert 'href="javascript:' not in note.lower() and "href=\"java" not in note.lower()
    assert 'href="https://example.org/a?b=1" rel="noopener noreferrer">ok</a>' in note
    assert 'href="data:' not in note
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    # Markdown output keeps the note as the user wrote it.
    assert "**创建时间**: 2025-11-08" in cli("review", "--week", "2025-W46").stdout


def test_sweep_parameters_show_as_values_not_json(cli, isolated, monkeypatch, utc_plus_8):
    h = History(cli, monkeypatch)
    h.at("2025-11-11T09:00")
    item = h.add("Loader sweep")
    for workload, loss in (("heavy_tailed", 0.5), ("bursty", 0.4)):
        h.run(item, "succeeded", "2025-11-11T10:00", "2025-11-11T10:10", {"loss": loss},
              sweep="sw9", params={"workload": workload, "budget_mb": 12, "sizes": [1, 2]})
    h.at("2025-11-12T09:00")
    text = cli("review", "--week", "2025-W46").stdout
    assert "| heavy_tailed |" in text and '"heavy_tailed"' not in text
    page = cli("review", "--week", "2025-W46", "--format", "html").stdout
    assert ">heavy_tailed<" in page and "&quot;heavy_tailed&quot;" not in page


def test_week_two_notes_by_item(cli, history):
    notes = week2(cli)["notes"]
    assert [(g["item"]["id"], [n["text"] for n in g["notes"]]) for g in notes] == [
        (history["B"], ["sweep looks good"]),
        (None, ["weekly thoughts"]),
        (history["A"], ["late night\nsecond line"]),
    ]
    assert notes[2]["notes"][0]["date"] == "2025-11-16"


def test_week_two_stuck_and_next_focus_as_of_the_end_of_the_week(cli, history):
    ids = history
    data = week2(cli)
    # Planned for 13 days (D) or paused for 4 (G): not yet stuck at 14 days, the default.
    assert data["stuck"]["waiting"] == []
    # D started in W47 and A's priority dropped in W47: both rewound to how they stood.
    waiting = week2(cli, "--stale-days", "4")["stuck"]["waiting"]
    assert [(e["id"], e["status"], e["priority"], e["days_waiting"]) for e in waiting] == [
        (ids["D"], "planned", "high", 13),
        (ids["G"], "paused", "medium", 4),
    ]
    assert data["stuck"]["idle"] == []
    focus = [(e["id"], e["priority"], e["status"]) for e in data["next_focus"]]
    assert focus == [
        (ids["A"], "critical", "active"),
        (ids["B"], "high", "active"),
        (ids["D"], "high", "planned"),
        (ids["C"], "medium", "active"),
        (ids["G"], "medium", "paused"),
    ]
    assert (data["next_focus"][0]["innovation"], data["next_focus"][0]["score"]) == (5, 4.0)
    idle = week2(cli, "--stale-days", "7")["stuck"]["idle"]
    assert [(e["id"], e["status"], e["days_idle"], e["last_activity"]) for e in idle] == [
        (ids["C"], "active", 12, utc("2025-11-04T09:00"))
    ]


def test_week_three_sees_later_changes(cli, history):
    data = cli.json_review("--week", "2025-W47")
    assert data["counts"]["items_started"] == 1 and data["counts"]["items_finished"] == 1
    assert data["counts"]["notes_written"] == 2
    assert data["stuck"]["waiting"] == []  # "Later topic", created the day before, is not stuck
    waiting = cli.json_review("--week", "2025-W47", "--stale-days", "0")["stuck"]["waiting"]
    assert waiting[0]["title"] == "Later topic" and waiting[0]["days_waiting"] == 1
    assert data["experiments"]["items"][0]["change"] == 50.0  # 200 against last week's 150
    assert [f["error"] for f in data["experiments"]["failures"]] == ["KeyError: x"]


def test_default_is_the_current_week(cli, history):
    data = cli.json_review()  # clock: Wednesday 2025-11-19
    assert data["period"]["label"] == "2025-W47"


def test_month_and_range(cli, history):
    month = cli.json_review("--month", "2025-11")
    assert (month["period"]["start"], month["period"]["end"]) == ("2025-11-01", "2025-11-30")
    assert month["counts"]["items_added"] + month["counts"]["tasks_added"] == 10
    assert month["period"]["previous"] == {"start": "2025-10-01", "end": "2025-10-31"}
    span = cli.json_review("--since", "2025-11-10", "--until", "2025-11-16")
    assert span["counts"] == week2(cli)["counts"]
    assert span["period"]["previous"] == {"start": "2025-11-03", "end": "2025-11-09"}


def test_markdown_report(cli, history, isolated):
    text = cli("review", "--week", "2025-W46").stdout
    assert text.startswith("# Review 2025-W46 (2025-11-10 – 2025-11-16)\n")
    assert "**Items**: 2 added · 2 started · 1 paused · 0 finished · 1 dropped" in text
    assert "**Tasks**: 1 added · 1 ticked" in text
    assert "**Runs**: 6 started · 6 succeeded · 1 failed" in text
    for heading in (
        "## 📈 Backlog",
        "## 🔄 Moved this period",
        "## ✅ Finished",
        "## 🧪 Experiments",
        "## 📝 Notes",
        "## 🎯 Next focus",
    ):
        assert heading in text
    assert "cell 3: ValueError: boom 2" in text
    assert (
        "| 1 | #1 Streaming DL | ⭐⭐⭐⭐⭐ | ⭐⭐⭐⭐ | ⭐⭐⭐ | 4 | 🔥🔥 critical | 🚀 active |"
        in text
    )
    assert "▲ +50 (+50.0%) better" in text
    assert "  - code: `experiments/kv` — KV cache study" in text
    assert "![" not in text  # no charts on stdout
    # To a file: charts beside it, linked relatively.
    missing = cli("review", "--week", "2025-W46", "-o", "reports/w46.md", ok=False)
    assert missing.exit_code == 1 and "no such directory: reports" in missing.stderr
    (isolated / "reports").mkdir()
    result = cli("review", "--week", "2025-W46", "-o", "reports/w46.md")
    assert result.stdout == ""
    report = (isolated / "reports" / "w46.md").read_text()
    charts = ("progress", "burndown", "flow", "runs-per-day", "key-metrics", "sweeps")
    for name in charts:
        assert f"(w46-{name}.png)" in report
    assert report.index("(w46-progress.png)") < report.index("## 🔄 Moved") < report.index("(w46-runs-per-day.png)")
    for name in (f"w46-{chart}.png" for chart in charts):
        png = (isolated / "reports" / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_html_report_is_self_contained(cli, history, isolated):
    cli("review", "--week", "2025-W46", "-o", "w46.html")  # format from the suffix
    page = (isolated / "w46.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count('src="data:image/png;base64,') == 6
    assert (
        "http://" not in page
        and "https://" not in page
        and "<link" not in page
        and "<script" not in page
    )
    assert "ValueError: boom 2" in page and "Streaming DL" in page
    assert not list(isolated.glob("*.png"))


def test_empty_period_is_a_short_report(cli):
    result = cli("review", "--week", "2020-W01")
    assert result.exit_code == 0
    assert "No activity recorded in this period." in result.stdout
    assert len(result.stdout.splitlines()) < 10
    data = cli.json_review("--week", "2020-W01")
    assert not any(data["counts"].values())
    assert data["moved"] == data["finished"] == data["notes"] == data["next_focus"] == []
    html_page = cli("review", "--week", "2020-W01", "--format", "html").stdout
    assert "No activity recorded" in html_page and "data:image/png" not in html_page


@pytest.mark.parametrize(
    "args, message",
    [
        (["--week", "2025-W54"], "bad week '2025-W54'"),
        (["--week", "2025-46"], "bad week"),
        (["--month", "2025-13"], "bad month"),
        (["--since", "2025-02-30"], "bad date '2025-02-30' for --since"),
        (["--since", "2025-11-10", "--until", "nope"], "bad date 'nope' for --until"),
        (["--since", "2025-11-10", "--until", "2025-11-01"], "is before --since"),
        (["--until", "2025-11-01"], "--until needs --since"),
        (["--week", "2025-W46", "--month", "2025-11"], "only one of"),
        (["--format", "pdf"], "unknown format 'pdf'"),
        (["--quarter", "2026-Q5"], "bad quarter '2026-Q5'; use YYYY-Qn"),
        (["--quarter", "2026-04"], "bad quarter"),
        (["--quarter", "2026-Q1", "--week", "2026-W01"], "only one of"),
        (["--stale-days", "-1"], "--stale-days must not be negative"),
        (["-o", "no/such/dir/r.html"], "no such directory"),
    ],
)
def test_bad_input_is_one_line(cli, args, message):
    result = cli("review", *args, ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_iso_week_53_and_period_bounds(utc_plus_8):
    from research.review.period import parse_period, utc_bound

    period = parse_period(week="2020-W53")
    assert (period.start, period.last_day) == (date(2020, 12, 28), date(2021, 1, 3))
    assert utc_bound(period.start) == "2020-12-27T16:00:00.000000+00:00"
    assert parse_period(week="2025w1").label == "2025-W01"
    assert parse_period(today=date(2025, 11, 16)).label == "2025-W46"  # Sunday ends the ISO week
    jan = parse_period(month="2025-01")
    assert (jan.prev_start, jan.end) == (date(2024, 12, 1), date(2025, 2, 1))


def test_importing_the_command_stays_light():
    import subprocess as sp
    import sys

    code = "import sys, research.cli.review; print(any(m in sys.modules for m in ('sqlmodel', 'matplotlib', 'research.review')))"
    assert (
        sp.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_html_renders_in_headless_chromium(cli, history, isolated):
    cli("review", "--week", "2025-W46", "-o", "w46.html")
    shot = isolated / "shot.png"
    result = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={isolated / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            (isolated / "w46.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), result.stderr[-2000:]
    assert len(shot.read_bytes()) > 20_000
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels[..., :3].std() > 0.05  # text, tables and charts, not a blank page


def test_final_metrics_take_the_last_value_by_step_then_time():
    from research.runs.metrics import final_metrics

    entries = [
        {"name": "loss", "value": 2.0, "step": 0, "time": 1.0},
        {"name": "loss", "value": 1.0, "step": 2, "time": 2.0},
        {"name": "loss", "value": 1.5, "step": 1, "time": 3.0},
        {"name": "acc", "value": 0.5, "step": None, "time": 1.0},
        {"name": "acc", "value": 0.7, "step": None, "time": 0.5},
        {"name": "tags", "value": ["a"], "step": None, "time": None},
    ]
    assert final_metrics(entries) == {"loss": 1.0, "acc": 0.5, "tags": ["a"]}


def test_dead_running_run_is_marked_interrupted(cli, monkeypatch, utc_plus_8):
    h = History(cli, monkeypatch)
    item = h.add("Exp")
    from research.store.db import session_scope
    from research.store.models import Run

    with session_scope(h.db, write=True) as session:
        session.add(
            Run(
                item_id=item,
                status="running",
                notebook="nb.ipynb",
                queued_at=utc("2025-11-11T10:00"),
                started_at=utc("2025-11-11T10:00"),
                heartbeat_at=utc("2025-11-11T10:00"),
            )
        )
    h.at("2025-11-12T10:00")
    result = cli("review", "--week", "2025-W46", "--format", "json")
    assert "marked 1 run(s)" in result.stderr
    experiment = json.loads(result.stdout)["experiments"]["items"][0]
    assert experiment["by_status"] == {"interrupted": 1}


def test_json_to_a_file_by_suffix(cli, history, isolated):
    result = cli("review", "--week", "2025-W46", "-o", "w46.json")
    assert result.stdout == "" and "wrote" in result.stderr
    assert json.loads((isolated / "w46.json").read_text())["counts"]["runs_failed"] == 1


def test_both_forms_write_every_section_of_the_one_model(cli, history):
    """The sections are defined once (review.sections); each renderer writes all of their text."""
    import html as html_module

    from research.review.sections import (
        Bullets,
        Notes,
        Paragraph,
        Styled,
        SubHeading,
        Table,
        review_sections,
    )

    def plain(parts):
        return "".join(p.text if isinstance(p, Styled) else p for p in parts)

    review = cli.json_review("--week", "2025-W46")
    markdown = cli("review", "--week", "2025-W46").stdout
    page = cli("review", "--week", "2025-W46", "--format", "html").stdout
    page_text = html_module.unescape(re.sub(r"<[^>]+>", "", page))
    markdown_plain = markdown.replace("**", "").replace("`", "").replace("_", "")
    sections = review_sections(review)
    assert [s.title for s in sections] == [
        "📈 Backlog", "🔄 Moved this period", "✅ Finished", "🧪 Experiments", "📝 Notes", "🎯 Next focus"]
    for section in sections:
        assert f"## {section.title}" in markdown and f"<h2>{section.title}</h2>" in html_module.unescape(page)
        for block in section.blocks:
            if isinstance(block, (Paragraph, SubHeading)):
                texts = [plain(block.parts)]
            elif isinstance(block, Bullets):
                texts = [plain(e.parts) for e in block.entries] + [plain(c) for e in block.entries for c in e.children]
            elif isinstance(block, Notes):
                texts = [n["text"].splitlines()[0] for n in block.notes]
            elif isinstance(block, Table):
                texts = block.header + [c.text if isinstance(c, Styled) else str(c) for row in block.rows for c in row
                                        if isinstance(c, str | Styled)]
            for text in texts:
                assert text.replace("_", "") in markdown_plain, (section.title, text)
                assert text in page_text, (section.title, text)
