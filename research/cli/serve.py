"""`research serve`: the backlog, its runs, sweeps and reviews in a browser (``research.serve``)."""

from __future__ import annotations

from typing import Annotated

import typer

from research.cli.app import app


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; anything but loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")] = 8765,
    token: Annotated[str | None, typer.Option("--token", help="The access token (16+ characters); made and printed when another address needs one.")] = None,
    open_: Annotated[bool, typer.Option("--open", help="Open the backlog in the default browser.")] = False,
) -> None:
    """Serve a web view of the backlog, runs, sweeps and reviews.

    Serve a local web view: the backlog as a tree with filters, items with their notes and
    runs, runs with live metrics and output notebooks, sweeps, and reviews of any period.
    Status changes, ticks and notes made there are events `research undo` reverts.
    Binds to 127.0.0.1; on any other address every request needs the token it prints.
    """
    from research.cli.context import db_path, project_root, recover_runs
    from research.serve.server import serve as run_server

    recover_runs()
    run_server(db_path(), project_root(), host=host, port=port, token=token, open_browser=open_)
