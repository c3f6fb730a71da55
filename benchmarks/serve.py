"""`research serve` against the CLI on a large backlog, and under 20 concurrent clients.

A backlog of 10,000 items (directions with checklist tasks, as `cli_latency.py` builds it)
and 5,000 finished runs with parameters and metrics. The server runs as `research serve`
does (a subprocess on a free port); each page is requested over one keep-alive connection,
alternately with the whole `research` command that prints the same data, so both see the
same load:

- the backlog table `/?tree=0` against `research list`, the tree `/` against
  `research list --tree`, every one of the 10,000 rows (`?tasks=1&all=1`, table and tree)
  against `research list --tasks --all` (and `--tree`), an item with 50 runs
  `/items/direction-1` against `research show 1`:
  medians of ``--requests`` pairs (after warm-up), and the median of the per-pair ratios.
  Target (issue 21): pages at most 1.0x the CLI's time (the server has no start-up to pay).
- ``--clients`` threads, each with its own connection, requesting the backlog and item
  pages for ``--seconds``: requests done, errors, median and p99 latency.
  Target: no error, p99 under 10x the median. The same load on Starlette's default thread
  pool (40 threads) stands beside it: the server builds only a few pages at once.

    python benchmarks/serve.py [--items 10000] [--runs 5000] [--requests 20] [--clients 20] [--seconds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _project import compile_bytecode  # noqa: E402
from cli_latency import _once, build_backlog  # noqa: E402

from research.serve.app import PAGE_THREADS  # noqa: E402

PAGE_TARGET = 1.0
TAIL_TARGET = 10.0


def add_runs(db_path: Path, n_runs: int, n_items: int) -> None:
    """``n_runs`` succeeded runs with two parameters and two metrics each: 50 on item 1, the
    rest spread over the directions (every tenth item)."""
    from research import clock
    from research.store.db import session_scope
    from research.store.models import Link, Metric, Run

    now = clock.now_iso()
    directions = list(range(1, n_items + 1, 10))
    with session_scope(db_path, write=True) as session:
        session.add(Link(id=1, item_id=1, name="train", notebook="notebooks/train.ipynb", best="max:accuracy",
                         created_at=now))
        session.flush()
        for n in range(n_runs):
            item = 1 if n < 50 else directions[n % len(directions)]
            params = {"lr": 10 ** -(2 + n % 4), "seed": n % 7, "layers": 2 + n % 6}
            session.add(Run(id=n + 1, item_id=item, link_id=1 if item == 1 else None, status="succeeded",
                            notebook="notebooks/train.ipynb", params=params, params_given=params,
                            queued_at=now, started_at=now, ended_at=now, duration_s=1.0 + n % 5,
                            run_dir=f"runs/{n + 1}", output_path=f"runs/{n + 1}/output.ipynb"))
        session.flush()  # the runs before the metrics that point at them
        for n in range(n_runs):
            session.add(Metric(run_id=n + 1, name="loss", value=1.0 / (1 + n % 13), ts=0.0))
            session.add(Metric(run_id=n + 1, name="accuracy", value=0.5 + (n % 17) / 40, ts=0.0))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, float, int]:
    start = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    return response.status, time.perf_counter() - start, len(body)


def wait_until_up(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"research serve exited: {server.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("research serve did not answer in 60 s")


def paired(conn, path: str, cli: list[str], env: dict, cwd: Path, repeats: int) -> dict:
    for _ in range(2):  # warm-up: templates compiled, caches filled, the first connection made
        status, _, _ = get(conn, path)
        assert status == 200, (path, status)
    pairs = []
    size = 0
    for _ in range(repeats):
        status, page, size = get(conn, path)
        assert status == 200, (path, status)
        pairs.append((page, _once(cli, env, cwd)))
    return {"page": statistics.median(p for p, _ in pairs), "cli": statistics.median(c for _, c in pairs),
            "ratio": statistics.median(p / c for p, c in pairs), "bytes": size}


def hammer(port: int, clients: int, seconds: float, paths: list[str]) -> dict:
    latencies: list[float] = []
    by_path: dict[str, list[float]] = {}
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, n = [], index
        while time.monotonic() < stop_at:
            path = paths[n % len(paths)]
            n += 1
            try:
                status, took, _ = get(conn, path)
                if status != 200:
                    with lock:
                        errors.append(f"{path}: HTTP {status}")
                mine.append((path, took))
            except Exception as exc:  # a dropped connection is an error to count, then reconnect
                with lock:
                    errors.append(f"{path}: {exc!r}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.close()
        with lock:
            for path, took in mine:
                latencies.append(took)
                by_path.setdefault("/items/<id>" if path.startswith("/items/") else path, []).append(took)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan")
    median = statistics.median(latencies) if latencies else float("nan")
    return {"requests": len(latencies), "errors": errors, "median": median, "p99": p99,
            "pages": {path: _spread(times) for path, times in by_path.items()}}


def _spread(times: list[float]) -> tuple[int, float, float]:
    times = sorted(times)
    return len(times), statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    compile_bytecode()

    research = shutil.which("research") or str(Path(sys.executable).with_name("research"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db_path = folder / "todo.db"
        build_backlog(db_path, args.items)
        add_runs(db_path, args.runs, args.items)
        env = {**os.environ, "RESEARCH_DB": str(db_path)}
        env.pop("RESEARCH_NOW", None)
        with serving(research, env, folder) as port:
            print(f"{args.items} items, {args.runs} runs; {os.cpu_count()} cores, load average "
                  f"{os.getloadavg()[0]:.2f} at start")
            print(f"\n1. Page (keep-alive connection) vs the whole CLI command, alternately, median of {args.requests} pairs")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            cases = [
                ("backlog table /?tree=0", "/?tree=0", ["list"]),
                ("backlog tree /", "/", ["list", "--tree"]),
                ("all 10,000 rows /?tree=0&tasks=1&all=1", "/?tree=0&tasks=1&all=1", ["list", "--tasks", "--all"]),
                ("all rows as a tree", "/?tasks=1&all=1", ["list", "--tree", "--tasks", "--all"]),
                ("item /items/direction-1 (50 runs)", "/items/direction-1", ["show", "1"]),
            ]
            print(f"  {'page':<40} {'page':>9} {'CLI':>9}   page/CLI (median of ratios)   CLI command")
            worst = 0.0
            for name, path, cli in cases:
                r = paired(conn, path, [research, *cli], env, folder, args.requests)
                worst = max(worst, r["ratio"])
                print(f"  {name:<40} {r['page'] * 1000:7.1f} ms {r['cli'] * 1000:7.1f} ms   "
                      f"{r['page'] / r['cli']:5.2f}x ({r['ratio']:.2f}x)   research {' '.join(cli)}"
                      f"   [{r['bytes'] / 1024:.0f} KiB page]")
            conn.close()
            print(f"pages at most {PAGE_TARGET:.1f}x the CLI: worst {worst:.2f}x ({verdict(worst <= PAGE_TARGET)})")

            print(f"\n2. {args.clients} concurrent clients for {args.seconds:.0f} s (backlog table, tree and item pages in turn)")
            paths = ["/?tree=0", "/items/direction-1", "/", *(f"/items/direction-{n}" for n in range(11, 200, 10))]
            load = report_load(hammer(port, args.clients, args.seconds, paths), args.seconds,
                               f"as served ({PAGE_THREADS} page threads)")
            tail = load["p99"] / load["median"]
            print(f"no error and p99 under {TAIL_TARGET:.0f}x the median: "
                  f"{verdict(not load['errors'] and tail < TAIL_TARGET)}")
        # The same load on Starlette's default thread pool (40 threads): why the server uses a few.
        with serving(research, {**env, "RESEARCH_SERVE_THREADS": "40"}, folder) as port:
            report_load(hammer(port, args.clients, args.seconds, paths), args.seconds, "Starlette's default 40 threads")
        print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


def report_load(load: dict, seconds: float, label: str) -> dict:
    tail = load["p99"] / load["median"]
    print(f"  {label}: requests {load['requests']} ({load['requests'] / seconds:.1f}/s), errors {len(load['errors'])}, "
          f"median {load['median'] * 1000:.0f} ms, p99 {load['p99'] * 1000:.0f} ms, p99/median {tail:.2f}")
    for path, (count, median, p99) in load["pages"].items():
        print(f"    {path:<18} {count:5d} requests, median {median * 1000:6.0f} ms, p99 {p99 * 1000:6.0f} ms")
    for line in load["errors"][:5]:
        print(f"    {line}")
    return load


@contextlib.contextmanager
def serving(research: str, env: dict, folder: Path):
    """`research serve` on a free port, for as long as the block runs; yields the port."""
    port = free_port()
    server = subprocess.Popen([research, "serve", "--port", str(port)], env=env, cwd=folder,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(port, server)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
