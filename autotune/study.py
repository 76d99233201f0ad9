"""Optuna studies: one per (spec, dataset, FLOPs budget), created before any worker runs a trial.

Each study maximises the objective (`accuracy`, or `fidelity` = agreement with the unpruned model) on the tune
split. The retention comes from the budget (`adatp.retention_for_budget`, at the longest prompt so every question
stays inside the budget); the achieved FLOPs ratio minus the budget is recorded with `trial.set_constraint`.
Questions are shuffled once into nested rungs (prefixes of 1/f^(R-1), ..., 1/f, 1 of the tune split); a trial
reports its objective after each rung, with the number of questions as the step, and the pruner stops losers.
The default thresholds (the spec's `base`) and any warm starts are enqueued once, when the study is created.

A trial interrupted with Ctrl-C is recorded as FAIL (reason `interrupted`), its thresholds are enqueued again, and
it does not count toward `n_trials`: running the same command again finishes the planned count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

import adatp
from adatp.flops import kept_count, min_flops_ratio
from autotune.data import LoadReport, Question, load_dataset, split_by_video
from autotune.data.protocol import protocol_version
from autotune.interrupt import STOP, cause_of
from autotune.spec import StudySpec, mask_url
from autotune.storage import STALE_REASON, StorageOutage, ensure_sqlite_parent, quiet_optuna, storage_for
from autotune.versions import package_versions

INTERRUPTED = "interrupted"
# The study user attribute that holds what the study was created with.
ATTR = "autotune"
# A worker stops after this many trials in a row fail for reasons other than Ctrl-C: something is broken.
MAX_CONSECUTIVE_FAILURES = 3


class StudyError(ValueError):
    """Bad input found once the model or data is open (e.g. a budget below what the model can reach)."""


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


# -- questions and rungs -------------------------------------------------------------------------------------------
def load_questions(spec: StudySpec) -> tuple[LoadReport, list[Question], list[Question]]:
    """The spec's questions split by video into (tune, test); tune is shuffled once (seeded) to make the rungs.

    A synthetic dataset with `synthetic:` parameters is generated first if its root does not hold it yet.
    """
    data = spec.dataset
    if data.name == "synthetic" and data.synthetic:
        from autotune.data import synthetic

        synthetic.generate(data.root, data.synthetic["n_videos"], seed=data.synthetic["seed"],
                           questions_per_video=data.synthetic.get("questions_per_video", 2))
    report = load_dataset(data.name, data.root, limit=data.limit)
    if not report.questions:
        raise StudyError(f"dataset.root: no questions loaded from {data.root} ({report.summary()})")
    tune, test = split_by_video(report.questions, test_fraction=data.test_fraction, seed=data.split_seed)
    if not tune or not test:
        raise StudyError(f"dataset: the split left {len(tune)} tune and {len(test)} test questions; "
                         "both need at least one video (more questions or another test_fraction)")
    tune = list(tune)
    random.Random(data.split_seed).shuffle(tune)
    return report, tune, list(test)


def rung_sizes(n_questions: int, rungs: int, factor: int) -> list[int]:
    """Cumulative question counts of the nested rungs: base * factor^k, capped at n, ending at n.

    Geometric so that successive halving's rung boundaries (min_resource * factor^k) fall on them exactly.
    """
    base = max(1, math.ceil(n_questions / factor ** (rungs - 1)))
    sizes = sorted({min(n_questions, base * factor**k) for k in range(rungs)} | {n_questions})
    return sizes


# -- samplers and pruners ------------------------------------------------------------------------------------------
def sampler_seed(spec: StudySpec, budget: float) -> int:
    """The sampler seed of one budget's study: the spec's seed plus the budget's index (studies differ)."""
    return spec.sampler.seed + spec.budgets.index(budget)


def make_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    """The spec's sampler. A worker's seed should differ from other workers' (see `run_studies`)."""
    sampler = spec.sampler
    if sampler.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sampler.n_startup_trials,
                                          constant_liar=True, multivariate=True)
    if sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sampler.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, spec.n_trials // 3)))
    if sampler.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=sampler.n_startup_trials)
    raise StudyError(f"sampler.name: unknown sampler {sampler.name!r}")


def make_pruner(spec: StudySpec, sizes: Sequence[int]) -> optuna.pruners.BasePruner:
    pruner = spec.pruner
    if pruner.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=sizes[0], reduction_factor=pruner.reduction_factor)
    if pruner.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=sizes[0], max_resource=sizes[-1],
                                              reduction_factor=pruner.reduction_factor)
    if pruner.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.n_startup_trials)
    if pruner.name == "none":
        return optuna.pruners.NopPruner()
    raise StudyError(f"pruner.name: unknown pruner {pruner.name!r}")


def spec_storage(spec: StudySpec) -> optuna.storages.BaseStorage:
    return storage_for(spec.storage, spec.heartbeat.interval, spec.heartbeat.grace, spec.heartbeat.outage)


# -- the workspace: spec, questions, and (lazily) the engine and the tracker ---------------------------------------
@dataclasses.dataclass
class Workspace:
    """What one worker process needs: loaded once, shared by all studies of the spec."""

    spec: StudySpec
    report: LoadReport
    tune: list[Question]
    test: list[Question]
    _engine: Any = None
    _tracker: Any = None
    seeds: dict[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def open(cls, spec: StudySpec) -> Workspace:
        report, tune, test = load_questions(spec)
        return cls(spec, report, tune, test)

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
                                  extraction=self.spec.protocol)
        return self._engine

    @property
    def tracker(self):
        if self._tracker is None:
            self._tracker = open_tracker(self.spec)
        return self._tracker

    @property
    def dataset_key(self) -> str:
        data = self.spec.dataset
        return f"{data.name}|{data.root}|{data.limit}"

    def vanilla(self, questions: Sequence[Question]) -> dict[str, str | None]:
        """The unpruned model's letters (cached on disk per model, dataset and protocol)."""
        return self.engine.vanilla_predictions(questions, self.dataset_key, batch_size=self.spec.batch_size)

    def n_text(self, questions: Sequence[Question]) -> list[int]:
        engine = self.engine
        return [len(engine._prompt(q)) - engine.n_visual for q in questions]


def open_tracker(spec: StudySpec):
    from autotune.tracking import Tracker, build_sqlite_store

    ensure_sqlite_parent(spec.tracking_uri)
    check_tracking_reachable(spec.tracking_uri)
    if spec.tracking_uri.startswith("sqlite:///"):
        build_sqlite_store(spec.tracking_uri)
    # An MLflow server stores artifacts where it was told to (--artifacts-destination); a local store, here.
    location = None if spec.tracking_uri.startswith(("http://", "https://")) else spec.artifact_location
    return Tracker(spec.tracking_uri, spec.name, location)


def check_tracking_reachable(uri: str, attempts: int = 3, timeout_s: float = 5.0, backoff_s: float = 1.0) -> None:
    """Fail fast, in one line, when the MLflow tracking store cannot be reached (MLflow itself retries for minutes):
    an MLflow server must answer /health, a database must accept a connection; `attempts` tries, backoff doubling
    (about 20 s in all at the defaults). Local stores (file paths, sqlite) are not checked."""
    if uri.startswith(("http://", "https://")):
        import urllib.request

        def probe() -> None:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
                pass
    elif "://" in uri and not uri.startswith(("sqlite:", "file:")):
        import sqlalchemy
        import sqlalchemy.pool

        def probe() -> None:
            connect_args = {"connect_timeout": int(timeout_s)} if uri.startswith("postgresql") else {}
            engine = sqlalchemy.create_engine(uri, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
            try:
                with engine.connect():
                    pass
            finally:
                engine.dispose()
    else:
        return
    wait = backoff_s
    for attempt in range(1, attempts + 1):
        try:
            probe()
            return
        except Exception as error:  # any failure to reach it: reported in one line below
            reason = getattr(error, "orig", None) or getattr(error, "reason", None) or error
            if attempt == attempts:
                text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(error).__name__
                raise StudyError(f"tracking_uri: cannot reach {mask_url(uri)} after {attempts} attempts: "
                                 f"{text}") from None
            time.sleep(wait)
            wait *= 2


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


# -- creating and loading studies ----------------------------------------------------------------------------------
def study_names(spec: StudySpec) -> dict[float, str]:
    return {budget: spec.study_name(budget) for budget in spec.budgets}


def _settings(workspace: Workspace, budget: float, retention: float, planned: float, sizes: list[int]) -> dict:
    spec = workspace.spec
    return {
        "spec": spec.name, "budget": budget, "retention": retention, "planned_flops_ratio": planned,
        "rungs": sizes, "objective": spec.objective, "dataset": spec.dataset.name, "model": spec.model.path,
        "tune_questions": question_digest(workspace.tune), "test_questions": question_digest(workspace.test),
        "frames": workspace.engine.frames, "space": {k: list(v) for k, v in spec.space.items()},
        "base": spec.base.to_dict(), "sampler": dataclasses.asdict(spec.sampler),
        "sampler_seed": sampler_seed(spec, budget),
        "pruner": dataclasses.asdict(spec.pruner), "protocol": protocol_version(spec.protocol), "mode": spec.mode,
        "versions": package_versions(),
        "video": workspace.engine.video_protocol,  # family, frames, and for Qwen the frame size and grid
    }


def question_digest(questions) -> str:
    """A short fingerprint of a split: which questions, in which order."""
    return hashlib.sha256("\n".join(q.qid for q in questions).encode()).hexdigest()[:16]


def trial_config(study: optuna.Study, trial: FrozenTrial) -> adatp.AdaTPConfig:
    """The exact config `trial` ran, from the storage, never from the current spec: stored with the trial, or for
    trials of older studies rebuilt from the study's own recorded base config, retention and the trial's params."""
    stored = trial.user_attrs.get("config")
    if stored is not None:
        return adatp.AdaTPConfig.from_dict(stored, where=f"trial {trial.number} config")
    known = study.user_attrs[ATTR]
    return adatp.AdaTPConfig.from_dict({**known["base"], "retention": known["retention"], **trial.params},
                                       where=f"study {study.study_name} base")


def check_same_meaning(workspace: Workspace, study: optuna.Study) -> None:
    """Refuse to export from a spec (file or overrides) that differs from what the study's trials ran on: the
    preset would credit a trial with a config, model input or split it never saw. StudyError names the field."""
    known, spec = study.user_attrs[ATTR], workspace.spec
    current = {"objective": spec.objective, "dataset": spec.dataset.name, "frames": workspace.engine.frames,
               "video": workspace.engine.video_protocol, "protocol": protocol_version(spec.protocol),
               "mode": spec.mode,
               "test_questions": question_digest(workspace.test)}
    differences = [(f"base.{key}", value, spec.base.to_dict().get(key))
                   for key, value in known["base"].items() if spec.base.to_dict().get(key) != value]
    differences += [(key, known[key], value) for key, value in current.items() if key in known and known[key] != value]
    if differences:
        field, ran, now = differences[0]
        advice = "export evaluates exactly what a trial ran, so drop the override (or edit the spec back)"
        if field == "test_questions":  # a digest: say what it means instead
            ran, now = "another test split", "this one (dataset.test_fraction, split_seed, limit or the data changed)"
        else:
            ran, now = repr(ran), repr(now)
        if field in ("protocol", "video"):  # set by this version of autotune, not by the spec
            advice = ("this autotune measures differently from the one that ran the trials: run the study again "
                      "in a new workdir (or under another spec name)")
        raise StudyError(f"{field}: the trials of {study.study_name} ran with {ran}, this spec says {now}; {advice}")


# Settings that must match when a study is resumed or joined: anything else would mix incomparable trials. The
# model's path may differ between machines; its shape shows in the retention, its questions in `tune_questions`.
_MUST_MATCH = ("retention", "rungs", "objective", "dataset", "tune_questions", "frames", "space", "base", "protocol",
               "mode")
_RECORDED_SINCE_V2 = ("mode",)  # older studies lack it (they all ran in logits mode): compared only when recorded


def create_studies(workspace: Workspace, create: bool = True) -> dict[float, optuna.Study]:
    """Create (or reopen) every budget's study, its parent MLflow run and its enqueued warm starts.

    Safe to interrupt anywhere and run again: each step checks what is there (a warm start already enqueued is not
    enqueued again; the parent run is found by tag and gets whatever params it lacks) and the study is marked
    created (its `autotune` attribute) only after every step. The database writes run with signals deferred
    (`autotune.interrupt`), so Ctrl-C or SIGTERM stops between them, never inside one.
    create=False (workers): the studies must exist already, made by `autotune study` before any worker starts.
    """
    spec = workspace.spec
    with STOP.deferred():
        storage = spec_storage(spec)
    STOP.check()
    if not create:
        existing = set(optuna.get_all_study_names(storage))
        for name in study_names(spec).values():
            if name not in existing:
                raise StudyError(f"study {name} does not exist yet: create it with "
                                 f"`autotune study {spec.source or spec.name}` before starting workers")
    studies = {}
    sizes = rung_sizes(len(workspace.tune), spec.pruner.rungs, spec.pruner.reduction_factor)
    if spec.objective == "fidelity":
        workspace.vanilla(workspace.tune)
    for index, budget in enumerate(spec.budgets):
        retention, planned = budget_retention(workspace, budget, where=f"budgets[{index}]")
        settings = _settings(workspace, budget, retention, planned, sizes)
        name = spec.study_name(budget)
        # Workers joining a study draw their own stream; the creating process uses the recorded seed.
        seed = sampler_seed(spec, budget) + (0 if create else 1000 * (os.getpid() % 100_000 + 1))
        workspace.seeds[name] = seed
        with STOP.deferred():
            study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                        load_if_exists=True, sampler=make_sampler(spec, seed),
                                        pruner=make_pruner(spec, sizes))
            known = study.user_attrs.get(ATTR)
            if known is None and not create:
                raise StudyError(f"study {name} is still being created; start workers after `autotune study` "
                                 "has begun")
            if known is None:
                _finish_creating(workspace, study, budget, retention, sizes, settings)
            else:
                changed = [key for key in _MUST_MATCH if known.get(key, settings[key] if key in _RECORDED_SINCE_V2
                                                                    else None) != settings[key]]
                if changed:
                    raise StudyError(f"study {name} exists with different {', '.join(changed)} "
                                     f"(in {mask_url(spec.storage)}); use another spec name or workdir")
        STOP.check()
        studies[budget] = study
    return studies


def _finish_creating(workspace: Workspace, study: optuna.Study, budget: float, retention: float, sizes: list[int],
                     settings: dict) -> None:
    """The steps of creating a study, each skipped when an interrupted earlier run already did it."""
    spec = workspace.spec
    enqueued = {(trial.user_attrs.get("warm_start"), trial.user_attrs.get("warm_start_index"))
                for trial in study.get_trials(deepcopy=False)}
    if ("default", None) not in enqueued:
        study.enqueue_trial(default_params(spec), user_attrs={"warm_start": "default"})
    for position, params in enumerate(spec.warm_start):
        if ("spec", position) not in enqueued:
            study.enqueue_trial(dict(params), user_attrs={"warm_start": "spec", "warm_start_index": position})
    run_id = workspace.tracker.study_run(
        study.study_name, params={"spec": spec.to_dict(), "retention": retention, "rungs": sizes,
                                  "video": settings["video"]},
        tags={"autotune.spec": spec.name, "autotune.budget": f"{budget:.2f}", "protocol": settings["protocol"],
              "mode": spec.mode, **{f"version.{k}": v for k, v in settings["versions"].items()}})
    study.set_user_attr("mlflow_run_id", run_id)
    study.set_metric_names([f"tune_{spec.objective}"])  # named in optuna-dashboard, not "Objective 0"
    study.set_user_attr(ATTR, settings)  # last: marks the study created


def open_studies(workspace: Workspace) -> dict[float, optuna.Study]:
    """The spec's existing studies, checked against the spec, for a worker to join."""
    return create_studies(workspace, create=False)


def default_params(spec: StudySpec) -> dict[str, float]:
    """The searched thresholds at the spec's base values: the default config, enqueued first in every study."""
    return {name: getattr(spec.base, name) for name in spec.space}


def load_studies(spec: StudySpec) -> dict[float, optuna.Study | None]:
    """Existing studies of the spec (None where not created yet); opens no model."""
    storage = spec_storage(spec)
    existing = set(optuna.get_all_study_names(storage))
    return {budget: optuna.load_study(study_name=name, storage=storage) if name in existing else None
            for budget, name in study_names(spec).items()}


# -- counting ------------------------------------------------------------------------------------------------------
def counts_toward_plan(trial: FrozenTrial) -> bool:
    """Only COMPLETE and PRUNED trials count toward n_trials: failed ones (Ctrl-C, a dead worker, an OOM) are
    replaced, so a finished study has n_trials trials that ran to their end or were stopped by the pruner."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def finished_count(study: optuna.Study) -> int:
    return sum(counts_toward_plan(trial) for trial in study.get_trials(deepcopy=False))


def is_feasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and all(value <= 0.0 for value in trial.constraints.values())


def best_feasible(study: optuna.Study) -> FrozenTrial | None:
    """The feasible COMPLETE trial with the highest objective (the earliest on ties); None if there is none."""
    feasible = [trial for trial in study.get_trials(deepcopy=False) if is_feasible(trial)]
    return max(feasible, key=lambda trial: (trial.value, -trial.number)) if feasible else None


# -- the objective -------------------------------------------------------------------------------------------------
def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclasses.dataclass
class RungOutcome:
    """A config's objective on the tune split so far: value over `answered` questions after `questions` asked."""

    rung: int
    questions: int
    value: float
    answered: int
    skipped: int
    flops_ratio: float
    seconds: float


def evaluate_rungs(workspace: Workspace, config: adatp.AdaTPConfig, sizes: Sequence[int],
                   on_rung: Callable[[RungOutcome], None]) -> RungOutcome:
    """Score `config` on the tune split rung by rung (nested prefixes `sizes`), calling `on_rung` after each.

    The objective is accuracy, or agreement with the unpruned model for `fidelity`; unreadable videos are
    skipped and left out of the denominator.
    """
    spec = workspace.spec
    vanilla = workspace.vanilla(workspace.tune) if spec.objective == "fidelity" else None
    scores: list[bool] = []
    flops_sum, seconds, skipped, done = 0.0, 0.0, 0, 0
    outcome = None
    for rung, size in enumerate(sizes):
        result = workspace.engine.evaluate(workspace.tune[done:size], config, batch_size=spec.batch_size,
                                           before_batch=STOP.check)
        done = size
        for qid, letter in result.predictions.items():
            scores.append(result.correct[qid] if vanilla is None else letter == vanilla[qid])
        flops_sum += result.flops_ratio * len(result.predictions)
        skipped += len(result.skipped)
        seconds += result.seconds["total"]
        outcome = RungOutcome(rung, size, sum(scores) / len(scores) if scores else 0.0, len(scores), skipped,
                              flops_sum / len(scores) if scores else float("nan"), seconds)
        on_rung(outcome)
    if outcome is None or not outcome.answered:
        raise RuntimeError(f"no question could be answered ({skipped} skipped)")
    return outcome


def retry_tags(study: optuna.Study, trial: optuna.Trial) -> dict[str, str]:
    """`retry_of`: the trial this one re-runs (after Ctrl-C, or after its worker died), else nothing."""
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is None:
        frozen = study._storage.get_trial(trial._trial_id)
        retry_of = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        if retry_of is not None:
            trial.set_user_attr("retry_of", retry_of)
    return {} if retry_of is None else {"retry_of": str(retry_of)}


def release_gpu_memory() -> None:
    """After a failed trial (e.g. CUDA out of memory), give cached blocks back so the next trial starts clean."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def mark_interrupted(study: optuna.Study, trial: optuna.Trial, params: dict[str, float]) -> None:
    """Ctrl-C: record why the trial failed and queue its thresholds again (it does not count toward n_trials)."""
    trial.set_user_attr("fail_reason", INTERRUPTED)
    # An enqueued trial (the default config, a retry) keeps its queued values even if suggestion was cut short.
    queued = study._storage.get_trial_system_attrs(trial._trial_id).get("fixed_params", {})
    study.enqueue_trial({**queued, **params}, user_attrs={"retry_of": trial.number})


def make_objective(workspace: Workspace, study: optuna.Study,
                   current: dict[str, Any] | None = None) -> Callable[[optuna.Trial], float]:
    """The study's objective: suggest thresholds, score them rung by rung, log the child run, prune or finish.

    `current["trial"]` is set to the trial being run, so the caller knows which trial an interrupt hit.
    """
    current = current if current is not None else {}
    spec = workspace.spec
    settings = study.user_attrs[ATTR]
    parent_id = study.user_attrs["mlflow_run_id"]
    retention, budget, sizes = settings["retention"], settings["budget"], settings["rungs"]
    tracker = workspace.tracker
    n_visual = workspace.engine.n_visual
    metric = f"tune_{spec.objective}"

    def objective(trial: optuna.Trial) -> float:
        current["trial"] = trial
        params: dict[str, float] = {}
        run_id = None
        try:
            trial.set_user_attr("worker", _worker_name())
            for name, (low, high) in spec.space.items():
                params[name] = trial.suggest_float(name, low, high)
            config = spec.config_for(retention, params)
            trial.set_user_attr("config", config.to_dict())  # what this trial ran: export evaluates exactly this
            run_id = tracker.trial_run(
                parent_id, study.study_name, trial.number,
                params={**params, "retention": retention, "prune_layer": config.prune_layer,
                        "method": config.method, "score": config.score},
                tags={"worker": _worker_name(), "device": spec.model.device, "optuna.state": "RUNNING",
                      "sampler_seed": workspace.seeds.get(study.study_name, ""), **retry_tags(study, trial)})
            trial.set_user_attr("mlflow_run_id", run_id)
            tracker.start(run_id)
            return _score(trial, config, run_id)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            # Best effort: the interrupt may have cut a database write short and left its lock behind. What is
            # not recorded now, the next run's `sync_runs` reconciles (the trial is FAIL in Optuna either way).
            with contextlib.suppress(Exception):
                mark_interrupted(study, trial, params)
            if run_id is not None:
                with contextlib.suppress(Exception):
                    tracker.set_state(run_id, "FAIL", tags={"fail_reason": INTERRUPTED})
            raise
        except StorageOutage:
            raise  # nothing can be recorded now; the stale-heartbeat pass of the next worker fails and re-runs it
        except Exception as error:
            release_gpu_memory()
            trial.set_user_attr("fail_reason", _one_line(error))
            if run_id is not None:
                tracker.set_state(run_id, "FAIL", tags={"fail_reason": _one_line(error)})
            raise

    def _score(trial: optuna.Trial, config: adatp.AdaTPConfig, run_id: str) -> float:
        def on_rung(outcome: RungOutcome) -> None:
            trial.report(outcome.value, outcome.questions)
            trial.set_user_attr("rung", outcome.rung)
            trial.set_user_attr("questions", outcome.questions)
            tracker.log(run_id, metrics={metric: round(outcome.value, 4)}, tags={"optuna.rung": outcome.rung},
                        step=outcome.questions)
            if outcome.rung < len(sizes) - 1 and trial.should_prune():
                tracker.log(run_id, metrics={"seconds": round(outcome.seconds, 3)})
                tracker.set_state(run_id, "PRUNED", tags={"optuna.rung": outcome.rung,
                                                          "optuna.questions": outcome.questions})
                raise optuna.TrialPruned(f"pruned at rung {outcome.rung} ({outcome.questions} questions): "
                                         f"{metric} {outcome.value:.3f}")

        final = evaluate_rungs(workspace, config, sizes, on_rung)
        kept = kept_count(n_visual, retention)
        trial.set_user_attr("flops_ratio", final.flops_ratio)
        trial.set_user_attr("kept_tokens", kept)
        trial.set_user_attr("skipped", final.skipped)
        trial.set_constraint("flops", final.flops_ratio - budget)
        tracker.log(run_id, metrics={"flops_ratio": round(final.flops_ratio, 4), "kept_tokens": kept,
                                     "visual_tokens": n_visual, "seconds": round(final.seconds, 3),
                                     "skipped": final.skipped})
        tracker.set_state(run_id, "COMPLETE", tags={"feasible": final.flops_ratio <= budget})
        return final.value

    return objective


# -- running -------------------------------------------------------------------------------------------------------
def run_studies(workspace: Workspace, studies: dict[float, optuna.Study], progress: bool = True,
                echo: Callable[[str], None] = print) -> None:
    """Run trials in this process until every study has `n_trials` counted trials (resumable, joinable)."""
    spec = workspace.spec
    quiet_optuna()
    planned = spec.n_trials * len(studies)
    done = sum(min(spec.n_trials, finished_count(study)) for study in studies.values())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=planned, initial=done, desc="trials", unit="trial")
    try:
        with STOP.deferred():  # Ctrl-C / SIGTERM stop at the next batch boundary (see autotune.interrupt)
            _run_each(workspace, studies, bar, echo)
    finally:
        if bar is not None:
            bar.close()


def _run_each(workspace: Workspace, studies: dict[float, optuna.Study], bar,
              echo: Callable[[str], None] = print) -> None:
    """The trial loop of `run_studies`; `STOP.check()` between trials, and between batches inside one.

    A study's plan is done when n_trials trials counted and none is WAITING or RUNNING. A study whose only open
    trials run on other workers is left for a second pass, after the other studies: there this worker waits for
    them to end, or for a dead worker's trial to go stale (`heartbeat.grace`), be failed, queued again and run
    here, so the last workers never leave a study stuck with a RUNNING trial.
    """
    later = [(budget, study) for budget, study in studies.items()
             if not _run_study(workspace, budget, study, bar, echo, wait=False)]
    for budget, study in later:
        _run_study(workspace, budget, study, bar, echo, wait=True)


def _run_study(workspace: Workspace, budget: float, study: optuna.Study, bar, echo: Callable[[str], None],
               wait: bool) -> bool:
    """Run the study's trials until its plan is done (True), or, without `wait`, until only trials of other
    workers are open (False)."""
    spec = workspace.spec
    current: dict[str, Any] = {}
    objective = make_objective(workspace, study, current)
    failures, said = 0, None
    while True:
        # A trial whose worker died is failed (and queued again) once its heartbeat is stale.
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        waiting = [trial for trial in trials if trial.state == TrialState.WAITING]
        running = [trial for trial in trials if trial.state == TrialState.RUNNING]
        if finished_count(study) >= spec.n_trials and not waiting:
            if not running or not _heartbeats(study):
                break
            if not wait:
                return False
            said = _wait_for_running(study, running, said, echo)
            continue
        current.clear()
        STOP.check()
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
        except KeyboardInterrupt:
            _interrupted_outside_objective(study, current.get("trial"))
            raise
        except Exception as error:
            outage = cause_of(error, StorageOutage)  # Optuna's bookkeeping may raise on top of it
            if outage is None:
                raise
            number = current["trial"].number if "trial" in current else None
            raise StorageOutage(f"{outage}" + ("" if number is None else
                                f"; trial {number} stays RUNNING until its heartbeat is stale "
                                f"({spec.heartbeat.grace} s), then the next worker runs it again")) from None
        if "trial" not in current:
            continue
        last = study._storage.get_trial(current["trial"]._trial_id)
        failures = failures + 1 if last.state == TrialState.FAIL else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(f"{study.study_name}: {failures} trials in a row failed; last: "
                               f"{last.user_attrs.get('fail_reason', 'unknown')}")
        if bar is not None and counts_toward_plan(last) and bar.n < bar.total:
            bar.update(1)
            best = best_feasible(study)
            bar.set_postfix_str(f"b{budget:.2f} best {best.value:.3f}" if best else f"b{budget:.2f}")
    sync_runs(workspace, study)
    summarise_study(workspace, study)
    return True


def _heartbeats(study: optuna.Study) -> bool:
    """Whether the storage records heartbeats (RDB storages do; the journal file does not)."""
    return getattr(study._storage, "get_heartbeat_interval", lambda: None)() is not None


def _wait_for_running(study: optuna.Study, running: list[FrozenTrial], said: tuple | None,
                      echo: Callable[[str], None]) -> tuple:
    """The plan is counted but other workers' trials are RUNNING: wait for them to end, or to go stale and come
    back queued. Says why once per set of trials; returns what it said."""
    storage = study._storage
    key = tuple(trial.number for trial in running)
    if key != said:
        grace = getattr(getattr(storage, "_backend", storage), "grace_period", None)
        names = ", ".join(f"{trial.number} ({trial.user_attrs.get('worker', 'unknown worker')})" for trial in running)
        echo(f"{study.study_name}: plan counted, waiting for RUNNING trial(s) {names} to finish; a trial whose "
             f"worker is silent for {grace} s is failed and run again here")
    STOP.check()
    time.sleep(min(5.0, max(0.5, storage.get_heartbeat_interval() or 1)))
    return key


def _interrupted_outside_objective(study: optuna.Study, trial: optuna.Trial | None) -> None:
    """Ctrl-C between Optuna's bookkeeping and our objective: fail the trial left RUNNING, as the objective would."""
    if trial is None:
        return
    with contextlib.suppress(Exception):
        frozen = study._storage.get_trial(trial._trial_id)
        if frozen.state == TrialState.RUNNING:
            mark_interrupted(study, trial, dict(frozen.params))
            study.tell(trial, state=TrialState.FAIL)


def sync_runs(workspace: Workspace, study: optuna.Study) -> None:
    """Make the study's child runs match its trials one to one, states included (e.g. after a worker died)."""
    tracker = workspace.tracker
    parent_id = study.user_attrs.get("mlflow_run_id")
    runs = tracker.trial_runs(study.study_name)
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.WAITING, TrialState.RUNNING):  # not started, or its worker logs it
            continue
        run = runs.get(trial.number)
        if run is None:
            tracker.trial_run(parent_id, study.study_name, trial.number, params=trial.params,
                              tags={"optuna.state": trial.state.name})
            # Two workers may sync at once: keep the first run of a trial, delete any later duplicate.
            duplicates = tracker.trial_runs_all(study.study_name, trial.number)
            for extra in duplicates[1:]:
                tracker.client.delete_run(extra.info.run_id)
            run_id = duplicates[0].info.run_id
        elif run.data.tags.get("optuna.state") == trial.state.name:
            continue
        else:
            run_id = run.info.run_id
        tags = {}
        if trial.state == TrialState.FAIL:
            tags["fail_reason"] = trial.user_attrs.get("fail_reason", STALE_REASON)
        tracker.set_state(run_id, trial.state.name, tags=tags)


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, tune objective, rung reached, FLOPs ratio, feasibility, thresholds."""
    objective = study.user_attrs.get(ATTR, {}).get("objective", "accuracy")
    rows = []
    for trial in study.get_trials(deepcopy=False):
        rows.append({
            "trial": trial.number, "state": trial.state.name, f"tune_{objective}": trial.value,
            "rung": trial.user_attrs.get("rung"), "questions": trial.user_attrs.get("questions"),
            "flops_ratio": trial.user_attrs.get("flops_ratio"), "feasible": is_feasible(trial),
            "fail_reason": trial.user_attrs.get("fail_reason"), **trial.params,
        })
    return rows


def summarise_study(workspace: Workspace, study: optuna.Study) -> None:
    """Parent-run metrics and artifacts of one study: best tune value, hypervolume, trials table, and the plots that
    carry information within one budget (`autotune.plots`: history, each threshold, importance)."""
    import csv
    import tempfile

    from autotune.pareto import hypervolume
    from autotune.plots import study_plots

    spec = workspace.spec
    tracker = workspace.tracker
    run_id = study.user_attrs["mlflow_run_id"]
    best = best_feasible(study)
    states = [trial.state.name for trial in study.get_trials(deepcopy=False)]
    tracker.log(run_id, metrics={
        f"best_tune_{spec.objective}": round(best.value, 4) if best else None,
        "best_trial": best.number if best else None,
        "hypervolume": round(hypervolume(study_points(study)), 4),
        **{f"trials_{state.lower()}": states.count(state) for state in ("COMPLETE", "PRUNED", "FAIL")},
    })
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "trials.csv"
        rows = trials_table(study)
        with table.open("w", newline="") as handle:
            fields = list(dict.fromkeys(key for row in rows for key in row))
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        tracker.artifact(run_id, table)
        for path in study_plots(study, Path(tmp), spec.objective, list(spec.space), best.number if best else None):
            tracker.artifact(run_id, path)
    if finished_count(study) >= spec.n_trials:
        tracker.finish(run_id)


def study_points(study: optuna.Study):
    """Pareto-plot points of a study's feasible COMPLETE trials."""
    from autotune.pareto import Point

    budget = study.user_attrs.get(ATTR, {}).get("budget")
    return [Point(flops_ratio=trial.user_attrs["flops_ratio"], accuracy=trial.value,
                  label=f"b{budget:.2f} #{trial.number:03d}", budget=budget, trial=trial.number,
                  params=dict(trial.params))
            for trial in study.get_trials(deepcopy=False) if is_feasible(trial)]
