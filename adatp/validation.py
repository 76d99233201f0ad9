"""One validation kit for AdaTP configs, presets and (in `autotune.spec`) study specs.

Each check returns the value it accepts, or raises `error` (ConfigError unless the caller passes its own class)
with one line that starts with the field's path: "config.tau_s: must be in [-1, 1], got 1.5". The three file
kinds therefore say the same thing about the same mistake.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

# How long a value (or a whole refusal) may be in a message: an error is one line a person reads.
VALUE_CHARS = 80
LINE_CHARS = 300


class RefusalError(ValueError):
    """Bad input, refused with a message of at most LINE_CHARS characters (cut in the middle when longer): the base
    of every refusal of configs, presets, specs and tables, so no caller can print a megabyte-long line."""

    def __init__(self, message: str = "") -> None:
        super().__init__(cut(str(message)))


class ConfigError(RefusalError):
    """An invalid AdaTP config or preset; the message names the offending field."""


def brief(value: Any, limit: int = VALUE_CHARS) -> str:
    """repr(value) for a message, cut when long and saying how long it was: "['a', 'b', 'c', ... (200,000 items)]",
    "'xxxx'... (5,000,000 characters)". A long list or string is never repr'd whole."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit // 2]!r}... ({len(value):,} characters)"
    if isinstance(value, dict) and len(value) > 8:
        head = ", ".join(f"{brief(key, 20)}: {brief(item, 20)}" for key, item in itertools.islice(value.items(), 3))
        return f"{{{head}, ... ({len(value):,} items)}}"
    if isinstance(value, list | tuple) and len(value) > 8:
        head = ", ".join(brief(item, 20) for item in value[:3])
        return f"[{head}, ... ({len(value):,} items)]"
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit - 20]}... ({len(shown):,} characters)"


def field_name(key: Any) -> str:
    """A mapping key as a message names it: itself when it is a short string, else cut like a value."""
    return key if isinstance(key, str) and len(key) <= VALUE_CHARS else brief(key)


def cut(text: str, limit: int = LINE_CHARS) -> str:
    """`text` cut in the middle when longer than `limit`: its start names the field, its end usually the file."""
    if len(text) <= limit:
        return text
    tail = limit // 3
    return f"{text[:limit - tail - 5]} ... {text[-tail:]}"


def one_line(message: str, limit: int = LINE_CHARS) -> str:
    """The first line of `message`, cut to `limit` characters."""
    return cut((message.strip().splitlines() or [""])[0], limit)


def interval(low: float, high: float, low_open: bool = False, high_open: bool = False) -> str:
    """How a message writes a range: "[-1, 1]", "(0, 1]", "[0, inf]"."""
    def shown(bound: float) -> str:
        return ("-inf" if bound < 0 else "inf") if math.isinf(bound) else f"{bound:g}"

    return f"{'(' if low_open else '['}{shown(low)}, {shown(high)}{')' if high_open else ']'}"


def number(where: str, value: Any, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
           high_open: bool = False, error: type[Exception] = ConfigError) -> float:
    """A finite int or float (never a bool) inside the range, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{where}: must be a number, got {type(value).__name__} {brief(value)}")
    if not math.isfinite(value):
        raise error(f"{where}: must be finite, got {brief(value)}")
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        raise error(f"{where}: must be in {interval(low, high, low_open, high_open)}, got {brief(value)}")
    return float(value)


def integer(where: str, value: Any, minimum: int, maximum: int | None = None, *,
            error: type[Exception] = ConfigError) -> int:
    """An int (never a bool) >= minimum and, when given, <= maximum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{where}: must be an integer, got {type(value).__name__} {brief(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise error(f"{where}: must be {bound}, got {value}")
    return value


def text(where: str, value: Any, *, error: type[Exception] = ConfigError) -> str:
    """A string with something other than spaces in it."""
    if not isinstance(value, str) or not value.strip():
        shown = "an empty string" if isinstance(value, str) else f"{type(value).__name__} {brief(value)}"
        raise error(f"{where}: must be a non-empty string, got {shown}")
    return value


def choice(where: str, value: Any, allowed: Sequence[str], *, error: type[Exception] = ConfigError) -> str:
    if value not in allowed:
        raise error(f"{where}: must be one of {', '.join(allowed)}, got {brief(value)}")
    return value


def mapping(where: str, value: Any, *, error: type[Exception] = ConfigError) -> dict:
    if not isinstance(value, dict):
        raise error(f"{where}: must be a mapping, got {type(value).__name__} {brief(value)}")
    return value


def known_keys(where: str, data: dict, allowed: Iterable[str], required: Iterable[str] = (), *,
               error: type[Exception] = ConfigError) -> None:
    """No key outside `allowed` (named with the allowed ones), every key of `required` present."""
    allowed = tuple(allowed)
    for key in data:
        if key not in allowed:
            raise error(f"{where + '.' if where else ''}{field_name(key)}: unknown key (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in data:
            raise error(f"{where}.{key}: missing (required)")
