"""The `autotune` command line. Exit codes: 0 ok, 2 bad input or an unreachable storage (one line, no traceback),
1 internal error, 130 interrupted (run the same command again to resume).

    autotune data studies/demo.yaml                   # preview and preflight the spec's table (no model loads)
    autotune study studies/demo.yaml n_trials=12      # create the studies (one per budget), then run trials here
    autotune worker studies/demo.yaml                 # join existing studies from another process or machine
    autotune status studies/demo.yaml                 # trials by state, best so far per budget
    autotune export studies/demo.yaml                 # test-split evaluation of each budget's best -> presets
    autotune pareto studies/demo.yaml                 # cross-budget Pareto table and plots
    autotune ui studies/demo.yaml                     # MLflow UI for the spec's store on 127.0.0.1
    autotune dashboard studies/demo.yaml              # optuna-dashboard on the spec's storage, read-only
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import typer

from adatp.validation import brief, one_line
from autotune.versions import package_versions

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)

SPEC_ARG = typer.Argument(..., help="study spec YAML, e.g. studies/demo.yaml", show_default=False)
OVERRIDES_ARG = typer.Argument(None, help="key=value overrides, e.g. n_trials=10 dataset.limit=40",
                               show_default=False)


class BadInput(Exception):
    """Raised by commands for bad input not caught by the spec itself."""


# Bad-input exception -> the module that defines it. An error can only come from a module already imported, so the
# lookup goes through sys.modules: refusing a bad spec never imports optuna, MLflow or torch just to classify it.
BAD_INPUT_ERRORS = {"SpecError": "autotune.spec", "StudyError": "autotune.workspace",
                    "ConfigError": "adatp.validation", "StorageOutage": "autotune.storage",
                    "TableError": "autotune.data.table"}


def _bad_input_types() -> tuple[type[BaseException], ...]:
    loaded = [getattr(sys.modules[module], name) for name, module in BAD_INPUT_ERRORS.items()
              if module in sys.modules]
    return (BadInput, *loaded)


def guarded(command: Callable) -> Callable:
    """Map exceptions to exit codes and one-line messages; AUTOTUNE_DEBUG=1 re-raises for the traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        debug = os.environ.get("AUTOTUNE_DEBUG") == "1"
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            _exit_interrupted()
        except Exception as error:
            if _interrupted(error):
                _exit_interrupted()
            if debug:
                raise
            first = one_line(str(error)) or type(error).__name__  # at most LINE_CHARS, long values cut
            if isinstance(error, _bad_input_types()):
                typer.echo(f"error: {first}", err=True)
                raise typer.Exit(2) from None
            typer.echo(f"internal error: {type(error).__name__}: {first} (AUTOTUNE_DEBUG=1 shows the traceback)",
                       err=True)
            raise typer.Exit(1) from None

    return wrapper


def _interrupted(error: BaseException | None) -> bool:
    """A KeyboardInterrupt that a library turned into another exception (transformers' lazy imports do)."""
    from autotune.interrupt import cause_of

    return cause_of(error, KeyboardInterrupt) is not None


def _exit_interrupted() -> None:
    typer.echo("\ninterrupted: nothing finished is lost (a running trial is recorded as FAIL (interrupted) and "
               "queued again); run the same command to resume", err=True)
    raise typer.Exit(130) from None


def _console():
    """Tables fit an interactive terminal (rich wraps cells to its width); piped output is not wrapped."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _spec(path: str, overrides: list[str] | None):
    from autotune.spec import load_spec

    return load_spec(path, overrides or [])


def _workspace(spec, echo: bool = True):
    from autotune.study import Workspace

    workspace = Workspace.open(spec)
    if echo:
        typer.echo(f"{workspace.report.summary()}; split by video: {len(workspace.tune)} tune, "
                   f"{len(workspace.test)} test questions")
        for note in workspace.notes:
            typer.echo(note)
    return workspace


def _quiet_libraries() -> None:
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@app.callback()
def _root() -> None:
    """Tune AdaTP thresholds per dataset and FLOPs budget (Optuna studies, tracked in MLflow)."""


@app.command()
def version() -> None:
    """Print the versions of adatp-autotune and the packages it runs on."""
    for name, value in package_versions().items():
        typer.echo(f"{name} {value}")


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (docker stop, a scheduler) stop the run at the next safe point (`autotune.interrupt`):
    the running trial is FAIL (interrupted) and queued again. A second signal stops at once."""
    from autotune.interrupt import STOP

    STOP.install(exit_at_once=True)


@app.command()
@guarded
def study(spec_path: str = SPEC_ARG, overrides: list[str] = OVERRIDES_ARG,
          workers: int = typer.Option(0, min=0, help="start N worker processes here instead of running trials "
                                                     "in this process"),
          gpus: str = typer.Option("", help="comma-separated CUDA device ids: one worker process per GPU "
                                            "(sets model.device=cuda:ID for each)"),
          progress: bool = typer.Option(True, help="show progress bars")) -> None:
    """Create the spec's studies (one per budget) if needed, then run trials until each has n_trials."""
    _stop_on_signals()
    spec = _spec(spec_path, overrides)
    devices = [item.strip() for item in gpus.split(",") if item.strip()]
    if devices and not all(item.isdigit() for item in devices):
        raise BadInput(f"--gpus: expected comma-separated device ids like 0,1,2, got {brief(gpus)}")
    from autotune.spec import mask_url
    from autotune.study import create_studies, run_studies  # optuna, MLflow, torch: only once the input is good

    _quiet_libraries()
    workspace = _workspace(spec)
    studies = create_studies(workspace)
    typer.echo(f"studies in {mask_url(spec.storage)}: " + ", ".join(
        f"{s.study_name} (retention {s.user_attrs['autotune']['retention']:.4f})" for s in studies.values()))
    if devices or workers:
        extra = [[f"model.device=cuda:{device}"] for device in devices] or [[] for _ in range(workers)]
        _run_worker_processes(spec_path, list(overrides or []), extra, spec, studies, progress)
    else:
        run_studies(workspace, studies, progress=progress, echo=typer.echo)
    _print_status(workspace.spec)
    _pareto(workspace.spec)


def _run_worker_processes(spec_path: str, overrides: list[str], extra: list[list[str]], spec, studies,
                          progress: bool) -> None:
    """One `autotune worker` process per entry of `extra`; a progress bar polls the shared storage."""
    import time

    from autotune.interrupt import STOP
    from autotune.study import finished_count

    commands = [[sys.executable, "-m", "autotune.cli", "worker", spec_path, *overrides, *more, "--no-progress"]
                for more in extra]
    # Own sessions: a Ctrl-C in the terminal reaches only this process, which passes each signal on once.
    children = [subprocess.Popen(command, start_new_session=True) for command in commands]
    typer.echo(f"started {len(children)} workers: pids " + " ".join(str(child.pid) for child in children))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=spec.n_trials * len(studies), desc="trials (all workers)", unit="trial")
    forwarded, polled = 0, 0.0
    try:
        with STOP.deferred(force_on_second=False):
            while any(child.poll() is None for child in children):
                for _ in range(STOP.signals - forwarded):  # the workers stop themselves; a second one forces
                    for child in children:
                        if child.poll() is None:
                            child.send_signal(signal.SIGINT)
                forwarded = STOP.signals
                if bar is not None and time.monotonic() - polled > 2:
                    bar.n = sum(min(spec.n_trials, finished_count(study)) for study in studies.values())
                    bar.refresh()
                    polled = time.monotonic()
                time.sleep(0.2)
    finally:
        if bar is not None:
            bar.close()
    STOP.check()
    failed = [child.returncode for child in children if child.returncode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(children)} workers exited with codes {failed}")


@app.command()
@guarded
def worker(spec_path: str = SPEC_ARG, overrides: list[str] = OVERRIDES_ARG,
           progress: bool = typer.Option(True, help="show progress bars")) -> None:
    """Join the spec's existing studies (created by `autotune study`) and run trials until each has n_trials."""
    _stop_on_signals()
    spec = _spec(spec_path, overrides)
    from autotune.study import open_studies, run_studies  # optuna, MLflow, torch: only once the spec is good

    _quiet_libraries()
    workspace = _workspace(spec)
    # A fleet member rides out an outage at start-up too: its supervisor may restart it while the database is down.
    workspace.connect_wait_s = spec.heartbeat.outage
    run_studies(workspace, open_studies(workspace), progress=progress, echo=typer.echo)
    _print_status(workspace.spec)


def _print_status(spec) -> bool:
    from rich.table import Table

    from autotune.storage import stale_trial_numbers
    from autotune.study import ATTR, best_feasible, finished_count, load_studies, recorded_spec

    studies = load_studies(spec)
    spec = recorded_spec(spec, studies)
    notes, rung_note = [], None
    table = Table(title=f"{spec.name}: {spec.n_trials} trials planned per budget")
    for column in ("budget", "study", "retention", "done", "COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING",
                   f"best tune {spec.objective}", "trial", "FLOPs ratio"):
        table.add_column(column, justify="left" if column == "study" else "right")
    any_study = False
    for budget, found in studies.items():
        if found is None:
            table.add_row(f"{budget:.2f}", spec.study_name(budget), "-", "not created", *["-"] * 8)
            continue
        any_study = True
        trials = found.get_trials(deepcopy=False)
        states = [trial.state.name for trial in trials]
        best = best_feasible(found)
        counts = {state: str(states.count(state)) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
        rungs = Counter(t.user_attrs.get("rung") for t in trials if t.state.name == "PRUNED")
        if rungs:  # where pruned trials stopped: rung index -> count
            counts["PRUNED"] += " (" + ", ".join(f"r{rung}: {n}" for rung, n in sorted(rungs.items())) + ")"
            sizes = found.user_attrs.get(ATTR, {}).get("rungs", [])
            rung_note = ("PRUNED (rK: n): n trials stopped by the pruner after rung K, rungs of "
                         + "/".join(map(str, sizes)) + " tune questions (r0 = the first)")
        stale = stale_trial_numbers(found)
        if stale:
            counts["RUNNING"] += f" ({len(stale)} stale)"
            notes.append(f"{found.study_name}: trial(s) {', '.join(map(str, stale))} RUNNING with a worker silent for "
                         f"more than heartbeat.grace ({spec.heartbeat.grace} s): the next worker fails them and runs "
                         f"them again (`autotune worker {spec.source or spec.name}`)")
        table.add_row(
            f"{budget:.2f}", found.study_name, f"{found.user_attrs.get(ATTR, {}).get('retention', float('nan')):.4f}",
            f"{finished_count(found)}/{spec.n_trials}", *counts.values(),
            f"{best.value:.4f}" if best else "-", str(best.number) if best else "-",
            f"{best.user_attrs['flops_ratio']:.4f}" if best else "-",
        )
    _console().print(table)
    for note in ([rung_note] if rung_note else []) + notes:
        typer.echo(note)
    _print_selected(spec)
    return any_study


def _print_selected(spec) -> None:
    """Per budget, the thresholds `autotune export` selected and their held-out accuracy (from the presets)."""
    from rich.table import Table

    from autotune.export import preset_path_for

    presets = {budget: preset_path_for(spec, budget) for budget in spec.budgets}
    found = {budget: path for budget, path in presets.items() if path.is_file()}
    if not found:
        typer.echo(f"no thresholds selected yet: `autotune export {spec.source or spec.name}` picks them per budget")
        return
    import adatp

    names = list(spec.space)
    table = Table(title=f"{spec.name}: selected thresholds per budget (tune split) and their test-split accuracy")
    for column in ("budget", "trial", *names, "test accuracy [95% CI]", "vanilla", "default", "preset"):
        table.add_column(column, justify="left" if column == "preset" else "right")
    for budget, path in found.items():
        try:
            preset = adatp.load_preset(path)
        except adatp.ConfigError as error:
            table.add_row(f"{budget:.2f}", "-", *["-"] * len(names), f"unreadable: {error}", "-", "-", str(path))
            continue
        kind, test, default, vanilla = preset.held_out
        test, default, vanilla = (item or {} for item in (test, default, vanilla))
        ci = test.get("ci95") or [float("nan")] * 2
        table.add_row(f"{budget:.2f}", str(preset.provenance.get("trial", "-")),
                      *[f"{getattr(preset.config, name):.3f}" for name in names],
                      f"{test.get('value', float('nan')):.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" + _fidelity_mark(kind),
                      f"{vanilla.get('value', float('nan')):.3f}" if vanilla else "-",
                      f"{default.get('value', float('nan')):.3f}", str(path))
    _console().print(table)


def _fidelity_mark(kind: str) -> str:
    """Marks a held-out number that is agreement with the unpruned model (unlabelled table), not accuracy."""
    return " fidelity" if kind == "fidelity" else ""


@app.command()
@guarded
def data(spec_path: str = SPEC_ARG, overrides: list[str] = OVERRIDES_ARG,
         probe: bool = typer.Option(True, help="open every video found and count its frames (decord, else PyAV)"),
         progress: bool = typer.Option(True, help="progress bar while probing videos")) -> None:
    """Preview and preflight the spec's table before any model loads: counts, column types, option and answer
    histograms, the first prompts as the model sees them, skipped rows by reason, every missing or unreadable video.
    Exit 2 when something would stop `autotune study` (e.g. a missing video without dataset.missing_video: skip)."""
    spec = _spec(spec_path, overrides)
    from autotune.preview import preflight

    _quiet_libraries()
    report = preflight(spec, probe=probe, progress=progress)
    for line in report.lines():
        typer.echo(line)
    if report.blocking:
        typer.echo(f"error: {one_line('autotune study would refuse this table: ' + '; '.join(report.blocking))}",
                   err=True)
        raise typer.Exit(2)


@app.command()
@guarded
def status(spec_path: str = SPEC_ARG, overrides: list[str] = OVERRIDES_ARG) -> None:
    """Trials by state and the best feasible trial so far, per budget (opens no model)."""
    spec = _spec(spec_path, overrides)
    if not _print_status(spec):
        typer.echo(f"no study of {spec.name} exists yet: run `autotune study {spec_path}`")


def _pareto(spec, log: bool = True) -> None:
    from rich.table import Table

    from autotune.export import summarise_pareto
    from autotune.study import recorded_spec

    spec = recorded_spec(spec)
    directory = Path(spec.workdir) / "pareto"
    points, front, volume, held = summarise_pareto(spec, directory, log=log)
    tested = {(item.budget, item.trial): item for item in held}
    table = Table(title=f"{spec.name}: Pareto front across budgets ({len(front)} on the front, of {len(points)} "
                        f"feasible COMPLETE trials; hypervolume {volume:.4f})")
    names = list(spec.space)
    for column in ("budget", "trial", "FLOPs ratio", f"tune {spec.objective}", "test accuracy", *names):
        table.add_column(column, justify="right")
    for point in front:
        item = tested.get((point.budget, point.trial))
        table.add_row(f"{point.budget:.2f}", str(point.trial), f"{point.flops_ratio:.4f}", f"{point.accuracy:.4f}",
                      "-" if item is None else f"{item.accuracy:.4f}",
                      *[f"{(point.params or {}).get(name, float('nan')):.3f}" for name in names])
    _console().print(table)
    if tested:
        typer.echo("test accuracy: the selected trial of each budget on the held-out split (`autotune export`); "
                   "the plots show it for every budget")
    typer.echo(f"Pareto plots: {directory / 'pareto.png'}  {directory / 'pareto.html'}")


@app.command()
@guarded
def pareto(spec_path: str = SPEC_ARG, overrides: list[str] = OVERRIDES_ARG,
           log: bool = typer.Option(False, help="also log the plots to the spec's MLflow summary run (read-only "
                                                "by default)")) -> None:
    """Cross-budget Pareto front (table and plots) from all feasible trials; hypervolume."""
    spec = _spec(spec_path, overrides)
    _quiet_libraries()
    _pareto(spec, log=log)


@app.command()
@guarded
def export(spec_path: str = SPEC_ARG, overrides: list[str] = OVERRIDES_ARG,
           progress: bool = typer.Option(True, help="show progress bars")) -> None:
    """Evaluate each budget's best config once on the test split; write presets (and log them to MLflow)."""
    spec = _spec(spec_path, overrides)
    from rich.table import Table

    from autotune.export import export_presets  # MLflow, torch: only once the spec is good

    _quiet_libraries()
    workspace = _workspace(spec)
    exported = export_presets(workspace, progress=progress, echo=typer.echo)
    table = Table(title=f"{spec.name}: held-out test split ({len(workspace.test)} questions)")
    for column in ("budget", "trial", "FLOPs ratio", "tune", "test [95% CI]", "vanilla", "default",
                   "test - default [95% CI]", "preset"):
        table.add_column(column, justify="left" if column == "preset" else "right")
    for item in exported:
        if item.preset is None:
            continue
        results = item.preset.results
        kind, test, default, vanilla = item.preset.held_out
        paired = results["paired"]
        tune = results.get(f"tune_{kind}", {}).get("value", paired.get("tune_fidelity"))
        low, high = paired["test_minus_default_ci95"]
        table.add_row(f"{item.budget:.2f}", str(item.preset.provenance["trial"]), f"{results['flops_ratio']:.4f}",
                      f"{tune:.3f}", f"{test['value']:.3f} [{test['ci95'][0]:.3f}, {test['ci95'][1]:.3f}]"
                      + _fidelity_mark(kind), f"{vanilla['value']:.3f}" if vanilla else "-",
                      f"{default['value']:.3f}", f"{paired['test_minus_default']:+.3f} [{low:+.3f}, {high:+.3f}]",
                      str(item.path))
    _console().print(table)
    for item in exported:
        typer.echo(item.message)
    if not any(item.path for item in exported):
        typer.echo("error: no preset written: no budget has a feasible trial", err=True)
        raise typer.Exit(1)
    typer.echo("presets: " + " ".join(str(item.path) for item in exported if item.path))
    from autotune.export import summarise_pareto

    directory = Path(spec.workdir) / "pareto"
    summarise_pareto(workspace.spec, directory)  # the summary plots and run now carry the held-out results
    typer.echo(f"Pareto plots with the held-out results: {directory / 'pareto.png'}  {directory / 'pareto.html'}")
    typer.echo(f"MLflow UI: autotune ui {spec_path}")


@app.command()
@guarded
def ui(spec_path: str = SPEC_ARG, overrides: list[str] = OVERRIDES_ARG,
       port: int = typer.Option(5000, help="port on 127.0.0.1"),
       host: str = typer.Option("127.0.0.1", help="interface to bind (127.0.0.1 keeps it local)")) -> None:
    """Serve the MLflow UI for the spec's tracking store (Ctrl-C stops it)."""
    from autotune.spec import mask_url

    spec = _spec(spec_path, overrides)
    uri = spec.tracking_uri
    if uri.startswith("http"):
        raise BadInput(f"tracking_uri: {mask_url(uri)} is already a server; open it in a browser")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise BadInput(f"tracking_uri: {mask_url(uri)} does not exist yet: run `autotune study {spec_path}` first")
    _check_port_free(host, port)
    command, environment = mlflow_server_command(uri, host, port)
    # The server runs in its own process group (uvicorn and MLflow's job runner are its children): stopping it stops
    # them all, whether the stop came from Ctrl-C or a SIGINT/SIGTERM sent to this process alone.
    # While the server runs, both signals raise KeyboardInterrupt here (not the command's exit-at-once handler).
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = None
    try:
        server = subprocess.Popen(command, env=environment, start_new_session=True)
        if _wait_until_serving(server, host, port):
            base = f"http://{host}:{port}"
            typer.echo(f"MLflow UI for {spec.name} ({mask_url(uri)}): {base}  (Ctrl-C stops it)")
            runs = _runs_table_url(base, spec.name)
            if runs:
                typer.echo(f"runs of {spec.name}: {runs}")
        raise typer.Exit(server.wait())
    except KeyboardInterrupt:
        if server is not None:
            stop_process_group(server)
        raise typer.Exit(0) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command()
@guarded
def dashboard(spec_path: str = SPEC_ARG, overrides: list[str] = OVERRIDES_ARG,
              host: str = typer.Option("127.0.0.1", help="interface to listen on (loopback by default)"),
              port: int = typer.Option(8080, help="port to listen on")) -> None:
    """optuna-dashboard on the spec's Optuna storage, read-only (no study or trial can be edited or deleted)."""
    spec = _spec(spec_path, overrides)
    from autotune.storage import ReadOnlyStorage
    from autotune.study import load_studies, spec_storage  # optuna: only once the spec is good

    if not any(study is not None for study in load_studies(spec).values()):
        raise BadInput(f"no study of {spec.name} exists yet: run `autotune study {spec_path}` first")
    _check_port_free(host, port)
    import optuna_dashboard

    typer.echo(f"optuna-dashboard for {spec.name} (read-only): http://{host}:{port}  (Ctrl-C stops it)")
    optuna_dashboard.run_server(ReadOnlyStorage(spec_storage(spec)), host=host, port=port)


def mlflow_server_command(uri: str, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of the MLflow server for `uri`. The store URI, which may hold a password, goes through
    the environment (MLFLOW_BACKEND_STORE_URI), never the command line that `ps` shows."""
    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"]
    return command, {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri}


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise BadInput(f"--port {port}: cannot listen on {host}:{port} ({error.strerror or error}); "
                           "pick another with --port") from None


def _runs_table_url(base: str, experiment: str, timeout_s: float = 15.0) -> str | None:
    """The experiment's runs table on the served UI, with MLflow 3.17's model-training switch on (it otherwise opens
    on the GenAI overview, whatever the experiment's kind tag says); None when the server does not name it in time."""
    import json
    import time
    import urllib.parse
    import urllib.request

    from autotune.links import runs_url

    query = urllib.parse.urlencode({"experiment_name": experiment})
    deadline = time.monotonic() + timeout_s
    while True:  # the REST API can lag /health by a moment while the server opens its store
        try:
            with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=5) as reply:
                return runs_url(base, json.load(reply)["experiment"]["experiment_id"])
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)


def _wait_until_serving(server: subprocess.Popen, host: str, port: int, timeout_s: float = 120.0) -> bool:
    """True once the server answers its health check; False when it exited first (its own error is printed)."""
    import time
    import urllib.request

    probe = "127.0.0.1" if host in ("0.0.0.0", "") else host
    deadline = time.monotonic() + timeout_s
    while server.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{probe}:{port}/health", timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return server.poll() is None


def stop_process_group(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM to the process group led by `process`, then SIGKILL to what is left after `grace_s`."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the leader may be gone while its children linger
    except ProcessLookupError:
        pass
    process.wait()


def main() -> None:
    from autotune.interrupt import STOP, ignore_signals_for_exit

    STOP.install(exit_at_once=True)  # before Typer parses anything: a signal during start-up exits 130, not -15
    try:
        code = _run_app()
    except SystemExit as done:
        code = done.code
    finally:
        ignore_signals_for_exit()  # done: a signal during interpreter shutdown must not turn 0 into -15
    if code == 130:
        # Python ends a process whose interrupt cut through a C-level import with SIGINT (-2), whatever exit
        # code follows; what was interrupted is recorded already, so leave with the documented 130.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


def _run_app() -> int:
    """Typer without its standalone mode: a bad command line (unknown option or command, missing argument, a value that
    does not parse) is one `error:` line with exit 2, like every other refusal, instead of a usage box."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as error:
        # Click's ClickException, whether Typer vendors Click (typer.TyperException, Typer >= 0.20) or imports it.
        names = {kind.__name__ for kind in type(error).__mro__}
        if "ClickException" not in names or not hasattr(error, "format_message"):
            raise
        if "NoArgsIsHelpError" in names:  # `autotune` alone: the help, as Click prints it
            typer.echo(error.format_message(), err=True)
            return error.exit_code
        context = getattr(error, "ctx", None)
        hint = f" (see: {context.command_path} --help)" if "UsageError" in names and context is not None else ""
        typer.echo(f"error: {one_line(error.format_message())}{hint}", err=True)
        return error.exit_code
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    main()
