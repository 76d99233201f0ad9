"""YAML from files people hand us (presets, study specs), read in bounded time and memory.

`yaml.safe_load` builds whatever a file describes: a 1 kB alias bomb expands to gigabytes, 10,000 nested brackets
overflow the stack, a 5,000-digit number trips Python's int limit, and a repeated key silently replaces the first.
`load` refuses all of these with one `UnsafeYAML` line, before anything is built: no aliases (anchors alone are
harmless), at most `MAX_DEPTH` levels of nesting, numbers of at most `MAX_DIGITS` digits, no duplicate keys; and
`read` refuses files over `MAX_BYTES` or not UTF-8 before parsing them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from adatp.validation import RefusalError

MAX_BYTES = 1 << 20  # a spec or preset is a few kB
MAX_DEPTH = 32
MAX_DIGITS = 64


class UnsafeYAML(RefusalError):
    """The text is not YAML we accept; the message is one line saying why (and where)."""


def _line(node_or_event) -> str:
    mark = getattr(node_or_event, "start_mark", None)
    return f" (line {mark.line + 1})" if mark is not None else ""


class _Loader(yaml.SafeLoader):
    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise UnsafeYAML(f"YAML aliases (*name) are not accepted{_line(self.peek_event())}")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise UnsafeYAML(f"nested deeper than {MAX_DEPTH} levels{_line(self.peek_event())}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise UnsafeYAML(f"duplicate key {str(key)[:80]!r}{_line(key_node)}")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _bounded_number(constructor):
    def construct(loader, node):
        digits = sum(character.isdigit() for character in node.value)
        if digits > MAX_DIGITS:
            raise UnsafeYAML(f"a number with {digits} digits (at most {MAX_DIGITS}){_line(node)}")
        return constructor(loader, node)

    return construct


_Loader.add_constructor("tag:yaml.org,2002:int", _bounded_number(yaml.SafeLoader.construct_yaml_int))
_Loader.add_constructor("tag:yaml.org,2002:float", _bounded_number(yaml.SafeLoader.construct_yaml_float))


def load(text: str) -> Any:
    """Parse `text` like `yaml.safe_load`, refusing aliases, deep nesting, huge numbers and duplicate keys.

    Raises `UnsafeYAML` for those and `yaml.YAMLError` for text that is not YAML at all.
    """
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read(path: str | os.PathLike[str]) -> str:
    """The text of a file of at most `MAX_BYTES` bytes of UTF-8 (a UTF-8 byte-order mark is allowed).

    Raises `UnsafeYAML` for a larger or non-UTF-8 file, and OSError (FileNotFoundError, PermissionError, ...) for
    one that cannot be read.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise UnsafeYAML(f"{size:,} bytes; at most {MAX_BYTES:,} are read")
    with open(path, "rb") as handle:
        data = handle.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise UnsafeYAML(f"more than {MAX_BYTES:,} bytes; at most {MAX_BYTES:,} are read")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UnsafeYAML(f"not UTF-8 text (byte {error.start})") from None
