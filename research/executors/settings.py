"""Executor settings: flags over ``research.toml`` over ``[tool.research]`` in ``pyproject.toml``.

Both files are looked for in the project root (the folder of the database)::

    # pyproject.toml                      # research.toml (the same, without the prefix)
    [tool.research]                       executor = "slurm"
    executor = "slurm"                    [slurm]
    [tool.research.dask]                  partition = "gpu"
    scheduler = "tcp://head:8786"         ...
    [tool.research.slurm]
    partition = "gpu"
    gpus_per_task = 1
    time_limit = 120          # minutes
    array_parallelism = 16

Unknown keys and wrongly typed values are errors, reported before anything is
submitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from research.errors import ResearchError

EXECUTORS = ("local", "dask", "slurm")

# Per executor: key -> (type, help). Values from flags arrive as text and are converted.
KNOWN: dict[str, dict[str, tuple[type, str]]] = {
    "dask": {
        "scheduler": (
            str,
            "scheduler address, e.g. tcp://HOST:8786 (default: a local cluster of -j workers)",
        ),
        "gpus_per_task": (
            int,
            "GPU resource each run asks of a worker (workers declare --resources GPU=N)",
        ),
        "connect_timeout": (float, "seconds to wait for the scheduler"),
    },
    "slurm": {
        "cluster": (str, "'slurm', or 'local' for submitit's local executor (tests, laptops)"),
        "partition": (str, "Slurm partition"),
        "gpus_per_task": (int, "GPUs per run"),
        "cpus_per_task": (int, "CPUs per run"),
        "mem_gb": (float, "memory per run, GB"),
        "time_limit": (int, "minutes per run (default 60, or the --timeout plus 5 minutes)"),
        "array_parallelism": (
            int,
            "how many runs of a sweep at once (default: -j when above 1, else Slurm's)",
        ),
        "account": (str, "Slurm account"),
        "qos": (str, "Slurm QOS"),
        "constraint": (str, "Slurm constraint"),
        "setup": (list, "shell lines run before each job, e.g. module load"),
        "job_name": (str, "Slurm job name (default research-<item>)"),
    },
}


@dataclass
class ExecutorSettings:
    """The executor to use and its options, with where each came from."""

    executor: str = "local"
    options: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        value = self.options.get(key)
        return default if value is None else value


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, ValueError) as exc:
        raise ResearchError(f"cannot read {path}: {exc}") from None


def file_settings(project_root: Path) -> tuple[dict[str, Any], list[str]]:
    """The merged ``research`` table of pyproject.toml and research.toml (the latter wins)."""
    merged: dict[str, Any] = {}
    sources = []
    pyproject = project_root / "pyproject.toml"
    if pyproject.is_file():
        table = _read_toml(pyproject).get("tool", {}).get("research")
        if isinstance(table, dict):
            _merge(merged, table)
            sources.append(str(pyproject))
    own = project_root / "research.toml"
    if own.is_file():
        _merge(merged, _read_toml(own))
        sources.append(str(own))
    return merged, sources


def _merge(into: dict[str, Any], table: dict[str, Any]) -> None:
    for key, value in table.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key] = {**into[key], **value}
        else:
            into[key] = value


def _convert(executor: str, key: str, value: Any, where: str) -> Any:
    known = KNOWN.get(executor, {})
    if key not in known:
        names = ", ".join(sorted(known)) or "none"
        raise ResearchError(f"unknown {executor} setting {key!r} in {where}; known: {names}")
    kind, _help = known[key]
    if value is None:
        return None
    if kind is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif kind is str and isinstance(value, str):
        return value
    elif isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    raise ResearchError(
        f"{executor} setting {key!r} in {where} expects {kind.__name__}, got {value!r}"
    )


def load_settings(
    project_root: Path,
    executor: str | None = None,
    scheduler: str | None = None,
    assignments: list[str] | None = None,
) -> ExecutorSettings:
    """Resolve the executor and its options: flags, then research.toml, then pyproject.toml."""
    table, sources = file_settings(project_root)
    chosen = executor or table.get("executor") or "local"
    if chosen not in EXECUTORS:
        raise ResearchError(f"unknown executor {chosen!r}; use one of: {', '.join(EXECUTORS)}")
    options: dict[str, Any] = {}
    where = " or ".join(sources) or "the settings"
    section = table.get(chosen, {}) if chosen != "local" else {}
    if not isinstance(section, dict):
        raise ResearchError(f"[{chosen}] in {where} must be a table")
    for key, value in section.items():
        options[key] = _convert(chosen, key, value, where)
    for text in assignments or []:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ResearchError(f"executor options look like KEY=VALUE, got {text!r}")
        if chosen == "local":
            raise ResearchError(
                "the local executor takes no options; use -j, --timeout and --kernel"
            )
        options[key.strip()] = _convert(chosen, key.strip(), value.strip(), "-E")
    if scheduler:
        if chosen != "dask":
            raise ResearchError("--scheduler is for the dask executor (add --executor dask)")
        options["scheduler"] = scheduler
    if chosen == "slurm" and options.get("cluster", "slurm") not in ("slurm", "local"):
        raise ResearchError(
            f"slurm setting 'cluster' must be 'slurm' or 'local', got {options['cluster']!r}"
        )
    return ExecutorSettings(executor=chosen, options=options, sources=sources)
