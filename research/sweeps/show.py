"""What `research sweep show` and `research sweep list` tell: trials ranked by the objective,
the best trial, and charts (objective by trial with the best so far; objective against each
parameter), drawn by the review's chart code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from sqlmodel import Session, select

from research.errors import ResearchError
from research.store.models import Item, Run, Sweep
from research.sweeps.drive import load_trials


def _sweep(session: Session, sweep_id: str) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise ResearchError(f"no sweep {sweep_id!r}; `research sweep list` shows them")
    return sweep


def _status(sweep: Sweep) -> str:
    """The stored status, except that a sweep whose driving process is gone is stopped."""
    from research.runs.recovery import pid_alive

    if sweep.status == "running" and not (sweep.pid and pid_alive(sweep.pid)):
        return "stopped"
    return sweep.status


def sweep_detail(session: Session, sweep_id: str) -> dict[str, Any]:
    sweep = _sweep(session, sweep_id)
    item = session.get(Item, sweep.item_id)
    records = load_trials(session, sweep)
    runs = {r.id: r for r in session.exec(select(Run).where(Run.sweep_id == sweep.id))}
    rows = []
    for record in records:
        run = runs.get(record.run_id)
        rows.append({"trial": record.number, "run": record.run_id, "state": record.state,
                     "status": run.status if run else None, "value": record.value, "params": record.params,
                     "duration_s": run.duration_s if run else None, "reason": run.reason if run else None})
    maximize = sweep.direction == "maximize"
    scored = sorted((r for r in rows if r["value"] is not None), key=lambda r: r["value"], reverse=maximize)
    ranked = scored + [r for r in rows if r["value"] is None]
    ended = sum(1 for r in rows if r["state"] in ("complete", "failed", "pruned"))
    return {
        "id": sweep.id, "item": item.slug if item else None, "item_title": item.title if item else None,
        "notebook": sweep.notebook, "status": _status(sweep), "reason": sweep.reason,
        "objective": sweep.objective, "direction": sweep.direction, "sampler": sweep.sampler, "seed": sweep.seed,
        "space": sweep.space, "fixed": sweep.fixed, "options": sweep.options,
        "trials_target": sweep.trials, "trials_ended": ended, "jobs": sweep.jobs, "executor": sweep.executor,
        "created_at": sweep.created_at, "ended_at": sweep.ended_at,
        "best": scored[0] if scored else None,
        "trials": ranked,
    }


def list_sweeps(session: Session) -> list[dict[str, Any]]:
    rows = []
    for sweep in session.exec(select(Sweep).order_by(Sweep.created_at)):
        detail = sweep_detail(session, sweep.id)
        best = detail["best"]
        rows.append({"id": sweep.id, "item": detail["item"], "status": detail["status"], "trials": sweep.trials,
                     "ended": detail["trials_ended"], "objective": sweep.objective, "direction": sweep.direction,
                     "best": best["value"] if best else None, "best_run": best["run"] if best else None,
                     "created_at": sweep.created_at})
    return rows


# --------------------------------------------------------------------------- terminal


def print_sweep(detail: dict[str, Any]) -> None:
    from research.render import plain_table, short_value
    from research.sweeps.space import Dimension

    echo = typer.echo
    echo(f"sweep {detail['id']} · {detail['item']} · {detail['notebook']}")
    space = ", ".join(f"{k}={Dimension.from_json(k, v).describe()}" for k, v in detail["space"].items())
    reason = f" ({detail['reason']})" if detail["reason"] else ""
    seed = f" seed {detail['seed']}" if detail["seed"] is not None else ""
    echo(f"  {detail['status']}{reason}: {detail['trials_ended']}/{detail['trials_target']} trials, "
         f"{detail['sampler']}{seed}, {detail['direction']} {detail['objective']}")
    echo(f"  space: {space}")
    best = detail["best"]
    if best:
        values = ", ".join(f"{k}={short_value(v)}" for k, v in best["params"].items())
        echo(f"  best: trial {best['trial']} (run {best['run']}) {detail['objective']} = {best['value']:.6g} with {values}")
    echo(f"  best so far by trial: {_sparkline(detail)}")
    names = list(detail["space"])
    table = [[str(r["trial"]), str(r["run"]), r["status"] or "", "" if r["value"] is None else f"{r['value']:.6g}",
              *[short_value(r["params"].get(n), 16) for n in names]] for r in detail["trials"]]
    echo("")
    plain_table(["trial", "run", "status", detail["objective"], *names], table)


def _sparkline(detail: dict[str, Any]) -> str:
    """The best value so far after each trial, as block characters (higher = better)."""
    bars = "▁▂▃▄▅▆▇█"
    by_number = sorted((r for r in detail["trials"] if r["value"] is not None), key=lambda r: r["trial"])
    if not by_number:
        return "(no values yet)"
    maximize = detail["direction"] == "maximize"
    best, series = None, []
    for r in by_number:
        best = r["value"] if best is None else (max if maximize else min)(best, r["value"])
        series.append(best)
    low, high = min(series), max(series)
    span = (high - low) or 1.0
    marks = [bars[round((v - low) / span * (len(bars) - 1)) if maximize else round((high - v) / span * (len(bars) - 1))]
             for v in series]
    return "".join(marks) + f"  {series[0]:.4g} → {series[-1]:.4g}"


# --------------------------------------------------------------------------- charts


def sweep_charts(detail: dict[str, Any]) -> list:
    """The sweep's two charts as review ``Chart``s (PNG bytes)."""
    from research.review.charts import ChartTask, draw_chart

    params = list(detail["space"])
    against = {"sweep_id": detail["id"], "item_id": detail["item"], "title": detail["item_title"] or "",
               "metric": detail["objective"], "params": params,
               "rows": [{"value": r["value"], "params": r["params"]} for r in detail["trials"]]}
    tasks = [ChartTask("trials", f"{detail['objective']} by trial", "sweep", (detail,))]
    if any(r["value"] is not None for r in detail["trials"]):
        tasks.append(ChartTask("sweeps", f"{detail['objective']} against each parameter", "sweep", ([against],)))
    return [draw_chart(task)[0] for task in tasks]


def write_sweep_charts(detail: dict[str, Any], output: Path) -> list[Path]:
    """PNGs into a folder, or one self-contained HTML page when ``output`` ends in .html."""
    from research.files import write_bytes_file, write_text_file

    charts = sweep_charts(detail)
    if output.suffix.lower() in (".html", ".htm"):
        write_text_file(output, _html_page(detail, charts))
        return [output]
    if output.exists() and not output.is_dir():
        raise ResearchError(f"{output} is not a folder; give a folder for the PNGs or a path ending in .html")
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for chart in charts:
        path = output / f"sweep-{detail['id']}-{chart.name}.png"
        write_bytes_file(path, chart.png)
        written.append(path)
    return written


def _html_page(detail: dict[str, Any], charts) -> str:
    from html import escape

    from research.render import short_value
    from research.review.html import CSP, figure_html

    names = list(detail["space"])
    head = "".join(f"<th>{escape(h)}</th>" for h in ["trial", "run", "status", detail["objective"], *names])
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in
                         [r["trial"], r["run"], r["status"] or "", "" if r["value"] is None else f"{r['value']:.6g}",
                          *[short_value(r["params"].get(n)) for n in names]]) + "</tr>"
        for r in detail["trials"])
    figures = "".join(figure_html(chart) for chart in charts)
    title = escape(f"Sweep {detail['id']} · {detail['item']}")
    return (f'<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" '
            f'content="{CSP}"><title>{title}</title></head><body><h1>{title}</h1>'
            f"<p>{escape(detail['status'])}: {detail['trials_ended']}/{detail['trials_target']} trials, "
            f"{escape(detail['direction'])} {escape(detail['objective'])}</p>{figures}"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>")
