"""Reading runs back: by reference, with their metrics, as summaries and details, compared, deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from research.backlog.items import ChangeLog
from research.errors import ResearchError
from research.runs.lifecycle import run_record
from research.runs.metrics import final_metrics
from research.runs.recovery import pid_alive
from research.runs.summary import final_metrics_by_run, run_summary
from research.runs.where import compile_where, known_fields
from research.store.db import raw_connection
from research.store.models import Item, Metric, Run
from research.vocab import OPEN_RUN_STATUSES, RUN_STATUSES

# ---------------------------------------------------------------------------
# Querying


def resolve_run(session: Session, ref: str | int) -> Run:
    text = str(ref).strip().lstrip("#")
    run = session.get(Run, int(text)) if text.isdigit() and int(text) < 2**63 else None
    if run is None:
        raise ResearchError(f"no run {ref!r}")
    return run


def run_metrics(session: Session, run_ids: list[int]) -> dict[int, dict[str, Any]]:
    return final_metrics_by_run(raw_connection(session), run_ids)


def query_runs(
    session: Session,
    item: Item | None = None,
    status: str | None = None,
    sweep: str | None = None,
    where: str | None = None,
    notes: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Runs as summaries, oldest first; a hint for the user (a --where field that no run has)
    goes to ``notes`` when given."""
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
        absent = predicate.absent_fields(rows) if rows else []
        if absent and notes is not None:
            notes.append(_absent_note(absent, rows))
        elif rows and notes is not None:
            notes.extend(f"--where: {line}" for line in predicate.type_mismatches(rows))
        rows = [row for row in rows if predicate(row)]
    return rows


def _absent_note(absent: list[str], rows: list[dict[str, Any]]) -> str:
    """``--where: no run has 'metrics.los' (did you mean 'metrics.loss'?)``, else the fields
    there are under the same prefix (params., metrics.)."""
    import difflib

    known = known_fields(rows)
    names = ", ".join(repr(name) for name in absent)
    close = [m for name in absent for m in difflib.get_close_matches(name, known, n=1, cutoff=0.8)]
    if close:
        return f"--where: no run has {names} (did you mean {', '.join(repr(m) for m in close)}?)"
    prefixes = {name.split(".")[0] + "." for name in absent if "." in name}
    same = [name for name in known if name.startswith(tuple(prefixes or ("params.", "metrics.")))]
    shown = ", ".join(same[:12]) + (", ..." if len(same) > 12 else "")
    return f"--where: no run has {names}" + (f" (there are: {shown})" if same else "")


def run_detail(session: Session, run: Run, data_root: Path | None = None) -> dict[str, Any]:
    """A run in full. An open run also gets ``live`` (when ``data_root``, the folder runs/ is
    in, is given): what it has recorded so far (``runs.live``), while ``metrics`` holds
    only what the database has (a run's metrics enter it when it ends)."""
    metrics = list(session.exec(select(Metric).where(Metric.run_id == run.id).order_by(Metric.id)))
    item = session.get(Item, run.item_id)
    data = run_record(run)
    data["item"] = item.slug if item else None
    data["metrics"] = final_metrics(metrics)
    data["metric_history"] = [
        {"name": m.name, "value": m.value if m.value is not None else m.value_json, "step": m.step, "ts": m.ts}
        for m in metrics
    ]
    if data_root is not None and run.status in OPEN_RUN_STATUSES and run.run_dir:
        from research.runs.live import live_state

        data["live"] = live_state(Path(data_root) / run.run_dir)
    return data


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
