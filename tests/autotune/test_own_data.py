"""Tuning on your own table, end to end: the same synthetic questions written as JSONL, CSV with option columns,
parquet with dict options and index answers, a save_to_disk dataset with a `datasets.Video` column, and a videofolder
with metadata.jsonl, each studied through `autotune study` on the shipped tiny model (offline, HF_HUB_OFFLINE=1);
then an unlabelled open-ended manifest tuned for fidelity, exported, and previewed with `autotune data`."""

import json
import shutil
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from specs import MODEL
from typer.testing import CliRunner

import adatp
from autotune.cli import app
from autotune.data import synthetic
from autotune.spec import load_spec
from autotune.study import load_studies

pytestmark = pytest.mark.slow

N_VIDEOS = 6


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """The synthetic set's labelled rows (12 questions over 6 videos), videos under data/videos."""
    root = tmp_path_factory.mktemp("own") / "data"
    synthetic.generate(root, N_VIDEOS, seed=30000)
    lines = (root / "questions.jsonl").read_text().splitlines()
    return root, [json.loads(line) for line in lines]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def write_jsonl(root: Path, rows) -> dict:
    path = root / "mine.jsonl"
    path.write_text("".join(json.dumps({"qid": r["qid"], "clip": r["video"], "video_id": r["video_id"],
                                        "question": r["question"], "choices": r["options"],
                                        "answer": r["answer"]}) + "\n" for r in rows))
    return {"path": str(path), "columns": {"id": "qid", "video": "clip", "options": "choices"}}


def write_csv(root: Path, rows) -> dict:
    path = root / "mine.csv"
    header = "qid,video,video_id,question,option0,option1,option2,option3,answer\n"
    body = "".join(f'{r["qid"]},{r["video"]},{r["video_id"]},"{r["question"]}",{",".join(r["options"])},N/A,'
                   f'{r["answer"]}\n' for r in rows)
    path.write_text(header + body)
    return {"path": str(path), "columns": {"id": "qid", "options": ["option0", "option1", "option2", "option3"]}}


def write_parquet(root: Path, rows) -> dict:
    path = root / "mine.parquet"
    table = [{"qid": r["qid"], "video": str(root / r["video"]), "video_id": r["video_id"], "question": r["question"],
              "options": dict(zip("ABC", r["options"], strict=True)), "answer": "ABC".index(r["answer"])}
             for r in rows]
    pq.write_table(pa.Table.from_pylist(table), path)
    return {"path": str(path), "columns": {"id": "qid"}, "answer_format": "index"}


def write_disk(root: Path, rows) -> dict:
    path = root / "mine_disk"
    table = datasets.Dataset.from_list([{"qid": r["qid"], "video": str(root / r["video"]), "video_id": r["video_id"],
                                         "question": r["question"], "options": r["options"], "answer": r["answer"]}
                                        for r in rows])
    table.cast_column("video", datasets.Video(decode=False)).save_to_disk(str(path))
    return {"path": str(path), "source": "disk", "columns": {"id": "qid"}}


def write_videofolder(root: Path, rows) -> dict:
    folder = root / "mine_folder"
    folder.mkdir()
    for video in {r["video"] for r in rows}:
        shutil.copy(root / video, folder / Path(video).name)
    (folder / "metadata.jsonl").write_text("".join(json.dumps({
        "file_name": Path(r["video"]).name, "qid": r["qid"], "video_id": r["video_id"], "question": r["question"],
        "options": r["options"], "answer": r["answer"]}) + "\n" for r in rows))
    return {"path": str(folder), "source": "videofolder", "columns": {"id": "qid"}}


FORMS = {"jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet, "disk": write_disk,
         "videofolder": write_videofolder}


def spec_for(directory: Path, dataset: dict, **changes) -> Path:
    spec = {
        "name": "own", "model": {"path": str(MODEL)},
        "dataset": {"name": "mine", "frames": 16, **dataset},
        "budgets": [0.5], "base": {"method": "adatp", "score": "norm", "prune_layer": 0},
        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}, "n_trials": 2,
        "workdir": str(directory / "work"), "presets_dir": str(directory / "presets"), **changes,
    }
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def study(path: Path, *args):
    return CliRunner().invoke(app, ["study", str(path), "--no-progress", *args])


@pytest.fixture(scope="module")
def studied(rows, tmp_path_factory):
    """Each source form studied through `autotune study`: form -> (spec, the default config trial's value, trials)."""
    root, table = rows
    results = {}
    for form, write in FORMS.items():
        directory = tmp_path_factory.mktemp(form)
        path = spec_for(directory, write(root, table))
        result = study(path)
        assert result.exit_code == 0, f"{form}: {result.output}"
        spec = load_spec(path)
        trials = load_studies(spec)[0.5].get_trials()
        default = next(t for t in trials if t.user_attrs.get("warm_start") == "default")
        results[form] = (spec, default.value, trials, result.output)
    return results


@pytest.mark.parametrize("form", list(FORMS))
def test_each_source_form_is_studied_end_to_end_with_the_same_questions(studied, form):
    spec, value, trials, output = studied[form]
    assert "mine: 12 questions from 6 videos; skipped 0" in output
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(0.0 <= t.value <= 1.0 for t in trials)
    # Same questions, same split, same model, same default config: the same tune accuracy in every form.
    assert value == studied["jsonl"][1]
    assert trials[0].user_attrs["config"] == studied["jsonl"][2][0].user_attrs["config"]
    settings = load_studies(spec)[0.5].user_attrs["autotune"]
    assert (settings["objective"], settings["mode"], settings["metric"]) == ("accuracy", "logits", "letter")
    assert settings["tune_questions"] == load_studies(studied["jsonl"][0])[0.5].user_attrs["autotune"][
        "tune_questions"]


def test_disk_form_writes_embedded_video_bytes_once_by_content(studied, rows):
    root, _ = rows
    spec = studied["disk"][0]
    written = sorted((Path(spec.cache_dir) / "videos").iterdir())
    assert len(written) == N_VIDEOS
    originals = {p.read_bytes() for p in (root / "videos").glob("*.mp4")}
    assert {p.read_bytes() for p in written} == originals


@pytest.fixture(scope="module")
def open_study(tmp_path_factory):
    """demo-own-data's setting at a small size: an unlabelled open-ended manifest, tuned and exported."""
    directory = tmp_path_factory.mktemp("open")
    data = directory / "data"
    path = spec_for(directory, {"source": "json", "path": str(data / "open.jsonl"), "columns": {"video": "clip"},
                                "synthetic": {"n_videos": N_VIDEOS, "seed": 30000}},
                    max_new_tokens=2)
    result = study(path)
    assert result.exit_code == 0, result.output
    exported = CliRunner().invoke(app, ["export", str(path), "--no-progress"])
    assert exported.exit_code == 0, exported.output
    return path, result.output, exported.output


def test_unlabelled_open_ended_table_tunes_for_fidelity_and_says_so(open_study):
    path, output, exported = open_study
    assert "objective: no answer column; tuning for fidelity to the unpruned model" in output
    spec = load_spec(path)
    settings = load_studies(spec)[0.5].user_attrs["autotune"]
    assert (settings["objective"], settings["mode"], settings["metric"]) == ("fidelity", "generate", "token_f1")
    preset = adatp.load_preset(Path(spec.presets_dir) / "own-mine-b0.50.yaml")
    results = preset.results
    assert results["scoring"] == {"objective": "fidelity", "answers": "open-ended", "metric": "token_f1",
                                  "reference": "unpruned"}
    assert "test_accuracy" not in results and "vanilla_accuracy" not in results
    test, default = results["test_fidelity"], results["default_fidelity"]
    assert test["n"] == default["n"] == 6 and 0.0 <= test["value"] <= 1.0
    assert results["paired"]["test_minus_default"] == pytest.approx(test["value"] - default["value"], abs=1e-3)
    kind, held, _, vanilla = preset.held_out
    assert (kind, vanilla) == ("fidelity", None) and held == test
    assert "fidelity" in exported


def test_autotune_data_previews_the_open_manifest(open_study):
    path, _, _ = open_study
    result = CliRunner().invoke(app, ["data", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "mine: 12 questions from 6 videos; skipped 0" in lines
    assert "questions: open-ended, unlabelled -> objective fidelity, mode generate, metric token_f1" in lines
    assert "split by video (test_fraction 0.5, seed 0): 6 tune, 6 test questions" in lines
    assert "videos: 6 distinct, 6 found, 0 missing, 0 unreadable (probed 6)" in lines
    first = lines.index(next(line for line in lines if line.startswith("--- [1] syn00000-q0")))
    assert lines[first + 1: first + 6] == ["<|im_start|>user", "<video>", "What colour was the stripes object?",
                                           "Answer the question using a single word or phrase.<|im_end|>",
                                           "<|im_start|>assistant"]


def test_a_study_refuses_a_missing_video_unless_told_to_skip(rows, tmp_path):
    root, table = rows
    gone = table[0]["video"].replace("syn00000", "gone")
    moved = [{**row, "video": str(root / (gone if index == 0 else row["video"]))} for index, row in enumerate(table)]
    dataset = write_jsonl(tmp_path, moved)
    path = spec_for(tmp_path, dataset)
    refused = study(path)
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines()[-1].startswith(
        "error: dataset: 1 of 12 questions have no video file (first: syn00000-q0 -> ")
    preview = CliRunner().invoke(app, ["data", str(path), "--no-probe"])
    assert preview.exit_code == 2
    assert f"missing: {root / gone} (questions: syn00000-q0)" in preview.output
    skipped = study(path, "dataset.missing_video=skip")
    assert skipped.exit_code == 0, skipped.output
    assert "mine: 11 questions from 6 videos; skipped 1 (1 missing video)" in skipped.output
