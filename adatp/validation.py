"""One validation kit for AdaTP configs, presets and (in `autotune.spec`) study specs.

Each check returns the value it accepts, or raises `error` (ConfigError unless the caller passes its own class)
with one line that starts with the field's path: "config.tau_s: must be in [-1, 1], got 1.5". The three file
kinds therefore say the same thing about the same mistake.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


class ConfigError(ValueError):
    """An invalid AdaTP config or preset; the message names the offending field."""


def interval(low: float, high: float, low_open: bool = False, high_open: bool = False) -> str:
    """How a message writes a range: "[-1, 1]", "(0, 1]", "[0, inf]"."""
    def shown(bound: float) -> str:
        return ("-inf" if bound < 0 else "inf") if math.isinf(bound) else f"{bound:g}"

    return f"{'(' if low_open else '['}{shown(low)}, {shown(high)}{')' if high_open else ']'}"


def number(where: str, value: Any, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
           high_open: bool = False, error: type[Exception] = ConfigError) -> float:
    """A finite int or float (never a bool) inside the range, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{where}: must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise error(f"{where}: must be finite, got {value!r}")
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        raise error(f"{where}: must be in {interval(low, high, low_open, high_open)}, got {value!r}")
    return float(value)


def integer(where: str, value: Any, minimum: int, maximum: int | None = None, *,
            error: type[Exception] = ConfigError) -> int:
    """An int (never a bool) >= minimum and, when given, <= maximum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{where}: must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise error(f"{where}: must be {bound}, got {value}")
    return value


def text(where: str, value: Any, *, error: type[Exception] = ConfigError) -> str:
    """A string with something other than spaces in it."""
    if not isinstance(value, str) or not value.strip():
        shown = "an empty string" if isinstance(value, str) else f"{type(value).__name__} {value!r}"
        raise error(f"{where}: must be a non-empty string, got {shown}")
    return value


def choice(where: str, value: Any, allowed: Sequence[str], *, error: type[Exception] = ConfigError) -> str:
    if value not in allowed:
        raise error(f"{where}: must be one of {', '.join(allowed)}, got {value!r}")
    return value


def mapping(where: str, value: Any, *, error: type[Exception] = ConfigError) -> dict:
    if not isinstance(value, dict):
        raise error(f"{where}: must be a mapping, got {type(value).__name__} {value!r}")
    return value


def known_keys(where: str, data: dict, allowed: Iterable[str], required: Iterable[str] = (), *,
               error: type[Exception] = ConfigError) -> None:
    """No key outside `allowed` (named with the allowed ones), every key of `required` present."""
    allowed = tuple(allowed)
    for key in data:
        if key not in allowed:
            raise error(f"{where + '.' if where else ''}{key}: unknown key (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in data:
            raise error(f"{where}.{key}: missing (required)")
