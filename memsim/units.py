"""Quantities as people write them: ``80GiB``, ``3.35TB/s``, ``5us``, ``989TFLOP/s``.

Decimal prefixes are powers of 1000 and binary prefixes (``Ki``, ``Mi`` …) powers of 1024, both
exact: ``parse_bytes("80GiB") == 80 * 2**30``. Bandwidths are bytes per second (``Gb/s`` with a
lower-case ``b`` is bits). Parsing never guesses: an unknown unit raises ``ValueError`` with the
text and what was expected, which the spec loaders turn into a message naming the file and key.
"""

from __future__ import annotations

import re
from fractions import Fraction

_DECIMAL = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_TIME = {"s": 1, "ms": Fraction(1, 10**3), "us": Fraction(1, 10**6), "µs": Fraction(1, 10**6),
         "ns": Fraction(1, 10**9), "min": 60, "h": 3600}

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_QUANTITY = re.compile(rf"^\s*{_NUMBER}\s*([A-Za-zµ/]*)\s*$")


def _split(text: str | int | float, what: str) -> tuple[Fraction, str]:
    if isinstance(text, bool):
        raise ValueError(f"expected {what}, got {text!r}")
    if isinstance(text, int | float):
        return Fraction(text), ""
    match = _QUANTITY.match(str(text).replace("\u03bc", "\u00b5"))  # Greek mu -> micro sign
    if not match:
        hint = " (negative)" if str(text).strip().startswith("-") else ""
        raise ValueError(f"expected {what}, got {text!r}{hint}")
    return Fraction(match.group(1)), match.group(2)


def _prefix(prefix: str, text: object, what: str) -> int:
    if prefix in _BINARY:
        return _BINARY[prefix]
    if prefix in _DECIMAL:
        return _DECIMAL[prefix]
    raise ValueError(f"expected {what}, got {text!r} (unknown prefix {prefix!r})")


def parse_bytes(text: str | int | float) -> int:
    """``"80GiB"`` → 85899345920. A bare number is bytes; ``b`` (bits) is rejected as ambiguous."""
    what = "a size such as 80GiB, 512MB or 4096"
    value, unit = _split(text, what)
    if unit and not unit.endswith("B"):
        raise ValueError(f"expected {what}, got {text!r}")
    scaled = value * _prefix(unit[:-1] if unit else "", text, what)
    if scaled.denominator != 1:
        raise ValueError(f"expected a whole number of bytes, got {text!r}")
    return int(scaled)


def parse_bandwidth(text: str | int | float) -> float:
    """``"3.35TB/s"`` → 3.35e12 bytes/s; ``"400Gb/s"`` (bits) → 5e10 bytes/s; a bare number is B/s."""
    what = "a bandwidth such as 64GB/s, 3.35TB/s or 400Gb/s"
    value, unit = _split(text, what)
    if not unit:
        return float(value)
    if not unit.endswith("/s") or len(unit) < 3:
        raise ValueError(f"expected {what}, got {text!r}")
    base = unit[:-2]
    bits = base.endswith("b")
    if not base.endswith(("B", "b")):
        raise ValueError(f"expected {what}, got {text!r}")
    scaled = value * _prefix(base[:-1], text, what)
    return float(scaled / 8 if bits else scaled)


def parse_time(text: str | int | float) -> float:
    """``"5us"`` → 5e-6 seconds. A bare number is seconds."""
    what = "a duration such as 5us, 1.5ms or 2s"
    value, unit = _split(text, what)
    if unit not in _TIME and unit:
        raise ValueError(f"expected {what}, got {text!r}")
    return float(value * _TIME.get(unit, 1))


def parse_flops(text: str | int | float) -> float:
    """``"989TFLOP/s"`` or ``"989TFLOPS"`` → 9.89e14 FLOP/s. A bare number is FLOP/s."""
    what = "a compute rate such as 989TFLOP/s or 67TFLOPS"
    value, unit = _split(text, what)
    if not unit:
        return float(value)
    for suffix in ("FLOP/s", "FLOPS", "FLOPs"):
        if unit.endswith(suffix):
            return float(value * _prefix(unit[: -len(suffix)], text, what))
    raise ValueError(f"expected {what}, got {text!r}")


def parse_count(text: str | int | float) -> float:
    """``"1.5M"`` → 1.5e6, for token counts and parameter counts."""
    value, unit = _split(text, "a number such as 7e9 or 1.5M")
    return float(value * _prefix(unit, text, "a number such as 7e9 or 1.5M"))


def _scaled(value: float, steps: list[tuple[float, str]], fmt: str) -> str:
    """The largest unit the value reaches; moves up one unit when rounding would print a full
    one of the next (1023.95 KiB prints as 1.0MiB, not 1024.0KiB)."""
    i = next((k for k, (scale, _) in enumerate(steps) if abs(value) >= scale), len(steps) - 1)
    text = f"{value / steps[i][0]:{fmt}}"
    if i > 0 and abs(float(text)) >= steps[i - 1][0] / steps[i][0]:
        i -= 1
        text = f"{value / steps[i][0]:{fmt}}"
    return text + steps[i][1]


def fmt_bytes(n: float, binary: bool = True) -> str:
    """Bytes for humans: ``fmt_bytes(80 * 2**30) == "80.0GiB"``."""
    if binary:
        steps = [(2**50, "PiB"), (2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"), (1, "B")]
    else:
        steps = [(1e15, "PB"), (1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1, "B")]
    return _scaled(float(n), steps, ".1f")


def fmt_bandwidth(bps: float) -> str:
    return _scaled(bps, [(1e12, "TB/s"), (1e9, "GB/s"), (1e6, "MB/s"), (1e3, "kB/s"), (1, "B/s")], ".3g")


def fmt_time(seconds: float) -> str:
    steps = [(3600, "h"), (60, "min"), (1, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns")]
    return _scaled(seconds, steps, ".3g")


def fmt_flops(rate: float) -> str:
    return _scaled(rate, [(1e15, "PFLOP/s"), (1e12, "TFLOP/s"), (1e9, "GFLOP/s"), (1, "FLOP/s")], ".3g")
