"""Optuna studies: one per (spec, dataset, FLOPs budget), created before any worker runs a trial.

Each study maximises the objective (`accuracy`, or `fidelity` = agreement with the unpruned model) on the tune
split. The retention comes from the budget (`adatp.retention_for_budget`, at the longest prompt so every question
stays inside the budget); the achieved FLOPs ratio minus the budget is recorded with `trial.set_constraint`.
Questions are shuffled once into nested rungs (prefixes of 1/f^(R-1), ..., 1/f, 1 of the tune split); a trial
reports its objective after each rung, with the number of questions as the step, and the pruner stops losers.
The default thresholds (the spec's `base`) and any warm starts are enqueued once, when the study is created.

A trial interrupted with Ctrl-C is recorded as FAIL (reason `interrupted`), its thresholds are enqueued again, and
it does not count toward `n_trials`: running the same command again finishes the planned count.

The concepts live in their own modules: `autotune.workspace` (questions, engine, storage and tracker of one
process), `autotune.search` (rungs, sampler, pruner), `autotune.objective` (a trial) and this one (creating, running
and syncing the studies). Their public names are importable from here too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.data.protocol import protocol_version
from autotune.interrupt import STOP, cause_of
from autotune.objective import (
    RungOutcome,
    evaluate_rungs,
    failed_as_stale,
    make_objective,
    mark_interrupted,
    release_gpu_memory,
    retry_tags,
    stored_trial,
    trial_config,
)
from autotune.search import make_pruner, make_sampler, rung_sizes, sampler_seed
from autotune.spec import StudySpec, mask_url
from autotune.storage import STALE_REASON, StorageOutage, has_heartbeats, quiet_optuna, wait_for_database
from autotune.versions import package_versions
from autotune.workspace import (
    ATTR,
    INTERRUPTED,
    StudyError,
    Workspace,
    budget_retention,
    check_tracking_reachable,
    default_params,
    load_questions,
    open_tracker,
    question_digest,
    spec_storage,
    study_names,
)

# A worker stops after this many trials in a row fail for reasons other than Ctrl-C: something is broken.
MAX_CONSECUTIVE_FAILURES = 3



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
        "metric": spec.metric, "max_new_tokens": spec.max_new_tokens if spec.mode == "generate" else None,
        "versions": package_versions(),
        "video": workspace.engine.video_protocol,  # family, frames, and for Qwen the frame size and grid
    }



def check_same_meaning(workspace: Workspace, study: optuna.Study) -> None:
    """Refuse to export from a spec (file or overrides) that differs from what the study's trials ran on: the
    preset would credit a trial with a config, model input or split it never saw. StudyError names the field."""
    known, spec = study.user_attrs[ATTR], workspace.spec
    current = {"objective": spec.objective, "dataset": spec.dataset.name, "frames": workspace.engine.frames,
               "video": workspace.engine.video_protocol, "protocol": protocol_version(spec.protocol),
               "mode": spec.mode, "metric": spec.metric,
               "max_new_tokens": spec.max_new_tokens if spec.mode == "generate" else None,
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
               "mode", "metric", "max_new_tokens")



# Older studies lack these (they all ran multiple-choice tables in logits mode): compared only when recorded.
_RECORDED_SINCE_V2 = ("mode", "metric", "max_new_tokens")



def create_studies(workspace: Workspace, create: bool = True) -> dict[float, optuna.Study]:
    """Create (or reopen) every budget's study, its parent MLflow run and its enqueued warm starts.

    Safe to interrupt anywhere and run again: each step checks what is there (a warm start already enqueued is not
    enqueued again; the parent run is found by tag and gets whatever params it lacks) and the study is marked
    created (its `autotune` attribute) only after every step. The database writes run with signals deferred
    (`autotune.interrupt`), so Ctrl-C or SIGTERM stops between them, never inside one.
    create=False (workers): the studies must exist already, made by `autotune study` before any worker starts.
    """
    from autotune.tracking import identity_tags

    spec = workspace.spec
    if workspace.connect_wait_s:
        wait_for_database(spec.storage, workspace.connect_wait_s)
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
                if create:  # a parent run made by an older version gets today's short name and tags
                    workspace.tracker.adopt_study_run(study.user_attrs["mlflow_run_id"], name,
                                                      identity_tags(spec.name, spec.dataset.name, budget))
        STOP.check()
        studies[budget] = study
    if create:
        with STOP.deferred():
            workspace.tracker.publish_views(list(spec.space), spec.objective)
    return studies



def _finish_creating(workspace: Workspace, study: optuna.Study, budget: float, retention: float, sizes: list[int],
                     settings: dict) -> None:
    """The steps of creating a study, each skipped when an interrupted earlier run already did it."""
    from autotune.tracking import identity_tags  # mlflow loads only where a command logs

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
        tags={**identity_tags(spec.name, spec.dataset.name, budget), "protocol": settings["protocol"],
              "mode": spec.mode, **{f"version.{k}": v for k, v in settings["versions"].items()}})
    study.set_user_attr("mlflow_run_id", run_id)
    study.set_metric_names([f"tune_{spec.objective}"])  # named in optuna-dashboard, not "Objective 0"
    study.set_user_attr(ATTR, settings)  # last: marks the study created



def open_studies(workspace: Workspace) -> dict[float, optuna.Study]:
    """The spec's existing studies, checked against the spec, for a worker to join."""
    return create_studies(workspace, create=False)



def load_studies(spec: StudySpec) -> dict[float, optuna.Study | None]:
    """Existing studies of the spec (None where not created yet); opens no model."""
    storage = spec_storage(spec)
    existing = set(optuna.get_all_study_names(storage))
    return {budget: optuna.load_study(study_name=name, storage=storage) if name in existing else None
            for budget, name in study_names(spec).items()}



def recorded_spec(spec: StudySpec, studies: dict[float, optuna.Study | None] | None = None) -> StudySpec:
    """The spec with its `auto` objective, mode and metric as its studies recorded them (for commands that open no
    table: status, pareto); unchanged when nothing is `auto` or no study exists yet."""
    automatic = [key for key in ("objective", "mode", "metric") if getattr(spec, key) == "auto"]
    if not automatic:
        return spec
    studies = load_studies(spec) if studies is None else studies
    known = next((study.user_attrs[ATTR] for study in studies.values()
                  if study is not None and ATTR in study.user_attrs), None)
    if known is None:
        return spec
    return dataclasses.replace(spec, **{key: known[key] for key in automatic if known.get(key)})


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
            if not running or not has_heartbeats(spec.storage):
                break
            if not wait:
                return False
            said = _wait_for_running(spec, study, running, said, echo)
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
            if outage is None and failed_as_stale(study, current.get("trial")):
                # Optuna refuses to tell a trial another worker has failed; its retry is queued, carry on.
                echo(f"{study.study_name}: trial {current['trial'].number} was failed as stale by another worker "
                     f"while it ran here (this worker was silent for more than heartbeat.grace, "
                     f"{spec.heartbeat.grace} s); its thresholds are queued again")
                continue
            if outage is None:
                raise
            number = current["trial"].number if "trial" in current else None
            raise StorageOutage(f"{outage}" + ("" if number is None else
                                f"; trial {number} stays RUNNING until its heartbeat is stale "
                                f"({spec.heartbeat.grace} s), then the next worker runs it again")) from None
        if "trial" not in current:
            continue
        last = stored_trial(study, current["trial"])
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



def _wait_for_running(spec: StudySpec, study: optuna.Study, running: list[FrozenTrial], said: tuple | None,
                      echo: Callable[[str], None]) -> tuple:
    """The plan is counted but other workers' trials are RUNNING: wait for them to end, or to go stale and come
    back queued. Says why once per set of trials; returns what it said."""
    key = tuple(trial.number for trial in running)
    if key != said:
        names = ", ".join(f"{trial.number} ({trial.user_attrs.get('worker', 'unknown worker')})" for trial in running)
        echo(f"{study.study_name}: plan counted, waiting for RUNNING trial(s) {names} to finish; a trial whose "
             f"worker is silent for {spec.heartbeat.grace} s is failed and run again here")
    STOP.check()
    time.sleep(min(5.0, max(0.5, spec.heartbeat.interval)))
    return key



def _interrupted_outside_objective(study: optuna.Study, trial: optuna.Trial | None) -> None:
    """Ctrl-C between Optuna's bookkeeping and our objective: fail the trial left RUNNING, as the objective would."""
    if trial is None:
        return
    with contextlib.suppress(Exception):
        frozen = stored_trial(study, trial)
        if frozen.state == TrialState.RUNNING:
            mark_interrupted(study, trial, dict(frozen.params))
            study.tell(trial, state=TrialState.FAIL)



def sync_runs(workspace: Workspace, study: optuna.Study) -> None:
    """Make the study's child runs match its trials one to one, states included (e.g. after a worker died)."""
    from autotune.tracking import identity_tags

    tracker = workspace.tracker
    parent_id = study.user_attrs.get("mlflow_run_id")
    runs = tracker.trial_runs(study.study_name)
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.WAITING, TrialState.RUNNING):  # not started, or its worker logs it
            continue
        run = runs.get(trial.number)
        if run is None:
            tracker.trial_run(parent_id, study.study_name, trial.number, params=trial.params,
                              tags={"optuna.state": trial.state.name, **identity_tags(
                                  workspace.spec.name, workspace.spec.dataset.name, study.user_attrs[ATTR]["budget"])})
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


__all__ = [
    "ATTR", "INTERRUPTED", "MAX_CONSECUTIVE_FAILURES", "RungOutcome", "StudyError", "Workspace", "best_feasible",
    "budget_retention", "check_same_meaning", "check_tracking_reachable", "counts_toward_plan", "create_studies",
    "default_params", "evaluate_rungs", "finished_count", "is_feasible", "load_questions", "load_studies",
    "make_objective", "make_pruner", "make_sampler", "mark_interrupted", "open_studies", "open_tracker",
    "question_digest", "quiet_optuna", "release_gpu_memory", "retry_tags", "run_studies", "rung_sizes",
    "sampler_seed", "spec_storage", "study_names", "study_points", "summarise_study", "sync_runs", "trial_config",
    "trials_table",
]
