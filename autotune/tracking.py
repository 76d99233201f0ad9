"""MLflow logging of our own (the one place that writes MLflow): experiment per spec, parent run per study, child
run per trial, a summary run per spec.

Runs are found again by tags, never by name, so a resumed study, a second worker or a re-run of `export` reuses them
instead of creating duplicates: `autotune.kind` (study | trial | summary), `autotune.study` (the Optuna study name)
and `optuna.trial_number`. The child run of a trial carries its Optuna state in `optuna.state` and, when pruned,
the rung it reached in `optuna.rung`.

Names are short, for the runs table's Run Name column: a study's parent run is its budget (`b0.25`), a trial's child
run adds the zero-padded trial number (`b0.25 #017`, so names sort in trial order), the summary run is `summary`.
What the names leave out is in tags on every run: `autotune.spec`, `autotune.dataset`, `autotune.budget`.

The experiment carries `mlflow.experimentKind: custom_model_development` (MLflow's "Machine learning" kind) and two
saved views of the runs table (its Views menu) whose first columns are the thresholds: `runs_views`. MLflow 3.17's
UI opens an experiment by its GenAI / Model training switch, not by the kind tag: `autotune.links` sets the switch.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
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


# The experiment kind tag, with the value MLflow's kind selector writes for "Machine learning" (runs first, not traces);
# its UI reads it only with workflow-based navigation off, which 3.17's build has on.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.17 keeps each saved runs-table view as an experiment tag `mlflow.sharedViewState.<view id>`.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
SUMMARY_RUN_NAME = "summary"


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


def budget_label(study_name: str) -> str:
    """`b0.25` from a study name `<spec>-<dataset>-b0.25` (a name without a dash is its own label)."""
    return study_name.rsplit("-", 1)[-1]


def trial_run_name(study_name: str, trial_number: int) -> str:
    return f"{budget_label(study_name)} #{trial_number:03d}"


def identity_tags(spec_name: str, dataset: str, budget: float | None = None) -> dict[str, str]:
    """The tags that say which spec, dataset and budget a run belongs to (its name says only the budget)."""
    tags = {"autotune.spec": spec_name, "autotune.dataset": dataset}
    if budget is not None:
        tags["autotune.budget"] = f"{budget:.2f}"
    return tags


def _column(group: str, key: str) -> str:
    """A runs-table column id as MLflow's UI spells it: params.`tau_s`, metrics.`selected.tau_s`."""
    return f"{group}.`{key}`"


def runs_views(thresholds: Sequence[str], objective: str) -> dict[str, dict[str, Any]]:
    """View id -> (name, state) of the saved runs-table views: `selected` lists each budget's parent run with the
    thresholds export selected, then its held-out numbers; `trials` lists the trials with their thresholds, then
    the tune objective and FLOPs ratio. Rows sort by run name (b0.25, b0.35, ...; b0.25 #000, #001, ...)."""
    names = [*thresholds, "retention"]
    selected = [_column("metrics", f"selected.{name}") for name in names] + [
        _column("metrics", key) for key in (f"test_{objective}", f"test_{objective}_ci95_low",
                                            f"test_{objective}_ci95_high", f"default_test_{objective}",
                                            f"best_tune_{objective}")]
    trials = [_column("params", name) for name in names] + [
        _column("metrics", key) for key in (f"tune_{objective}", "flops_ratio", "seconds")]
    order = {"orderByKey": "tags.`mlflow.runName`", "orderByAsc": True}
    return {
        "autotune-selected": {"name": "autotune: selected thresholds per budget", "state": {
            "searchFilter": "tags.`autotune.kind` = 'study'", **order,
            "selectedColumns": selected, "columnOrder": selected}},
        "autotune-trials": {"name": "autotune: trials, thresholds first", "state": {
            "searchFilter": "tags.`autotune.kind` = 'trial'", **order,
            "selectedColumns": trials, "columnOrder": trials}},
    }


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
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_location,
                                                               tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            self._experiment_tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        else:
            self.experiment_id = found.experiment_id
            self._experiment_tags = dict(found.tags)
            if EXPERIMENT_KIND_TAG not in self._experiment_tags:  # made before we set it; a user's choice stays
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
                self._experiment_tags[EXPERIMENT_KIND_TAG] = EXPERIMENT_KIND

    def publish_views(self, thresholds: Sequence[str], objective: str) -> list[str]:
        """Save `runs_views` on the experiment where missing or different; the ids written. The envelope is the one
        MLflow's own "Save as new view" writes (name, createdAt, updatedAt, state as JSON text)."""
        written = []
        for view, spec in runs_views(thresholds, objective).items():
            key = VIEW_TAG_PREFIX + view
            try:
                old = json.loads(self._experiment_tags[key])
                if old["name"] == spec["name"] and json.loads(old["state"]) == spec["state"]:
                    continue
                created = int(old["createdAt"])
            except (KeyError, TypeError, ValueError):
                created = _now_ms()
            envelope = json.dumps({"name": spec["name"], "createdAt": created, "updatedAt": _now_ms(),
                                   "state": json.dumps(spec["state"])})
            self.client.set_experiment_tag(self.experiment_id, key, envelope)
            self._experiment_tags[key] = envelope
            written.append(view)
        return written

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

    def _find_or_create(self, key: Mapping[str, str], run_name: str, tags: Mapping[str, Any]) -> str:
        """The run tagged `key` (created if missing, named `run_name`, tagged `key` and `tags`). A run found from an
        older version gets the current name and the tags it lacks; tags it has keep their first value."""
        found = self._search(key)
        if not found:
            return self.client.create_run(self.experiment_id, tags=_text_values({**key, **tags}),
                                          run_name=run_name).info.run_id
        self._bring_up_to_date(found[0], run_name, tags)
        return found[0].info.run_id

    def _bring_up_to_date(self, run, run_name: str, tags: Mapping[str, Any]) -> None:
        if run.info.run_name != run_name:
            self.client.update_run(run.info.run_id, name=run_name)
        self.log(run.info.run_id, tags={name: value for name, value in tags.items() if name not in run.data.tags})

    def adopt_study_run(self, run_id: str, study_name: str, tags: Mapping[str, Any]) -> None:
        """An existing parent run (a resumed study) gets the current name and the identity tags it lacks."""
        self._bring_up_to_date(self.client.get_run(run_id), budget_label(study_name), tags)

    def study_run(self, study_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """The parent run of an Optuna study, named by its budget (`b0.25`): created once, found by tag afterwards;
        params it lacks (an earlier creation was interrupted between the run and its params) are logged."""
        run_id = self._find_or_create({"autotune.kind": "study", "autotune.study": study_name},
                                      budget_label(study_name), tags)
        self.log(run_id, params=params)
        return run_id

    def trial_run(self, parent_id: str, study_name: str, trial_number: int, params: Mapping[str, Any],
                  tags: Mapping[str, str]) -> str:
        """The child run of one trial: exactly one per (study, trial number), however often it is asked for."""
        key = {"autotune.kind": "trial", "autotune.study": study_name, "optuna.trial_number": str(trial_number)}
        found = self._search(key)
        if found:
            return found[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=trial_run_name(study_name, trial_number),
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
        """The spec's summary run (`summary`), found by kind and spec; `tags` are added where missing."""
        return self._find_or_create({"autotune.kind": "summary", "autotune.study": f"{spec_name}-summary"},
                                    SUMMARY_RUN_NAME, tags)

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
