"""Runs as the read commands show them, read with plain sqlite3 (``store.rows``).

`research show` lists an item's runs with their final metrics and marks the best one; it
must not pay for importing the ORM, so this module never does. ``runs.query`` builds its
listings from the same summaries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from research.render import short_value
from research.runs.metrics import final_metrics, parse_best
from research.store.rows import ids_json
from research.store.rows import select as select_rows


def final_metrics_by_run(conn, run_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Each run's final metrics (``conn``: a DB-API connection)."""
    by_run: dict[int, list] = {rid: [] for rid in run_ids}
    if run_ids:
        for metric in select_rows(conn, "metric", "run_id IN (SELECT value FROM json_each(?))", (ids_json(run_ids),)):
            by_run[metric.run_id].append(metric)
    return {rid: final_metrics(rows) for rid, rows in by_run.items()}


def run_summary(run, metrics: dict[str, Any], slug: str | None) -> dict[str, Any]:
    return {
        "id": run.id,
        "item_id": run.item_id,
        "item": slug,
        "notebook": run.notebook,
        "sweep_id": run.sweep_id,
        "status": run.status,
        "params": run.params,
        "params_given": run.params_given,
        "metrics": metrics,
        "queued_at": run.queued_at,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "duration_s": run.duration_s,
        "reason": run.reason,
        "executor": run.executor,
        "external_id": run.external_id,
        "output_path": run.output_path,
    }


def best_run_ids(conn, links: list) -> dict[int, int]:
    """For each link with a `best` rule, the id of its best succeeded run."""
    out = {}
    for link in links:
        rule = parse_best(link.best)
        if not rule:
            continue
        direction, metric = rule
        ids = [r.id for r in select_rows(conn, "run", "link_id = ? AND status = 'succeeded'", (link.id,))]
        values = final_metrics_by_run(conn, ids)
        scored = [(v[metric], rid) for rid, v in values.items() if isinstance(v.get(metric), int | float)]
        if scored:
            out[link.id] = (max if direction == "max" else min)(scored)[1]
    return out


def runs_for_show(conn, item_id: int, slug: str, detail: dict[str, Any]) -> None:
    """Adds links and runs (best marked, failures summarized) to an item's `show` output."""
    links = select_rows(conn, "link", "item_id = ?", (item_id,))
    runs = select_rows(conn, "run", "item_id = ?", (item_id,))
    metrics = final_metrics_by_run(conn, [r.id for r in runs])
    best = set(best_run_ids(conn, links).values())
    key_metrics = {lk.id: parse_best(lk.best)[1] for lk in links if lk.best}
    detail["links"] = [{"name": lk.name, "notebook": lk.notebook, "defaults": lk.defaults, "best": lk.best} for lk in links]
    detail["runs"] = []
    lines = []
    for run in runs:
        entry = run_summary(run, metrics[run.id], slug)
        entry["best"] = run.id in best
        if run.error:
            entry["error"] = {"cell_index": run.error.get("cell_index"), "ename": run.error.get("ename"), "evalue": run.error.get("evalue")}
        detail["runs"].append(entry)
        shown = ", ".join(f"{k}={short_value(v)}" for k, v in key_first(metrics[run.id], key_metrics.get(run.link_id))[:4])
        mark = " ★ best" if entry["best"] else ""
        line = f"#{run.id} {run.status:<11} {Path(run.notebook).stem} {short_value(run.params_given)} {shown}{mark}"
        if run.error:
            line += f"\n      cell {run.error.get('cell_index')}: {run.error.get('ename')}: {str(run.error.get('evalue'))[:100]}"
        elif run.reason and run.status != "succeeded":
            line += f"\n      {run.reason}"
        lines.append(line)
    detail["runs_lines"] = lines
    if links:
        detail["links_lines"] = [f"{lk.name}: {lk.notebook}" + (f" (best {lk.best})" if lk.best else "") for lk in links]


def key_first(metrics: dict[str, Any], key: str | None) -> list[tuple[str, Any]]:
    items = list(metrics.items())
    return sorted(items, key=lambda kv: kv[0] != key) if key else items
