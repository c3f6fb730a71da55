"""Starting the web view: the token, the socket, uvicorn, and a periodic run recovery.

Runs whose runner died are marked as such by every CLI command as it starts; a server
lives long, so it does the same every few seconds in a thread of its own (never inside a
GET: reading a page changes nothing)."""

from __future__ import annotations

import gc
import socket
import sys
import threading
from pathlib import Path

from research.errors import ResearchError

RECOVER_EVERY_S = 10.0


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts: a taken port is one line, and
    ``--port 0`` learns its number before printing the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ResearchError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _recover_forever(db_path: Path, stop: threading.Event) -> None:
    from research.runs.recovery import recover_runs

    while not stop.wait(RECOVER_EVERY_S):
        try:
            recover_runs(db_path)
        except Exception:  # a busy or briefly locked database: the next round tries again
            pass


def _open_browser(url: str) -> None:
    import webbrowser

    if not webbrowser.open(url):
        print(f"  found no browser to open; open {url} yourself", file=sys.stderr, flush=True)


def serve(db_path: Path, project_root: Path, host: str = "127.0.0.1", port: int = 8765,
          token: str | None = None, open_browser: bool = False) -> None:
    import uvicorn

    from research.serve.app import create_app
    from research.serve.security import Guard, is_loopback, server_token

    token = server_token(host, token)
    sock = bind(host, port)
    port = sock.getsockname()[1]
    guard = Guard(host=host, token=token)
    app = create_app(db_path, project_root, guard)
    # A page of 10,000 rows makes some hundred thousand short-lived objects; at the default
    # threshold (700) the collector runs hundreds of times per page, a quarter of its time.
    # What start-up made stays put (freeze), and young collections come far less often.
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"research serve: {url}  ({db_path})", file=sys.stderr)
    if token and not is_loopback(host):
        print("  every request needs the token: share this address only with people who may change the backlog",
              file=sys.stderr)
    print("  Ctrl-C stops it", file=sys.stderr, flush=True)
    stop = threading.Event()
    threading.Thread(target=_recover_forever, args=(db_path, stop), daemon=True, name="recover-runs").start()
    if open_browser:
        threading.Timer(0.5, _open_browser, args=(url,)).start()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", server_header=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        stop.set()
        sock.close()
