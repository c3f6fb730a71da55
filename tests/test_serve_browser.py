"""`research serve` in a real browser: Debian's Chromium driven by Selenium through its own
chromedriver. Opens the backlog, filters it, opens an item, ticks a task, and watches a
running run's metrics change on its page; no console errors (a Content-Security-Policy
violation is one). Screenshots go to test-artifacts/serve/ (or $RESEARCH_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import REPO_ROOT, Cli, research_env, wait_for, write_notebook

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                       reason="chromium and chromium-driver are not installed"),
]
selenium = pytest.importorskip("selenium")

ARTIFACTS = Path(os.environ.get("RESEARCH_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts")) / "serve"
# Records a step every 0.4 s for about 8 s: long enough to watch from a page.
SLOW_NOTEBOOK = ("steps: int = 20\npause: float = 0.4",
                 "import time\nfrom research import record\nfor step in range(steps):\n"
                 "    record('loss', 1.0 / (step + 1), step=step)\n    time.sleep(pause)\nrecord('done', 1)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(isolated):
    cli = Cli()
    cli("init")
    cli("add", "流式 attention probe 😀", "--slug", "probe", "-t", "web", "-P", "critical",
        "-b", "Body with **bold** and a table:\n\n| 列 | value |\n|---|---|\n| 一 | 1 |\n")
    cli("add", "Read the FlashAttention-2 paper", "-p", "probe", "--task")
    cli("add", "Write the Triton kernel", "-p", "probe", "--task")
    cli("note", "probe", "First note, with 中文 and an emoji 🚀")
    (isolated / "notebooks").mkdir()
    write_notebook(isolated / "notebooks" / "slow.ipynb", SLOW_NOTEBOOK[1], parameters=SLOW_NOTEBOOK[0])
    cli("link", "probe", "notebooks/slow.ipynb", "--best", "min:loss")
    from research.store.db import dispose_engines

    dispose_engines()
    port = free_port()
    env = research_env(isolated / "todo.db")
    server = subprocess.Popen([sys.executable, "-m", "research", "serve", "--port", str(port)], cwd=isolated, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def answers():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            assert server.poll() is None, server.stderr.read()
            return False

    wait_for(answers, timeout=60)
    yield cli, base, env, isolated
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()


def start_browser(javascript: bool = True):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--lang=en-US"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture
def browser():
    driver = start_browser()
    yield driver
    driver.quit()


def titles(driver) -> list[str]:
    """The backlog's title links, read again if a navigation replaced the page meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(20):
        try:
            return [a.text for a in driver.find_elements(By.CSS_SELECTOR, "td.title a")]
        except StaleElementReferenceException:
            time.sleep(0.2)
    raise AssertionError("the page kept changing")


def page_text(driver) -> str:
    """The page's text, or "" while a navigation has no page to read yet."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except WebDriverException:
        return ""


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def shoot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height, 600), 4000))
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)
    return path


def test_backlog_filter_item_tick_and_a_live_run(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    cli, base, env, root = served
    driver = browser

    # The backlog: the three experiment items and the probe, as a tree with progress.
    driver.get(base + "/")
    text = driver.find_element(By.TAG_NAME, "body").text
    for title in ("Backpressure DataLoader", "Incremental Transformer", "Streaming attention", "流式 attention probe 😀"):
        assert title in text
    assert driver.find_elements(By.CSS_SELECTOR, "progress[max='2']")
    shoot(driver, "backlog")

    # Filter: priority critical; the page reloads with the filter applied (the script submits on change).
    Select(driver.find_element(By.NAME, "priority")).select_by_value("critical")
    wait_for(lambda: "priority=critical" in driver.current_url, timeout=20)
    shown = wait_for(lambda: driver.execute_script("return document.readyState") == "complete" and titles(driver))
    assert "流式 attention probe 😀" in shown and not any("Backpressure" in t for t in shown)
    search = driver.find_element(By.NAME, "search")
    search.send_keys("流式")
    driver.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait_for(lambda: "search=" in driver.current_url, timeout=20)
    assert titles(driver)[0] == "流式 attention probe 😀"
    shoot(driver, "backlog-filtered")

    # The item: body rendered, checklist; tick a task.
    driver.find_element(By.LINK_TEXT, "流式 attention probe 😀").click()
    wait_for(lambda: "/items/" in driver.current_url, timeout=20)
    assert driver.find_element(By.CSS_SELECTOR, "section.body strong").text == "bold"
    assert driver.find_element(By.CSS_SELECTOR, "section.body table")
    box = driver.find_element(By.CSS_SELECTOR, "button[aria-label='tick Read the FlashAttention-2 paper']")
    box.click()
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "button[aria-label='untick Read the FlashAttention-2 paper']"),
             timeout=20)
    assert cli.json("show", "read-the-flashattention-2-paper")["status"] == "done"
    shoot(driver, "item-ticked")

    # A note from the page.
    driver.find_element(By.ID, "note-text").send_keys("Noted in the browser, 浏览器 ✓")
    driver.find_element(By.CSS_SELECTOR, "#note-form button").click()
    wait_for(lambda: "Noted in the browser, 浏览器 ✓" in page_text(driver), timeout=20)

    # A running run: its page follows the loss as the notebook records it, then shows the end.
    run = subprocess.Popen([sys.executable, "-m", "research", "run", "probe"], cwd=root, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(r["status"] == "running" for r in cli.json("runs", "list")), timeout=90)
        run_id = cli.json("runs", "list")[-1]["id"]
        driver.get(f"{base}/runs/{run_id}")
        assert driver.find_element(By.ID, "live")

        def step_shown():
            cells = driver.find_elements(By.CSS_SELECTOR, "#live-metrics tr[data-metric='loss'] td")
            return int(cells[2].text) if len(cells) == 3 and cells[2].text.isdigit() else None

        first = wait_for(step_shown, timeout=60)
        later = wait_for(lambda: (step_shown() or 0) >= first + 3 and step_shown(), timeout=60)
        assert later >= first + 3  # updated in place, without reloading by hand
        assert int(driver.find_element(By.ID, "live").get_attribute("data-updates")) >= 3
        shoot(driver, "run-live")
        assert run.wait(120) == 0, run.stderr.read()
        wait_for(lambda: driver.find_element(By.ID, "run-status").text == "succeeded", timeout=30)
        assert "done" in driver.find_element(By.TAG_NAME, "body").text
        shoot(driver, "run-ended")
    finally:
        if run.poll() is None:
            run.kill()

    # The item's page now has the run and its key metric; the sweep list and the review open.
    driver.get(base + "/items/probe")
    assert driver.find_elements(By.CSS_SELECTOR, "table.runs tbody tr")
    driver.get(base + "/review")
    assert driver.find_element(By.TAG_NAME, "h1").text.startswith("Review 20")
    wait_for(lambda: driver.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"), timeout=60)
    shoot(driver, "review")
    driver.get(base + "/sweeps")
    assert console_errors(driver) == []


def test_reading_filtering_and_ticking_work_with_scripts_off(served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    cli, base, env, root = served
    driver = start_browser(javascript=False)
    try:
        driver.get(base + "/")
        Select(driver.find_element(By.NAME, "tag")).select_by_value("web")
        assert "tag=web" not in driver.current_url  # no script: nothing happens until the button
        driver.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
        wait_for(lambda: "tag=web" in driver.current_url, timeout=20)
        assert titles(driver) == ["流式 attention probe 😀"]
        driver.find_element(By.LINK_TEXT, "流式 attention probe 😀").click()
        driver.find_element(By.CSS_SELECTOR, "button[aria-label='tick Write the Triton kernel']").click()
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "button[aria-label='untick Write the Triton kernel']"),
                 timeout=20)
        assert cli.json("show", "write-the-triton-kernel")["status"] == "done"
        shoot(driver, "item-without-scripts")
    finally:
        driver.quit()
