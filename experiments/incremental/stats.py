"""Intervals over seeds: Student-t confidence intervals (Student 1908), unpaired and paired.

scipy is not a dependency of this project, so the two-sided 95% quantile of Student's t
comes from a table (exact to 4 decimals) for up to 30 degrees of freedom and from the
Cornish-Fisher expansion (Abramowitz & Stegun 1964, 26.7.5; error < 1e-4 there) beyond.
"""

from __future__ import annotations

import math

import numpy as np

# t_{0.975, dof} for dof = 1..30
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def t_quantile_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError("a t interval needs at least 2 values (1 degree of freedom)")
    if dof <= len(_T975):
        return _T975[dof - 1]
    z = 1.959964  # the normal 97.5% quantile
    return (
        z
        + (z**3 + z) / (4 * dof)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3)
    )


def t_interval(xs) -> tuple[float, float, int]:
    """(mean, half-width of the 95% t interval, n) over the values that are not NaN;
    the half-width is NaN for fewer than two values."""
    xs = np.asarray([x for x in xs if not math.isnan(x)], float)
    if xs.size == 0:
        return math.nan, math.nan, 0
    if xs.size == 1:
        return float(xs[0]), math.nan, 1
    half = t_quantile_975(xs.size - 1) * xs.std(ddof=1) / math.sqrt(xs.size)
    return float(xs.mean()), float(half), int(xs.size)


def paired_interval(xs, ys, kind: str = "difference") -> tuple[float, float, int]:
    """t interval of the per-seed ``x - y`` (kind="difference") or ``x / y`` ("ratio"):
    paired, so the seed-to-seed variation both share cancels."""
    if kind not in ("difference", "ratio"):
        raise ValueError(f"kind must be 'difference' or 'ratio', not {kind!r}")
    pairs = [
        (x - y) if kind == "difference" else (x / y if y else math.nan)
        for x, y in zip(xs, ys, strict=True)
    ]
    return t_interval(pairs)
