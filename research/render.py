"""Terminal rendering of backlog data (rich). Data goes to stdout; hints to stderr."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from research.vocab import priority_with_fire, stars, status_with_emoji


def console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output is read by people and scripts alike: don't squeeze it into 80 columns.
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def print_json(data: Any) -> None:
    # The C encoder is used only without indent: pretty-print for people, not for pipes.
    indent = 2 if sys.stdout.isatty() else None
    try:
        text = json.dumps(data, ensure_ascii=False, indent=indent, default=str, allow_nan=False)
    except ValueError:  # NaN or an infinity somewhere (a metric, a parameter): JSON has no such number
        text = json.dumps(_finite(data), ensure_ascii=False, indent=indent, default=str)
    sys.stdout.write(text + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def info(message: str) -> None:
    """A hint or progress line, on stderr."""
    sys.stderr.write(message + "\n")


class LateProgress:
    """A progress bar on stderr that appears only once the work has taken a second.

    Quick commands print nothing; a long import shows how far it is. Nothing is drawn
    when stderr is not a terminal (a pipe or a log file would fill with carriage returns).
    """

    def __init__(self, label: str, delay: float = 1.0, stream=None):
        import time

        self.label, self.delay = label, delay
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.shown = False
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, what: str, done: int, total: int) -> None:
        import time

        if not self.enabled or (not self.shown and time.monotonic() - self.started < self.delay):
            return
        self.shown = True
        width = 30
        filled = int(width * done / total) if total else width
        bar = "█" * filled + "░" * (width - filled)
        end = "\n" if done >= total else ""
        self.stream.write(f"\r{self.label}: {bar} {done:,}/{total:,} {what}{end}")
        self.stream.flush()


def write_outline(parsed) -> None:
    """``import --dry-run``: each stretch of the document and what it became, on stdout."""
    names = {"item": "item", "task": "task", "note": "note", "text": "text", "notes section": "notes",
             "matrix": "matrix", "front matter": "front matter", "title": "title"}
    lines = []
    for region in parsed.regions:
        span = f"{region.start + 1}-{region.end}" if region.end - region.start > 1 else f"{region.start + 1}"
        lines.append(f"{span:>11}  {names.get(region.what, region.what):<12} {region.label}")
    sys.stdout.write("\n".join(lines) + ("\n" if lines else ""))


# Characters a terminal draws two columns wide (CJK, fullwidth forms, emoji), and
# zero-width joiners, variation selectors and combining marks. A regex count runs
# in C, which matters for 10,000-row tables.
_WIDE = re.compile(
    "[\u1100-\u115f\u231a\u231b\u23e9-\u23fa\u25fd\u25fe\u2614\u2615\u2648-\u2653\u267f\u2693"
    "\u26a1\u26aa\u26ab\u26bd\u26be\u26c4\u26c5\u26ce\u26d4\u26ea\u26f2-\u26f5\u26fa\u26fd"
    "\u2705\u270a\u270b\u2728\u274c\u274e\u2753-\u2755\u2757\u2795-\u2797\u27b0\u27bf\u2b1b\u2b1c"
    "\u2b50\u2b55\u2e80-\u303e\u3041-\u33ff\u3400-\u4dbf\u4e00-\u9fff\ua000-\ua4cf\uac00-\ud7a3"
    "\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6\U0001f300-\U0001f64f\U0001f680-\U0001f6ff"
    "\U0001f900-\U0001f9ff\U0001fa70-\U0001faff\U00020000-\U0003fffd]"
)
_ZERO = re.compile("[\u0300-\u036f\u200b-\u200f\ufe00-\ufe0f]")


def cell_width(text: str) -> int:
    """Terminal columns taken by ``text``: CJK and emoji take two."""
    if text.isascii():
        return len(text)
    return len(text) + len(_WIDE.findall(text)) - len(_ZERO.findall(text))


def _fit(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` columns, ending with an ellipsis when cut."""
    if cell_width(text) <= width:
        return text
    out, used = [], 0
    for char in text:
        w = cell_width(char)
        if used + w > width - 1:
            break
        out.append(char)
        used += w
    return "".join(out) + "…"


def write_items_table(rows, tree: bool = False) -> None:
    """A plain aligned table, written straight to stdout.

    rich renders 10,000 rows in seconds; this stays well under a second and keeps
    CJK text aligned by counting wide characters as two columns.
    """
    color = sys.stdout.isatty()
    rows = list(rows)
    due = any(row.item.due_date for row in rows)
    headers = ["ID", "Status", "Pri", "Title", "Done", "Est.", "Score", "Tags"] + (["Due"] if due else [])
    limits = [None, None, None, 70, None, 14, None, 24, None]
    table = []
    for row in rows:
        item = row.item
        prefix = "  " * row.depth if tree else ""
        marker = ("☑ " if item.status == "done" else "☐ ") if item.kind == "task" else ""
        cells = [
            str(item.id),
            status_with_emoji(item.status),
            priority_with_fire(item.priority),
            f"{prefix}{marker}{item.title}",
            row.progress,
            item.estimate or "",
            f"{item.score:.1f}" if item.score is not None else "",
            ", ".join(item.tags),
        ]
        if due:
            cells.append(item.due_date or "")
        table.append(cells)
    widths = [cell_width(h) for h in headers]
    cell_widths = []
    for cells in table:
        row_widths = []
        for i, cell in enumerate(cells):
            if limits[i]:
                cells[i] = cell = _fit(cell, limits[i])
            w = cell_width(cell)
            row_widths.append(w)
            if w > widths[i]:
                widths[i] = w
        cell_widths.append(row_widths)
    right = {0, 4, 6}
    if color:
        _fit_to_terminal(table, cell_widths, widths, title=3)

    def line(cells, row_widths, bold=False):
        parts = []
        for i, cell in enumerate(cells):
            pad = " " * (widths[i] - row_widths[i])
            parts.append(pad + cell if i in right else cell + pad)
        text = "  ".join(parts).rstrip()
        if color:
            text = f"\x1b[1m{text}\x1b[0m" if bold else text
        return text

    out = [line(headers, [cell_width(h) for h in headers], bold=True)]
    out.extend(line(cells, w) for cells, w in zip(table, cell_widths, strict=True))
    sys.stdout.write("\n".join(out) + "\n")


def _fit_to_terminal(table: list[list[str]], cell_widths: list[list[int]], widths: list[int], title: int) -> None:
    """Narrow the title column (then tags and estimate) so each row fits the terminal."""
    import shutil

    columns = shutil.get_terminal_size((160, 24)).columns
    excess = sum(widths) + 2 * (len(widths) - 1) - columns
    for index, floor in ((title, 24), (7, 8), (5, 6), (title, 12)):
        if excess <= 0:
            return
        target = max(floor, widths[index] - excess)
        if target >= widths[index]:
            continue
        for cells, row_widths in zip(table, cell_widths, strict=True):
            if row_widths[index] > target:
                cells[index] = _fit(cells[index], target)
                row_widths[index] = cell_width(cells[index])
        excess -= widths[index] - target
        widths[index] = target


class _Styles:
    """ANSI bold, dim and colours on a terminal (unless NO_COLOR is set); plain text elsewhere."""

    def __init__(self, stream):
        import os

        self.on = stream.isatty() and not os.environ.get("NO_COLOR")

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on and text else text


def show_item(detail: dict[str, Any]) -> None:
    """One item as plain lines (no rich: `show` is the command people run most, and
    rich's import and Markdown renderer cost more than the rest of it). The body is
    printed as written: it is the researcher's own Markdown."""
    style = _Styles(sys.stdout)
    bold, dim = (lambda t: style(t, "1")), (lambda t: style(t, "2"))
    progress = detail.get("progress") or {}
    fields = [
        ("ID", f"{detail['id']}  ({detail['slug']})"),
        ("Path", " › ".join(detail["path"])),
        ("Kind", detail["kind"]),
        ("Status", status_with_emoji(detail["status"])),
        ("Priority", priority_with_fire(detail["priority"])),
        ("Estimate", detail["estimate"] or ""),
        ("Tags", ", ".join(detail["tags"])),
        (
            "Scores",
            "  ".join(
                f"{name} {stars(detail[name])}"
                for name in ("innovation", "practicality", "feasibility")
                if detail[name]
            )
            + (f"  → {detail['score']:.2f}" if detail["score"] is not None else ""),
        ),
        ("Checklist", f"{progress.get('done', 0)}/{progress.get('total', 0)}" if progress.get("total") else ""),
        ("Created", detail["created_at"][:19].replace("T", " ")),
        ("Started", (detail["started_at"] or "")[:19].replace("T", " ")),
        ("Done", (detail["done_at"] or "")[:19].replace("T", " ")),
        ("Due", detail.get("due_date") or ""),
        ("Scheduled", detail.get("scheduled_date") or ""),
        ("Starts", detail.get("start_date") or ""),
        ("Document", detail.get("document") or ""),
    ]
    shown = [(name, value) for name, value in fields if value]
    width = max(len(name) for name, _ in shown)
    out = [bold(detail["title"])]
    out += [f"  {bold(name.ljust(width))}  {value}" for name, value in shown]
    body = detail["body"].splitlines()
    at = detail.get("tasks_at")
    at = len(body) if at is None else at

    def text_block(lines: list[str]) -> None:
        if "\n".join(lines).strip():
            out.extend(["", *(f"  {line}".rstrip() for line in lines)])

    def section(title: str, lines: list[str]) -> None:
        if lines:
            out.extend(["", bold(title), *(f"  {line}" for line in lines)])

    text_block(body[:at])
    children = []
    for child in detail["children"]:
        mark = ("☑" if child["status"] == "done" else "☐") if child["kind"] == "task" else "•"
        prog = child["progress"]
        extra = f"  {prog['done']}/{prog['total']}" if prog["total"] else ""
        children.append(f"{mark} {style(str(child['id']), '36')} {child['title']}  {dim(child['status'] + extra)}")
    section("Checklist and children", children)
    text_block(body[at:])
    section("Notebooks", detail.get("links_lines") or [])
    section("Runs", (detail.get("runs_lines") or []) if detail.get("runs") else [])
    section("Notes", [f"{style(note['date'] or note['title'] or '', '32')} {note['text']}".lstrip()
                      for note in detail["notes"]])
    section("Outcomes", [f"{o['kind']}: {o['ref']} {o['text']}".rstrip() for o in detail["outcomes"]])
    section("History", [f"{dim(e['ts'][:19].replace('T', ' '))} {describe_event(e)}" for e in detail["history"][-15:]])
    sys.stdout.write("\n".join(out) + "\n")


def describe_event(event: dict[str, Any]) -> str:
    action, before, after = event["action"], event.get("before") or {}, event.get("after") or {}
    undone = " (undone)" if event.get("undone") else ""
    if action in ("status", "check", "uncheck") and "status" in after:
        return f"{action}: {before.get('status')} → {after['status']}{undone}"
    if action == "created":
        return f"created “{after.get('title', '')}”{undone}"
    if action == "note":
        return f"note: {(after.get('text') or '')[:60]}{undone}"
    if action == "outcome":
        return f"outcome {after.get('kind')}: {after.get('ref')}{undone}"
    if action == "link" and not before:
        return f"linked notebook {after.get('name')} ({after.get('notebook')}){undone}"
    if action == "unlink" and not after and "notebook" in before:
        return f"unlinked notebook {before.get('name')}{undone}"
    if action == "move":
        return f"moved under {after.get('parent_id') or 'top level'}{undone}"
    changed = ", ".join(k for k in after if k not in ("updated_at",))
    return f"{action}: {changed}{undone}"


# ---------------------------------------------------------------------------
# Runs


def short_value(value, limit: int = 40) -> str:
    """A parameter or metric value in a few columns: floats to 4 digits, long text cut."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={short_value(v, limit)}" for k, v in value.items()) + "}"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [cell_width(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], cell_width(cell))
    lines = []
    for row in [headers, *rows]:
        lines.append("  ".join(cell + " " * (widths[i] - cell_width(cell)) for i, cell in enumerate(row)).rstrip())
    sys.stdout.write("\n".join(lines) + "\n")


def write_runs_table(rows: list[dict]) -> None:
    # Runs sent to Dask or Slurm add a column with the executor and the engine's id.
    remote = any(r.get("executor") not in (None, "local") for r in rows)
    table = []
    for r in rows:
        params = " ".join(f"{k}={short_value(v, 32)}" for k, v in r["params_given"].items())
        metrics = " ".join(f"{k}={short_value(v, 32)}" for k, v in list(r["metrics"].items())[:4])
        duration = f"{r['duration_s']:.1f}s" if r["duration_s"] is not None else ""
        row = [str(r["id"]), r["item"] or "", r["status"], r["sweep_id"] or "", duration, params, metrics]
        if remote:
            row.append(f"{r.get('executor') or 'local'} {r.get('external_id') or ''}".strip())
        table.append(row)
    headers = ["Run", "Item", "Status", "Sweep", "Time", "Params", "Metrics"]
    plain_table([*headers, "Executor"] if remote else headers, table)


def write_plan_table(plans: list[dict]) -> None:
    """``run --dry-run``: one line per planned run, with the parameters it injects."""
    table = [[str(n), p["item"], p["notebook"], " ".join(f"{k}={short_value(v, 32)}" for k, v in p["inject"].items())]
             for n, p in enumerate(plans, 1)]
    plain_table(["#", "Item", "Notebook", "Params"], table)


def write_compare_table(table: dict) -> None:
    headers = ["", *[f"#{rid} ({status})" for rid, status in zip(table["runs"], table["status"], strict=True)]]
    rows = [[f"{row['section']}.{row['name']}", *[short_value(v, 32) for v in row["values"]]] for row in table["rows"]]
    plain_table(headers, rows)


def run_summary_line(result) -> str:
    metrics = " ".join(f"{k}={short_value(v, 32)}" for k, v in list(result.metrics.items())[:5])
    reason = f" ({result.reason})" if result.reason and result.status != "succeeded" else ""
    return f"run {result.run_id} {result.status} in {result.duration_s:.1f}s{reason} {metrics}".rstrip()


def show_run(detail: dict) -> None:
    out = console()
    out.print(f"[bold]Run {detail['id']}[/bold]  {detail['status']}  item {detail['item']}", highlight=False)
    fields = [
        ("Notebook", f"{detail['notebook']} (sha256 {str(detail.get('notebook_sha256') or '')[:12]})"),
        ("Sweep", detail.get("sweep_id") or ""),
        ("Output", detail.get("output_path") or ""),
        ("Kernel", detail.get("kernel") or ""),
        ("Executor", f"{detail.get('executor')}" + (f" {detail['external_id']}" if detail.get("external_id") else "")),
        ("Queued", detail.get("queued_at") or ""),
        ("Started", detail.get("started_at") or ""),
        ("Ended", detail.get("ended_at") or ""),
        ("Duration", f"{detail['duration_s']:.2f} s" if detail.get("duration_s") is not None else ""),
        ("Reason", detail.get("reason") or ""),
    ]
    for name, value in fields:
        if value:
            out.print(f"  {name:<9} {value}", markup=False, highlight=False)
    for section in ("params", "metrics"):
        if detail.get(section):
            out.print(f"[bold]{section.capitalize()}[/bold]")
            for k, v in detail[section].items():
                out.print(f"  {k} = {short_value(v, 32)}", markup=False, highlight=False)
    live = detail.get("live")
    if live:  # an open run: what it has recorded so far
        cells = f", {live['cells_done']}/{live['cells_total']} cells" if live.get("cells_total") else ""
        out.print(f"[bold]Live[/bold] (so far{cells})")
        for k, v in live["metrics"].items():
            step = f"  (step {v['step']})" if v.get("step") is not None else ""
            out.print(f"  {k} = {short_value(v['value'], 32)}{step}", markup=False, highlight=False)
    if detail.get("artifacts"):
        out.print("[bold]Artifacts[/bold]")
        for path in detail["artifacts"]:
            out.print(f"  {path}", markup=False)
    env = detail.get("environment") or {}
    if env:
        out.print("[bold]Environment[/bold]")
        for key in ("git_commit", "git_dirty", "host", "python", "torch", "papermill", "device"):
            if key in env:
                out.print(f"  {key} = {env[key]}", markup=False, highlight=False)
    error = detail.get("error")
    if error:
        out.print(f"[bold red]Error in cell {error.get('cell_index')}[/bold red]: {error.get('ename')}: {error.get('evalue')}")
        for line in error.get("traceback") or []:
            out.print(line, markup=False, highlight=False)


class RunProgress:
    """One progress bar per run (cells done, elapsed) on stderr, when stderr is a terminal."""

    def __init__(self, run_ids: list[int], enabled: bool = True):
        self.run_ids = run_ids
        self.enabled = enabled and sys.stderr.isatty()
        self._progress = None
        self._tasks: dict[int, int] = {}

    def __enter__(self):
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("run {task.fields[run_id]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("cells"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[state]}"),
                console=console(stderr=True),
                transient=False,
            )
            self._progress.__enter__()
            for rid in self.run_ids:
                self._tasks[rid] = self._progress.add_task("", total=None, run_id=rid, state="queued", start=False)
        return self

    def update(self, run_id: int, done: int, total: int) -> None:
        if self._progress is not None and run_id in self._tasks:
            task = self._tasks[run_id]
            self._progress.start_task(task)
            self._progress.update(task, completed=done, total=total, state="running")

    def finish(self, result) -> None:
        if self._progress is not None and result.run_id in self._tasks:
            self._progress.update(self._tasks[result.run_id], state=result.status)
            self._progress.stop_task(self._tasks[result.run_id])

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False


class SweepProgress:
    """One bar for all of a submission's runs (done / running / failed) on stderr, when it is a terminal."""

    def __init__(self, run_ids: list[int], label: str, enabled: bool = True):
        self.run_ids = list(run_ids)
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self.running: set[int] = set()
        self.done: dict[int, str] = {}
        self._progress = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("done · {task.fields[running]} running · {task.fields[failed]} failed"),
                TimeElapsedColumn(),
                console=console(stderr=True),
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=len(self.run_ids), running=0, failed=0)
        return self

    def _refresh(self) -> None:
        if self._progress is not None:
            failed = sum(1 for status in self.done.values() if status != "succeeded")
            self._progress.update(self._task, completed=len(self.done), running=len(self.running), failed=failed)

    def start(self, run_id: int) -> None:
        if run_id not in self.done:
            self.running.add(run_id)
        self._refresh()

    def finish(self, result) -> None:
        self.running.discard(result.run_id)
        self.done[result.run_id] = result.status
        self._refresh()

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False
