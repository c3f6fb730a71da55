"""Linked notebooks and their runs: planning, executing, recording, querying.

A run is planned and checked in full (notebook, parameters, types) before any
row is written; rows are then created ``queued`` in one transaction, and each
run moves to ``running`` and to its final status in short transactions of its
own, so parallel runs and other `research` processes share the database safely.
Everything a run produces lives under ``runs/<run id>/`` next to the database.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from research import clock
from research.backlog.items import ChangeLog, set_status
from research.errors import ResearchError
from research.store.db import project_root_of
from research.store.models import RUN_STATUSES, Item, Link, Metric, Run

RUNS_DIR = "runs"
OUTPUT_NOTEBOOK = "output.ipynb"
RUN_JSON = "run.json"
STALE_HEARTBEAT = timedelta(minutes=2)  # a runner on another host is presumed dead after this


# ---------------------------------------------------------------------------
# Links


def _relative_notebook(notebook: str, project_root: Path) -> tuple[str, Path]:
    path = Path(notebook)
    absolute = path if path.is_absolute() else (Path.cwd() / path)
    if not absolute.exists() and not path.is_absolute():
        absolute = project_root / path
    absolute = absolute.resolve()
    if not absolute.is_file():
        raise ResearchError(f"notebook not found: {notebook}")
    if absolute.suffix != ".ipynb":
        raise ResearchError(f"{notebook} is not a notebook (.ipynb)")
    try:
        relative = absolute.relative_to(project_root)
    except ValueError:
        raise ResearchError(f"{notebook} is outside the project root {project_root}") from None
    return relative.as_posix(), absolute


def parse_best(spec: str | None) -> tuple[str, str] | None:
    if not spec:
        return None
    direction, sep, metric = spec.partition(":")
    if not sep or direction not in ("max", "min") or not metric.strip():
        raise ResearchError(f"--best must look like max:METRIC or min:METRIC, got {spec!r}")
    return direction, metric.strip()


def link_notebook(
    session: Session,
    log: ChangeLog,
    item: Item,
    notebook: str,
    name: str | None,
    defaults: dict[str, Any],
    best: str | None,
    project_root: Path,
) -> Link:
    from research.params import inspect_notebook, resolve_parameters

    relative, absolute = _relative_notebook(notebook, project_root)
    specs = inspect_notebook(absolute)
    resolved = resolve_parameters(specs, defaults, relative)
    parse_best(best)
    name = name or Path(relative).stem
    existing = session.exec(select(Link).where(Link.item_id == item.id, Link.name == name)).first()
    if existing is not None:
        log.updated(existing, {"notebook": relative, "defaults": resolved, "best": best}, action="link")
        return existing
    link = Link(item_id=item.id, name=name, notebook=relative, defaults=resolved, best=best, created_at=clock.now_iso())
    session.add(link)
    log.created(link, action="link")
    return link


def item_links(session: Session, item: Item) -> list[Link]:
    return list(session.exec(select(Link).where(Link.item_id == item.id).order_by(Link.id)))


def unlink_notebook(session: Session, log: ChangeLog, item: Item, name: str | None) -> Link:
    links = item_links(session, item)
    if not links:
        raise ResearchError(f"{item.slug} has no linked notebook")
    if name is None:
        if len(links) > 1:
            raise ResearchError(f"{item.slug} has several notebooks; name one: {', '.join(lk.name for lk in links)}")
        link = links[0]
    else:
        link = next((lk for lk in links if lk.name == name), None)
        if link is None:
            raise ResearchError(f"{item.slug} has no notebook named {name!r}; linked: {', '.join(lk.name for lk in links)}")
    # Runs keep their history; they just stop pointing at the link.
    for run in session.exec(select(Run).where(Run.link_id == link.id)):
        log.updated(run, {"link_id": None}, action="unlink")
    log.deleted(link, action="unlink")
    return link


def list_notebooks(project_root: Path) -> list[dict[str, Any]]:
    """Every notebook under notebooks/ with its parameters (name, type, default, help)."""
    from research.params import inspect_notebook

    folder = project_root / "notebooks"
    out = []
    for path in sorted(folder.rglob("*.ipynb")) if folder.is_dir() else []:
        if ".ipynb_checkpoints" in path.parts:
            continue
        entry: dict[str, Any] = {"notebook": path.relative_to(project_root).as_posix(), "parameters": [], "error": None}
        try:
            entry["parameters"] = [
                {"name": s.name, "type": s.type_name, "default": s.default_repr, "help": s.help}
                for s in inspect_notebook(path).values()
            ]
        except ResearchError as exc:
            entry["error"] = str(exc)
        out.append(entry)
    return out


# ---------------------------------------------------------------------------
# Planning


@dataclass
class RunPlan:
    item: Item
    link: Link | None
    notebook: str  # relative to the project root
    given: dict[str, Any]
    params: dict[str, Any]


def plan_runs(
    session: Session,
    item: Item,
    project_root: Path,
    notebook_name: str | None = None,
    given: dict[str, Any] | None = None,
    file_params: dict[str, Any] | None = None,
    grid: list[dict[str, str]] | None = None,
) -> list[RunPlan]:
    """Check everything and return one plan per run; raises before anything is written."""
    from research.params import inspect_notebook, resolve_parameters

    links = item_links(session, item)
    if notebook_name:
        chosen = [lk for lk in links if lk.name == notebook_name]
        if not chosen:
            known = ", ".join(lk.name for lk in links) or "none"
            raise ResearchError(f"{item.slug} has no notebook named {notebook_name!r}; linked: {known}")
    else:
        chosen = links
    if not chosen:
        raise ResearchError(f"{item.slug} has no linked notebook; link one with `research link {item.slug} NOTEBOOK`")
    plans = []
    for link in chosen:
        path = project_root / link.notebook
        if not path.is_file():
            raise ResearchError(f"linked notebook {link.notebook} no longer exists")
        specs = inspect_notebook(path)
        for point in grid or [{}]:
            merged = {**(file_params or {}), **(given or {}), **point}
            declared = {name: spec.default for name, spec in specs.items() if spec.default is not None or spec.default_repr == "None"}
            resolved = {**declared, **link.defaults, **resolve_parameters(specs, merged, link.notebook)}
            plans.append(RunPlan(item=item, link=link, notebook=link.notebook, given=merged, params=resolved))
    return plans


def create_runs(
    session: Session, plans: list[RunPlan], project_root: Path, kernel: str | None, executor: str = "local"
) -> tuple[list[int], str | None]:
    """Write the planned runs as queued rows; returns their ids and the sweep id (if several)."""
    sweep_id = uuid.uuid4().hex[:8] if len(plans) > 1 else None
    now = clock.now_iso()
    ids = []
    for plan in plans:
        run = Run(
            item_id=plan.item.id,
            link_id=plan.link.id if plan.link else None,
            sweep_id=sweep_id,
            status="queued",
            notebook=plan.notebook,
            params_given=_jsonable(plan.given),
            params=_jsonable(plan.params),
            kernel=kernel,
            executor=executor,
            cwd=str(project_root),
            host=socket.gethostname(),
            pid=os.getpid(),
            heartbeat_at=now,
            queued_at=now,
        )
        session.add(run)
        session.flush()
        run.run_dir = f"{RUNS_DIR}/{run.id}"
        run.output_path = f"{RUNS_DIR}/{run.id}/{OUTPUT_NOTEBOOK}"
        session.add(run)
        ids.append(run.id)
    return ids, sweep_id


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


# ---------------------------------------------------------------------------
# Executing


@dataclass
class RunResult:
    run_id: int
    status: str
    reason: str | None
    duration_s: float
    metrics: dict[str, Any] = field(default_factory=dict)


def _write(db_path: Path, fn: Callable[[Session], Any]):
    from research.store.db import session_scope

    with session_scope(db_path, write=True) as session:
        return fn(session)


def execute_run(
    db_path: Path,
    run_id: int,
    timeout: float | None = None,
    log_output: bool = False,
    on_progress: Callable[[int, int, int], None] | None = None,
    worker=None,
) -> RunResult:
    """Run one queued run to its end and record everything about it.

    ``worker`` is an already started ``execute.start_worker()`` process to use.
    """
    from concurrent.futures import ThreadPoolExecutor

    from research.environment import capture_environment, sha256_file
    from research.execute import execute_notebook

    project_root = project_root_of(db_path)

    def start(session: Session):
        run = session.get(Run, run_id)
        if run is None or run.status != "queued":
            raise ResearchError(f"run {run_id} is not queued")
        now = clock.now_iso()
        changes = {"status": "running", "started_at": now, "heartbeat_at": now, "pid": os.getpid()}
        for name, value in changes.items():
            setattr(run, name, value)
        notebook = project_root / run.notebook
        run.notebook_sha256 = sha256_file(notebook) if notebook.is_file() else None
        session.add(run)
        item = session.get(Item, run.item_id)
        if item is not None and item.status == "planned":
            # The first run of a planned item starts it; finishing stays the researcher's call.
            set_status(session, ChangeLog(session), item, "active")
        return run.model_copy()

    run = _write(db_path, start)
    run_dir = project_root / run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    # git and nvidia-smi take a moment: ask them while the notebook runs.
    env_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="environment")
    environment_future = env_pool.submit(capture_environment, project_root)
    env_pool.shutdown(wait=False)
    last_beat = [0.0]

    def heartbeat():
        now = time.monotonic()
        if now - last_beat[0] < 1.0:
            return
        last_beat[0] = now

        def beat(session: Session):
            row = session.get(Run, run_id)
            if row is not None and row.status == "running":
                row.heartbeat_at = clock.now_iso()
                session.add(row)

        _write(db_path, beat)

    def progress(done: int, total: int):
        if on_progress:
            on_progress(run_id, done, total)

    outcome = execute_notebook(
        notebook=project_root / run.notebook,
        output=project_root / run.output_path,
        parameters=run.params,
        run_dir=run_dir,
        cwd=project_root,
        kernel_name=run.kernel,
        timeout=timeout,
        log_output=log_output,
        on_progress=progress,
        on_heartbeat=heartbeat,
        worker=worker,
    )
    return finish_run(db_path, run_id, outcome, environment_future.result())


def finish_run(
    db_path: Path,
    run_id: int,
    outcome,
    environment: dict,
    *,
    started_at: str | None = None,
    ended_at: str | None = None,
    only_open: bool = False,
) -> RunResult | None:
    """Ingest the run's metrics and artifacts and close its row; writes run.json.

    Runs done elsewhere (Dask, Slurm) pass the times the worker saw, and ``only_open``
    so that a result collected twice (two `research` processes) is ingested once:
    then a row already closed is left alone and None comes back.
    """
    from research.execute import read_records

    project_root = project_root_of(db_path)

    def finish(session: Session):
        run = session.get(Run, run_id)
        if only_open and (run is None or run.status not in ("queued", "running")):
            return None
        run_dir = project_root / run.run_dir
        metrics, artifacts = read_records(run_dir)
        for entry in metrics:
            session.add(_metric_row(run_id, entry))
        run.status = outcome.status
        run.reason = outcome.reason
        run.error = outcome.error
        run.kernel = outcome.kernel_name or run.kernel
        run.started_at = started_at or run.started_at
        run.ended_at = ended_at or clock.now_iso()
        run.duration_s = outcome.duration_s
        run.environment = environment
        run.artifacts = [a.get("path") for a in artifacts if a.get("path")]
        session.add(run)
        session.flush()
        record = run_record(run, metrics)
        record["cells_done"], record["cells_total"] = outcome.cells_done, outcome.cells_total
        (run_dir / RUN_JSON).write_text(json.dumps(record, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
        return RunResult(run_id, run.status, run.reason, outcome.duration_s, final_metrics(metrics))

    return _write(db_path, finish)


def _metric_row(run_id: int, entry: dict) -> Metric:
    value = entry.get("value")
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    return Metric(
        run_id=run_id,
        name=str(entry.get("name")),
        value=number,
        value_json=None if number is not None else value,
        step=entry.get("step") if isinstance(entry.get("step"), int) else None,
        ts=entry.get("time"),
    )


def final_metrics(entries) -> dict[str, Any]:
    """The last recorded value of each metric (by step, then time)."""
    latest: dict[str, tuple] = {}
    for entry in entries:
        if isinstance(entry, Metric):
            name, value, step, ts = entry.name, entry.value if entry.value is not None else entry.value_json, entry.step, entry.ts
        else:
            name, value, step, ts = entry.get("name"), entry.get("value"), entry.get("step"), entry.get("time")
        key = (step if step is not None else -1, ts or 0)
        if name not in latest or key >= latest[name][0]:
            latest[name] = (key, value)
    return {name: value for name, (_key, value) in latest.items()}


def run_record(run: Run, metrics=None) -> dict[str, Any]:
    data = run.model_dump()
    if metrics is not None:
        data["metrics"] = final_metrics(metrics)
    return data


# ---------------------------------------------------------------------------
# Stale runs: a runner that died (SIGKILL, power loss) leaves rows behind.


def recover_stale_runs(db_path: Path) -> int:
    """Mark runs whose runner is gone as interrupted; returns how many. Cheap when none are open."""
    from research.store.db import connect_raw

    conn = connect_raw(db_path)
    try:
        rows = conn.execute(
            "SELECT id, pid, host, heartbeat_at, executor FROM run WHERE status IN ('queued', 'running')"
        ).fetchall()
        if not rows:
            return 0
        host = socket.gethostname()
        now = datetime.now(UTC)
        dead = []
        for run_id, pid, run_host, heartbeat, executor in rows:
            if executor not in (None, "local"):
                continue  # remote executors are reconciled by their own engines
            if run_host == host and pid:
                alive = _pid_alive(pid)
            else:
                alive = bool(heartbeat) and now - clock.parse_iso(heartbeat) < STALE_HEARTBEAT
            if not alive:
                dead.append((run_id, heartbeat))
        if dead:
            conn.execute("BEGIN IMMEDIATE")
            for run_id, heartbeat in dead:
                conn.execute(
                    "UPDATE run SET status = 'interrupted', ended_at = ?, reason = ? "
                    "WHERE id = ? AND status IN ('queued', 'running')",
                    (clock.now_iso(), f"runner died (last heartbeat {heartbeat or 'never'})", run_id),
                )
            conn.execute("COMMIT")
        return len(dead)
    finally:
        conn.close()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


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
    if run.status in ("queued", "running") and _pid_alive(run.pid or 0):
        raise ResearchError(f"run {run.id} is still {run.status}; stop it first")
    for metric in session.exec(select(Metric).where(Metric.run_id == run.id)):
        log.deleted(metric, action="run-rm")
    log.deleted(run, action="run-rm")


# ---------------------------------------------------------------------------
# --where expressions: metrics.throughput > 1000 or params.budget_mb = 64


_TOKEN_KINDS = [
    ("space", r"\s+"),
    ("op", r"==|!=|>=|<=|=|<|>|~"),
    ("lparen", r"\("),
    ("rparen", r"\)"),
    ("string", r"'[^']*'|\"[^\"]*\""),
    ("number", r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])"),
    ("word", r"[A-Za-z_][\w.\-]*"),
]


def _tokenize(text: str) -> list[tuple[str, str]]:
    import re

    pattern = re.compile("|".join(f"(?P<{k}>{p})" for k, p in _TOKEN_KINDS))
    tokens, pos = [], 0
    while pos < len(text):
        match = pattern.match(text, pos)
        if not match:
            raise ResearchError(f"bad --where expression near {text[pos:]!r}")
        kind = match.lastgroup
        if kind != "space":
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


def compile_where(text: str) -> Callable[[dict], bool]:
    """Parse a filter like ``metrics.x > 1 and (params.y = 2 or status = failed)``."""
    tokens = _tokenize(text)
    position = [0]

    def peek():
        return tokens[position[0]] if position[0] < len(tokens) else (None, None)

    def take(kind=None, value=None):
        tok = peek()
        if tok[0] is None or (kind and tok[0] != kind) or (value and tok[1].lower() != value):
            expected = value or kind or "more"
            raise ResearchError(f"bad --where expression {text!r}: expected {expected} at {tok[1] or 'the end'!r}")
        position[0] += 1
        return tok

    def parse_or():
        left = parse_and()
        while peek()[0] == "word" and peek()[1].lower() == "or":
            take()
            right = parse_and()
            left = (lambda a, b: lambda row: a(row) or b(row))(left, right)
        return left

    def parse_and():
        left = parse_not()
        while peek()[0] == "word" and peek()[1].lower() == "and":
            take()
            right = parse_not()
            left = (lambda a, b: lambda row: a(row) and b(row))(left, right)
        return left

    def parse_not():
        if peek()[0] == "word" and peek()[1].lower() == "not":
            take()
            inner = parse_not()
            return lambda row: not inner(row)
        if peek()[0] == "lparen":
            take("lparen")
            inner = parse_or()
            take("rparen")
            return inner
        return parse_comparison()

    def parse_comparison():
        field_name = take("word")[1]
        op = take("op")[1]
        kind, raw = take()
        if kind == "string":
            literal: Any = raw[1:-1]
        elif kind == "number":
            literal = float(raw)
        elif kind == "word":
            literal = {"true": True, "false": False, "null": None, "none": None}.get(raw.lower(), raw)
        else:
            raise ResearchError(f"bad --where expression {text!r}: expected a value after {op}")
        return lambda row: _compare(_lookup(row, field_name), op, literal)

    predicate = parse_or()
    if position[0] != len(tokens):
        raise ResearchError(f"bad --where expression {text!r}: unexpected {tokens[position[0]][1]!r}")
    return predicate


def _lookup(row: dict, dotted: str):
    current: Any = row
    for part in dotted.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current


def _compare(value, op: str, literal) -> bool:
    if value is None:
        return op == "!=" if literal is not None else op in ("=", "==")
    if op == "~":
        return str(literal).lower() in str(value).lower()
    if isinstance(literal, float) and isinstance(value, int | float) and not isinstance(value, bool):
        left, right = float(value), literal
    elif isinstance(literal, bool) or isinstance(value, bool):
        left, right = value, literal
    else:
        left, right = str(value), str(literal) if not isinstance(literal, float) else _number_text(literal)
    try:
        return {
            "=": left == right, "==": left == right, "!=": left != right,
            ">": left > right, ">=": left >= right, "<": left < right, "<=": left <= right,
        }[op]
    except TypeError:
        return False


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)


def run_in_parallel(
    tasks: list[Callable[[], RunResult]], jobs: int, on_done: Callable[[RunResult], None] | None = None
) -> list[RunResult]:
    """Run callables on up to ``jobs`` threads (each run has its own kernel process), in order."""
    from concurrent.futures import ThreadPoolExecutor

    def wrapped(task):
        result = task()
        if on_done:
            on_done(result)
        return result

    if jobs <= 1:
        return [wrapped(task) for task in tasks]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="run") as pool:
        futures = [pool.submit(wrapped, task) for task in tasks]
        return [f.result() for f in futures]


