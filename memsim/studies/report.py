"""From point records to what a person reads: rows, costs, the best point, CSV and report.md.

Rows follow the grid's order and carry no run times, so the same study gives byte-identical
``results.csv`` and ``report.md`` every time (run times live in ``run.json``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from memsim import units
from memsim.studies.grid import Point, numeric
from memsim.studies.spec import Costs, Study

GIB, TB = 2**30, 10**12
COST_COLUMNS = ("usd_per_hour", "usd_per_mtoken")


def metric(result: dict | None, path: str) -> Any:
    """``peak_bytes.hbm`` → result["peak_bytes"]["hbm"]; a missing key (or list index) is None."""
    node: Any = result
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node if isinstance(node, str | int | float | bool) or node is None else str(node)


def hourly_cost(system: dict | None, costs: Costs | None, gpus_used: int | None = None) -> float | None:
    """Dollars per hour of what the point runs on: its parts priced by ``costs``, else the catalog's
    ``usd_per_hour`` for the node. HBM comes with the GPU; flash is priced as SSD. A job on some of
    a node's GPUs pays that share of the node (a 1-GPU plan on an 8-GPU node: one eighth), since its
    throughput is that of the GPUs it uses."""
    if not system:
        return None
    gpus = system.get("gpus") or 0
    share = min(gpus_used, gpus) / gpus if gpus and gpus_used else 1.0
    if costs is None:
        node = system.get("usd_per_hour")
        return None if node is None else round(node * share, 6)
    by_kind = system["bytes_by_kind"]
    node = (gpus * costs.usd_per_gpu_hour
            + by_kind.get("dram", 0) / GIB * costs.usd_per_gib_dram
            + by_kind.get("cxl", 0) / GIB * costs.usd_per_gib_cxl
            + (by_kind.get("ssd", 0) + by_kind.get("flash", 0)) / TB * costs.usd_per_tb_nvme)
    return round(node * share, 6)


def build_rows(study: Study, hashed: list[tuple[Point, str]], records: dict[str, dict]) -> list[dict]:
    rows = []
    for point, key in hashed:
        record = records[key]
        result = record.get("result")
        row: dict[str, Any] = {"point": point.index, **point.coords,
                               "status": record["status"], "reason": record.get("reason")}
        for name in study.metrics:
            # a failed point keeps only what it needed (bytes); its times are not results
            keep = record["status"] == "ok" or "bytes" in name
            row[name] = metric(result, name) if keep else None
        if "feasible" in row and record["status"] != "ok":
            row["feasible"] = False
        used = metric(result, "job.gpus")
        cost = hourly_cost(record.get("system"), study.costs, used if isinstance(used, int) else None)
        tokens = metric(result, "tokens_per_s")
        row["usd_per_hour"] = cost
        row["usd_per_mtoken"] = (round(cost / (tokens * 3600) * 1e6, 6)
                                 if cost is not None and record["status"] == "ok"
                                 and isinstance(tokens, int | float) and tokens > 0 else None)
        row["hash"] = key
        rows.append(row)
    return rows


def _paths(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _paths(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if prefix else []


def metric_warnings(study: Study, rows: list[dict], records: dict[str, dict]) -> list[str]:
    """Metrics no feasible point has: most likely a typo, so say which key was meant."""
    from memsim.errors import did_you_mean

    ok = [r for r in rows if r["status"] == "ok"]
    results = [records[r["hash"]].get("result") for r in ok]
    known = sorted({p for res in results if isinstance(res, dict) for p in _paths(res)})
    out = []
    for name in study.metrics:
        if ok and all(r.get(name) is None for r in ok) and name not in known:
            out.append(f"metric {name!r} is in no result{did_you_mean(name, known)}")
    return out


def _value(row: dict, column: str) -> float | None:
    value = row.get(column)
    return None if value is None else numeric(value)


def best_row(study: Study, rows: list[dict]) -> dict | None:
    """The feasible row that meets the target's bound and is best by its objective (ties: first)."""
    target = study.target
    column, larger = target.objective if target else ("tokens_per_s", True)
    candidates = []
    for row in rows:
        if row["status"] != "ok" or _value(row, column) is None:
            continue
        if target and target.metric:
            bound = _value(row, target.metric)
            if bound is None or (target.at_least is not None and bound < target.at_least) \
                    or (target.at_most is not None and bound > target.at_most):
                continue
        candidates.append(row)
    if not candidates:
        return None
    return min(candidates, key=lambda r: (-_value(r, column) if larger else _value(r, column), r["point"]))


def frontier(rows: list[dict]) -> list[dict]:
    """Feasible rows no other row beats on both cost and throughput (cheapest first): the only
    systems worth buying at some budget."""
    ok = [r for r in rows if r["status"] == "ok" and isinstance(r.get("usd_per_hour"), int | float)
          and isinstance(r.get("tokens_per_s"), int | float)]
    best: list[dict] = []
    for row in sorted(ok, key=lambda r: (r["usd_per_hour"], -r["tokens_per_s"], r["point"])):
        if not best or row["tokens_per_s"] > best[-1]["tokens_per_s"]:
            best.append(row)
    return best


def columns(study: Study, rows: list[dict]) -> list[str]:
    cols = ["point", *study.axis_keys(), "status", *study.metrics]
    if any(r["usd_per_hour"] is not None for r in rows):
        cols += list(COST_COLUMNS)
    return [*dict.fromkeys([*cols, "reason", "hash"])]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def to_csv(study: Study, rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    cols = columns(study, rows)
    writer.writerow(cols)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in cols])
    return buffer.getvalue()


def _write_parquet(study: Study, rows: list[dict], path: Path) -> bool:
    """The table as Parquet when pyarrow imports; a column of mixed types is written as text."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    arrays = {}
    for c in columns(study, rows):
        values = [r.get(c) for r in rows]
        try:
            arrays[c] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            arrays[c] = pa.array([None if v is None else _cell(v) for v in values])
    pq.write_table(pa.table(arrays), path)
    return True


# -- report.md ------------------------------------------------------------------------------------


def human(column: str, value: Any) -> str:
    """Bytes and seconds as people read them; everything else as it is."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and ("bytes" in column):
        return units.fmt_bytes(value)
    if isinstance(value, int | float) and column.split(".")[-1] == "mfu":
        return f"{value:.1%}"  # MFU is a percentage everywhere (plan, simulate, study)
    if isinstance(value, int | float) and ((column.endswith("_s") and not column.endswith("per_s"))
                                            or column.startswith("breakdown.")):
        return units.fmt_time(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(cols: list[str], rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(human(c, r.get(c)) for c in cols) + " |" for r in rows]
    return lines


def _best_section(study: Study, rows: list[dict], best: dict | None) -> list[str]:
    target = study.target
    column, larger = target.objective if target else ("tokens_per_s", True)
    goal = f"{'highest' if larger else 'lowest'} `{column}`"
    if target and target.metric:
        bound = f"≥ {target.at_least:g}" if target.at_least is not None else f"≤ {target.at_most:g}"
        goal += f" among points with `{target.metric}` {bound}"
    lines = ["## Best point", "", f"Criterion: {goal}, feasible points only.", ""]
    if best is None:
        lines.append("**No point meets it.**")
        feasible = [r for r in rows if r["status"] == "ok"]
        lines.append(f"{len(feasible)} of {len(rows)} points are feasible.")
        return [*lines, ""]
    coords = ", ".join(f"`{k}` = {best[k]}" for k in study.axis_keys()) or "the base case"
    lines.append(f"**Point {best['point']}**: {coords}.")
    lines.append("")
    shown = [c for c in [*study.metrics, *COST_COLUMNS] if best.get(c) is not None]
    lines += [f"- {c}: {human(c, best[c])}" for c in shown]
    return [*lines, ""]


def _axes_section(study: Study) -> list[str]:
    """What varies, once: a zip is one line per label value with the keys it sets."""
    lines = ["## Axes", ""]
    for axis in study.axes:
        members = axis.members()
        if len(members) == 1:
            values = ", ".join(str(v) for v in members[0].resolved())
            lines.append(f"- `{members[0].key}`: {values}")
            continue
        names = [f"`{a.key}`" + (" (label)" if a.label else "") for a in members]
        lines.append("- zipped: " + ", ".join(names))
        for i in range(len(members[0].resolved())):
            lines.append("  - " + " · ".join(str(a.resolved()[i]) for a in members))
    if study.filters:
        lines.append("- filters: " + ", ".join(f"`{f}`" for f in study.filters))
    return [*lines, ""] if study.axes else []


def to_markdown(study: Study, rows: list[dict], best: dict | None, plots: list[str]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    base = study.base
    lines = [f"# Study: {study.name}", ""]
    if study.description:
        lines += [study.description.strip(), ""]
    how = "plan + simulate" if study.run == "plan" else "simulate, all resident"
    lines += [f"Base case: hardware `{Path(base.hardware).stem}`, workload `{Path(base.workload).stem}`, "
              f"planner `{base.planner}` ({how})"
              + (f", with {', '.join(f'`{s}`' for s in base.set)}" if base.set else "") + ".",
              "", f"{len(rows)} points: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".",
              "Every time and throughput figure is simulated by memsim; costs are hourly prices from the "
              "study's cost table (or the catalog's node price).", ""]
    lines += _best_section(study, rows, best)
    front = frontier(rows)
    if len(front) > 1:
        keys = study.shown_keys()
        lines += ["## Cost and throughput frontier", "", "Feasible points no other point beats on both "
                  "price and tokens per second, cheapest first:", ""]
        lines += [*_md_table(["point", *keys, "usd_per_hour", "tokens_per_s", "usd_per_mtoken"], front), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    lines += _axes_section(study)
    hidden = set(study.axis_keys()) - set(study.shown_keys())  # zipped keys: shown by their label
    cols = [c for c in columns(study, rows) if c not in ("hash", "reason", *hidden)]
    lines += ["## Results", "", *_md_table(cols, rows), ""]
    failed = [r for r in rows if r["status"] != "ok" and r.get("reason")]
    if failed:
        lines += ["## Why points failed", ""]
        lines += [f"- point {r['point']} ({r['status']}): {human('reason', r['reason'])}" for r in failed]
        lines.append("")
    return "\n".join(lines)


def write_outputs(study: Study, rows: list[dict], best: dict | None, out: Path) -> dict[str, str]:
    from memsim.studies.plots import write_plots

    files = {"csv": out / "results.csv", "report": out / "report.md"}
    files["csv"].write_text(to_csv(study, rows))
    if _write_parquet(study, rows, out / "results.parquet"):
        files["parquet"] = out / "results.parquet"
    plots = write_plots(study, rows, out)
    files["report"].write_text(to_markdown(study, rows, best, plots))
    named = {k: str(v) for k, v in files.items()}
    named.update({f"plot{i}": p for i, p in enumerate(plots)})
    return named
