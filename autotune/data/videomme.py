"""Video-MME from a local copy of the HF dataset repo lmms-lab/Video-MME.

Layout (as published):
    ROOT/videomme/test-00000-of-00001.parquet   columns video_id, duration (short|medium|long), domain,
                                                sub_category, url, videoID, question_id, task_type, question,
                                                options (list of "A. text"), answer ("A".."D")
    ROOT/data/<videoID>.mp4                     the videos (the repo ships them as videos_chunked_*.zip; unzip
                                                them here). Like lmms-eval we also accept .MP4 and .mkv.
If ROOT/videomme/test-*.parquet is absent, every *.parquet under ROOT is read instead.
"""

from __future__ import annotations

import collections
import os
import re
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
    parquet_rows,
    required,
)

DATASET = "videomme"
VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv")
META_FIELDS = ("duration", "domain", "sub_category", "task_type", "video_id", "url")
_LETTER_PREFIX = re.compile(r"\s*\(?([A-Za-z])[.):]\s*(.*)", re.DOTALL)


def _annotation_files(base: Path) -> list[Path]:
    files = sorted((base / "videomme").glob("test-*.parquet")) or sorted(base.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Video-MME parquet (videomme/test-*.parquet) under {base}")
    return files


def strip_letter(option: str, letter: str) -> str:
    """The option text without its own letter prefix ("B. a red car" -> "a red car"); other text unchanged."""
    match = _LETTER_PREFIX.fullmatch(option)
    if match and match.group(1).upper() == letter:
        return match.group(2).strip()
    return option.strip()


def _find_video(video_dir: Path, video_id: str) -> Path | None:
    for suffix in VIDEO_SUFFIXES:
        path = video_dir / f"{video_id}{suffix}"
        if path.is_file():
            return path
    return None


def _parse(base: Path, row: dict[str, Any]) -> Question:
    video_id = required(row, "videoID")
    qid = str(required(row, "question_id", (str, int)))
    question = required(row, "question")
    raw_options = required(row, "options", (list, tuple))
    if not all(isinstance(option, str) for option in raw_options):
        raise SkipRow("malformed row: options has wrong type")
    if not 2 <= len(raw_options) <= MAX_OPTIONS:
        raise SkipRow("malformed row: wrong number of options")
    names = letters(len(raw_options))
    options = tuple(strip_letter(option, letter) for option, letter in zip(raw_options, names, strict=True))
    answer = required(row, "answer").strip().upper()
    if answer not in names:
        raise SkipRow("malformed row: answer not among options")
    video = _find_video(base / "data", video_id)
    if video is None:
        raise SkipRow("missing video")
    meta = {name: row[name] for name in META_FIELDS if row.get(name) is not None}
    # lmms-eval renders the dataset's own strings ("A.Hammer", a trailing newline): the prompt uses these.
    meta["raw_question"], meta["raw_options"] = question, list(raw_options)
    return Question(qid, DATASET, video_id, str(video), question.strip(), options, answer, meta)


def load(root: str | os.PathLike[str], limit: int | None = None) -> LoadReport:
    """Video-MME questions under `root` (see the module docstring for the layout), in file order; at most
    `limit` of them. Malformed rows and missing videos are skipped and counted, never raised."""
    base = dataset_root(DATASET, root)
    files = _annotation_files(base)
    skipped: collections.Counter = collections.Counter()
    return collect(DATASET, parquet_rows(files, skipped), lambda row: _parse(base, row), limit, skipped)
