"""Reading runs back: by reference, with their metrics, as summaries and details, compared, deleted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from research.backlog.items import ChangeLog
from research.errors import ResearchError
from research.runs.lifecycle import run_record
from research.runs.links import item_links, parse_best
from research.runs.metrics import final_metrics
from research.runs.recovery import pid_alive
from research.runs.where import compile_where
from research.store.models import Item, Metric, Run
from research.vocab import OPEN_RUN_STATUSES, RUN_STATUSES

# ---------------------------------------------------------------------------
# Querying


def resolve_run(session: Session, ref: str | int) -> Run:
    text = str(ref).strip().lstrip("#")
    run = session.get(Run, int(text)) if text.isdigit() else None
    if run is None:
        raise ResearchError(f"no run {ref!r}")
    return run


def run_metrics(session: Session, run_ids: list[int]) -> dict[int, dict[str, Any]]:
    by_run: dict[int, list[Metric]] = {rid: [] for rid in run_ids}
    if run_ids:
        for metric in session.exec(select(Metric).where(Metric.run_id.in_(run_ids)).order_by(Metric.id)):
            by_run[metric.run_id].append(metric)
    return {rid: final_metrics(rows) for rid, rows in by_run.items()}


def query_runs(
    session: Session,
    item: Item | None = None,
    status: str | None = None,
    sweep: str | None = None,
    where: str | None = None,
) -> list[dict[str, Any]]:
    query = select(Run).order_by(Run.id)
    if item is not None:
        query = query.where(Run.item_id == item.id)
    if status:
        if status not in RUN_STATUSES:
            raise ResearchError(f"unknown run status {status!r}; use one of: {', '.join(RUN_STATUSES)}")
        query = query.where(Run.status == status)
    if sweep:
        query = query.where(Run.sweep_id == sweep)
    runs = list(session.exec(query))
    metrics = run_metrics(session, [r.id for r in runs])
    slugs = dict(session.exec(select(Item.id, Item.slug)).all())
    rows = [run_summary(r, metrics[r.id], slugs.get(r.item_id)) for r in runs]
    if where:
        predicate = compile_where(where)
        rows = [row for row in rows if predicate(row)]
    return rows


def run_summary(run: Run, metrics: dict[str, Any], slug: str | None) -> dict[str, Any]:
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


def run_detail(session: Session, run: Run) -> dict[str, Any]:
    metrics = list(session.exec(select(Metric).where(Metric.run_id == run.id).order_by(Metric.id)))
    item = session.get(Item, run.item_id)
    data = run_record(run)
    data["item"] = item.slug if item else None
    data["metrics"] = final_metrics(metrics)
    data["metric_history"] = [
        {"name": m.name, "value": m.value if m.value is not None else m.value_json, "step": m.step, "ts": m.ts}
        for m in metrics
    ]
    return data


def best_run_ids(session: Session, item: Item) -> dict[int, int]:
    """For each link with a `best` rule, the id of its best succeeded run."""
    out = {}
    for link in item_links(session, item):
        rule = parse_best(link.best)
        if not rule:
            continue
        direction, metric = rule
        runs = list(session.exec(select(Run).where(Run.link_id == link.id, Run.status == "succeeded")))
        values = run_metrics(session, [r.id for r in runs])
        scored = [(v[metric], rid) for rid, v in values.items() if isinstance(v.get(metric), int | float)]
        if scored:
            out[link.id] = (max if direction == "max" else min)(scored)[1]
    return out


def runs_for_show(session: Session, item: Item, detail: dict[str, Any]) -> None:
    """Adds links and runs (best marked, failures summarized) to an item's `show` output."""
    links = item_links(session, item)
    runs = list(session.exec(select(Run).where(Run.item_id == item.id).order_by(Run.id)))
    metrics = run_metrics(session, [r.id for r in runs])
    best = set(best_run_ids(session, item).values())
    key_metrics = {lk.id: parse_best(lk.best)[1] for lk in links if lk.best}
    detail["links"] = [{"name": lk.name, "notebook": lk.notebook, "defaults": lk.defaults, "best": lk.best} for lk in links]
    detail["runs"] = []
    lines = []
    for run in runs:
        entry = run_summary(run, metrics[run.id], item.slug)
        entry["best"] = run.id in best
        if run.error:
            entry["error"] = {"cell_index": run.error.get("cell_index"), "ename": run.error.get("ename"), "evalue": run.error.get("evalue")}
        detail["runs"].append(entry)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in _key_first(metrics[run.id], key_metrics.get(run.link_id))[:4])
        mark = " ★ best" if entry["best"] else ""
        line = f"#{run.id} {run.status:<11} {Path(run.notebook).stem} {_short(run.params_given)} {shown}{mark}"
        if run.error:
            line += f"\n      cell {run.error.get('cell_index')}: {run.error.get('ename')}: {str(run.error.get('evalue'))[:100]}"
        elif run.reason and run.status != "succeeded":
            line += f"\n      {run.reason}"
        lines.append(line)
    detail["runs_lines"] = lines
    if links:
        detail["links_lines"] = [f"{lk.name}: {lk.notebook}" + (f" (best {lk.best})" if lk.best else "") for lk in links]


def _key_first(metrics: dict[str, Any], key: str | None) -> list[tuple[str, Any]]:
    items = list(metrics.items())
    return sorted(items, key=lambda kv: kv[0] != key) if key else items


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_short(v)}" for k, v in value.items()) + "}"
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:39] + "…"


def compare_runs(session: Session, runs: list[Run], only_changed: bool = False) -> dict[str, Any]:
    metrics = run_metrics(session, [r.id for r in runs])
    rows = []
    for section, getter in (("params", lambda r: r.params), ("metrics", lambda r: metrics[r.id])):
        names = []
        for run in runs:
            for name in getter(run):
                if name not in names:
                    names.append(name)
        for name in names:
            values = [getter(run).get(name) for run in runs]
            if only_changed and all(v == values[0] for v in values):
                continue
            rows.append({"section": section, "name": name, "values": values})
    return {"runs": [r.id for r in runs], "status": [r.status for r in runs], "rows": rows}


def delete_run(session: Session, log: ChangeLog, run: Run) -> None:
    if run.status in OPEN_RUN_STATUSES and pid_alive(run.pid or 0):
        raise ResearchError(f"run {run.id} is still {run.status}; stop it first")
    for metric in session.exec(select(Metric).where(Metric.run_id == run.id)):
        log.deleted(metric, action="run-rm")
    log.deleted(run, action="run-rm")
