import math

import pytest

from vtrain_opt.units import (
    DAY_S,
    format_bytes,
    format_duration,
    format_usd,
    parse_budget,
    parse_count,
    parse_duration_s,
    parse_gpu_hours,
    parse_money_usd,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("300B", 300e9),
        ("300e9", 300e9),
        ("1.5T", 1.5e12),
        ("2M", 2e6),
        ("4096", 4096.0),
        ("1,000", 1000.0),
        ("2k", 2000.0),
        (" 7b ", 7e9),
    ],
)
def test_parse_count(text, value):
    assert parse_count(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["", "abc", "300X", "-5B", "0", "nan", "1e999"])
def test_parse_count_rejects(bad):
    with pytest.raises(ValueError):
        parse_count(bad)


@pytest.mark.parametrize(
    ("text", "value"),
    [("$2M", 2e6), ("2e6usd", 2e6), ("2,000,000 USD", 2e6), ("$1.5k", 1500.0), ("$500", 500.0)],
)
def test_parse_money(text, value):
    assert parse_money_usd(text) == pytest.approx(value)


def test_budget_kinds():
    assert parse_budget("$2M").usd == pytest.approx(2e6)
    assert parse_budget("1.5e6gpu-h").gpu_hours == pytest.approx(1.5e6)
    assert parse_budget("200k gpu-hours").gpu_hours == pytest.approx(2e5)
    assert parse_gpu_hours("1M gpuh") == pytest.approx(1e6)
    for bad in ("2e6", "-$5", "$-5", "5 dollars", "gpu-h"):
        with pytest.raises(ValueError):
            parse_budget(bad)


def test_durations():
    assert parse_duration_s("30d") == 30 * DAY_S
    assert parse_duration_s("12h") == 12 * 3600
    assert parse_duration_s("2w") == 14 * DAY_S
    assert parse_duration_s("90min") == 5400
    assert parse_duration_s("30") == 30 * DAY_S  # bare number: days by default
    with pytest.raises(ValueError):
        parse_duration_s("30 parsecs")


def test_formatting():
    assert format_usd(3.64e6) == "$3.64M"
    assert format_bytes(80 * 2**30) == "80 GiB"
    assert format_duration(0.5) == "500 ms"
    assert format_duration(31.6) == "31.6 s"
    assert format_duration(25 * DAY_S) == "25 d"
    assert format_duration(math.nan) == "-"
