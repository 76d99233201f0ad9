"""Datasets for tuning: any video-QA table read through HuggingFace `datasets` (`autotune.data.table`), with the
benchmarks (Video-MME, MLVU dev, LongVideoBench val) and our offline synthetic set as presets of it.

    from autotune.data import load_dataset, build_prompt, split_by_video
    report = load_dataset("videomme", "/data/Video-MME", limit=200)
    print(report.summary())          # videomme: 200 questions from 67 videos; skipped 1 (1 missing video)
    tune, test = split_by_video(report.questions, test_fraction=0.5, seed=0)

    from autotune.data.table import TableSpec, read_table     # your own table: see that module
    report = read_table(TableSpec(name="my_qa", source="json", path="/data/my_qa.jsonl"))

None of this package imports torch or transformers; `datasets` is imported when a table is read.
"""

from __future__ import annotations

from autotune.data.benchmarks import BENCHMARKS, load_dataset, mlvu_dev_score
from autotune.data.protocol import (
    PROTOCOL_VERSION,
    Question,
    SkipRow,
    accuracy_by,
    build_prompt,
    extract_answer,
    letters,
    micro_macro,
    split_by_video,
)
from autotune.data.table import TableError, TableReport, TableSpec, read_table

DATASETS = BENCHMARKS  # the benchmark names `load_dataset` knows

__all__ = [
    "BENCHMARKS",
    "DATASETS",
    "PROTOCOL_VERSION",
    "Question",
    "SkipRow",
    "TableError",
    "TableReport",
    "TableSpec",
    "accuracy_by",
    "build_prompt",
    "extract_answer",
    "letters",
    "load_dataset",
    "micro_macro",
    "mlvu_dev_score",
    "read_table",
    "split_by_video",
]
