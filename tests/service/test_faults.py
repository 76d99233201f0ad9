"""Faults a fleet meets, injected for real: PostgreSQL restarted and stopped under running workers, a worker
SIGKILLed during the last trials, SIGTERM at random moments while `autotune study` creates its studies.

The outage tests run their own PostgreSQL (tests/pgcluster.py: the real server binaries on a private port), so
stopping it does not disturb the shared server the other tests use. Without the binaries they skip, unless
AUTOTUNE_REQUIRE_POSTGRES=1 (set by .ci/run) makes them fail.
"""

import concurrent.futures
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from pgcluster import PrivateCluster
from specs import REPO, spec_file
from typer.testing import CliRunner

from autotune.cli import app
from autotune.spec import load_spec
from autotune.study import ATTR, Workspace, counts_toward_plan, create_studies, load_studies

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DATA_24 = {"name": "synthetic", "root": str(REPO / ".autotune" / "test-scale-data-24"), "frames": 16,
           "synthetic": {"n_videos": 24, "seed": 30000}}


@pytest.fixture(scope="module")
def cluster():
    try:
        server = PrivateCluster()
    except (FileNotFoundError, RuntimeError) as error:
        if os.environ.get("AUTOTUNE_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"no private PostgreSQL server: {error}")
    yield server
    server.remove()


def _database(cluster) -> str:
    return cluster.create_database(f"autotune_{uuid.uuid4().hex[:12]}")


def _worker(path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autotune.cli", "worker", str(path), "--no-progress", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.1):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _counted(path) -> int:
    # A fresh storage per poll would leak connections through outages; these polls are few and seconds apart.
    study = load_studies(load_spec(path))[0.5]
    count = sum(map(counts_toward_plan, study.get_trials(deepcopy=False)))
    study._storage._backend.engine.dispose()
    return count


def _child_runs(spec, study_name):
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    text = f"tags.`autotune.kind` = 'trial' and tags.`autotune.study` = '{study_name}'"
    return client.search_runs([experiment.experiment_id], filter_string=text, max_results=1000)


def _runs_match_trials(spec, trials) -> None:
    """Exactly one child run per trial, carrying the trial's final state."""
    by_number = {}
    for run in _child_runs(spec, spec.study_name(0.5)):
        by_number.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run)
    assert sorted(by_number) == sorted(trial.number for trial in trials)
    assert all(len(runs) == 1 for runs in by_number.values())
    assert {n: runs[0].data.tags["optuna.state"] for n, runs in by_number.items()} == {
        trial.number: trial.state.name for trial in trials}


def _rerun_once(spec, number: int):
    """Trial `number` is FAIL for a stale heartbeat and was run again exactly once to its end; nothing is left open,
    the plan is counted and the MLflow runs match the trials. Returns (the failed trial, its retry)."""
    trials = load_studies(spec)[0.5].get_trials()
    by_number = {trial.number: trial for trial in trials}
    assert by_number[number].state.name == "FAIL"
    assert by_number[number].user_attrs["fail_reason"] == "worker died (stale heartbeat)"
    retried = [trial for trial in trials if trial.user_attrs.get("retry_of") == number]
    assert len(retried) == 1 and retried[0].state.name in ("COMPLETE", "PRUNED")
    assert not [trial for trial in trials if trial.state.name in ("RUNNING", "WAITING")]
    assert sum(map(counts_toward_plan, trials)) >= spec.n_trials
    _runs_match_trials(spec, trials)
    return by_number[number], retried[0]


def test_workers_ride_out_a_postgres_restart_and_a_30_s_stop(tmp_path, cluster):
    path = spec_file(tmp_path, "faults", REPO / ".autotune" / "unused", n_trials=14, batch_size=1,
                     storage=_database(cluster), tracking_uri=_database(cluster), dataset=DATA_24,
                     heartbeat={"interval": 1, "grace": 6, "outage": 120})
    spec = load_spec(path)
    create_studies(Workspace.open(spec))
    workers = [_worker(path), _worker(path)]
    try:
        _wait_until(lambda: _counted(path) >= 2, 180, "2 trials before the restart")
        assert all(worker.poll() is None for worker in workers)
        cluster.restart(down_s=5)
        before = _counted(path)
        _wait_until(lambda: _counted(path) >= before + 2, 180, "2 more trials after the restart")
        assert all(worker.poll() is None for worker in workers), "the plan ended before the 30 s stop"
        cluster.stop()
        workers.append(_worker(path))  # a replacement started during the outage waits for the database
        time.sleep(30)
        cluster.start()
        outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output
        assert "Traceback" not in output and "error:" not in output, output
    for output in outputs[:2]:
        assert "storage: database unreachable" in output and "storage: database back after" in output, output
    waited = [line for line in outputs[2].splitlines() if "trying again for up to 120 s (heartbeat.outage)" in line]
    assert len(waited) == 1 and waited[0].startswith("storage: cannot reach postgresql://"), outputs[2]
    downtimes = [float(line.split("database back after ")[1].split(" s")[0]) for output in outputs
                 for line in output.splitlines() if "database back after" in line]
    assert max(downtimes) >= 25  # the 30 s stop was ridden out, not dodged
    trials = load_studies(spec)[0.5].get_trials()
    print(f"\nfaults: restart 5 s + stop 30 s, 2 workers: outages seen {sorted(downtimes)} s, "
          f"{len(trials)} trials, states {sorted({t.state.name for t in trials})}")
    assert sum(map(counts_toward_plan, trials)) >= 14
    # Nothing failed, nothing was re-run: no live worker's trial was taken for a dead one's.
    assert {trial.state.name for trial in trials} <= {"COMPLETE", "PRUNED"}, [(t.number, t.state) for t in trials]
    assert not [trial for trial in trials if "retry_of" in trial.user_attrs]
    _runs_match_trials(spec, trials)


def test_a_longer_outage_ends_the_worker_in_one_line_and_its_trial_is_run_again(tmp_path, cluster):
    path = spec_file(tmp_path, "faults", REPO / ".autotune" / "unused", n_trials=3, batch_size=1,
                     storage=_database(cluster), tracking_uri=_database(cluster), dataset=DATA_24,
                     heartbeat={"interval": 1, "grace": 3, "outage": 6})
    spec = load_spec(path)
    create_studies(Workspace.open(spec))
    worker = _worker(path)

    def running_trial():
        study = load_studies(spec)[0.5]
        found = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING" and t.intermediate_values]
        study._storage._backend.engine.dispose()
        return found[0] if found else None

    try:
        hit = _wait_until(running_trial, 180, "a running trial", poll_s=0.05)
        cluster.stop()
        stopped = time.time()
        output = worker.communicate(timeout=120)[0]
        ended_after = time.time() - stopped
    finally:
        worker.kill()
        cluster.start()
    assert worker.returncode == 2, output
    error_lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "Traceback" not in output, output
    assert error_lines[0].startswith("error: storage: the database has been unreachable for "), error_lines
    assert "longer than heartbeat.outage (6 s)" in error_lines[0]
    assert f"trial {hit.number} stays RUNNING" in error_lines[0]
    assert 6 <= ended_after < 60
    print(f"\nfaults: outage > heartbeat.outage (6 s): worker exited 2 after {ended_after:.1f} s")
    # `status` flags the dead worker's trial once its heartbeat is stale.
    time.sleep(spec.heartbeat.grace + 1)
    result = CliRunner().invoke(app, ["status", str(path)])
    assert result.exit_code == 0, result.output
    assert "(1 stale)" in result.output
    assert f"trial(s) {hit.number} RUNNING with a worker silent for more than heartbeat.grace" in result.output
    # The next worker fails it (with the reason, in Optuna too) and runs its thresholds again.
    rescue = _worker(path)
    output = rescue.communicate(timeout=300)[0]
    assert rescue.returncode == 0, output
    original, retry = _rerun_once(spec, hit.number)
    assert retry.params == original.params


def test_a_stale_query_answered_after_an_outage_fails_no_trial(tmp_path, cluster, monkeypatch):
    """The race CI met: a worker asks which trials are stale, the database goes down under the query, the query is
    retried and answered the moment the database returns, when every live worker's heartbeat is still old."""
    import optuna

    from autotune import storage as storage_module

    monkeypatch.setattr(storage_module, "STALE_JUDGE_MARGIN_S", 0.0)  # judge 1 s (one interval) after connecting
    storage = storage_module.storage_for(_database(cluster), heartbeat_interval=1, grace_period=2, outage_s=60)
    study = optuna.create_study(storage=storage, study_name="race")
    trial = study.ask()
    backend = storage_module.backend_of(storage)
    backend.record_heartbeat(trial._trial_id)
    time.sleep(1.2)
    assert storage_module.OUTAGE.may_judge_stale() and backend._get_stale_trial_ids(study._study_id) == []
    answers = []
    cluster.stop()
    try:
        judge = threading.Thread(target=lambda: answers.append(backend._get_stale_trial_ids(study._study_id)))
        judge.start()
        time.sleep(4)  # past the 2 s grace: the heartbeat in the database is old when the query is answered
    finally:
        cluster.start()
    judge.join(timeout=60)
    assert answers == [[]]  # the answer given just after the outage is dropped, not acted on
    assert backend.get_trial(trial._trial_id).state.name == "RUNNING"
    # Once connected for an interval, a trial that is still silent is judged stale, with its reason.
    time.sleep(1.2)
    assert backend._get_stale_trial_ids(study._study_id) == [trial._trial_id]
    assert backend.get_trial(trial._trial_id).user_attrs["fail_reason"] == "worker died (stale heartbeat)"
    backend.engine.dispose()


def test_a_dead_retry_is_rerun_by_a_trial_whose_retry_of_names_it(tmp_path, cluster, monkeypatch):
    """The chain bench/soak.py met: a trial interrupted (SIGTERM) is queued again with retry_of 0; that retry's worker
    is SIGKILLed, and the stale-trial pass re-runs it. The new trial's retry_of must name the dead retry (1), not the
    first trial (Optuna's callback copied the dead trial's user attributes, retry_of 0 included: by retry_of, trial 1
    looked never re-run and trial 0 re-run twice), and it starts without the dead trial's outcome (fail_reason, rung,
    MLflow run id); the warm-start mark and the thresholds carry over. A retry that dies again is not re-run (once)."""
    import optuna

    from autotune import storage as storage_module

    monkeypatch.setattr(storage_module, "STALE_JUDGE_MARGIN_S", 0.0)  # judge 1 s (one interval) after connecting
    storage = storage_module.storage_for(_database(cluster), heartbeat_interval=1, grace_period=2, outage_s=60)
    study = optuna.create_study(storage=storage, study_name="chain")
    first = study.ask()
    x = first.suggest_float("x", 0.0, 1.0)
    first.set_user_attr("fail_reason", "interrupted")
    study.tell(first, state=TrialState.FAIL)
    study.enqueue_trial({"x": x}, user_attrs={"retry_of": first.number, "warm_start": "default"})  # as on SIGTERM
    backend = storage_module.backend_of(storage)

    def run_and_die() -> optuna.Trial:
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        for key, value in {"worker": "gone:1", "mlflow_run_id": "run-of-the-dead", "rung": 0}.items():
            trial.set_user_attr(key, value)
        trial.report(0.5, 8)
        backend.record_heartbeat(trial._trial_id)
        time.sleep(3.5)  # silent past the 2 s grace: its worker died
        optuna.storages.fail_stale_trials(study)
        return trial

    second = run_and_die()
    trials = study.get_trials(deepcopy=False)
    assert trials[second.number].state == TrialState.FAIL
    assert trials[second.number].user_attrs["fail_reason"] == storage_module.STALE_REASON
    (retry,) = [trial for trial in trials if trial.state == TrialState.WAITING]
    assert retry.user_attrs == {"retry_of": second.number, "warm_start": "default"}
    assert retry.params == {"x": x}
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(retry) == [second.number]
    third = run_and_die()
    assert third.number == retry.number
    assert not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))  # max_retry=1: re-run once
    backend.engine.dispose()


def test_a_worker_paused_past_the_grace_carries_on_when_its_trial_was_taken(tmp_path, cluster):
    """SIGSTOP one of two workers mid-trial until the other fails that trial as stale, then SIGCONT: the paused
    worker finds its trial failed, says so in one line and goes on; the trial's thresholds run again."""
    path = spec_file(tmp_path, "faults", REPO / ".autotune" / "unused", n_trials=12, batch_size=1,
                     storage=_database(cluster), tracking_uri=_database(cluster), dataset=DATA_24,
                     heartbeat={"interval": 1, "grace": 3, "outage": 60})
    spec = load_spec(path)
    create_studies(Workspace.open(spec))
    workers = [_worker(path), _worker(path)]
    paused = workers[0]
    study = load_studies(spec)[0.5]

    def trial_of_paused():
        assert all(worker.poll() is None for worker in workers), [w.communicate()[0] for w in workers]
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("worker", "").endswith(f":{paused.pid}") and "mlflow_run_id" in trial.user_attrs:
                return trial
        return None

    def failed(number):
        trial = study.get_trials(deepcopy=False)[number]
        return trial.state.name == "FAIL"

    taken = None
    try:
        for _ in range(3):  # the pause may land in a write, whose row lock holds the other worker until it resumes
            trial = _wait_until(trial_of_paused, 240, "a trial running on the worker to pause", poll_s=0.02)
            paused.send_signal(signal.SIGSTOP)
            try:
                if study.get_trials(deepcopy=False)[trial.number].state.name == "RUNNING":
                    _wait_until(lambda number=trial.number: failed(number), 30, "the paused trial to be failed")
                    taken = trial
            except AssertionError:
                pass
            finally:
                paused.send_signal(signal.SIGCONT)
            if taken is not None:
                break
        outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert taken is not None, "no pause landed outside a database write in 3 tries"
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output
        assert "Traceback" not in output, output
    assert (f"trial {taken.number} was failed as stale by another worker while it ran here (this worker was silent "
            f"for more than heartbeat.grace, 3 s); its thresholds are queued again") in outputs[0], outputs[0]
    original, retry = _rerun_once(spec, taken.number)
    assert retry.params == original.params
    run = next(run for run in _child_runs(spec, spec.study_name(0.5))
               if run.data.tags["optuna.trial_number"] == str(taken.number))
    assert run.data.tags["fail_reason"] == "worker died (stale heartbeat)"


def test_last_worker_waits_out_the_grace_and_reruns_a_trial_killed_at_the_end(tmp_path, cluster):
    # The kill lands with at most 2 trials to go; a grace of 40 s outlasts them even on a loaded machine, so the
    # survivor always counts the plan while the killed trial is still RUNNING, and has to wait it out.
    path = spec_file(tmp_path, "faults", REPO / ".autotune" / "unused", n_trials=6, batch_size=1,
                     storage=_database(cluster), tracking_uri=_database(cluster), dataset=DATA_24,
                     heartbeat={"interval": 1, "grace": 40, "outage": 60})
    spec = load_spec(path)
    create_studies(Workspace.open(spec))
    workers = [_worker(path), _worker(path)]
    pids = {worker.pid: worker for worker in workers}
    study = load_studies(spec)[0.5]

    def last_trial_running():
        for worker in workers:
            assert worker.poll() is None, worker.communicate()[0]  # both alive until the kill
        trials = study.get_trials(deepcopy=False)
        if sum(map(counts_toward_plan, trials)) < spec.n_trials - 2:
            return None
        for trial in trials:  # one of the last trials, still running
            pid = int(trial.user_attrs.get("worker", ":0").rsplit(":", 1)[1])
            if trial.state.name == "RUNNING" and pid in pids:
                return trial, pid
        return None

    try:
        killed, pid = _wait_until(last_trial_running, 240, "a trial running at the end", poll_s=0.02)
        os.kill(pid, signal.SIGKILL)
        survivor = next(worker for worker in workers if worker.pid != pid)
        output = survivor.communicate(timeout=300)[0]
    finally:
        for worker in workers:
            worker.kill()
    assert survivor.returncode == 0, output
    assert f"waiting for RUNNING trial(s) {killed.number} " in output, output
    _rerun_once(spec, killed.number)


def test_sigterm_at_ten_random_moments_of_study_creation_then_a_rerun_completes(tmp_path):
    """Embedded stores (SQLite for Optuna and MLflow), 2 budgets; a signal anywhere, then the same command again."""
    rng = random.Random(2_3)
    command = [sys.executable, "-m", "autotune.entry", "study"]
    changes = {"n_trials": 1, "budgets": [0.5, 0.7]}
    # How long one uninterrupted run takes: the signals land anywhere in it, start-up and creation included.
    base = tmp_path / "base"
    base.mkdir()
    started = time.time()
    result = subprocess.run([*command, str(spec_file(base, "sigterm", REPO / ".autotune" / "test-scale-data",
                                                    **changes)), "--no-progress"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    duration = time.time() - started
    moments = [rng.uniform(0.0, 0.75 * duration) for _ in range(10)]  # start-up and creation: most of a 1-trial run

    def cycle(index: int) -> tuple[float, int]:
        directory = tmp_path / f"cycle{index}"
        directory.mkdir()
        path = spec_file(directory, "sigterm", REPO / ".autotune" / "test-scale-data", **changes)
        process = subprocess.Popen([*command, str(path), "--no-progress"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        moment = moments[index]
        try:
            process.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode in (0, 130), (moment, process.returncode, stderr)
        assert "Traceback" not in stderr, stderr
        rerun = subprocess.run([*command, str(path), "--no-progress"], capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, (moment, rerun.stderr)
        spec = load_spec(path)
        for budget, study in load_studies(spec).items():
            trials = study.get_trials()
            defaults = [trial for trial in trials if trial.user_attrs.get("warm_start") == "default"]
            assert len(defaults) == 1, (moment, budget, [(t.number, t.state.name) for t in trials])
            assert sum(map(counts_toward_plan, trials)) == 1
            assert not [trial for trial in trials if trial.state.name in ("RUNNING", "WAITING")]
            assert study.user_attrs[ATTR]["budget"] == budget
        with sqlite3.connect(spec.tracking_uri.removeprefix("sqlite:///")) as store:
            assert store.execute("select count(*) from alembic_version").fetchone()[0] == 1
        client = MlflowClient(spec.tracking_uri)
        experiment = client.get_experiment_by_name("sigterm")
        parents = client.search_runs([experiment.experiment_id], "tags.`autotune.kind` = 'study'")
        assert sorted(run.data.tags["autotune.budget"] for run in parents) == ["0.50", "0.70"]
        assert all(run.data.params.get("retention") for run in parents)
        return round(moment, 1), process.returncode

    # Two cycles at a time (each its own stores): the same ten faults in about half the wall time. A neighbour slows
    # each run down, so a signal lands relatively earlier in it; the moments are still spread over start-up and
    # creation.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(cycle, range(10)))
    assert sum(code == 130 for _, code in outcomes) >= 5, outcomes  # most signals landed before the end
    print(f"\nfaults: SIGTERM (moment s, exit) {outcomes} of a {duration:.1f} s run; every rerun completed")


def test_a_half_built_mlflow_store_is_moved_aside_and_built_again(tmp_path):
    from autotune.tracking import Tracker, build_sqlite_store

    store = tmp_path / "mlflow.db"
    uri = f"sqlite:///{store}"
    build_sqlite_store(uri)
    with sqlite3.connect(store) as connection:
        tables = {row[0] for row in connection.execute("select name from sqlite_master where type = 'table'")}
        assert {"experiments", "runs", "alembic_version"} <= tables
        # What an interrupted first run of MLflow's schema build left: tables, but no version stamp.
        connection.execute("drop table alembic_version")
    build_sqlite_store(uri)
    (aside,) = tmp_path.glob("mlflow.db.incomplete-*")
    with sqlite3.connect(store) as connection:
        assert connection.execute("select count(*) from alembic_version").fetchone()[0] == 1
    tracker = Tracker(uri, "rebuilt", str(tmp_path / "artifacts"))
    run_id = tracker.study_run("s", params={"a": 1}, tags={})
    assert tracker.client.get_run(run_id).data.params == {"a": "1"}
    assert not list(tmp_path.glob(".mlflow.db.building-*"))
    assert aside.stat().st_size > 0


def test_a_study_run_left_without_params_gets_them_when_creation_is_rerun(tmp_path):
    from autotune.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "resume", str(tmp_path / "artifacts"))
    # An interrupted creation: the parent run exists (found by its tags) but its params were never logged.
    bare = tracker.client.create_run(tracker.experiment_id, run_name="s",
                                     tags={"autotune.kind": "study", "autotune.study": "s"}).info.run_id
    assert tracker.study_run("s", params={"retention": 0.25, "spec": {"n_trials": 4}}, tags={}) == bare
    assert tracker.client.get_run(bare).data.params == {"retention": "0.25", "spec.n_trials": "4"}
