"""MLVU dev (multiple-choice tasks), from either local copy:

1. The MLVU repo's own files (HF dataset repo MLVU/MVLU, sic; ROOT may be its MLVU/ folder or the repo root):
    ROOT/json/1_plotQA.json, 2_needle.json, 3_ego.json, 4_count.json, 5_order.json, 6_anomaly_reco.json,
        7_topic_reasoning.json     each a list of {video, duration, question, candidates, answer, question_type};
                                   `answer` is the answer TEXT, one of `candidates`
    ROOT/json/8_sub_scene.json, 9_summary.json   open-ended (no `candidates`): skipped, counted
    ROOT/video/<json file stem>/<video>          e.g. video/1_plotQA/movie101_66.mp4 (also tried: video/<video>)
   The answer letter is the index of `answer` in `candidates`. Questions have no id in the json, so qid is
   "<json stem>/<row index>", and video_id "<json stem>/<video>" (each task folder holds its own clips). The prompt
   is rendered from `candidates` as "(A) text" lines (protocol.build_prompt).

2. sy1998/MLVU_dev, the copy lmms-eval reads (`mlvu_dev`):
    ROOT/data/test-*.parquet (or ROOT/test-*.parquet)   columns video_name, duration, question (the question with
                                   its "(A) text" lines already in it), candidates, answer (the letter), task_type
                                   (lmms-eval's names), question_id
    ROOT/<video_name>                                   (also tried: ROOT/video/<video_name>, ROOT/videos/...)
   The prompt is the `question` string exactly as stored plus lmms-eval's post-prompt, so it is lmms-eval's text
   character for character; qid is `question_id` (else "<task_type>/<row index>").

When both are present the parquet (lmms-eval's copy) is read.
"""

from __future__ import annotations

import collections
import json
import os
import re
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
    parquet_rows,
    required,
)

DATASET = "mlvu"
META_FIELDS = ("duration",)
# The 7 multiple-choice task types of MLVU dev, named as lmms-eval 0.7.3 names them (`mlvu_aggregate_results_dev`);
# our task files carry the same names after their number (2_needle.json -> needle).
TASK_TYPES = ("anomaly_reco", "count", "ego", "needle", "order", "plotQA", "topic_reasoning")


def _parquet_files(base: Path) -> list[Path]:
    return sorted((base / "data").glob("test-*.parquet")) or sorted(base.glob("test-*.parquet"))


def _json_dir(base: Path) -> Path:
    for candidate in (base / "json", base / "MLVU" / "json"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no MLVU annotations under {base}: expected json/1_plotQA.json, ... (the MLVU repo) "
                            f"or data/test-*.parquet (sy1998/MLVU_dev, as lmms-eval reads it)")


def _task_order(path: Path) -> tuple[int, str]:
    """1_plotQA before 2_needle before 10_x: by the number in front, then by name."""
    match = re.match(r"(\d+)_", path.name)
    return (int(match.group(1)) if match else 1 << 30, path.name)


def _interleaved(groups: list[tuple[str, list[Any]]]) -> Iterator[tuple[str, int, Any]]:
    """(group, index, row) for every row, the first row of each group, then the second, ...: a `limit` keeps every
    task type instead of the first group's."""
    for index in range(max((len(rows) for _, rows in groups), default=0)):
        for name, rows in groups:
            if index < len(rows):
                yield name, index, rows[index]


def _json_rows(json_dir: Path, skipped: collections.Counter) -> Iterator[tuple[str, int, Any]]:
    files = []
    for path in sorted(json_dir.glob("*.json"), key=_task_order):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            rows = None
        if not isinstance(rows, list):
            skipped[f"unreadable file: {path.name}"] += 1
            continue
        files.append((path.stem, rows))
    return _interleaved(files)


def _parquet_task_rows(files: list[Path], skipped: collections.Counter) -> Iterator[tuple[str, int, Any]]:
    """Rows grouped by `task_type` in order of first appearance (rows without one go last), then interleaved."""
    groups: dict[str, list[Any]] = {}
    for row in parquet_rows(files, skipped):
        task = row.get("task_type") if isinstance(row, dict) else None
        groups.setdefault(task if isinstance(task, str) and task else "", []).append(row)
    return _interleaved(sorted(groups.items(), key=lambda item: item[0] == ""))


def _answer_index(candidates: list[str], answer: str) -> int:
    for same in (lambda c: c == answer, lambda c: c.strip() == answer.strip()):
        for index, candidate in enumerate(candidates):
            if same(candidate):
                return index
    raise SkipRow("malformed row: answer not among options")


def _find_video(data_root: Path, task: str, video: str) -> Path | None:
    for path in (data_root / "video" / task / video, data_root / "video" / video):
        if path.is_file():
            return path
    return None


def _checked_candidates(row: Any) -> list[str]:
    candidates = required(row, "candidates", list)
    if not all(isinstance(candidate, str) for candidate in candidates):
        raise SkipRow("malformed row: candidates has wrong type")
    if not 2 <= len(candidates) <= MAX_OPTIONS:
        raise SkipRow("malformed row: wrong number of options")
    return candidates


def _parse_json(data_root: Path, item: tuple[str, int, Any]) -> Question:
    task, index, row = item
    if isinstance(row, dict) and row.get("candidates") is None:
        raise SkipRow("open-ended question (no candidates)")
    video = required(row, "video")
    question = required(row, "question")
    candidates = _checked_candidates(row)
    answer = letters(len(candidates))[_answer_index(candidates, required(row, "answer"))]
    path = _find_video(data_root, task, video)
    if path is None:
        raise SkipRow("missing video")
    meta = {name: row[name] for name in META_FIELDS if row.get(name) is not None}
    meta["task_type"] = re.sub(r"^\d+_", "", task)  # lmms-eval's name: needle, not the file's findNeedle
    if isinstance(row.get("question_type"), str):
        meta["question_type"] = row["question_type"]
    meta["source_file"] = f"{task}.json"
    options = tuple(candidate.strip() for candidate in candidates)
    return Question(f"{task}/{index}", DATASET, f"{task}/{video}", str(path), question.strip(), options, answer, meta)


# Where the embedded options start in MLVU_dev's `question`: the first line that begins "(A)".
_FIRST_OPTION = re.compile(r"\n\s*\(A\)")


def _parse_parquet(base: Path, item: tuple[str, int, Any]) -> Question:
    task, index, row = item
    video = required(row, "video_name")
    question = required(row, "question")
    candidates = _checked_candidates(row)
    names = letters(len(candidates))
    answer = str(required(row, "answer")).strip()
    if answer not in names:  # a copy that stores the answer text instead of its letter
        answer = names[_answer_index(candidates, answer)]
    if not task:
        raise SkipRow("malformed row: no task_type")
    path = next((path for path in (base / video, base / "video" / video, base / "videos" / video)
                 if path.is_file()), None)
    if path is None:
        raise SkipRow("missing video")
    qid = row.get("question_id")
    meta = {name: row[name] for name in META_FIELDS if row.get(name) is not None}
    # lmms-eval renders the stored question (options included) as is; the stem is kept for reading answers.
    meta.update(task_type=task, raw_question=question, raw_options=list(candidates))
    stem = _FIRST_OPTION.split(question, maxsplit=1)[0].strip()
    return Question(str(qid) if isinstance(qid, (str, int)) and str(qid).strip() else f"{task}/{index}", DATASET,
                    video, str(path), stem, tuple(candidate.strip() for candidate in candidates), answer, meta)


def load(root: str | os.PathLike[str], limit: int | None = None) -> LoadReport:
    """MLVU dev multiple-choice questions under `root` (see the module docstring for the two layouts), the task
    types interleaved; at most `limit` of them. Malformed rows, open-ended questions and missing videos are skipped
    and counted, never raised."""
    base = dataset_root(DATASET, root)
    skipped: collections.Counter = collections.Counter()
    files = _parquet_files(base)
    if files:
        return collect(DATASET, _parquet_task_rows(files, skipped), lambda item: _parse_parquet(base, item), limit,
                       skipped)
    json_dir = _json_dir(base)
    return collect(DATASET, _json_rows(json_dir, skipped), lambda item: _parse_json(json_dir.parent, item), limit,
                   skipped)


def lmms_eval_dev_score(questions, correct) -> dict[str, Any]:
    """MLVU dev as lmms-eval 0.7.3 reports it (`mlvu_aggregate_results_dev`): `macro` is the mean over the 7 task types
    of each type's accuracy, divided by 7 even when a type has no question (lmms-eval counts it as 0). Also `micro`
    (over all questions), `per_type` and `missing` (the types without a question, which pull `macro` down). In
    [0, 1]; lmms-eval prints percentages."""
    from autotune.data.protocol import accuracy_by

    if len(questions) != len(correct) or not questions:
        raise ValueError(f"need as many correctness flags as questions (> 0), got {len(questions)} and {len(correct)}")
    per_type = accuracy_by(questions, correct, "task_type")
    missing = [name for name in TASK_TYPES if name not in per_type]
    return {"micro": sum(bool(ok) for ok in correct) / len(correct),
            "macro": sum(per_type.get(name, 0.0) for name in TASK_TYPES) / len(TASK_TYPES),
            "per_type": per_type, "missing": missing}
