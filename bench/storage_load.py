"""Storage load: N worker processes running short synthetic trials against Optuna's RDB storage (PostgreSQL, SQLite).

No model: a trial suggests the four thresholds, reports four rungs (15, 30, 60, 120 questions) to a
successive-halving pruner, sets three user attributes and the FLOPs constraint, and sleeps a simulated compute time
spread over the rungs (a pruned trial sleeps only for the rungs it ran). The storage is `autotune.storage.storage_for`,
the one our workers use (heartbeats, stale-trial retry, SQLite timeout); the sampler is TPE with constant liar,
multivariate, a seed per worker and 8 startup trials, as `make_sampler` builds it; `study.optimize` catches
exceptions and skips gc as `run_studies` does (run_studies' extra per-trial reads around `optimize` are not here).

Each configuration gets a fresh PostgreSQL database (created from `--admin-db`, dropped at the end) or a fresh SQLite
file. The study is created once in this process; only then are workers handed the run. The worker processes are
spawned once and reused by every configuration (importing `autotune.study` pulls in torch, seconds per process);
each run they open a new storage, load the study, report ready, wait for the start signal, run their trials, and
dispose of the storage. Wall time runs from the start signal to the last worker done.

Per-trial overhead = (worker wall - time asleep in simulated compute) / trials the worker attempted, median over
workers. Trial latency is measured in the worker from one trial's end (callback) to the next's, so it includes
Optuna's ask (trial creation, TPE sampling over all trials) and tell. Prints a markdown table and writes
bench/results/storage_load.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing as mp
import os
import platform
import random
import statistics
import tempfile
import time
import traceback
import uuid
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autotune.storage import quiet_optuna, storage_for
from autotune.versions import package_versions

RESULTS = Path(__file__).parent / "results"
STUDY = "storage-load"
RUNGS = (15, 30, 60, 120)
SPACE = {"tau_s": (0.7, 1.0), "tau_t": (0.0, 1.0), "alpha_boost": (1.0, 4.0), "gamma_cap": (0.1, 1.0)}
N_STARTUP_TRIALS = 8
REDUCTION_FACTOR = 2


def make_pruner() -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=RUNGS[0], reduction_factor=REDUCTION_FACTOR)


def synthetic_value(params: dict[str, float], questions: int, rng: random.Random) -> float:
    """A smooth accuracy-like surface plus rung noise that shrinks as more questions are seen."""
    base = (0.55 + 0.25 * math.exp(-((params["tau_s"] - 0.85) ** 2) / 0.01) - 0.02 * (params["alpha_boost"] - 2) ** 2
            + 0.05 * params["gamma_cap"] - 0.05 * abs(params["tau_t"] - 0.4))
    return min(1.0, max(0.0, base + rng.gauss(0, 0.1 / math.sqrt(questions / RUNGS[0]))))


# -- worker ---------------------------------------------------------------------------------------------------------
def run_trials(url: str, index: int, n_trials: int, compute_ms: float, ready, go) -> dict:
    """One worker's share of a run: load the study, wait for the start, run `n_trials` trials, report timings."""
    storage = storage_for(url)
    study = optuna.load_study(study_name=STUDY, storage=storage, pruner=make_pruner(),
                              sampler=optuna.samplers.TPESampler(seed=index, n_startup_trials=N_STARTUP_TRIALS,
                                                                 constant_liar=True, multivariate=True))
    study.get_trials(deepcopy=False)  # the connection is open before the clock starts
    ready()
    go()
    rows: list[dict] = []
    errors: list[str] = []
    slept = 0.0
    mark: dict[str, float] = {}

    def objective(trial: optuna.Trial) -> float:
        nonlocal slept
        mark["start"], mark["sleep"] = time.perf_counter(), 0.0
        try:
            params = {name: trial.suggest_float(name, low, high) for name, (low, high) in SPACE.items()}
            rng = random.Random(trial.number)
            previous = 0
            value = 0.0
            for rung, questions in enumerate(RUNGS):
                if compute_ms > 0:
                    before = time.perf_counter()
                    time.sleep(compute_ms / 1000 * (questions - previous) / RUNGS[-1])
                    mark["sleep"] += time.perf_counter() - before
                previous = questions
                value = synthetic_value(params, questions, rng)
                trial.report(value, questions)
                if rung < len(RUNGS) - 1 and trial.should_prune():
                    raise optuna.TrialPruned()
            trial.set_user_attr("flops_ratio", 0.29)
            trial.set_user_attr("kept_tokens", 58)
            trial.set_user_attr("skipped", 0)
            trial.set_constraint("flops", -0.01)
            return value
        except optuna.TrialPruned:
            raise
        except Exception as error:
            errors.append(f"in objective: {type(error).__name__}: {str(error).strip().splitlines()[0][:200]}")
            raise
        finally:
            mark["end"] = time.perf_counter()
            slept += mark["sleep"]

    def callback(_: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        now = time.perf_counter()
        started = mark.get("start", mark["previous"])
        ended = mark.get("end", now)
        rows.append(dict(number=frozen.number, state=frozen.state.name, latency=now - mark["previous"],
                         ask=started - mark["previous"], body=ended - started - mark.get("sleep", 0.0),
                         tell=now - ended, sleep=mark.get("sleep", 0.0)))
        mark.clear()
        mark["previous"] = now

    start = time.perf_counter()
    mark["previous"] = start
    attempted = 0
    while attempted < n_trials and len(errors) < n_trials:
        done_before = len(rows)
        try:
            study.optimize(objective, n_trials=n_trials - attempted, catch=(Exception,), gc_after_trial=False,
                           callbacks=[callback])
            attempted += len(rows) - done_before
        except Exception as error:  # a storage error outside the objective (ask, tell, heartbeat) ends optimize
            errors.append(f"outside objective: {type(error).__name__}: {str(error).strip().splitlines()[0][:200]}")
            attempted += len(rows) - done_before + 1
            mark.clear()
            mark["previous"] = time.perf_counter()
    wall = time.perf_counter() - start
    storage.remove_session()
    storage.engine.dispose()
    return dict(index=index, wall=wall, slept=slept, attempted=attempted, rows=rows, errors=errors)


def worker_main(index: int, tasks, results) -> None:
    """A pooled worker: runs one task per configuration until it gets None."""
    quiet_optuna()
    results.put(("started", index, None))
    while (task := tasks.get()) is not None:
        if not isinstance(task, dict):  # a start signal meant for a run this worker crashed out of
            continue
        try:
            out = run_trials(task["url"], index, task["trials"], task["compute_ms"],
                             ready=lambda: results.put(("ready", index, None)), go=lambda: tasks.get())
            results.put(("done", index, out))
        except Exception:
            results.put(("crashed", index, traceback.format_exc()))


# -- backends -------------------------------------------------------------------------------------------------------
class Postgres:
    def __init__(self, host: str, port: int, user: str, admin_db: str) -> None:
        self.host, self.port, self.user, self.admin_db = host, port, user, admin_db
        self.created: list[str] = []

    def _admin(self, sql: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname=self.admin_db)
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(sql)
        finally:
            conn.close()

    def fresh(self) -> str:
        name = f"autotune_bench_{uuid.uuid4().hex[:12]}"
        self._admin(f"CREATE DATABASE {name}")
        self.created.append(name)
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{name}"

    def drop_all(self) -> list[str]:
        dropped = []
        for name in self.created:
            self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            dropped.append(name)
        self.created.clear()
        return dropped


class Sqlite:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="storage-load-"))

    def fresh(self) -> str:
        return f"sqlite:///{self.dir / f'{uuid.uuid4().hex[:12]}.db'}"

    def drop_all(self) -> list[str]:
        removed = [str(path) for path in self.dir.iterdir()]
        for path in self.dir.iterdir():
            path.unlink()
        self.dir.rmdir()
        return removed


# -- a run ----------------------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def one_run(pool: list[tuple], results, url: str, backend: str, workers: int, compute_ms: float,
            trials: int) -> dict:
    storage = storage_for(url)
    optuna.create_study(storage=storage, study_name=STUDY, direction="maximize")
    load_before = os.getloadavg()
    for tasks, _ in pool[:workers]:
        tasks.put(dict(url=url, trials=trials, compute_ms=compute_ms))
    outs, crashes = {}, []
    ready = 0
    while ready + len(crashes) < workers:
        kind, index, payload = results.get()
        if kind == "ready":
            ready += 1
        elif kind == "crashed":
            crashes.append(payload)
    start = time.perf_counter()
    for tasks, _ in pool[:workers]:
        tasks.put("go")
    while len(outs) + len(crashes) < workers:
        kind, index, payload = results.get()
        if kind == "done":
            outs[index] = payload
        elif kind == "crashed":
            crashes.append(payload)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()

    all_trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    storage.remove_session()
    storage.engine.dispose()
    states = {state.name: sum(t.state == state for t in all_trials) for state in TrialState}
    finished = states["COMPLETE"] + states["PRUNED"]
    rows = sorted((row for out in outs.values() for row in out["rows"]), key=lambda row: row["number"])
    latencies = [row["latency"] for row in rows]
    overheads = [(out["wall"] - out["slept"]) / out["attempted"] for out in outs.values() if out["attempted"]]
    quarter = max(1, len(rows) // 4)
    errors = [error for out in outs.values() for error in out["errors"]]
    return dict(
        backend=backend, workers=workers, compute_ms=compute_ms, trials_per_worker=trials,
        trials_in_study=len(all_trials), finished=finished, fails=states["FAIL"], states=states,
        wall_s=wall, trials_per_s=finished / wall if wall > 0 else None,
        overhead_ms_per_trial_median=1000 * median(overheads) if overheads else None,
        overhead_ms_per_trial_by_worker=[1000 * value for value in overheads],
        latency_ms=dict(median=1000 * median(latencies) if latencies else None,
                        p95=1000 * percentile(latencies, 0.95) if latencies else None,
                        max=1000 * max(latencies) if latencies else None),
        # Split of a trial's time in the worker (medians): ask = trial creation + sampling, body = the objective's
        # storage calls (suggest, report, should_prune, attrs) without the sleep, tell = finishing the trial.
        split_ms_median=dict(ask=1000 * median([r["ask"] for r in rows]),
                             body=1000 * median([r["body"] for r in rows]),
                             tell=1000 * median([r["tell"] for r in rows])) if rows else None,
        # TPE and the pruner read every trial of the study on each ask/should_prune: later trials cost more.
        growth_ms_median=dict(first_quarter_latency=1000 * median(latencies[:quarter]),
                              last_quarter_latency=1000 * median(latencies[-quarter:]),
                              first_quarter_ask=1000 * median([r["ask"] for r in rows[:quarter]]),
                              last_quarter_ask=1000 * median([r["ask"] for r in rows[-quarter:]]),
                              trials_per_quarter=quarter) if rows else None,
        worker_wall_s=[out["wall"] for out in outs.values()], slept_s=[out["slept"] for out in outs.values()],
        errors=errors, crashes=crashes,
        load_average_1_5_15_min=dict(start=load_before, end=load_after),
    )


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=("postgresql", "sqlite"), default=["postgresql", "sqlite"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--compute-ms", nargs="+", type=float, default=[0.0, 50.0])
    parser.add_argument("--trials", type=int, default=40, help="trials per worker")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--admin-db", default="test", help="existing database to CREATE/DROP the bench databases from")
    parser.add_argument("--out", default=str(RESULTS / "storage_load.json"))
    args = parser.parse_args()
    quiet_optuna()
    started, load_before = time.perf_counter(), os.getloadavg()
    backends = {name: Postgres(args.pg_host, args.pg_port, args.pg_user, args.admin_db) if name == "postgresql"
                else Sqlite() for name in args.backends}

    context = mp.get_context("spawn")
    results = context.Queue()
    pool = []
    for index in range(max(args.workers)):
        tasks = context.Queue()
        process = context.Process(target=worker_main, args=(index, tasks, results), daemon=True)
        process.start()
        pool.append((tasks, process))
    for _ in pool:
        results.get()
    pool_start_s = time.perf_counter() - started
    print(f"{len(pool)} spawned workers ready in {pool_start_s:.0f} s; {os.cpu_count()} CPUs", flush=True)

    runs, cleaned = [], {}
    try:
        for backend, db in backends.items():
            for workers in args.workers:
                for compute_ms in args.compute_ms:
                    run = one_run(pool, results, db.fresh(), backend, workers, compute_ms, args.trials)
                    runs.append(run)
                    print(f"  {backend} x{workers} {compute_ms:g} ms: {run['finished']} finished, {run['fails']} "
                          f"failed, {run['wall_s']:.1f} s, {len(run['errors'])} errors, {len(run['crashes'])} "
                          f"crashes (load {run['load_average_1_5_15_min']['end'][0]:.1f})", flush=True)
    finally:
        for tasks, _ in pool:
            tasks.put(None)
        for _, process in pool:
            process.join(timeout=30)
        for name, db in backends.items():
            cleaned[name] = db.drop_all()
    wall = time.perf_counter() - started

    result = dict(
        benchmark="storage_load", timestamp=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        settings=dict(backends=args.backends, workers=args.workers, compute_ms=args.compute_ms,
                      trials_per_worker=args.trials, rungs=list(RUNGS), space=SPACE,
                      storage="autotune.storage.storage_for",
                      sampler=dict(name="tpe", constant_liar=True, multivariate=True, seed="worker index",
                                   n_startup_trials=N_STARTUP_TRIALS),
                      pruner=dict(name="successive_halving", min_resource=RUNGS[0], reduction_factor=REDUCTION_FACTOR),
                      optimize=dict(catch="Exception", gc_after_trial=False),
                      postgres=dict(host=args.pg_host, port=args.pg_port, user=args.pg_user, admin_db=args.admin_db),
                      worker_pool="spawned once, reused by every run; a fresh storage and database per run"),
        versions=package_versions(),
        machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                     cpu_count=os.cpu_count(), oversubscribed=max(args.workers) > (os.cpu_count() or 1),
                     load_average_1_5_15_min=dict(start=load_before, end=os.getloadavg())),
        runs=runs, cleaned_up=cleaned, pool_start_s=pool_start_s, wall_seconds=wall,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    cpus = os.cpu_count()
    print(f"\nstorage load: {args.trials} synthetic trials per worker (4 params, 4 rungs, SH pruner, TPE), "
          f"{cpus} CPUs; {max(args.workers)} workers on {cpus} CPUs oversubscribe the CPU (and PostgreSQL runs "
          f"on the same CPUs)\n")
    print("| backend | workers | compute ms | trials | fails | wall s | trials/s | overhead ms/trial (median) | "
          "p95 trial latency ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        print(f"| {run['backend']} | {run['workers']} | {run['compute_ms']:g} | {run['finished']} | {run['fails']} | "
              f"{run['wall_s']:.1f} | {fmt(run['trials_per_s'])} | {fmt(run['overhead_ms_per_trial_median'])} | "
              f"{fmt(run['latency_ms']['p95'])} |")
    print("\ntrials = COMPLETE + PRUNED; overhead = (worker wall - simulated compute slept) / trials attempted, "
          "median over workers\n")
    print("| backend | workers | compute ms | trials in study | ask ms first/last quarter | "
          "latency ms first/last quarter | split ask/body/tell ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        growth, split = run["growth_ms_median"] or {}, run["split_ms_median"] or {}
        print(f"| {run['backend']} | {run['workers']} | {run['compute_ms']:g} | {run['trials_in_study']} | "
              f"{fmt(growth.get('first_quarter_ask'))} / {fmt(growth.get('last_quarter_ask'))} | "
              f"{fmt(growth.get('first_quarter_latency'))} / {fmt(growth.get('last_quarter_latency'))} | "
              f"{fmt(split.get('ask'))} / {fmt(split.get('body'))} / {fmt(split.get('tell'))} | "
              f"{len(run['errors']) + len(run['crashes'])} |")
    errors = sorted({error for run in runs for error in run["errors"]})
    for error in errors[:10]:
        print(f"error: {error}")
    for run in runs:
        for crash in run["crashes"]:
            print(f"crash ({run['backend']} x{run['workers']}): {crash.strip().splitlines()[-1]}")
    print(f"\nload average {load_before[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end on {cpus} CPUs; "
          f"worker pool start {pool_start_s:.0f} s; total wall {wall:.0f} s; cleaned up "
          + ", ".join(f"{len(items)} {name} databases" for name, items in cleaned.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
