"""The review's charts, drawn with matplotlib (imported lazily, Agg backend) as PNG bytes.

Two groups: the backlog's (checklist progress per direction, open items day by day,
status moves as a flow), drawn whenever the backlog has them, and the runs' (runs per
day, each experiment's key metric over its runs, each sweep's metric against its
parameters), drawn when something ran. Each chart is drawn once, on a bare ``Figure``
with a fixed layout (no pyplot, no tight bounding boxes, no date locators, few ticks).
The command forks a worker (``ChartWorkers``) as it starts: it imports matplotlib while
the backlog is read, then draws the charts with a fork of itself while the page is
written (``start_charts``).

Titles are often Chinese: text is set in DejaVu Sans with an installed CJK font as
matplotlib's per-glyph fallback. Without one, the charts say so once on stderr and
label items by id rather than draw boxes. Emoji, which no chart font has, are left
out of chart labels.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from research.review.report import METRIC_CHARTS, is_number

# ---------------------------------------------------------------------------
# Charts


@dataclass
class Chart:
    name: str  # file-name part: progress, burndown, flow, runs-per-day, key-metrics, sweeps
    title: str
    png: bytes
    group: str  # backlog or runs
    missing_glyphs: tuple[str, ...] = field(default=())  # matplotlib's warnings, if any


RUN_STATUS_COLORS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "timeout": "#ef6c00",
    "interrupted": "#8e24aa",
    "pruned": "#6d4c41",
    "running": "#1565c0",
    "queued": "#90a4ae",
}
ITEM_STATUS_COLORS = {
    "planned": "#90a4ae",
    "active": "#1565c0",
    "paused": "#ef6c00",
    "writing-up": "#8e24aa",
    "done": "#2e7d32",
    "dropped": "#616161",
}
# Installed CJK-capable fonts, in order of preference (family names as fontconfig gives them).
CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "Source Han Sans",
    "PingFang SC",
    "Hiragino Sans GB",
    "Microsoft YaHei",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
    "SimHei",
    "AR PL UMing CN",
)
PROGRESS_ROWS = 8  # directions per progress panel
PROGRESS_PANELS = 2
SWEEP_CHARTS = 3  # sweeps drawn
SWEEP_PARAMS = 4  # parameters drawn per sweep

_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f\u200d\u20e3]+")
_BEYOND_LATIN = re.compile(r"[^\x00-\u024f\u2000-\u206f\u2190-\u21ff]")
_CJK_FILE = re.compile(
    r"cjk|sourcehan|source-han|wqy|droidsansfallback|simhei|msyh|pingfang|ukai|uming", re.IGNORECASE
)
_warned_no_cjk = False


@functools.cache
def cjk_font() -> str | None:
    """The family name of an installed CJK-capable font, or None.

    matplotlib lists the fonts it found when it first built its cache; fonts installed
    since (``apt install fonts-noto-cjk``) are looked for on the system and added.
    """
    from matplotlib import font_manager

    def pick() -> str | None:
        names = {f.name for f in font_manager.fontManager.ttflist}
        return next((name for name in CJK_FONTS if name in names), None)

    found = pick()
    if found is None:
        for path in font_manager.findSystemFonts():
            if _CJK_FILE.search(Path(path).name):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue
        found = pick()
    return found


def _clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns, a wide (CJK) character taking two."""
    import unicodedata

    used = 0
    for n, ch in enumerate(text):
        used += 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        if used > width:
            return text[: max(0, n - 1)] + "…"
    return text


class _Labels:
    """Chart labels for items: their titles where the fonts can draw them, else their ids."""

    def __init__(self, have_cjk: bool):
        self.have_cjk = have_cjk
        self.fell_back = False

    def item(self, entry: dict, width: int = 42) -> str:
        ident = f"#{entry['id']}" if entry.get("id") is not None else ""
        title = _EMOJI.sub("", entry.get("title") or "").strip()
        if not self.have_cjk and _BEYOND_LATIN.search(title):
            self.fell_back = True
            return ident or "?"
        return _clip(f"{ident} {title}".strip(), width)

    def text(self, value: str) -> str:
        value = _EMOJI.sub("", value).strip()
        if not self.have_cjk and _BEYOND_LATIN.search(value):
            self.fell_back = True
            return _BEYOND_LATIN.sub("?", value)
        return value


@dataclass(frozen=True)
class ChartTask:
    """One chart to draw: its name, title, group and the slice of the review it shows."""

    name: str
    title: str
    group: str
    args: tuple


def chart_tasks(review: dict[str, Any]) -> list[ChartTask]:
    """The charts a review has: the backlog's, then the runs' (none for an empty backlog)."""
    c = review["charts"]
    backlog = [p for p in c["progress"] if p["total"]]
    burndown, flow = c["burndown"], c["flow"]
    per_day = c["runs_per_day"]
    series = c["key_metrics"][:METRIC_CHARTS]
    sweeps = [s for s in review["experiments"]["sweeps"] if _sweep_points(s)][:SWEEP_CHARTS]
    tasks = []
    if backlog:
        tasks.append(ChartTask("progress", "Checklist progress per direction", "backlog", (backlog,)))
    if any(burndown["items"] + burndown["tasks"]):  # anything open
        tasks.append(ChartTask("burndown", "Open items and checklist tasks, day by day", "backlog",
                               (burndown,)))
    if flow:
        tasks.append(ChartTask("flow", "Status moves in the period", "backlog", (flow,)))
    if per_day["by_status"]:
        tasks.append(ChartTask("runs-per-day", "Runs per day by status", "runs", (per_day,)))
    if series:
        tasks.append(ChartTask("key-metrics", "Key metric over its runs", "runs",
                               (review["period"], series)))
    if sweeps:
        tasks.append(ChartTask("sweeps", "Each sweep's metric against its parameters", "runs", (sweeps,)))
    return tasks


def _style() -> dict:
    """matplotlib (Agg) imported, and the charts' rc settings: fonts with the CJK fallback."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    font = cjk_font()
    return {
        "font.family": ["DejaVu Sans", *([font] if font else [])],
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "legend.frameon": False,
    }


def _prepare() -> None:
    """Import matplotlib and load the fonts (in a chart worker, while the review is read)."""
    from matplotlib.figure import Figure

    style = _style()
    fig = Figure(figsize=(0.5, 0.2))
    fig.text(0, 0, "Aa 流式", family=style["font.family"])
    fig.canvas.draw()  # the glyph caches of both fonts, warm


def draw_chart(task: ChartTask) -> tuple[Chart, bool]:
    """Draw one chart; also whether a label fell back to an id for want of a CJK font."""
    import io
    import warnings

    import matplotlib
    from matplotlib.figure import Figure

    style = _style()
    labels = _Labels(have_cjk=len(style["font.family"]) > 1)
    with matplotlib.rc_context(style):
        fig = _FIGURES[task.name](Figure, labels, *task.args)
        buffer = io.BytesIO()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fig.savefig(buffer, format="png", dpi=100, pil_kwargs={"compress_level": 4})
    missing = tuple(str(w.message) for w in caught if "missing from" in str(w.message))
    return Chart(task.name, task.title, buffer.getvalue(), task.group, missing), labels.fell_back


def _draw_in_two(tasks: list[ChartTask]) -> list[tuple[Chart, bool]]:
    """Draw ``tasks`` in this process and a fork of it, each taking about half of the work
    (the fork shares the matplotlib this process has imported: it starts in milliseconds)."""
    import os
    import pickle

    order = sorted(range(len(tasks)), key=lambda n: _COST.get(tasks[n].name, 1), reverse=True)
    mine, theirs, load = [], [], [0, 0]
    for n in order:  # greedy: the next costliest to whichever half has less
        side = 0 if load[0] <= load[1] else 1
        (mine if side == 0 else theirs).append(n)
        load[side] += _COST.get(tasks[n].name, 1)
    if not theirs:
        return [draw_chart(task) for task in tasks]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the fork: draw its half, send it, and leave without running any cleanup
        try:
            os.close(read_end)
            payload = pickle.dumps({n: draw_chart(tasks[n]) for n in theirs})
            with os.fdopen(write_end, "wb") as out:
                out.write(payload)
        finally:
            os._exit(0)
    os.close(write_end)
    results = {n: draw_chart(tasks[n]) for n in mine}
    with os.fdopen(read_end, "rb") as incoming:
        payload = incoming.read()
    os.waitpid(pid, 0)
    try:
        results.update(pickle.loads(payload))
    except (pickle.UnpicklingError, EOFError):  # the fork died: its half is drawn here
        pass
    return [results[n] if n in results else draw_chart(tasks[n]) for n in range(len(tasks))]


def _serve(conn) -> None:
    """The chart worker: import matplotlib, then draw the one list of charts it is sent."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the command's to handle
    _prepare()
    try:
        tasks = conn.recv()
    except (EOFError, OSError):  # the command ended without charts
        return
    try:
        reply = ("ok", _draw_in_two(tasks))
    except Exception as exc:  # a bug: the command raises it, as if it had drawn them itself
        reply = ("error", exc)
    conn.send(reply)


class ChartWorkers:
    """A process that imports matplotlib while the review's data is read, then draws its
    charts with a fork of itself, side by side (each chart once). It is forked from the
    command, so it starts in milliseconds, and it ends with it."""

    def __init__(self):
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self._conn, theirs = context.Pipe()
        self._process = context.Process(target=_serve, args=(theirs,), daemon=True)
        self._process.start()
        theirs.close()
        self._used, self._sent, self._tasks = False, False, []

    def submit(self, tasks: list[ChartTask]) -> None:
        """Send the charts to draw; :meth:`collect` returns them."""
        self._used, self._tasks = True, tasks
        try:
            self._conn.send(tasks)
            self._sent = True
        except OSError:  # the worker died: collect draws them here
            self._sent = False

    def collect(self) -> list[tuple[Chart, bool]]:
        try:
            if not self._sent:
                raise EOFError
            status, value = self._conn.recv()
        except (EOFError, OSError):  # the worker died (killed, out of memory): draw here
            return [draw_chart(task) for task in self._tasks]
        if status == "error":
            raise value
        return value

    def draw(self, tasks: list[ChartTask]) -> list[tuple[Chart, bool]]:
        self.submit(tasks)
        return self.collect()

    def close(self) -> None:
        self._conn.close()
        if self._used:
            self._process.join(timeout=5)  # it has sent its charts and is leaving
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()


def start_chart_workers() -> ChartWorkers | None:
    """A chart worker where it helps: two cores or more, ``fork`` available, no other thread
    in this process (forking one that has threads risks a lock held forever), and not turned
    off with ``RESEARCH_CHART_WORKERS=0``."""
    import multiprocessing
    import os
    import threading

    if (
        os.environ.get("RESEARCH_CHART_WORKERS", "1") == "0"
        or (os.cpu_count() or 1) < 2
        or "fork" not in multiprocessing.get_all_start_methods()
        or threading.active_count() > 1
    ):
        return None
    try:
        return ChartWorkers()
    except OSError:  # no processes to be had: draw in this one
        return None


def start_charts(
    review: dict[str, Any], workers: ChartWorkers | None = None
) -> tuple[list[ChartTask], Callable[[], list[Chart]]]:
    """Start drawing the review's charts (by ``workers`` when given); returns what they will
    be and a call that waits for them, so the page can be written meanwhile."""
    tasks = chart_tasks(review)
    if tasks and workers is not None:
        workers.submit(tasks)
        fetch = workers.collect
    else:
        def fetch():
            return [draw_chart(task) for task in tasks]

    def charts() -> list[Chart]:
        drawn = fetch() if tasks else []
        global _warned_no_cjk
        if any(fell_back for _chart, fell_back in drawn) and not _warned_no_cjk:
            _warned_no_cjk = True
            print(
                "research: no CJK-capable font is installed (e.g. Debian's fonts-noto-cjk); "
                "charts label those items by id",
                file=sys.stderr,
            )
        return [chart for chart, _fell_back in drawn]

    return tasks, charts


def chart_pngs(review: dict[str, Any], workers: ChartWorkers | None = None) -> list[Chart]:
    """The review's charts as PNG images (none for an empty backlog), drawn by ``workers``
    when given, else here."""
    return start_charts(review, workers)[1]()


# ---------------------------------------------------------------------------
# The backlog's charts

HEAD_IN = 0.62  # inches above the plots for the title and, beneath it, the legend


def _heading(fig, title: str, handles, names, height_in: float) -> None:
    """The chart's title at the top left and its legend on the line beneath: neither
    overlaps the other, whatever the figure's width."""
    fig.suptitle(title, fontsize=10, x=0.012, y=1 - 0.06 / height_in, ha="left", va="top")
    fig.legend(handles, names, loc="upper left", bbox_to_anchor=(0.005, 1 - 0.3 / height_in),
               ncols=len(names), fontsize=7.5, handlelength=1.6, columnspacing=1.2,
               borderaxespad=0.0)


def _progress_figure(Figure, labels: _Labels, rows: list[dict]):
    shown = rows[: PROGRESS_ROWS * PROGRESS_PANELS]
    panels = [shown[i : i + PROGRESS_ROWS] for i in range(0, len(shown), PROGRESS_ROWS)]
    height = HEAD_IN + 0.5 + 0.3 * max(len(p) for p in panels)
    width = max(6.4, 4.6 * len(panels) + 0.6)
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=1.9 / width, right=0.97, top=1 - (HEAD_IN + 0.05) / height,
                        bottom=0.45 / height, wspace=0.9)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    parts = (
        ("done before", "#2e7d32", lambda r: r["done_at_start"]),
        ("ticked in the period", "#81c784", lambda r: max(0, r["done"] - r["done_at_start"])),
        ("open", "#cfd8dc", lambda r: r["open"]),
        ("dropped", "#eeeeee", lambda r: r["dropped"]),
    )
    handles = {}
    for ax, panel in zip(axes, panels, strict=True):
        ys = list(range(len(panel)))[::-1]
        left = [0] * len(panel)
        for name, color, value in parts:
            widths = [value(r) for r in panel]
            bars = ax.barh(ys, widths, left=left, color=color, height=0.65, label=name,
                           edgecolor="#b0bec5" if name == "dropped" else color, linewidth=0.5)
            handles.setdefault(name, bars)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        for y, row in zip(ys, panel, strict=True):
            ax.text(row["total"], y, f" {row['done']}/{row['total']}", va="center", fontsize=7)
        ax.set_yticks(ys, [labels.item(r, 26) for r in panel], fontsize=8)
        ax.set_xlim(0, max(r["total"] for r in panel) * 1.25)
        ax.xaxis.get_major_locator().set_params(integer=True, nbins=4)
        ax.set_xlabel("checklist tasks")
    more = len(rows) - len(shown)
    title = "Checklist progress per direction" + (f" ({len(shown)} of {len(rows)})" if more else "")
    _heading(fig, title, list(handles.values()), list(handles), height)
    return fig


def _day_ticks(days: list[str], most: int = 10) -> tuple[list[int], list[str]]:
    step = max(1, -(-len(days) // most))
    positions = list(range(0, len(days) + 1, step))
    names = ["start" if p == 0 else days[p - 1][5:] for p in positions]
    return positions, names


def _burndown_figure(Figure, labels: _Labels, burndown: dict):
    days = burndown["days"]
    height = HEAD_IN + 2.6
    fig = Figure(figsize=(8.6, height))
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - (HEAD_IN + 0.3) / height,
                        bottom=0.5 / height, wspace=0.28)
    axes = fig.subplots(1, 2)
    ticks, names = _day_ticks(days)
    handles = None
    for ax, key, title in ((axes[0], "items", "Open items"), (axes[1], "tasks", "Open checklist tasks")):
        values = [burndown["start"][key], *burndown[key]]
        xs = [x for x, v in enumerate(values) if v is not None]
        ys = [v for v in values if v is not None]
        (line,) = ax.plot(xs, ys, color="#1565c0", marker="o" if len(days) <= 31 else None,
                          markersize=3, linewidth=1.4)
        start = ax.axhline(values[0], color="#9e9e9e", linestyle="--", linewidth=0.8)
        ax.set_xlim(-0.3, len(days) + 0.3)
        low, high = min(ys), max(ys)
        pad = max(1, (high - low) * 0.15)
        ax.set_ylim(max(0, low - pad), high + pad)
        ax.yaxis.get_major_locator().set_params(integer=True, nbins=4)
        ax.set_xticks(ticks, names, fontsize=7)
        ax.set_title(title, fontsize=9, y=1.02)  # a fixed place: no layout pass per draw
        ax.set_xlabel("end of day")
        ax.set_ylabel("open")
        handles = handles or (line, start)
    _heading(fig, "Burndown: open items and checklist tasks, day by day", handles,
             ["open at the end of the day", "at the start of the period"], height)
    return fig


def _flow_figure(Figure, labels: _Labels, flow: list[dict]):
    """Status moves as a flow: statuses left (from) and right (to), bands as wide as the moves."""
    from matplotlib.patches import PathPatch, Rectangle
    from matplotlib.path import Path

    order = list(ITEM_STATUS_COLORS)
    total = sum(f["items"] + f["tasks"] for f in flow)
    gap = total * 0.06
    sources = [s for s in order if any(f["from"] == s for f in flow)]
    targets = [s for s in order if any(f["to"] == s for f in flow)]

    def stack(names, side):
        tops, y = {}, total + gap * (len(names) - 1)
        for name in names:
            size = sum(f["items"] + f["tasks"] for f in flow if f[side] == name)
            tops[name] = [y, size]
            y -= size + gap
        return tops

    left, right = stack(sources, "from"), stack(targets, "to")
    height = HEAD_IN + 3.0
    fig = Figure(figsize=(6.4, height))
    fig.subplots_adjust(left=0.17, right=0.83, top=1 - (HEAD_IN + 0.1) / height, bottom=0.5 / height)
    ax = fig.subplots()
    out_at = {name: top for name, (top, _) in left.items()}
    in_at = {name: top for name, (top, _) in right.items()}
    for f in sorted(flow, key=lambda f: (order.index(f["from"]) if f["from"] in order else 9,
                                         order.index(f["to"]) if f["to"] in order else 9)):
        size = f["items"] + f["tasks"]
        y0, y1 = out_at[f["from"]], in_at[f["to"]]
        out_at[f["from"]] -= size
        in_at[f["to"]] -= size
        a, b = 0.06, 0.94
        verts = [(a, y0), (0.5, y0), (0.5, y1), (b, y1), (b, y1 - size), (0.5, y1 - size),
                 (0.5, y0 - size), (a, y0 - size), (a, y0)]
        codes = [Path.MOVETO, Path.CURVE4, Path.CURVE4, Path.CURVE4, Path.LINETO,
                 Path.CURVE4, Path.CURVE4, Path.CURVE4, Path.CLOSEPOLY]
        ax.add_patch(PathPatch(Path(verts, codes), facecolor=ITEM_STATUS_COLORS.get(f["to"], "#607d8b"),
                               alpha=0.45, linewidth=0))
    for names, x, align, offset in ((left, 0.0, "right", -0.02), (right, 0.94, "left", 1.02)):
        for name, (top, size) in names.items():
            color = ITEM_STATUS_COLORS.get(name, "#607d8b")
            ax.add_patch(Rectangle((x, top - size), 0.06, size, color=color, linewidth=0))
            ax.text(offset, top - size / 2, f"{name} {size}", ha=align, va="center", fontsize=8)
    ax.set_xlim(0, 1.0)
    ax.set_ylim(-gap * 0.2, total + gap * max(len(sources), len(targets)))
    ax.set_xticks([0.03, 0.97], ["from", "to"])
    ax.set_yticks([])
    ax.spines["left"].set_visible(False)
    ax.set_xlabel(f"{total} status moves (items and checklist tasks)")
    shown = [s for s in order if s in targets]
    _heading(fig, "Status moves in the period",
             [Rectangle((0, 0), 1, 1, color=ITEM_STATUS_COLORS[s], alpha=0.6) for s in shown],
             [f"to {s}" for s in shown], height)
    return fig


# ---------------------------------------------------------------------------
# The runs' charts


def _runs_figure(Figure, labels: _Labels, per_day: dict):
    days = per_day["days"]
    rotate = len(days) > 10
    height = HEAD_IN + 2.4
    fig = Figure(figsize=(max(7.5, min(14.0, 0.3 * len(days) + 2)), height))
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - (HEAD_IN + 0.05) / height,
                        bottom=(0.75 if rotate else 0.5) / height)
    ax = fig.subplots()
    handles = []
    bottom = [0] * len(days)
    positions = list(range(len(days)))
    for status, values in per_day["by_status"].items():
        handles.append(ax.bar(positions, values, bottom=bottom, label=status,
                              color=RUN_STATUS_COLORS.get(status, "#607d8b"), width=0.7))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    step = max(1, -(-len(days) // 16))
    ax.set_xticks(positions[::step], [d[5:] for d in days[::step]], rotation=45 if rotate else 0)
    ax.set_xlim(-0.6, len(days) - 0.4)
    ax.yaxis.get_major_locator().set_params(integer=True, nbins=4)
    ax.set_xlabel("day")
    ax.set_ylabel("runs")
    _heading(fig, "Runs per day by status", handles, list(per_day["by_status"]), height)
    return fig


def _metrics_figure(Figure, labels: _Labels, p: dict, series: list[dict]):
    first = date.fromisoformat(p["previous"]["start"])
    period_start = date.fromisoformat(p["start"])
    total = (date.fromisoformat(p["end"]) - first).days + 1  # x: days since `first`
    origin = datetime.combine(first, time()).astimezone()

    def x_of(ts: str) -> float:
        return (datetime.fromisoformat(ts) - origin).total_seconds() / 86400

    # Whole weeks where they fit, so period starts fall on a labelled tick.
    tick_step = next((n for n in (1, 7, 14, 28, 56, 91, 182) if total / n <= 8), 364)
    ticks = list(range(0, total + 1, tick_step))
    names = [(first + timedelta(days=t)).strftime("%m-%d") for t in ticks]
    cols = min(3, len(series))
    rows = -(-len(series) // cols)
    height = HEAD_IN + 0.3 + 2.6 * rows
    width = max(6.4, 4.2 * cols)
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.7 / width, right=0.98, top=1 - (HEAD_IN + 0.3) / height,
                        bottom=0.5 / height, wspace=0.38, hspace=0.75)
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
        best: list[float] = []
        for y in ys:
            best.append(y if not best else pick(best[-1], y))
        dots = ax.scatter(xs, ys, s=12, color="#1565c0", alpha=0.7, zorder=3)
        ax.yaxis.get_major_locator().set_params(nbins=4)  # fewer ticks: each is three artists
        (line,) = ax.step([*xs, total], [*best, best[-1]], where="post", color="#2e7d32", linewidth=1.2)
        ax.axvline((period_start - first).days, color="#9e9e9e", linestyle="--", linewidth=0.8)
        ax.set_xlim(0, total)
        # One time axis for all: its dates under the lowest panel of each column only.
        lowest = n + cols >= len(series)
        ax.set_xticks(ticks, names if lowest else [], fontsize=7)
        ax.set_title(labels.item({"id": entry["item_id"], "title": entry["title"]}), fontsize=9, y=1.02)
        ax.set_ylabel(labels.text(entry["metric"]))
        if lowest:
            ax.set_xlabel("run ended")
        handles = handles or (dots, line)
    _heading(fig, "Key metric over its runs (dashed line: start of the period)", handles,
             ["run", "best so far"], height)
    return fig


def _sweep_points(sweep: dict) -> list[dict]:
    return [r for r in sweep["rows"] if is_number(r["value"])]


def _sweeps_figure(Figure, labels: _Labels, sweeps: list[dict]):
    from research.review.text import number_text

    cols = min(SWEEP_PARAMS, max(len(s["params"][:SWEEP_PARAMS]) for s in sweeps)) or 1
    height = HEAD_IN + 0.3 + 2.6 * len(sweeps)
    width = max(6.4, 3.4 * cols + 0.6)
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.75 / width, right=0.98, top=1 - (HEAD_IN + 0.3) / height,
                        bottom=0.5 / height, wspace=0.35, hspace=0.8)
    axes = fig.subplots(len(sweeps), cols, squeeze=False)
    handles = None
    for row, sweep in zip(axes, sweeps, strict=True):
        points = _sweep_points(sweep)
        params = sweep["params"][:SWEEP_PARAMS]
        for n, ax in enumerate(row):
            if n >= len(params):
                ax.set_visible(False)
                continue
            name = params[n]
            values = [r["params"].get(name) for r in points]
            ys = [float(r["value"]) for r in points]
            if all(is_number(v) for v in values):
                xs = [float(v) for v in values]
                positive = [x for x in xs if x > 0]
                if len(positive) == len(xs) and max(xs) / min(xs) >= 100:
                    ax.set_xscale("log")
            else:
                categories = list(dict.fromkeys(number_text(v) for v in values))
                xs = [categories.index(number_text(v)) for v in values]
                ax.set_xticks(range(len(categories)), [labels.text(c)[:12] for c in categories],
                              fontsize=7)
                ax.set_xlim(-0.5, len(categories) - 0.5)
            dots = ax.scatter(xs, ys, s=14, color="#1565c0", alpha=0.75, zorder=3)
            ax.yaxis.get_major_locator().set_params(nbins=4)
            if ax.get_xscale() == "linear" and all(is_number(v) for v in values):
                ax.xaxis.get_major_locator().set_params(nbins=4)
            ax.set_xlabel(labels.text(name))
            if n == 0:
                ax.set_ylabel(labels.text(sweep["metric"] or "metric"))
                item = labels.item({"id": sweep["item_id"], "title": sweep["title"]}, 48)
                ax.set_title(f"sweep {sweep['sweep_id']} · {item}", fontsize=9, loc="left", y=1.02)
            handles = handles or dots
    _heading(fig, "Each sweep's metric against each swept parameter", [handles], ["run"], height)
    return fig


def _trials_figure(Figure, labels: _Labels, sweep: dict):
    """A search sweep's objective by trial, each trial a dot, with the best so far as a step line."""
    points = [t for t in sweep["trials"] if is_number(t["value"])]
    height, width = HEAD_IN + 2.9, 7.2
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.8 / width, right=0.98, top=1 - (HEAD_IN + 0.15) / height, bottom=0.55 / height)
    ax = fig.subplots()
    xs, ys = [t["trial"] for t in points], [float(t["value"]) for t in points]
    dots = ax.scatter(xs, ys, s=16, color="#1565c0", alpha=0.75, zorder=3)
    best_x, best_y, best = [], [], None
    better = max if sweep["direction"] == "maximize" else min
    for x, y in sorted(zip(xs, ys, strict=True)):
        best = y if best is None else better(best, y)
        best_x.append(x)
        best_y.append(best)
    (line,) = ax.step(best_x, best_y, where="post", color="#2e7d32", linewidth=1.6, zorder=2)
    others = [t for t in sweep["trials"] if not is_number(t["value"])]
    handles, names = [dots, line], ["trial", "best so far"]
    if others and ys:
        marks = ax.scatter([t["trial"] for t in others], [min(ys)] * len(others), marker="x", s=18,
                           color="#c62828", zorder=3)
        handles.append(marks)
        names.append("no value (failed, pruned)")
    ax.set_xlabel("trial")
    ax.set_ylabel(labels.text(sweep["objective"]))
    ax.xaxis.get_major_locator().set_params(integer=True)
    _heading(fig, f"Sweep {sweep['id']}: {sweep['objective']} by trial ({sweep['direction']})", handles, names, height)
    return fig


_FIGURES = {
    "trials": _trials_figure,
    "progress": _progress_figure,
    "burndown": _burndown_figure,
    "flow": _flow_figure,
    "runs-per-day": _runs_figure,
    "key-metrics": _metrics_figure,
    "sweeps": _sweeps_figure,
}
_COST = {"progress": 3, "key-metrics": 2, "sweeps": 2, "burndown": 1, "flow": 1, "runs-per-day": 1}
