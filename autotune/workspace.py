"""What a study runs on: the spec's questions split by video, the model engine, the storage and the MLflow
tracker, opened once per process (`Workspace`), and the retention each budget gets."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import random
from collections.abc import Sequence
from typing import Any

import optuna

import adatp
from adatp.flops import min_flops_ratio
from adatp.validation import RefusalError
from autotune.data import Question, TableError, TableReport, read_table, split_by_video
from autotune.data.scoring import default_open_metric, score_answer
from autotune.spec import StudySpec, mask_url
from autotune.storage import connect_once, ensure_sqlite_parent, keep_connecting, storage_for

INTERRUPTED = "interrupted"


# The study user attribute that holds what the study was created with.
ATTR = "autotune"


class StudyError(RefusalError):
    """Bad input found once the model or data is open (e.g. a budget below what the model can reach)."""


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


# -- questions -----------------------------------------------------------------------------------------------------
def read_spec_table(spec: StudySpec) -> TableReport:
    """The spec's table as read (`autotune.data.table`), generating the synthetic set first when the spec gives its
    parameters and it is not there yet. TableError for a table that cannot be read as mapped."""
    data = spec.dataset
    if data.synthetic:
        from autotune.data import synthetic

        folder = data.root if data.preset == "synthetic" else os.path.dirname(data.root)
        synthetic.generate(folder, data.synthetic["n_videos"], seed=data.synthetic["seed"],
                           questions_per_video=data.synthetic.get("questions_per_video", 2))
    return read_table(data.table(), cache_dir=os.path.join(spec.cache_dir, "datasets"),
                      videos_dir=os.path.join(spec.cache_dir, "videos"))


def missing_videos_line(report: TableReport) -> str:
    """One line for a table with missing videos: how many, the first, and what to do."""
    missing = report.missing_videos
    first = next(iter(missing.items()))
    return (f"dataset: {len(missing)} of {len(report.questions)} questions have no video file (first: {first[0]} -> "
            f"{first[1]}); `autotune data SPEC` lists them all; set dataset.missing_video: skip to tune without them")


def load_questions(spec: StudySpec) -> tuple[TableReport, list[Question], list[Question]]:
    """The spec's questions split by video into (tune, test); tune is shuffled once (seeded) to make the rungs.

    StudyError when no question is left, a video is missing (unless `missing_video: skip`) or a split is empty.
    """
    data = spec.dataset
    try:
        report = read_spec_table(spec)
    except TableError as error:
        raise StudyError(str(error)) from None
    if not report.questions:
        raise StudyError(f"dataset.path: no questions loaded from {data.root} ({report.summary()})")
    if report.missing_videos:
        raise StudyError(missing_videos_line(report))
    tune, test = split_by_video(report.questions, test_fraction=data.test_fraction, seed=data.split_seed)
    if not tune or not test:
        raise StudyError(f"dataset: the split left {len(tune)} tune and {len(test)} test questions; "
                         "both need at least one video (more questions or another test_fraction)")
    tune = list(tune)
    random.Random(data.split_seed).shuffle(tune)
    return report, tune, list(test)


def resolve_answers(spec: StudySpec, report: TableReport) -> tuple[StudySpec, list[str]]:
    """The spec with `auto` objective, mode and metric decided from the table, and a line for each thing decided
    that the user may not expect. StudyError for a mode the table cannot be read in."""
    notes = []
    objective, mode, metric = spec.objective, spec.mode, spec.metric
    if not report.labelled:
        if objective == "accuracy":
            notes.append("objective: the table has no answer column, so the study tunes for fidelity (agreement "
                         "with the unpruned model) instead of accuracy")
        elif objective == "auto":
            notes.append("objective: no answer column; tuning for fidelity to the unpruned model")
        objective = "fidelity"
    elif objective == "auto":
        objective = "accuracy"
    if report.open_ended:
        if metric == "letter":
            raise StudyError("metric: letter scores multiple-choice answers; this table is open-ended (use "
                             "exact_match, token_f1, relative_accuracy or auto)")
        if mode == "logits":
            raise StudyError("mode: logits reads option letters, but the table has no options (open-ended); use "
                             "mode: generate (or auto)")
        mode = "generate"
        if metric == "auto":
            metric = default_open_metric([q.answer for q in report.questions])
    else:
        if metric not in ("auto", "letter"):
            raise StudyError(f"metric: {metric} scores open-ended answers; this table is multiple-choice (its answers "
                             "are scored by letter: metric letter or auto)")
        mode = "logits" if mode == "auto" else mode
        metric = "letter"
    return dataclasses.replace(spec, objective=objective, mode=mode, metric=metric), notes


def spec_storage(spec: StudySpec) -> optuna.storages.BaseStorage:
    return storage_for(spec.storage, spec.heartbeat.interval, spec.heartbeat.grace, spec.heartbeat.outage)


# -- the workspace: spec, questions, and (lazily) the engine and the tracker ---------------------------------------
@dataclasses.dataclass
class Workspace:
    """What one worker process needs: loaded once, shared by all studies of the spec."""

    spec: StudySpec
    report: TableReport
    tune: list[Question]
    test: list[Question]
    _engine: Any = None
    _tracker: Any = None
    seeds: dict[str, int] = dataclasses.field(default_factory=dict)
    # Seconds to keep trying the stores at start-up: 0 (fail fast) but for workers (`heartbeat.outage`).
    connect_wait_s: float = 0.0

    notes: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def open(cls, spec: StudySpec) -> Workspace:
        """The spec's questions, with `auto` objective, mode and metric decided from the table (`resolve_answers`:
        `notes` says what was decided)."""
        report, tune, test = load_questions(spec)
        spec, notes = resolve_answers(spec, report)
        return cls(spec, report, tune, test, notes=notes)

    @property
    def engine(self):
        if self._engine is None:
            from autotune.engine import Engine

            model = self.spec.model
            self._engine = Engine(model.path, device=model.device, dtype=model.dtype,
                                  attn_implementation=model.attn_implementation, frames=self.spec.dataset.frames,
                                  cache_dir=self.spec.cache_dir, trust_remote_code=model.trust_remote_code,
                                  cuda_graphs=model.cuda_graphs, frame_size=model.frame_size,
                                  prefix_cache=model.prefix_cache, mode=self.spec.mode,
                                  extraction=self.spec.protocol, metric=self.spec.metric,
                                  max_new_tokens=self.spec.max_new_tokens)
        return self._engine

    @property
    def tracker(self):
        if self._tracker is None:
            self._tracker = open_tracker(self.spec, self.connect_wait_s)
        return self._tracker

    @functools.cached_property
    def dataset_key(self) -> str:
        """Names the cached unpruned answers: the table and what its questions say (a changed column mapping, prompt
        or video under the same ids gets answers of its own)."""
        data = self.spec.dataset
        content = hashlib.sha256("\n".join(f"{q.qid}|{q.video_path}|{q.question}|{q.options}|{q.style}"
                                           for q in self.tune + self.test).encode()).hexdigest()[:16]
        return f"{data.name}|{data.root}|{content}"

    def vanilla(self, questions: Sequence[Question]) -> dict[str, str | None]:
        """The unpruned model's letters or open-ended answers (cached on disk per model, dataset and protocol)."""
        return self.engine.vanilla_predictions(questions, self.dataset_key, batch_size=self.spec.batch_size)

    def scores(self, questions: Sequence[Question], result, vanilla: dict[str, str | None] | None) -> list[float]:
        """Per answered question (in `questions` order), its objective score in [0, 1]: against the gold answer, or
        with `vanilla` (fidelity) against the unpruned model's answer under the spec's metric."""
        answered = [q for q in questions if q.qid in result.predictions]
        if vanilla is None:
            return [result.scores[q.qid] for q in answered]
        return [score_answer(q, result.predictions[q.qid], vanilla.get(q.qid), self.spec.metric) for q in answered]

    def n_text(self, questions: Sequence[Question]) -> list[int]:
        engine = self.engine
        return [len(engine.prompt_ids(q)) - engine.n_visual for q in questions]


def open_tracker(spec: StudySpec, wait_s: float = 0.0):
    from autotune.tracking import Tracker, build_sqlite_store

    ensure_sqlite_parent(spec.tracking_uri)
    check_tracking_reachable(spec.tracking_uri, wait_s=wait_s)
    if spec.tracking_uri.startswith("sqlite:///"):
        build_sqlite_store(spec.tracking_uri)
    # An MLflow server stores artifacts where it was told to (--artifacts-destination); a local store, here.
    location = None if spec.tracking_uri.startswith(("http://", "https://")) else spec.artifact_location
    return Tracker(spec.tracking_uri, spec.name, location)


def check_tracking_reachable(uri: str, attempts: int = 3, timeout_s: float = 5.0, backoff_s: float = 1.0,
                             wait_s: float = 0.0) -> None:
    """Fail fast, in one line, when the MLflow tracking store cannot be reached (MLflow itself retries for minutes):
    an MLflow server must answer /health, a database must accept a connection; `attempts` tries, backoff doubling
    (about 20 s in all at the defaults), and for `wait_s` seconds (workers). Local stores (file paths, sqlite) are
    not checked."""
    if uri.startswith(("http://", "https://")):
        import urllib.request

        def probe() -> None:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
                pass
    elif "://" in uri and not uri.startswith(("sqlite:", "file:")):
        def probe() -> None:
            connect_once(uri, timeout_s)
    else:
        return
    # Any failure to reach it is reported in one line.
    keep_connecting(probe, f"tracking_uri: cannot reach {mask_url(uri)}", StudyError, (Exception,), attempts,
                    backoff_s, wait_s)


def budget_retention(workspace: Workspace, budget: float, where: str) -> tuple[float, float]:
    """(retention, planned FLOPs ratio) that spends at most `budget` on every tune and test question."""
    engine = workspace.engine
    text_config = engine.model.config.text_config
    n_text = max(workspace.n_text(workspace.tune + workspace.test))
    prune_layer = workspace.spec.base.prune_layer
    try:
        retention = adatp.retention_for_budget(text_config, engine.n_visual, n_text, budget, prune_layer)
    except ValueError:
        floor = min_flops_ratio(text_config, engine.n_visual, n_text, prune_layer)
        raise StudyError(f"{where}: {budget:g} is below {floor:.3f}, the lowest FLOPs ratio this model reaches "
                         f"at prune_layer {prune_layer} with {n_text} text tokens") from None
    return retention, adatp.flops_ratio(text_config, engine.n_visual, n_text, retention, prune_layer)


# -- names and defaults of the studies ------------------------------------------------------------------------------
def study_names(spec: StudySpec) -> dict[float, str]:
    return {budget: spec.study_name(budget) for budget in spec.budgets}


def question_digest(questions) -> str:
    """A short fingerprint of a split: which questions, in which order."""
    return hashlib.sha256("\n".join(q.qid for q in questions).encode()).hexdigest()[:16]


def default_params(spec: StudySpec) -> dict[str, float]:
    """The searched thresholds at the spec's base values: the default config, enqueued first in every study."""
    return {name: getattr(spec.base, name) for name in spec.space}
