"""Per-budget plots (autotune.plots): the files, their scale, and importances that find the threshold that matters."""

import random

import optuna
import pytest
from PIL import Image

from autotune.plots import _ylim, importances, study_plots

NAMES = ["tau_s", "tau_t", "alpha_boost", "gamma_cap"]


def _study(n: int = 24) -> optuna.Study:
    """Trials whose tune accuracy depends on tau_s alone; every third one pruned at its first rung."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    rng = random.Random(0)
    for number in range(n):
        trial = study.ask()
        params = {"tau_s": trial.suggest_float("tau_s", 0.5, 1.0), "tau_t": trial.suggest_float("tau_t", 0.0, 1.0),
                  "alpha_boost": trial.suggest_float("alpha_boost", 1.0, 4.0),
                  "gamma_cap": trial.suggest_float("gamma_cap", 0.1, 1.0)}
        accuracy = 0.5 + 0.9 * (params["tau_s"] - 0.5) + 0.001 * rng.random()
        trial.report(accuracy - 0.05, 15)
        if number % 3 == 2:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, accuracy)
    return study


def test_plots_are_written_and_importance_finds_the_threshold_that_matters(tmp_path):
    study = _study()
    best = study.best_trial.number
    paths = study_plots(study, tmp_path, "accuracy", NAMES, selected=best)
    assert [path.name for path in paths] == ["history.png", "thresholds.png", "importance.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 100
    values = importances(study)
    assert set(values) == set(NAMES)
    assert max(values, key=values.get) == "tau_s" and values["tau_s"] > 0.5
    assert sum(values.values()) == pytest.approx(1.0)


def test_too_few_complete_trials_give_no_importance_plot(tmp_path):
    study = _study(n=4)  # 3 COMPLETE, 1 PRUNED
    assert importances(study) == {}
    assert [path.name for path in study_plots(study, tmp_path, "accuracy", NAMES)] == ["history.png",
                                                                                       "thresholds.png"]


def test_the_scale_shows_the_spread_and_never_clips_a_perfect_score():
    assert _ylim([0.9, 1.0]) == pytest.approx((0.88, 1.02))
    assert _ylim([0.2, 0.8]) == pytest.approx((0.14, 0.86))
    assert _ylim([1.0]) == pytest.approx((0.98, 1.02))
    assert _ylim([]) == (0.0, 1.05)
