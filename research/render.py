"""Terminal rendering of backlog data (rich). Data goes to stdout; hints to stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from research.vocab import PRIORITY_FIRE, STATUS_EMOJI


def console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output is read by people and scripts alike: don't squeeze it into 80 columns.
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def info(message: str) -> None:
    """A hint or progress line, on stderr."""
    sys.stderr.write(message + "\n")


def status_cell(status: str) -> str:
    return f"{STATUS_EMOJI.get(status, '')} {status}"


def priority_cell(priority: str) -> str:
    fire = PRIORITY_FIRE.get(priority, "")
    return f"{fire}{priority}" if fire else priority


def stars(value: int | None) -> str:
    return "⭐" * value if value else ""


def items_table(rows, tree: bool = False, title: str | None = None):
    """rows: iterable of backlog.ItemRow."""
    from rich.table import Table

    table = Table(title=title, show_edge=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("ID", justify="right", style="cyan", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Pri", no_wrap=True)
    table.add_column("Title", overflow="fold", min_width=24, ratio=1)
    table.add_column("Done", justify="right", no_wrap=True)
    table.add_column("Est.", no_wrap=True, max_width=14, overflow="ellipsis")
    table.add_column("Score", justify="right", no_wrap=True)
    table.add_column("Tags", no_wrap=True, max_width=24, overflow="ellipsis")
    for row in rows:
        item = row.item
        prefix = "  " * row.depth if tree else ""
        marker = ("☑ " if item.status == "done" else "☐ ") if item.kind == "task" else ""
        table.add_row(
            str(item.id),
            status_cell(item.status),
            priority_cell(item.priority),
            f"{prefix}{marker}{item.title}",
            row.progress,
            item.estimate or "",
            f"{item.score:.1f}" if item.score is not None else "",
            ", ".join(item.tags),
        )
    return table


def show_item(detail: dict[str, Any]) -> None:
    from rich.markdown import Markdown
    from rich.panel import Panel
    from rich.table import Table

    out = console()
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    progress = detail.get("progress") or {}
    fields = [
        ("ID", f"{detail['id']}  ({detail['slug']})"),
        ("Path", " › ".join(detail["path"])),
        ("Kind", detail["kind"]),
        ("Status", status_cell(detail["status"])),
        ("Priority", priority_cell(detail["priority"])),
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
    ]
    for name, value in fields:
        if value:
            head.add_row(name, value)
    out.print(Panel(head, title=detail["title"], title_align="left"))
    body = detail["body"].splitlines()
    at = detail.get("tasks_at")
    at = len(body) if at is None else at
    if "\n".join(body[:at]).strip():
        out.print(Markdown("\n".join(body[:at])))
    if detail["children"]:
        out.print("[bold]Checklist and children[/bold]")
        for child in detail["children"]:
            mark = ("☑" if child["status"] == "done" else "☐") if child["kind"] == "task" else "•"
            prog = child["progress"]
            extra = f"  {prog['done']}/{prog['total']}" if prog["total"] else ""
            out.print(f"  {mark} [cyan]{child['id']}[/cyan] {child['title']}  [dim]{child['status']}{extra}[/dim]")
    if "\n".join(body[at:]).strip():
        out.print(Markdown("\n".join(body[at:])))
    for section, key in (("Runs", "runs"),):
        if detail.get(key):
            out.print(f"[bold]{section}[/bold]")
            for line in detail[key + "_lines"]:
                out.print("  " + line)
    if detail["notes"]:
        out.print("[bold]Notes[/bold]")
        for note in detail["notes"]:
            label = note["date"] or note["title"] or ""
            out.print(f"  [green]{label}[/green] {note['text']}")
    if detail["outcomes"]:
        out.print("[bold]Outcomes[/bold]")
        for o in detail["outcomes"]:
            out.print(f"  {o['kind']}: {o['ref']} {o['text']}".rstrip())
    if detail["history"]:
        out.print("[bold]History[/bold]")
        for event in detail["history"][-15:]:
            out.print(f"  [dim]{event['ts'][:19].replace('T', ' ')}[/dim] {describe_event(event)}")


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
    if action == "move":
        return f"moved under {after.get('parent_id') or 'top level'}{undone}"
    changed = ", ".join(k for k in after if k not in ("updated_at",))
    return f"{action}: {changed}{undone}"
