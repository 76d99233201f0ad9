"""Scale-out against the real PostgreSQL on 127.0.0.1:5432: several workers on one study, a worker killed mid-trial,
failures inside trials, an MLflow server on loopback, password hygiene, unreachable databases.

PostgreSQL comes from AUTOTUNE_PG_URL (default postgresql://postgres@127.0.0.1:5432, trust auth); each test gets
fresh databases. Without a server these tests skip, unless AUTOTUNE_REQUIRE_POSTGRES=1 (set by .ci/run) makes them
fail.
"""

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from servers import free_port
from specs import REPO, spec_file
from typer.testing import CliRunner

from autotune.cli import app, stop_process_group
from autotune.spec import load_spec
from autotune.study import Workspace, counts_toward_plan, create_studies, load_studies, run_studies

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PG = os.environ.get("AUTOTUNE_PG_URL", "postgresql://postgres@127.0.0.1:5432")
SECRET = "pw-s3cret-Zq81"


def _admin():
    import psycopg2

    connection = psycopg2.connect(f"{PG}/postgres", connect_timeout=3)
    connection.autocommit = True
    return connection


@pytest.fixture
def pg_database():
    """Factory of fresh PostgreSQL databases (dropped afterwards); returns their URLs."""
    try:
        admin = _admin()
    except Exception as error:
        if os.environ.get("AUTOTUNE_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"PostgreSQL not reachable at {PG} ({type(error).__name__}); start it or set AUTOTUNE_PG_URL "
                    "(AUTOTUNE_REQUIRE_POSTGRES=1 makes this a failure, as in CI)")
    created = []

    def make(password: str | None = None) -> str:
        name = f"autotune_{uuid.uuid4().hex[:12]}"
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        if password is None:
            return f"{PG}/{name}"
        # Trust auth ignores the password, so a URL that carries one still connects: good for leak checks.
        scheme, rest = PG.split("://", 1)
        user, host = rest.split("@", 1)
        return f"{scheme}://{user}:{password}@{host}/{name}"

    yield make
    with admin.cursor() as cursor:
        for name in created:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def write_spec(directory: Path, **changes) -> Path:
    return spec_file(directory, "scale", REPO / ".autotune" / "test-scale-data", **changes)


def child_runs(spec, study_name):
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    text = f"tags.`autotune.kind` = 'trial' and tags.`autotune.study` = '{study_name}'"
    return client.search_runs([experiment.experiment_id], filter_string=text, max_results=1000)


def _worker(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autotune.cli", "worker", str(path), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_three_workers_survive_one_killed_mid_trial(tmp_path, pg_database):
    path = write_spec(tmp_path, n_trials=14, batch_size=1, storage=pg_database(), tracking_uri=pg_database(),
                      heartbeat={"interval": 1, "grace": 3},
                      dataset={"name": "synthetic", "root": str(REPO / ".autotune" / "test-scale-data-24"),
                               "frames": 16, "synthetic": {"n_videos": 24, "seed": 30000}})
    spec = load_spec(path)
    create_studies(Workspace.open(spec))  # before any worker starts
    workers = [_worker(path) for _ in range(3)]
    pids = {process.pid: process for process in workers}
    killed_trial = None
    deadline = time.time() + 180
    # One storage for the whole poll: a new one per poll opens a connection pool each time, and at 20 polls a second
    # their connections outlive the pools long enough to exhaust PostgreSQL's 100 ("too many clients").
    study = load_studies(spec)[0.5]
    while killed_trial is None and time.time() < deadline:
        trials = study.get_trials()
        if sum(map(counts_toward_plan, trials)) >= 1:
            for trial in trials:
                pid = int(trial.user_attrs.get("worker", ":0").rsplit(":", 1)[1])
                # Mid-trial: at least one rung reported, at least one still to go (rungs of 3/6/12/24 questions).
                if trial.state.name == "RUNNING" and pid in pids and 1 <= len(trial.intermediate_values) < 3:
                    os.kill(pid, signal.SIGKILL)
                    killed_trial, killed_pid = trial.number, pid
                    break
        time.sleep(0.05)
    assert killed_trial is not None, "no running trial to kill"
    outputs = {}
    for process in workers:
        outputs[process.pid] = process.communicate(timeout=300)[0]
    assert pids[killed_pid].returncode == -signal.SIGKILL
    for pid, process in pids.items():
        if pid != killed_pid:
            assert process.returncode == 0, outputs[pid]
    trials = load_studies(spec)[0.5].get_trials()
    states = {t.number: t.state.name for t in trials}
    assert len(states) == len(trials)  # unique trial numbers
    assert sum(map(counts_toward_plan, trials)) >= 14
    # The trial the kill hit is the killed worker's only unfinished one, and it ended FAIL.
    unfinished = [t.number for t in trials if t.user_attrs.get("worker", "").endswith(f":{killed_pid}")
                  and not counts_toward_plan(t)]
    assert unfinished == [killed_trial]
    assert states[killed_trial] == "FAIL"
    assert all(state in ("COMPLETE", "PRUNED") for number, state in states.items()
               if number != killed_trial and states[number] != "FAIL")
    retried = [t for t in trials if t.user_attrs.get("retry_of") == killed_trial]
    assert len(retried) == 1 and retried[0].state.name in ("COMPLETE", "PRUNED")
    assert retried[0].params == trials[killed_trial].params
    runs = child_runs(spec, spec.study_name(0.5))
    by_number = {}
    for run in runs:
        by_number.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run)
    assert sorted(by_number) == sorted(states)
    assert all(len(found) == 1 for found in by_number.values())
    assert {n: found[0].data.tags["optuna.state"] for n, found in by_number.items()} == states
    assert by_number[killed_trial][0].data.tags["fail_reason"] == "worker died (stale heartbeat)"
    assert by_number[retried[0].number][0].data.tags["retry_of"] == str(killed_trial)


def test_exceptions_and_cuda_oom_fail_only_their_trial(tmp_path, pg_database):
    path = write_spec(tmp_path, n_trials=4, storage=pg_database(), tracking_uri=pg_database())
    spec = load_spec(path)
    workspace = Workspace.open(spec)
    studies = create_studies(workspace)
    engine = workspace.engine
    evaluate = engine.evaluate
    calls = {"n": 0}

    def flaky(questions, config, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if calls["n"] == 4:
            raise ValueError("simulated bug in a trial")
        return evaluate(questions, config, **kwargs)

    engine.evaluate = flaky
    run_studies(workspace, studies, progress=False)
    trials = load_studies(spec)[0.5].get_trials()
    failed = {t.number: t.user_attrs["fail_reason"] for t in trials if t.state.name == "FAIL"}
    assert sorted(failed.values()) == ["OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
                                       "ValueError: simulated bug in a trial"]
    assert sum(map(counts_toward_plan, trials)) == 4
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in child_runs(spec, spec.study_name(0.5))}
    for number, reason in failed.items():
        assert runs[number].data.tags["fail_reason"] == reason
        assert runs[number].info.status == "FAILED" and runs[number].data.tags["optuna.state"] == "FAIL"


def _summary(spec):
    """(trial number, state, rounded params, value) of every child run, per study: what a user sees in MLflow."""
    rows = set()
    for run in child_runs(spec, spec.study_name(0.5)):
        params = tuple(sorted((k, round(float(v), 6)) for k, v in run.data.params.items()
                              if k in ("tau_s", "tau_t", "alpha_boost", "gamma_cap")))
        rows.add((run.data.tags["optuna.trial_number"], run.data.tags["optuna.state"], params,
                  round(run.data.metrics.get("tune_accuracy", -1.0), 6)))
    return rows


def test_mlflow_server_on_loopback_shows_the_same_runs_as_the_embedded_store(tmp_path, pg_database):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", pg_database(), "--host", "127.0.0.1",
         "--port", str(port), "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "MLflow server did not start"
                time.sleep(0.5)
        embedded_dir, served_dir = tmp_path / "embedded", tmp_path / "served"
        embedded_dir.mkdir()
        served_dir.mkdir()
        embedded = write_spec(embedded_dir, pruner={"name": "successive_halving", "rungs": 2})
        served = write_spec(served_dir, pruner={"name": "successive_halving", "rungs": 2}, storage=pg_database(),
                            tracking_uri=f"http://127.0.0.1:{port}")
        for path in (embedded, served):
            result = CliRunner().invoke(app, ["study", str(path), "--no-progress"])
            assert result.exit_code == 0, result.output
        served_spec = load_spec(served)
        assert _summary(load_spec(embedded)) == _summary(served_spec)
        assert len(_summary(served_spec)) == 4
        client = MlflowClient(served_spec.tracking_uri)
        experiment = client.get_experiment_by_name("scale")
        (parent,) = client.search_runs([experiment.experiment_id], "tags.`autotune.kind` = 'study'")
        assert {"trials.csv", "history.png", "thresholds.png"} <= {a.path for a in client.list_artifacts(
            parent.info.run_id)}
        assert (tmp_path / "server-artifacts").is_dir()  # artifacts went through the server
    finally:
        stop_process_group(server)  # uvicorn and the job runner too, not only the `mlflow server` launcher


def test_no_password_reaches_mlflow_or_logs(tmp_path, pg_database):
    path = write_spec(tmp_path, n_trials=3, storage=pg_database(SECRET), tracking_uri=pg_database(SECRET),
                      pruner={"name": "successive_halving", "rungs": 2})
    outputs = []
    for command in (["study", str(path), "--no-progress"], ["status", str(path)],
                    ["export", str(path), "--no-progress"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert SECRET not in "".join(outputs)
    spec = load_spec(path)
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name("scale")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert len(runs) >= 5  # parent, summary, 3 trials
    seen = 0
    for run in runs:
        assert SECRET not in repr(run.data.params) + repr(run.data.tags)
        download = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id)))
        for file in download.rglob("*"):
            if file.is_file():
                seen += 1
                assert SECRET.encode() not in file.read_bytes(), file
    assert seen >= 4  # trials.csv, the per-budget plots, preset, the summary's Pareto plots
    assert "postgresql://postgres:***@" in repr(runs[-1].data.params) + "".join(
        repr(r.data.params) for r in runs)
    for study in load_studies(spec).values():
        assert SECRET not in repr(study.user_attrs) + repr(study._storage.get_study_system_attrs(study._study_id))


def test_unreachable_database_or_missing_study_exit_2(tmp_path, pg_database):
    unreachable = write_spec(tmp_path, storage="postgresql://postgres@127.0.0.1:1/nowhere")
    started = time.time()
    result = CliRunner().invoke(app, ["status", str(unreachable)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: storage: cannot reach postgresql://postgres@127.0.0.1:1/nowhere after 5 attempts:"), lines
    assert time.time() - started < 60
    # A worker keeps trying for heartbeat.outage seconds (it may have been started during an outage), saying so once.
    started = time.time()
    result = CliRunner().invoke(app, ["worker", str(unreachable), "--no-progress", "heartbeat.outage=12"])
    waited = time.time() - started
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("storage: cannot reach postgresql://postgres@127.0.0.1:1/nowhere (") and lines[
        0].endswith("); trying again for up to 12 s (heartbeat.outage)"), lines
    assert lines[1].startswith("error: storage: cannot reach postgresql://postgres@127.0.0.1:1/nowhere after "), lines
    attempts, over = lines[1].split(" after ")[1].split(" attempts over ")
    assert int(attempts) >= 5 and 12 <= float(over.split(" s:")[0]) <= 12 + 8 and 12 <= waited < 60, lines
    # ... but not for what no outage says: a database that does not exist fails as fast as for any command.
    no_database = write_spec(tmp_path, storage=pg_database().rsplit("/", 1)[0] + "/autotune_no_such_database")
    started = time.time()
    result = CliRunner().invoke(app, ["worker", str(no_database), "--no-progress"])
    assert result.exit_code == 2 and time.time() - started < 30
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "after 5 attempts: " in lines[0], lines
    assert lines[0].endswith('database "autotune_no_such_database" does not exist'), lines
    missing = write_spec(tmp_path, storage=pg_database())
    result = CliRunner().invoke(app, ["worker", str(missing), "--no-progress"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: study scale-synthetic-b0.50 does not exist yet: create it with "
                                     f"`autotune study {missing}` before starting workers")
    assert optuna.get_all_study_names(load_spec(missing).storage) == []
