"""The review's pictures: backlog charts after a week with no runs, CJK in charts and page,
and the HTML page as a real browser shows it (headless Chromium, screenshot kept)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "markdown" / "seed-conventions.md"
ARTIFACTS = Path(os.environ.get("RESEARCH_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))


def _ordinary_week(cli, monkeypatch, source: Path) -> None:
    """Import a Chinese backlog on the Sunday before 2026-W10, then a week of plain backlog work:
    tasks ticked on three days, a direction started, one paused, a task added, notes written."""
    monkeypatch.setenv("RESEARCH_NOW", "2026-03-01T09:00")
    shutil.copy(source, "backlog.md")
    cli("import", "backlog.md")
    tasks = [t for t in cli.json("list", "--tasks", "--all") if t["kind"] == "task" and t["status"] != "done"]
    items = [i for i in cli.json("list", "--all") if i["kind"] == "item"]
    headings = {i["parent_id"] for i in items}  # over other items: not directions themselves
    directions = [i for i in items if i["id"] not in headings and i["status"] == "planned" and i["progress"]["total"]]
    assert len(tasks) >= 4 and len(directions) >= 2
    for day, task in zip(("03", "04", "04", "06"), tasks, strict=False):
        monkeypatch.setenv("RESEARCH_NOW", f"2026-03-{day}T10:00")
        cli("check", str(task["id"]))
    monkeypatch.setenv("RESEARCH_NOW", "2026-03-04T15:00")
    cli("start", str(directions[0]["id"]))
    cli("pause", str(directions[1]["id"]))
    cli("add", "汇点位置的消融实验", "--parent", str(directions[0]["id"]), "--task")
    cli("note", str(directions[0]["id"]), "**发现**: 驱逐后困惑度上升\n\n- 汇点 4 个足够")
    monkeypatch.setenv("RESEARCH_NOW", "2026-03-06T18:00")
    cli("note", "周回顾：本周推进了 KV 缓存方向")
    monkeypatch.setenv("RESEARCH_NOW", "2026-03-07T12:00")


def _review(cli, *args):
    return json.loads(cli("review", "--format", "json", *args).stdout)


def test_a_week_of_backlog_work_with_no_runs_has_backlog_charts(cli, monkeypatch):
    from research.review.charts import chart_pngs

    _ordinary_week(cli, monkeypatch, FIXTURE)
    review = _review(cli, "--week", "2026-W10")
    c = review["counts"]
    assert (c["tasks_ticked"], c["items_started"], c["items_paused"], c["tasks_added"]) == (4, 1, 1, 1)
    # Two notes written, and the document's own note dated 2026-03-02 (its journal date).
    assert c["runs_started"] == 0 and c["notes_written"] == 3
    assert c["items_added"] == 0  # imported the day before the week
    progress = review["charts"]["progress"]
    assert sum(p["ticked"] for p in progress) == 4 and sum(p["added"] for p in progress) == 1
    burndown = review["charts"]["burndown"]
    n = burndown["start"]["tasks"]
    # Ticked one on Tuesday, two on Wednesday (and one added), one on Friday; Sunday is to come.
    assert burndown["tasks"] == [n, n - 1, n - 2, n - 2, n - 3, n - 3, None]
    charts = chart_pngs(review)
    assert [chart.name for chart in charts] == ["progress", "burndown", "flow"]
    for chart in charts:
        assert chart.png.startswith(b"\x89PNG") and len(chart.png) > 8000 and chart.group == "backlog"


def test_the_import_counts_its_directions_and_tasks_as_added(cli, monkeypatch):
    _ordinary_week(cli, monkeypatch, FIXTURE)
    imported = _review(cli, "--week", "2026-W09")["counts"]
    everything = cli.json("list", "--tasks", "--all")
    tasks = sum(1 for i in everything if i["kind"] == "task")
    # The preface, the legend and the notes' placeholder are document text, not items.
    assert imported["items_added"] == len(everything) - tasks and imported["tasks_added"] == tasks - 1
    assert all(i["title"] not in ("文档说明", "TODO维护机制", "状态标记") for i in everything)


def _no_missing_glyphs(charts):
    for chart in charts:
        assert chart.missing_glyphs == (), (chart.name, chart.missing_glyphs[:3])


def test_chinese_titles_render_with_an_installed_cjk_font(cli, monkeypatch, capsys):
    from research.review.charts import chart_pngs, cjk_font

    if cjk_font() is None:
        pytest.skip("no CJK-capable font installed (Debian: fonts-noto-cjk)")
    _ordinary_week(cli, monkeypatch, FIXTURE)
    charts = chart_pngs(_review(cli, "--week", "2026-W10"))
    _no_missing_glyphs(charts)
    assert "no CJK-capable font" not in capsys.readouterr().err


def test_without_a_cjk_font_charts_say_so_once_and_label_by_id(cli, monkeypatch, capsys):
    from research.review import charts as charts_module

    _ordinary_week(cli, monkeypatch, FIXTURE)
    review = _review(cli, "--week", "2026-W10")
    monkeypatch.setattr(charts_module, "cjk_font", lambda: None)
    monkeypatch.setattr(charts_module, "_warned_no_cjk", False)
    capsys.readouterr()
    first = charts_module.chart_pngs(review)
    second = charts_module.chart_pngs(review)
    _no_missing_glyphs(first + second)  # ids instead of boxes
    err = capsys.readouterr().err
    assert err.count("no CJK-capable font is installed") == 1 and len(err.strip().splitlines()) == 1
    labels = charts_module._Labels(have_cjk=False)
    assert labels.item({"id": 7, "title": "KV 缓存的驱逐策略"}) == "#7"
    assert labels.item({"id": 8, "title": "🚀 Paged attention"}) == "#8 Paged attention"


def test_the_users_seed_renders_without_missing_glyphs(cli, monkeypatch, seed_todo):
    from research.review.charts import chart_pngs, cjk_font

    _ordinary_week(cli, monkeypatch, seed_todo)
    charts = chart_pngs(_review(cli, "--week", "2026-W10"))
    assert [chart.name for chart in charts] == ["progress", "burndown", "flow"]
    if cjk_font() is not None:
        _no_missing_glyphs(charts)


def test_sweep_chart_draws_the_metric_against_each_parameter(cli, monkeypatch):
    from tests.test_review import History

    h = History(cli, monkeypatch)
    h.at("2025-11-11T09:00")
    item = h.add("Loader sweep")
    for n, (workload, budget) in enumerate((("heavy_tailed", 8), ("heavy_tailed", 16), ("bursty", 8), ("bursty", 16))):
        h.run(item, "succeeded", "2025-11-11T10:00", "2025-11-11T10:10", {"throughput": 10.0 + n},
              sweep="sw1", params={"workload": workload, "budget_mb": budget, "lr": 10.0 ** -n})
    h.at("2025-11-12T09:00")
    review = _review(cli, "--week", "2025-W46")
    assert review["experiments"]["sweeps"][0]["params"] == ["workload", "budget_mb", "lr"]
    from research.review.charts import chart_pngs

    names = [c.name for c in chart_pngs(review)]
    assert names[-3:] == ["runs-per-day", "key-metrics", "sweeps"]


# ---------------------------------------------------------------------------
# A real browser


def _chromium():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Chromium and ChromeDriver are not installed (Debian: chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,1000", "--no-first-run", "--disable-background-networking"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@pytest.mark.slow
def test_the_html_review_in_headless_chromium(cli, monkeypatch, isolated):
    """Open the page, wait for its images, check they decoded, that no console error was
    logged, and that the Chinese titles were set in a CJK font; keep a screenshot."""
    from tests.test_review import History

    _ordinary_week(cli, monkeypatch, FIXTURE)
    h = History(cli, monkeypatch)
    item = cli.json("list")[0]["id"]
    for n, lr in enumerate((1e-4, 3e-4, 1e-3)):
        h.run(item, "succeeded", "2026-03-05T10:00", "2026-03-05T10:30", {"throughput": 90.0 + 10 * n},
              sweep="sw1", params={"lr": lr, "workload": "heavy_tailed"})
    cli("note", str(item), "<script>alert('x')</script> <img src=x onerror=alert(1)> [a](javascript:alert(2))")
    cli("review", "--week", "2026-W10", "-o", "review.html")
    page = isolated / "review.html"
    browser = _chromium()
    try:
        browser.get(page.as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])"
        )
        assert len(images) >= 5 and all(done and width > 300 for done, width, _alt in images), images
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == [], errors
        # The fonts Chromium used for the first Chinese heading (through the DevTools protocol).
        browser.execute_cdp_cmd("DOM.enable", {})
        browser.execute_cdp_cmd("CSS.enable", {})
        root = browser.execute_cdp_cmd("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
        heading = browser.execute_cdp_cmd("DOM.querySelector", {"nodeId": root, "selector": "h3"})["nodeId"]
        fonts = browser.execute_cdp_cmd("CSS.getPlatformFontsForNode", {"nodeId": heading})["fonts"]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1200, min(6000, height + 100))
        browser.save_screenshot(str(ARTIFACTS / "review-week.png"))
    finally:
        browser.quit()
    from research.review.charts import cjk_font

    heading_text = page.read_text()
    assert any(ord(ch) > 0x2E80 for ch in heading_text.split("<h3>", 1)[1].split("</h3>", 1)[0])
    if cjk_font() is not None:
        assert any(
            any(word in f["familyName"] for word in ("CJK", "Source Han", "WenQuanYi", "Droid Sans Fallback"))
            for f in fonts
        ), fonts
    shot = (ARTIFACTS / "review-week.png").read_bytes()
    assert shot.startswith(b"\x89PNG") and len(shot) > 50_000


def test_chart_workers_draw_what_this_process_would_and_survive_being_killed(cli, monkeypatch):
    import signal
    import time

    from research.review.charts import ChartWorkers, chart_tasks, draw_chart

    _ordinary_week(cli, monkeypatch, FIXTURE)
    tasks = chart_tasks(_review(cli, "--week", "2026-W10"))
    here = [draw_chart(task) for task in tasks]
    workers = ChartWorkers()
    try:
        there = workers.draw(tasks)
    finally:
        workers.close()
    assert [c.name for c, _ in there] == [c.name for c, _ in here] == ["progress", "burndown", "flow"]
    assert [c.png for c, _ in there] == [c.png for c, _ in here]  # the same pixels, byte for byte
    assert not workers._process.is_alive()
    killed = ChartWorkers()
    os.kill(killed._process.pid, signal.SIGKILL)
    killed._process.join()
    try:
        assert [c.png for c, _ in killed.draw(tasks)] == [c.png for c, _ in here]  # drawn here instead
    finally:
        killed.close()
    unused = ChartWorkers()
    started = time.monotonic()
    unused.close()  # the command failed before it had charts: the worker stops at once
    assert not unused._process.is_alive() and time.monotonic() - started < 2


def test_chart_labels_are_clipped_by_display_width():
    from research.review.charts import _Labels

    labels = _Labels(have_cjk=True)
    assert labels.item({"id": 3, "title": "short"}, 26) == "#3 short"
    wide = labels.item({"id": 22, "title": "探索流式深度学习：实时学习的模型架构与系统设计"}, 26)
    assert wide.endswith("…") and wide.startswith("#22 探索")
    assert sum(2 if ord(ch) > 0x2E80 else 1 for ch in wide) <= 26


@pytest.mark.slow
def test_ctrl_c_during_a_review_leaves_no_process_and_no_half_written_page(cli, monkeypatch, isolated):
    import signal
    import subprocess
    import sys
    import time

    _ordinary_week(cli, monkeypatch, FIXTURE)
    code = "import sys\nfrom research.cli import app\napp(sys.argv[1:], prog_name='research')"
    for delay in (0.3, 0.6, 0.9):
        page = isolated / f"r{delay}.html"
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "review", "--week", "2026-W10", "-o", str(page)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        time.sleep(delay)
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:  # it had finished
            pass
        _out, err = proc.communicate(timeout=30)
        # 130: interrupted in the command; -SIGINT: as Python was leaving, after its work.
        assert proc.returncode in (0, 130, -signal.SIGINT), err
        assert "Traceback" not in err
        if proc.returncode == 130:
            assert err.strip().splitlines() == ["Interrupted."]
        if page.exists() or proc.returncode == 0:  # interrupted after writing it: whole
            assert page.read_text().rstrip().endswith("</html>")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the chart worker and its fork are gone too
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("a process of the review's group is still running")
