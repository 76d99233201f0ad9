"""The benchmarks as presets of the one table adapter (`autotune.data.table`): where each layout's files are, which
column is what, how its options and answers are stored, and whose prompt wording applies. Data, not code.

A benchmark may have several layouts (local copies laid out differently); the first whose `files` match under the
dataset path is read. `path` is the local copy's directory, or (with `source: hub`) the hub id, read from the local
Hugging Face cache:
  videomme         lmms-lab/Video-MME (and its new name lmms-eval/Video-MME): videomme/test-*.parquet (else any
                   *.parquet), videos data/<videoID>.mp4 (.MP4 and .mkv also tried, as lmms-eval does).
  mlvu             sy1998/MLVU_dev (the copy lmms-eval reads): data/test-*.parquet, the question embedding its
                   "(A) text" lines, videos next to it; else the MLVU repo's json/<n>_<task>.json (answer = option
                   text; open-ended task files skipped and counted), videos video/<file stem>/<video>.
  longvideobench   longvideobench/LongVideoBench: lvb_val.json (found below the path too), videos/ beside it;
                   candidates or option0..option4, "N/A" dropped, correct_choice an index into them as stored.
  synthetic        our generated set (`autotune.data.synthetic`): questions.jsonl + videos/.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path
from typing import Any

from adatp.validation import brief
from autotune.data.table import TableError, TableReport, TableSpec, read_table

_OPTION_COLUMNS = ["candidates", "option0", "option1", "option2", "option3", "option4"]

LAYOUTS: dict[str, list[dict[str, Any]]] = {
    "videomme": [{
        "source": "parquet", "files": ("videomme/test-*.parquet", "**/*.parquet"), "style": "videomme",
        "columns": {"id": "question_id", "video": "videoID", "video_id": "videoID", "question": "question",
                    "options": "options", "answer": "answer"},
        "answer_format": "letter", "option_prefix": "strip", "not_options": (), "raw_prompt": True,
        "video_dirs": ("data",), "video_extensions": (".mp4", ".MP4", ".mkv"),
        "meta": ("duration", "domain", "sub_category", "task_type", "video_id", "url"),
    }],
    "mlvu": [{
        "source": "parquet", "files": ("data/test-*.parquet", "test-*.parquet"), "style": "mlvu",
        "columns": {"id": "question_id", "video": "video_name", "question": "question", "options": "candidates",
                    "answer": "answer"},
        "answer_format": "auto", "option_prefix": "keep", "raw_prompt": True, "question_split": r"\n\s*\(A\)",
        "interleave": "task_type", "required": ("task_type",), "id_template": "{task_type}/{_group_index}",
        "video_dirs": (".", "video", "videos"), "meta": ("duration", "task_type"),
    }, {
        "source": "json", "files": ("json/*.json", "MLVU/json/*.json"), "style": "mlvu",
        "columns": {"video": "video", "question": "question", "options": "candidates", "answer": "answer"},
        "answer_format": "text", "option_prefix": "keep", "interleave": "_file",
        "id_template": "{_file}/{_index}", "video_id_template": "{_file}/{video}",
        "video_dirs": ("{_file_dir}/../video/{_file}", "{_file_dir}/../video"),
        "meta": ("duration", "question_type"),
        "derive": {"task_type": ("_file", r"^\d+_", ""), "source_file": ("_file", "$", ".json")},
    }],
    "longvideobench": [{
        "source": "json", "files": ("lvb_val.json", "**/lvb_val.json"), "style": "longvideobench",
        "columns": {"id": "id", "video": "video_path", "video_id": "video_id", "question": "question",
                    "options": _OPTION_COLUMNS, "answer": "correct_choice"},
        "answer_format": "index", "option_prefix": "keep", "not_options": ("N/A",), "raw_prompt": True,
        "video_dirs": ("{_file_dir}/videos",),
        "meta": ("duration_group", "question_category", "topic_category", "level", "duration"),
    }],
    "synthetic": [{
        "source": "json", "files": ("questions.jsonl",),
        "columns": {"id": "qid", "video": "video", "video_id": "video_id", "question": "question",
                    "options": "options", "answer": "answer"},
        "answer_format": "letter", "option_prefix": "keep", "meta": ("meta",),
    }],
}
BENCHMARKS = tuple(LAYOUTS)
# The hub ids each benchmark is published under (a `source: hub` path that names one picks the benchmark's layout).
HUB_IDS = {"lmms-lab/Video-MME": "videomme", "lmms-eval/Video-MME": "videomme", "sy1998/MLVU_dev": "mlvu",
           "MLVU/MVLU": "mlvu", "longvideobench/LongVideoBench": "longvideobench"}


def _matches(base: Path, layout: dict[str, Any]) -> bool:
    return any(path.is_file() for pattern in layout["files"] for path in base.glob(pattern))


def preset_table(name: str, path: str, source: str | None = None, dataset_name: str | None = None,
                 **overrides: Any) -> TableSpec:
    """The TableSpec of benchmark `name` for the copy at `path` (a directory, or a hub id with source="hub"): its
    first layout whose files are there; `overrides` (split, limit, where, video_root, ...) win over the preset's.
    `dataset_name` names the questions' dataset (default: the benchmark's name); the prompt style stays the
    benchmark's."""
    if name not in LAYOUTS:
        raise TableError(f"dataset.preset: unknown benchmark {brief(name)} (known: {', '.join(BENCHMARKS)})")
    layouts = LAYOUTS[name]
    base = Path(path)
    if source == "hub":
        from autotune.data.table import table_base

        base = table_base(TableSpec(name=name, source="hub", path=path))
    elif not base.is_dir():
        raise TableError(f"dataset.path: {path} is not a directory (a {name} copy is a folder)")
    layout = next((layout for layout in layouts if _matches(base, layout)), None)
    if layout is None:
        wanted = " or ".join(pattern for layout in layouts for pattern in layout["files"])
        raise TableError(f"dataset.path: no {name} annotations under {base} (expected {wanted})")
    fields = {**layout, **{k: v for k, v in overrides.items() if v is not None}, "name": dataset_name or name}
    return TableSpec(path=str(base), **{key: value for key, value in fields.items()
                                        if key in {f.name for f in dataclasses.fields(TableSpec)}})


def load_dataset(name: str, root: str | os.PathLike[str], limit: int | None = None) -> TableReport:
    """Questions of benchmark `name` read from the local copy at `root`; at most `limit` of them. Missing videos are
    skipped and counted (as the benchmark readers always did; a study decides with `missing_video`).

    Unknown name: ValueError listing the known ones. Missing root: FileNotFoundError naming it.
    """
    if name not in LAYOUTS:
        raise ValueError(f"unknown dataset {brief(name)}; known: {', '.join(sorted(LAYOUTS))}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {brief(limit)}")
    if not Path(root).expanduser().is_dir():
        raise FileNotFoundError(f"dataset root for {name} not found: {Path(root).expanduser()}")
    table = preset_table(name, str(Path(root).expanduser().resolve()), missing_video="skip")
    if limit == 0:
        return TableReport([], collections.Counter(), name)
    return read_table(dataclasses.replace(table, limit=limit))


# The 7 multiple-choice task types of MLVU dev, named as lmms-eval 0.7.3 names them (`mlvu_aggregate_results_dev`);
# the MLVU repo's task files carry the same names after their number (2_needle.json -> needle).
MLVU_TASK_TYPES = ("anomaly_reco", "count", "ego", "needle", "order", "plotQA", "topic_reasoning")


def mlvu_dev_score(questions, correct) -> dict[str, Any]:
    """MLVU dev as lmms-eval 0.7.3 reports it (`mlvu_aggregate_results_dev`): `macro` is the mean over the 7 task types
    of each type's accuracy, divided by 7 even when a type has no question (lmms-eval counts it as 0). Also `micro`
    (over all questions), `per_type` and `missing` (the types without a question, which pull `macro` down). In
    [0, 1]; lmms-eval prints percentages."""
    from autotune.data.protocol import accuracy_by

    if len(questions) != len(correct) or not questions:
        raise ValueError(f"need as many correctness flags as questions (> 0), got {len(questions)} and {len(correct)}")
    per_type = accuracy_by(questions, correct, "task_type")
    missing = [name for name in MLVU_TASK_TYPES if name not in per_type]
    return {"micro": sum(float(ok) for ok in correct) / len(correct),
            "macro": sum(per_type.get(name, 0.0) for name in MLVU_TASK_TYPES) / len(MLVU_TASK_TYPES),
            "per_type": per_type, "missing": missing}
