"""Held-out export and the cross-budget Pareto summary.

`export_presets`: each budget's best feasible trial (chosen on the tune split only) is evaluated once on the test
split, together with the default config at the same retention and the unpruned model, on the same questions:
95% bootstrap CI of its accuracy and paired differences against both. The result is an `adatp-preset/v1` file in
the presets dir, also logged as an artifact of the study's parent MLflow run.

`summarise_pareto`: the front across budgets from every feasible COMPLETE trial, its hypervolume, a PNG and an
interactive HTML plot with each exported budget's held-out numbers (read back from the presets), logged to the
spec's summary run. `autotune export` runs it again once the presets are written.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any

import adatp
from adatp.presets import held_out_view
from autotune.data import mlvu_dev_score
from autotune.data.scoring import score_answer
from autotune.pareto import HeldOut, Point, front_table, hypervolume, pareto_front, plot_html, plot_png
from autotune.stats import accuracy_summary, paired_difference
from autotune.study import (
    ATTR,
    StudyError,
    Workspace,
    best_feasible,
    check_same_meaning,
    default_params,
    load_studies,
    study_points,
    trial_config,
)
from autotune.versions import package_versions

BOOTSTRAP_SAMPLES = 2000


@dataclasses.dataclass
class Exported:
    """What `export` did for one budget: a preset path, or the reason there is none."""

    budget: float
    study: str
    path: Path | None = None
    preset: adatp.Preset | None = None
    message: str = ""


def preset_path(workspace: Workspace, budget: float) -> Path:
    return preset_path_for(workspace.spec, budget)


def preset_path_for(spec, budget: float) -> Path:
    """Where `export` writes (and `status` reads) a budget's preset."""
    return Path(spec.presets_dir) / f"{spec.name}-{spec.dataset.name}-b{budget:.2f}.yaml"


def _require_studies(spec) -> dict:
    studies = load_studies(spec)
    missing = [spec.study_name(budget) for budget, study in studies.items() if study is None]
    if missing:
        raise StudyError(f"study {missing[0]} does not exist yet: run `autotune study {spec.source or spec.name}`")
    return studies


def export_presets(workspace: Workspace, progress: bool = False, echo=print) -> list[Exported]:
    """Evaluate each budget's best config on the test split and write its preset (see the module docstring)."""
    studies = _require_studies(workspace.spec)
    # The model loads and the tracking store opens (or fails, in one line) before the first test evaluation.
    _ = workspace.engine, workspace.tracker
    vanilla = workspace.vanilla(workspace.test)
    return [_export_budget(workspace, budget, study, vanilla, progress, echo) for budget, study in studies.items()]


def _export_budget(workspace: Workspace, budget: float, study, vanilla: dict[str, str | None], progress: bool,
                   echo) -> Exported:
    """One budget: its selected trial on the test split, the preset written and logged, or why there is none."""
    trials = study.get_trials(deepcopy=False)
    best = best_feasible(study)
    if best is None:
        return Exported(budget, study.study_name, message=_no_feasible_message(budget, trials))
    check_same_meaning(workspace, study)
    chosen, default = _chosen_and_default(workspace.spec, study, best, trials)
    if progress:
        echo(f"b{budget:.2f}: evaluating trial {best.number} and the default config on "
             f"{len(workspace.test)} test questions")
    tuned, results, versus_default = _test_split_results(workspace, best, chosen, default, vanilla, progress)
    path = adatp.save_preset(_preset(workspace, study, best, budget, chosen, results), preset_path(workspace, budget))
    _log_export(workspace, study, best, budget, results, versus_default, tuned, path)
    return Exported(budget, study.study_name, path=path, preset=adatp.load_preset(path),
                    message=_export_message(budget, results, versus_default))


def _no_feasible_message(budget: float, trials) -> str:
    states = ", ".join(f"{state}: {sum(t.state.name == state for t in trials)}"
                       for state in ("COMPLETE", "PRUNED", "FAIL"))
    return (f"b{budget:.2f}: no feasible COMPLETE trial among {len(trials)} ({states}); no preset written. "
            f"Run more trials (n_trials=...) or check the budget.")


def _chosen_and_default(spec, study, best, trials) -> tuple[adatp.AdaTPConfig, adatp.AdaTPConfig]:
    """The selected trial's config and the default config's, exactly as their trials ran (from the storage)."""
    chosen = trial_config(study, best)
    default_trial = next((t for t in trials if t.user_attrs.get("warm_start") == "default"), None)
    default = (trial_config(study, default_trial) if default_trial is not None
               else chosen.replace(**default_params(spec)))
    return chosen, default


def _test_split_results(workspace: Workspace, best, chosen, default, vanilla, progress: bool):
    """(the tuned run on the test split, the preset's `results`, tuned-vs-default), with the tune score beside."""
    spec, engine = workspace.spec, workspace.engine
    tuned = engine.evaluate(workspace.test, chosen, batch_size=spec.batch_size, progress=progress)
    baseline = engine.evaluate(workspace.test, default, batch_size=spec.batch_size, progress=progress)
    results, versus_default = held_out_results(workspace, tuned, baseline, vanilla)
    tune_answered = len(workspace.tune) - best.user_attrs.get("skipped", 0)
    kind = results["scoring"]["objective"]
    if spec.objective == kind:  # the tune score measured what the test score measures
        results[f"tune_{kind}"] = {"value": round(best.value, 4), "n": tune_answered}
    else:
        results["paired"]["tune_fidelity"] = round(best.value, 4)
    return tuned, results, versus_default


def _preset(workspace: Workspace, study, best, budget: float, chosen, results: dict) -> adatp.Preset:
    spec = workspace.spec
    return adatp.Preset(
        config=chosen,
        target={"model": model_label(spec.model.path), "dataset": spec.dataset.name, "frames": workspace.engine.frames,
                "flops_budget": budget},
        results=results,
        provenance={"study": study.study_name, "trial": best.number,
                    "mlflow_run_id": study.user_attrs.get("mlflow_run_id"),
                    "versions": {**package_versions(), "protocol": study.user_attrs[ATTR]["protocol"]},
                    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
    )


def _log_export(workspace: Workspace, study, best, budget: float, results: dict, versus_default: dict, tuned,
                path: Path) -> None:
    """On the parent run: the preset artifact, the `selected.*` and test metrics, the description; the winner's
    child run tagged `autotune.selected`."""
    spec, tracker = workspace.spec, workspace.tracker
    retention = study.user_attrs[ATTR]["retention"]
    run_id = study.user_attrs["mlflow_run_id"]
    tracker.artifact(run_id, path, artifact_path="preset")
    selected = {**{f"selected.{name}": round(value, 4) for name, value in best.params.items()},
                "selected.retention": round(retention, 4), "selected.trial": best.number}
    winner = tracker.mark_selected(study.study_name, best.number)
    macro = (results.get("test_accuracy") or {}).get("macro")
    kind, test, default_result, vanilla_result = held_out_view(results)
    tracker.log(run_id, metrics={
        **selected,
        **({} if macro is None else {"test_macro_accuracy": macro}),
        f"test_{kind}": test["value"],
        f"test_{kind}_ci95_low": test["ci95"][0],
        f"test_{kind}_ci95_high": test["ci95"][1],
        **({} if vanilla_result is None else {"vanilla_test_accuracy": vanilla_result["value"],
                                              "test_minus_vanilla": results["paired"]["test_minus_vanilla"]}),
        f"default_test_{kind}": default_result["value"],
        "test_minus_default": versus_default["value"],
        "test_flops_ratio": round(tuned.flops_ratio, 4),
    }, tags={"preset": str(path), "selected.trial": best.number, "selected.run_id": winner or "",
             "mlflow.note.content": run_description(spec, budget, best, retention, results, path,
                                                    tracker.experiment_id, winner)})


def _export_message(budget: float, results: dict, versus_default: dict) -> str:
    message = verdict(budget, versus_default)
    macro = (results.get("test_accuracy") or {}).get("macro")
    if macro is not None:
        missing = results["test_accuracy"]["macro_missing"]
        message += (f"; MLVU as lmms-eval scores it (mean over its 7 task types): {macro:.3f}"
                    + (f", with no test question of {', '.join(missing)} (counted as 0, as lmms-eval does)"
                       if missing else ""))
    return message


def held_out_results(workspace: Workspace, tuned, baseline, vanilla: dict[str, str | None]) -> tuple[dict, dict]:
    """(the preset's `results` for the test split, the tuned-vs-default paired difference). On a labelled table:
    test, default and vanilla accuracy (scores against the gold answers) with CIs and paired differences; on an
    unlabelled one: test and default fidelity (scores against the unpruned model's answers). `results.scoring`
    records how answers were scored."""
    spec = workspace.spec
    test = workspace.test
    qids = [q.qid for q in test if q.qid in tuned.predictions and q.qid in baseline.predictions
            and vanilla.get(q.qid) is not None]
    asked = [q for q in test if q.qid in set(qids)]
    labelled = all(q.labelled for q in asked)
    reference = None if labelled else vanilla
    tuned_scores = workspace.scores(asked, tuned, reference)
    default_scores = workspace.scores(asked, baseline, reference)
    versus_default = paired_difference(tuned_scores, default_scores, n_boot=BOOTSTRAP_SAMPLES)
    kind = "accuracy" if labelled else "fidelity"
    results: dict[str, Any] = {
        "flops_ratio": round(tuned.flops_ratio, 6),
        f"test_{kind}": accuracy_summary(tuned_scores, n_boot=BOOTSTRAP_SAMPLES),
        f"default_{kind}": accuracy_summary(default_scores, n_boot=BOOTSTRAP_SAMPLES),
        "paired": {"test_minus_default": versus_default["value"], "test_minus_default_ci95": versus_default["ci95"],
                   "wins_losses_vs_default": [versus_default["wins"], versus_default["losses"]]},
        "scoring": {"objective": kind, "answers": "open-ended" if asked and asked[0].open_ended else "multiple-choice",
                    "metric": spec.metric, "reference": "gold" if labelled else "unpruned"},
    }
    if labelled:
        vanilla_scores = [score_answer(q, vanilla[q.qid], q.answer, spec.metric) for q in asked]
        versus_vanilla = paired_difference(tuned_scores, vanilla_scores, n_boot=BOOTSTRAP_SAMPLES)
        results["vanilla_accuracy"] = accuracy_summary(vanilla_scores, n_boot=BOOTSTRAP_SAMPLES)
        results["paired"].update(test_minus_vanilla=versus_vanilla["value"],
                                 test_minus_vanilla_ci95=versus_vanilla["ci95"])
        if spec.dataset.preset == "mlvu":  # lmms-eval's headline number next to plain accuracy
            for key, flags in (("test_accuracy", tuned_scores), ("vanilla_accuracy", vanilla_scores),
                               ("default_accuracy", default_scores)):
                score = mlvu_dev_score(asked, flags)
                results[key].update(macro=round(score["macro"], 4), macro_missing=score["missing"])
    return results, versus_default


def run_description(spec, budget: float, best, retention: float, results: dict, path: Path, experiment_id: str,
                    winner: str | None) -> str:
    """The parent run's Markdown description: the answer (thresholds to use) and how good it is on held-out data."""
    names = [*best.params, "retention"]
    values = {**best.params, "retention": retention}
    kind, test, default, vanilla = held_out_view(results)
    paired = results["paired"]
    vanilla_text = f"vanilla {vanilla['value']:.3f}" if vanilla else "measured against the unpruned model's answers"
    low, high = paired["test_minus_default_ci95"]
    trial = f"trial #{best.number:03d}"
    if winner:
        trial = f"[{trial}](#/experiments/{experiment_id}/runs/{winner})"
    settings = "  ".join(f"{name}={values[name]:.4f}" for name in names)
    return "\n".join([
        f"**Use these thresholds at FLOPs budget {budget:.2f} on {spec.dataset.name}**: `{settings}`",
        "",
        f"**Held-out test {kind} {test['value']:.3f} [95% CI {test['ci95'][0]:.3f}, {test['ci95'][1]:.3f}]** "
        f"({test['n']} questions); default config {default['value']:.3f}, {vanilla_text}; "
        f"tuned - default {paired['test_minus_default']:+.3f} [95% CI {low:+.3f}, {high:+.3f}].",
        "",
        f"From {trial}, chosen on the tune split only; preset `{path}`.",
        "",
        "| " + " | ".join(names) + " |",
        "|" + "---|" * len(names),
        "| " + " | ".join(f"{values[name]:.4f}" for name in names) + " |",
        "",
        f"Held-out test split ({test['n']} questions), FLOPs ratio {results['flops_ratio']:.4f}:",
        "",
        f"| config | test {kind} |",
        "|---|---|",
        f"| tuned | {test['value']:.3f} [95% CI {test['ci95'][0]:.3f}, {test['ci95'][1]:.3f}] |",
        f"| default config, same retention | {default['value']:.3f} |",
        *([f"| vanilla (no pruning) | {vanilla['value']:.3f} |"] if vanilla else []),
        f"| tuned - default | {paired['test_minus_default']:+.3f} [95% CI {low:+.3f}, {high:+.3f}] |",
    ])


def model_label(path: str) -> str:
    """A hub id as is; a local directory relative to the working directory when inside it (portable presets)."""
    local = Path(path)
    if not local.is_dir():
        return path
    try:
        return str(local.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(local)


def verdict(budget: float, versus_default: dict) -> str:
    """One honest line: does the tuned config beat the default on the test split?"""
    value, (low, high) = versus_default["value"], versus_default["ci95"]
    change = f"{value:+.3f} (95% CI [{low:+.3f}, {high:+.3f}], {versus_default['n']} test questions)"
    if low > 0:
        return f"b{budget:.2f}: the tuned config beats the default config on the test split by {change}"
    if value > 0:
        return f"b{budget:.2f}: the tuned config is ahead of the default by {change}, but the CI includes 0"
    return f"b{budget:.2f}: the tuned config does NOT improve on the default config on the test split: {change}"


def held_out(spec, studies: dict) -> list[HeldOut]:
    """Each budget's held-out result, read from the preset `export` wrote for this spec's study (none: skipped)."""
    found = []
    for budget, study in studies.items():
        path = preset_path_for(spec, budget)
        if study is None or not path.is_file():
            continue
        try:
            preset = adatp.load_preset(path)
        except adatp.ConfigError:
            continue  # `status` names an unreadable preset; the plot just goes without it
        if preset.provenance.get("study") != study.study_name:
            continue  # a preset of another run of the same name
        results = preset.results
        kind, test, default, vanilla = preset.held_out
        if test is None:
            continue
        tune = results.get(f"tune_{kind}", {}).get("value")
        found.append(HeldOut(
            budget=budget, trial=int(preset.provenance["trial"]), flops_ratio=float(results["flops_ratio"]),
            accuracy=float(test["value"]), ci95=(float(test["ci95"][0]), float(test["ci95"][1])),
            default_accuracy=None if default is None else default.get("value"),
            vanilla_accuracy=None if vanilla is None else vanilla.get("value"),
            tune_accuracy=None if tune is None else float(tune), preset=str(path),
            params={name: getattr(preset.config, name) for name in spec.space}))
    return found


def summary_description(spec, tested: list[HeldOut], experiment_id: str | None = None) -> str:
    """The summary run's Markdown description: one row per exported budget, or how to get there; with
    `experiment_id`, links to the saved runs-table views that show the thresholds first."""
    views = "" if experiment_id is None else _views_line(experiment_id)
    if not tested:
        return (f"No budget exported yet: `autotune export {spec.source or spec.name}` evaluates each budget's "
                "selected thresholds on the held-out test split. The plots show the tune split." + views)
    names = list(spec.space)
    lines = [f"**{spec.name} on {spec.dataset.name}: the thresholds to use per FLOPs budget** (chosen on the tune "
             "split; accuracy on the held-out test split). Each budget's parent run has the details.", "",
             "| budget | " + " | ".join(names) + " | test accuracy [95% CI] | default | vanilla | preset |",
             "|" + "---|" * (len(names) + 6)]
    for item in sorted(tested, key=lambda item: item.budget):
        lines.append(f"| {item.budget:.2f} | " + " | ".join(f"{item.params[name]:.4f}" for name in names)
                     + f" | {item.accuracy:.3f} [{item.ci95[0]:.3f}, {item.ci95[1]:.3f}] | "
                     f"{_fmt3(item.default_accuracy)} | {_fmt3(item.vanilla_accuracy)} | `{item.preset}` |")
    return "\n".join(lines) + views


def _views_line(experiment_id: str) -> str:
    from autotune.links import runs_link

    return ("\n\nRuns table with the thresholds as first columns: "
            f"[selected thresholds per budget]({runs_link(experiment_id, 'autotune-selected')}), "
            f"[all trials]({runs_link(experiment_id, 'autotune-trials')}).")


def _fmt3(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summarise_pareto(spec, directory: Path, log: bool = True) -> tuple[list[Point], list[Point], float,
                                                                     list[HeldOut]]:
    """Cross-budget points, front, hypervolume and the held-out results of the budgets exported so far; writes
    pareto.png/.html/.csv under `directory` and (if `log`) to the spec's MLflow summary run."""
    import csv

    studies = _require_studies(spec)
    points: list[Point] = []
    references: dict[str, Point] = {}
    for budget, study in studies.items():
        feasible = study_points(study)
        points.extend(feasible)
        default = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("warm_start") == "default"),
                       None)
        reference = next((p for p in feasible if default is not None and p.trial == default.number), None)
        if reference is not None:
            label = f"default config b{budget:.2f} (tune)"
            references[label] = Point(reference.flops_ratio, reference.accuracy, label=label, budget=budget,
                                      trial=reference.trial)
    tested = held_out(spec, studies)
    front = pareto_front(points)
    volume = hypervolume(points)
    directory.mkdir(parents=True, exist_ok=True)
    title = f"{spec.name}: {spec.objective} vs FLOPs ratio, all budgets"
    png = plot_png(points, directory / "pareto.png", title=title, references=references, held_out=tested)
    page = plot_html(points, directory / "pareto.html", title=title, references=references, held_out=tested)
    table = directory / "pareto_front.csv"
    by_trial = {(item.budget, item.trial): item for item in tested}
    rows = [{**row, "test_accuracy": getattr(by_trial.get((row["budget"], row["trial"])), "accuracy", "")}
            for row in front_table(front)]
    with table.open("w", newline="") as handle:
        fields = list(dict.fromkeys(key for row in rows for key in row)) or ["flops_ratio", "accuracy"]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    if log:
        from autotune.study import open_tracker
        from autotune.tracking import identity_tags

        tracker = open_tracker(spec)
        if spec.objective != "auto":  # the views name the objective's metrics; a store from before them gets them
            tracker.publish_views(list(spec.space), spec.objective)
        run_id = tracker.summary_run(spec.name, tags=identity_tags(spec.name, spec.dataset.name))
        metrics = {"hypervolume": round(volume, 4), "front_size": len(front), "points": len(points)}
        metrics.update({f"b{item.budget:.2f}.test_accuracy": item.accuracy for item in tested})
        tracker.log(run_id, metrics=metrics, params={"budgets": list(spec.budgets), "objective": spec.objective},
                    tags={"mlflow.note.content": summary_description(spec, tested, tracker.experiment_id)})
        for path in (png, page, table):
            tracker.artifact(run_id, path, artifact_path="pareto")
        tracker.finish(run_id)
    return points, front, volume, tested
