"""What each page shows, read through the same library functions the CLI's commands call
(``backlog.views``, ``runs.summary``, ``runs.query``, ``sweeps.show``, ``review``): no query
of its own. Each function returns the template's context; charts are inline SVG."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from research.errors import ResearchError
from research.serve import svg


@dataclass(frozen=True)
class Site:
    db_path: Path
    project_root: Path


# --------------------------------------------------------------------------- the backlog

LIST_FIELDS = ("status", "priority", "tag", "under", "search", "due-before", "sort", "all", "tree", "tasks")


def backlog_page(site: Site, query) -> dict[str, Any]:
    """The backlog, filtered as `research list` filters it: the same option names
    (``?status=active&status=paused&priority=high&tag=…&search=…&due-before=…&under=…&all=1&sort=score&tree=1``)."""
    from research.backlog.views import Backlog, list_filter, list_rows
    from research.vocab import PRIORITIES, STATUSES

    backlog = Backlog.load_file(site.db_path)
    form = {name: query.get(name, "") for name in LIST_FIELDS}
    statuses = [s for s in query.getlist("status") if s]
    tree = form["tree"] == "" or _flag(form["tree"])  # a tree unless a table is asked for (tree=0)
    spec = list_filter(
        backlog, statuses=statuses, priority=form["priority"], tag=form["tag"], under=form["under"],
        search=form["search"], due_before=form["due-before"], include_closed=_flag(form["all"]),
        tasks=_flag(form["tasks"]),
    )
    rows = list_rows(backlog, spec, form["sort"] or "priority", tree=tree)
    tags = sorted({tag for item in backlog.items for tag in item.tags})
    return {
        "rows": rows, "total": len(backlog.items), "form": form, "statuses": statuses, "tree": tree,
        "status_choices": STATUSES, "priority_choices": PRIORITIES, "tag_choices": tags,
        "sort_choices": ("priority", "score", "updated", "created"),
    }


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------- an item


def item_page(site: Site, ref: str) -> dict[str, Any]:
    from research.backlog.views import find_item_id, item_detail
    from research.review.safe_markdown import markdown_html
    from research.runs.metrics import parse_best
    from research.runs.summary import runs_for_show
    from research.store.db import connect_raw

    conn = connect_raw(site.db_path)
    try:
        detail = item_detail(conn, find_item_id(conn, ref))
        runs_for_show(conn, detail["id"], detail["slug"], detail)
    finally:
        conn.close()
    detail.pop("runs_lines", None)
    detail.pop("links_lines", None)
    key = next((parse_best(link["best"])[1] for link in detail["links"] if link.get("best")), None)
    if key is None:  # no link names one: the metric the item's runs share most
        counts: dict[str, int] = {}
        for run in detail["runs"]:
            for name, value in run["metrics"].items():
                if _is_number(value):
                    counts[name] = counts.get(name, 0) + 1
        key = max(counts, key=counts.get) if counts else None
    points = [(run["id"], run["metrics"][key]) for run in detail["runs"]
              if key and run["status"] == "succeeded" and _is_number(run["metrics"].get(key))]
    chart = svg.xy_chart(f"{key} over runs", [svg.Series(key, points, labels=[f"run {i}: {v:.6g}" for i, v in points])],
                         "run", key) if len(points) > 1 else None
    return {
        "item": detail, "body_html": markdown_html(detail["body"]), "key_metric": key, "key_chart": chart,
        "notes": [{**note, "html": markdown_html(note["text"])} for note in detail["notes"]],
        "history": [{**event, "change": _change(event)} for event in reversed(detail["history"][-50:])],
    }


def _change(event: dict) -> str:
    before, after = _decode(event.get("before")), _decode(event.get("after"))
    if isinstance(before, dict) and isinstance(after, dict):
        changed = [k for k in after if k not in ("updated_at",) and before.get(k) != after.get(k)]
        return ", ".join(f"{k}: {_short(before.get(k))} → {_short(after.get(k))}" for k in changed[:4])
    if isinstance(after, dict):
        return _short(after.get("title") or after.get("text") or "")
    return ""


def _decode(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _short(value) -> str:
    from research.render import short_value

    return short_value(value, 48) if value is not None else "∅"


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------- a run


def run_page(site: Site, ref: str) -> dict[str, Any]:
    from research.runs.query import resolve_run, run_detail
    from research.store.db import session_scope

    with session_scope(site.db_path) as session:
        run = resolve_run(session, ref)
        detail = run_detail(session, run, site.project_root)
    stepped: dict[str, list[tuple[float, float]]] = {}
    for entry in detail["metric_history"]:
        if entry["step"] is not None and _is_number(entry["value"]):
            stepped.setdefault(entry["name"], []).append((entry["step"], entry["value"]))
    charts = [svg.xy_chart(name, [svg.Series(name, sorted(points), marks=len(points) <= 60)], "step", name)
              for name, points in stepped.items() if len(points) > 1]
    run_dir = site.project_root / detail["run_dir"] if detail.get("run_dir") else None
    artifacts = []
    for path in detail.get("artifacts") or []:
        relative = _inside(site.project_root, run_dir, path)
        artifacts.append({"path": path, "href": relative})
    notebook = _inside(site.project_root, run_dir, detail["output_path"]) if detail.get("output_path") else None
    has_notebook = bool(notebook and (run_dir / notebook).is_file())
    return {"run": detail, "charts": [c for c in charts if c], "artifacts": artifacts,
            "notebook": notebook if has_notebook else None,
            "environment": detail.get("environment") or {}, "error": detail.get("error"),
            "open": detail["status"] in ("queued", "running")}


def _inside(project_root: Path, run_dir: Path | None, path: str | Path) -> str | None:
    """``path`` (absolute, or relative to the project) relative to the run's folder, when it
    lies there: what the file route serves."""
    if run_dir is None:
        return None
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = project_root / candidate
    try:
        return str(candidate.resolve().relative_to(run_dir.resolve()))
    except (ValueError, OSError):
        return None


def run_folder(site: Site, ref: str) -> Path:
    from research.runs.query import resolve_run
    from research.store.db import session_scope

    with session_scope(site.db_path) as session:
        run = resolve_run(session, ref)
        if not run.run_dir:
            raise ResearchError(f"run {run.id} has no folder")
        return site.project_root / run.run_dir


def live_json(site: Site, ref: str) -> dict[str, Any]:
    """What the page polls while a run is open: its status, cells done, latest metrics."""
    from research.runs.query import resolve_run
    from research.store.db import session_scope

    with session_scope(site.db_path) as session:
        run = resolve_run(session, ref)
        status, reason, run_dir = run.status, run.reason, run.run_dir
    data: dict[str, Any] = {"id": int(ref), "status": status, "reason": reason, "open": status in ("queued", "running")}
    if run_dir:
        from research.runs.live import live_state

        data.update(live_state(site.project_root / run_dir))
    return data


def notebook_html(site: Site, ref: str) -> str:
    """The output notebook rendered by nbconvert: its body only (the full templates load
    require.js and MathJax from a CDN), outputs sanitised (``sanitize_html``: a script an
    output holds becomes text), in a page of its own that the route serves under a policy
    running no script at all, in a sandbox."""
    from html import escape

    import nbformat
    from nbconvert import HTMLExporter

    page = run_page(site, ref)
    if not page["notebook"]:
        raise ResearchError(f"run {ref} has no output notebook")
    notebook = nbformat.read(site.project_root / page["run"]["run_dir"] / page["notebook"], as_version=4)
    body, _resources = HTMLExporter(template_name="basic", sanitize_html=True).from_notebook_node(notebook)
    title = escape(f"Run {ref} · {page['run']['notebook']}")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{NOTEBOOK_CSS}</style></head><body><h1>{title}</h1>{body}</body></html>")


NOTEBOOK_CSS = """
body { font: 14px/1.5 system-ui, "Noto Sans", "Noto Sans CJK SC", sans-serif, "Noto Color Emoji"; margin: 1em 2em; }
h1 { font-size: 1.2em; } .jp-Cell { margin: .8em 0; } .jp-InputPrompt, .jp-OutputPrompt { color: #888; font-size: .8em; }
pre { background: #f6f7f9; padding: .5em .7em; overflow-x: auto; } .jp-OutputArea pre { background: none; }
.jp-RenderedImage img, img { max-width: 100%; } table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: .2em .5em; }
.jp-mod-noOutputs .jp-OutputArea { display: none; } .jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"] { background: #fff0f0; }
"""


# --------------------------------------------------------------------------- a sweep


def sweep_page(site: Site, sweep_id: str) -> dict[str, Any]:
    from research.render import short_value
    from research.store.db import session_scope
    from research.sweeps.show import sweep_detail
    from research.sweeps.space import space_from_json

    with session_scope(site.db_path) as session:
        detail = sweep_detail(session, sweep_id)
    objective, names = detail["objective"], list(detail["space"])
    by_trial = sorted((t for t in detail["trials"] if t["value"] is not None), key=lambda t: t["trial"])
    best, best_so_far = None, []
    maximize = detail["direction"] == "maximize"
    for trial in by_trial:
        if best is None or (trial["value"] > best if maximize else trial["value"] < best):
            best = trial["value"]
        best_so_far.append((trial["trial"], best))
    charts = []
    by = svg.xy_chart(f"{objective} by trial", [
        svg.Series(objective, [(t["trial"], t["value"]) for t in by_trial], line=False,
                   labels=[f"trial {t['trial']} (run {t['run']}): {t['value']:.6g}" for t in by_trial]),
        svg.Series("best so far", best_so_far, marks=False, dashed=True, color="#2e7d32"),
    ], "trial", objective)
    if by:
        charts.append(by)
    dimensions = space_from_json(detail["space"])
    log_axes = frozenset(name for name, dim in dimensions.items() if dim.log)
    for name in names:
        values = [t["params"].get(name) for t in by_trial]
        if all(_is_number(v) for v in values):
            x_names = None
            points = [(v, t["value"]) for v, t in zip(values, by_trial, strict=True)]
        else:
            labels = sorted({short_value(v) for v in values})
            x_names = {float(i): label for i, label in enumerate(labels)}
            index = {label: float(i) for i, label in enumerate(labels)}
            points = [(index[short_value(v)], t["value"]) for v, t in zip(values, by_trial, strict=True)]
        chart = svg.scatter(f"{objective} against {name}", points, name, objective,
                            labels=[f"trial {t['trial']}: {name}={short_value(t['params'].get(name))}" for t in by_trial],
                            x_names=x_names)
        if chart:
            charts.append(chart)
    parallel = svg.parallel_coordinates(
        "Parallel coordinates", [*names, objective],
        [{**t["params"], objective: t["value"]} for t in by_trial], objective, log_axes=log_axes,
        labels=[f"trial {t['trial']}: {t['value']:.6g}" for t in by_trial])
    return {"sweep": detail, "names": names, "charts": charts, "parallel": parallel,
            "space": {name: dim.describe() for name, dim in dimensions.items()}}


def sweeps_list(site: Site) -> list[dict[str, Any]]:
    from research.store.db import session_scope
    from research.sweeps.show import list_sweeps

    with session_scope(site.db_path) as session:
        return list_sweeps(session)


# --------------------------------------------------------------------------- reviews


PERIOD_FIELDS = ("week", "month", "quarter", "since", "until")


def review_page(site: Site, query) -> dict[str, Any]:
    """The review `research review` gives for the same options (``?week=2026-W49``,
    ``?month=2026-12``, ``?quarter=2026-Q4``, ``?since=…&until=…``), with its charts as
    images the chart route draws."""
    from urllib.parse import urlencode

    from research.review.charts import Chart, chart_tasks
    from research.review.html import review_body_html
    from research.review.text import review_title

    review, period_query = _review(site, query)
    tasks = chart_tasks(review)
    charts = [Chart(task.name, task.title, b"", task.group) for task in tasks]
    suffix = urlencode(period_query)
    body = review_body_html(review, charts, image_src=lambda c: f"/review/chart/{c.name}.png" + (f"?{suffix}" if suffix else ""))
    heading, _span = review_title(review)
    return {"heading": heading, "body_html": body, "period": review["period"],
            "form": {name: query.get(name, "") for name in PERIOD_FIELDS}}


def _review(site: Site, query):
    from research.review.period import parse_period
    from research.review.report import build_review

    period_query = {name: query.get(name) for name in PERIOD_FIELDS if query.get(name)}
    period = parse_period(**{name: period_query.get(name) for name in PERIOD_FIELDS})
    return build_review(site.db_path, period), period_query


def review_chart(site: Site, query, name: str) -> bytes:
    from research.review.charts import chart_tasks, draw_chart

    review, _ = _review(site, query)
    for task in chart_tasks(review):
        if task.name == name:
            return draw_chart(task)[0].png
    raise ResearchError(f"the review has no chart {name!r}")


# --------------------------------------------------------------------------- writes


def set_item_status(site: Site, ref: str, status: str) -> str:
    """One event in the log, as `research status ITEM STATUS` writes it (undone by `research undo`)."""
    from research.backlog.items import ChangeLog, resolve_item, set_status
    from research.store.db import session_scope
    from research.vocab import normalize_status

    status = normalize_status(status)
    with session_scope(site.db_path, write=True) as session:
        item = resolve_item(session, ref)
        action = "status"
        if item.kind == "task":
            action = "check" if status == "done" else "uncheck" if status == "planned" else "status"
        set_status(session, ChangeLog(session), item, status, action=action)
        return item.slug


def add_item_note(site: Site, ref: str, text: str) -> str:
    from research.backlog.items import ChangeLog, add_note, resolve_item
    from research.store.db import session_scope

    if not text.strip():
        raise ResearchError("a note needs some text")
    with session_scope(site.db_path, write=True) as session:
        item = resolve_item(session, ref)
        add_note(session, ChangeLog(session), item, text)
        return item.slug
