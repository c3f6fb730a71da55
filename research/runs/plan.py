"""Planning runs: every run is checked in full (notebook, parameters, types) before any row is written,
then created ``queued`` in one transaction."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from research import clock
from research.errors import ResearchError
from research.runs.lifecycle import OUTPUT_NOTEBOOK, RUNS_DIR
from research.runs.links import item_links
from research.store.models import Item, Link, Run

if TYPE_CHECKING:
    from research.runs.params import Grid

# ---------------------------------------------------------------------------
# Planning


@dataclass
class RunPlan:
    item: Item
    link: Link | None
    notebook: str  # relative to the project root
    given: dict[str, Any]  # as given (link defaults, -p text, YAML values): the names the run injects
    params: dict[str, Any]  # effective typed values, notebook defaults included: what the run records


def plan_runs(
    session: Session,
    item: Item,
    project_root: Path,
    notebook_name: str | None = None,
    given: dict[str, Any] | None = None,
    file_params: dict[str, Any] | None = None,
    grid: Grid | None = None,
    raw: dict[str, str] | None = None,
    check: bool = True,
    confirm: Callable[[int], None] | None = None,
) -> list[RunPlan]:
    """Check everything and return one plan per run; raises before anything is written.

    Values come as papermill takes them, later ones winning: ``file_params`` (typed,
    from ``-f`` files and ``-y`` YAML), ``given`` (``-p`` text), ``raw`` (``-r`` text,
    never converted), then each ``grid`` point. A plan's ``given`` is what the run
    injects (the link's defaults too); its ``params`` are the effective values, the
    notebook's defaults included, as the run records them. ``confirm`` is told how many
    runs there will be before any is planned (it raises to refuse), so a grid too large to
    want is refused without building it.
    """
    from research.runs.params import Grid, inspect_notebook, resolve_parameters

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
    grid = grid if grid is not None else Grid({})
    both = sorted(set({**(given or {}), **(raw or {})}) & set(grid.keys))
    if both:
        raise ResearchError(f"{', '.join(both)}: given with -p and swept with --grid; keep one")
    notebooks = []
    for link in chosen:
        path = project_root / link.notebook
        if not path.is_file():
            raise ResearchError(f"linked notebook {link.notebook} no longer exists")
        notebooks.append((link, inspect_notebook(path)))

    def plan(link, specs, point) -> RunPlan:
        overrides = {**(given or {}), **(raw or {}), **point}
        merged = {**(file_params or {}), **overrides}
        typed = [name for name in file_params or {} if name not in overrides]  # YAML/JSON-typed values
        checked = resolve_parameters(specs, merged, link.notebook, raw=raw or {}, typed=typed, check=check)
        resolved = {**declared_defaults(specs), **link.defaults, **checked}
        return RunPlan(item=item, link=link, notebook=link.notebook, given={**link.defaults, **merged}, params=resolved)

    if confirm is not None:
        first = next(iter(grid))
        for link, specs in notebooks:  # a wrong name or value is said before any question
            plan(link, specs, first)
        confirm(len(chosen) * len(grid))
    return [plan(link, specs, point) for link, specs in notebooks for point in grid]


def declared_defaults(specs) -> dict[str, Any]:
    """The notebook's defaults that are values (literals), to record on a run beside what it was given."""
    return {name: spec.default for name, spec in specs.items() if spec.default is not None or spec.default_repr == "None"}


def create_runs(
    session: Session,
    plans: list[RunPlan],
    project_root: Path,
    kernel: str | None,
    executor: str = "local",
    *,
    queue: str | None = None,
    timeout_s: float | None = None,
) -> tuple[list[int], str | None]:
    """Write the planned runs as queued rows; returns their ids and the sweep id (if several).

    With ``queue`` the runs wait there, with their ``timeout_s``, for `research queue work`
    (no process owns them until one claims them)."""
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
            host=None if queue else socket.gethostname(),
            pid=None if queue else os.getpid(),
            heartbeat_at=None if queue else now,
            queued_at=now,
            queue=queue,
            timeout_s=timeout_s,
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


def plan_rerun(
    session: Session, run_ref: str, overrides: dict[str, str], project_root: Path, check: bool = True
) -> tuple[RunPlan, str | None]:
    """A past run again: its notebook and parameters, ``overrides`` (``-p`` values) checked
    against the notebook as it is now; returns the plan and the run's kernel.

    The rerun injects what the old run was given, and any recorded value that is no
    longer the notebook's default (a run from before runs recorded their link's defaults
    as given, or a notebook whose default changed since): the same parameters again.
    """
    from research.runs.params import inspect_notebook, resolve_parameters
    from research.runs.query import resolve_run

    old = resolve_run(session, run_ref)
    specs = inspect_notebook(project_root / old.notebook)
    checked = resolve_parameters(specs, overrides, old.notebook, check=check)
    defaults = _jsonable(declared_defaults(specs))
    kept = {name: old.params_given.get(name, value) for name, value in old.params.items()
            if name in old.params_given or name not in defaults or defaults[name] != value}
    item = session.get(Item, old.item_id)
    link = session.get(Link, old.link_id) if old.link_id else None
    plan = RunPlan(item=item, link=link, notebook=old.notebook, given={**old.params_given, **kept, **checked},
                   params={**old.params, **checked})
    return plan, old.kernel
