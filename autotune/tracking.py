"""MLflow logging of our own (the one place that writes MLflow): experiment per spec, parent run per study, child
run per trial, a summary run per spec.

Runs are found again by tags, so a resumed study, a second worker or a re-run of `export` reuses them instead of
creating duplicates: `autotune.kind` (study | trial | summary), `autotune.study` (the Optuna study name) and
`optuna.trial_number`. The child run of a trial carries its Optuna state in `optuna.state` and, when pruned,
the rung it reached in `optuna.rung`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from autotune.storage import Resilient

# MLflow's limit for one param value.
_PARAM_LIMIT = 6000
# Optuna trial state -> MLflow run status of the child run.
# PRUNED is KILLED (the pruner stopped it), so the runs table tells it from a trial that ran to its end.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED", "RUNNING": "RUNNING",
              "WAITING": "SCHEDULED"}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _flat(prefix: str, value: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _flat(f"{prefix}.{key}" if prefix else str(key), inner)
    else:
        yield prefix, value


def _text_values(tags: Mapping[str, Any]) -> dict[str, str]:
    """Tag values as text: the REST store (an MLflow server) accepts nothing else."""
    return {key: str(value) for key, value in tags.items()}


def flat_params(data: Mapping[str, Any]) -> dict[str, str]:
    """Nested mapping -> {"a.b": "value"} with values cut to MLflow's param limit."""
    return {key: str(value)[:_PARAM_LIMIT] for key, value in _flat("", data)}


def _store_complete(path: Path) -> bool:
    """An MLflow SQLite store whose schema was built to the end (MLflow stamps `alembic_version` last)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            return connection.execute("select count(*) from alembic_version").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def build_sqlite_store(uri: str) -> None:
    """Build a missing MLflow SQLite store in a side file and link it into place whole.

    MLflow builds its schema in many steps; a first run interrupted among them left a store no later run could
    open (`table spans already exists`). A store found half-built (no `alembic_version` stamp, so MLflow cannot
    use it) is moved aside as `<name>.incomplete-<time>` and built again.
    """
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists():
        if _store_complete(path):
            return
        aside = path.with_name(f"{path.name}.incomplete-{int(time.time())}")
        os.replace(path, aside)
        print(f"tracking: {path} was half-built (an interrupted first run); moved aside to {aside.name}, "
              "building it again", file=sys.stderr)
    # A fresh name per build: MLflow caches a store per URI, and a reused name would point at a removed file.
    side = path.with_name(f".{path.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    MlflowClient(tracking_uri=f"sqlite:///{side}").search_experiments(max_results=1)
    try:
        os.link(side, path)  # fails if another process built it first: theirs is as good
    except FileExistsError:
        pass
    side.unlink()


class Tracker:
    """MLflow client bound to one experiment (one spec). Creating it creates the experiment if it is missing.

    tracking_uri: e.g. sqlite:///abs/mlflow.db, postgresql://..., http://127.0.0.1:5000.
    artifact_location: where a new experiment stores artifacts (a local directory or an artifact URI).
    """

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | None = None) -> None:
        if artifact_location and "://" not in artifact_location:
            Path(artifact_location).mkdir(parents=True, exist_ok=True)
            artifact_location = Path(artifact_location).resolve().as_uri()
        self.client = Resilient(MlflowClient(tracking_uri=tracking_uri))  # rides out a database outage
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
        else:
            self.experiment_id = found.experiment_id

    # -- finding runs -----------------------------------------------------------------------------------------
    def _search(self, filters: Mapping[str, str]) -> list:
        text = " and ".join(f"tags.`{key}` = '{value}'" for key, value in filters.items())
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=text, max_results=1000,
                                           order_by=["attributes.start_time ASC"], page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _find_or_create(self, tags: Mapping[str, str], run_name: str) -> str:
        found = self._search(tags)
        if found:
            return found[0].info.run_id
        return self.client.create_run(self.experiment_id, tags=_text_values(tags), run_name=run_name).info.run_id

    def study_run(self, study_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """The parent run of an Optuna study: created once, found by tag afterwards; params it lacks (an earlier
        creation was interrupted between the run and its params) are logged."""
        found = self._search({"autotune.kind": "study", "autotune.study": study_name})
        if found:
            run_id = found[0].info.run_id
        else:
            tags = _text_values({"autotune.kind": "study", "autotune.study": study_name, **tags})
            run_id = self.client.create_run(self.experiment_id, run_name=study_name, tags=tags).info.run_id
        self.log(run_id, params=params)
        return run_id

    def trial_run(self, parent_id: str, study_name: str, trial_number: int, params: Mapping[str, Any],
                  tags: Mapping[str, str]) -> str:
        """The child run of one trial: exactly one per (study, trial number), however often it is asked for."""
        key = {"autotune.kind": "trial", "autotune.study": study_name, "optuna.trial_number": str(trial_number)}
        found = self._search(key)
        if found:
            return found[0].info.run_id
        budget = study_name.rsplit("-", 1)[-1]  # studies are named <spec>-<dataset>-b0.25
        run = self.client.create_run(self.experiment_id, run_name=f"{budget} #{trial_number:03d}",
                                     tags=_text_values({**key, MLFLOW_PARENT_RUN_ID: parent_id, **tags}))
        self.log(run.info.run_id, params=params)
        return run.info.run_id

    def mark_selected(self, study_name: str, trial_number: int) -> str | None:
        """Tag the selected trial's run `autotune.selected: true` (and untag any earlier choice); its run id."""
        winner = None
        for number, run in self.trial_runs(study_name).items():
            if number == trial_number:
                self.client.set_tag(run.info.run_id, "autotune.selected", "true")
                winner = run.info.run_id
            elif "autotune.selected" in run.data.tags:
                self.client.delete_tag(run.info.run_id, "autotune.selected")
        return winner

    def summary_run(self, spec_name: str, tags: Mapping[str, str]) -> str:
        return self._find_or_create({"autotune.kind": "summary", "autotune.study": f"{spec_name}-summary",
                                     **tags}, run_name=f"{spec_name}-summary")

    def trial_runs_all(self, study_name: str, trial_number: int) -> list:
        """Every run tagged as this trial's, oldest first (more than one only after a race)."""
        return self._search({"autotune.kind": "trial", "autotune.study": study_name,
                             "optuna.trial_number": str(trial_number)})

    def trial_runs(self, study_name: str) -> dict[int, Any]:
        """Trial number -> child run, for one study."""
        runs = self._search({"autotune.kind": "trial", "autotune.study": study_name})
        return {int(run.data.tags["optuna.trial_number"]): run for run in runs}

    # -- writing ----------------------------------------------------------------------------------------------
    def log(self, run_id: str, metrics: Mapping[str, float] | None = None, params: Mapping[str, Any] | None = None,
            tags: Mapping[str, Any] | None = None, step: int = 0) -> None:
        """One batched write. Params are flattened (`a.b`); a param already logged keeps its first value."""
        stamp = _now_ms()
        metric_list = [Metric(key, float(value), stamp, step) for key, value in (metrics or {}).items()
                       if value is not None]
        param_list = [Param(key, value) for key, value in flat_params(params or {}).items()]
        tag_list = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
        if param_list:
            existing = self.client.get_run(run_id).data.params
            param_list = [param for param in param_list if param.key not in existing]
        if metric_list or param_list or tag_list:
            self.client.log_batch(run_id, metrics=metric_list, params=param_list, tags=tag_list, synchronous=True)

    def set_state(self, run_id: str, optuna_state: str, tags: Mapping[str, Any] | None = None) -> None:
        """Record a trial's Optuna state as a tag and the matching MLflow run status."""
        self.log(run_id, tags={"optuna.state": optuna_state, **(tags or {})})
        status = RUN_STATUS[optuna_state]
        if status in ("RUNNING", "SCHEDULED"):
            self.client.update_run(run_id, status=status)
        else:
            self.client.set_terminated(run_id, status=status)

    def start(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """Terminate a run: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)

    def artifact(self, run_id: str, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)
