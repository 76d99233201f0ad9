"""Bootstrap statistics for held-out evaluation of per-question scores in [0, 1] (0/1 for a letter; a partial score
such as token F1 for an open-ended answer).

All resampling is vectorised: a whole block of bootstrap replicates is one `rng.integers(0, n, size=(rows, n))`
draw, and blocks are bounded at about `_MAX_ENTRIES` indices so memory stays flat for large `n * n_boot`.
Results meant for YAML/JSON are plain Python floats/ints, rounded to 4 decimals.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

_MAX_ENTRIES = 50_000_000  # bootstrap indices held in memory at once (int64: ~400 MB)

Outcomes = Sequence[bool] | Sequence[int] | np.ndarray


def _as_outcomes(correct: Outcomes) -> np.ndarray:
    """1-D float array of scores in [0, 1] from bools or numbers; ValueError on anything else."""
    values = np.asarray(correct, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"outcomes must be a 1-D sequence, got shape {values.shape}")
    if values.size and not np.all((values >= 0.0) & (values <= 1.0)):
        raise ValueError("outcomes must be scores in [0, 1] (or booleans)")
    return values


def _check(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _index_blocks(n: int, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield (rows, n) arrays of resampling indices in [0, n), `n_boot` rows in total, each block <= ~50M entries."""
    rows_per_block = max(1, _MAX_ENTRIES // n)
    for start in range(0, n_boot, rows_per_block):
        yield rng.integers(0, n, size=(min(rows_per_block, n_boot - start), n))


def _boot_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of `n_boot` bootstrap resamples (with replacement) of the 1-D array `values` (non-empty)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([values[idx].mean(axis=1) for idx in _index_blocks(values.size, n_boot, rng)])


def _percentile_ci(means: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _r4(x: float) -> float:
    """Round to 4 decimals as a plain float; nan stays nan, -0.0 becomes 0.0."""
    x = float(x)
    return x if math.isnan(x) else round(x, 4) + 0.0


def bootstrap_ci(correct: Outcomes, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of outcomes in [0, 1].

    `level` in (0, 1) is the coverage (0.95 -> 2.5th and 97.5th percentiles of `n_boot` resampled means).
    Returns (lo, hi) as floats in [0, 1]; (nan, nan) for no outcomes. Deterministic for a fixed `seed`.
    """
    _check(n_boot, level)
    values = _as_outcomes(correct)
    if values.size == 0:
        return math.nan, math.nan
    return _percentile_ci(_boot_means(values, n_boot, seed), level)


def accuracy_summary(correct: Outcomes, n_boot: int = 2000, seed: int = 0) -> dict:
    """{"value": accuracy in [0, 1], "n": number of outcomes, "ci95": [lo, hi]}: plain floats rounded to 4 decimals.

    For no outcomes, value and bounds are nan.
    """
    values = _as_outcomes(correct)
    lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed, level=0.95)
    value = float(values.mean()) if values.size else math.nan
    return {"value": _r4(value), "n": int(values.size), "ci95": [_r4(lo), _r4(hi)]}


def paired_difference(a: Outcomes, b: Outcomes, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Accuracy difference mean(a) - mean(b) in [-1, 1] of two systems on the same questions, in the same order.

    The CI is a paired percentile bootstrap: both systems are resampled with the same question indices (equivalently,
    the per-question differences are resampled). Returns {"value", "ci95": [lo, hi], "n", "wins": #(a scores higher),
    "losses": #(b scores higher)} with floats rounded to 4 decimals. ValueError if the lengths differ.
    """
    _check(n_boot, level)
    xa, xb = _as_outcomes(a), _as_outcomes(b)
    if xa.size != xb.size:
        raise ValueError(f"paired outcomes must have the same length, got {xa.size} and {xb.size}")
    diff = xa - xb
    if diff.size == 0:
        value, lo, hi = math.nan, math.nan, math.nan
    else:
        value = float(diff.mean())
        lo, hi = _percentile_ci(_boot_means(diff, n_boot, seed), level)
    return {
        "value": _r4(value),
        "ci95": [_r4(lo), _r4(hi)],
        "n": int(diff.size),
        "wins": int(np.count_nonzero(diff > 0)),
        "losses": int(np.count_nonzero(diff < 0)),
    }
