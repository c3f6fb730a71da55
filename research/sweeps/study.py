"""The Optuna side of a sweep: a study rebuilt from the trials the database holds, asked and told.

Optuna is used through ask/tell only, with its in-memory storage: the trials themselves are our
runs, so any executor runs them unchanged, and a resumed sweep rebuilds its study from them
(``add_trial`` of each ended trial, ``enqueue_trial`` of each one to run again) instead of
keeping a second copy of its state in Optuna's own tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from research.errors import ResearchError
from research.sweeps.space import Dimension

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median")


@dataclass
class TrialRecord:
    """One trial as the database tells it: its number, sampled values and how it ended."""

    number: int
    params: dict[str, Any]
    state: str  # complete | failed | pruned | open | retry (interrupted: to run again)
    value: float | None = None
    intermediate: dict[int, float] = field(default_factory=dict)
    run_id: int | None = None


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool, NaN or text), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def objective_value(metrics: dict[str, Any], objective: str) -> float | None:
    """The objective among a run's final metrics, when it is a finite number."""
    return finite_number(metrics.get(objective))


class Study:
    """Optuna's study for one sweep: ``ask`` returns a trial's values, ``tell`` ends it."""

    def __init__(self, space: dict[str, Dimension], direction: str, sampler: str, seed: int | None,
                 prune: str = "none", history: list[TrialRecord] = ()) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self.distributions = {name: dim.to_distribution() for name, dim in space.items()}
        self._optuna = optuna
        # A grid is enumerated here (shuffled by the seed), trial n taking point n, so a resumed
        # grid sweep never repeats a point; Optuna still runs each trial, so pruning works alike.
        self._grid = _grid_points(space, seed) if sampler == "grid" else None
        chosen = _sampler("random" if self._grid is not None else sampler, seed)
        self._study = optuna.create_study(direction=direction, sampler=chosen, pruner=_pruner(prune))
        self._live: dict[int, Any] = {}  # our trial number -> Optuna's trial
        self._reported: dict[int, set[int]] = {}  # steps already reported, per live trial
        for record in history:
            if record.state in ("complete", "failed", "pruned"):
                self._study.add_trial(self._frozen(record))
            elif record.state == "retry" and self._grid is None:  # a grid trial finds its point by number
                self._study.enqueue_trial(record.params, skip_if_exists=False)

    def _frozen(self, record: TrialRecord):
        states = self._optuna.trial.TrialState
        state = {"complete": states.COMPLETE, "failed": states.FAIL, "pruned": states.PRUNED}[record.state]
        params = {k: v for k, v in record.params.items() if k in self.distributions}
        return self._optuna.trial.create_trial(
            params=params, distributions={k: self.distributions[k] for k in params},
            value=record.value if record.state == "complete" else None, state=state,
            intermediate_values=dict(record.intermediate),
        )

    def ask(self, number: int) -> dict[str, Any]:
        """Values for trial ``number`` (a retried trial's own values come back first)."""
        if self._grid is not None and number < len(self._grid):
            self._study.enqueue_trial(self._grid[number], skip_if_exists=False)
        trial = self._study.ask(self.distributions)
        self._live[number] = trial
        self._reported[number] = set()
        return dict(trial.params)

    def report(self, number: int, value: float, step: int) -> bool:
        """An intermediate value; True when the pruner says to stop the trial."""
        trial, reported = self._live.get(number), self._reported.get(number)
        if trial is None or step in reported:
            return False
        reported.add(step)
        trial.report(value, step)
        return trial.should_prune()

    def tell(self, number: int, state: str, value: float | None = None) -> None:
        trial = self._live.pop(number, None)
        self._reported.pop(number, None)
        if trial is None:
            return
        states = self._optuna.trial.TrialState
        if state == "complete":
            self._study.tell(trial, value)
        else:
            self._study.tell(trial, state=states.PRUNED if state == "pruned" else states.FAIL)


def _sampler(name: str, seed: int | None):
    import optuna.samplers as s

    if name == "tpe":
        return s.TPESampler(seed=seed)
    if name == "random":
        return s.RandomSampler(seed=seed)
    raise ResearchError(f"unknown sampler {name!r}; use one of: {', '.join(SAMPLERS)}")


def _grid_points(space: dict[str, Dimension], seed: int | None) -> list[dict[str, Any]]:
    import itertools
    import random

    names = list(space)
    points = [dict(zip(names, values, strict=True))
              for values in itertools.product(*(space[n].grid_values() for n in names))]
    if seed is not None:
        random.Random(seed).shuffle(points)
    return points


def _pruner(name: str):
    import optuna.pruners as p

    if name == "median":
        return p.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "none":
        return p.NopPruner()
    raise ResearchError(f"unknown pruner {name!r}; use one of: {', '.join(PRUNERS)}")
