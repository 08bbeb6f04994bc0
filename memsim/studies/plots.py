"""Study figures as PNG (matplotlib, Agg): a line per series, failed points marked, the region
where no point is feasible shaded — the feasibility boundary is where the shading ends.

A study names its plots, or they are chosen from the axes: the first axis on x, the second as
series, one figure per metric. Axis values with units (``256GiB``) are placed by their number and
labelled as written; values that are not numbers (tier names, planners) become categories.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

from memsim.studies.grid import numeric
from memsim.studies.labels import axis_label, metric_label
from memsim.studies.spec import PlotSpec, Study

MAX_SERIES = 12
MARKERS = ("o", "s", "^", "D", "v", "P")


def default_plots(study: Study) -> list[PlotSpec]:
    if not study.axes:
        return []
    x = study.axes[0].members()[0].key
    series = study.axes[1].members()[0].key if len(study.axes) > 1 else None
    ys = [m for m in study.metrics if m != "feasible"][:3] or ["tokens_per_s"]
    return [PlotSpec(x=x, y=y, series=series) for y in ys]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _series_label(row: dict, keys: list[str], series: str | None) -> str:
    if keys == [series]:
        return str(row[series])  # the legend's title names the key
    return ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in keys) or "all points"


def _positions(rows: list[dict], x: str) -> tuple[dict, list[tuple[float, str]], bool]:
    """x value → position; tick (position, label) pairs; whether the axis is numeric."""
    values = list(dict.fromkeys(r[x] for r in rows))
    numbers = [numeric(v) for v in values]
    if all(n is not None for n in numbers):
        pos = dict(zip(values, numbers, strict=True))
        return pos, sorted((n, str(v)) for v, n in pos.items()), True
    pos = {v: float(i) for i, v in enumerate(values)}
    return pos, [(p, str(v)) for v, p in pos.items()], False


def _mid(a: float, b: float, log: bool) -> float:
    """Halfway between two x positions as the eye sees it: geometric on a log axis."""
    return math.sqrt(a * b) if log and a > 0 and b > 0 else (a + b) / 2


def _shade_infeasible(ax, rows: list[dict], pos: dict, x: str, log: bool) -> None:
    """Shade each x at which no point is feasible, halfway to its neighbours."""
    xs = sorted(set(pos.values()))
    ok = {pos[r[x]] for r in rows if r["status"] == "ok"}
    labelled = False
    for i, value in enumerate(xs):
        if value in ok:
            continue
        # at the ends, mirror the distance to the one neighbour (or half a unit when alone)
        before = xs[i - 1] if i > 0 else (value * value / xs[1] if log and len(xs) > 1 and value > 0
                                           else 2 * value - xs[1] if len(xs) > 1 else value - 1)
        after = xs[i + 1] if i + 1 < len(xs) else (value * value / before if log and before > 0
                                                   else 2 * value - before)
        left, right = _mid(before, value, log), _mid(value, after, log)
        ax.axvspan(left, right, color="tab:red", alpha=0.08, lw=0,
                   label=None if labelled else "no feasible point")
        labelled = True


def _mark_boundary(ax, members: list[dict], pos: dict, x: str, color: str, log: bool) -> None:
    """A dashed line where a series turns from infeasible to feasible (or back) along x."""
    for a, b in itertools.pairwise(members):
        if (a["status"] == "ok") != (b["status"] == "ok") and pos[a[x]] != pos[b[x]]:
            ax.axvline(_mid(pos[a[x]], pos[b[x]], log), color=color, linestyle="--", linewidth=1, alpha=0.6)


def _short(key: str) -> str:
    return ".".join(key.split(".")[-2:])


def plot_one(spec: PlotSpec, study: Study, rows: list[dict], path: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return None
    tied = {k for axis in study.axes for k in (a.key for a in axis.members())
            if {spec.x, spec.series} & {a.key for a in axis.members()}}  # zipped with x or series
    others = [k for k in study.axis_keys() if k not in tied and len({r[k] for r in rows}) > 1]
    keys = ([spec.series] if spec.series else []) + others
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(_series_label(row, keys, spec.series), []).append(row)
    pos, ticks, is_numeric = _positions(rows, spec.x)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    log = spec.logx and is_numeric
    _shade_infeasible(ax, rows, pos, spec.x, log)
    ylabel, scale = metric_label(spec.y)
    failed = any(r["status"] != "ok" for r in rows)
    top = 0.0
    for i, (label, members) in enumerate(list(groups.items())[:MAX_SERIES]):
        color = f"C{i % 10}"
        members = sorted(members, key=lambda r: pos[r[spec.x]])
        good = [(pos[r[spec.x]], numeric(r.get(spec.y))) for r in members if r["status"] == "ok"]
        good = [(a, b * scale) for a, b in good if b is not None]
        top = max([top, *(b for _, b in good)])
        if good:
            # distinct markers, shrinking: series with equal values stay visible on top of each other
            ax.plot(*zip(*good, strict=True), marker=MARKERS[i % len(MARKERS)], color=color, label=label,
                    markersize=max(3.0, 9.0 - 1.5 * (i % 4)), linewidth=max(0.8, 2.2 - 0.35 * (i % 4)))
        _mark_boundary(ax, members, pos, spec.x, color, log)
        bad = [pos[r[spec.x]] for r in members if r["status"] != "ok"]
        if bad:
            ax.plot(bad, [0.02] * len(bad), linestyle="none", marker="x", markersize=9, color=color,
                    transform=ax.get_xaxis_transform(), clip_on=False,
                    label=None if good else f"{label} (none feasible)")
    if log:
        ax.set_xscale("log")
        ax.minorticks_off()  # the ticks are the axis values, labelled as written
    if spec.logy:
        ax.set_yscale("log")
    if len(ticks) <= 16:
        ax.set_xticks([p for p, _ in ticks], [t for _, t in ticks], rotation=30 if len(ticks) > 6 else 0)
    ax.set_xlabel(axis_label(spec.x))
    ax.set_ylabel(f"{ylabel}, simulated")
    if not spec.logy and top > 0:  # explicit: the shading's sticky edges defeat autoscale margins
        ax.set_ylim(0, top * 1.08)
    key = "\n× infeasible or failed · dashed: feasibility boundary · shaded: nothing fits" if failed else ""
    ax.set_title(spec.title or f"{study.name}: {ylabel.split(' (')[0]} vs {axis_label(spec.x)}{key}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no empty legend box (e.g. one series, all feasible)
        ax.legend(fontsize=8, title=axis_label(spec.series) if spec.series else None)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return str(path)


def write_plots(study: Study, rows: list[dict], out: Path) -> list[str]:
    specs = study.plots if study.plots is not None else default_plots(study)
    written = []
    for i, spec in enumerate(specs):
        path = out / f"plot{i}-{_slug(spec.y)}-vs-{_slug(spec.x)}.png"
        done = plot_one(spec, study, rows, path)
        if done:
            written.append(done)
    return written
