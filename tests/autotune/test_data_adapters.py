"""The benchmark presets of the table adapter read local copies laid out as the published HF dataset repos; fixtures
here rebuild those layouts in miniature (real parquet/json annotations, empty placeholder files as videos: the adapter
only checks that a video exists). The same presets read the copies from a local Hugging Face hub cache, and give what
the old per-benchmark readers gave (tests/autotune/fixtures/benchmark_golden.json)."""

import collections
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autotune.data import DATASETS, build_prompt, load_dataset
from autotune.data.benchmarks import MLVU_TASK_TYPES, mlvu_dev_score, preset_table
from autotune.data.table import TableError

REPO = Path(__file__).resolve().parents[2]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_json(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))


# ------------------------------------------------------------------------------------------------------ Video-MME

CHRISTMAS = (
    "When demonstrating the Germany modern Christmas tree is initially decorated with apples, candles and "
    "berries, which kind of the decoration has the largest number?"
)


def videomme_rows():
    def row(qid, video, answer, question=CHRISTMAS, options=("Apples.", "Candles.", "Berries.", "Same number.")):
        return {"video_id": qid.split("-")[0], "duration": "short", "domain": "Knowledge",
                "sub_category": "Humanity & History", "url": f"https://www.youtube.com/watch?v={video}",
                "videoID": video, "question_id": qid, "task_type": "Counting Problem", "question": question,
                "options": [f"{letter}. {text}" for letter, text in zip("ABCD", options, strict=True)],
                "answer": answer}

    return [
        row("001-1", "fFjv93ACGo8", "C"),
        row("001-2", "fFjv93ACGo8", "A", question="What is the tree decorated with first?"),
        row("002-1", "JxXY8pXY8Yw", "B"),  # this video is an .mkv
        row("003-1", "gone0000000", "D"),  # no video file
        row("002-2", "JxXY8pXY8Yw", None),
        row("002-3", "JxXY8pXY8Yw", "E"),
    ]


def write_parquet(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture
def videomme_root(tmp_path):
    root = tmp_path / "Video-MME"
    write_parquet(root / "videomme" / "test-00000-of-00001.parquet", videomme_rows())
    touch(root / "data" / "fFjv93ACGo8.mp4")
    touch(root / "data" / "JxXY8pXY8Yw.mkv")
    return root


def test_videomme_loads_letters_options_meta_and_counts_skips(videomme_root):
    report = load_dataset("videomme", videomme_root)
    assert [(q.qid, q.answer) for q in report.questions] == [("001-1", "C"), ("001-2", "A"), ("002-1", "B")]
    assert report.skipped == {"missing video": 1, "malformed row: no answer": 1,
                              "malformed row: answer not among options": 1}
    first = report.questions[0]
    assert first.dataset == "videomme" and first.video_id == "fFjv93ACGo8"
    assert first.options == ("Apples.", "Candles.", "Berries.", "Same number.")
    assert first.video_path == str((videomme_root / "data" / "fFjv93ACGo8.mp4").resolve())
    assert Path(report.questions[2].video_path).suffix == ".mkv"
    assert first.meta == {
        "duration": "short",
        "domain": "Knowledge",
        "sub_category": "Humanity & History",
        "task_type": "Counting Problem",
        "video_id": "001",
        "url": "https://www.youtube.com/watch?v=fFjv93ACGo8",
        "raw_question": CHRISTMAS,
        "raw_options": ["A. Apples.", "B. Candles.", "C. Berries.", "D. Same number."],
    }
    # The options come back to lmms-eval's text: the parquet's "A. Apples." lines.
    assert "\nA. Apples.\nB. Candles.\nC. Berries.\nD. Same number.\n\n" in build_prompt(first)
    assert report.summary() == (
        "videomme: 3 questions from 2 videos; skipped 3 "
        "(1 malformed row: answer not among options, 1 malformed row: no answer, 1 missing video)"
    )


LMMS_VIDEOMME_INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)


def test_videomme_prompt_is_lmms_evals_text_from_the_raw_strings(tmp_path):
    """Edge rows: a question ending in a newline, an option with a trailing space, a letter glued to its text.
    lmms-eval 0.7.3 `videomme_doc_to_text`: instruction + "\n" + question + "\n" + "\n".join(options) + "\n" +
    post_prompt ("\nAnswer with the option's letter from the given choices directly.")."""
    row = {**videomme_rows()[0], "question": "How many apples are there?\n",
           "options": ["A.Three", "B. Four ", "C. Five", "D.  Six"]}
    root = tmp_path / "Video-MME"
    write_parquet(root / "videomme" / "test-00000-of-00001.parquet", [row])
    touch(root / "data" / "fFjv93ACGo8.mp4")
    (question,) = load_dataset("videomme", root).questions
    lmms = (LMMS_VIDEOMME_INSTRUCTION + "\n" + row["question"] + "\n" + "\n".join(row["options"]) + "\n"
            + "\nAnswer with the option's letter from the given choices directly.")
    assert build_prompt(question) == lmms
    assert build_prompt(question) == (
        LMMS_VIDEOMME_INSTRUCTION + "\nHow many apples are there?\n\nA.Three\nB. Four \nC. Five\nD.  Six\n\n"
        "Answer with the option's letter from the given choices directly.")
    assert question.options == ("Three", "Four", "Five", "Six")  # what answer matching by text reads


def test_videomme_limit_stops_reading_early(videomme_root):
    report = load_dataset("videomme", videomme_root, limit=2)
    assert [q.qid for q in report.questions] == ["001-1", "001-2"]
    assert not report.skipped
    assert load_dataset("videomme", videomme_root, limit=0).questions == []
    with pytest.raises(ValueError, match="limit"):
        load_dataset("videomme", videomme_root, limit=-1)


def test_videomme_finds_parquet_elsewhere_and_survives_a_corrupt_file(tmp_path):
    root = tmp_path / "vmme"
    write_parquet(root / "snapshot" / "abc" / "part-0.parquet", videomme_rows()[:1])
    (root / "snapshot" / "abc" / "part-1.parquet").write_bytes(b"not a parquet file")
    touch(root / "data" / "fFjv93ACGo8.mp4")
    report = load_dataset("videomme", str(root))
    assert [q.qid for q in report.questions] == ["001-1"]
    assert report.skipped == {"unreadable file: part-1.parquet": 1}


def test_videomme_strips_each_options_own_letter_prefix(tmp_path):
    """The preset's `option_prefix: strip`: an option loses its own letter's prefix ("A. ", "(B) "), not another
    letter's, and is trimmed; the prompt still renders the stored strings."""
    raw = ["A. Apples.", "(B) a dog", "A. not my letter", "  no prefix "]
    root = tmp_path / "Video-MME"
    write_parquet(root / "videomme" / "test-00000-of-00001.parquet", [{**videomme_rows()[0], "options": raw}])
    touch(root / "data" / "fFjv93ACGo8.mp4")
    (question,) = load_dataset("videomme", root).questions
    assert question.options == ("Apples.", "a dog", "A. not my letter", "no prefix")
    assert (question.answer, question.meta["raw_options"]) == ("C", raw)
    assert "\nA. Apples.\n(B) a dog\nA. not my letter\n  no prefix \n\n" in build_prompt(question)


def test_videomme_root_without_annotations(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(TableError) as error:
        load_dataset("videomme", tmp_path)
    assert str(error.value) == (f"dataset.path: no videomme annotations under {tmp_path.resolve()} "
                                "(expected videomme/test-*.parquet or **/*.parquet)")


# ----------------------------------------------------------------------------------------------------------- MLVU


@pytest.fixture
def mlvu_root(tmp_path):
    root = tmp_path / "MVLU" / "MLVU"
    plot = {"video": "movie101_66.mp4", "duration": 246, "question": "What color is the main character's shirt?",
            "candidates": ["Yellow", "Red", "Green", "Blue"], "answer": "Red", "question_type": "plotQA"}
    write_json(root / "json" / "1_plotQA.json", [plot, {**plot, "answer": "Purple"}, {**plot, "video": "gone.mp4"}])
    count = {"video": "count_1.mp4", "duration": 400, "question": "How many times does the man jump?",
             "candidates": ["1", "2", "3", "4"], "answer": "3", "question_type": "count"}
    write_json(root / "json" / "4_count.json", [count, {**count, "candidates": "1, 2, 3, 4"}, ["not", "a", "row"]])
    write_json(root / "json" / "9_summary.json", [{"video": "summary_1.mp4", "duration": 900,
                                                   "question": "Please summarize this video.",
                                                   "answer": "A man cooks dinner.", "question_type": "summary"}])
    (root / "json" / "10_broken.json").write_text("{not json")
    touch(root / "video" / "1_plotQA" / "movie101_66.mp4")
    touch(root / "video" / "4_count" / "count_1.mp4")
    touch(root / "video" / "9_summary" / "summary_1.mp4")
    return root


def test_mlvu_answer_letter_is_index_of_answer_text(mlvu_root):
    report = load_dataset("mlvu", mlvu_root)
    assert [(q.qid, q.answer) for q in report.questions] == [("1_plotQA/0", "B"), ("4_count/0", "C")]
    assert report.skipped == {"malformed row: answer not among options": 1, "missing video": 1,
                              "malformed row: candidates has wrong type": 1, "malformed row: not an object": 1,
                              "open-ended question (no options)": 1, "unreadable file: 10_broken.json": 1}
    plot = report.questions[0]
    assert plot.video_id == "1_plotQA/movie101_66.mp4"
    assert plot.video_path == str((mlvu_root / "video" / "1_plotQA" / "movie101_66.mp4").resolve())
    assert plot.options == ("Yellow", "Red", "Green", "Blue")
    assert plot.meta == {"duration": 246, "task_type": "plotQA", "question_type": "plotQA",
                         "source_file": "1_plotQA.json"}
    assert build_prompt(plot) == (
        "What color is the main character's shirt?\n(A) Yellow\n(B) Red\n(C) Green\n(D) Blue\n"
        "Only give the best option.\nBest option: ("
    )


def test_mlvu_accepts_the_repo_root_above_the_mlvu_folder(mlvu_root):
    report = load_dataset("mlvu", mlvu_root.parent, limit=1)
    assert [q.qid for q in report.questions] == ["1_plotQA/0"]
    # Whole JSON files are read before the limit applies: 4_count.json's bad rows are counted too.
    assert report.skipped == {"unreadable file: 10_broken.json": 1, "malformed row: candidates has wrong type": 1,
                              "malformed row: not an object": 1}
    with pytest.raises(TableError) as error:
        load_dataset("mlvu", mlvu_root / "video")
    assert str(error.value) == (f"dataset.path: no mlvu annotations under {(mlvu_root / 'video').resolve()} "
                                "(expected data/test-*.parquet or test-*.parquet or json/*.json or MLVU/json/*.json)")


@pytest.fixture
def mlvu_all_types(tmp_path):
    """MLVU dev's 7 multiple-choice task files (3 rows each), named as in the HF repo; question_type as the repo
    spells it (findNeedle), which is not lmms-eval's task name (needle)."""
    root = tmp_path / "MLVU"
    files = ["1_plotQA", "2_needle", "3_ego", "4_count", "5_order", "6_anomaly_reco", "7_topic_reasoning"]
    spelled = {"2_needle": "findNeedle"}
    for stem in files:
        rows = [{"video": f"{stem}_{i}.mp4", "duration": 100, "question": f"{stem} question {i}?",
                 "candidates": ["a", "b", "c", "d"], "answer": "b",
                 "question_type": spelled.get(stem, stem.split("_", 1)[1])} for i in range(3)]
        write_json(root / "json" / f"{stem}.json", rows)
        for i in range(3):
            touch(root / "video" / stem / f"{stem}_{i}.mp4")
    return root


def test_mlvu_task_types_are_lmms_evals_names(mlvu_all_types):
    questions = load_dataset("mlvu", mlvu_all_types).questions
    assert sorted({q.meta["task_type"] for q in questions}) == sorted(MLVU_TASK_TYPES)
    needle = next(q for q in questions if q.qid == "2_needle/0")
    assert (needle.meta["task_type"], needle.meta["question_type"]) == ("needle", "findNeedle")


@pytest.mark.parametrize("limit", [7, 10, 14])
def test_mlvu_limit_keeps_every_task_type(mlvu_all_types, limit):
    questions = load_dataset("mlvu", mlvu_all_types, limit=limit).questions
    assert len(questions) == limit
    counts = collections.Counter(q.meta["task_type"] for q in questions)
    assert set(counts) == set(MLVU_TASK_TYPES)  # every type, not the first file's 3 rows and the next file's 4
    assert max(counts.values()) - min(counts.values()) <= 1


def _lmms_eval_mlvu_dev(task_types, correct) -> float:
    """lmms-eval 0.7.3's `mlvu_aggregate_results_dev`, step by step, in percent: per type 100 * correct / answered
    (0 for a type with no question), then the sum over its 7 types divided by 7."""
    types = {"anomaly_reco", "count", "ego", "needle", "order", "plotQA", "topic_reasoning"}
    score = {t: {"correct": 0, "answered": 0} for t in types}
    for task_type, ok in zip(task_types, correct, strict=True):
        score[task_type]["answered"] += 1
        score[task_type]["correct"] += ok
    per_type = {t: 100 * v["correct"] / v["answered"] if v["answered"] else 0 for t, v in score.items()}
    return sum(per_type.values()) / len(types)


def test_mlvu_macro_equals_lmms_evals_and_names_missing_types(mlvu_all_types):
    questions = load_dataset("mlvu", mlvu_all_types).questions
    rng = random.Random(4)
    for _ in range(20):
        correct = [rng.random() < 0.6 for _ in questions]
        score = mlvu_dev_score(questions, correct)
        assert 100 * score["macro"] == pytest.approx(
            _lmms_eval_mlvu_dev([q.meta["task_type"] for q in questions], correct), abs=1e-9)
        assert score["micro"] == sum(correct) / len(correct) and score["missing"] == []
    # Without the needle questions lmms-eval still divides by 7 (needle counts 0): the score says so.
    kept = [q for q in questions if q.meta["task_type"] != "needle"]
    correct = [True] * len(kept)
    score = mlvu_dev_score(kept, correct)
    assert score["missing"] == ["needle"] and score["micro"] == 1.0
    assert score["macro"] == pytest.approx(6 / 7) == _lmms_eval_mlvu_dev([q.meta["task_type"] for q in kept],
                                                                         correct) / 100


def _lmms_eval_mlvu_prompt(doc) -> str:
    """lmms-eval 0.7.3's `mlvu_doc_to_text` with mlvu_dev.yaml's default kwargs, as it reads."""
    kwargs = {"pre_prompt": "", "post_prompt": "\nOnly give the best option.\nBest option: ("}
    return kwargs["pre_prompt"] + doc["question"] + kwargs["post_prompt"]


def mlvu_dev_rows():
    """Rows in sy1998/MLVU_dev's layout (the copy lmms-eval reads): the question embeds its options; edge rows end
    in a newline, carry trailing spaces, or glue a letter to its text."""
    rows = []
    for i, task in enumerate(MLVU_TASK_TYPES):
        for j in range(2):
            rows.append({"video_name": f"{task}_{j}.mp4", "duration": 100.0 + i,
                         "question": f"What happens in {task} clip {j}?\n(A) one\n(B) two\n(C) three\n(D) four",
                         "candidates": ["one", "two", "three", "four"], "answer": "BCDA"[(i + j) % 4],
                         "task_type": task, "question_id": f"{task}_{j}"})
    rows[0]["question"] += "\n"  # a stored trailing newline stays
    rows[1]["question"] = "Which colour?  \n(A)red \n(B) blue\n(C) green\n(D) grey "
    rows[1]["candidates"] = ["red ", "blue", "green", "grey "]
    rows[2]["answer"] = "three"  # a copy storing the answer text is read by its index
    return rows


@pytest.fixture
def mlvu_dev_root(tmp_path):
    root = tmp_path / "MLVU_dev"
    rows = mlvu_dev_rows()
    rows.append({**rows[3], "video_name": "gone.mp4", "question_id": "gone"})
    pq.write_table(pa.Table.from_pylist(rows), touch(root / "data" / "test-00000-of-00001.parquet"))
    for row in rows[:-1]:
        touch(root / row["video_name"])
    write_json(root / "json" / "1_plotQA.json", [])  # the repo's json beside it: lmms-eval's copy wins
    return root


def test_mlvu_dev_layout_prompts_are_lmms_evals_character_for_character(mlvu_dev_root):
    report = load_dataset("mlvu", mlvu_dev_root)
    rows = {row["question_id"]: row for row in mlvu_dev_rows()}
    assert report.skipped == {"missing video": 1}
    assert sorted(q.qid for q in report.questions) == sorted(rows)
    for question in report.questions:
        row = rows[question.qid]
        assert build_prompt(question) == _lmms_eval_mlvu_prompt(row)
        assert question.meta["task_type"] == row["task_type"]
        assert question.video_path == str((mlvu_dev_root / row["video_name"]).resolve())
    by_qid = {q.qid: q for q in report.questions}
    edge = by_qid["anomaly_reco_0"]
    assert build_prompt(edge).startswith("What happens in anomaly_reco clip 0?\n(A) one") and \
        build_prompt(edge).endswith("(D) four\n\nOnly give the best option.\nBest option: (")
    spaced = by_qid["anomaly_reco_1"]
    assert (spaced.question, spaced.options) == ("Which colour?", ("red", "blue", "green", "grey"))
    assert build_prompt(spaced) == ("Which colour?  \n(A)red \n(B) blue\n(C) green\n(D) grey "
                                    "\nOnly give the best option.\nBest option: (")
    assert [by_qid[qid].answer for qid in ("anomaly_reco_0", "count_0", "count_1")] == ["B", "C", "D"]


@pytest.mark.parametrize("limit", [7, 9])
def test_mlvu_dev_layout_limit_keeps_every_task_type(mlvu_dev_root, limit):
    questions = load_dataset("mlvu", mlvu_dev_root, limit=limit).questions
    assert len(questions) == limit
    assert {q.meta["task_type"] for q in questions} == set(MLVU_TASK_TYPES)
    correct = [q.answer == "B" for q in questions]
    assert 100 * mlvu_dev_score(questions, correct)["macro"] == pytest.approx(
        _lmms_eval_mlvu_dev([q.meta["task_type"] for q in questions], correct), abs=1e-9)


# ------------------------------------------------------------------------------------------------- LongVideoBench


def lvb_row(qid, video="86CxyhFV9MI", **fields):
    return {"id": qid, "video_id": video, "video_path": f"{video}.mp4", "question": "What is the man holding?",
            "duration_group": 600, "question_category": "TOS", "topic_category": "NP-News-Programs",
            "level": "L2-Relation", "duration": 527.3, "correct_choice": 0, **fields}


@pytest.fixture
def lvb_root(tmp_path):
    root = tmp_path / "LongVideoBench"
    options = {"option0": "a cup", "option1": "N/A", "option2": "a phone", "option3": "a book", "option4": "N/A"}
    write_json(root / "lvb_val.json", [
        lvb_row("86CxyhFV9MI_0", **options, correct_choice=3),
        lvb_row("xjh2Y_kOLv8_1", video="xjh2Y_kOLv8", candidates=["red", "green", "blue", "white", "black"]),
        lvb_row("86CxyhFV9MI_2", **options, correct_choice=1),
        lvb_row("86CxyhFV9MI_3", candidates=["red", "green"], correct_choice="1"),
        lvb_row("86CxyhFV9MI_4", candidates=["red", "green"], correct_choice=True),
        lvb_row("86CxyhFV9MI_5", candidates=["red", "green"], correct_choice=7),
        lvb_row("86CxyhFV9MI_6", video="gone", candidates=["red", "green"]),
        lvb_row("86CxyhFV9MI_7"),  # no option at all: an open-ended row, skipped by a multiple-choice preset
        "not a row"])
    touch(root / "videos" / "86CxyhFV9MI.mp4")
    touch(root / "videos" / "xjh2Y_kOLv8.mp4")
    return root


def test_longvideobench_drops_na_options_and_recomputes_the_letter(lvb_root):
    report = load_dataset("longvideobench", lvb_root)
    assert [(q.qid, q.answer) for q in report.questions] == [("86CxyhFV9MI_0", "C"), ("xjh2Y_kOLv8_1", "A")]
    assert report.skipped == {"malformed row: answer is N/A": 1, "malformed row: correct_choice has wrong type": 2,
                              "malformed row: answer not among options": 1, "missing video": 1,
                              "open-ended question (no options)": 1, "malformed row: not an object": 1}
    first, second = report.questions
    assert first.options == ("a cup", "a phone", "a book")
    assert second.options == ("red", "green", "blue", "white", "black")
    assert first.video_id == "86CxyhFV9MI"
    assert first.video_path == str((lvb_root / "videos" / "86CxyhFV9MI.mp4").resolve())
    assert first.meta == {"duration_group": 600, "question_category": "TOS", "topic_category": "NP-News-Programs",
                          "level": "L2-Relation", "duration": 527.3, "raw_question": "What is the man holding?",
                          "raw_options": ["a cup", "a phone", "a book"]}
    assert build_prompt(first) == (
        "What is the man holding?\nA. a cup\nB. a phone\nC. a book\n"
        "Answer with the option's letter from the given choices directly.\n"
    )


def test_longvideobench_prompt_is_lmms_evals_text_from_the_raw_strings(tmp_path):
    """lmms-eval 0.7.3 `longvideobench_doc_to_text`: question + "\n" + "X. option" lines over the options that are not
    "N/A", as stored, then "\n" + post_prompt. Edge rows: a trailing newline, trailing spaces, an inner N/A."""
    root = tmp_path / "LongVideoBench"
    row = lvb_row("86CxyhFV9MI_0", question="What is he holding?\n", option0="a cup ", option1="N/A",
                  option2=" a phone", option3="a book", option4="N/A", correct_choice=2)
    write_json(root / "lvb_val.json", [row])
    touch(root / "videos" / "86CxyhFV9MI.mp4")
    (question,) = load_dataset("longvideobench", root).questions
    kept = [row[f"option{i}"] for i in range(5) if row[f"option{i}"] != "N/A"]
    lmms = (row["question"] + "\n" + "\n".join(". ".join([chr(ord("A") + i), c]) for i, c in enumerate(kept))
            + "\n" + "Answer with the option's letter from the given choices directly.\n")
    assert build_prompt(question) == lmms == (
        "What is he holding?\n\nA. a cup \nB.  a phone\nC. a book\n"
        "Answer with the option's letter from the given choices directly.\n")
    assert (question.answer, question.options) == ("B", ("a cup", "a phone", "a book"))


def test_longvideobench_finds_the_annotation_file_below_root(lvb_root):
    report = load_dataset("longvideobench", lvb_root.parent)  # videos/ is looked up next to the lvb_val.json found
    assert [(q.qid, q.answer) for q in report.questions] == [("86CxyhFV9MI_0", "C"), ("xjh2Y_kOLv8_1", "A")]
    with pytest.raises(TableError) as error:
        load_dataset("longvideobench", lvb_root / "videos")
    assert str(error.value) == (f"dataset.path: no longvideobench annotations under {(lvb_root / 'videos').resolve()}"
                                " (expected lvb_val.json or **/lvb_val.json)")


def test_longvideobench_annotation_object_instead_of_list_names_the_missing_column(tmp_path):
    (tmp_path / "lvb_val.json").write_text('{"not": "a list"}')
    with pytest.raises(TableError) as error:
        load_dataset("longvideobench", tmp_path)
    assert str(error.value) == "dataset.columns.id: no column 'id' in the table (columns: not)"


# ------------------------------------------------------------------------------------------------------ registry


@pytest.mark.parametrize("name", ["videomme", "mlvu", "longvideobench"])
def test_missing_root_is_one_clear_line(name, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as error:
        load_dataset(name, missing)
    assert str(error.value) == f"dataset root for {name} not found: {missing}"


def test_registry_names_and_unknown_dataset(videomme_root):
    assert set(DATASETS) == {"videomme", "mlvu", "longvideobench", "synthetic"}
    assert load_dataset("videomme", videomme_root, limit=1).questions == \
        load_dataset("videomme", videomme_root, 1).questions
    known = "known: longvideobench, mlvu, synthetic, videomme"
    with pytest.raises(ValueError, match=f"unknown dataset 'egoschema'; {known}"):
        load_dataset("egoschema", videomme_root)


def test_synthetic_preset_reads_the_generators_questions_jsonl(tmp_path):
    """Rows as `autotune.data.synthetic.generate` writes them; their `meta` object becomes Question.meta."""
    rows = [{"qid": f"v{i}-q0", "video_id": f"v{i}", "video": f"videos/v{i}.mp4", "question": "Which shape is red?",
             "options": ["circle", "square", "star"], "answer": "BC"[i], "meta": {"kind": "square", "colour": "red"}}
            for i in range(2)]
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    touch(tmp_path / "videos" / "v0.mp4")
    report = load_dataset("synthetic", tmp_path, limit=3)
    assert [(q.qid, q.video_id, q.options, q.answer) for q in report.questions] == [
        ("v0-q0", "v0", ("circle", "square", "star"), "B")]
    assert report.questions[0].meta == {"kind": "square", "colour": "red"}
    assert report.questions[0].video_path == str((tmp_path / "videos" / "v0.mp4").resolve())
    assert report.skipped == {"missing video": 1}
    (tmp_path / "questions.jsonl").unlink()
    with pytest.raises(TableError, match="no synthetic annotations under .* \\(expected questions.jsonl\\)"):
        load_dataset("synthetic", tmp_path)


def test_importing_the_data_package_pulls_in_neither_torch_nor_transformers():
    code = (
        "import sys, autotune.data; autotune.data.load_dataset; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------- the old readers' golden output

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "benchmark_golden.json").read_text())
GOLDEN_CASES = {  # key -> (benchmark, fixture, limit, read the fixture's parent folder)
    "videomme": ("videomme", "videomme_root", None, False),
    "mlvu_json": ("mlvu", "mlvu_root", None, False),
    "mlvu_json_parent": ("mlvu", "mlvu_root", 1, True),
    "mlvu_all_types": ("mlvu", "mlvu_all_types", None, False),
    "mlvu_all_types_l9": ("mlvu", "mlvu_all_types", 9, False),
    "mlvu_dev": ("mlvu", "mlvu_dev_root", None, False),
    "mlvu_dev_l9": ("mlvu", "mlvu_dev_root", 9, False),
    "longvideobench": ("longvideobench", "lvb_root", None, False),
}
FIELDS = ("qid", "dataset", "video_id", "video_path", "question", "options", "answer", "meta")


def golden_rows(rows, base) -> list[dict]:
    """Questions (or their dicts) as the golden file holds them: JSON values, video_path relative to `base`."""
    rows = [row if isinstance(row, dict) else {**{f: getattr(row, f) for f in FIELDS}, "prompt": build_prompt(row)}
            for row in rows]
    rows = json.loads(json.dumps(rows, sort_keys=True, default=str))
    for row in rows:
        row["video_path"] = os.path.relpath(row["video_path"], os.path.realpath(base))
    return rows


def test_golden_covers_every_case():
    assert set(GOLDEN) == set(GOLDEN_CASES)
    assert [len(GOLDEN[key]["questions"]) for key in GOLDEN_CASES] == [3, 2, 1, 21, 9, 14, 9, 2]


@pytest.mark.parametrize("key", list(GOLDEN_CASES))
def test_presets_give_the_old_readers_questions_and_prompts(key, request):
    name, fixture, limit, parent = GOLDEN_CASES[key]
    root = request.getfixturevalue(fixture)
    root = root.parent if parent else root
    assert golden_rows(load_dataset(name, root, limit=limit).questions, root) == GOLDEN[key]["questions"]


# --------------------------------------------------------------------------- the lmms-eval hub copies, offline

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_CASES = {  # hub id -> (benchmark, fixture of the same copy as a folder)
    "lmms-lab/Video-MME": ("videomme", "videomme_root"),
    "lmms-eval/Video-MME": ("videomme", "videomme_root"),
    "sy1998/MLVU_dev": ("mlvu", "mlvu_dev_root"),
    "longvideobench/LongVideoBench": ("longvideobench", "lvb_root"),
}
# Run in a fresh interpreter: huggingface_hub reads HF_HUB_CACHE when it is imported.
HUB_READ = f"""
import json, sys
from autotune.data import build_prompt
from autotune.data.benchmarks import preset_table
from autotune.data.table import read_table
table = preset_table(sys.argv[1], sys.argv[2], source="hub", missing_video="skip")
report = read_table(table)
rows = [{{**{{f: getattr(q, f) for f in {FIELDS!r}}}, "prompt": build_prompt(q)}} for q in report.questions]
print(json.dumps({{"path": table.path, "source": table.source, "skipped": report.skipped, "questions": rows}},
                 sort_keys=True, default=str))
"""


def hub_cache(cache: Path, repo_id: str, copy: Path) -> Path:
    """`copy` as dataset repo `repo_id` in a local hub cache, laid out as huggingface_hub writes one: refs/main holds
    the commit, snapshots/<commit>/<path> are links into blobs/<sha256> (a placeholder video gets its path as its
    bytes, so that each video is its own blob). Returns the snapshot folder."""
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)  # no newline, as huggingface_hub writes it
    for file in sorted(path for path in copy.rglob("*") if path.is_file()):
        relative = file.relative_to(copy)
        data = file.read_bytes() or str(relative).encode()
        blob = touch(repo / "blobs" / hashlib.sha256(data).hexdigest())
        blob.write_bytes(data)
        (snapshot / relative).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / relative).symlink_to(os.path.relpath(blob, (snapshot / relative).parent))
    return snapshot


def read_hub(monkeypatch, tmp_path, name: str, repo_id: str) -> dict:
    """preset_table(name, repo_id, source="hub") read through the real huggingface_hub, offline, from tmp_path."""
    for variable, value in {"HF_HUB_CACHE": tmp_path / "hub", "HF_HOME": tmp_path / "hf_home", "HF_HUB_OFFLINE": 1,
                            "HF_DATASETS_CACHE": tmp_path / "hf_home" / "datasets", "HF_DATASETS_OFFLINE": 1}.items():
        monkeypatch.setenv(variable, str(value))
    done = subprocess.run([sys.executable, "-c", HUB_READ, name, repo_id], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("repo_id", list(HUB_CASES))
def test_presets_read_the_lmms_eval_hub_copies_offline(repo_id, request, monkeypatch, tmp_path):
    name, fixture = HUB_CASES[repo_id]
    copy = request.getfixturevalue(fixture)
    snapshot = hub_cache(tmp_path / "hub", repo_id, copy).resolve()  # huggingface_hub resolves the cache folder
    hub = read_hub(monkeypatch, tmp_path, name, repo_id)
    assert (hub["path"], hub["source"]) == (str(snapshot), "parquet" if name != "longvideobench" else "json")
    local = load_dataset(name, copy)
    assert hub["skipped"] == dict(local.skipped) and len(hub["questions"]) == len(local.questions) > 0
    expected = golden_rows(local.questions, copy)
    for row, want in zip(hub["questions"], expected, strict=True):  # each question's video is the copy's same file
        assert os.path.realpath(row["video_path"]) == os.path.realpath(snapshot / want["video_path"])
        assert Path(row["video_path"]).read_bytes() == want["video_path"].encode()
        row["video_path"] = want["video_path"]
    assert hub["questions"] == expected


def test_hub_video_paths_name_the_snapshot_file_not_its_blob(videomme_root, monkeypatch, tmp_path):
    """Question.video_path of a hub copy is the snapshot's data/<videoID>.mp4 (what lmms-eval opens, and what the
    folder copy gives), not the content-addressed blob it links to (no name, no extension)."""
    snapshot = hub_cache(tmp_path / "hub", "lmms-lab/Video-MME", videomme_root).resolve()
    hub = read_hub(monkeypatch, tmp_path, "videomme", "lmms-lab/Video-MME")
    assert [row["video_path"] for row in hub["questions"]] == [
        str(snapshot / "data" / name) for name in ("fFjv93ACGo8.mp4", "fFjv93ACGo8.mp4", "JxXY8pXY8Yw.mkv")]


def test_hub_id_not_in_the_local_cache_is_one_clear_line():
    repo_id = "autotune-tests/never-downloaded"  # local_files_only: no network, whatever the cache holds
    with pytest.raises(TableError) as error:
        preset_table("videomme", repo_id, source="hub")
    assert str(error.value) == (
        f"dataset.path: {repo_id} is not in the local Hugging Face cache (LocalEntryNotFoundError); download it once "
        f"with `huggingface-cli download --repo-type dataset {repo_id}`")


OWN_HUB_READ = """
import json, sys
from autotune.data.table import TableSpec, TableError, read_table
for split in (None, "test"):
    try:
        report = read_table(TableSpec(name="clips", source="hub", path="me/my-clips", split=split,
                                      columns={"id": "qid"}))
        print(json.dumps([[q.qid, q.answer, q.video_path] for q in report.questions]))
    except TableError as error:
        print(json.dumps(str(error)))
"""


def test_your_own_table_on_the_hub_is_read_offline_by_split(monkeypatch, tmp_path):
    """A table of your own pushed to the hub (no preset): datasets' own split detection over the cached snapshot
    (data/train-*.parquet, data/test-*.parquet), `split` choosing one, video paths joined to the snapshot."""
    copy = tmp_path / "copy"
    for split, qids in (("train", ["a", "b"]), ("test", ["c"])):
        write_parquet(copy / "data" / f"{split}-00000-of-00001.parquet",
                      [{"qid": qid, "video": f"videos/{qid}.mp4", "question": f"{qid}?", "options": ["x", "y"],
                        "answer": "B"} for qid in qids])
    for qid in "abc":
        touch(copy / "videos" / f"{qid}.mp4")
    snapshot = hub_cache(tmp_path / "hub", "me/my-clips", copy).resolve()
    for variable, value in {"HF_HUB_CACHE": tmp_path / "hub", "HF_HOME": tmp_path / "hf_home", "HF_HUB_OFFLINE": 1,
                            "HF_DATASETS_CACHE": tmp_path / "hf_home" / "datasets", "HF_DATASETS_OFFLINE": 1}.items():
        monkeypatch.setenv(variable, str(value))
    done = subprocess.run([sys.executable, "-c", OWN_HUB_READ], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    without_split, test = (json.loads(line) for line in done.stdout.splitlines())
    assert without_split == "dataset.split: me/my-clips has splits train, test; say which one"
    assert test == [["c", "B", str(snapshot / "videos" / "c.mp4")]]
