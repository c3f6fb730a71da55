"""Record metrics and artifacts from inside a notebook run.

Dependency-free on purpose: a notebook imports it whether or not it runs under
`research run`. Inside a run the runner sets ``RESEARCH_RUN_DIR``; each call
appends one JSON line to ``$RESEARCH_RUN_DIR/metrics.jsonl``. Outside a run the
value is only displayed, so notebooks still work when opened by hand.

A run that executes in a private folder (a Dask worker, a Slurm job) can be watched
while it runs: when the run folder holds ``MIRROR_NOTE`` (a file naming another file,
``LIVE_FILE`` in the project's ``runs/<id>/``), each metric line is also appended there.
Only the run folder's own ``metrics.jsonl`` is ingested at the end; the mirror is for
reading while the run lasts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

RUN_DIR_ENV = "RESEARCH_RUN_DIR"
METRICS_FILE = "metrics.jsonl"
ARTIFACTS_DIR = "artifacts"
LIVE_FILE = "metrics.live.jsonl"  # in the project's runs/<id>/: metric lines of a run executing elsewhere
MIRROR_NOTE = ".metrics-mirror"  # in the run folder: the path of a file each metric line is also appended to
PRUNE_FILE = "prune"  # written into a run's folder by the sweep that prunes it


class Pruned(Exception):
    """Raised by ``record`` once the sweep running this trial has pruned it: the notebook stops
    there, as Optuna's ``TrialPruned`` stops an objective, and the run ends ``pruned``."""


def _run_dir() -> Path | None:
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


def _jsonable(value):
    """Turn numpy/torch scalars into plain Python numbers; NaN/inf become strings."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value
    if isinstance(value, str | type(None)):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _append(entry: dict) -> None:
    run_dir = _run_dir()
    if run_dir is None:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps(entry, ensure_ascii=False)
    # One write per line, opened in append mode, so concurrent writers never interleave a line.
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
    if entry.get("kind") == "metric":
        _mirror(run_dir, line)


def _mirror(run_dir: Path, line: str) -> None:
    """Append ``line`` to the file the run folder's ``MIRROR_NOTE`` names, if any; a
    mirror that cannot be written is skipped (the run's own file has the line)."""
    try:
        target = (run_dir / MIRROR_NOTE).read_text(encoding="utf-8").strip()
    except OSError:
        return
    if not target:
        return
    try:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError:
        pass


def record(name: str, value, step: int | None = None) -> None:
    """Record a metric ``name`` = ``value`` (optionally at ``step``) and display it."""
    if not isinstance(name, str) or not name:
        raise ValueError("metric name must be a non-empty string")
    entry = {"kind": "metric", "name": name, "value": _jsonable(value), "step": step, "time": time.time()}
    _append(entry)
    suffix = f" (step {step})" if step is not None else ""
    print(f"[record] {name} = {entry['value']}{suffix}")
    if step is not None:
        _stop_if_pruned(step)


def _stop_if_pruned(step: int) -> None:
    """A sweep prunes a trial by writing PRUNE_FILE into the project's runs/<id>/; the next stepped
    record stops it. A run executing elsewhere finds that folder through its mirror note."""
    run_dir = _run_dir()
    if run_dir is None:
        return
    folders = [run_dir]
    try:
        mirror = (run_dir / MIRROR_NOTE).read_text(encoding="utf-8").strip()
    except OSError:
        mirror = ""
    if mirror:
        folders.append(Path(mirror).parent)
    if any((folder / PRUNE_FILE).exists() for folder in folders):
        raise Pruned(f"pruned by the sweep at step {step}")


def record_artifact(path: str | os.PathLike, name: str | None = None) -> str:
    """Note a file as one of the run's artifacts (inside a run); returns its path.

    A file from elsewhere is copied into the run's artifacts folder; one already inside the
    run's folder is noted where it is (unless ``name`` renames it), so it is stored once.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"artifact not found: {source}")
    run_dir = _run_dir()
    target = source
    if run_dir is not None:
        inside = source.resolve().is_relative_to(run_dir.resolve())
        if not inside or (name is not None and name != source.name):
            target_dir = run_dir / ARTIFACTS_DIR
            target_dir.mkdir(parents=True, exist_ok=True)
            target = target_dir / (name or source.name)
            if source.resolve() != target.resolve():
                shutil.copyfile(source, target)
        _append({"kind": "artifact", "name": name or source.name, "path": str(target), "time": time.time()})
    print(f"[record] artifact {target}")
    return str(target)


def record_figure(fig, name: str, **savefig) -> str:
    """Save a matplotlib figure as a run artifact, show it in the notebook, and close it.

    Inside a run the PNG (or whatever ``name``'s suffix says) goes to the run's artifacts
    folder, once; outside one, to a temporary folder. The saved file is displayed in the
    cell's output whatever the matplotlib backend (Agg included), and the figure is then
    closed so the inline backend does not show it a second time. ``savefig`` goes to
    ``fig.savefig`` (``dpi=120``, ``bbox_inches="tight"``...). Returns the file's path.
    """
    import tempfile

    run_dir = _run_dir()
    folder = run_dir / ARTIFACTS_DIR if run_dir is not None else Path(tempfile.gettempdir()) / "research-figures"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fig.savefig(path, **savefig)
    _display_file(path)
    import matplotlib.pyplot as plt  # already imported: the figure came from it

    plt.close(fig)
    return record_artifact(path)


def _display_file(path: Path) -> None:
    """Show an image file in the running notebook's output (nothing outside IPython)."""
    try:
        from IPython import get_ipython
        from IPython.display import SVG, Image, display
    except ImportError:
        return
    if get_ipython() is None:
        return
    display(SVG(filename=str(path)) if path.suffix.lower() == ".svg" else Image(filename=str(path)))
