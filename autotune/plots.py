"""Per-budget plots that carry information, for the study's parent MLflow run.

Within one budget every trial has the same FLOPs ratio, so a per-budget Pareto plot is a vertical strip. What a
user wants to see there instead: how the search went (`history.png`: the tune objective of each trial, pruned
trials at the rung they reached, the best so far), how the objective depends on each threshold (`thresholds.png`),
and which thresholds matter (`importance.png`: Optuna's PED-ANOVA importances over the COMPLETE trials).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ylim(values: Sequence[float]) -> tuple[float, float]:
    """The values' range with a margin (never clipping a marker at 1.0), inside [0, 1.05]."""
    finite = [value for value in values if value == value]
    if not finite:
        return 0.0, 1.05
    low, high = min(finite), max(finite)
    margin = max(0.02, 0.1 * (high - low))
    return max(0.0, low - margin), min(1.05, high + margin)


def history_png(trials: Sequence[FrozenTrial], path: Path, objective: str, title: str,
                selected: int | None = None) -> Path:
    """Tune objective per trial: COMPLETE as dots, PRUNED as crosses at their last rung, the best COMPLETE so far
    as a step line, the selected trial circled."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=110)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    axes.scatter([t.number for t in complete], [t.value for t in complete], s=22, color="#1f77b4",
                 label="COMPLETE (all tune questions)", zorder=3)
    if pruned:
        axes.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                     marker="x", s=26, color="#999999", label="PRUNED (value at the rung it reached)", zorder=2)
    best, steps = float("-inf"), []
    for trial in sorted(complete, key=lambda t: t.number):
        best = max(best, trial.value)
        steps.append((trial.number, best))
    if steps:
        axes.step([n for n, _ in steps], [b for _, b in steps], where="post", color="#d62728", label="best so far")
    chosen = next((t for t in complete if t.number == selected), None)
    if chosen is not None:
        axes.scatter([chosen.number], [chosen.value], s=140, facecolors="none", edgecolors="#2ca02c", linewidths=2,
                     label=f"selected: trial {chosen.number}", zorder=4)
    axes.set_xlabel("trial")
    axes.set_ylabel(f"tune {objective}")
    axes.set_ylim(*_ylim([t.value for t in complete]
                         + [t.intermediate_values[max(t.intermediate_values)] for t in pruned]))
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def thresholds_png(trials: Sequence[FrozenTrial], names: Sequence[str], path: Path, objective: str, title: str,
                   selected: int | None = None) -> Path:
    """Tune objective of each COMPLETE trial against each searched threshold, one panel per threshold."""
    plt = _pyplot()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    figure, panels = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), dpi=110, sharey=True, squeeze=False)
    for axes, name in zip(panels[0], names, strict=True):
        axes.scatter([t.params[name] for t in complete], [t.value for t in complete], s=18, color="#1f77b4")
        chosen = next((t for t in complete if t.number == selected), None)
        if chosen is not None:
            axes.scatter([chosen.params[name]], [chosen.value], s=120, facecolors="none", edgecolors="#2ca02c",
                         linewidths=2)
        axes.set_xlabel(name)
        axes.set_ylim(*_ylim([t.value for t in complete]))
        axes.grid(alpha=0.3)
    panels[0][0].set_ylabel(f"tune {objective}")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def importances(study: optuna.Study) -> dict[str, float]:
    """PED-ANOVA importance of each threshold over the COMPLETE trials ({} with fewer than 4 of them)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 4:
        return {}
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def importance_png(values: dict[str, float], path: Path, title: str) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 0.6 + 0.5 * max(1, len(values))), dpi=110)
    names = list(values)[::-1]
    axes.barh(names, [values[name] for name in names], color="#1f77b4")
    axes.set_xlabel("importance (PED-ANOVA, COMPLETE trials)")
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def study_plots(study: optuna.Study, directory: Path, objective: str, names: Sequence[str],
                selected: int | None = None) -> list[Path]:
    """history.png, thresholds.png and (with enough COMPLETE trials) importance.png under `directory`."""
    trials = study.get_trials(deepcopy=False)
    name = study.study_name
    paths = [history_png(trials, directory / "history.png", objective, f"{name}: tune {objective} per trial",
                         selected),
             thresholds_png(trials, names, directory / "thresholds.png", objective,
                            f"{name}: tune {objective} vs each threshold", selected)]
    values = importances(study)
    if values:
        paths.append(importance_png(values, directory / "importance.png", f"{name}: which thresholds matter"))
    return paths
