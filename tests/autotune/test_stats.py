"""Bootstrap confidence intervals and paired differences of per-question scores in [0, 1] (0/1 for a letter)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autotune import stats
from autotune.stats import accuracy_summary, bootstrap_ci, paired_difference


def test_bootstrap_ci_70_of_100():
    correct = [True] * 70 + [False] * 30
    lo, hi = bootstrap_ci(correct)
    assert lo < 0.7 < hi
    assert 0.14 <= hi - lo <= 0.22
    assert lo == pytest.approx(0.61, abs=0.03) and hi == pytest.approx(0.79, abs=0.03)
    assert isinstance(lo, float) and isinstance(hi, float)


def test_bootstrap_ci_deterministic_and_seeded():
    rng = np.random.default_rng(1)
    correct = rng.random(200) < 0.6
    assert bootstrap_ci(correct, seed=3) == bootstrap_ci(correct, seed=3)
    assert bootstrap_ci(correct.astype(int), seed=3) == bootstrap_ci(list(correct), seed=3)


def test_bootstrap_ci_degenerate():
    assert bootstrap_ci([True] * 40) == (1.0, 1.0)
    assert bootstrap_ci([0] * 40) == (0.0, 0.0)
    lo, hi = bootstrap_ci([])
    assert math.isnan(lo) and math.isnan(hi)


def test_bootstrap_ci_level_and_validation():
    correct = [1] * 60 + [0] * 40
    lo90, hi90 = bootstrap_ci(correct, level=0.90)
    lo99, hi99 = bootstrap_ci(correct, level=0.99)
    assert hi99 - lo99 > hi90 - lo90
    with pytest.raises(ValueError):
        bootstrap_ci(correct, level=1.0)
    with pytest.raises(ValueError):
        bootstrap_ci(correct, n_boot=0)
    with pytest.raises(ValueError):
        bootstrap_ci([0, 2, 1])


@pytest.mark.parametrize("bad", [1.5, -0.1, 2, math.nan])
def test_scores_outside_0_1_are_refused(bad):
    message = r"^outcomes must be scores in \[0, 1\] \(or booleans\)$"
    for call in (bootstrap_ci, accuracy_summary):
        with pytest.raises(ValueError, match=message):
            call([1.0, bad, 0.0])
    with pytest.raises(ValueError, match=message):
        paired_difference([0.5, 0.5], [0.5, bad])
    with pytest.raises(ValueError, match=r"^outcomes must be a 1-D sequence"):
        bootstrap_ci([[0.5, 1.0]])


def test_fractional_scores():
    """Partial scores (token F1 of an open-ended answer) are averaged like 0/1 ones."""
    assert accuracy_summary([0.5, 1.0, 0.0]) == {"value": 0.5, "n": 3, "ci95": [0.0, 1.0]}  # 1/27 resamples all 0
    summary = accuracy_summary([0.5, 1.0, 0.0] * 33)
    assert summary == {"value": 0.5, "n": 99, "ci95": [0.4192, 0.5859]}
    # ~ mean +- 1.96 * sd / sqrt(n) with sd = sqrt(1/6): +- 0.080
    assert summary["ci95"][1] - summary["ci95"][0] == pytest.approx(2 * 1.96 * math.sqrt(1 / 6 / 99), abs=0.01)
    assert bootstrap_ci([0.25] * 40) == (0.25, 0.25)
    assert bootstrap_ci([0.0, 1.0, 0.5]) == bootstrap_ci([False, True, 0.5])
    # wins and losses count which system scores higher on a question, by any margin
    result = paired_difference([0.5, 1.0, 0.25, 0.0], [0.5, 0.5, 0.75, 0.0])
    assert result == {"value": 0.0, "ci95": [-0.375, 0.375], "n": 4, "wins": 1, "losses": 1}
    assert paired_difference([0.6, 0.7], [0.5, 0.5])["value"] == pytest.approx(0.15)


def test_bootstrap_ci_chunked(monkeypatch):
    """Small memory blocks give the same kind of interval (and all n_boot replicates)."""
    monkeypatch.setattr(stats, "_MAX_ENTRIES", 1000)  # 10 rows of 100 per block
    seen = []
    real = stats._boot_means

    def spy(values, n_boot, seed):
        means = real(values, n_boot, seed)
        seen.append(means.shape)
        return means

    monkeypatch.setattr(stats, "_boot_means", spy)
    lo, hi = bootstrap_ci([True] * 70 + [False] * 30, n_boot=2001)
    assert seen == [(2001,)]
    assert lo < 0.7 < hi and 0.14 <= hi - lo <= 0.22


def test_accuracy_summary_plain_rounded():
    summary = accuracy_summary([True] * 2 + [False])
    assert summary["value"] == 0.6667 and summary["n"] == 3
    assert all(type(x) is float for x in [summary["value"], *summary["ci95"]])
    assert type(summary["n"]) is int
    assert all(round(x, 4) == x for x in summary["ci95"])
    empty = accuracy_summary([])
    assert empty["n"] == 0 and math.isnan(empty["value"])


def test_paired_difference_identical():
    a = [True, False, True, True, False] * 10
    result = paired_difference(a, a)
    assert result == {"value": 0.0, "ci95": [0.0, 0.0], "n": 50, "wins": 0, "losses": 0}


def test_paired_difference_strictly_better():
    b = np.array([True] * 20 + [False] * 30)
    a = b.copy()
    a[20:30] = True  # a also right on 10 questions b gets wrong
    result = paired_difference(a, b)
    assert result["value"] == pytest.approx(0.2)
    assert result["wins"] == 10 and result["losses"] == 0 and result["n"] == 50
    assert result["ci95"][0] > 0 and result["ci95"][0] <= 0.2 <= result["ci95"][1]
    assert all(type(x) is float for x in [result["value"], *result["ci95"]])
    assert all(type(result[k]) is int for k in ("n", "wins", "losses"))
    # and symmetric the other way round
    reverse = paired_difference(b, a)
    assert reverse["value"] == pytest.approx(-0.2) and reverse["wins"] == 0 and reverse["losses"] == 10
    assert reverse["ci95"][1] < 0


def test_paired_difference_length_mismatch():
    with pytest.raises(ValueError):
        paired_difference([True, False], [True])
