"""Soak: a seeded chaos run of the tuning service on a real PostgreSQL and a real MLflow server, then an audit of
what the stores hold.

Setup: a private PostgreSQL cluster (tests/pgcluster.py: initdb + pg_ctl on a free port, so it can be restarted)
holding the Optuna database and the MLflow server's backend store (`--mlflow-backend sqlite` gives the server its own
SQLite file instead); `mlflow server` on 127.0.0.1 with an artifacts directory; a 3-budget spec on the shipped tiny
model (assets/tiny-llava-ov-synthetic) and a small synthetic set. `autotune study SPEC` creates the studies and
then runs trials itself (the first machine of a fleet); once every study exists, `autotune worker SPEC` processes
join until `--workers` run. Heartbeat interval 2 s, grace 8 s, outage limit 120 s (longer than any restart here).

Chaos, for `--minutes` from the moment all workers were started, seeded by `--seed` (one random stream per kind of
fault, so the schedule does not depend on timing): every `--kill-every A B` s a random live worker gets SIGKILL or
SIGTERM (even odds) and a replacement `autotune worker` starts at once; every `--db-every A B` s (start to start)
PostgreSQL is stopped (`pg_ctl stop -m fast`) for `--db-down A B` s and started again; once, at a random moment in
the middle of the window, the MLflow server is stopped and started again on the same port. The two restarts never
overlap (one waits for the other). Injection stops when the window ends or when the study ends (a worker exits 0:
the plan is done), whichever comes first. Then no more faults: the remaining workers finish (a worker that exits
non-zero on its own is replaced, so the plan completes), `autotune export` and `autotune status` run, the stores are
audited, and both servers are stopped cleanly.

Audit, from the stores themselves (Optuna through its API on the PostgreSQL URL, MLflow through MlflowClient on the
server): every budget has n_trials COMPLETE or PRUNED trials; every FAIL is re-run exactly once (never: lost; more:
duplicated), the re-run found by Optuna's retry history (a stale trial's retry) or else by `retry_of` (an
interrupted trial's); the re-run carries the failed trial's thresholds and its `retry_of` names that trial (else:
mislinked); the overshoot of n_trials is within what concurrent workers and retries explain; nothing RUNNING or
WAITING (stuck); no trial failed as stale whose worker was alive (false stale); exactly one MLflow child run per
trial with the trial's state, none for a trial that does not exist (orphans), none left RUNNING; `autotune export`
writes a preset per budget and `autotune status` shows the same selected trial and tune value; worker exit codes are
0, 130/143 (SIGTERM) or -9/137 (SIGKILL) only (a replacement that starts while a server is down waits for it, for up
to `heartbeat.outage` seconds; how many did is counted).

Writes bench/results/soak.json (`--out`) and prints one line per injected event, one progress line a minute and a
table at the end. Exit code 0 when every check passes, 1 otherwise.

The default set (128 synthetic videos of 96 frames, 3 x 100 trials) is sized so that on a 2-core machine the plan
outlasts the 20-minute window (the faults fill it); the rest of the plan then finishes without faults.

    .venv/bin/python bench/soak.py --minutes 20 --seed 0          # the full run, ~30 min
    .venv/bin/python bench/soak.py --minutes 2 --trials-per-budget 8 --kill-every 15 25 --db-every 25 40 \
        --db-down 3 6 --videos 64 --frames 64                     # the CI version (tests/service/test_soak.py)
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The service tests' harness (private PostgreSQL, free ports, spec files) from tests/; the repository first, so its
# adatp/ and autotune/ packages win over the test rooms of the same names (tests/adatp, tests/autotune).
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from pgcluster import PrivateCluster, server_bindir  # noqa: E402
from servers import free_port  # noqa: E402
from specs import spec_file  # noqa: E402

RESULTS = REPO / "bench" / "results"
BUDGETS = (0.4, 0.55, 0.7)
HEARTBEAT = {"interval": 2, "grace": 8, "outage": 120}
STALE_REASON = "worker died (stale heartbeat)"
INTERRUPTED_PREFIX = "interrupted"
# Popen return codes we accept per signal sent: -N is death by signal N, 128+N the same through a shell.
ALLOWED_CODES = {None: {0}, "SIGTERM": {0, 130, 143}, "SIGKILL": {0, -9, 137}}


# -- options and output -------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="chaos window (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials-per-budget", type=int, default=100)
    parser.add_argument("--kill-every", type=float, nargs=2, default=(30.0, 90.0), metavar=("A", "B"))
    parser.add_argument("--db-every", type=float, nargs=2, default=(60.0, 120.0), metavar=("A", "B"))
    parser.add_argument("--db-down", type=float, nargs=2, default=(5.0, 20.0), metavar=("A", "B"))
    parser.add_argument("--videos", type=int, default=128, help="synthetic videos (2 questions each, half tune)")
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--mlflow-backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--drain-minutes", type=float, default=15.0, help="limit for the finish after the window")
    parser.add_argument("--out", default=str(RESULTS / "soak.json"))
    parser.add_argument("--workdir", default=None, help="kept afterwards (default: a temporary directory, removed "
                                                        "when every check passed)")
    return parser.parse_args(argv)


class Log:
    """Timestamped progress lines (seconds since the start of the run) and the list of injected events."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.events: list[dict] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def line(self, text: str) -> None:
        with self._lock:
            print(f"[{self.now():7.1f} s] {text}", flush=True)

    def event(self, kind: str, text: str, **fields) -> None:
        with self._lock:
            self.events.append({"t_s": round(self.now(), 1), "event": kind, **fields})
        self.line(f"{kind}: {text}")


# -- servers --------------------------------------------------------------------------------------------------------
class MlflowServer:
    """`mlflow server` on 127.0.0.1 in its own process group (uvicorn and MLflow's job runner are its children)."""

    def __init__(self, backend_uri: str, artifacts: Path, log: Path) -> None:
        self.backend_uri, self.artifacts, self.log_path = backend_uri, artifacts, log
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> None:
        from autotune.cli import mlflow_server_command

        command, environment = mlflow_server_command(self.backend_uri, "127.0.0.1", self.port)
        command += ["--artifacts-destination", str(self.artifacts)]
        with self.log_path.open("a") as output:
            self.process = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"MLflow server did not answer /health (exit {self.process.poll()}); see {self.log_path}")

    def stop(self) -> None:
        from autotune.cli import stop_process_group

        if self.process is not None and self.process.poll() is None:
            stop_process_group(self.process)


# -- workers --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Worker:
    index: int
    command: str                 # "study" (creates the studies, then runs trials) or "worker"
    process: subprocess.Popen
    log: Path
    started_s: float = 0.0       # on the run's clock
    signal: str | None = None    # what we sent it
    code: int | None = None      # its exit code once reaped
    ended_s: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


def autotune_command() -> list[str]:
    """The installed `autotune` console script beside this interpreter, else its entry module."""
    script = Path(sys.executable).with_name("autotune")
    return [str(script)] if script.exists() else [sys.executable, "-m", "autotune.entry"]


class Fleet:
    """The worker processes: started, signalled, reaped; every one kept for the audit."""

    def __init__(self, spec_path: Path, logs: Path, log: Log) -> None:
        self.spec_path, self.logs, self.log = spec_path, logs, log
        self.workers: list[Worker] = []
        self.peak = 0  # most worker processes alive at once: what bounds the overshoot of n_trials
        # One BLAS thread each: 4 workers on a few cores only slow each other down with more.
        self.environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def start(self, command: str = "worker") -> Worker:
        index = len(self.workers)
        path = self.logs / f"w{index:02d}-{command}.log"
        with path.open("w") as output:
            process = subprocess.Popen([*autotune_command(), command, str(self.spec_path), "--no-progress"],
                                       stdout=output, stderr=subprocess.STDOUT, env=self.environment,
                                       start_new_session=True)  # signals reach only the process we aim at
        worker = Worker(index, command, process, path, started_s=self.log.now())
        self.workers.append(worker)
        self.peak = max(self.peak, len(self.running()))
        return worker

    def active(self) -> list[Worker]:
        """Running and not signalled by us: the workers that count toward the fleet's size."""
        return [w for w in self.workers if w.code is None and w.signal is None and w.process.poll() is None]

    def running(self) -> list[Worker]:
        return [w for w in self.workers if w.code is None]

    def send(self, worker: Worker, name: str) -> None:
        worker.signal = name
        try:
            os.kill(worker.pid, getattr(signal, name))
        except ProcessLookupError:
            pass  # it ended on its own a moment ago; reap() records how

    def reap(self) -> list[Worker]:
        """Workers that exited since the last call, with their codes recorded."""
        done = []
        for worker in self.running():
            code = worker.process.poll()
            if code is not None:
                worker.code, worker.ended_s = code, self.log.now()
                done.append(worker)
                self.log.line(f"worker {worker.index} ({worker.command}, pid {worker.pid}) exited {code}"
                              + (f" after {worker.signal}" if worker.signal else ""))
        return done

    def kill_all(self) -> list[Worker]:
        """End anything still running (the drain timed out): those are stuck workers."""
        left = self.running()
        for worker in left:
            worker.signal = worker.signal or "SIGKILL (drain timeout)"
            worker.process.kill()
            worker.code, worker.ended_s = worker.process.wait(), self.log.now()
        return left


# -- watching the study ---------------------------------------------------------------------------------------------
class Census:
    """Trial counts per study straight from the Optuna database; None while the database is down."""

    def __init__(self, url: str, names: list[str]) -> None:
        self.url, self.names = url, names
        self.storage = None

    def _storage(self):
        import optuna

        if self.storage is None:
            self.storage = optuna.storages.RDBStorage(
                self.url, skip_table_creation=True,
                engine_kwargs={"pool_pre_ping": True, "connect_args": {"connect_timeout": 2}})
        return self.storage

    def created(self) -> bool:
        """Every study exists and is marked created (its `autotune` attribute is written last)."""
        try:
            storage = self._storage()
            known = {study.study_name: study for study in storage.get_all_studies()}
            return all(name in known and "autotune" in known[name].user_attrs for name in self.names)
        except Exception:
            return False

    def counts(self) -> dict[str, collections.Counter] | None:
        try:
            storage = self._storage()
            result = {}
            for name in self.names:
                trials = storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)
                result[name] = collections.Counter(trial.state.name for trial in trials)
            return result
        except Exception:
            return None


def progress_text(counts: dict[str, collections.Counter] | None, planned: int) -> str:
    if counts is None:
        return "trials: database unreachable"
    parts = []
    for name, states in counts.items():
        done = states["COMPLETE"] + states["PRUNED"]
        parts.append(f"{name.rsplit('-', 1)[-1]} {done}/{planned} (C {states['COMPLETE']} P {states['PRUNED']} "
                     f"F {states['FAIL']} R {states['RUNNING']} W {states['WAITING']})")
    return "trials: " + " | ".join(parts)


# -- chaos ----------------------------------------------------------------------------------------------------------
class Chaos:
    """The seeded fault schedule and its injection; the restarts run in a thread so kills go on meanwhile."""

    def __init__(self, options: argparse.Namespace, log: Log, fleet: Fleet, cluster: PrivateCluster,
                 mlflow: MlflowServer) -> None:
        self.options, self.log, self.fleet, self.cluster, self.mlflow = options, log, fleet, cluster, mlflow
        # One stream per kind of fault: the schedule of each is the same whatever the timing of the others.
        self.kill_rng = random.Random(f"{options.seed}:kill")
        self.db_rng = random.Random(f"{options.seed}:db")
        window = options.minutes * 60
        self.start = log.now()
        self.end = self.start + window
        self.next_kill = self.start + self.kill_rng.uniform(*options.kill_every)
        self.next_db = self.start + self.db_rng.uniform(*options.db_every)
        self.mlflow_at = self.start + random.Random(f"{options.seed}:mlflow").uniform(0.3, 0.6) * window
        self.mlflow_pending = True
        self.restart: threading.Thread | None = None
        self.errors: list[BaseException] = []
        self.counts: collections.Counter = collections.Counter()
        self.db_down_s: list[float] = []
        self.mlflow_down_s: list[float] = []
        self.outages: list[tuple[str, float, float]] = []  # (server, down from, back at) on the run's clock

    def tick(self, now: float) -> None:
        if now >= self.next_kill:
            self._kill()
            self.next_kill += self.kill_rng.uniform(*self.options.kill_every)
        if self.restart is not None and self.restart.is_alive():
            return  # the two restarts never overlap; a due one waits for the other
        if now >= self.next_db:
            down = self.db_rng.uniform(*self.options.db_down)
            self.next_db += self.db_rng.uniform(*self.options.db_every)
            self._in_thread(self._restart_db, down)
        elif self.mlflow_pending and now >= self.mlflow_at:
            self.mlflow_pending = False
            self._in_thread(self._restart_mlflow)

    def _kill(self) -> None:
        name = self.kill_rng.choice(("SIGKILL", "SIGTERM"))
        pick = self.kill_rng.random()  # drawn even when nobody is there, to keep the stream aligned
        active = self.fleet.active()
        if not active:
            self.log.line(f"kill skipped ({name}): no active worker")
            return
        victim = active[int(pick * len(active))]
        self.fleet.send(victim, name)
        replacement = self.fleet.start()
        self.counts[name] += 1
        self.log.event("kill", f"{name} worker {victim.index} (pid {victim.pid}, {victim.command}); replacement "
                               f"worker {replacement.index} (pid {replacement.pid})",
                       signal=name, worker=victim.index, pid=victim.pid, replacement=replacement.index)

    def _in_thread(self, target, *args) -> None:
        def guarded() -> None:
            try:
                target(*args)
            except BaseException as error:  # re-raised by the main loop: a fault we cannot inject ends the run
                self.errors.append(error)

        self.restart = threading.Thread(target=guarded, daemon=True)
        self.restart.start()

    def _restart_db(self, down: float) -> None:
        began, since = time.monotonic(), self.log.now()
        self.log.event("db_stop", f"stopping PostgreSQL (fast), down for {down:.1f} s", down_s=round(down, 1))
        self.cluster.stop()
        time.sleep(down)
        self.cluster.start()
        self.counts["db_restarts"] += 1
        self.db_down_s.append(round(time.monotonic() - began, 1))
        self.outages.append(("postgresql", since, self.log.now()))
        self.log.event("db_start", f"PostgreSQL back after {self.db_down_s[-1]:.1f} s", down_s=self.db_down_s[-1])

    def _restart_mlflow(self) -> None:
        began, since = time.monotonic(), self.log.now()
        self.log.event("mlflow_stop", f"stopping the MLflow server (process group {self.mlflow.process.pid})")
        self.mlflow.stop()
        self.mlflow.start()
        self.counts["mlflow_restarts"] += 1
        self.mlflow_down_s.append(round(time.monotonic() - began, 1))
        self.outages.append(("mlflow", since, self.log.now()))
        self.log.event("mlflow_start", f"MLflow server back after {self.mlflow_down_s[-1]:.1f} s",
                       down_s=self.mlflow_down_s[-1])

    def finish(self) -> None:
        """Wait for a restart in progress: both servers are up when this returns."""
        if self.restart is not None:
            self.restart.join()
        if self.errors:
            raise self.errors[0]


def replace_if_needed(fleet: Fleet, worker: Worker, plan_done: bool, log: Log) -> None:
    """A worker that ended non-zero on its own (not by our signal) is replaced while the plan is not done."""
    if worker.code != 0 and worker.signal is None and not plan_done:
        replacement = fleet.start()
        log.line(f"worker {worker.index} exited {worker.code} on its own; replacement worker {replacement.index} "
                 f"(pid {replacement.pid})")


def run_chaos(chaos: Chaos, fleet: Fleet, census: Census, log: Log, planned: int) -> str:
    """Inject faults until the window ends ('window') or a worker finds the plan done ('study')."""
    next_progress = log.now() + 60
    plan_done = False
    while True:
        for worker in fleet.reap():
            plan_done = plan_done or worker.code == 0
            replace_if_needed(fleet, worker, plan_done, log)
        if chaos.errors:
            raise chaos.errors[0]
        now = log.now()
        if plan_done or now >= chaos.end:
            break
        chaos.tick(now)
        if now >= next_progress:
            log.line(f"{progress_text(census.counts(), planned)}; {len(fleet.active())} workers active; "
                     f"faults {dict(chaos.counts)}")
            next_progress += 60
        time.sleep(0.25)
    ended = "study" if plan_done else "window"
    log.line(f"chaos over ({'the study ended' if plan_done else 'the window ended'}); waiting for a restart in "
             "progress, then no more faults")
    chaos.finish()
    return ended


def drain(fleet: Fleet, census: Census, log: Log, planned: int, minutes: float) -> list[Worker]:
    """No more faults: let the workers finish the plan (replacing any that end non-zero on their own); the
    workers still running after `minutes` are killed and returned (stuck)."""
    deadline = log.now() + minutes * 60
    next_progress = log.now() + 60
    plan_done = any(worker.code == 0 for worker in fleet.workers)
    while log.now() < deadline:
        for worker in fleet.reap():
            plan_done = plan_done or worker.code == 0
            replace_if_needed(fleet, worker, plan_done, log)
        if not fleet.running():
            if plan_done:
                return []
            log.line(f"replacement worker {fleet.start().index}: nobody left and the plan is not done")
        if log.now() >= next_progress:
            log.line(f"{progress_text(census.counts(), planned)}; {len(fleet.running())} workers running (drain)")
            next_progress += 60
        time.sleep(0.5)
    stuck = fleet.kill_all()
    log.line(f"drain timed out after {minutes:g} min: killed {len(stuck)} workers still running")
    return stuck


# -- audit: Optuna ------------------------------------------------------------------------------------------------
def reason_kind(reason: str | None) -> str:
    if reason == STALE_REASON:
        return "stale heartbeat"
    if reason and reason.startswith(INTERRUPTED_PREFIX):
        return "interrupted"
    return reason or "no fail_reason"


def worker_pid(trial) -> int | None:
    name = trial.user_attrs.get("worker", "")
    tail = name.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def audit_optuna(url: str, names: dict[float, str], n_trials: int, workers: list[Worker]) -> tuple[dict, dict]:
    """Counts and problems per study from the Optuna database; also returns the trials, by study name."""
    import optuna

    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    report = {"per_budget": {}, "lost": [], "duplicated": [], "stuck": [], "mislinked": [], "false_stale": [],
              "shortfall": {}, "fail_reasons": collections.Counter(), "retries": 0}
    by_pid = {worker.pid: worker for worker in workers}
    trials_by_study = {}
    for budget, name in names.items():
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        trials_by_study[name] = trials
        report["per_budget"][f"{budget:.2f}"] = audit_study(name, trials, n_trials, by_pid, report)
    storage.engine.dispose()
    report["fail_reasons"] = dict(report["fail_reasons"])
    return report, trials_by_study


def audit_study(name: str, trials: list, n_trials: int, by_pid: dict[int, Worker], report: dict) -> dict:
    """One study: states, plan, stuck trials, and every FAIL's retry (see `check_failed` and `check_link`)."""
    states = collections.Counter(trial.state.name for trial in trials)
    counted = states["COMPLETE"] + states["PRUNED"]
    if counted < n_trials:
        report["shortfall"][name] = n_trials - counted
    report["stuck"] += [f"{name}#{t.number} {t.state.name}" for t in trials if t.state.name in ("RUNNING", "WAITING")]
    if len({trial.number for trial in trials}) != len(trials):
        report["duplicated"].append(f"{name}: a trial number appears twice")
    reruns = collections.defaultdict(list)
    for trial in trials:
        if rerun_of(trial) is not None:
            reruns[rerun_of(trial)].append(trial)
    by_number = {trial.number: trial for trial in trials}
    retried = 0
    for trial in trials:
        if trial.state.name == "FAIL":
            retried += check_failed(name, trial, reruns.get(trial.number, []), by_pid, report)
    for number, linked in reruns.items():
        for retry in linked:
            check_link(name, retry, by_number.get(number), report)
    report["retries"] += sum(len(linked) for linked in reruns.values())
    return {"planned": n_trials, "complete": states["COMPLETE"], "pruned": states["PRUNED"], "failed": states["FAIL"],
            "running": states["RUNNING"], "waiting": states["WAITING"], "counted": counted,
            "overshoot": max(0, counted - n_trials), "retried": retried, "trials": len(trials)}


def rerun_of(trial) -> int | None:
    """The trial this one re-runs: the last entry of Optuna's retry history (a stale trial's retry, made by Optuna's
    callback), else our `retry_of` (an interrupted trial's, enqueued by autotune)."""
    history = trial.system_attrs.get("retry_history") or []
    if history:
        return int(history[-1])
    retry_of = trial.user_attrs.get("retry_of")
    return None if retry_of is None else int(retry_of)


def check_failed(name: str, trial, linked: list, by_pid: dict[int, Worker], report: dict) -> int:
    """A FAIL trial: re-run exactly once (1), never (lost) or more than once (duplicated); a stale one whose worker
    was alive is a false stale. Returns 1 when it was re-run. (`check_link` says whether `retry_of` names it.)"""
    reason = trial.user_attrs.get("fail_reason")
    report["fail_reasons"][reason_kind(reason)] += 1
    worker = by_pid.get(worker_pid(trial))
    who = "worker unknown" if worker is None else (
        f"worker {worker.index} ({worker.signal or 'not signalled'}, exit {worker.code})")
    if not linked:
        history = trial.system_attrs.get("retry_history") or []
        why = f"; it was itself a retry (retry history {history}), past max_retry=1" if history else ""
        report["lost"].append(f"{name}#{trial.number} ({reason_kind(reason)}, {who}): never re-run{why}")
    elif len(linked) > 1:
        report["duplicated"].append(f"{name}#{trial.number}: re-run {len(linked)} times {[t.number for t in linked]}")
    if reason == STALE_REASON and worker is not None:
        dead = (worker.signal or "").startswith("SIGKILL") or (worker.signal is None and worker.code not in (0, None))
        if not dead:
            report["false_stale"].append(f"{name}#{trial.number}: failed as stale while its {who} was alive")
    return 1 if linked else 0


def check_link(name: str, retry, origin, report: dict) -> None:
    """A re-run points (`retry_of`, in Optuna) at the FAIL trial it re-runs and carries its thresholds."""
    number = rerun_of(retry)
    retry_of = retry.user_attrs.get("retry_of")
    problem = None
    if origin is None:
        problem = f"it re-runs #{number}, which does not exist"
    elif origin.state.name != "FAIL":
        problem = f"it re-runs #{number}, which is {origin.state.name}"
    elif any(retry.params.get(key) != value for key, value in origin.params.items()):
        problem = f"its thresholds differ from #{number}'s"
    elif retry_of is None or int(retry_of) != number:
        problem = (f"it re-runs #{number} (Optuna's retry_history {retry.system_attrs.get('retry_history')}) but "
                   f"its retry_of says {retry_of}: by retry_of, #{number} looks never retried")
    if problem:
        report["mislinked"].append(f"{name}#{retry.number}: {problem}")


# -- audit: MLflow ------------------------------------------------------------------------------------------------
def all_runs(client, experiment_id: str, text: str) -> list:
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=text, run_view_type=ViewType.ALL,
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def audit_mlflow(uri: str, experiment: str, trials_by_study: dict[str, list]) -> dict:
    """Child runs against trials: one per trial, state and links matching, no orphans, none left RUNNING."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = all_runs(client, found.experiment_id, "tags.`autotune.kind` = 'trial'")
    active = [run for run in runs if run.info.lifecycle_stage == "active"]
    report = {"child_runs": len(active), "deleted_runs": len(runs) - len(active), "orphan_runs": [],
              "duplicate_runs": [], "missing_runs": [], "state_mismatches": [], "runs_left_running": [],
              "retry_tag_mismatches": [], "parent_runs": {}}
    grouped = collections.defaultdict(list)
    for run in active:
        grouped[(run.data.tags.get("autotune.study"), run.data.tags.get("optuna.trial_number"))].append(run)
    known = {(name, str(trial.number)): trial for name, trials in trials_by_study.items() for trial in trials}
    for key, found_runs in grouped.items():
        trial = known.get(key)
        label = f"{key[0]}#{key[1]}"
        if trial is None:
            report["orphan_runs"] += [f"{label} run {run.info.run_id}" for run in found_runs]
            continue
        if len(found_runs) > 1:
            report["duplicate_runs"].append(f"{label}: {len(found_runs)} runs")
        for run in found_runs:
            check_run(label, trial, run, report)
    report["missing_runs"] = [f"{name}#{number} {trial.state.name}" for (name, number), trial in known.items()
                              if (name, number) not in grouped and trial.state.name != "WAITING"]
    parents = all_runs(client, found.experiment_id, "tags.`autotune.kind` = 'study'")
    for name in trials_by_study:
        report["parent_runs"][name] = sum(run.info.lifecycle_stage == "active" and
                                          run.data.tags.get("autotune.study") == name for run in parents)
    return report


def check_run(label: str, trial, run, report: dict) -> None:
    tags, state = run.data.tags, trial.state.name
    if run.info.status == "RUNNING":
        report["runs_left_running"].append(f"{label} run {run.info.run_id}")
    if tags.get("optuna.state") != state or run.info.status != RUN_STATUS.get(state, run.info.status):
        report["state_mismatches"].append(f"{label}: trial {state}, run tag {tags.get('optuna.state')} status "
                                          f"{run.info.status}")
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is not None and tags.get("retry_of") != str(retry_of):
        report["retry_tag_mismatches"].append(f"{label}: trial retry_of {retry_of}, run tag {tags.get('retry_of')}")


# -- audit: export and status ---------------------------------------------------------------------------------------
def run_cli(args: list[str], log_path: Path, timeout_s: float) -> tuple[int, str]:
    result = subprocess.run([*autotune_command(), *args], capture_output=True, text=True, timeout=timeout_s,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    output = result.stdout + result.stderr
    log_path.write_text(output)
    return result.returncode, output


def table_rows(output: str) -> list[list[str]]:
    """The body rows of the rich tables in `output` (piped, so never wrapped), as lists of cell texts."""
    rows = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("│") and line.endswith("│"):
            rows.append([cell.strip() for cell in line[1:-1].split("│")])
    return rows


def parse_status(output: str, names: list[str]) -> tuple[dict, dict]:
    """budget -> (best tune value, trial) from the trials table; budget -> trial from the selected-presets table."""
    best, selected = {}, {}
    trials_part, _, selected_part = output.partition("selected thresholds per budget")
    for cells in table_rows(trials_part):
        if len(cells) == 12 and cells[1] in names:
            best[cells[0]] = (cells[9], cells[10])
    for cells in table_rows(selected_part):
        if len(cells) >= 3 and cells[1].isdigit():
            selected[cells[0]] = cells[1]
    return best, selected


def store_best(trials: list):
    """The feasible COMPLETE trial with the highest value, the earliest on ties, straight from the trials."""
    feasible = [t for t in trials if t.state.name == "COMPLETE" and all(v <= 0 for v in t.constraints.values())]
    return max(feasible, key=lambda t: (t.value, -t.number), default=None)


def audit_export(spec, spec_path: Path, logs: Path, trials_by_study: dict[str, list]) -> dict:
    """`autotune export` writes a preset per budget; `autotune status` shows the same trial and tune value, which is
    the best feasible trial in the store."""
    import adatp
    from autotune.export import preset_path_for

    code, _ = run_cli(["export", str(spec_path), "--no-progress"], logs / "export.log", 1800)
    status_code, status = run_cli(["status", str(spec_path)], logs / "status.log", 600)
    best_rows, selected_rows = parse_status(status, list(trials_by_study))
    report = {"export_rc": code, "status_rc": status_code, "presets": 0, "per_budget": {}, "disagreements": []}
    for budget in spec.budgets:
        label, path = f"{budget:.2f}", preset_path_for(spec, budget)
        best = store_best(trials_by_study[spec.study_name(budget)])
        row = {"store_best": None if best is None else [round(best.value, 4), best.number],
               "status_best": list(best_rows.get(label, ())), "status_selected_trial": selected_rows.get(label)}
        if path.is_file():
            preset = adatp.load_preset(path)
            tune = preset.results.get(f"tune_{preset.held_out[0]}", {}).get("value")
            row["preset"] = [tune, preset.provenance.get("trial")]
            report["presets"] += 1
            expected = [f"{tune:.4f}", str(preset.provenance.get("trial"))]
            if row["status_best"] != expected or row["status_selected_trial"] != expected[1] or (
                    row["store_best"] != [round(tune, 4), preset.provenance.get("trial")]):
                report["disagreements"].append(f"b{label}: preset {row['preset']}, status best {row['status_best']} "
                                               f"selected {row['status_selected_trial']}, store {row['store_best']}")
        report["per_budget"][label] = row
    return report


def log_text(worker: Worker) -> str:
    return worker.log.read_text(errors="replace") if worker.log.exists() else ""


def scan_logs(workers: list[Worker]) -> dict:
    """Error lines and tracebacks in the workers' output; how many outages they reported riding out, and how many
    workers waited for a store at start-up (a replacement started while a server was down)."""
    problems, outages, taken, waited = [], 0, 0, 0
    for worker in workers:
        text = log_text(worker)
        outages += text.count("storage: database back after")
        taken += text.count("was failed as stale by another worker")
        waited += "(heartbeat.outage)" in text
        for line in text.splitlines():
            if line.startswith(("error:", "internal error:")) or "Traceback" in line:
                problems.append(f"worker {worker.index} ({worker.signal or 'not signalled'}, exit {worker.code}): "
                                f"{line[:240]}")
    return {"problems": problems, "outages_ridden_out": outages, "trials_taken_while_running": taken,
            "waited_at_start": waited}


# -- the result -----------------------------------------------------------------------------------------------------
def failures_of(result: dict) -> list[str]:
    """Every check that did not pass, one line each."""
    optuna_report, runs, export, workers = result["optuna"], result["mlflow"], result["export"], result["workers"]
    found = []
    for key in ("lost", "duplicated", "stuck", "mislinked", "false_stale"):
        found += [f"{key}: {item}" for item in optuna_report[key]]
    found += [f"shortfall: {name} is {n} trial(s) short" for name, n in optuna_report["shortfall"].items()]
    for key in ("orphan_runs", "duplicate_runs", "missing_runs", "state_mismatches", "runs_left_running",
                "retry_tag_mismatches"):
        found += [f"{key}: {item}" for item in runs[key]]
    found += [f"parent runs: {name} has {n}" for name, n in runs["parent_runs"].items() if n != 1]
    if export["export_rc"] != 0 or export["presets"] != len(result["budgets"]):
        found.append(f"export: exit {export['export_rc']}, {export['presets']} presets")
    if export["status_rc"] != 0:
        found.append(f"status: exit {export['status_rc']}")
    found += [f"status vs presets: {item}" for item in export["disagreements"]]
    found += [f"overshoot: b{label} has {b['counted']} of {b['planned']}, more than {workers['peak_running']} workers "
              f"+ {b['retried']} retries explain" for label, b in optuna_report["per_budget"].items()
              if b["overshoot"] > workers["peak_running"] + b["retried"]]
    found += [f"exit code: {item}" for item in workers["bad_exit_codes"]]
    found += [f"worker output: {item}" for item in workers["log_problems"]]
    return found


def worker_summary(workers: list[Worker], stuck: list[Worker], peak: int) -> dict:
    bad = [f"worker {w.index} ({w.command}, {w.signal or 'not signalled'}): exit {w.code}" for w in workers
           if w.code not in ALLOWED_CODES.get(w.signal, set())]
    scanned = scan_logs(workers)
    return {"started": len(workers), "peak_running": peak,
            "exit_codes": dict(collections.Counter(str(w.code) for w in workers)), "bad_exit_codes": bad,
            "waited_at_start": scanned["waited_at_start"], "stuck_workers": [w.index for w in stuck],
            "log_problems": scanned["problems"],
            "outages_ridden_out": scanned["outages_ridden_out"],
            "trials_taken_while_running": scanned["trials_taken_while_running"]}


def versions() -> dict:
    from autotune.versions import package_versions

    bindir = server_bindir()
    postgres = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
    return {**package_versions(), "postgresql": postgres, "platform": platform.platform(),
            "cpus": os.cpu_count()}


def counts(result: dict) -> dict:
    """The headline numbers (what the CI test asserts on)."""
    optuna_report, per_budget = result["optuna"], result["optuna"]["per_budget"].values()
    faults = result["faults"]
    return {
        "kills": faults["SIGKILL"] + faults["SIGTERM"], "kills_sigkill": faults["SIGKILL"],
        "kills_sigterm": faults["SIGTERM"], "db_restarts": faults["db_restarts"],
        "mlflow_restarts": faults["mlflow_restarts"],
        "trials_planned": sum(b["planned"] for b in per_budget), "complete": sum(b["complete"] for b in per_budget),
        "pruned": sum(b["pruned"] for b in per_budget), "failed": sum(b["failed"] for b in per_budget),
        "overshoot": sum(b["overshoot"] for b in per_budget), "retries": optuna_report["retries"],
        "lost": len(optuna_report["lost"]) + sum(optuna_report["shortfall"].values()),
        "duplicated": len(optuna_report["duplicated"]), "stuck": len(optuna_report["stuck"]),
        "mislinked": len(optuna_report["mislinked"]), "false_stale": len(optuna_report["false_stale"]),
        "child_runs": result["mlflow"]["child_runs"], "orphan_runs": len(result["mlflow"]["orphan_runs"]),
        "duplicate_runs": len(result["mlflow"]["duplicate_runs"]),
        "missing_runs": len(result["mlflow"]["missing_runs"]),
        "workers_started": result["workers"]["started"], "stuck_workers": len(result["workers"]["stuck_workers"]),
        "waited_at_start": result["workers"]["waited_at_start"],
    }


def print_table(result: dict) -> None:
    c, w = result["counts"], result["workers"]
    rows = [
        ("run", f"seed {result['seed']}, window {result['minutes']:g} min (ended: {result['ended']}), "
                f"{result['workers_per_fleet']} workers, wall {result['wall_s']:.0f} s"),
        ("faults", f"kills {c['kills']} (SIGKILL {c['kills_sigkill']}, SIGTERM {c['kills_sigterm']}), "
                   f"db restarts {c['db_restarts']}, mlflow restarts {c['mlflow_restarts']}"),
        ("trials", f"planned {c['trials_planned']}, complete {c['complete']}, pruned {c['pruned']}, "
                   f"failed {c['failed']}, retries {c['retries']}, overshoot {c['overshoot']}"),
        ("checks", f"lost {c['lost']}, duplicated {c['duplicated']}, stuck {c['stuck']}, mislinked {c['mislinked']}, "
                   f"false stale {c['false_stale']}"),
        ("mlflow", f"child runs {c['child_runs']}, orphans {c['orphan_runs']}, duplicates {c['duplicate_runs']}, "
                   f"missing {c['missing_runs']}"),
        ("export", f"exit {result['export']['export_rc']}, presets {result['export']['presets']}, status agrees: "
                   f"{'yes' if not result['export']['disagreements'] else 'no'}"),
        ("workers", f"started {w['started']}, exit codes {w['exit_codes']}, bad {len(w['bad_exit_codes'])}, "
                    f"waited for a store at start {w['waited_at_start']}, "
                    f"outages ridden out {w['outages_ridden_out']}"),
        ("result", "PASS" if result["ok"] else f"FAIL ({len(result['failures'])} problems)"),
    ]
    for name, text in rows:
        print(f"{name:>8}  {text}")
    for line in result["failures"][:40]:
        print(f"          - {line}")


# -- the run --------------------------------------------------------------------------------------------------------
def write_spec(options: argparse.Namespace, workdir: Path, storage: str, tracking_uri: str) -> Path:
    """A small 3-budget study: trials of a few seconds, 2 rungs with successive halving, short heartbeats."""
    data = workdir / "data"
    return spec_file(workdir, "soak", data, budgets=list(BUDGETS), n_trials=options.trials_per_budget, batch_size=8,
                     storage=storage, tracking_uri=tracking_uri, heartbeat=dict(HEARTBEAT),
                     dataset={"name": "synthetic", "root": str(data), "frames": options.frames,
                              "synthetic": {"n_videos": options.videos, "seed": 30000}},
                     pruner={"name": "successive_halving", "rungs": 2},
                     sampler={"name": "tpe", "seed": options.seed, "n_startup_trials": 4})


def start_fleet(fleet: Fleet, census: Census, log: Log, size: int, timeout_s: float = 600.0) -> None:
    """`autotune study` first (it creates the studies, then runs trials); the workers once every study exists."""
    creator = fleet.start("study")
    log.line(f"worker 0: autotune study (pid {creator.pid}) creates the studies, then runs trials")
    deadline = time.monotonic() + timeout_s
    while not census.created():
        if creator.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"autotune study ended ({creator.process.poll()}) or stalled before the studies "
                               f"existed; see {creator.log}")
        time.sleep(0.5)
    for _ in range(size - 1):
        fleet.start()
    log.line(f"studies created; workers running: {' '.join(str(w.pid) for w in fleet.running())}")


def soak(options: argparse.Namespace, log: Log, fleet: Fleet, cluster: PrivateCluster, server: MlflowServer,
         spec_path: Path) -> dict:
    """Start the fleet, inject faults, drain, audit; the result without its summary fields."""
    from autotune.spec import load_spec

    spec = load_spec(spec_path)
    names = {budget: spec.study_name(budget) for budget in spec.budgets}
    census = Census(spec.storage, list(names.values()))
    start_fleet(fleet, census, log, options.workers)
    chaos = Chaos(options, log, fleet, cluster, server)
    log.line(f"chaos for {options.minutes:g} min, seed {options.seed}: kill every {options.kill_every} s, "
             f"db restart every {options.db_every} s down {options.db_down} s, mlflow restart at "
             f"{chaos.mlflow_at - chaos.start:.0f} s")
    ended = run_chaos(chaos, fleet, census, log, spec.n_trials)
    chaos_s = log.now() - chaos.start
    stuck = drain(fleet, census, log, spec.n_trials, options.drain_minutes)
    drain_s = log.now() - chaos.start - chaos_s
    if census.storage is not None:
        census.storage.engine.dispose()
    log.line("auditing the Optuna database")
    optuna_report, trials = audit_optuna(spec.storage, names, spec.n_trials, fleet.workers)
    log.line("autotune export, then autotune status")
    export = audit_export(spec, spec_path, fleet.logs, trials)
    log.line("auditing the MLflow server's runs")
    runs = audit_mlflow(server.url, spec.name, trials)
    return {"ended": ended, "chaos_s": round(chaos_s, 1), "drain_s": round(drain_s, 1),
            "faults": {key: chaos.counts[key] for key in ("SIGKILL", "SIGTERM", "db_restarts", "mlflow_restarts")},
            "db_down_s": chaos.db_down_s, "mlflow_down_s": chaos.mlflow_down_s, "optuna": optuna_report,
            "mlflow": runs, "export": export, "outages": chaos.outages,
            "workers": worker_summary(fleet.workers, stuck, fleet.peak),
            "budgets": list(spec.budgets), "events": log.events}


def shut_down(fleet: Fleet | None, server: MlflowServer | None, cluster: PrivateCluster | None) -> None:
    """Whatever happened: no worker left running, the MLflow server stopped, PostgreSQL stopped and removed."""
    if fleet is not None:
        fleet.kill_all()
    if server is not None:
        server.stop()
    if cluster is not None:
        try:
            cluster.stop()  # a clean (fast) shutdown first; remove() only deletes what is left
        except RuntimeError:
            pass  # already stopped
        cluster.remove()


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if server_bindir() is None:
        print("soak: PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql", file=sys.stderr)
        return 2
    log = Log()
    workdir = Path(options.workdir or tempfile.mkdtemp(prefix="autotune-soak-")).resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    fleet = server = cluster = None
    try:
        cluster = PrivateCluster()
        log.line(f"PostgreSQL cluster on 127.0.0.1:{cluster.port}; workdir {workdir}")
        storage = cluster.create_database("optuna")
        backend = (cluster.create_database("mlflow") if options.mlflow_backend == "postgres"
                   else f"sqlite:///{workdir / 'mlflow.db'}")
        server = MlflowServer(backend, workdir / "mlflow-artifacts", workdir / "logs" / "mlflow-server.log")
        server.start()
        log.line(f"MLflow server on {server.url} (backend: {options.mlflow_backend})")
        spec_path = write_spec(options, workdir, storage, server.url)
        fleet = Fleet(spec_path, workdir / "logs", log)
        result = soak(options, log, fleet, cluster, server, spec_path)
    finally:
        shut_down(fleet, server, cluster)
    result.update(seed=options.seed, minutes=options.minutes, workers_per_fleet=options.workers,
                  wall_s=round(log.now(), 1), settings={
                      "trials_per_budget": options.trials_per_budget, "kill_every_s": options.kill_every,
                      "db_every_s": options.db_every, "db_down_s": options.db_down, "videos": options.videos,
                      "frames": options.frames, "mlflow_backend": options.mlflow_backend, "heartbeat": HEARTBEAT},
                  versions=versions(), date=datetime.date.today().isoformat(), workdir=str(workdir))
    result["counts"] = counts(result)
    result["failures"] = failures_of(result)
    result["ok"] = not result["failures"]
    first = ("counts", "ok", "failures", "seed", "minutes", "ended", "wall_s")
    ordered = {key: result[key] for key in first} | {k: v for k, v in result.items() if k not in first}
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(json.dumps(ordered, indent=2, default=str) + "\n")
    print_table(result)
    print(f"written: {options.out}" + ("" if result["ok"] else f"; logs kept in {workdir / 'logs'}"))
    if result["ok"] and options.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
