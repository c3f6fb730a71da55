"""`research serve`: every page through Starlette's test client, the filters, the writes and
their undo, the token, Host and CSRF checks, path traversal and escaping."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support import Cli, write_notebook
from tests.support import table_rows as rows

XSS_TITLE = 'Probe <script>alert("t")</script><img src=x onerror=alert(1)>'
XSS_BODY = ("Body **bold**, [a link](https://example.org), [bad](javascript:alert(2)), [worse](JaVa\tScript:alert(3))\n\n"
            "<script>alert(4)</script> <img src=x onerror=alert(5)> 流式注意力 😀\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
XSS_NOTE = "note <script>alert(6)</script> [x](javascript:alert(7)) 中文"
# A notebook with stepped metrics, an artifact, a parameter that carries markup, and an
# output that holds a script (the rendered notebook must not run it).
WEB_NOTEBOOK_PARAMS = 'steps: int = 4\nlabel = "<b>plain</b>"\nfail: bool = False\n'
WEB_NOTEBOOK_CELLS = (
    "from research import record, record_artifact\n"
    "for step in range(steps):\n"
    "    record('loss', 1.0 / (step + 1), step=step)\n"
    "record('accuracy', 0.5 + 0.1 * steps)",
    "import os\n"
    "folder = os.environ.get('RESEARCH_RUN_DIR', '.')\n"
    "path = os.path.join(folder, 'artifacts', 'notes.txt')\n"
    "os.makedirs(os.path.dirname(path), exist_ok=True)\n"
    "open(path, 'w').write('hello from the run')\n"
    "record_artifact(path)",
    "from IPython.display import HTML, display\n"
    "display(HTML('<script>window.ran = 1</script><b id=\"shown\">bold output</b>'))",
    "if fail:\n    raise ValueError('boom <script>x</script>')",
)


def _in_project(db: Path, *args: str, ok: bool = True):
    old = os.environ.get("RESEARCH_DB")
    os.environ["RESEARCH_DB"] = str(db)
    try:
        return Cli()(*args, ok=ok)
    finally:
        if old is None:
            os.environ.pop("RESEARCH_DB", None)
        else:
            os.environ["RESEARCH_DB"] = old
        from research.store.db import dispose_engines

        dispose_engines()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project with the three experiment items, a probe item (markup in every field),
    tasks, a note, two runs (one failed) and a three-trial sweep."""
    root = tmp_path_factory.mktemp("served")
    db = root / "todo.db"
    cwd = os.getcwd()
    os.chdir(root)
    try:
        _in_project(db, "init")
        _in_project(db, "add", XSS_TITLE, "--slug", "probe", "-t", "web", "-P", "high", "-b", XSS_BODY, "--due", "2026-12-24")
        _in_project(db, "add", "First task", "-p", "probe", "--task")
        _in_project(db, "add", "Second task 🔥", "-p", "probe", "--task")
        _in_project(db, "note", "probe", XSS_NOTE)
        (root / "notebooks").mkdir(exist_ok=True)
        write_notebook(root / "notebooks" / "web.ipynb", *WEB_NOTEBOOK_CELLS, parameters=WEB_NOTEBOOK_PARAMS)
        _in_project(db, "link", "probe", "notebooks/web.ipynb", "--best", "max:accuracy")
        _in_project(db, "run", "probe", "-p", "steps=5")
        _in_project(db, "run", "probe", "-p", "fail=true", ok=False)
        _in_project(db, "sweep", "probe", "--space", "steps=int(1,6)", "--space", "label=choice(a,<i>b</i>)",
                    "--trials", "3", "--maximize", "accuracy", "--sampler", "random", "--seed", "1")
    finally:
        os.chdir(cwd)
    return root


def client_for(root: Path, host: str = "127.0.0.1", token: str | None = None):
    from starlette.testclient import TestClient

    from research.serve.app import create_app
    from research.serve.security import Guard

    guard = Guard(host=host, token=token)
    app = create_app(root / "todo.db", root, guard)
    return TestClient(app, base_url=f"http://{host}:8765"), guard


@pytest.fixture(scope="module")
def client(project):
    return client_for(project)[0]


def no_live_markup(html: str) -> None:
    """Nothing a user typed became a tag or a script link."""
    assert "<script>alert" not in html and "<script>window" not in html
    assert not re.search(r"<img[^>]*onerror", html)
    assert not re.search(r"""href\s*=\s*["']?\s*java""", html, re.IGNORECASE)
    assert "<i>b</i>" not in html and "<b>plain</b>" not in html


# --------------------------------------------------------------------------- pages


def test_the_backlog_page_is_a_tree_with_progress(client, project):
    page = client.get("/")
    assert page.status_code == 200
    html = page.text
    for title in ("Backpressure DataLoader", "Incremental Transformer", "Streaming attention"):
        assert title in html
    assert '<progress value="0" max="2">' in html  # the probe's checklist, counted as `research list` counts it
    assert "First task" not in html
    no_live_markup(html)
    with_tasks = client.get("/?tasks=1").text
    assert re.search(r'<tr class="task depth-1">\s*<td class="num">\d+</td>\s*<td class="title"><a href="/items/first-task">☐ First task', with_tasks)
    assert "&lt;script&gt;alert(&#34;t&#34;)&lt;/script&gt;" in html


@pytest.mark.parametrize(("query", "present", "absent"), [
    ("?tag=web&tree=0", ["probe"], ["Streaming attention"]),
    ("?priority=critical&tree=0", ["Incremental Transformer"], ["Backpressure DataLoader", "/items/probe"]),
    ("?search=%E6%B5%81%E5%BC%8F&tree=0", ["/items/probe"], ["Streaming attention"]),  # 流式, in the probe's body
    ("?due-before=2026-12-31&tree=0", ["/items/probe"], ["Backpressure DataLoader"]),
    ("?due-before=2026-12-01&tree=0", ["No items match"], ["/items/probe"]),
    ("?status=paused", ["No items match"], ["/items/probe"]),
    ("?under=probe&tasks=1", ["First task", "Second task"], ["Streaming attention"]),
    ("?sort=score&tree=0", ["Streaming attention", "/items/probe"], []),
])
def test_the_backlog_filters_as_research_list_does(client, query, present, absent):
    html = client.get("/" + query).text
    for text in present:
        assert text in html, (query, text)
    for text in absent:
        assert text not in html, (query, text)


@pytest.mark.parametrize(("query", "message"), [
    ("?status=bogus", "unknown status"), ("?priority=urgent-ish", "unknown priority"),
    ("?due-before=soon", "bad date"), ("?under=nosuch", "no item"), ("?sort=random", "unknown sort"),
])
def test_bad_filters_are_one_clear_line(client, query, message):
    page = client.get("/" + query)
    assert page.status_code in (400, 404)
    assert message in page.text and "Traceback" not in page.text


def test_the_same_filter_as_the_cli_gives_the_same_items(client, project):
    listed = json.loads(_in_project(project / "todo.db", "list", "--tag", "web", "--all", "--json").stdout)
    html = client.get("/?tag=web&all=1&tree=0").text
    assert [row["slug"] for row in listed] == re.findall(r'<td class="title"><a href="/items/([^"]+)"', html)


def test_an_item_page_has_its_fields_body_checklist_notes_runs_and_chart(client):
    html = client.get("/items/probe").text
    assert "<strong>bold</strong>" in html and '<a href="https://example.org"' in html
    assert "<table>" in html  # the body's Markdown table
    assert "流式注意力 😀" in html
    assert "First task" in html and 'aria-label="tick First task"' in html
    assert "note &lt;script&gt;" in html and "中文" in html
    assert "#1" in html and "#2" in html and "★ best" in html
    assert "cell 4: ValueError" in html
    assert '<svg class="chart"' in html  # accuracy over runs
    no_live_markup(html)


def test_an_item_by_id_and_by_slug_prefix(client):
    assert client.get("/items/4").status_code == 200
    assert "Streaming attention" in client.get("/items/streaming-att").text
    assert client.get("/items/nosuch").status_code == 404


def test_a_run_page_has_params_metrics_charts_environment_files(client):
    html = client.get("/runs/1").text
    assert "succeeded" in html and "accuracy" in html
    assert "steps" in html and "&lt;b&gt;plain&lt;/b&gt;" in html
    assert '<svg class="chart"' in html  # loss by step
    assert "python" in html  # the environment
    assert 'href="/runs/1/notebook"' in html and "artifacts/notes.txt" in html
    no_live_markup(html)


def test_a_failed_run_shows_its_error_and_cell(client):
    html = client.get("/runs/2").text
    assert "failed" in html and "Cell 4" in html and "ValueError" in html
    assert "raise ValueError" in html  # the cell's source
    assert "boom &lt;script&gt;" in html
    no_live_markup(html)


def test_the_output_notebook_renders_under_a_policy_that_runs_nothing(client):
    page = client.get("/runs/1/notebook")
    assert page.status_code == 200
    assert "bold output" in page.text and "hello from the run" in page.text
    assert "<script" not in page.text.replace("&lt;script", "")  # the output's script became text
    assert "cdnjs" not in page.text
    policy = page.headers["content-security-policy"]
    assert "sandbox" in policy and "script-src" not in policy and "default-src 'none'" in policy


def test_artifacts_are_served_from_the_runs_folder_only(client, project):
    assert client.get("/runs/1/files/artifacts/notes.txt").text == "hello from the run"
    assert client.get("/runs/1/files/output.ipynb").status_code == 200
    outside = project / "secret.txt"
    outside.write_text("not yours")
    for path in ("../../secret.txt", "..%2F..%2Fsecret.txt", "%2e%2e/%2e%2e/secret.txt", "%2Fetc%2Fpasswd",
                 "..\\..\\secret.txt", "artifacts/../../../secret.txt", "artifacts", "", "nosuch"):
        page = client.get(f"/runs/1/files/{path}")
        assert page.status_code == 404, path
        assert "not yours" not in page.text
    run_dir = project / "runs" / "1"
    (run_dir / "link-out").symlink_to(outside)
    (run_dir / "dir-out").symlink_to(project)
    assert client.get("/runs/1/files/link-out").status_code == 404
    assert client.get("/runs/1/files/dir-out/secret.txt").status_code == 404
    (run_dir / "link-in").symlink_to(run_dir / "artifacts" / "notes.txt")
    assert client.get("/runs/1/files/link-in").text == "hello from the run"


def test_the_sweep_pages(client):
    listing = client.get("/sweeps").text
    (sweep_id,) = set(re.findall(r'href="/sweeps/([^"]+)"', listing))
    html = client.get(f"/sweeps/{sweep_id}").text
    assert "accuracy by trial" in html and "best so far" in html
    assert "accuracy against steps" in html and "accuracy against label" in html
    assert "Parallel coordinates" in html
    assert html.count('<svg class="chart"') == 4
    assert "steps=int(1, 6)" in html
    no_live_markup(html)
    assert client.get("/sweeps/nosuch").status_code == 404


@pytest.mark.slow
def test_review_pages_for_a_week_a_month_and_a_quarter(client):
    from research.clock import now

    today = now()
    week = f"{today.isocalendar().year}-W{today.isocalendar().week:02d}"
    html = client.get(f"/review?week={week}").text
    assert "Week" in html and "Experiments" in html
    assert 'src="/review/chart/' in html
    chart = re.search(r'src="(/review/chart/[^"]+)"', html).group(1).replace("&amp;", "&")
    image = client.get(chart)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert client.get(f"/review?month={today:%Y-%m}").status_code == 200
    assert client.get(f"/review?quarter={today.year}-Q{(today.month - 1) // 3 + 1}").status_code == 200
    bad = client.get("/review?week=2026-W99")
    assert bad.status_code == 400 and "Traceback" not in bad.text
    no_live_markup(html)


def test_every_response_carries_the_security_headers(client):
    for url in ("/", "/items/probe", "/runs/1", "/sweeps", "/items/nosuch", "/static/app.js"):
        headers = client.get(url).headers
        policy = headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy, url
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"


def test_pages_load_no_inline_script_and_nothing_from_elsewhere(client):
    for url in ("/", "/items/probe", "/runs/1", "/sweeps"):
        html = client.get(url).text
        assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/static/app.js" defer>'], url
        assert not re.search(r"""(src|href)=["']https?://(?!example\.org)""", html), url
        assert " style=" not in html and "<style" not in html, url


def test_get_never_writes(client, project):
    before = (rows(project / "todo.db", "event"), rows(project / "todo.db", "item"))
    for url in ("/", "/items/probe", "/runs/1", "/runs/1/live", "/sweeps", "/items/probe/status?status=done"):
        client.get(url)
    assert (rows(project / "todo.db", "event"), rows(project / "todo.db", "item")) == before


def test_live_json_of_a_run(client):
    data = client.get("/runs/1/live").json()
    assert data["status"] == "succeeded" and data["open"] is False


# --------------------------------------------------------------------------- writes


@pytest.fixture
def small(isolated):
    """A fresh backlog for tests that write: an item with two tasks."""
    cli = Cli()
    cli("init", "--empty")
    cli("add", "Direction <b>one</b>", "--slug", "one")
    cli("add", "Task A", "-p", "one", "--task")
    cli("add", "Task B", "-p", "one", "--task")
    client, guard = client_for(isolated)
    return cli, client, guard


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_tick_a_task_then_undo_it(small, isolated):
    cli, client, guard = small
    html = client.get("/items/one").text
    page = client.post("/items/2/status", data={"csrf": _csrf(html), "status": "done", "next": "/items/one"},
                       follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/items/one"
    assert cli.json("show", "2")["status"] == "done"
    assert 'aria-label="untick Task A"' in client.get("/items/one").text
    events = [e for e in rows(isolated / "todo.db", "event") if e["action"] == "check"]
    assert len(events) == 1
    cli("undo")
    assert cli.json("show", "2")["status"] == "planned"


def test_change_status_and_add_a_note_then_undo_each(small, isolated):
    cli, client, guard = small
    token = guard.csrf_token
    assert client.post("/items/one/status", data={"csrf": token, "status": "active"}).status_code == 200
    assert cli.json("show", "one")["status"] == "active"
    page = client.post("/items/one/notes", data={"csrf": token, "text": "Seen in the browser <script>x</script> 😀"})
    assert page.status_code == 200 and "Seen in the browser &lt;script&gt;x&lt;/script&gt; 😀" in page.text
    assert [n["text"] for n in cli.json("show", "one")["notes"]] == ["Seen in the browser <script>x</script> 😀"]
    cli("undo")
    assert cli.json("show", "one")["notes"] == []
    cli("undo")
    assert cli.json("show", "one")["status"] == "planned"


@pytest.mark.parametrize("form", [
    {"status": "done"},  # no token
    {"status": "done", "csrf": "0" * 64},
    {"status": "done", "csrf": ""},
])
def test_a_write_without_the_csrf_token_is_refused(small, isolated, form):
    cli, client, guard = small
    before = rows(isolated / "todo.db", "event")
    page = client.post("/items/2/status", data=form)
    assert page.status_code == 403
    assert rows(isolated / "todo.db", "event") == before


def test_a_write_from_another_origin_is_refused(small, isolated):
    cli, client, guard = small
    page = client.post("/items/2/status", data={"csrf": guard.csrf_token, "status": "done"},
                       headers={"origin": "http://evil.example"})
    assert page.status_code == 403 and cli.json("show", "2")["status"] == "planned"


def test_writes_need_post_and_bad_writes_are_one_line(small, isolated):
    cli, client, guard = small
    assert client.get("/items/2/status").status_code in (404, 405)
    bad = client.post("/items/2/status", data={"csrf": guard.csrf_token, "status": "finished-ish"})
    assert bad.status_code == 400 and "unknown status" in bad.text
    assert client.post("/items/99/status", data={"csrf": guard.csrf_token, "status": "done"}).status_code == 404
    assert client.post("/items/one/notes", data={"csrf": guard.csrf_token, "text": "  "}).status_code == 400
    redirect = client.post("/items/2/status", data={"csrf": guard.csrf_token, "status": "done", "next": "//evil.example/x"},
                           follow_redirects=False)
    assert redirect.headers["location"] == "/items/task-a"  # back to the item written, not elsewhere


# --------------------------------------------------------------------------- access


def test_a_token_is_required_when_one_is_set(small, isolated):
    cli, _client, _guard = small
    client, guard = client_for(isolated, host="0.0.0.0", token="s3cret-token-long-enough")
    assert client.get("/").status_code == 401
    assert client.get("/?token=wrong-token-long-enough").status_code == 401
    first = client.get("/?token=s3cret-token-long-enough")
    assert first.status_code == 200 and "HttpOnly" in first.headers["set-cookie"] and "SameSite=Strict" in first.headers["set-cookie"]
    assert client.get("/items/one").status_code == 200  # the cookie carries it now
    client.cookies.clear()
    assert client.get("/items/one").status_code == 401
    assert client.get("/items/one", headers={"authorization": "Bearer s3cret-token-long-enough"}).status_code == 200
    assert client.get("/static/app.js").status_code == 401


def test_another_address_gets_a_made_token_and_short_tokens_are_refused():
    from research.errors import ResearchError
    from research.serve.security import server_token

    assert server_token("127.0.0.1", None) is None
    assert server_token("localhost", None) is None
    assert server_token("::1", None) is None
    made = server_token("0.0.0.0", None)
    assert made and len(made) >= 24 and server_token("0.0.0.0", None) != made
    for short in ("", "abc"):
        with pytest.raises(ResearchError):
            server_token("0.0.0.0", short)


def test_a_foreign_host_header_is_refused(client):
    assert client.get("/", headers={"host": "attacker.example"}).status_code == 421
    assert client.get("/", headers={"host": "localhost:8765"}).status_code == 200


def test_serve_on_a_taken_port_is_one_line(isolated):
    import socket

    cli = Cli()
    cli("init", "--empty")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = cli("serve", "--port", str(port), ok=False)
    assert result.exit_code == 1 and "cannot listen on 127.0.0.1" in result.stderr


def test_serve_on_a_damaged_database_is_one_line(isolated):
    (isolated / "todo.db").write_bytes(b"not a database at all" * 100)
    result = Cli()("serve", "--port", "0", ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.stderr and result.stderr.count("\n") <= 2


def test_pages_stay_whole_while_the_cli_writes(small, isolated):
    """Readers in threads while `research add` and `research check` write: every page is a 200
    and the last one shows every item."""
    import threading

    cli, client, guard = small
    failures: list[str] = []
    stop = threading.Event()

    def read():
        reader, _ = client_for(isolated)
        while not stop.is_set():
            for url in ("/", "/items/one", "/?tree=0&sort=created"):
                try:
                    page = reader.get(url)
                except Exception as exc:  # the test client raises what the app raised
                    failures.append(f"{url}: {exc!r}")
                    continue
                if page.status_code != 200:
                    failures.append(f"{url}: {page.status_code} {page.text[:200]}")

    threads = [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for n in range(15):
            cli("add", f"Written while serving {n}", "-p", "one", "--task")
        cli("check", "2")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert failures == []
    html = client.get("/?tasks=1").text
    assert all(f"Written while serving {n}<" in html for n in range(15))


def test_a_database_damaged_while_serving_is_one_line(small, isolated):
    cli, client, guard = small
    assert client.get("/").status_code == 200
    conn = sqlite3.connect(isolated / "todo.db")
    conn.execute("DROP TABLE note")
    conn.commit()
    conn.close()
    page = client_for(isolated)[0].get("/items/one")
    assert page.status_code == 503 and "note" in page.text and "Traceback" not in page.text


def test_the_users_backlog_serves_whole(isolated, seed_todo):
    """The real backlog in ../shared/seeds (skipped without it): every item's page opens, and
    the backlog page lists what `research list --all --tasks` lists."""
    cli = Cli()
    cli("init", "--empty")
    cli("import", str(seed_todo))
    client, _ = client_for(isolated)
    listed = json.loads(cli("list", "--all", "--tasks", "--json").stdout)
    html = client.get("/?all=1&tasks=1&tree=0").text
    assert re.findall(r'<td class="title"><a href="/items/([^"]+)"', html) == [quote(i["slug"], safe="") for i in listed]
    for entry in listed:
        page = client.get(f"/items/{entry['id']}")
        assert page.status_code == 200, entry["slug"]
        no_live_markup(page.text)
