"""A trial: suggest thresholds, score them rung by rung on the tune split, log the child run, prune or finish;
and the exact config a trial ran (`trial_config`)."""

from __future__ import annotations

import contextlib
import dataclasses
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
            reason = _one_line(error)
            taken = failed_as_stale(study, trial)
            if taken:  # another worker failed it while it ran here: its reason stands, Optuna refuses ours
                reason = STALE_REASON
            else:
                trial.set_user_attr("fail_reason", reason)
            if run_id is not None:
                tracker.set_state(run_id, "FAIL", tags={"fail_reason": reason})
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
