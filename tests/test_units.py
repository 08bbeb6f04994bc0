"""Quantities as people write them: exact prefixes, bits vs bytes, times, FLOP/s, and round trips."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memsim import units


@pytest.mark.parametrize(("text", "expected"), [
    ("80GiB", 80 * 2**30),
    ("80 GiB", 80 * 2**30),
    ("1.5TB", 1_500_000_000_000),
    ("3.84TB", 3_840_000_000_000),
    ("0.5KiB", 512),
    ("1KB", 1000),
    ("1kB", 1000),
    ("2MiB", 2 * 2**20),
    ("1TiB", 2**40),
    ("1PB", 10**15),
    ("4096", 4096),
    (4096, 4096),
    ("1e3B", 1000),
    ("141GB", 141 * 10**9),
])
def test_parse_bytes_exact_prefixes(text, expected):
    value = units.parse_bytes(text)
    assert value == expected
    assert isinstance(value, int)


def test_binary_and_decimal_prefixes_differ():
    assert units.parse_bytes("1GiB") - units.parse_bytes("1GB") == 2**30 - 10**9


@pytest.mark.parametrize(("text", "expected"), [
    ("3.35TB/s", 3.35e12),
    ("64GB/s", 64e9),
    ("1 GB/s", 1e9),
    ("12.89GiB/s", 12.89 * 2**30),
    ("400Gb/s", 50e9),       # lower-case b is bits
    ("100Mb/s", 12.5e6),
    ("8Gib/s", 2**30),       # binary bits
    ("1e9", 1e9),            # bare number: bytes/s
    (5, 5.0),
])
def test_parse_bandwidth_bits_and_bytes(text, expected):
    assert units.parse_bandwidth(text) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize(("text", "expected"), [
    ("5us", 5e-6), ("5µs", 5e-6), ("5μs", 5e-6),  # micro sign and Greek mu
    ("1.5ms", 1.5e-3), ("2s", 2.0), ("100ns", 1e-7), ("3min", 180.0), ("1h", 3600.0), ("7", 7.0),
])
def test_parse_time(text, expected):
    assert units.parse_time(text) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize(("text", "expected"), [
    ("989TFLOP/s", 989e12), ("67TFLOPS", 67e12), ("1PFLOP/s", 1e15), ("12GFLOPs", 12e9),
    ("0.0123TFLOP/s", 0.0123e12), ("5", 5.0),
])
def test_parse_flops(text, expected):
    assert units.parse_flops(text) == pytest.approx(expected, rel=1e-15)


def test_parse_count():
    assert units.parse_count("1.5M") == 1.5e6
    assert units.parse_count("7e9") == 7e9


@pytest.mark.parametrize(("fn", "text"), [
    (units.parse_bytes, "10b"),        # bits are ambiguous for a size
    (units.parse_bytes, "80G"),        # no unit
    (units.parse_bytes, "80XB"),       # unknown prefix
    (units.parse_bytes, "0.3B"),       # fraction of a byte
    (units.parse_bytes, "-5GB"),
    (units.parse_bytes, "lots"),
    (units.parse_bytes, True),
    (units.parse_bytes, None),
    (units.parse_bandwidth, "64GB"),   # a size, not a rate
    (units.parse_bandwidth, "GB/s"),
    (units.parse_bandwidth, "-1GB/s"),
    (units.parse_bandwidth, "5GX/s"),
    (units.parse_time, "5m"),          # minutes or metres? ambiguous, refused
    (units.parse_time, "-2s"),
    (units.parse_time, "5 parsecs"),
    (units.parse_flops, "3TB/s"),
    (units.parse_flops, "1.2ZFLOP/s"),
])
def test_bad_units_raise_value_error(fn, text):
    with pytest.raises(ValueError, match="expected"):
        fn(text)


def test_negative_says_so():
    with pytest.raises(ValueError, match="negative"):
        units.parse_bytes("-5GiB")


def test_format_examples():
    assert units.fmt_bytes(80 * 2**30) == "80.0GiB"
    assert units.fmt_bytes(1.5e12, binary=False) == "1.5TB"
    assert units.fmt_bytes(512) == "512.0B"
    assert units.fmt_bandwidth(3.35e12) == "3.35TB/s"
    assert units.fmt_time(5e-6) == "5us"
    assert units.fmt_time(90) == "1.5min"
    assert units.fmt_flops(9.89e14) == "989TFLOP/s"


@given(st.integers(min_value=1, max_value=1023), st.sampled_from(["B", "KiB", "MiB", "GiB", "TiB", "PiB"]))
def test_fmt_bytes_round_trips(whole, unit):
    n = units.parse_bytes(f"{whole}{unit}")
    assert units.fmt_bytes(n) == f"{whole}.0{unit}"
    assert units.parse_bytes(units.fmt_bytes(n)) == n


@given(st.integers(min_value=1, max_value=10**7))
def test_fmt_bytes_is_within_a_twentieth_of_a_unit(n):
    text = units.fmt_bytes(n)
    number, unit = float(text.rstrip("BKMGTPi")), text.lstrip("0123456789.")
    assert 1 <= number < 1024
    # One decimal rounds by at most half a tenth; the float printed for it may sit a hair beyond.
    one = units.parse_bytes(f"1{unit}")
    assert abs(number * one - n) <= 0.05 * one * (1 + 1e-9)


@pytest.mark.parametrize("value", [3.35e12, 64e9, 1.5e6, 450e9, 12.5e3])
def test_fmt_bandwidth_round_trips(value):
    assert units.parse_bandwidth(units.fmt_bandwidth(value)) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("value", [5e-6, 1.5e-3, 2.0, 100e-9, 3600.0, 180.0])
def test_fmt_time_round_trips(value):
    assert units.parse_time(units.fmt_time(value)) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("value", [989e12, 67e12, 1.98e15, 12.3e9])
def test_fmt_flops_round_trips(value):
    assert units.parse_flops(units.fmt_flops(value)) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("value", [1.979e15, 21.24e12, 0.0123e12])
def test_fmt_keeps_three_significant_digits(value):
    assert units.parse_flops(units.fmt_flops(value)) == pytest.approx(value, rel=5e-3)
    assert units.parse_bandwidth(units.fmt_bandwidth(value)) == pytest.approx(value, rel=5e-3)
