"""Durations and memory sizes as people write them, parsed once.

Durations follow Ollama (`api.Duration`, `envconfig.KeepAlive`): a number is seconds, a
string is a Go duration (`"5m"`, `"1h30m"`, `"300ms"`) or a plain number of seconds
(`"300"`), and a negative value means "forever". Sizes take the usual suffixes, binary
(`KiB`, `MiB`, `GiB`, `TiB`) and decimal (`KB`, `MB`, `GB`, `TB`; `K`/`M`/`G`/`T` alone are
binary, as in `free -h`).
"""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Seconds (negative: forever). ValueError with the reason otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return float(value)
    if not isinstance(value, str):
        raise ValueError('must be a number of seconds or a duration string such as "5m"')
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    if text in ("0", ""):
        return 0.0
    try:
        return sign * float(text)  # "300" is seconds too
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos == len(text) and pos > 0:
        return sign * total
    raise ValueError(f'{value!r} is not a duration: use seconds or a string such as "5m"')


def format_duration(seconds: float) -> str:
    """`300` -> `5m`, `90` -> `1m30s`, `0.5` -> `500ms`; negative -> `forever`."""
    if seconds < 0:
        return "forever"
    if seconds < 1 and seconds > 0:
        return f"{seconds * 1000:.0f}ms"
    whole = round(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s or not whole else "")
    return out


_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(i?)(B?)", re.IGNORECASE)
_POWER = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}


def parse_size(value: object) -> int:
    """Bytes from `24GiB`, `24G`, `500MB`, `1073741824`. ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError('must be a size such as "24GiB" or a number of bytes')
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a size: write it as 24GiB, 500MB or bytes")
    number, prefix, binary, byte = match.groups()
    power = _POWER[prefix.upper()]
    # "GB" is decimal; "GiB" and a bare "G" are binary.
    base = 1000 if (byte and not binary and prefix) else 1024
    return int(float(number) * base**power)


def format_size(n: float) -> str:
    """Bytes in binary units, as the budget messages print them: `2.5 GiB`, `12 MiB`."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit in ("B", "KiB", "MiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
