"""How a study searches: nested question rungs, the sampler (seeded per budget) and the pruner."""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna

from autotune.spec import StudySpec
from autotune.workspace import StudyError


def rung_sizes(n_questions: int, rungs: int, factor: int) -> list[int]:
    """Cumulative question counts of the nested rungs: base * factor^k, capped at n, ending at n.

    Geometric so that successive halving's rung boundaries (min_resource * factor^k) fall on them exactly.
    """
    base = max(1, math.ceil(n_questions / factor ** (rungs - 1)))
    sizes = sorted({min(n_questions, base * factor**k) for k in range(rungs)} | {n_questions})
    return sizes


# -- samplers and pruners ------------------------------------------------------------------------------------------
def sampler_seed(spec: StudySpec, budget: float) -> int:
    """The sampler seed of one budget's study: the spec's seed plus the budget's index (studies differ)."""
    return spec.sampler.seed + spec.budgets.index(budget)


def make_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    """The spec's sampler. A worker's seed should differ from other workers' (see `run_studies`)."""
    sampler = spec.sampler
    if sampler.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sampler.n_startup_trials,
                                          constant_liar=True, multivariate=True)
    if sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sampler.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, spec.n_trials // 3)))
    if sampler.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=sampler.n_startup_trials)
    raise StudyError(f"sampler.name: unknown sampler {sampler.name!r}")


def make_pruner(spec: StudySpec, sizes: Sequence[int]) -> optuna.pruners.BasePruner:
    pruner = spec.pruner
    if pruner.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=sizes[0], reduction_factor=pruner.reduction_factor)
    if pruner.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=sizes[0], max_resource=sizes[-1],
                                              reduction_factor=pruner.reduction_factor)
    if pruner.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.n_startup_trials)
    if pruner.name == "none":
        return optuna.pruners.NopPruner()
    raise StudyError(f"pruner.name: unknown pruner {pruner.name!r}")
