"""LongVideoBench validation from a local copy of the HF dataset repo longvideobench/LongVideoBench.

Layout (as published):
    ROOT/lvb_val.json          a list of {id, video_id, video_path, question, candidates (list) or option0..option4,
                               correct_choice (int index into them), duration_group, question_category,
                               topic_category, level, duration, ...}
    ROOT/videos/<video_path>   the videos (the repo ships videos.tar.part.*; concatenate and untar here)
If ROOT has no lvb_val.json, the first one found below it is used, with the videos/ folder next to it.

Options equal to "N/A" (or null) are dropped, as lmms-eval's `longvideobench_doc_to_text` does, and the answer
letter counts only the options kept before `correct_choice`: option1 = "N/A" and correct_choice 3 give "C".
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autotune.data.protocol import (
    MAX_OPTIONS,
    LoadReport,
    Question,
    SkipRow,
    collect,
    dataset_root,
    letters,
    required,
)

DATASET = "longvideobench"
ANNOTATION_FILE = "lvb_val.json"
MAX_RAW_OPTIONS = 5  # option0..option4
NOT_AN_OPTION = "N/A"
META_FIELDS = ("duration_group", "question_category", "topic_category", "level", "duration")


def _annotation_file(base: Path) -> Path:
    path = base / ANNOTATION_FILE
    if path.is_file():
        return path
    found = sorted(base.rglob(ANNOTATION_FILE))
    if not found:
        raise FileNotFoundError(f"no LongVideoBench annotation file ({ANNOTATION_FILE}) under {base}")
    return found[0]


def _rows(path: Path, skipped: collections.Counter) -> Iterator[Any]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        rows = None
    if not isinstance(rows, list):
        skipped[f"unreadable file: {path.name}"] += 1
        return
    yield from rows


def _raw_options(row: dict[str, Any]) -> list[Any]:
    """The options as stored, N/A included: `candidates`, or option0..option4 up to the last one present."""
    if row.get("candidates") is not None:
        return required(row, "candidates", list)
    present = [i for i in range(MAX_RAW_OPTIONS) if f"option{i}" in row]
    if not present:
        raise SkipRow("malformed row: no options")
    return [row.get(f"option{i}") for i in range(present[-1] + 1)]


def _is_option(value: Any) -> bool:
    return value is not None and value != NOT_AN_OPTION


def _parse(video_dir: Path, row: dict[str, Any]) -> Question:
    qid = str(required(row, "id", (str, int)))
    video_path = required(row, "video_path")
    question = required(row, "question")
    raw = _raw_options(row)
    if not all(value is None or isinstance(value, str) for value in raw):
        raise SkipRow("malformed row: options has wrong type")
    correct = required(row, "correct_choice", int)
    if not 0 <= correct < len(raw):
        raise SkipRow("malformed row: answer not among options")
    if not _is_option(raw[correct]):
        raise SkipRow("malformed row: answer is N/A")
    options = tuple(value.strip() for value in raw if _is_option(value))
    if not 2 <= len(options) <= MAX_OPTIONS:
        raise SkipRow("malformed row: wrong number of options")
    answer = letters(len(options))[sum(_is_option(value) for value in raw[:correct])]
    video = video_dir / video_path
    if not video.is_file():
        raise SkipRow("missing video")
    video_id = row.get("video_id") if isinstance(row.get("video_id"), str) else Path(video_path).stem
    meta = {name: row[name] for name in META_FIELDS if row.get(name) is not None}
    # lmms-eval renders the dataset's own strings: "X. " + each option as stored (no strip), the question as stored.
    meta["raw_question"] = question
    meta["raw_options"] = [value for value in raw if _is_option(value)]
    return Question(qid, DATASET, video_id, str(video), question.strip(), options, answer, meta)


def load(root: str | os.PathLike[str], limit: int | None = None) -> LoadReport:
    """LongVideoBench validation questions under `root` (see the module docstring for the layout), in file
    order; at most `limit` of them. Malformed rows and missing videos are skipped and counted, never raised."""
    base = dataset_root(DATASET, root)
    path = _annotation_file(base)
    skipped: collections.Counter = collections.Counter()
    return collect(DATASET, _rows(path, skipped), lambda row: _parse(path.parent / "videos", row), limit, skipped)
