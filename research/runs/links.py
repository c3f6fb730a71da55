"""Notebooks linked to backlog items: link, unlink, and the notebooks a project has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from research import clock
from research.backlog.items import ChangeLog
from research.errors import ResearchError
from research.runs.metrics import parse_best
from research.store.models import Item, Link, Run

# ---------------------------------------------------------------------------
# The project: where notebooks are

NOTEBOOKS_DIR = "notebooks"


def find_project(db_path: Path | None = None, start: Path | None = None) -> Path | None:
    """The project a command works in: the nearest folder, from ``start`` (the current
    directory) upward, that holds a ``notebooks/`` folder, as git finds ``.git``; else the
    database's folder when it holds one; else None.

    Notebook links are relative to it, so a database kept elsewhere (``$RESEARCH_DB``) still
    links and runs the notebooks of the project it is used from. Run outputs stay under
    ``runs/`` beside the database.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / NOTEBOOKS_DIR).is_dir():
            return folder
    if db_path is not None and (Path(db_path).resolve().parent / NOTEBOOKS_DIR).is_dir():
        return Path(db_path).resolve().parent
    return None


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
    from research.runs.params import inspect_notebook, resolve_parameters

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
    from research.runs.params import inspect_notebook

    folder = project_root / "notebooks"
    out = []
    for path in sorted(folder.rglob("*.ipynb")) if folder.is_dir() else []:
        if ".ipynb_checkpoints" in path.parts:
            continue
        entry: dict[str, Any] = {"notebook": path.relative_to(project_root).as_posix(), "parameters": [], "error": None}
        try:
            specs = inspect_notebook(path)
            entry["parameters"] = [
                {"name": s.name, "type": s.type_name, "default": s.default_repr, "help": s.help}
                for s in specs.values()
            ]
            if not specs.tagged:
                entry["error"] = ("no cell tagged 'parameters': it runs as it is; papermill would put -p values "
                                  "in a cell at the top (research run --no-check does the same)")
            elif not specs.injectable:
                entry["error"] = f"papermill has no parameter translator for {specs.language} notebooks"
            elif not specs.readable:
                entry["error"] = f"papermill cannot read {specs.language} parameters cells; -p values go unchecked"
        except ResearchError as exc:
            entry["error"] = str(exc)
        out.append(entry)
    return out
