"""All table models in one place.

The schema itself is created and changed only by the migrations in ``db.py``;
a test checks that the migrated schema matches these models column for column.
Timestamps are ISO 8601 UTC strings (see ``clock.py``); JSON columns hold plain
lists and dicts.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from research.vocab import ITEM_KINDS, OPEN_STATUSES, OUTCOME_KINDS, PRIORITIES, STATUSES  # noqa: F401


class Item(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(unique=True)
    parent_id: int | None = Field(default=None, foreign_key="item.id", index=True)
    kind: str = "item"
    title: str
    body: str = ""
    status: str = Field(default="planned", index=True)
    priority: str = "medium"
    estimate: str | None = None
    estimate_min_days: float | None = None
    estimate_max_days: float | None = None
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    innovation: int | None = None
    practicality: int | None = None
    feasibility: int | None = None
    score: float | None = None  # composite used for sorting
    position: int = 0  # order among siblings
    # Presentation hints that keep a Markdown round trip faithful (bold task
    # titles, numbered headings, where the checklist sat inside the body).
    style: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: str
    updated_at: str
    started_at: str | None = None
    done_at: str | None = None
    # The Markdown document the item belongs to (None: it belongs to none, as the
    # shipped experiments do until moved into one).
    document_id: int | None = Field(default=None, foreign_key="document.id", index=True)
    due_date: str | None = None  # YYYY-MM-DD
    scheduled_date: str | None = None
    start_date: str | None = None


class Document(SQLModel, table=True):
    """An imported Markdown file: its text as last imported or synced, and its conventions.

    Export writes ``text`` back with the backlog's changes edited into it; ``anchor`` rows
    say where each item, note and outcome sits in that text.
    """

    id: int | None = Field(default=None, primary_key=True)
    name: str  # the path as given at import
    path: str = Field(unique=True)  # absolute
    title: str | None = None
    text: str = ""
    sha256: str = ""  # of the file's bytes when imported or synced
    mtime: float | None = None
    conventions: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    layout: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    is_main: bool = False
    # The change (event batch) that last set ``text``: a document none of whose rows
    # changed after it exports as ``text`` itself.
    base_batch: int = 0
    imported_at: str
    synced_at: str


class Anchor(SQLModel, table=True):
    """Where a row (an item, note or outcome) was read from in its document's text, and what it said."""

    __table_args__ = (UniqueConstraint("table_name", "row_id"),)

    id: int | None = Field(default=None, primary_key=True)
    document_id: int = Field(foreign_key="document.id", index=True)
    table_name: str
    row_id: int
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Note(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    item_id: int | None = Field(default=None, foreign_key="item.id", index=True)
    date: str | None = None  # the journal date (YYYY-MM-DD) the note is filed under
    title: str | None = None  # an undated section keeps its heading here
    text: str = ""
    created_at: str


class Outcome(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    kind: str  # one of OUTCOME_KINDS
    ref: str = ""  # a path or URL
    text: str = ""
    created_at: str


class Event(SQLModel, table=True):
    """One row-level change. Events of one command share a batch; undo reverts a batch."""

    id: int | None = Field(default=None, primary_key=True)
    batch: int = Field(index=True)
    ts: str = Field(index=True)
    action: str  # created, edited, status, note, check, uncheck, move, delete, outcome, ...
    item_id: int | None = Field(default=None, index=True)  # no FK: history outlives the item
    table_name: str
    row_id: int
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    after: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    undone: bool = False


class Meta(SQLModel, table=True):
    """Backlog-level settings: the document title, its language, section headings."""

    key: str = Field(primary_key=True)
    value: str = ""


class Link(SQLModel, table=True):
    """A notebook linked to an item, with default parameters and how to pick the best run."""

    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    name: str
    notebook: str  # relative to the project root
    defaults: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    best: str | None = None  # "max:metric" or "min:metric"
    created_at: str


class Run(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    link_id: int | None = Field(default=None, foreign_key="link.id")
    sweep_id: str | None = Field(default=None, index=True)
    status: str = Field(default="queued", index=True)
    notebook: str
    notebook_sha256: str | None = None
    params_given: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    kernel: str | None = None
    cwd: str | None = None
    run_dir: str | None = None
    output_path: str | None = None
    executor: str = "local"
    external_id: str | None = None
    pid: int | None = None
    host: str | None = None
    heartbeat_at: str | None = None
    queued_at: str
    started_at: str | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    reason: str | None = None  # one line on why it ended as it did
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    environment: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    artifacts: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    trial: int | None = None  # the trial's number in its search sweep (`research sweep`)
    # Stored for later (`--queue`): the queue's name; `research queue work` takes it from there.
    queue: str | None = Field(default=None, index=True)
    timeout_s: float | None = None  # the limit a queued run is to run under


class Sweep(SQLModel, table=True):
    """A search over a notebook's parameters (`research sweep`): what to search, for how many trials.

    Its trials are runs (``run.sweep_id`` = ``id``, ``run.trial`` numbered from 0); the sampler's
    state is rebuilt from them, so a sweep resumes from the database alone.
    """

    id: str = Field(primary_key=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    link_id: int | None = Field(default=None, foreign_key="link.id")
    notebook: str
    space: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    fixed: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    objective: str
    direction: str  # maximize | minimize
    sampler: str  # tpe | random | grid
    seed: int | None = None
    trials: int
    jobs: int = 1
    executor: str = "local"
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = "running"  # running | finished | stopped | failed
    reason: str | None = None
    pid: int | None = None  # the process driving it, while one does
    host: str | None = None
    created_at: str
    updated_at: str
    ended_at: str | None = None


class Metric(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    name: str = Field(index=True)
    value: float | None = None  # numbers; anything else goes to value_json
    value_json: Any | None = Field(default=None, sa_column=Column(JSON))
    step: int | None = None
    ts: float | None = None
