"""The shared multiple-choice protocol: questions, prompts in lmms-eval's wording, answer extraction, splits,
accuracy."""

import collections
import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.data.protocol import (
    OPEN_POST_PROMPT,
    PROTOCOL_VERSION,
    Question,
    accuracy_by,
    build_prompt,
    extract_answer,
    letters,
    lmms_eval_answer,
    micro_macro,
    protocol_version,
    split_by_video,
)
from autotune.data.table import TableReport


def make_question(qid="q0", video_id="v0", dataset="videomme", options=("a", "b", "c", "d"), answer="A", **meta):
    return Question(qid, dataset, video_id, f"/videos/{video_id}.mp4", "What happens?", tuple(options), answer, meta)


def test_protocol_version_names_the_extraction():
    assert PROTOCOL_VERSION == protocol_version("lmms-eval-0.7")
    assert PROTOCOL_VERSION.startswith("adatp-mcq/2") and PROTOCOL_VERSION.endswith("extraction: lmms-eval-0.7)")
    assert protocol_version("strict").endswith("extraction: strict)")
    with pytest.raises(ValueError, match="extraction must be one of lmms-eval-0.7, strict"):
        protocol_version("lmms-eval-0.3")


def test_letters():
    assert letters(4) == ("A", "B", "C", "D")
    assert letters(5)[-1] == "E"
    for bad in (0, 27, 2.0, True):
        with pytest.raises(ValueError, match="number of options"):
            letters(bad)


def test_question_checks_answer_options_and_path():
    q = make_question(answer="D")
    assert q.answer_index == 3
    with pytest.raises(ValueError, match="answer 'E'"):
        make_question(answer="E")
    with pytest.raises(ValueError, match="at least 2 options"):
        make_question(options=("only",))
    with pytest.raises(ValueError, match="open-ended answer must be text"):
        make_question(options=(), answer=3)
    with pytest.raises(ValueError, match="absolute"):
        Question("q", "videomme", "v", "relative/v.mp4", "?", ("a", "b"), "A")
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.answer = "A"


def test_question_meta_is_not_part_of_identity():
    a = make_question(task_type="count")
    b = make_question(task_type="order")
    assert a == b and hash(a) == hash(b)
    assert make_question(qid="q1") != a


def test_open_ended_and_unlabelled_questions():
    open_question = make_question(options=(), answer="a red car")
    assert open_question.open_ended and open_question.labelled
    assert build_prompt(open_question) == f"What happens?{OPEN_POST_PROMPT}"
    unlabelled = make_question(answer=None)
    assert not unlabelled.labelled and not unlabelled.open_ended
    with pytest.raises(ValueError, match="no correct option"):
        _ = unlabelled.answer_index


def test_load_report_summary():
    questions = [make_question("q0", "v0"), make_question("q1", "v0"), make_question("q2", "v1")]
    report = TableReport(questions, collections.Counter({"missing video": 1, "malformed row: no answer": 1}),
                         "videomme")
    assert report.n_videos == 2
    assert report.summary() == (
        "videomme: 3 questions from 2 videos; skipped 2 (1 malformed row: no answer, 1 missing video)"
    )
    assert TableReport([], collections.Counter(), "mlvu").summary() == "mlvu: 0 questions from 0 videos; skipped 0"


# ---------------------------------------------------------------------------------------------------- prompts

VIDEOMME_QUESTION = Question(
    qid="001-1",
    dataset="videomme",
    video_id="fFjv93ACGo8",
    video_path="/data/videomme/data/fFjv93ACGo8.mp4",
    question="When demonstrating the Germany modern Christmas tree is initially decorated with apples, candles and "
    "berries, which kind of the decoration has the largest number?",
    options=("Apples.", "Candles.", "Berries.", "The three kinds are of the same number."),
    answer="C",
    meta={"duration": "short", "domain": "Knowledge", "task_type": "Counting Problem"},
)


def test_videomme_prompt_is_lmms_eval_default_profile_text():
    assert build_prompt(VIDEOMME_QUESTION) == (
        "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
        "Respond with only the letter (A, B, C, or D) of the correct option.\n"
        "When demonstrating the Germany modern Christmas tree is initially decorated with apples, candles and "
        "berries, which kind of the decoration has the largest number?\n"
        "A. Apples.\n"
        "B. Candles.\n"
        "C. Berries.\n"
        "D. The three kinds are of the same number.\n"
        "\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_mlvu_prompt_renders_parenthesised_letters_and_primes_the_letter():
    q = make_question(dataset="mlvu", options=("Yellow", "Red", "Green", "Blue"))
    assert build_prompt(q) == (
        "What happens?\n(A) Yellow\n(B) Red\n(C) Green\n(D) Blue\nOnly give the best option.\nBest option: ("
    )


def test_longvideobench_prompt():
    q = make_question(dataset="longvideobench", options=("a cat", "a dog", "a bird"))
    assert build_prompt(q) == (
        "What happens?\nA. a cat\nB. a dog\nC. a bird\n"
        "Answer with the option's letter from the given choices directly.\n"
    )


@pytest.mark.parametrize("dataset", ["synthetic", "my-own-dataset"])
def test_other_datasets_use_videomme_wording_with_their_letter_count(dataset):
    prompt = build_prompt(make_question(dataset=dataset, options=("red", "green", "blue")))
    assert prompt.startswith("Select the best answer to the following multiple-choice question")
    assert "Respond with only the letter (A, B, or C) of the correct option.\nWhat happens?\nA. red\n" in prompt
    assert prompt.endswith("C. blue\n\nAnswer with the option's letter from the given choices directly.")
    assert "(A or B)" in build_prompt(make_question(dataset=dataset, options=("yes", "no")))


# -------------------------------------------------------------------------------------------- answer extraction

EXTRACTION_CASES = [
    ("B", "B"),
    ("b", "B"),
    ("(C)", "C"),
    ("D.", "D"),
    ("C)", "C"),  # MLVU: the model continues after "Best option: ("
    ("**B**", "B"),
    ("（C）", "C"),  # full-width parentheses
    ("The best answer is B.", "B"),
    ("The best answer is: D. The woman in red.", "D"),
    ("The correct answer is A", "A"),
    ("The answer is (C).", "C"),
    ("Answer: C", "C"),  # lmms-eval's first-capital rule would read the "A" of "Answer"
    ("answer: d", "D"),
    ("Best option: (A) The person opens the door.", "A"),
    ("Option B is correct.", "B"),
    ("B. The man is cooking.", "B"),
    ("(D) The red car", "D"),
    ("B\nExplanation: the man picks up the knife first.", "B"),
    ("Based on the video, the answer is C", "C"),  # lmms-eval's rule would read the "B" of "Based"
    ("A man is cooking, so the answer is C.", "C"),  # "A" here is the article
    ("A is correct.", "A"),
    ("I think it's B", "B"),
    ("The answer is B, not A.", "B"),
    ("A man is cooking.", None),
    ("E", None),  # only four options
    ("E. None of the above", None),
    ("None of the options", None),
    ("I'm not sure.", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "letter"), EXTRACTION_CASES)
def test_extract_answer(text, letter):
    assert extract_answer(text, 4) == letter


def test_extract_answer_letters_follow_the_option_count():
    assert extract_answer("E", 5) == "E"
    assert extract_answer("The answer is E.", 5) == "E"
    assert extract_answer("C", 2) is None


def test_extract_answer_falls_back_to_option_text():
    options = ("The man is cooking", "The man is sleeping", "A dog barks", "Nothing happens")
    assert extract_answer("The man is sleeping.", 4, options=options) == "B"
    assert extract_answer("I believe nothing happens here", 4, options=options) == "D"
    assert extract_answer("The man is", 4, options=options) is None


@given(n=st.integers(2, 5), data=st.data())
def test_extract_answer_reads_every_plain_form(n, data):
    letter = data.draw(st.sampled_from(letters(n)))
    template = data.draw(st.sampled_from(["{}", "({})", "{}.", "{})", "The best answer is {}.", "Answer: {}"]))
    assert extract_answer(template.format(letter), n) == letter


# ------------------------------------------------------------------------------------------------------- splits


def questions_for(video_ids):
    return [make_question(f"{v}-{i}", v) for v in video_ids for i in range(1 + len(v) % 3)]


@settings(max_examples=60, deadline=None)
@given(
    videos=st.sets(st.text("abcdefgh0123", min_size=1, max_size=6), min_size=1, max_size=30),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 10),
)
def test_split_by_video_properties(videos, fraction, seed):
    questions = questions_for(sorted(videos))
    tune, test = split_by_video(questions, fraction, seed)
    tune_videos, test_videos = {q.video_id for q in tune}, {q.video_id for q in test}
    assert not tune_videos & test_videos
    assert sorted(q.qid for q in tune + test) == sorted(q.qid for q in questions)
    assert [q for q in questions if q in tune] == tune  # each side keeps the input order
    if len(videos) >= 2:
        assert tune and test
        assert len(test_videos) == min(max(round(fraction * len(videos)), 1), len(videos) - 1)
    else:
        assert test == []
    # deterministic, and independent of the order the questions come in
    assert split_by_video(questions, fraction, seed) == (tune, test)
    again_tune, again_test = split_by_video(list(reversed(questions)), fraction, seed)
    assert {q.video_id for q in again_test} == test_videos


def test_split_by_video_depends_on_seed_and_checks_fraction():
    questions = questions_for([f"video{i}" for i in range(40)])
    splits = {frozenset(q.video_id for q in split_by_video(questions, 0.5, seed)[1]) for seed in range(5)}
    assert len(splits) > 1
    for bad in (0.0, 1.0, -0.5, 2):
        with pytest.raises(ValueError, match="test_fraction"):
            split_by_video(questions, bad)


# ----------------------------------------------------------------------------------------------------- accuracy


def mlvu_like():
    """10 questions: count 4/4 right, order 1/2, needle 1/4 -> micro 6/10, macro (1 + 0.5 + 0.25) / 3."""
    tasks = ["count"] * 4 + ["order"] * 2 + ["needle"] * 4
    correct = [True] * 4 + [True, False] + [True, False, False, False]
    questions = [make_question(f"q{i}", f"v{i}", "mlvu", task_type=t) for i, t in enumerate(tasks)]
    return questions, correct


def test_micro_and_macro_accuracy():
    questions, correct = mlvu_like()
    micro, macro = micro_macro(questions, correct)
    assert micro == pytest.approx(0.6)
    assert macro == pytest.approx(0.583333, abs=1e-6)
    assert accuracy_by(questions, correct, "task_type") == {"count": 1.0, "needle": 0.25, "order": 0.5}


def test_accuracy_by_fields_functions_and_missing_keys():
    questions, correct = mlvu_like()
    assert accuracy_by(questions, correct, "dataset") == {"mlvu": 0.6}
    assert accuracy_by(questions, correct, lambda q: int(q.qid[1:]) < 5) == {False: 0.2, True: 1.0}
    assert accuracy_by(questions, correct, "duration") == {"unknown": 0.6}
    with pytest.raises(ValueError, match="10 questions but 9"):
        accuracy_by(questions, correct[:9], "task_type")
    with pytest.raises(ValueError, match="no questions"):
        micro_macro([], [])


# --------------------------------------------------------------------------------- lmms-eval 0.7 extraction parity

_CORPUS = json.loads((Path(__file__).parent / "fixtures" / "lmms_eval_extraction.json").read_text(encoding="utf-8"))


def _question(dataset: str, n_options: int = 4, qid: str = "q") -> Question:
    return Question(qid, dataset, "v", "/data/v.mp4", "What?", tuple(f"option {i}" for i in range(n_options)), "A", {})


@pytest.mark.parametrize("dataset", ["videomme", "mlvu"])
def test_lmms_eval_extraction_matches_lmms_eval_on_its_corpus(dataset):
    """Expected letters come from lmms-eval 0.7.3's own `extract_mcq_answer` (tests/autotune/fixtures, its source
    noted)."""
    rows = _CORPUS[dataset]
    assert len(rows) >= 40
    for text, expected in rows:
        assert lmms_eval_answer(text, _question(dataset)) == (expected, False), text


def test_lmms_eval_longvideobench_matches_and_its_random_fallback_is_seeded():
    rows = _CORPUS["longvideobench"]
    assert len(rows) >= 40
    drawn = []
    for index, (text, n_options, expected) in enumerate(rows):
        question = _question("longvideobench", n_options, qid=f"lvb{index}")
        letter, random_draw = lmms_eval_answer(text, question, seed=3)
        if expected == "?":  # lmms-eval draws a random letter here
            assert random_draw and letter in letters(n_options), text
            assert lmms_eval_answer(text, question, seed=3) == (letter, True)  # the same draw on a rerun
            drawn.append(letter)
        else:
            assert (letter, random_draw) == (expected, False), text
    assert len(drawn) >= 5 and len(set(drawn)) > 1  # a real draw, not a constant


def test_strict_and_lmms_eval_extraction_differ_where_lmms_reads_a_word():
    # lmms-eval reads the article in "A man is walking" as option A; the strict rule reads no letter.
    question = _question("videomme")
    assert lmms_eval_answer("A man is walking in the park", question) == ("A", False)
    assert extract_answer("A man is walking in the park", 4) is None
    differ = [text for text, expected in _CORPUS["videomme"] if extract_answer(text, 4) != expected]
    assert 3 <= len(differ) < len(_CORPUS["videomme"]) // 2
