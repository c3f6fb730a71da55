"""The web view's routes: Starlette over the same ``todo.db`` the CLI writes, pages from
Jinja2 templates (autoescaped), a few lines of our own JavaScript for live runs.

Pages are plain functions run in the server's thread pool; every request opens its own connection (the CLI may be writing beside it: SQLite's WAL
and the busy timeout the store sets let both go on). Pages read through ``pages``; the
three writes (status, tick, note) go through the backlog library as the CLI's commands
do, one event each, so `research undo` reverts them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from research.errors import ResearchError
from research.serve import pages
from research.serve.security import Guard, GuardMiddleware, file_in_folder

HERE = Path(__file__).resolve().parent


@functools.cache
def _templates() -> Environment:
    from research.render import short_value
    from research.vocab import STATUS_EMOJI, priority_with_fire

    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["short"] = short_value
    env.filters["emoji"] = lambda status: STATUS_EMOJI.get(status, "")
    env.filters["fire"] = lambda priority: priority_with_fire(priority, " ") if priority else ""
    env.filters["when"] = lambda ts: (ts or "")[:16].replace("T", " ")
    env.filters["q"] = lambda text: quote(str(text), safe="")
    return env


def create_app(db_path: Path, project_root: Path, guard: Guard) -> Starlette:
    site = pages.Site(Path(db_path), Path(project_root))

    def render(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
        page = _templates().get_template(name).render(request=request, csrf=guard.csrf_token, **context)
        return HTMLResponse(page, status_code=status_code)

    def failure(request: Request, message: str, status_code: int) -> HTMLResponse:
        return render(request, "error.html", status_code=status_code, message=message)

    def backlog(request: Request):
        return render(request, "backlog.html", **pages.backlog_page(site, request.query_params))

    def item(request: Request):
        return render(request, "item.html", **pages.item_page(site, request.path_params["ref"]))

    def run(request: Request):
        return render(request, "run.html", **pages.run_page(site, _run_ref(request)))

    def run_live(request: Request):
        return JSONResponse(pages.live_json(site, _run_ref(request)), headers={"cache-control": "no-store"})

    def run_file(request: Request):
        folder = pages.run_folder(site, _run_ref(request))
        target = file_in_folder(folder, request.path_params["path"])
        if target is None:
            raise HTTPException(404, "no such file in this run's folder")
        # A run's files are the notebook's output: served sandboxed, as the notebook is.
        return FileResponse(target, headers={"content-disposition": "inline", "x-research-csp": "notebook"})

    def run_notebook(request: Request):
        html = pages.notebook_html(site, _run_ref(request))
        return HTMLResponse(html, headers={"x-research-csp": "notebook"})

    def sweeps(request: Request):
        return render(request, "sweeps.html", sweeps=pages.sweeps_list(site))

    def sweep(request: Request):
        return render(request, "sweep.html", **pages.sweep_page(site, request.path_params["sweep"]))

    def review(request: Request):
        return render(request, "review.html", **pages.review_page(site, request.query_params))

    def review_chart(request: Request):
        png = pages.review_chart(site, request.query_params, request.path_params["name"])
        return Response(png, media_type="image/png")

    async def post_status(request: Request):
        form = await _checked_form(request, guard)
        slug = await run_in_threadpool(pages.set_item_status, site, request.path_params["ref"], form.get("status", ""))
        return _back(request, form, f"/items/{quote(slug, safe='')}")

    async def post_note(request: Request):
        form = await _checked_form(request, guard)
        slug = await run_in_threadpool(pages.add_item_note, site, request.path_params["ref"], form.get("text", ""))
        return _back(request, form, f"/items/{quote(slug, safe='')}#notes")

    async def on_research_error(request: Request, exc: ResearchError):
        return failure(request, str(exc), 404 if str(exc).startswith("no ") else 400)

    async def on_database_error(request: Request, exc: Exception):
        # A database damaged, locked too long or out of space while serving: one line, as the CLI says it.
        from research.store.health import error_sentence, sqlite_cause

        return failure(request, error_sentence(sqlite_cause(exc) or exc), 503)

    async def on_http_error(request: Request, exc: HTTPException):
        return failure(request, exc.detail or "error", exc.status_code)

    def favicon(request: Request):  # browsers ask for it whatever the page links
        return FileResponse(HERE / "static" / "favicon.svg", media_type="image/svg+xml")

    routes = [
        Route("/", backlog),
        Route("/favicon.ico", favicon),
        Route("/items/{ref:str}", item),
        Route("/items/{ref:str}/status", post_status, methods=["POST"]),
        Route("/items/{ref:str}/notes", post_note, methods=["POST"]),
        Route("/runs/{run:int}", run),
        Route("/runs/{run:int}/live", run_live),
        Route("/runs/{run:int}/notebook", run_notebook),
        Route("/runs/{run:int}/files/{path:path}", run_file),
        Route("/sweeps", sweeps),
        Route("/sweeps/{sweep:str}", sweep),
        Route("/review", review),
        Route("/review/chart/{name:str}.png", review_chart),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=_lifespan, exception_handlers={
        ResearchError: on_research_error, HTTPException: on_http_error,
        sqlite3.DatabaseError: on_database_error, DBAPIError: on_database_error,
    })
    app.add_middleware(GuardMiddleware, guard=guard)
    return app


# How many pages are built at once. Pages are Python (the GIL runs one at a time anyway):
# more threads only interleave them, so that under load every request finishes late and
# some very late; a few, and the rest wait their turn in order (anyio's limiter is FIFO).
PAGE_THREADS = int(os.environ.get("RESEARCH_SERVE_THREADS", "2"))


@contextlib.asynccontextmanager
async def _lifespan(app):
    import anyio.to_thread

    anyio.to_thread.current_default_thread_limiter().total_tokens = PAGE_THREADS
    yield


def _run_ref(request: Request) -> str:
    return str(request.path_params["run"])


async def _checked_form(request: Request, guard: Guard) -> dict[str, str]:
    """The posted form, once its CSRF token is right and it came from this site."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        if origin.split("://", 1)[-1] != host:
            raise HTTPException(403, "a form from another site")
    body = await request.body()
    if len(body) > 1_000_000:
        raise HTTPException(413, "too much text")
    from urllib.parse import parse_qs

    fields = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
    if not guard.check_csrf(fields.get("csrf")):
        raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")
    return fields


def _back(request: Request, form: dict[str, str], default: str) -> RedirectResponse:
    """Back where the form was (a path on this site only), else ``default``."""
    target = form.get("next", "")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = default
    return RedirectResponse(target, status_code=303)
