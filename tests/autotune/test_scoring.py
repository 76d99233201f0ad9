"""autotune.data.scoring: open-ended answer scores, with worked numbers."""

from __future__ import annotations

import pytest

from autotune.data.protocol import Question
from autotune.data.scoring import (
    MRA_THRESHOLDS,
    default_open_metric,
    exact_match,
    first_number,
    is_number_answer,
    normalise_answer,
    relative_accuracy,
    score_answer,
    token_f1,
)


@pytest.mark.parametrize(("text", "normal"), [
    ("The Red car.", "red car"),
    ("  An apple,   a pear & THE plum!  ", "apple pear plum"),
    ("Theatre", "theatre"),  # "the" only as a word
    (None, ""),
])
def test_normalise_answer_is_squads(text, normal):
    assert normalise_answer(text) == normal


@pytest.mark.parametrize(("prediction", "reference", "score"), [
    ("The Red car.", "red car", 1.0),
    ("a red car", "red cars", 0.0),
    ("", "", 0.0),  # nothing to match
    ("anything", None, 0.0),
    (None, "red", 0.0),
])
def test_exact_match(prediction, reference, score):
    assert exact_match(prediction, reference) == score


@pytest.mark.parametrize(("prediction", "reference", "score"), [
    ("a red car", "the red truck", 0.5),  # 1 shared of 2 and 2: P = R = 1/2
    ("red car parked outside", "red car", 2 / 3),  # P = 2/4, R = 2/2: F1 = 2 * .5 * 1 / 1.5
    ("dog dog cat", "dog cat cat", 2 / 3),  # a bag: 2 shared (one dog, one cat) of 3 and 3
    ("The Red car.", "red car", 1.0),
    ("blue", "red", 0.0),
    ("", "red", 0.0),
    ("the", "a", 0.0),  # both empty after normalising
])
def test_token_f1(prediction, reference, score):
    assert token_f1(prediction, reference) == pytest.approx(score)


@pytest.mark.parametrize(("text", "number"), [
    ("about 1,200 people", 1200.0),
    ("3.5 metres", 3.5),
    ("-2 degrees", -2.0),
    (".5", 0.5),
    ("1e3", 1000.0),
    ("Twelve", 12.0),
    ("eleven-ish", 11.0),
    ("two dogs and 3 cats", 2.0),  # the first written, word or digits
    ("3 dogs and two cats", 3.0),
    ("someone left", None),  # "one" only as a word
    ("no idea", None),
    ("1e400", None),  # not finite
    ("", None),
    (None, None),
])
def test_first_number(text, number):
    assert first_number(text) == number


@pytest.mark.parametrize(("prediction", "reference", "score"), [
    ("about 43 cars", "40", 0.9),  # 3/40 = 0.075 <= 1 - t for t = 0.50 .. 0.90
    ("45", "50", 0.9),  # 0.1 <= 1 - 0.9 (VSI-Bench's 0.8999999999999999)
    ("9", "10", 0.9),
    ("42", "40", 1.0),  # 0.05 <= 1 - 0.95
    ("40", "40", 1.0),
    ("60", "40", 0.1),  # 0.5 <= 1 - 0.5 only
    ("61", "40", 0.0),
    ("30", "40", 0.6),  # 0.25 <= 1 - t for t = 0.50 .. 0.75
    ("seven", "7", 1.0),
    ("-3", "3", 0.0),
    ("0", "0", 1.0),
    ("0.1", "0", 0.0),
    ("many", "7", 0.0),
    ("7", "unknown", 0.0),
])
def test_relative_accuracy(prediction, reference, score):
    assert relative_accuracy(prediction, reference) == pytest.approx(score)


def test_relative_accuracy_is_vsi_benchs_float_for_float():
    """lmms-eval's vsibench `mean_relative_accuracy(pred, target, .5, .95, .05)`, on a grid of count answers."""
    np = pytest.importorskip("numpy")
    thresholds = np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))
    assert MRA_THRESHOLDS == tuple(float(t) for t in thresholds)
    for gold in range(1, 41):
        for said in range(0, 81):
            vsi = float((abs(said - gold) / gold <= 1 - thresholds).mean())
            assert relative_accuracy(str(said), str(gold)) == pytest.approx(vsi), (said, gold)


@pytest.mark.parametrize(("answers", "metric"), [
    (["3", " 4.5 ", "1,200"], "relative_accuracy"),
    (["3", None, "-2"], "relative_accuracy"),  # unlabelled rows do not count
    (["3", "four"], "token_f1"),
    (["3 cars"], "token_f1"),
    ([None, None], "token_f1"),
    ([], "token_f1"),
])
def test_default_open_metric(answers, metric):
    assert default_open_metric(answers) == metric


def test_is_number_answer():
    assert [is_number_answer(text) for text in (" 1,200 ", "-2", "3.5", "1,20", "3 cars", "", None)] == [
        True, True, True, False, False, False, False]


def test_score_answer_letters_for_multiple_choice_and_the_metric_for_open_ended():
    choice = Question("q0", "t", "v", "/v.mp4", "Which?", ("red", "blue"), "B")
    open_ended = Question("q1", "t", "v", "/v.mp4", "How many?", (), "40")
    assert [score_answer(choice, said, "B", "token_f1") for said in ("B", "A", None)] == [1.0, 0.0, 0.0]
    assert score_answer(open_ended, "about 43", "40", "relative_accuracy") == pytest.approx(0.9)
    assert score_answer(open_ended, "a red car", "the red truck", "token_f1") == 0.5
    assert score_answer(open_ended, "forty", None, "exact_match") == 0.0
