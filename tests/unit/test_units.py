"""Durations as Ollama reads them (api.Duration, envconfig.KeepAlive) and memory sizes."""

from __future__ import annotations

import pytest

from vllama.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        (1.5, 1.5),
        (-1, -1.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("300", 300.0),
        ("-1", -1.0),
        ("-5m", -300.0),
        ("0", 0.0),
        ("0s", 0.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "5 minutes", "5x", True, None, float("inf"), "m5"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("24GiB", 24 * 1024**3),
        ("24G", 24 * 1024**3),
        ("24GB", 24 * 10**9),
        ("512MiB", 512 * 1024**2),
        ("1.5GiB", int(1.5 * 1024**3)),
        ("1073741824", 1073741824),
        (2048, 2048),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1GiB", "1 PiB", -5])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_formats() -> None:
    assert format_duration(300) == "5m"
    assert format_duration(90) == "1m30s"
    assert format_duration(0) == "0s"
    assert format_duration(-1) == "forever"
    assert format_size(2.5 * 1024**3) == "2.5 GiB"
    assert format_size(16 * 1024**2) == "16 MiB"
