"""Human axis labels for study plots and tables: words and units instead of raw result keys.

A metric's values are also scaled to its unit (MFU as a percentage, bytes as GiB), so the axis
reads as the label says.
"""

from __future__ import annotations

GIB = 1 << 30

# metric key → (label with unit, factor applied to the stored value)
METRICS: dict[str, tuple[str, float]] = {
    "tokens_per_s": ("throughput (tokens/s)", 1.0),
    "step_time_s": ("step time (s)", 1.0),
    "mfu": ("MFU (%)", 100.0),
    "usd_per_hour": ("cost ($/hour)", 1.0),
    "usd_per_mtoken": ("cost ($ per million tokens)", 1.0),
}


def metric_label(key: str) -> tuple[str, float]:
    """(axis label, scale) for a result key; ``peak_bytes.hbm`` → ("peak hbm (GiB)", 1/GiB)."""
    if key in METRICS:
        return METRICS[key]
    head, _, tail = key.rpartition(".")
    if head.endswith("bytes") or key.endswith("_bytes"):
        what = head.removesuffix("_bytes").replace("_", " ") if head else key.removesuffix("_bytes")
        return f"{what} {tail} (GiB)".strip(), 1 / GIB
    return key.replace("_", " "), 1.0


def axis_label(key: str) -> str:
    """An axis key as words: ``hardware.tiers.dram.capacity`` → ``dram capacity``; values keep
    the units they were written with (256GiB), so the label needs none."""
    parts = [p for p in key.split(".") if p not in ("hardware", "tiers", "training", "inference",
                                                    "serving", "compute")]
    return " ".join(p.replace("_", " ") for p in parts) or key
