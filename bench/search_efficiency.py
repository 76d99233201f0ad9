"""Search efficiency on the demo: best tune accuracy after k trials (TPE, random, default) and the pruner's saving.

On the synthetic demo set with the shipped tiny model (studies/demo.yaml) at one FLOPs budget. Every arm is an
in-memory Optuna study (no MLflow, no SQLite) whose first trial is the enqueued default config, as in the service;
trials are scored rung by rung with `evaluate_rungs`. Arms without `+sh` never prune; `+sh` arms use the spec's
successive-halving pruner over the nested question rungs. The cost of a trial is the question-evaluations it ran
before finishing or being pruned. GPU-hours are an estimate from stated assumptions, not a GPU measurement.
Prints markdown tables and writes bench/results/search_efficiency.{json,png}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import torch

from autotune.spec import StudySpec, load_spec
from autotune.study import (
    RungOutcome,
    Workspace,
    budget_retention,
    default_params,
    evaluate_rungs,
    make_pruner,
    make_sampler,
    quiet_optuna,
    rung_sizes,
)
from autotune.versions import package_versions

SPEC = Path(__file__).resolve().parent.parent / "studies" / "demo.yaml"
RESULTS = Path(__file__).parent / "results"
# arm -> (sampler name, successive-halving pruner on)
ARMS = {"tpe": ("tpe", False), "random": ("random", False), "tpe+sh": ("tpe", True), "random+sh": ("random", True)}
K_POINTS = (1, 5, 10, 20, 30, 50, 100)
# The real study the GPU-hours estimate is for; every number here is an assumption, none is measured.
REAL_STUDY = {
    "model": "LLaVA-OneVision-7B",
    "dataset": "Video-MME",
    "frames": 32,
    "vanilla_prefill_macs": 48.8e12,
    "flops_per_mac": 2,
    "gpu": "H100 SXM",
    "effective_tflops": 400.0,  # bf16, ~40% of the dense peak
    "n_trials": 60,
    "tune_questions": 1350,
    "note": "estimate, not a GPU measurement: LM prefill only (vision features cached once and excluded), "
            "pruned prefill cost = budget x vanilla prefill MACs, same rung fractions as the demo",
}


def run_arm(workspace: Workspace, spec: StudySpec, retention: float, sizes: list[int], pruned: bool, seed: int,
            n_trials: int) -> list[dict]:
    """One in-memory study; per trial: state, value (None if pruned), questions, cumulative questions, best so far."""
    pruner = make_pruner(spec, sizes) if pruned else optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec, seed), pruner=pruner)
    study.enqueue_trial(default_params(spec))
    stops: dict[int, RungOutcome] = {}

    def objective(trial: optuna.Trial) -> float:
        params = {name: trial.suggest_float(name, low, high) for name, (low, high) in spec.space.items()}

        def on_rung(outcome: RungOutcome) -> None:
            stops[trial.number] = outcome
            trial.report(outcome.value, outcome.questions)
            if outcome.rung < len(sizes) - 1 and trial.should_prune():
                raise optuna.TrialPruned()

        return evaluate_rungs(workspace, spec.config_for(retention, params), sizes, on_rung).value

    study.optimize(objective, n_trials=n_trials, gc_after_trial=False)
    trace, spent, best = [], 0, None
    for trial in study.get_trials(deepcopy=False):
        stop = stops[trial.number]
        spent += stop.questions
        complete = trial.state == optuna.trial.TrialState.COMPLETE
        if complete:
            best = trial.value if best is None else max(best, trial.value)
        trace.append(dict(trial=trial.number, state=trial.state.name, value=trial.value if complete else None,
                          value_at_stop=stop.value, rung=stop.rung, questions=stop.questions,
                          cumulative_questions=spent, seconds=stop.seconds, best_so_far=best, params=trial.params))
    return trace


def best_after(trace: list[dict], k: int) -> float | None:
    return trace[min(k, len(trace)) - 1]["best_so_far"]


def cost_to_reach(trace: list[dict], target: float) -> int | None:
    """Cumulative question-evaluations when the best COMPLETE value first reaches `target`; None if it never does."""
    for row in trace:
        if row["best_so_far"] is not None and row["best_so_far"] >= target - 1e-9:
            return row["cumulative_questions"]
    return None


def trials_to_reach(trace: list[dict], target: float) -> tuple[int, int] | None:
    """(trials run, cumulative question-evaluations) when the best COMPLETE value first reaches `target`."""
    for row in trace:
        if row["best_so_far"] is not None and row["best_so_far"] >= target - 1e-9:
            return row["trial"] + 1, row["cumulative_questions"]
    return None


def match_random(traces: dict[str, dict[int, list[dict]]]) -> dict | None:
    """How many trials (and question-evaluations) each arm needs to match the best of random search's trials.

    The target is the median over seeds of random search's best after all its trials (100 by default); random
    search itself is listed with its cost to first reach its own best and its full cost.
    """
    if "random" not in traces:
        return None
    random_traces = traces["random"]
    finals = [trace[-1]["best_so_far"] for trace in random_traces.values()]
    target = statistics.median(finals)
    arms = {}
    for arm, seeds in traces.items():
        rows = []
        for seed, trace in seeds.items():
            reached = trials_to_reach(trace, target)
            rows.append(dict(seed=seed, trials=reached[0] if reached else None,
                             questions=reached[1] if reached else None, total_trials=len(trace),
                             total_questions=trace[-1]["cumulative_questions"], final_best=trace[-1]["best_so_far"]))
        arms[arm] = dict(per_seed=rows, reached=sum(row["trials"] is not None for row in rows), seeds=len(rows),
                         median_trials=median([row["trials"] for row in rows]),
                         median_questions=median([row["questions"] for row in rows]),
                         median_total_questions=median([row["total_questions"] for row in rows]))
    random_total = arms["random"]["median_total_questions"]
    for arm in arms.values():
        arm["questions_vs_random_total"] = (arm["median_questions"] / random_total
                                            if arm["median_questions"] is not None else None)
    return dict(target=target, random_finals=finals, random_trials=len(next(iter(random_traces.values()))),
                arms=arms)


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def pruner_saving(full: dict[int, list[dict]], pruned: dict[int, list[dict]]) -> dict:
    """Per seed and median: cost to reach the unpruned arm's final best, and total questions over the same trials."""
    rows = []
    for seed in full:
        target = full[seed][-1]["best_so_far"]
        cost_full, cost_pruned = cost_to_reach(full[seed], target), cost_to_reach(pruned[seed], target)
        total_full, total_pruned = full[seed][-1]["cumulative_questions"], pruned[seed][-1]["cumulative_questions"]
        rows.append(dict(
            seed=seed, target=target, cost_full=cost_full, cost_pruned=cost_pruned, reached=cost_pruned is not None,
            saving_to_target=1 - cost_pruned / cost_full if cost_pruned is not None else None,
            total_full=total_full, total_pruned=total_pruned, total_ratio=total_pruned / total_full,
            final_full=target, final_pruned=pruned[seed][-1]["best_so_far"],
        ))
    summary = dict(
        reached=sum(row["reached"] for row in rows), seeds=len(rows),
        **{key: median([row[key] for row in rows]) for key in
           ("target", "cost_full", "cost_pruned", "saving_to_target", "total_full", "total_pruned", "total_ratio",
            "final_full", "final_pruned")},
    )
    return dict(per_seed=rows, median=summary)


def gpu_hours(budget: float, total_ratio: float, saving_to_target: float | None) -> dict:
    """GPU-hours of the assumed real study, with and without the pruner, from the measured question fractions."""
    pruned_tflop = budget * REAL_STUDY["vanilla_prefill_macs"] * REAL_STUDY["flops_per_mac"] / 1e12
    seconds_per_question = pruned_tflop / REAL_STUDY["effective_tflops"]
    questions = REAL_STUDY["n_trials"] * REAL_STUDY["tune_questions"]
    without = questions * seconds_per_question / 3600
    return dict(
        pruned_prefill_tflop_per_question=pruned_tflop, seconds_per_question=seconds_per_question,
        question_evaluations_without_pruner=questions, gpu_hours_without_pruner=without,
        gpu_hours_with_pruner=without * total_ratio, gpu_hours_saved=without * (1 - total_ratio),
        gpu_hours_to_target_with_pruner=(without * (1 - saving_to_target) if saving_to_target is not None
                                         else None),
    )


def band(traces: list[list[dict]], x_key: str, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, min and max over seeds of best-so-far at each grid point (NaN before any COMPLETE trial)."""
    values = np.full((len(traces), len(grid)), np.nan)
    for i, trace in enumerate(traces):
        xs = np.array([row[x_key] for row in trace])
        best = np.array([np.nan if row["best_so_far"] is None else row["best_so_far"] for row in trace])
        at = np.searchsorted(xs, grid, side="right") - 1
        values[i] = np.where(at >= 0, best[np.clip(at, 0, None)], np.nan)
    with warnings.catch_warnings():  # all-NaN columns before the first COMPLETE trial stay NaN (not drawn)
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=0), np.nanmin(values, axis=0), np.nanmax(values, axis=0)


def plot(traces: dict[str, dict[int, list[dict]]], default_value: float, budget: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_trial, by_cost) = plt.subplots(1, 2, figsize=(12, 4.5))
    n_trials = max(len(trace) for arm in traces.values() for trace in arm.values())
    trials = np.arange(n_trials)
    for arm, seeds in traces.items():
        mid, low, high = band(list(seeds.values()), "trial", trials)
        line, = by_trial.plot(trials + 1, mid, label=arm, drawstyle="steps-post")
        by_trial.fill_between(trials + 1, low, high, step="post", alpha=0.15, color=line.get_color())
    most = max(trace[-1]["cumulative_questions"] for arm in ("tpe", "tpe+sh") if arm in traces
               for trace in traces[arm].values())
    spent = np.linspace(0, most, 400)
    for arm in ("tpe", "tpe+sh"):
        if arm in traces:
            mid, low, high = band(list(traces[arm].values()), "cumulative_questions", spent)
            line, = by_cost.plot(spent, mid, label=arm, drawstyle="steps-post")
            by_cost.fill_between(spent, low, high, step="post", alpha=0.15, color=line.get_color())
    for axis in (by_trial, by_cost):
        axis.axhline(default_value, color="black", linestyle="--", linewidth=1, label="default config")
        axis.set_ylabel("best tune accuracy so far")
        axis.grid(alpha=0.3)
        axis.legend(loc="best")
    by_trial.set_xlabel("trial")
    by_cost.set_xlabel("cumulative question-evaluations")
    seeds = len(next(iter(traces.values())))
    by_trial.set_title(f"demo, budget {budget:g}: median over {seeds} seeds (band: min-max)")
    by_cost.set_title("same, against search cost (pruner vs none)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fmt(value, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=5, help="sampler seeds 0..N-1")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--workdir", default="/tmp/bench-search", help="data and feature cache of the bench")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "search_efficiency.json"))
    parser.add_argument("--plot", default=str(RESULTS / "search_efficiency.png"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_optuna()
    started, load_before = time.perf_counter(), os.getloadavg()
    overrides = [f"workdir={args.workdir}", f"dataset.root={args.workdir}/data", f"budgets=[{args.budget}]"]
    specs = {name: load_spec(SPEC, [*overrides, f"sampler.name={name}"]) for name in ("tpe", "random")}
    workspace = Workspace.open(specs["tpe"])
    retention, planned = budget_retention(workspace, args.budget, where="--budget")
    base = workspace.spec
    sizes = rung_sizes(len(workspace.tune), base.pruner.rungs, base.pruner.reduction_factor)

    # The default config alone; this first pass also fills the feature cache, so arm trials cost only the prefill.
    default = evaluate_rungs(workspace, base.config_for(retention, default_params(base)), sizes, lambda _: None)
    traces: dict[str, dict[int, list[dict]]] = {}
    arm_seconds = {}
    for arm in args.arms:
        sampler_name, pruned = ARMS[arm]
        arm_start = time.perf_counter()
        traces[arm] = {}
        for seed in range(args.seeds):
            traces[arm][seed] = run_arm(workspace, specs[sampler_name], retention, sizes, pruned, seed, args.trials)
            print(f"  {arm} seed {seed}: best {fmt(traces[arm][seed][-1]['best_so_far'])} "
                  f"({time.perf_counter() - arm_start:.0f} s)", flush=True)
        arm_seconds[arm] = time.perf_counter() - arm_start
        finals = [trace[-1]["best_so_far"] for trace in traces[arm].values()]
        print(f"{arm}: {args.seeds} seeds x {args.trials} trials in {arm_seconds[arm]:.0f} s, "
              f"final best {fmt(min(finals))}..{fmt(max(finals))}", flush=True)

    ks = [k for k in K_POINTS if k <= args.trials]
    best_at_k = {arm: {k: median([best_after(trace, k) for trace in seeds.values()]) for k in ks}
                 for arm, seeds in traces.items()}
    savings = {f"{arm}+sh": pruner_saving(traces[arm], traces[f"{arm}+sh"]) for arm in ("tpe", "random")
               if arm in traces and f"{arm}+sh" in traces}
    all_rows = [row for seeds in traces.values() for trace in seeds.values() for row in trace]
    cpu_seconds_per_question = sum(row["seconds"] for row in all_rows) / sum(row["questions"] for row in all_rows)
    # Per-trial median too: other processes on a shared machine inflate some trials' seconds.
    cpu_median_seconds_per_question = statistics.median(row["seconds"] / row["questions"] for row in all_rows)
    matched = match_random(traces)
    estimate = None
    if "tpe+sh" in savings:
        tpe_sh = savings["tpe+sh"]["median"]
        estimate = gpu_hours(args.budget, tpe_sh["total_ratio"], tpe_sh["saving_to_target"])
    wall = time.perf_counter() - started

    result = dict(
        benchmark="search_efficiency", timestamp=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        settings=dict(spec=str(SPEC), budget=args.budget, retention=retention, planned_flops_ratio=planned,
                      trials=args.trials, seeds=list(range(args.seeds)), arms={arm: ARMS[arm] for arm in args.arms},
                      rungs=sizes, tune_questions=len(workspace.tune), model=base.model.path,
                      sampler=dict(n_startup_trials=base.sampler.n_startup_trials),
                      pruner=dict(name=base.pruner.name, rungs=base.pruner.rungs,
                                  reduction_factor=base.pruner.reduction_factor),
                      default_params=default_params(base)),
        versions=package_versions(),
        machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                     cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                     load_average_1_5_15_min=dict(start=load_before, end=os.getloadavg())),
        default=dict(tune_accuracy=default.value, questions=default.questions, flops_ratio=default.flops_ratio,
                     seconds_cold_cache=default.seconds),
        best_at_k=dict(k=ks, median_over_seeds={arm: [row[k] for k in ks] for arm, row in best_at_k.items()},
                       default=default.value),
        pruner_saving=savings,
        match_random=matched,
        cpu_seconds_per_question_evaluation=dict(mean=cpu_seconds_per_question,
                                                 median_of_trials=cpu_median_seconds_per_question),
        assumptions=REAL_STUDY,
        gpu_hours_estimate=estimate,
        arm_seconds=arm_seconds, wall_seconds=wall,
        traces={arm: {str(seed): trace for seed, trace in seeds.items()} for arm, seeds in traces.items()},
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    plot(traces, default.value, args.budget, Path(args.plot))

    print(f"\nsearch efficiency on the demo (synthetic, {len(workspace.tune)} tune questions, rungs {sizes}), "
          f"budget {args.budget:g} (retention {retention:.3f}), median over {args.seeds} seeds\n")
    print("| arm | " + " | ".join(f"k={k}" for k in ks) + " |")
    print("|---|" + "---:|" * len(ks))
    for arm, row in best_at_k.items():
        print(f"| {arm} | " + " | ".join(fmt(row[k]) for k in ks) + " |")
    print("| default alone | " + " | ".join(fmt(default.value) for _ in ks) + " |")
    for name, saving in savings.items():
        full = name.removesuffix("+sh")
        print(f"\npruner saving, {name} vs {full}: target = {full}'s final best after {args.trials} trials; "
              "cost = question-evaluations until the best COMPLETE trial first reaches it\n")
        print(f"| seed | target | {full} cost | {name} cost | saving | {full} total | {name} total | "
              f"total ratio | {name} final best |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in saving["per_seed"]:
            print(f"| {row['seed']} | {row['target']:.3f} | {row['cost_full']} | "
                  f"{row['cost_pruned'] if row['reached'] else 'not reached'} | {fmt(row['saving_to_target'], '.0%')}"
                  f" | {row['total_full']} | {row['total_pruned']} | {row['total_ratio']:.2f} | "
                  f"{row['final_pruned']:.3f} |")
        m = saving["median"]
        print(f"| median | {m['target']:.3f} | {m['cost_full']:g} | {fmt(m['cost_pruned'], 'g')} "
              f"({m['reached']}/{m['seeds']} reached) | {fmt(m['saving_to_target'], '.0%')} | {m['total_full']:g} | "
              f"{m['total_pruned']:g} | {m['total_ratio']:.2f} | {m['final_pruned']:.3f} |")
    if matched is not None:
        print(f"\ntrials to match random search: target = median over seeds of the best after "
              f"{matched['random_trials']} random trials = {matched['target']:.3f} (per seed: "
              + ", ".join(f"{value:.3f}" for value in matched["random_finals"]) + ")\n")
        print("| arm | seeds reaching it | trials (median) | question-evaluations (median) | "
              "vs random's full run | per seed: trials |")
        print("|---|---:|---:|---:|---:|---|")
        for arm, row in matched["arms"].items():
            per_seed = ", ".join("—" if r["trials"] is None else str(r["trials"]) for r in row["per_seed"])
            print(f"| {arm} | {row['reached']}/{row['seeds']} | {fmt(row['median_trials'], 'g')} | "
                  f"{fmt(row['median_questions'], ',.0f')} | {fmt(row['questions_vs_random_total'], '.2f')}x | "
                  f"{per_seed} |")
    print(f"\nmeasured on this CPU: {cpu_seconds_per_question * 1000:.2f} ms per question-evaluation "
          f"(mean; median over trials {cpu_median_seconds_per_question * 1000:.2f} ms; warm feature cache, "
          f"{torch.get_num_threads()} threads, load average {load_before[0]:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end on {os.cpu_count()} CPUs)")
    if estimate is not None:
        print("\nGPU-hours ESTIMATE (assumptions, not a GPU measurement): "
              f"{REAL_STUDY['model']} on {REAL_STUDY['dataset']}, {REAL_STUDY['frames']} frames, pruned prefill "
              f"{args.budget:g} x {REAL_STUDY['vanilla_prefill_macs'] / 1e12:.1f}e12 MACs = "
              f"{estimate['pruned_prefill_tflop_per_question']:.1f} TFLOP/question at an effective "
              f"{REAL_STUDY['effective_tflops']:.0f} TFLOP/s bf16 on an {REAL_STUDY['gpu']} (~40% of peak) = "
              f"{estimate['seconds_per_question']:.3f} s/question; vision tower cached, excluded\n")
        print("| study | question-evaluations | GPU-hours (est.) |")
        print("|---|---:|---:|")
        n, q = REAL_STUDY["n_trials"], REAL_STUDY["tune_questions"]
        ratio = savings["tpe+sh"]["median"]["total_ratio"]
        print(f"| TPE, {n} trials x {q} tune questions, no pruner | {n * q:,} | "
              f"{estimate['gpu_hours_without_pruner']:.2f} |")
        print(f"| TPE + successive halving (measured ratio {ratio:.2f}) | {round(n * q * ratio):,} | "
              f"{estimate['gpu_hours_with_pruner']:.2f} |")
        print(f"| saved | {round(n * q * (1 - ratio)):,} | {estimate['gpu_hours_saved']:.2f} |")
    print(f"\nwall time {wall:.0f} s; wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
