"""The benchmark tables of the README and docs/, rendered from bench/results/*.json (they quote them; a test checks it).

`python bench/tables.py` prints every table whose results file exists; `--results DIR` reads another folder (e.g.
the files a GPU run wrote under $OUT), so new numbers go into docs/ by pasting, never by retyping.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ARM_NAMES = {"tpe": "TPE", "random": "random search", "tpe+sh": "TPE + successive halving",
             "random+sh": "random + successive halving"}


def _table(header: list[str], align: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def prune_overhead(data: dict) -> str:
    rows = [[r["method"], f"{r['scoring_s'] * 1e3:.1f}" if r["scoring_s"] else "0", f"{r['select_s'] * 1e3:.1f}",
             f"{r['overhead_share_measured']:.2%}", f"{r['overhead_share_28_layers']:.2%}"] for r in data["rows"]]
    return _table(["method", "scoring ms", "selection ms", "share of 3-layer pruned prefill", "share@28L"],
                  ["l", "r", "r", "r", "r"], rows)


def prefill_speed(data: dict) -> str:
    rows = []
    for r in data["rows"]:
        selection = "-" if r["selection_ms"] is None else f"{r['selection_ms']:.2f} ({r['selection_share']:.1%})"
        rows.append([r["setting"], f"{r['budget']:.2f}", f"{r['flops_ratio']:.3f}", f"{r['latency_ms']:.1f}",
                     f"{r['latency_ratio']:.3f}", f"{r['ratio_over_flops']:.2f}", selection, f"{r['peak_mib']:.0f}"])
    return _table(["setting", "budget", "FLOPs ratio", "latency ms", "latency ratio", "latency / FLOPs ratio",
                   "selection ms (share)", "peak MiB above weights"], ["l"] + ["r"] * 7, rows)


def selection_cost(data: dict) -> str:
    graphs = any("graph_ms" in r for r in data["rows"])
    rows = []
    for r in data["rows"]:
        row = [r["method"], str(r["batch"]), str(r["dispatched_ops"]), str(r["non_view_ops"]), f"{r['eager_ms']:.3f}"]
        if graphs:
            row += [f"{r['graph_ms']:.3f}", str(r["graph_matches_eager"])] if "graph_ms" in r else ["-", "-"]
        rows.append(row)
    header = ["method", "batch", "operators", "non-view operators", "eager ms"]
    return _table(header + (["graph ms", "same tokens"] if graphs else []), ["l"] + ["r"] * (len(header) - 1
                  + 2 * graphs), rows)


def trial_cost(data: dict) -> str:
    rows = [[r["trial"], str(r["questions"]), *(f"{r[k]:.3f}" for k in ("decode", "vision", "selection", "prefill",
                                                                      "total"))] for r in data["rows"]]
    table = _table(["trial", "questions", "decode s", "vision s", "selection s", "LM prefill s", "total s"],
                   ["l"] + ["r"] * 6, rows)
    return table + _prefix_table(data.get("prefix_cache"))


def _prefix_table(rows: list[dict] | None) -> str:
    """Warm trials with and without the prefix cache over the pure pruned prefill (trial_cost's prefix_cache)."""
    if not rows:
        return ""
    body = [[f"{r['kind']} {r['point']:.2f}", f"{r['retention']:.3f}", f"{r['flops_ratio']:.3f}",
             f"{r['pure_pruned_prefill_s']:.3f}", f"{r['warm_uncached_s']:.3f}", f"{r['warm_cached_s']:.3f}",
             f"{r['uncached_over_pure']:.2f}", f"{r['cached_over_pure']:.2f}",
             f"{r['analytic_cached_over_pruned']:.3f}"] for r in rows]
    return "\n\n" + _table(["point", "retention", "FLOPs ratio", "pure pruned prefill s", "warm trial s",
                             "warm cached trial s", "trial / pure", "cached / pure", "cached FLOPs / pruned"],
                            ["l"] + ["r"] * 8, body)


def trial_cost_cpu_estimate(data: dict) -> str:
    rows = [[f"{r['budget']:.2f}", f"{r['retention']:.3f}", str(r["kept"]), f"{r['uncached_28_layers_s']:.1f}",
             f"{r['cached_28_layers_s']:.1f}", f"{r['cached_over_pure_28']:.3f}",
             f"{r['analytic_cached_over_pruned']:.3f}"] for r in data["rows"]]
    return _table(["budget", "retention", "kept", "pure pruned prefill s (28 layers)", "cached trial s (28 layers)",
                   "cached / pure", "cached FLOPs / pruned"], ["r"] * 7, rows)


def trial_cost_gpu(data: dict) -> str:
    rows = [[label, f"{v['warm_trial_s']:.3f}", f"{v['pure_pruned_prefill_s']:.3f}", f"{v['warm_over_pure']:.2f}"]
            for label, v in data["variants"].items()]
    table = _table(["selection", "warm trial s", "pure pruned prefill s", "trial / pure"], ["l", "r", "r", "r"], rows)
    if "pruned_tflops" not in data:  # not a CUDA run
        return table + _prefix_table(data.get("prefix_cache"))

    def mfu(key: str) -> str:
        return "" if data.get(key) is None else f" (MFU {data[key]:.1%})"

    table += _prefix_table(data.get("prefix_cache"))
    return (table + f"\n\npure prefill: pruned {data['pruned_tflops']:.0f} TFLOP/s{mfu('mfu_pruned')}, vanilla "
            f"{data['vanilla_tflops']:.0f} TFLOP/s{mfu('mfu_vanilla')}; latency ratio {data['latency_ratio']:.3f} at "
            f"padded FLOPs ratio {data['padded_flops_ratio']:.3f}")


def storage_load(data: dict) -> str:
    rows = []
    for r in data["runs"]:
        if r["compute_ms"]:
            continue
        latency = r.get("latency_ms", {}).get("p95")
        rows.append([r["backend"], str(r["workers"]), f"{r['compute_ms']:.0f}", str(r["finished"]),
                     f"{r['trials_per_s']:.1f}", f"{r['overhead_ms_per_trial_median']:.0f}",
                     "-" if latency is None else f"{latency:.0f}"])
    return _table(["backend", "workers", "simulated compute ms", "trials", "trials/s",
                   "storage overhead ms/trial (median)", "p95 trial latency ms"], ["l"] + ["r"] * 6, rows)


def search_efficiency(data: dict) -> str:
    best = data["best_at_k"]
    rows = [[ARM_NAMES[arm], *(f"{v:.3f}" for v in values)] for arm, values in best["median_over_seeds"].items()]
    rows.append(["default config alone", *(f"{best['default']:.3f}" for _ in best["k"])])
    curve = _table(["arm", *(f"k={k}" for k in best["k"])], ["l"] + ["r"] * len(best["k"]), rows)
    rows = []
    for arm, result in data["match_random"]["arms"].items():
        per_seed = ", ".join("—" if s["trials"] is None else str(s["trials"]) for s in result["per_seed"])
        trials, questions = result["median_trials"], result["median_questions"]  # medians can end in .5
        rows.append([ARM_NAMES[arm], f"{result['reached']}/{result['seeds']}",
                     "—" if trials is None else f"{trials:g}", "—" if questions is None else f"{round(questions):,}",
                     f"{result['questions_vs_random_total']:.2f}x", per_seed])
    match = _table(["arm", "seeds reaching it", "trials (median)", "question-evaluations (median)",
                    "vs the 100-trial random run", "per seed: trials"], ["l", "r", "r", "r", "r", "l"], rows)
    return curve + "\n\n" + match


def demo_model_quality(data: dict) -> str:
    rows = [[r["setting"], f"{r['accuracy']:.3f}", f"{r['flops_ratio']:.3f}", str(r["kept_tokens"])]
            for r in data["rows"]]
    return _table(["setting", "accuracy", "FLOPs ratio", "visual tokens kept"], ["l", "r", "r", "r"], rows)


def oq3(data: dict) -> str:
    """One row per (budget, prune layer): accuracy of AdaTP, FastV and uniform at the same retention, so at the same
    analytic FLOPs."""
    cells: dict[tuple[float, int], dict] = {}
    for r in data["rows"]:
        cell = cells.setdefault((r["budget"], r["prune_layer"]), {"kept": r["kept_tokens"], "flops": r["flops_ratio"]})
        cell[r["method"]] = r["accuracy"]
    rows = [[f"{budget:.2f}", f"{layer}", f"{cell['flops']:.3f}", str(cell["kept"]),
             *(f"{cell[method]:.3f}" for method in ("adatp", "fastv", "uniform"))]
            for (budget, layer), cell in cells.items()]
    return _table(["budget", "prune layer K", "FLOPs ratio", "visual tokens kept", "AdaTP", "FastV", "uniform"],
                  ["r", "r", "r", "r", "r", "r", "r"], rows)


ABLATION_NAMES = {"adatp": "AdaTP, tuned", "adatp_random_segments": "AdaTP, random segment relevance, tuned",
                  "uniform": "uniform", "random": "random", "fastv": "FastV (norm scores)",
                  "default": "AdaTP, default thresholds", "vanilla": "vanilla (no pruning)"}


def ablation(data: dict) -> str:
    rows = []
    for r in data["rows"]:
        diff = ("-" if "adatp_minus_this" not in r else
                f"{r['adatp_minus_this']:+.3f} [{r['adatp_minus_this_ci95'][0]:+.3f}, "
                f"{r['adatp_minus_this_ci95'][1]:+.3f}] ({r['wins_losses'][0]}/{r['wins_losses'][1]})")
        tune = f"{r['tune_accuracy']:.3f}" if "tune_accuracy" in r else "-"
        name = ABLATION_NAMES[r["method"]]
        if r["method"] == "fastv" and "score" in r:
            name = f"FastV ({r['score']} scores)"
        rows.append([f"{r['budget']:.2f}", name, tune,
                     f"{r['test_accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]", diff])
    return _table(["budget", "method", "tune accuracy", "test accuracy [95% CI]",
                   "AdaTP - this [95% CI] (wins/losses)"], ["r", "l", "r", "r", "r"], rows)


def quality(data: dict) -> str:
    """bench/ablation.py --tuned adatp, one row per budget: tuned AdaTP against the default thresholds, FastV and
    uniform at the same retention (so the same FLOPs), on the same held-out questions."""
    by_budget: dict[float, dict[str, dict]] = {}
    for r in data["rows"]:
        by_budget.setdefault(r["budget"], {})[r["method"]] = r
    rows = []
    for budget, arms in by_budget.items():
        tuned, default = arms["adatp"], arms["default"]
        rows.append([f"{budget:.2f}", f"{tuned['retention']:.4f}",
                     f"{tuned['test_accuracy']:.3f} [{tuned['ci95'][0]:.3f}, {tuned['ci95'][1]:.3f}]",
                     *(f"{arms[m]['test_accuracy']:.3f}" for m in ("default", "fastv", "uniform", "vanilla")),
                     f"{default['adatp_minus_this']:+.3f} [{default['adatp_minus_this_ci95'][0]:+.3f}, "
                     f"{default['adatp_minus_this_ci95'][1]:+.3f}]"])
    return _table(["budget", "retention", "tuned [95% CI]", "default", "FastV", "uniform", "vanilla",
                   "tuned - default [95% CI]"], ["r"] * 8, rows)


def soak(data: dict) -> str:
    """bench/soak.py: the faults injected in the window and what the stores held at the end."""
    c, down = data["counts"], data["db_down_s"]
    outage = f"{min(down):.0f}-{max(down):.0f}" if down else "-"
    row = [f"{data['minutes']:g} min, seed {data['seed']}", str(data["workers_per_fleet"]),
           f"{c['kills']} ({c['kills_sigkill']} / {c['kills_sigterm']})", f"{c['db_restarts']} ({outage} s)",
           str(c["mlflow_restarts"]), str(c["trials_planned"]), f"{c['complete']} / {c['pruned']}",
           f"{c['failed']} / {c['retries']}", f"{c['lost']} / {c['duplicated']} / {c['stuck']}",
           f"{c['child_runs']} / {c['orphan_runs']}", f"{data['wall_s']:.0f}"]
    return _table(["window", "workers", "kills (SIGKILL / SIGTERM)", "PostgreSQL restarts (down)", "MLflow restarts",
                   "trials planned", "complete / pruned", "failed / re-run", "lost / duplicated / stuck",
                   "child runs / orphans", "wall s"], ["l"] + ["r"] * 10, [row])


# results file stem -> renderer; prefill_speed_*, trial_cost_* (GPU shapes) and selection_cost_cuda by pattern.
RENDERERS: dict[str, Callable[[dict], str]] = {
    "prune_overhead": prune_overhead,
    "prefill_speed_7b": prefill_speed,
    "prefill_speed_0.5b": prefill_speed,
    "prefill_speed_qwen2.5-vl-7b": prefill_speed,
    "prefill_speed_qwen3.5-9b": prefill_speed,
    "prefill_speed_qwen3.5-35b-a3b": prefill_speed,
    "selection_cost": selection_cost,
    "selection_cost_cuda": selection_cost,
    "trial_cost": trial_cost,
    "trial_cost_7b": trial_cost_gpu,
    "trial_cost_0.5b": trial_cost_gpu,
    "trial_cost_qwen2.5-vl-7b": trial_cost_gpu,
    "trial_cost_7b-cpu": trial_cost_cpu_estimate,
    "storage_load": storage_load,
    "demo_model_quality_qwen": demo_model_quality,
    "search_efficiency": search_efficiency,
    "ablation": ablation,
    "oq3_tiny-qwen3.5-synthetic": oq3,
    "quality_demo-qwen3.5": quality,
    "soak": soak,
}


def render_all(results: Path = RESULTS) -> dict[str, str]:
    """{results file stem: markdown} for every known results file present in `results`."""
    tables = {}
    for stem, render in RENDERERS.items():
        path = results / f"{stem}.json"
        if path.exists():
            tables[stem] = render(json.loads(path.read_text(encoding="utf-8")))
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    for stem, markdown in render_all(args.results).items():
        print(f"<!-- {stem}.json -->\n{markdown}\n")


if __name__ == "__main__":
    main()
