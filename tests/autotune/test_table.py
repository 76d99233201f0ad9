"""autotune.data.table on real tables written to disk (JSONL, CSV, parquet, save_to_disk, videofolder, globbed
shards), read through HuggingFace `datasets` offline: column mapping, answer and option formats, unlabelled and
open-ended tables, filters and subsets, and hostile tables (each one clear line, or counted skips)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

from autotune.data.table import TableError, TableSpec, read_table, stratified_subset  # noqa: E402

# (qid, video, question, options, answer letter, task): the one table every source form below stores.
ROWS = [
    ("q0", "v0.mp4", "What colour is the car?", ("red", "blue", "green", "white"), "B", "colour"),
    ("q1", "v0.mp4", "How many people are there?", ("one", "two", "three", "four"), "A", "count"),
    ("q2", "v1.mp4", "Where is the dog?", ("park", "beach", "house", "street"), "D", "place"),
    ("q3", "v1.mp4", "What happens last?", ("rain", "sun", "snow", "wind"), "C", "order"),
]
EXPECTED = [(qid, video, question, options, answer, {"task": task})
            for qid, video, question, options, answer, task in ROWS]
VIDEO_BYTES = {"v0.mp4": b"\x00\x00\x00\x18ftypmp42 video zero", "v1.mp4": b"\x00\x00\x00\x18ftypmp42 video one!"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_videos(folder: Path, names=VIDEO_BYTES) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(VIDEO_BYTES.get(name, b"placeholder"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *rows])
    return path


def list_rows() -> list[dict]:
    return [{"id": qid, "video": video, "question": question, "options": list(options), "answer": answer,
             "task": task} for qid, video, question, options, answer, task in ROWS]


def read(tmp: Path, source: str, path: Path, videos_dir: Path | None = None, **fields):
    return read_table(TableSpec(name="t", source=source, path=str(path), **fields), cache_dir=str(tmp / "hf"),
                      videos_dir=str(videos_dir) if videos_dir else None)


def seen(report) -> list[tuple]:
    return [(q.qid, q.video_id, q.question, q.options, q.answer, q.meta) for q in report.questions]


@pytest.fixture(scope="module")
def forms(tmp_path_factory) -> dict[str, tuple[Path, str, dict]]:
    """Each source form of the same four questions: name -> (path, source, extra TableSpec fields)."""
    root = tmp_path_factory.mktemp("forms")
    tables = root / "tables"
    write_videos(tables)
    out = {"jsonl": (write_jsonl(tables / "qa.jsonl", list_rows()), "json", {})}
    # CSV: five option columns; an empty cell or "N/A" is not an option (q2 has its N/A in the middle)
    cells = [list(options) + [""] for *_, options, _, _ in ROWS]
    cells[1][4], cells[2] = "N/A", ["park", "beach", "N/A", "house", "street"]
    header = ["id", "video", "question", *(f"option{k}" for k in range(5)), "answer", "task"]
    write_csv(tables / "qa.csv", header, [[qid, video, question, *cells[n], answer, task]
                                          for n, (qid, video, question, _, answer, task) in enumerate(ROWS)])
    out["csv"] = (tables / "qa.csv", "csv", {"columns": {"options": [f"option{k}" for k in range(5)]}})
    # parquet: a dict column {A: text, ...} and 0-based index answers
    pq.write_table(pa.table({"id": [r[0] for r in ROWS], "video": [r[1] for r in ROWS],
                             "question": [r[2] for r in ROWS],
                             "options": [dict(zip("ABCD", r[3], strict=True)) for r in ROWS],
                             "answer": ["ABCD".index(r[4]) for r in ROWS], "task": [r[5] for r in ROWS]}),
                   tables / "qa.parquet")
    out["parquet"] = (tables / "qa.parquet", "parquet", {})
    # save_to_disk: a Video column (its bytes embedded, only the base name kept) and the answer as option text
    disk = datasets.Dataset.from_dict({"id": [r[0] for r in ROWS], "video": [str(tables / r[1]) for r in ROWS],
                                       "question": [r[2] for r in ROWS], "options": [list(r[3]) for r in ROWS],
                                       "answer": [r[3]["ABCD".index(r[4])] for r in ROWS],
                                       "task": [r[5] for r in ROWS]})
    disk.cast_column("video", datasets.Video(decode=False)).save_to_disk(str(root / "disk"))
    out["disk"] = (root / "disk", "disk", {})
    # videofolder: the videos beside metadata.jsonl, file_name naming each
    folder = root / "videofolder"
    write_videos(folder)
    write_jsonl(folder / "metadata.jsonl", [{"file_name": row.pop("video"), **row} for row in list_rows()])
    out["videofolder"] = (folder, "videofolder", {})
    # a glob over two JSONL shards
    shards = root / "shards"
    write_videos(shards)
    write_jsonl(shards / "part-0.jsonl", list_rows()[:2])
    write_jsonl(shards / "part-1.jsonl", list_rows()[2:])
    out["glob"] = (shards / "part-*.jsonl", "json", {})
    return out


@pytest.mark.parametrize("form", ["jsonl", "csv", "parquet", "disk", "videofolder", "glob"])
def test_every_source_form_gives_the_same_questions(forms, form, tmp_path):
    path, source, fields = forms[form]
    report = read(tmp_path, source, path, videos_dir=tmp_path / "videos", **fields)
    assert seen(report) == EXPECTED
    assert report.summary() == "t: 4 questions from 2 videos; skipped 0"
    assert report.missing_videos == {} and report.labelled and not report.open_ended
    for question in report.questions:
        assert Path(question.video_path).read_bytes() == VIDEO_BYTES[question.video_id]
    if form == "glob":
        assert [Path(file).name for file in report.files] == ["part-0.jsonl", "part-1.jsonl"]


def test_disk_video_bytes_are_written_once_by_content_hash(forms, tmp_path):
    path, source, _ = forms["disk"]
    videos = tmp_path / "videos"
    first = read(tmp_path, source, path, videos_dir=videos)
    wanted = {name: videos / f"{hashlib.sha256(data).hexdigest()[:24]}.mp4" for name, data in VIDEO_BYTES.items()}
    assert {q.video_id: Path(q.video_path) for q in first.questions} == wanted
    assert sorted(videos.iterdir()) == sorted(wanted.values())
    for name, written in wanted.items():
        assert written.read_bytes() == VIDEO_BYTES[name]
        os.utime(written, (1_000_000, 1_000_000))
    second = read(tmp_path, source, path, videos_dir=videos)
    assert [q.video_path for q in second.questions] == [q.video_path for q in first.questions]
    assert [written.stat().st_mtime for written in wanted.values()] == [1_000_000, 1_000_000]  # not rewritten
    assert sorted(videos.iterdir()) == sorted(wanted.values())


def test_disk_video_bytes_win_over_a_file_of_the_same_name(forms, tmp_path):
    path, source, _ = forms["disk"]
    (tmp_path / "v0.mp4").write_bytes(b"another video")
    report = read(tmp_path, source, path, videos_dir=tmp_path / "videos", video_root=str(tmp_path))
    assert Path(report.questions[0].video_path).read_bytes() == VIDEO_BYTES["v0.mp4"]


def test_disk_video_bytes_without_a_videos_dir_are_missing_not_guessed(forms, tmp_path):
    path, source, _ = forms["disk"]
    report = read(tmp_path, source, path)
    assert sorted(report.missing_videos) == ["q0", "q1", "q2", "q3"]
    assert report.missing_videos["q0"] == str(path / "v0.mp4")


# -- column mapping and splits ----------------------------------------------------------------------------------
def test_defaults_map_same_named_columns_and_keep_the_rest_as_meta(forms, tmp_path):
    report = read(tmp_path, "json", forms["jsonl"][0])
    assert report.mapping == {name: name for name in ("id", "video", "question", "options", "answer")}
    assert report.column_types == {"id": "string", "video": "string", "question": "string",
                                   "options": "list<string>", "answer": "string", "task": "string"}


def test_renamed_columns(tmp_path):
    write_videos(tmp_path)
    rows = [{"qid": r[0], "clip": r[1], "prompt": r[2], "choices": list(r[3]), "gold": r[4], "task": r[5]}
            for r in ROWS]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    columns = {"id": "qid", "video": "clip", "question": "prompt", "options": "choices", "answer": "gold"}
    assert seen(read(tmp_path, "json", path, columns=columns)) == EXPECTED


@pytest.mark.parametrize("canonical", ["id", "video", "video_id", "question", "options", "answer"])
def test_an_unknown_column_is_one_line_naming_it(forms, tmp_path, canonical):
    with pytest.raises(TableError) as error:
        read(tmp_path, "json", forms["jsonl"][0], columns={canonical: "no_such_column"})
    message = str(error.value)
    assert message.startswith(f"dataset.columns.{canonical}: no column 'no_such_column' in the table")
    assert "\n" not in message


def test_option_columns_of_which_only_some_exist_are_noted(forms, tmp_path):
    path, _, fields = forms["csv"]
    report = read(tmp_path, "csv", path, columns={"options": [*fields["columns"]["options"], "option5"]})
    assert seen(report) == EXPECTED
    assert report.notes == ["dataset.columns.options: option5 not in the table (read as absent)"]


@pytest.mark.parametrize(("column", "value", "message"), [
    ("question", 7, "dataset.columns.question: column 'question' is int64, must be text"),
    ("options", "red, blue", "dataset.columns.options: column 'options' is string, must be a list or a dict"),
    ("video", 3, "dataset.columns.video: column 'video' is int64, must be a path or a Video column"),
])
def test_a_column_of_the_wrong_type_is_one_line_naming_it(tmp_path, column, value, message):
    path = write_jsonl(tmp_path / "qa.jsonl", [{**row, column: value} for row in list_rows()])
    with pytest.raises(TableError, match=f"^{message}"):
        read(tmp_path, "json", path)


def test_split_is_required_when_there_are_several_and_picks_one(tmp_path):
    write_videos(tmp_path / "dd")
    split = {name: datasets.Dataset.from_list([row for row in list_rows() if row["task"] in tasks])
             for name, tasks in (("validation", ("colour", "count")), ("test", ("place", "order")))}
    datasets.DatasetDict(split).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(TableError) as error:
        read(tmp_path, "disk", tmp_path / "dd")
    assert str(error.value) == f"dataset.split: {tmp_path / 'dd'} has splits validation, test; say which one"
    assert seen(read(tmp_path, "disk", tmp_path / "dd", split="test")) == EXPECTED[2:]
    with pytest.raises(TableError, match=r"^dataset.split: no split 'train' in .* \(splits: validation, test\)$"):
        read(tmp_path, "disk", tmp_path / "dd", split="train")


# -- answers and options ----------------------------------------------------------------------------------------
def answers_table(tmp_path: Path, answers: list, options=("red", "blue", "green")) -> Path:
    write_videos(tmp_path)
    return write_jsonl(tmp_path / "qa.jsonl", [{"id": f"q{n}", "video": "v0.mp4", "question": "Which?",
                                                "options": list(options), "answer": answer}
                                               for n, answer in enumerate(answers)])


@pytest.mark.parametrize(("fmt", "answers", "letters", "skipped"), [
    ("auto", ["B", "c", "green", " blue "], ["B", "C", "C", "B"], {}),
    ("letter", ["B", "c", "green", "D"], ["B", "C"], {"malformed row: answer not among options": 2}),
    ("text", ["red", "green", "B"], ["A", "C"], {"malformed row: answer not among options": 1}),
])
def test_answer_format_for_text_answers(tmp_path, fmt, answers, letters, skipped):
    report = read(tmp_path, "json", answers_table(tmp_path, answers), answer_format=fmt)
    assert [q.answer for q in report.questions] == letters
    assert dict(report.skipped) == skipped


@pytest.mark.parametrize(("fmt", "letters"), [("auto", ["A", "C"]), ("index", ["A", "C"])])
def test_answer_format_for_index_answers(tmp_path, fmt, letters):
    report = read(tmp_path, "json", answers_table(tmp_path, [0, 2, 3]), answer_format=fmt)
    assert [q.answer for q in report.questions] == letters
    assert dict(report.skipped) == {"malformed row: answer not among options": 1}


def test_a_letter_beyond_the_options_is_skipped_and_counted(tmp_path):
    report = read(tmp_path, "json", answers_table(tmp_path, ["A", "D", "Z"]))
    assert [q.qid for q in report.questions] == ["q0"]
    assert report.summary() == "t: 1 questions from 1 videos; skipped 2 (2 malformed row: answer not among options)"


@pytest.mark.parametrize(("options", "prefix", "kept"), [
    (["A. red", "B. blue", "C. green"], "auto", ("red", "blue", "green")),
    (["(A) red", "B) blue", "C: green"], "auto", ("red", "blue", "green")),
    (["A. red", "blue", "C. green"], "auto", ("A. red", "blue", "C. green")),  # not every option has one
    (["B. red", "A. blue", "C. green"], "auto", ("B. red", "A. blue", "C. green")),  # not their own letters
    (["A. red", "blue", "C. green"], "strip", ("red", "blue", "green")),
    (["A. red", "B. blue", "C. green"], "keep", ("A. red", "B. blue", "C. green")),
])
def test_option_prefix(tmp_path, options, prefix, kept):
    report = read(tmp_path, "json", answers_table(tmp_path, ["B"], options), option_prefix=prefix)
    assert [q.options for q in report.questions] == [kept]


# -- unlabelled and open-ended ----------------------------------------------------------------------------------
def test_a_table_without_answers_is_unlabelled(tmp_path):
    write_videos(tmp_path)
    path = write_jsonl(tmp_path / "qa.jsonl", [{k: v for k, v in row.items() if k != "answer"}
                                               for row in list_rows()])
    report = read(tmp_path, "json", path)
    assert [(q.qid, q.options, q.answer) for q in report.questions] == [(r[0], r[3], None) for r in ROWS]
    assert not report.labelled and not report.open_ended


def test_a_table_without_options_is_open_ended_with_the_gold_text(tmp_path):
    write_videos(tmp_path)
    rows = [{"id": "q0", "video": "v0.mp4", "question": "What is the man holding?", "answer": " a red umbrella "},
            {"id": "q1", "video": "v1.mp4", "question": "How many birds?", "answer": 12},
            {"id": "q2", "video": "v1.mp4", "question": "Who speaks?"}]
    report = read(tmp_path, "json", write_jsonl(tmp_path / "open.jsonl", rows))
    assert [(q.qid, q.options, q.answer) for q in report.questions] == [("q0", (), "a red umbrella"),
                                                                        ("q1", (), "12")]
    assert report.open_ended and report.labelled
    assert dict(report.skipped) == {"malformed row: no answer": 1}


# -- where, limit, interleave, subset ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grouped(tmp_path_factory) -> Path:
    """60 questions: tasks a (30), b (20), c (10), in blocks; answers cycle A-D."""
    root = tmp_path_factory.mktemp("grouped")
    write_videos(root)
    tasks = ["a"] * 30 + ["b"] * 20 + ["c"] * 10
    return write_jsonl(root / "qa.jsonl", [
        {"id": f"q{n:02d}", "video": f"v{n % 2}.mp4", "question": f"Question {n}?", "options": ["w", "x", "y", "z"],
         "answer": "ABCD"[n % 4], "task": task, "level": n % 3} for n, task in enumerate(tasks)])


def test_where_filters_and_notes_what_it_kept(grouped, tmp_path):
    report = read(tmp_path, "json", grouped, where={"task": ["b", "c"], "level": 0})
    assert [q.qid for q in report.questions] == [f"q{n:02d}" for n in range(30, 60) if n % 3 == 0]
    assert report.notes == ["dataset.where: kept 10 of 60 rows"]
    with pytest.raises(TableError, match=r"^dataset.where: no column 'tsak' in the table"):
        read(tmp_path, "json", grouped, where={"tsak": "a"})


def test_limit_and_interleave(grouped, tmp_path):
    assert [q.qid for q in read(tmp_path, "json", grouped, limit=3).questions] == ["q00", "q01", "q02"]
    mixed = read(tmp_path, "json", grouped, interleave="task", limit=7).questions
    assert [(q.qid, q.meta["task"]) for q in mixed] == [("q00", "a"), ("q30", "b"), ("q50", "c"), ("q01", "a"),
                                                       ("q31", "b"), ("q51", "c"), ("q02", "a")]


def test_subset_is_seeded_stratified_by_largest_remainder_and_in_order(grouped, tmp_path):
    def subset(**spec):
        return [q.qid for q in read(tmp_path, "json", grouped, subset=spec).questions]

    first = subset(n=7, stratify="task", seed=1)
    assert first == subset(n=7, stratify="task", seed=1)
    assert first != subset(n=7, stratify="task", seed=2)
    assert first == sorted(first)  # input order kept
    # quotas 3.5, 2.33, 1.17 -> 3, 2, 1 and the one left goes to the largest remainder (a: 0.5)
    assert [sum(int(qid[1:]) in range(*span) for qid in first) for span in ((0, 30), (30, 50), (50, 60))] == [4, 2, 1]
    assert len(subset(n=10, seed=0)) == 10 and len(subset(n=100, seed=0)) == 60
    by_answer = read(tmp_path, "json", grouped, subset={"n": 8, "stratify": "answer", "seed": 3}).questions
    assert sorted(q.answer for q in by_answer) == list("AABBCCDD")


def test_stratified_subset_gives_each_stratum_its_share(grouped, tmp_path):
    questions = read(tmp_path, "json", grouped).questions
    for n in range(1, 60):
        chosen = stratified_subset(questions, n, "task", seed=n)
        counts = [sum(q.meta["task"] == task for q in chosen) for task in "abc"]
        assert len(chosen) == n and all(abs(count - n * share) < 1 for count, share in zip(counts, (.5, 1 / 3, 1 / 6),
                                                                                          strict=True))


# -- hostile tables ---------------------------------------------------------------------------------------------
def test_a_missing_question_column_is_one_line(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{k: v for k, v in row.items() if k != "question"}
                                               for row in list_rows()])
    with pytest.raises(TableError) as error:
        read(tmp_path, "json", path)
    assert str(error.value) == ("dataset.columns.question: the table has no question column; map one "
                                "(columns: {question: ...}; the table's: answer, id, options, task, video)")


def test_a_json_document_around_the_rows_names_its_columns(tmp_path):
    (tmp_path / "qa.json").write_text(json.dumps({"data": list_rows()}))
    with pytest.raises(TableError, match=r"^dataset.columns.video: .*; the table's: data\)$"):
        read(tmp_path, "json", tmp_path / "qa.json")


@pytest.mark.parametrize(("name", "content", "problem"), [
    ("qa.jsonl", "", "no data rows"),
    ("qa.csv", "", "1 unreadable file: qa.csv"),
    ("qa.csv", "video,question\n", "1 unreadable file: qa.csv"),
    ("qa.jsonl", "{not json\n", "1 unreadable file: qa.jsonl"),
])
def test_a_table_without_rows_is_one_line(tmp_path, name, content, problem):
    (tmp_path / name).write_text(content)
    with pytest.raises(TableError) as error:
        read(tmp_path, "csv" if name.endswith(".csv") else "json", tmp_path / name)
    assert str(error.value) == f"dataset.path: nothing to read in {tmp_path / name} ({problem})"


def test_bad_jsonl_lines_are_counted_and_the_rest_read(tmp_path):
    """A line cut short (a killed writer), a line that is not an object, and values of the wrong type."""
    write_videos(tmp_path)
    lines = [json.dumps(row) for row in list_rows()]
    lines[1:1] = ['"just a string"', json.dumps({**list_rows()[0], "id": "q9", "options": "red"})]
    lines.append('{"id": "q4", "video": "v0.m')
    (tmp_path / "qa.jsonl").write_text("\n".join(lines))
    report = read(tmp_path, "json", tmp_path / "qa.jsonl")
    assert seen(report) == EXPECTED
    assert dict(report.skipped) == {"malformed row: not JSON": 1, "malformed row: not an object": 1,
                                    "malformed row: options has wrong type": 1}


def test_a_column_of_mixed_types_is_checked_row_by_row(tmp_path):
    """datasets types such a JSON column `Json`: an int id is an id, a string where options go is skipped."""
    write_videos(tmp_path)
    rows = list_rows() + [{**list_rows()[0], "id": 7}, {**list_rows()[0], "id": "q8", "options": "red"}]
    report = read(tmp_path, "json", write_jsonl(tmp_path / "qa.jsonl", rows))
    assert [q.qid for q in report.questions] == ["q0", "q1", "q2", "q3", "7"]
    assert dict(report.skipped) == {"malformed row: options has wrong type": 1}


def test_duplicate_ids_keep_the_first_and_count_the_rest(tmp_path):
    write_videos(tmp_path)
    rows = list_rows() + [{**list_rows()[0], "question": "Again?"}, {**list_rows()[2], "question": "Twice?"}]
    report = read(tmp_path, "json", write_jsonl(tmp_path / "qa.jsonl", rows))
    assert seen(report) == EXPECTED
    assert dict(report.skipped) == {"duplicate id": 2}


@pytest.fixture(scope="module")
def thousand(tmp_path_factory) -> Path:
    """1,000 rows over 10 videos; row 537's video is not there."""
    root = tmp_path_factory.mktemp("thousand")
    write_videos(root, [f"v{k}.mp4" for k in range(10)])
    return write_jsonl(root / "qa.jsonl", [
        {"id": f"q{n}", "video": "gone.mp4" if n == 537 else f"v{n % 10}.mp4", "question": f"Q{n}?",
         "options": ["a", "b"], "answer": "A"} for n in range(1000)])


def test_one_missing_video_among_a_thousand(thousand, tmp_path):
    started = time.monotonic()
    report = read(tmp_path, "json", thousand)
    assert time.monotonic() - started < 30
    assert len(report.questions) == 1000 and not report.skipped
    assert report.missing_videos == {"q537": str(thousand.parent / "gone.mp4")}
    skipping = read(tmp_path, "json", thousand, missing_video="skip")
    assert len(skipping.questions) == 999 and "q537" not in {q.qid for q in skipping.questions}
    assert dict(skipping.skipped) == {"missing video": 1} and skipping.missing_videos == {}


def test_a_five_option_row_in_a_four_option_set_is_kept_and_noted(tmp_path):
    write_videos(tmp_path)
    rows = list_rows()
    rows[2]["options"] = [*rows[2]["options"], "garden"]
    report = read(tmp_path, "json", write_jsonl(tmp_path / "qa.jsonl", rows))
    assert [len(q.options) for q in report.questions] == [4, 4, 5, 4]
    assert report.notes == ["1 row(s) with 5 options where 3 have 4 (first: q2)"]


@pytest.mark.parametrize(("name", "content"), [
    ("qa.jsonl", b'{"video": "v0.mp4", "question": "Caf\xc3\xa9?"}\n{"video": "v0.mp4", "question": "Caf\xe9?"}\n'),
    ("qa.csv", b"video,question\nv0.mp4,ok\nv0.mp4,Caf\xe9?\n"),  # Latin-1, as a spreadsheet saves it
])
def test_non_utf8_text_is_one_line_naming_the_byte_and_offset(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    offset = content.index(b"\xe9?")
    source = "csv" if name.endswith(".csv") else "json"
    with pytest.raises(TableError) as error:
        read(tmp_path, source, tmp_path / name)
    assert str(error.value) == (f"dataset.path: {tmp_path / name} is not UTF-8 text (byte 0xe9 at offset {offset}); "
                                "save it as UTF-8")


@pytest.mark.parametrize(("content", "problem"), [
    (b'{"q": "\xc3\xa9\xc3(x"}\n', "byte 0xc3 at offset 9"),  # a character cut short: where it starts
    (b'{"q": "\xc3\xa9"}\n\xc3', "byte 0xc3 at offset 12"),  # the file ends inside a character
])
def test_utf8_check_across_chunk_boundaries(tmp_path, monkeypatch, content, problem):
    (tmp_path / "qa.jsonl").write_bytes(content)
    for chunk in (1, 2, 3, 7, 1 << 20):
        monkeypatch.setattr("autotune.data.table._UTF8_CHUNK", chunk)
        with pytest.raises(TableError, match=rf"is not UTF-8 text \({problem}\)"):
            read(tmp_path, "json", tmp_path / "qa.jsonl")


def test_csv_cells_are_read_as_written(tmp_path):
    """pandas would read "None", "NA" and "null" as missing and a column of digits as numbers; a CSV is text."""
    write_videos(tmp_path)
    path = write_csv(tmp_path / "qa.csv", ["id", "video", "question", "option0", "option1", "option2", "answer",
                                           "level"],
                     [["007", "v0.mp4", "Which?", "None", "NA", "null", "1", "2"],
                      ["008", "v0.mp4", "How many?", "1", "2", "3", "C", "1"],
                      ["009", "v0.mp4", "How many?", "10", "20", "", "", "2"]])
    report = read(tmp_path, "csv", path, columns={"options": ["option0", "option1", "option2"]}, where={"level": 2})
    assert [(q.qid, q.options, q.answer) for q in report.questions] == [("007", ("None", "NA", "null"), "B")]
    assert dict(report.skipped) == {"malformed row: no answer": 1}
    assert set(report.column_types.values()) == {"string"}

