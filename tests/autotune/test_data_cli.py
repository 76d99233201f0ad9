"""`autotune data` on hostile tables: each comes back in bounded time with one clear line (an error naming the
column or the byte, a counted skip, a note, or the missing-video report), and nothing is silently dropped."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from specs import MODEL
from typer.testing import CliRunner

from autotune.cli import app

N_ROWS = 1000
N_VIDEOS = 50
MAX_LINE = 300


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def rows(n: int = N_ROWS) -> list[dict]:
    return [{"qid": f"q{i:04d}", "video": f"videos/v{i % N_VIDEOS:02d}.mp4", "question": f"What happens in scene {i}?",
             "options": ["a cat", "a dog", "a bird", "a fish"], "answer": "ABCD"[i % 4]} for i in range(n)]


def table(directory: Path, items: list[dict], name: str = "qa.jsonl") -> Path:
    (directory / "videos").mkdir(exist_ok=True)
    for index in range(N_VIDEOS):
        (directory / "videos" / f"v{index:02d}.mp4").write_bytes(b"placeholder")
    path = directory / name
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


def spec(directory: Path, path: Path, **dataset) -> Path:
    document = {"name": "hostile", "model": {"path": str(MODEL)},
                "dataset": {"path": str(path), "columns": {"id": "qid"}, **dataset}, "budgets": [0.5],
                "workdir": str(directory / "work")}
    out = directory / "spec.yaml"
    out.write_text(yaml.safe_dump(document))
    return out


def data(path: Path, *args: str):
    result = CliRunner().invoke(app, ["data", str(path), "--no-probe", "--no-progress", *args])
    lines = result.output.splitlines()
    assert all(len(line) <= MAX_LINE for line in lines if not line.startswith(("columns:", "<", "What"))), lines
    return result, lines


def test_a_clean_table_reports_counts_histograms_and_the_split(tmp_path):
    result, lines = data(spec(tmp_path, table(tmp_path, rows())))
    assert result.exit_code == 0, result.output
    assert "hostile: 1000 questions from 50 videos; skipped 0" not in lines  # the dataset's name is the file's stem
    assert "qa: 1000 questions from 50 videos; skipped 0" in lines
    assert "options per question: 4: 1,000" in lines
    assert "answer letters: A: 250, B: 250, C: 250, D: 250" in lines
    assert "questions: multiple-choice, labelled -> objective accuracy, mode logits, metric letter" in lines
    assert "videos: 50 distinct, 50 found, 0 missing, 0 unreadable (probed 0)" in lines


def test_a_missing_column_is_one_line_naming_it(tmp_path):
    result, lines = data(spec(tmp_path, table(tmp_path, rows(10)), columns={"id": "qid", "video": "clip"}))
    assert result.exit_code == 2
    assert lines[-1].startswith("error: dataset.columns.video: no column 'clip' in the table (columns: ")
    assert "Traceback" not in result.output


def test_a_column_of_the_wrong_type_is_one_line_naming_it(tmp_path):
    items = [{**row, "question": 7} for row in rows(10)]
    result, lines = data(spec(tmp_path, table(tmp_path, items)))
    assert result.exit_code == 2
    assert lines[-1] == "error: dataset.columns.question: column 'question' is int64, must be text"


def test_bad_rows_are_counted_by_reason(tmp_path):
    items = rows()
    items[3]["answer"] = "E"                      # a letter beyond the 4 options
    items[5]["qid"] = items[4]["qid"]             # a duplicate id
    items[7]["question"] = "   "                  # an empty question
    items[9]["options"] = [*items[9]["options"], "a horse"]   # a 5-option row in a 4-option set: kept, noted
    result, lines = data(spec(tmp_path, table(tmp_path, items)))
    assert result.exit_code == 0, result.output
    assert ("qa: 997 questions from 50 videos; skipped 3 (1 duplicate id, 1 malformed row: answer not among options, "
            "1 malformed row: no question)") in lines
    assert "options per question: 4: 996, 5: 1" in lines
    assert "note: 1 row(s) with 5 options where 999 have 4 (first: q0009)" in lines


def test_a_missing_video_among_1000_rows_is_reported_and_stops_the_study(tmp_path):
    items = rows()
    items[500]["video"] = "videos/gone.mp4"
    path = spec(tmp_path, table(tmp_path, items))
    result, lines = data(path)
    assert result.exit_code == 2
    assert f"missing: {tmp_path / 'videos' / 'gone.mp4'} (questions: q0500)" in lines
    assert "videos: 51 distinct, 50 found, 1 missing, 0 unreadable (probed 0)" in lines
    assert lines[-1] == ("error: autotune study would refuse this table: 1 missing videos (dataset.missing_video: "
                         "skip tunes without them)")
    skipped, lines = data(path, "dataset.missing_video=skip")
    assert skipped.exit_code == 0
    assert "qa: 999 questions from 50 videos; skipped 1 (1 missing video)" in lines


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_non_utf8_text_is_one_line_naming_the_byte(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    table(tmp_path, rows(2))
    head = "qid,video,question,options,answer\n" if suffix == ".csv" else ""
    line = ('q1,videos/v00.mp4,Caf\xe9?,x,A\n' if suffix == ".csv" else
            json.dumps({"qid": "q1", "video": "videos/v00.mp4", "question": "Caf\xe9?"}, ensure_ascii=False) + "\n")
    path.write_bytes((head + line).encode("latin-1"))
    result, lines = data(spec(tmp_path, path))
    assert result.exit_code == 2
    offset = (head + line).encode("latin-1").index(b"\xe9")
    assert lines[-1] == (f"error: dataset.path: {path} is not UTF-8 text (byte 0xe9 at offset {offset:,}); save it as "
                         "UTF-8")


@pytest.mark.slow
def test_a_200_mb_manifest_is_read_in_bounded_time(tmp_path):
    """200 MB of JSONL (long questions over 50 videos): read, counted and previewed, in a subprocess with a timeout."""
    filler = "x" * 2000
    items = rows(100)
    path = table(tmp_path, [])
    with path.open("w", encoding="utf-8") as handle:
        for copy in range(1000):
            for item in items:
                handle.write(json.dumps({**item, "qid": f"{item['qid']}-{copy}",
                                         "question": f"{item['question']} {filler}"}) + "\n")
    size = path.stat().st_size
    assert size > 200e6
    done = subprocess.run([sys.executable, "-m", "autotune.cli", "data", str(spec(tmp_path, path)), "--no-probe",
                           "--no-progress"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "qa: 100000 questions from 50 videos; skipped 0" in done.stdout.splitlines()
