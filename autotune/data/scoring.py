"""Scores of open-ended answers (no options), each in [0, 1]: against the gold answer, or for `objective: fidelity`
against the unpruned model's own answer.

    exact_match("The Red car.", "red car")       # 1.0: both normalise to "red car"
    token_f1("a red car", "the red truck")       # 0.5: 1 shared token of 2 and 2
    relative_accuracy("about 43 cars", "40")     # 0.9: |43 - 40| / 40 = 0.075 <= 1 - t for 9 of t = 0.50, ..., 0.95

Normalisation is SQuAD's (lower case, punctuation and the articles a/an/the dropped, whitespace collapsed), which
lmms-eval's open-ended video tasks also apply. `relative_accuracy` is the mean relative accuracy (MRA) that
VSI-Bench reports for number answers, computed as lmms-eval's vsibench task computes it (`abs_dist_norm(pred,
target) <= 1 - np.linspace(.5, .95, 10)`, float for float); a prediction without a number scores 0.
"""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Callable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_NUMBER = re.compile(r"[-+]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_WORD_NUMBERS = {word: float(index) for index, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_WORD_NUMBER = re.compile(r"\b(" + "|".join(_WORD_NUMBERS) + r")\b", re.IGNORECASE)
# 0.50, 0.55, ..., 0.95 as np.linspace(0.5, 0.95, 10) has them (0.8999999999999999, not 0.9): VSI-Bench's floats
MRA_THRESHOLDS = tuple(0.5 + step * ((0.95 - 0.5) / 9) for step in range(9)) + (0.95,)


def normalise_answer(text: str | None) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = (text or "").lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str | None, reference: str | None) -> float:
    """1.0 when both normalise to the same non-empty text, else 0.0."""
    said, gold = normalise_answer(prediction), normalise_answer(reference)
    return float(bool(gold) and said == gold)


def token_f1(prediction: str | None, reference: str | None) -> float:
    """F1 of the normalised tokens (a bag: repeats count); 0.0 when either side is empty."""
    said, gold = normalise_answer(prediction).split(), normalise_answer(reference).split()
    shared = sum((collections.Counter(said) & collections.Counter(gold)).values())
    if not shared:
        return 0.0
    precision, recall = shared / len(said), shared / len(gold)
    return 2 * precision * recall / (precision + recall)


def first_number(text: str | None) -> float | None:
    """The first number written in `text` ("1,200", "3.5", "-2", or a word up to "twenty"), else None:
    first_number("two dogs and 3 cats") == 2.0."""
    text = text or ""
    digits, word = _NUMBER.search(text), _WORD_NUMBER.search(text)
    if word is not None and (digits is None or word.start() < digits.start()):
        return _WORD_NUMBERS[word.group(1).lower()]
    if digits is None:
        return None
    value = float(digits.group(0).replace(",", ""))
    return value if math.isfinite(value) else None


def relative_accuracy(prediction: str | None, reference: str | None) -> float:
    """Mean relative accuracy: the share of thresholds t in 0.50..0.95 with |pred - gold| / |gold| <= 1 - t. A gold of
    0 scores 1.0 for an exact 0; a side without a number scores 0.0."""
    said, gold = first_number(prediction), first_number(reference)
    if said is None or gold is None:
        return 0.0
    if gold == 0:
        return float(said == 0)
    error = abs(said - gold) / abs(gold)
    return sum(error <= 1 - threshold for threshold in MRA_THRESHOLDS) / len(MRA_THRESHOLDS)


OPEN_METRICS: dict[str, Callable[[str | None, str | None], float]] = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "relative_accuracy": relative_accuracy,
}


def is_number_answer(text: str | None) -> bool:
    """Whether a gold answer is a number and nothing else ("42", "3.5 ", "1,200"): such sets default to MRA."""
    return bool(_NUMBER.fullmatch((text or "").strip()))


def default_open_metric(answers: list[str | None]) -> str:
    """`relative_accuracy` when every gold answer is a number, else `token_f1` (also for unlabelled data)."""
    labelled = [answer for answer in answers if answer is not None]
    if labelled and all(is_number_answer(answer) for answer in labelled):
        return "relative_accuracy"
    return "token_f1"


def score_answer(question, prediction: str | None, reference: str | None, metric: str) -> float:
    """A prediction's score in [0, 1] against `reference` (the gold answer, or the unpruned model's): for a
    multiple-choice question 1.0 for the same letter, else `metric` (OPEN_METRICS) of the texts; 0.0 for no answer."""
    if prediction is None or reference is None:
        return 0.0
    if not question.open_ended:
        return float(prediction == reference)
    return OPEN_METRICS[metric](prediction, reference)
