"""A trial: suggest thresholds, score them rung by rung on the tune split, log the child run, prune or finish;
and the exact config a trial ran (`trial_config`)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial

import adatp
from adatp.flops import kept_count
from autotune.interrupt import STOP
from autotune.storage import STALE_REASON, StorageOutage
from autotune.workspace import ATTR, INTERRUPTED, Workspace, _one_line


def trial_config(study: optuna.Study, trial: FrozenTrial) -> adatp.AdaTPConfig:
    """The exact config `trial` ran, from the storage, never from the current spec: stored with the trial, or for
    trials of older studies rebuilt from the study's own recorded base config, retention and the trial's params."""
    stored = trial.user_attrs.get("config")
    if stored is not None:
        return adatp.AdaTPConfig.from_dict(stored, where=f"trial {trial.number} config")
    known = study.user_attrs[ATTR]
    return adatp.AdaTPConfig.from_dict({**known["base"], "retention": known["retention"], **trial.params},
                                       where=f"study {study.study_name} base")


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

    The objective is the mean score against the gold answers (`accuracy`), or against the unpruned model's answers
    (`fidelity`): 1/0 per letter, or the spec's open-ended metric; unreadable videos are skipped and left out of the
    denominator.
    """
    spec = workspace.spec
    vanilla = workspace.vanilla(workspace.tune) if spec.objective == "fidelity" else None
    scores: list[float] = []
    flops_sum, seconds, skipped, done = 0.0, 0.0, 0, 0
    outcome = None
    for rung, size in enumerate(sizes):
        asked = workspace.tune[done:size]
        result = workspace.engine.evaluate(asked, config, batch_size=spec.batch_size, before_batch=STOP.check)
        done = size
        scores += workspace.scores(asked, result, vanilla)
        flops_sum += result.flops_ratio * len(result.predictions)
        skipped += len(result.skipped)
        seconds += result.seconds["total"]
        outcome = RungOutcome(rung, size, sum(scores) / len(scores) if scores else 0.0, len(scores), skipped,
                              flops_sum / len(scores) if scores else float("nan"), seconds)
        on_rung(outcome)
    if outcome is None or not outcome.answered:
        raise RuntimeError(f"no question could be answered ({skipped} skipped)")
    return outcome


def stored_trial(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial:
    """`trial` as the storage holds it now (another worker may have changed its state), through Optuna's public API."""
    trials = study.get_trials(deepcopy=False)
    return next(frozen for frozen in reversed(trials) if frozen.number == trial.number)


def retry_tags(study: optuna.Study, trial: optuna.Trial) -> dict[str, str]:
    """`retry_of`: the trial this one re-runs (after Ctrl-C, or after its worker died), else nothing."""
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is None:
        retry_of = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(stored_trial(study, trial))
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
    queued = stored_trial(study, trial).system_attrs.get("fixed_params", {})
    study.enqueue_trial({**queued, **params}, user_attrs={"retry_of": trial.number})


def failed_as_stale(study: optuna.Study, trial: optuna.Trial | None) -> bool:
    """Whether another worker failed `trial` for a stale heartbeat while this worker ran it: this worker was paused
    (or cut off) for longer than `heartbeat.grace`, and the trial's retry is already queued."""
    if trial is None:
        return False
    frozen = stored_trial(study, trial)
    return frozen.state == optuna.trial.TrialState.FAIL and frozen.user_attrs.get("fail_reason") == STALE_REASON


@dataclasses.dataclass
class StudyPlan:
    """What every trial of one study shares: its recorded settings, its parent run, the tracker, the tune metric."""

    workspace: Workspace
    study: optuna.Study
    retention: float
    budget: float
    sizes: list[int]
    parent_id: str
    n_visual: int
    metric: str
    tracker: Any

    @classmethod
    def of(cls, workspace: Workspace, study: optuna.Study) -> StudyPlan:
        settings = study.user_attrs[ATTR]
        parent_id = study.user_attrs["mlflow_run_id"]
        tracker = workspace.tracker  # the store opens before the model loads, as it always has
        return cls(workspace, study, settings["retention"], settings["budget"], settings["rungs"], parent_id,
                   workspace.engine.n_visual, f"tune_{workspace.spec.objective}", tracker)


def make_objective(workspace: Workspace, study: optuna.Study,
                   current: dict[str, Any] | None = None) -> Callable[[optuna.Trial], float]:
    """The study's objective: suggest thresholds, score them rung by rung, log the child run, prune or finish.

    `current["trial"]` is set to the trial being run, so the caller knows which trial an interrupt hit.
    """
    current = current if current is not None else {}
    plan = StudyPlan.of(workspace, study)

    def objective(trial: optuna.Trial) -> float:
        current["trial"] = trial
        params: dict[str, float] = {}  # filled as drawn: an interrupt re-queues what was drawn so far
        run_id = None
        try:
            config = _suggest(plan, trial, params)
            run_id = _open_child_run(plan, trial, params, config)
            return _score(plan, trial, config, run_id)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            _record_interrupt(plan, trial, params, run_id)
            raise
        except StorageOutage:
            raise  # nothing can be recorded now; the stale-heartbeat pass of the next worker fails and re-runs it
        except Exception as error:
            _record_failure(plan, trial, error, run_id)
            raise

    return objective


def _suggest(plan: StudyPlan, trial: optuna.Trial, params: dict[str, float]) -> adatp.AdaTPConfig:
    """Draw the thresholds into `params`; the config they give, stored with the trial (export evaluates exactly it)."""
    spec = plan.workspace.spec
    trial.set_user_attr("worker", _worker_name())
    for name, (low, high) in spec.space.items():
        params[name] = trial.suggest_float(name, low, high)
    config = spec.config_for(plan.retention, params)
    trial.set_user_attr("config", config.to_dict())
    return config


def _open_child_run(plan: StudyPlan, trial: optuna.Trial, params: dict[str, float],
                    config: adatp.AdaTPConfig) -> str:
    """The trial's child run (`b0.25 #017`), created or found again, marked RUNNING."""
    from autotune.tracking import identity_tags  # mlflow loads only where a command logs

    spec, study = plan.workspace.spec, plan.study
    run_id = plan.tracker.trial_run(
        plan.parent_id, study.study_name, trial.number,
        params={**params, "retention": plan.retention, "prune_layer": config.prune_layer,
                "method": config.method, "score": config.score},
        tags={"worker": _worker_name(), "device": spec.model.device, "optuna.state": "RUNNING",
              "sampler_seed": plan.workspace.seeds.get(study.study_name, ""), **retry_tags(study, trial),
              **identity_tags(spec.name, spec.dataset.name, plan.budget)})
    trial.set_user_attr("mlflow_run_id", run_id)
    plan.tracker.start(run_id)
    return run_id


def _score(plan: StudyPlan, trial: optuna.Trial, config: adatp.AdaTPConfig, run_id: str) -> float:
    """Evaluate rung by rung (reporting each to the pruner), then record the finished trial; its objective value."""
    final = evaluate_rungs(plan.workspace, config, plan.sizes,
                           functools.partial(_report_rung, plan, trial, run_id))
    kept = kept_count(plan.n_visual, plan.retention)
    trial.set_user_attr("flops_ratio", final.flops_ratio)
    trial.set_user_attr("kept_tokens", kept)
    trial.set_user_attr("skipped", final.skipped)
    trial.set_constraint("flops", final.flops_ratio - plan.budget)
    plan.tracker.log(run_id, metrics={"flops_ratio": round(final.flops_ratio, 4), "kept_tokens": kept,
                                      "visual_tokens": plan.n_visual, "seconds": round(final.seconds, 3),
                                      "skipped": final.skipped})
    plan.tracker.set_state(run_id, "COMPLETE", tags={"feasible": final.flops_ratio <= plan.budget})
    return final.value


def _report_rung(plan: StudyPlan, trial: optuna.Trial, run_id: str, outcome: RungOutcome) -> None:
    """One rung done: report it to Optuna and MLflow (as a step); stop the trial here if the pruner says so."""
    trial.report(outcome.value, outcome.questions)
    trial.set_user_attr("rung", outcome.rung)
    trial.set_user_attr("questions", outcome.questions)
    plan.tracker.log(run_id, metrics={plan.metric: round(outcome.value, 4)}, tags={"optuna.rung": outcome.rung},
                     step=outcome.questions)
    if outcome.rung < len(plan.sizes) - 1 and trial.should_prune():
        plan.tracker.log(run_id, metrics={"seconds": round(outcome.seconds, 3)})
        plan.tracker.set_state(run_id, "PRUNED", tags={"optuna.rung": outcome.rung,
                                                       "optuna.questions": outcome.questions})
        raise optuna.TrialPruned(f"pruned at rung {outcome.rung} ({outcome.questions} questions): "
                                 f"{plan.metric} {outcome.value:.3f}")


def _record_interrupt(plan: StudyPlan, trial: optuna.Trial, params: dict[str, float], run_id: str | None) -> None:
    """Ctrl-C, best effort: the interrupt may have cut a database write short and left its lock behind. What is not
    recorded now, the next run's `sync_runs` reconciles (the trial is FAIL in Optuna either way)."""
    with contextlib.suppress(Exception):
        mark_interrupted(plan.study, trial, params)
    if run_id is not None:
        with contextlib.suppress(Exception):
            plan.tracker.set_state(run_id, "FAIL", tags={"fail_reason": INTERRUPTED})


def _record_failure(plan: StudyPlan, trial: optuna.Trial, error: Exception, run_id: str | None) -> None:
    """A failed trial (e.g. CUDA out of memory): free the GPU cache and record why, in Optuna and on the child run."""
    release_gpu_memory()
    reason = _one_line(error)
    if failed_as_stale(plan.study, trial):  # another worker failed it while it ran here: its reason stands
        reason = STALE_REASON
    else:
        trial.set_user_attr("fail_reason", reason)
    if run_id is not None:
        plan.tracker.set_state(run_id, "FAIL", tags={"fail_reason": reason})
