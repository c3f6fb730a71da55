"""The experiments shipped with the project, added to the backlog by `research init`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ShippedExperiment:
    slug: str
    title: str
    notebook: str  # relative to the project root
    body: str
    tags: tuple[str, ...] = ()
    priority: str = "high"
    best: str | None = None  # "max:metric" or "min:metric", marks a run as best
    defaults: dict = field(default_factory=dict)


EXPERIMENTS = [
    ShippedExperiment(
        slug="backpressure-dataloader",
        title="Backpressure DataLoader: credit-based, byte-budgeted, adaptive",
        notebook="notebooks/backpressure_dataloader.ipynb",
        body=(
            "Carry stream processing's credit-based flow control over to data loading: "
            "credits in bytes, returned when the training step that used a batch ends; "
            "adaptive depth from Little's law; a memory-pressure signal with hysteresis.\n\n"
            "- What is the backpressure signal in training?\n"
            "- Does backpressure combine with gradient accumulation?"
        ),
        tags=("systems", "data loading", "backpressure"),
        best="max:peak_in_flight_ratio_vs_dataloader",
    ),
    ShippedExperiment(
        slug="incremental-transformer",
        title="Incremental Transformer for streaming data",
        notebook="notebooks/incremental_transformer.ipynb",
        body=(
            "A small decoder-only Transformer that decodes incrementally with a KV cache, "
            "streams with attention sinks plus a sliding window in bounded memory, and learns "
            "online on a drifting stream (replay and regularisation against forgetting).\n\n"
            "- How does streaming learning handle concept drift?\n"
            "- How should the KV cache be managed for unbounded streams?"
        ),
        tags=("streaming", "online learning", "transformers"),
        priority="critical",
        best="max:cache_speedup_2048",
    ),
    ShippedExperiment(
        slug="streaming-attention",
        title="Streaming attention: blockwise online softmax in PyTorch and Triton",
        notebook="notebooks/streaming_attention.ipynb",
        body=(
            "Attention as a windowed aggregation over key/value blocks: keep a running max and "
            "sum instead of the N×N score matrix. Blockwise PyTorch with a recomputing backward, "
            "a Triton kernel, causal and sink+window masks; error, memory and speed against naive "
            "attention and SDPA."
        ),
        tags=("memory wall", "attention", "kernels"),
        best="max:memory_ratio_naive_over_blockwise",
    ),
]


def add_shipped_experiments(session, project_root: Path | None) -> list[str]:
    """Add one item per shipped experiment that the backlog lacks, linked to its notebook in
    ``project_root`` (None: no project, no links); returns the slugs added."""
    from sqlmodel import select

    from research.backlog.items import ChangeLog, add_item
    from research.backlog.rules import ItemFields
    from research.store.models import Item

    log = ChangeLog(session)
    added = []
    for exp in EXPERIMENTS:
        if session.exec(select(Item.id).where(Item.slug == exp.slug)).first() is not None:
            continue
        item = add_item(
            session,
            log,
            ItemFields(title=exp.title, body=exp.body, priority=exp.priority, tags=list(exp.tags), slug=exp.slug),
            document_id=None,  # ours, not the user's: in no document until moved into one
        )
        if project_root is not None:
            link_experiment(session, log, item, exp, project_root)
        added.append(exp.slug)
    return added


def link_experiment(session, log, item, exp: ShippedExperiment, project_root: Path) -> None:
    """Link the item to its notebook (when the project has it)."""
    from research.runs.links import link_notebook

    notebook = project_root / exp.notebook
    if notebook.is_file():
        link_notebook(session, log, item, exp.notebook, name=None, defaults=exp.defaults, best=exp.best, project_root=project_root)
