"""Datasets for tuning: local copies of Video-MME, MLVU dev, LongVideoBench val, and the offline synthetic set.

    from autotune.data import load_dataset, build_prompt, extract_answer, split_by_video
    report = load_dataset("videomme", "/data/Video-MME", limit=200)
    print(report.summary())          # videomme: 200 questions from 67 videos; skipped 1 (1 missing video)
    tune, test = split_by_video(report.questions, test_fraction=0.5, seed=0)

Each adapter module has `load(root, limit=None) -> LoadReport`. Adapters are imported when first used (none of
this package imports torch or transformers), so a dataset whose module is missing or broken fails only when named.
"""

from __future__ import annotations

import importlib
import os

from autotune.data.protocol import (
    PROTOCOL_VERSION,
    LoadReport,
    Question,
    SkipRow,
    accuracy_by,
    build_prompt,
    extract_answer,
    letters,
    micro_macro,
    split_by_video,
)

# name -> module with `load(root, limit=None) -> LoadReport`, imported at call time.
DATASETS: dict[str, str] = {
    "videomme": "autotune.data.videomme",
    "mlvu": "autotune.data.mlvu",
    "longvideobench": "autotune.data.longvideobench",
    "synthetic": "autotune.data.synthetic",
}


def load_dataset(name: str, root: str | os.PathLike[str], limit: int | None = None) -> LoadReport:
    """Questions of dataset `name` read from the local copy at `root`; at most `limit` of them.

    Unknown name: ValueError listing the known ones. Missing root: FileNotFoundError naming it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    module = importlib.import_module(DATASETS[name])
    return module.load(root, limit=limit)


__all__ = [
    "DATASETS",
    "PROTOCOL_VERSION",
    "LoadReport",
    "Question",
    "SkipRow",
    "accuracy_by",
    "build_prompt",
    "extract_answer",
    "letters",
    "load_dataset",
    "micro_macro",
    "split_by_video",
]
