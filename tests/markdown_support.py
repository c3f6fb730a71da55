"""Helpers shared by the Markdown tests: a backlog's state as a round trip must keep it,
and random changes made through the CLI the way a user would make them."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.support import Cli

STATUSES = ["planned", "active", "paused", "done", "writing-up", "dropped"]
WORDS = ["流式", "attention", "背压", "kernel", "缓存", "drift", "Flink", "窗口", "memory", "梯度", "🚀launch", "KV"]


class Bound:
    """A Cli bound to one database."""

    def __init__(self, db: Path):
        self.cli, self.db = Cli(), db

    def __call__(self, *args, **kw):
        return self.cli("--db", self.db, *args, **kw)

    def json(self, *args):
        return self.cli.json("--db", self.db, *args)


def dump(cli) -> dict:
    return json.loads(cli("export", "--format", "json").stdout)


def doc_state(cli, only_documents: bool = True) -> dict:
    """Every item (by its path of kinds and titles), its fields, notes and outcomes; the backlog's notes."""
    data = dump(cli)
    items = [i for i in data["items"] if i["document_id"] is not None or not only_documents]
    by_id = {i["id"]: i for i in data["items"]}
    notes: dict = {}
    for note in data["notes"]:
        notes.setdefault(note["item_id"], []).append((note["date"], note["title"], note["text"]))
    outcomes: dict = {}
    for outcome in data["outcomes"]:
        outcomes.setdefault(outcome["item_id"], []).append((outcome["kind"], outcome["ref"], outcome["text"]))
    siblings: dict = {}
    for item in sorted(items, key=lambda i: (i["position"], i["id"])):
        siblings.setdefault((item["parent_id"], item["kind"]), []).append(item["id"])

    def path(item):
        out = []
        while item:
            out.append((item["kind"], item["title"]))
            item = by_id.get(item["parent_id"])
        return tuple(reversed(out))

    state: dict = {}
    for item in items:
        key = path(item)
        n = 0
        while (key, n) in state:
            n += 1
        state[(key, n)] = {
            "status": item["status"], "priority": item["priority"], "estimate": item["estimate"],
            "tags": item["tags"], "scores": (item["innovation"], item["practicality"], item["feasibility"]),
            "body": item["body"], "due": item["due_date"], "scheduled": item["scheduled_date"],
            "order": siblings[(item["parent_id"], item["kind"])].index(item["id"]),
            "notes": sorted(notes.get(item["id"], []), key=str),
            "outcomes": sorted(outcomes.get(item["id"], []), key=str),
        }
    return {"items": state, "notes": sorted(notes.get(None, []), key=str)}


def _items(cli) -> list[dict]:
    return [i for i in dump(cli)["items"] if i["document_id"] is not None]


def random_changes(cli, rng: random.Random, steps: int) -> list[str]:
    """Change the backlog through the CLI, as a user would; returns what was done."""
    done: list[str] = []
    serial = [0]

    def title() -> str:
        serial[0] += 1
        return f"{rng.choice(WORDS)} {rng.choice(WORDS)} n{serial[0]}"

    for _ in range(steps):
        items = _items(cli)
        headings = [i for i in items if i["kind"] == "item"]
        op = rng.choice(["status", "status", "check", "priority", "estimate", "tag", "title", "due", "body",
                         "add-task", "add-item", "add-top", "note", "note-backlog", "outcome", "rm", "mv"])
        if not items and op not in ("add-top", "note-backlog"):
            op = "add-top"
        target = rng.choice(items) if items else None
        ident = str(target["id"]) if target else ""
        if op == "status":
            cli("status", ident, rng.choice(STATUSES))
        elif op == "check":
            cli("check" if target["status"] != "done" else "uncheck", ident, "--force")
        elif op == "priority":
            cli("edit", ident, "--priority", rng.choice(["low", "medium", "high", "critical"]))
        elif op == "estimate":
            cli("edit", ident, "--estimate", rng.choice(["2-3天", "3-4 days", "1 week", "4h"]))
        elif op == "tag":
            cli("edit", ident, "--tag", rng.choice(WORDS).replace("🚀", ""), "--tag", "t" + str(rng.randint(1, 9)))
        elif op == "title":
            cli("edit", ident, "--title", title())
        elif op == "due":
            cli("edit", ident, "--due", f"2026-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}")
        elif op == "body":
            old = cli.json("show", ident)["body"]
            lines = old.split("\n") if old else []
            choice = rng.random()
            # Only lines with text are removed or replaced: a blank line between two paragraphs
            # may stand for a checklist between them, which a body edit does not remove.
            texts = [i for i, line in enumerate(lines) if line.strip()]
            if texts and choice < 0.3:
                lines.pop(rng.choice(texts))
            elif texts and choice < 0.6:
                lines[rng.choice(texts)] = f"{rng.choice(WORDS)} edited"
            else:
                lines.insert(rng.randint(0, len(lines)), rng.choice(
                    [f"{rng.choice(WORDS)} 新行", "## looks like a heading", "- [ ] looks like a task", "**Status**: active"]))
            cli("edit", ident, "--body", "\n".join(lines))
        elif op == "add-task":
            cli("add", title(), "--task", "--parent", ident, "--status", rng.choice(STATUSES))
        elif op == "add-item" and headings:
            parent = rng.choice(headings)
            cli("add", title(), "--parent", str(parent["id"]), "--priority", rng.choice(["medium", "high"]))
        elif op == "add-top":
            cli("add", title(), "--estimate", "2-3天")
        elif op == "note" and headings:
            cli("note", str(rng.choice(headings)["id"]), f"found {rng.choice(WORDS)}", "--date", f"2026-0{rng.randint(1, 9)}-0{rng.randint(1, 9)}")
        elif op == "note-backlog":
            cli("note", f"weekly {rng.choice(WORDS)}", "--date", f"2026-1{rng.randint(0, 2)}-0{rng.randint(1, 9)}")
        elif op == "outcome":
            cli("done", ident, "--outcome", f"code:experiments/{rng.choice(['a', 'b'])}.py", "--text", "impl")
        elif op == "rm":
            cli("rm", ident, "--yes")
        elif op == "mv" and len(headings) > 1:
            subtree = _descendants(items, target["id"])
            parents = [h for h in headings if h["id"] not in subtree]
            if parents:
                cli("mv", ident, "--parent", str(rng.choice(parents)["id"]))
        else:
            continue
        done.append(f"{op} {ident}")
    return done


def _descendants(items: list[dict], root: int) -> set[int]:
    out, frontier = {root}, [root]
    while frontier:
        frontier = [i["id"] for i in items if i["parent_id"] in frontier]
        out.update(frontier)
    return out


def reimported_state(text: str, folder: Path, name: str) -> dict:
    """The state a fresh backlog gets from importing ``text``."""
    path = folder / f"{name}.md"
    path.write_text(text, encoding="utf-8", newline="")
    other = Bound(folder / f"{name}.db")
    other("init", "--empty")
    other("import", path)
    return doc_state(other)
