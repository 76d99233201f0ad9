"""The tuning service end to end on the shipped demo model and a small synthetic set: `autotune study`, `status`,
`export`, `pareto`, `worker` and `ui`, with the Optuna study and the MLflow store checked against each other."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from servers import free_port, wait_until_healthy
from specs import MODEL, spec_file
from typer.testing import CliRunner

import adatp
from autotune.cli import app
from autotune.export import model_label
from autotune.spec import load_spec
from autotune.study import (
    ATTR,
    INTERRUPTED,
    Workspace,
    counts_toward_plan,
    create_studies,
    load_studies,
    make_sampler,
    rung_sizes,
)

pytestmark = pytest.mark.slow

N_TRIALS = 5


def write_spec(directory: Path, **changes) -> Path:
    changes = {"budgets": [0.3, 0.5], "pruner": {"name": "successive_halving", "rungs": 3, "reduction_factor": 2},
               "n_trials": N_TRIALS, **changes}
    return spec_file(directory, "svc", directory / "data", **changes)


def invoke(*args):
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    return result


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One study + export run shared by the checks below."""
    directory = tmp_path_factory.mktemp("service")
    path = write_spec(directory)
    studied = invoke("study", path, "--no-progress")
    assert studied.exit_code == 0, studied.output
    exported = invoke("export", path, "--no-progress")
    assert exported.exit_code == 0, exported.output
    return path, load_spec(path), studied.output, exported.output


def mlflow_runs(spec, kind, study_name=None):
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    text = f"tags.`autotune.kind` = '{kind}'"
    if study_name:
        text += f" and tags.`autotune.study` = '{study_name}'"
    return client, client.search_runs([experiment.experiment_id], filter_string=text, max_results=1000)


def test_each_budget_has_its_planned_trials_and_one_child_run_per_trial(done):
    _, spec, output, _ = done
    studies = load_studies(spec)
    assert set(studies) == {0.3, 0.5}
    for budget, study in studies.items():
        trials = study.get_trials()
        assert sum(map(counts_toward_plan, trials)) == N_TRIALS
        client, children = mlflow_runs(spec, "trial", study.study_name)
        by_number = {int(run.data.tags["optuna.trial_number"]): run for run in children}
        assert sorted(by_number) == [t.number for t in trials]
        parent_id = study.user_attrs["mlflow_run_id"]
        identity = {"autotune.spec": "svc", "autotune.dataset": "synthetic", "autotune.budget": f"{budget:.2f}"}
        parent = client.get_run(parent_id)
        assert parent.info.run_name == f"b{budget:.2f}"
        assert {key: parent.data.tags.get(key) for key in identity} == identity
        for trial in trials:
            run = by_number[trial.number]
            assert run.data.tags["optuna.state"] == trial.state.name
            assert run.data.tags["mlflow.parentRunId"] == parent_id
            assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(trial.state.name, "FAILED")
            assert run.info.run_name == f"b{budget:.2f} #{trial.number:03d}"
            assert {key: run.data.tags.get(key) for key in identity} == identity
            assert "rung" not in run.data.metrics and "value" not in run.data.metrics
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "tune_accuracy")]
            assert steps == study.user_attrs[ATTR]["rungs"][: trial.user_attrs["rung"] + 1]
            if trial.state == optuna.trial.TrialState.PRUNED:
                assert int(run.data.tags["optuna.rung"]) == trial.user_attrs["rung"] < len(steps) + 1
                assert trial.user_attrs["rung"] < len(study.user_attrs[ATTR]["rungs"]) - 1
            if trial.state == optuna.trial.TrialState.COMPLETE:
                # The achieved FLOPs ratio is the constraint (ratio - budget <= 0) and matches the budget closely.
                assert trial.constraints["flops"] == pytest.approx(trial.user_attrs["flops_ratio"] - budget)
                assert budget - 0.02 < trial.user_attrs["flops_ratio"] <= budget
                assert run.data.metrics["tune_accuracy"] == round(trial.value, 4)  # 4 decimals, as the UI shows
        artifacts = {a.path for a in client.list_artifacts(parent_id)}
        assert {"trials.csv", "history.png", "thresholds.png", "preset"} <= artifacts
        assert client.get_run(parent_id).data.tags["protocol"].startswith("adatp-mcq/")


def test_the_parent_run_holds_the_answer_and_points_at_the_winning_trial(done):
    """After export, each budget's parent run shows the thresholds to use, their held-out accuracy with its CI and a
    description, and the winning trial's run is tagged: the answer without opening an artifact."""
    _, spec, _, _ = done
    for budget, study in load_studies(spec).items():
        assert study.metric_names == ["tune_accuracy"]
        preset = adatp.load_preset(Path(spec.presets_dir) / f"svc-synthetic-b{budget:.2f}.yaml")
        client, (parent,) = mlflow_runs(spec, "study", study.study_name)
        metrics, tags = parent.data.metrics, parent.data.tags
        for name in spec.space:
            assert metrics[f"selected.{name}"] == round(getattr(preset.config, name), 4)
        assert metrics["selected.retention"] == round(preset.config.retention, 4)
        trial = preset.provenance["trial"]
        assert metrics["selected.trial"] == trial and tags["selected.trial"] == str(trial)
        test = preset.results["test_accuracy"]
        assert (metrics["test_accuracy"], metrics["test_accuracy_ci95_low"], metrics["test_accuracy_ci95_high"]) == (
            test["value"], *test["ci95"])
        description = tags["mlflow.note.content"]
        assert description.startswith(f"**Use these thresholds at FLOPs budget {budget:.2f} on synthetic**: `"
                                      + "  ".join(f"{name}={getattr(preset.config, name):.4f}"
                                                  for name in [*spec.space, "retention"]) + "`\n")
        # The first lines (what the UI shows before "Show more") hold the whole answer.
        assert (f"**Held-out test accuracy {test['value']:.3f} [95% CI {test['ci95'][0]:.3f}, {test['ci95'][1]:.3f}]**"
                in description.split("\n")[2])
        assert "| " + " | ".join(f"{getattr(preset.config, name):.4f}" for name in [*spec.space, "retention"]) + " |" \
            in description
        assert f"| tuned | {test['value']:.3f} [95% CI {test['ci95'][0]:.3f}, {test['ci95'][1]:.3f}] |" in description
        selected = [run for run in mlflow_runs(spec, "trial", study.study_name)[1]
                    if run.data.tags.get("autotune.selected") == "true"]
        assert [int(run.data.tags["optuna.trial_number"]) for run in selected] == [trial]
        assert tags["selected.run_id"] == selected[0].info.run_id
        assert f"(#/experiments/{parent.info.experiment_id}/runs/{selected[0].info.run_id})" in description
        header = (Path(client.download_artifacts(parent.info.run_id, "trials.csv", str(Path(spec.workdir) / "dl")))
                  .read_text().splitlines()[0].split(","))
        assert header[:3] == ["trial", "state", "tune_accuracy"]


def test_the_experiment_opens_as_model_training_with_short_run_names(done):
    """The experiment's kind tag, the runs table's names (parents b0.30, children b0.30 #000.., `summary`), and the
    two saved views: their filters select the parent runs and the trial runs, their first columns are keys the
    runs really have (selected thresholds on the parents, thresholds as params on the trials)."""
    _, spec, _, _ = done
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    studies = load_studies(spec)
    _, parents = mlflow_runs(spec, "study")
    assert sorted(run.info.run_name for run in parents) == ["b0.30", "b0.50"]
    for budget, study in studies.items():
        _, children = mlflow_runs(spec, "trial", study.study_name)
        assert sorted(run.info.run_name for run in children) == [
            f"b{budget:.2f} #{trial.number:03d}" for trial in study.get_trials()]  # name order is trial order
    (summary,) = mlflow_runs(spec, "summary")[1]
    assert summary.info.run_name == "summary"
    assert (summary.data.tags["autotune.spec"], summary.data.tags["autotune.dataset"]) == ("svc", "synthetic")

    thresholds = [*spec.space, "retention"]
    views = {key.removeprefix("mlflow.sharedViewState."): json.loads(value)
             for key, value in experiment.tags.items() if key.startswith("mlflow.sharedViewState.")}
    assert {key: view["name"] for key, view in views.items()} == {
        "autotune-selected": "autotune: selected thresholds per budget",
        "autotune-trials": "autotune: trials, thresholds first"}
    selected, trials = (json.loads(views[key]["state"]) for key in ("autotune-selected", "autotune-trials"))
    assert selected["selectedColumns"][:len(thresholds)] == [f"metrics.`selected.{name}`" for name in thresholds]
    assert trials["selectedColumns"][:len(thresholds)] == [f"params.`{name}`" for name in thresholds]
    for state, kind in ((selected, "study"), (trials, "trial")):
        assert state["columnOrder"] == state["selectedColumns"]
        assert state["orderByKey"] == "tags.`mlflow.runName`" and state["orderByAsc"] is True
        shown = client.search_runs([experiment.experiment_id], filter_string=state["searchFilter"], max_results=1000)
        assert {run.data.tags["autotune.kind"] for run in shown} == {kind}
        assert len(shown) == len(mlflow_runs(spec, kind)[1])
    for parent in parents:  # every column of the selected view is a metric the parent run has after export
        assert {column.split("`")[1] for column in selected["selectedColumns"]} <= set(parent.data.metrics)
    for run in mlflow_runs(spec, "trial")[1]:
        if run.data.tags["optuna.state"] == "COMPLETE":
            assert set(thresholds) <= set(run.data.params)
            assert {column.split("`")[1] for column in trials["selectedColumns"][len(thresholds):]} <= set(
                run.data.metrics)
    link = f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey="
    description = summary.data.tags["mlflow.note.content"]
    assert f"({link}autotune-selected)" in description and f"({link}autotune-trials)" in description


def _old_store(uri: str) -> dict[str, str]:
    """What a version before short names left: no kind tag, parent runs named after the study, `<spec>-summary`."""
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("old")
    runs = {}
    for budget in ("0.25", "0.50"):
        study = f"old-synthetic-b{budget}"
        runs[budget] = client.create_run(experiment_id, run_name=study, tags={
            "autotune.kind": "study", "autotune.study": study, "autotune.spec": "old", "autotune.budget": budget,
            "version.mlflow": "0.0"}).info.run_id
    runs["trial"] = client.create_run(experiment_id, run_name="b0.25 #003", tags={
        "autotune.kind": "trial", "autotune.study": "old-synthetic-b0.25", "optuna.trial_number": "3",
        "mlflow.parentRunId": runs["0.25"]}).info.run_id
    runs["summary"] = client.create_run(experiment_id, run_name="old-summary", tags={
        "autotune.kind": "summary", "autotune.study": "old-summary", "autotune.spec": "old"}).info.run_id
    return runs


def test_a_store_from_before_short_names_is_brought_up_to_date_without_duplicates(tmp_path):
    from autotune.tracking import Tracker, identity_tags

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old = _old_store(uri)
    tracker = Tracker(uri, "old", str(tmp_path / "artifacts"))
    client = tracker.client
    assert client.get_experiment(tracker.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    # A study created again (an interrupted creation) finds its parent; a resumed one is adopted: same runs.
    assert tracker.study_run("old-synthetic-b0.25", params={"retention": 0.3},
                             tags={**identity_tags("old", "synthetic", 0.25), "version.mlflow": "9.9"}) == old["0.25"]
    tracker.adopt_study_run(old["0.50"], "old-synthetic-b0.50", identity_tags("old", "synthetic", 0.5))
    assert tracker.trial_run(old["0.25"], "old-synthetic-b0.25", 3, params={"tau_s": 0.9}, tags={}) == old["trial"]
    assert tracker.summary_run("old", identity_tags("old", "synthetic")) == old["summary"]
    names = {key: client.get_run(run_id).info.run_name for key, run_id in old.items()}
    assert names == {"0.25": "b0.25", "0.50": "b0.50", "trial": "b0.25 #003", "summary": "summary"}
    for key, budget in (("0.25", "0.25"), ("0.50", "0.50")):
        tags = client.get_run(old[key]).data.tags
        assert (tags["autotune.spec"], tags["autotune.dataset"], tags["autotune.budget"]) == ("old", "synthetic",
                                                                                             budget)
    assert client.get_run(old["0.25"]).data.tags["version.mlflow"] == "0.0"  # a tag it had keeps its first value
    assert client.get_run(old["0.25"]).data.params == {"retention": "0.3"}
    assert client.get_run(old["summary"]).data.tags["autotune.dataset"] == "synthetic"
    assert len(client.search_runs([tracker.experiment_id], max_results=100)) == len(old)  # nothing duplicated
    # A new trial of the resumed study gets the short name with its zero-padded number.
    new = tracker.trial_run(old["0.25"], "old-synthetic-b0.25", 12, params={}, tags={})
    assert client.get_run(new).info.run_name == "b0.25 #012"


def test_the_kind_tag_is_set_on_a_new_experiment_and_a_users_choice_stays(tmp_path):
    from autotune.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "fresh", str(tmp_path / "artifacts"))
    assert tracker.client.get_experiment(tracker.experiment_id).tags == {
        "mlflow.experimentKind": "custom_model_development"}
    chosen = MlflowClient(uri).create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    Tracker(uri, "chosen", str(tmp_path / "artifacts"))
    assert MlflowClient(uri).get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_saved_views_are_written_once_and_again_when_the_space_changes(tmp_path, store):
    from autotune.cli import mlflow_server_command, stop_process_group
    from autotune.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    server = None
    if store == "server":  # the REST store: tags travel as text through a real `mlflow server`
        port = free_port()
        command, environment = mlflow_server_command(uri, "127.0.0.1", port)
        server = subprocess.Popen(command, env=environment, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        uri = f"http://127.0.0.1:{port}"
    try:
        if server is not None:
            wait_until_healthy(server, uri)
        tracker = Tracker(uri, "views", None if server else str(tmp_path / "artifacts"))
        assert tracker.publish_views(["tau_s", "tau_t"], "accuracy") == ["autotune-selected", "autotune-trials"]
        assert tracker.publish_views(["tau_s", "tau_t"], "accuracy") == []
        again = Tracker(uri, "views")  # another process: reads the views from the store, writes nothing
        assert again.publish_views(["tau_s", "tau_t"], "accuracy") == []
        tags = MlflowClient(uri).get_experiment(tracker.experiment_id).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        first = json.loads(tags["mlflow.sharedViewState.autotune-selected"])
        assert json.loads(first["state"])["selectedColumns"][:3] == [
            "metrics.`selected.tau_s`", "metrics.`selected.tau_t`", "metrics.`selected.retention`"]
        assert again.publish_views(["gamma_cap"], "fidelity") == ["autotune-selected", "autotune-trials"]
        tags = MlflowClient(uri).get_experiment(tracker.experiment_id).tags
        changed = json.loads(tags["mlflow.sharedViewState.autotune-trials"])
        assert json.loads(changed["state"])["selectedColumns"] == [
            "params.`gamma_cap`", "params.`retention`", "metrics.`tune_fidelity`", "metrics.`flops_ratio`",
            "metrics.`seconds`"]
        rewritten = json.loads(tags["mlflow.sharedViewState.autotune-selected"])
        assert rewritten["createdAt"] == first["createdAt"] <= rewritten["updatedAt"]
    finally:
        if server is not None:
            stop_process_group(server)  # uvicorn too, not only the `mlflow server` launcher


def test_default_config_is_enqueued_once_and_rerun_adds_nothing(done):
    path, spec, _, _ = done
    before = {b: len(s.get_trials()) for b, s in load_studies(spec).items()}
    again = invoke("study", path, "--no-progress")
    assert again.exit_code == 0, again.output
    for budget, study in load_studies(spec).items():
        trials = study.get_trials()
        assert len(trials) == before[budget]
        defaults = [t for t in trials if t.user_attrs.get("warm_start") == "default"]
        assert len(defaults) == 1 and defaults[0].number == 0
        assert defaults[0].params == {name: getattr(spec.base, name) for name in spec.space}
        assert len(mlflow_runs(spec, "trial", study.study_name)[1]) == len(trials)
    assert len(mlflow_runs(spec, "study")[1]) == 2
    assert len(mlflow_runs(spec, "summary")[1]) == 1


def test_exported_presets_load_and_hold_the_test_split_numbers(done):
    _, spec, _, output = done
    workspace = Workspace.open(spec)
    for budget in spec.budgets:
        path = Path(spec.presets_dir) / f"svc-synthetic-b{budget:.2f}.yaml"
        preset = adatp.load_preset(path)
        assert preset.target == {"model": model_label(str(MODEL)), "dataset": "synthetic", "frames": 16,
                                 "flops_budget": budget}
        assert preset.flops_ratio <= budget
        results = preset.results
        # Recompute the test accuracy of the exported config directly with the engine.
        direct = workspace.engine.evaluate(workspace.test, preset.config)
        assert results["test_accuracy"]["value"] == pytest.approx(direct.accuracy, abs=1e-4)
        assert results["test_accuracy"]["n"] == len(workspace.test)
        low, high = results["test_accuracy"]["ci95"]
        assert low <= direct.accuracy <= high
        paired = results["paired"]
        expected = results["test_accuracy"]["value"] - results["default_accuracy"]["value"]
        assert paired["test_minus_default"] == pytest.approx(expected, abs=2e-4)
        assert paired["test_minus_vanilla"] == pytest.approx(
            results["test_accuracy"]["value"] - results["vanilla_accuracy"]["value"], abs=2e-4)
        study = load_studies(spec)[budget]
        assert preset.provenance["study"] == study.study_name
        assert preset.provenance["mlflow_run_id"] == study.user_attrs["mlflow_run_id"]
        assert study.trials[preset.provenance["trial"]].params == {
            name: getattr(preset.config, name) for name in spec.space}
        # The preset holds exactly the config its trial ran, as the trial stored it.
        ran = study.trials[preset.provenance["trial"]].user_attrs["config"]
        assert preset.config == adatp.AdaTPConfig.from_dict(ran) and preset.config.to_dict() == ran
        assert str(path) in output
    assert "test split" in output


def test_every_trial_stores_the_config_it_ran(done):
    _, spec, _, _ = done
    for study in load_studies(spec).values():
        retention = study.user_attrs[ATTR]["retention"]
        for trial in study.trials:
            assert trial.user_attrs["config"] == spec.config_for(retention, trial.params).to_dict()


@pytest.mark.parametrize("override, field", [
    ("base.positions=renumber", "base.positions"),
    ("base.score=text_sim", "base.score"),
    ("dataset.test_fraction=0.25", "test_questions"),
    ("dataset.frames=8", "frames"),
])
def test_export_refuses_an_override_that_changes_what_the_trials_ran(done, override, field):
    path, spec, _, _ = done
    before = {p.name: p.read_bytes() for p in Path(spec.presets_dir).iterdir()}
    result = invoke("export", path, override, "--no-progress")
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {field}: the trials of svc-synthetic-b0.30 ran with ")
    assert "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in Path(spec.presets_dir).iterdir()} == before  # nothing rewritten


def test_trial_config_of_an_older_trial_comes_from_the_study_not_the_spec():
    """Trials of studies created before configs were stored: rebuilt from the study's recorded base."""
    from autotune.study import trial_config

    base = adatp.AdaTPConfig(score="norm", prune_layer=0, positions="renumber")
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(ATTR, {"base": base.to_dict(), "retention": 0.3})
    distributions = {"tau_s": optuna.distributions.FloatDistribution(0.0, 1.0)}
    study.add_trial(optuna.trial.create_trial(params={"tau_s": 0.42}, distributions=distributions, value=0.5))
    config = trial_config(study, study.trials[0])
    assert config == base.replace(retention=0.3, tau_s=0.42)


def test_status_and_pareto_report_the_studies(done):
    path, spec, _, _ = done
    status = invoke("status", path)
    assert status.exit_code == 0, status.output
    assert "svc-synthetic-b0.30" in status.output and f"{N_TRIALS}/{N_TRIALS}" in status.output
    for study in load_studies(spec).values():
        pruned = [t.user_attrs["rung"] for t in study.get_trials() if t.state.name == "PRUNED"]
        if pruned:  # the status table says where pruned trials stopped
            rung = min(pruned)
            assert f"r{rung}: {pruned.count(rung)}" in status.output
            sizes = "/".join(map(str, study.user_attrs[ATTR]["rungs"]))
            assert f"stopped by the pruner after rung K, rungs of {sizes} tune questions" in status.output
    # The answer per budget: the selected thresholds and their held-out accuracy, read from the presets.
    for budget in spec.budgets:
        preset = adatp.load_preset(Path(spec.presets_dir) / f"svc-synthetic-b{budget:.2f}.yaml")
        test = preset.results["test_accuracy"]
        row = next(line for line in status.output.splitlines() if line.lstrip("│ ").startswith(f"{budget:.2f}")
                   and f"b{budget:.2f}.yaml" in line)
        assert f"{preset.config.tau_s:.3f}" in row and f"{preset.config.gamma_cap:.3f}" in row
        assert f"{test['value']:.3f} [{test['ci95'][0]:.3f}, {test['ci95'][1]:.3f}]" in row
    client, summaries = mlflow_runs(spec, "summary")
    (summary,) = summaries
    logged = len(client.get_metric_history(summary.info.run_id, "hypervolume"))
    pareto = invoke("pareto", path)
    assert pareto.exit_code == 0, pareto.output
    assert "hypervolume" in pareto.output and "on the front, of" in pareto.output
    assert len(client.get_metric_history(summary.info.run_id, "hypervolume")) == logged  # read-only by default
    assert invoke("pareto", path, "--log").exit_code == 0
    assert len(client.get_metric_history(summary.info.run_id, "hypervolume")) == logged + 1
    (summary,) = mlflow_runs(spec, "summary")[1]
    assert 0 < summary.data.metrics["hypervolume"] <= 1
    assert {a.path for a in client.list_artifacts(summary.info.run_id, "pareto")} == {
        "pareto/pareto.png", "pareto/pareto.html", "pareto/pareto_front.csv"}


@pytest.mark.parametrize("override, field", [
    ("colour=blue", "colour"),
    ("space.tau_t=[0.5, 2.0]", "space.tau_t"),
    ("budgets=[0.0, 0.5]", "budgets[0]"),
    ("budgets=[1.5]", "budgets[0]"),
    ("dataset.synthetic=null", "dataset.root"),  # the spec says root: the error names the key it used
    ("sampler.name=grid", "sampler.name"),
])
def test_bad_specs_exit_2_with_one_line_naming_the_field(tmp_path, override, field):
    path = write_spec(tmp_path)
    for command in ("study", "status", "export"):
        result = CliRunner().invoke(app, [command, str(path), override])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), lines
        assert "Traceback" not in result.output


def test_unreachable_budget_and_worker_before_study_exit_2(tmp_path):
    path = write_spec(tmp_path)
    worker = invoke("worker", path, "--no-progress")
    assert worker.exit_code == 2 and "does not exist yet" in worker.stderr
    low = invoke("study", path, "budgets=[0.1]", "--no-progress")
    assert low.exit_code == 2 and low.stderr.startswith("error: budgets[0]: 0.1 is below"), low.stderr


def test_export_without_a_feasible_trial_says_so(tmp_path):
    path = write_spec(tmp_path, budgets=[0.5])
    spec = load_spec(path)
    studies = create_studies(Workspace.open(spec))
    study = studies[0.5]
    for _ in range(2):
        trial = study.ask()
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    result = invoke("export", path, "--no-progress")
    assert result.exit_code == 1
    assert "b0.50: no feasible COMPLETE trial among 2 (COMPLETE: 0, PRUNED: 0, FAIL: 2)" in result.output
    assert not (tmp_path / "presets").exists() or not list((tmp_path / "presets").iterdir())


def _cli(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "autotune.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_sigint_then_rerun_finishes_the_plan_without_duplicate_runs(tmp_path, stop):
    path = write_spec(tmp_path, budgets=[0.3], n_trials=8, pruner={"name": "none"})
    spec = load_spec(path)
    process, lines = _watched("study", path, "--no-progress")
    _wait_for_complete(spec, 0.3, 2, lines)
    process.send_signal(stop)
    output = _finish(process, lines)
    assert process.returncode == 130, output
    assert "interrupted" in output and "Traceback" not in output
    interrupted = load_studies(spec)[0.3].get_trials()
    finished_before = {t.number for t in interrupted if counts_toward_plan(t)}
    assert 2 <= len(finished_before) < 8
    rerun = invoke("study", path, "--no-progress")
    assert rerun.exit_code == 0, rerun.output
    trials = load_studies(spec)[0.3].get_trials()
    assert sum(map(counts_toward_plan, trials)) == 8
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert all(t.user_attrs["fail_reason"] == INTERRUPTED for t in failed)
    for trial in failed:  # the thresholds the interrupted trial had drawn (all, or some if cut short) ran again
        assert any(t.user_attrs.get("retry_of") == trial.number and t.state.name in ("COMPLETE", "PRUNED")
                   and all(t.params[name] == value for name, value in trial.params.items()) for t in trials)
    _, children = mlflow_runs(spec, "trial", spec.study_name(0.3))
    numbers = [int(run.data.tags["optuna.trial_number"]) for run in children]
    assert sorted(numbers) == [t.number for t in trials]  # one run per trial, none duplicated
    states = {int(run.data.tags["optuna.trial_number"]): run.data.tags["optuna.state"] for run in children}
    assert states == {t.number: t.state.name for t in trials}


def _watched(*args) -> tuple[subprocess.Popen, list[str]]:
    """The CLI in a subprocess, its output collected line by line by a thread (read it while it runs)."""
    process = _cli(*args)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    process.reader = reader
    return process, lines


def _finish(process: subprocess.Popen, lines: list[str], timeout: float = 120) -> str:
    process.wait(timeout=timeout)
    process.reader.join(timeout=10)
    return "".join(lines)


def _wait_for_complete(spec, budget: float, count: int, lines: list[str], seconds: float = 240) -> None:
    """Until `count` trials of the budget's study are COMPLETE. The storage is read only once the command has said
    it created the studies: opening a SQLite store while another process creates its schema races."""
    deadline = time.time() + seconds
    while time.time() < deadline and not any(line.startswith("studies in ") for line in lines):
        time.sleep(0.2)
    while time.time() < deadline:
        time.sleep(0.2)
        study = load_studies(spec).get(budget)
        if study is not None and ATTR in study.user_attrs:
            if sum(t.state.name == "COMPLETE" for t in study.get_trials()) >= count:
                return


def test_sigterm_to_the_worker_parent_stops_every_worker_and_the_plan_resumes(tmp_path):
    path = write_spec(tmp_path, budgets=[0.3], n_trials=12, pruner={"name": "none"})
    spec = load_spec(path)
    process, lines = _watched("study", path, "--workers", "2", "--no-progress")
    _wait_for_complete(spec, 0.3, 2, lines)
    process.send_signal(signal.SIGTERM)
    output = _finish(process, lines)
    assert process.returncode == 130, output
    assert "Traceback" not in output
    pids = [int(pid) for pid in output.split("started 2 workers: pids ", 1)[1].split("\n", 1)[0].split()]
    for pid in pids:  # every worker stopped (and was reaped by the parent)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    trials = load_studies(spec)[0.3].get_trials()
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert all(t.user_attrs["fail_reason"] == INTERRUPTED for t in trials if t.state.name == "FAIL")
    assert 2 <= sum(map(counts_toward_plan, trials)) < 12
    rerun = invoke("study", path, "--no-progress")
    assert rerun.exit_code == 0, rerun.output
    assert sum(map(counts_toward_plan, load_studies(spec)[0.3].get_trials())) == 12


def test_ui_serves_the_spec_store(done):
    path, spec, _, _ = done
    port = free_port()
    process = _cli("ui", path, "--port", port)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_healthy(process, base)
        with urllib.request.urlopen(f"{base}/", timeout=10) as response:
            assert b"<html" in response.read().lower()
        query = urllib.parse.urlencode({"experiment_name": spec.name})
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=10) as response:
            experiment_id = yaml.safe_load(response.read())["experiment"]["experiment_id"]
        _, summaries = mlflow_runs(spec, "summary")
        query = urllib.parse.urlencode({"path": "pareto/pareto.png", "run_uuid": summaries[0].info.run_id})
        with urllib.request.urlopen(f"{base}/get-artifact?{query}", timeout=10) as response:
            assert response.read(8) == b"\x89PNG\r\n\x1a\n"
        assert experiment_id
    finally:
        process.send_signal(signal.SIGINT)  # to `autotune ui` alone, as a supervisor would send it
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    # The server's own children (uvicorn) went with it: nothing listens on the port any more.
    deadline = time.time() + 20
    while _listening(port) and time.time() < deadline:
        time.sleep(0.5)
    assert not _listening(port)
    printed = process.stdout.read()
    assert f"http://127.0.0.1:{port}" in printed  # printed once the server answered
    # ... with the runs table's link, the model-training switch on (MLflow 3.17 opens the GenAI overview otherwise).
    assert f"runs of {spec.name}: http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?workflowType=" \
           "machine_learning" in printed


@pytest.mark.parametrize("scheme", ["http", "postgresql"])
def test_unreachable_tracking_store_exits_2_in_bounded_time(tmp_path, scheme):
    port = free_port()  # nothing listens there
    uri = f"http://127.0.0.1:{port}" if scheme == "http" else f"postgresql://tuner:pw@127.0.0.1:{port}/mlflow"
    path = write_spec(tmp_path, tracking_uri=uri)
    started = time.monotonic()
    result = invoke("study", path, "--no-progress")
    elapsed = time.monotonic() - started
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip() and "Loading weights" not in line]
    assert lines[-1].startswith("error: tracking_uri: cannot reach") and "after 3 attempts" in lines[-1]
    assert "pw@" not in result.output and elapsed < 30


def test_ui_refuses_a_busy_port_and_keeps_credentials_off_the_command_line(done):
    from autotune.cli import mlflow_server_command

    path, _, _, _ = done
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = invoke("ui", path, "--port", port)
    assert result.exit_code == 2 and time.monotonic() - started < 10
    assert result.output.strip().count("\n") == 0 and f"--port {port}" in result.output
    assert "pick another with --port" in result.output
    uri = "postgresql://tuner:s3cret-pw@127.0.0.1:5432/mlflow"
    command, environment = mlflow_server_command(uri, "127.0.0.1", 5000)
    assert not any("s3cret-pw" in part for part in command)
    assert environment["MLFLOW_BACKEND_STORE_URI"] == uri


def _listening(port) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("sampler, pruner", [("random", "hyperband"), ("nsga2", "median"), ("gp", "none")])
def test_other_samplers_and_pruners_run_the_plan(tmp_path, sampler, pruner):
    path = write_spec(tmp_path, budgets=[0.5], n_trials=4,
                      sampler={"name": sampler, "seed": 3, "n_startup_trials": 2} if sampler != "random"
                      else {"name": sampler, "seed": 3},
                      pruner={"name": pruner, "n_startup_trials": 1} if pruner == "median" else {"name": pruner})
    result = invoke("study", path, "--no-progress")
    assert result.exit_code == 0, result.output
    study = load_studies(load_spec(path))[0.5]
    assert sum(map(counts_toward_plan, study.get_trials())) == 4
    assert study.user_attrs[ATTR]["sampler"]["name"] == sampler and study.user_attrs[ATTR]["sampler_seed"] == 3
    assert type(make_sampler(load_spec(path), 3)).__name__ == {"random": "RandomSampler", "nsga2": "NSGAIISampler",
                                           "gp": "GPSampler"}[sampler]


@pytest.mark.parametrize("n, rungs, factor, expected", [
    (120, 4, 2, [15, 30, 60, 120]),
    (100, 4, 2, [13, 26, 52, 100]),
    (5, 4, 2, [1, 2, 4, 5]),
    (90, 3, 3, [10, 30, 90]),
    (7, 1, 2, [7]),
])
def test_rungs_are_geometric_prefixes_ending_at_all_questions(n, rungs, factor, expected):
    assert rung_sizes(n, rungs, factor) == expected


def test_journal_file_storage_runs_the_plan(tmp_path):
    path = write_spec(tmp_path, budgets=[0.5], n_trials=3, storage=f"journal:///{tmp_path}/optuna.log")
    result = invoke("study", path, "--no-progress")
    assert result.exit_code == 0, result.output
    spec = load_spec(path)
    assert spec.storage == "journal://" + str(tmp_path / "optuna.log")
    assert (tmp_path / "optuna.log").stat().st_size > 0
    study = load_studies(spec)[0.5]
    assert sum(map(counts_toward_plan, study.get_trials())) == 3
    _, children = mlflow_runs(spec, "trial", study.study_name)
    assert len(children) == len(study.get_trials())


def test_dashboard_serves_the_studies_read_only(done):
    import json as jsonlib

    from autotune.cli import stop_process_group

    path, spec, _, _ = done
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "autotune.cli", "dashboard", str(path), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=2) as answer:
                    studies = jsonlib.loads(answer.read())["study_summaries"]
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "the dashboard did not start"
                time.sleep(0.3)
        names = {study["study_name"]: study["study_id"] for study in studies}
        assert set(names) == {spec.study_name(0.3), spec.study_name(0.5)}
        request = urllib.request.Request(f"{base}/api/studies/{names[spec.study_name(0.3)]}", method="DELETE")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code >= 400
        assert all(study is not None for study in load_studies(spec).values())  # nothing deleted
    finally:
        stop_process_group(server)


def test_mlvu_export_reports_lmms_evals_macro_next_to_accuracy(tmp_path):
    """An MLVU-layout set (7 task files; synthetic videos as clips) through study + export: the preset, the MLflow
    parent run and the export message carry lmms-eval's MLVU score (mean over the 7 task types) next to accuracy."""
    import shutil

    from autotune.data import mlvu_dev_score, synthetic
    from autotune.data.benchmarks import MLVU_TASK_TYPES

    source = synthetic.generate(tmp_path / "syn", 14, seed=30000, frames=16)
    rows = synthetic.load(source).questions
    root = tmp_path / "MLVU"
    stems = ["1_plotQA", "2_needle", "3_ego", "4_count", "5_order", "6_anomaly_reco", "7_topic_reasoning"]
    by_video = {}
    for question in rows:
        by_video.setdefault(question.video_id, question)
    for index, question in enumerate(list(by_video.values())[:14]):
        stem = stems[index % 7]
        clip = root / "video" / stem / f"{question.video_id}.mp4"
        clip.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(question.video_path, clip)
        path = root / "json" / f"{stem}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        listed = json.loads(path.read_text()) if path.exists() else []
        answer = question.options[ord(question.answer) - ord("A")]
        listed.append({"video": clip.name, "duration": 2, "question": question.question,
                       "candidates": list(question.options), "answer": answer, "question_type": stem[2:]})
        path.write_text(json.dumps(listed))
    path = spec_file(tmp_path, "mlvu", root, dataset={"name": "mlvu", "root": str(root), "frames": 16},
                     n_trials=2, budgets=[0.5])
    assert invoke("study", path, "--no-progress").exit_code == 0
    exported = invoke("export", path, "--no-progress")
    assert exported.exit_code == 0, exported.output
    spec = load_spec(path)
    preset = adatp.load_preset(Path(spec.presets_dir) / "mlvu-mlvu-b0.50.yaml")
    test = preset.results["test_accuracy"]
    workspace = Workspace.open(spec)
    direct = workspace.engine.evaluate(workspace.test, preset.config)
    score = mlvu_dev_score(workspace.test, [direct.correct[q.qid] for q in workspace.test])
    assert test["value"] == pytest.approx(score["micro"], abs=1e-4)
    assert test["macro"] == pytest.approx(score["macro"], abs=1e-4)
    assert test["macro_missing"] == score["missing"] == [
        name for name in MLVU_TASK_TYPES if name not in {q.meta["task_type"] for q in workspace.test}]
    assert preset.results["vanilla_accuracy"]["macro"] is not None
    _, (parent,) = mlflow_runs(spec, "study")
    assert parent.data.metrics["test_macro_accuracy"] == test["macro"]
    assert f"MLVU as lmms-eval scores it (mean over its 7 task types): {test['macro']:.3f}" in exported.output
