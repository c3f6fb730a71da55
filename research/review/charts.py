"""The review's charts, drawn with matplotlib (imported lazily, Agg backend) as PNG bytes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from research.review.report import METRIC_CHARTS

# ---------------------------------------------------------------------------
# Charts


@dataclass
class Chart:
    name: str  # file-name part: runs-per-day, key-metrics
    title: str
    png: bytes


_STATUS_COLORS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "timeout": "#ef6c00",
    "interrupted": "#8e24aa",
    "running": "#1565c0",
    "queued": "#90a4ae",
}


def _chart_label(text: str, fonts_cover_cjk: bool) -> str:
    if fonts_cover_cjk or text.isascii():
        return text
    kept = re.sub(r"[^\x00-\u024f]+", " ", text)
    return re.sub(r"\s{2,}", " ", kept).strip(" :-")


def chart_pngs(review: dict[str, Any]) -> list[Chart]:
    """The review's charts as PNG images (none when nothing ran).

    Layouts and ticks are fixed rather than computed (no tight bounding boxes,
    no automatic date locators): that halves the drawing time.
    """
    per_day = review["charts"]["runs_per_day"]
    series = review["charts"]["key_metrics"][:METRIC_CHARTS]
    if not per_day["by_status"] and not series:
        return []
    import io
    import warnings

    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import font_manager
    from matplotlib.figure import Figure

    cjk = [
        f.name
        for f in font_manager.fontManager.ttflist
        if re.search(
            r"CJK|WenQuanYi|Droid Sans Fallback|Source Han|Noto Sans [SJTK]C|Heiti|SimHei|YaHei|PingFang",
            f.name,
        )
    ]
    family = ["DejaVu Sans", *dict.fromkeys(cjk)]
    charts = []

    def png(fig) -> bytes:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing glyphs
            fig.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()

    style = {
        "font.family": family,
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
    with matplotlib.rc_context(style):
        if per_day["by_status"]:
            days = per_day["days"]
            rotate = len(days) > 10
            fig = Figure(figsize=(max(7.5, min(14.0, 0.3 * len(days) + 2)), 2.8))
            fig.subplots_adjust(left=0.08, right=0.98, top=0.88, bottom=0.26 if rotate else 0.14)
            ax = fig.subplots()
            bottom = [0] * len(days)
            positions = list(range(len(days)))
            for status, values in per_day["by_status"].items():
                ax.bar(
                    positions,
                    values,
                    bottom=bottom,
                    label=status,
                    color=_STATUS_COLORS.get(status, "#607d8b"),
                    width=0.7,
                )
                bottom = [b + v for b, v in zip(bottom, values, strict=True)]
            step = max(1, -(-len(days) // 16))
            ax.set_xticks(
                positions[::step], [d[5:] for d in days[::step]], rotation=45 if rotate else 0
            )
            ax.set_xlim(-0.6, len(days) - 0.4)
            ax.yaxis.get_major_locator().set_params(integer=True)
            ax.set_ylabel("runs")
            ax.set_title("Runs per day by status")
            ax.legend(frameon=False, loc="upper right", fontsize=8)
            charts.append(Chart("runs-per-day", "Runs per day by status", png(fig)))
        if series:
            p = review["period"]
            first = date.fromisoformat(p["previous"]["start"])
            period_start = date.fromisoformat(p["start"])
            total = (date.fromisoformat(p["end"]) - first).days + 1  # x: days since `first`
            origin = datetime.combine(first, time()).astimezone()

            def x_of(ts: str) -> float:
                return (datetime.fromisoformat(ts) - origin).total_seconds() / 86400

            # Whole weeks where they fit, so period starts fall on a labelled tick.
            tick_step = next((n for n in (1, 7, 14, 28, 56, 91, 182) if total / n <= 8), 364)
            ticks = list(range(0, total + 1, tick_step))
            labels = [(first + timedelta(days=t)).strftime("%m-%d") for t in ticks]
            cols = min(3, len(series))
            rows = -(-len(series) // cols)
            fig = Figure(figsize=(4.2 * cols, 0.5 + 2.5 * rows))
            fig.subplots_adjust(
                left=0.1 if cols > 1 else 0.16,
                right=0.98,
                top=1 - 0.55 / (0.5 + 2.5 * rows),
                bottom=0.45 / (0.5 + 2.5 * rows),
                wspace=0.38,
                hspace=0.55,
            )
            axes = fig.subplots(rows, cols, squeeze=False)
            handles = None
            for n, ax in enumerate(axes.flat):
                if n >= len(series):
                    ax.set_visible(False)
                    continue
                entry = series[n]
                xs = [x_of(point["ended_at"]) for point in entry["points"]]
                ys = [point["value"] for point in entry["points"]]
                pick = max if entry["goal"] == "max" else min
                best = []
                for y in ys:
                    best.append(y if not best else pick(best[-1], y))
                dots = ax.scatter(xs, ys, s=12, color="#1565c0", alpha=0.7, zorder=3)
                (line,) = ax.step(
                    [*xs, total], [*best, best[-1]], where="post", color="#2e7d32", linewidth=1.2
                )
                ax.axvline(
                    (period_start - first).days, color="#9e9e9e", linestyle="--", linewidth=0.8
                )
                ax.set_xlim(0, total)
                ax.set_xticks(ticks, labels, fontsize=7)
                if total <= 62:
                    ax.set_xticks(range(total + 1), minor=True)
                title = _chart_label(f"#{entry['item_id']} {entry['title']}", len(family) > 1)
                ax.set_title(title if len(title) <= 42 else title[:41] + "…", fontsize=9)
                ax.set_ylabel(entry["metric"])
                handles = handles or (dots, line)
            fig.suptitle(
                "Key metric over time (dashed line: start of the period)",
                fontsize=10,
                x=0.02,
                ha="left",
            )
            fig.legend(
                handles,
                ["run", "best so far"],
                loc="upper right",
                bbox_to_anchor=(0.97, 1.0),
                frameon=False,
                fontsize=8,
                ncols=2,
            )
            charts.append(Chart("key-metrics", "Key metric over time", png(fig)))
    return charts
