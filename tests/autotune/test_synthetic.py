"""autotune.data.synthetic: real mp4 files whose pixels carry the answers that questions.jsonl claims."""

import json
import time

import numpy as np
import pytest
import torch

from adatp.video import decode_frames, preprocess_frames
from autotune.data import synthetic
from autotune.data.protocol import Question
from autotune.data.synthetic import COLOURS, GRID, KINDS, OPEN_QUESTION_TEMPLATE, generate, load, object_mask

pytest.importorskip("av")
pytest.importorskip("decord")

N_VIDEOS = 6
FRAMES = 16
SIZE = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synthetic"), N_VIDEOS, seed=3, frames=FRAMES, size=SIZE)


def rows_of(root, name="questions.jsonl"):
    return [json.loads(line) for line in (root / name).read_text().splitlines()]


def write_rows(root, rows, name="questions.jsonl"):
    (root / name).write_text("".join(json.dumps(row) + "\n" for row in rows))


def videos_of(root):
    """video_id -> (its events, decoded uint8 frames [F, H, W, 3] as int64 numpy)."""
    videos = {}
    for row in rows_of(root):
        if row["video_id"] not in videos:
            frames = decode_frames(root / row["video"], FRAMES).numpy().astype(np.int64)
            videos[row["video_id"]] = (row["meta"]["events"], frames)
    return videos


def erode(mask, radius=2):
    """Pixels at least `radius` inside the mask (the image edge does not count as an edge): codec-blur free."""
    padded = np.pad(mask, radius, constant_values=True)
    inner = mask.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            inner &= padded[radius + dy : radius + dy + mask.shape[0], radius + dx : radius + dx + mask.shape[1]]
    return inner


def test_layout_and_rows(dataset):
    rows = rows_of(dataset)
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["generator"] == synthetic.GENERATOR_VERSION and meta["seed"] == 3 and meta["n_videos"] == N_VIDEOS
    assert meta["generator"] == "synthetic-v6"
    assert sorted(p.name for p in dataset.iterdir()) == ["meta.json", "open.jsonl", "questions.jsonl", "videos"]
    assert sorted(p.name for p in (dataset / "videos").iterdir()) == [f"syn{i:05d}.mp4" for i in range(N_VIDEOS)]
    assert len(rows) == 2 * N_VIDEOS
    # open.jsonl: the same questions as an unlabelled, open-ended table over the same videos.
    assert rows_of(dataset, "open.jsonl") == [
        {"id": row["qid"], "clip": row["video"], "question": OPEN_QUESTION_TEMPLATE.format(kind=row["meta"]["kind"])}
        for row in rows
    ]
    for row in rows:
        events = row["meta"]["events"]
        assert 2 <= len(events) <= 3
        assert len({e["kind"] for e in events}) == len(events) and len({e["colour"] for e in events}) == len(events)
        assert row["question"] == f"Which pattern did the {row['meta']['colour']} object have?"
        assert row["options"] == list(KINDS)
        assert row["options"]["ABC".index(row["answer"])] == row["meta"]["kind"]
        # The other events' kinds are the distractors.
        assert {e["kind"] for e in events} <= set(row["options"])
        target = next(e for e in events if e["colour"] == row["meta"]["colour"])
        assert target["kind"] == row["meta"]["kind"]
        assert target["frames"] == row["meta"]["target_frames"] and 2 <= len(target["frames"]) <= 4
        assert target["frames"] == list(range(target["frames"][0], target["frames"][-1] + 1))
        # Events never overlap and are at least one plain frame apart.
        spans = sorted((e["frames"][0], e["frames"][-1]) for e in events)
        assert all(later[0] - earlier[1] >= 2 for earlier, later in zip(spans, spans[1:], strict=False))
        assert spans[0][0] >= 0 and spans[-1][1] < FRAMES


def test_event_frames_show_the_answer_colour_and_other_frames_do_not(dataset):
    for events, frames in videos_of(dataset).values():
        event_frames = set()
        for event in events:
            mask = object_mask(event["kind"], event["cells"], SIZE)
            # Textures are a quarter cell fine: the codec blurs their edges, so they get no erosion and a wider
            # tolerance (measured <= 4.5 for block, <= 31 for stripes and checker over 60 events).
            inner, tolerance = (erode(mask), 12) if event["kind"] == "block" else (mask, 40)
            colour = np.array(COLOURS[event["colour"]])
            for f in range(FRAMES):
                mean = frames[f][inner].mean(axis=0)
                if f in event["frames"]:
                    assert np.abs(mean - colour).max() <= tolerance, (event, f, mean)
                else:
                    # The object's region holds grey background or another event's different colour, never it.
                    assert np.abs(mean - colour).max() >= 60, (event, f, mean)
            event_frames.update(event["frames"])
        for f in set(range(FRAMES)) - event_frames:
            saturation = frames[f].max(axis=-1) - frames[f].min(axis=-1)
            assert saturation.max() <= 60, f  # plain frames stay greyish (measured <= 25 with h264, 39 mpeg4)


def test_kinds_are_distinct_at_token_granularity(dataset):
    """At 32x32 input split into 4x4 tokens (the demo model's view), an event changes exactly its 2x2 cells'
    tokens against the nearest plain frame, and each token's own pixels say the kind: block flat, stripes
    varying by row only, checker varying by pixel but not by row or column."""
    for events, frames in videos_of(dataset).values():
        pixels = torch.from_numpy(frames.astype(np.uint8))
        small = preprocess_frames(pixels, size=(32, 32), mean=(0, 0, 0), std=(1, 1, 1), rescale_factor=1.0)
        patches = small.reshape(FRAMES, 3, GRID, 8, GRID, 8).permute(0, 2, 4, 3, 5, 1).numpy()  # f, r, c, y, x, rgb
        tokens = patches.mean(axis=(3, 4))
        plain = sorted(set(range(FRAMES)) - {f for e in events for f in e["frames"]})
        for event in events:
            assert len(event["cells"]) == 4
            cells = np.zeros((GRID, GRID), dtype=bool)
            cells[tuple(np.array(event["cells"]).T)] = True
            for f in event["frames"]:
                reference = min(plain, key=lambda p, f=f: abs(p - f))
                change = np.abs(tokens[f] - tokens[reference]).max(axis=-1)
                assert np.array_equal(change >= 25, cells), (event, f, change.round())
                for row, col in event["cells"]:
                    token = patches[f, row, col].max(axis=-1)  # [8, 8] brightest channel
                    spread, by_row, by_col = token.std(), token.mean(1).std(), token.mean(0).std()
                    if event["kind"] == "block":
                        assert spread < 15, (event, spread)
                    elif event["kind"] == "stripes":
                        assert spread > 40 and by_row > 40 and by_col < 15, (event, spread, by_row, by_col)
                    else:
                        assert spread > 40 and by_row < 15 and by_col < 15, (event, spread, by_row, by_col)


def test_deterministic_and_seed_dependent(tmp_path, dataset):
    again = generate(tmp_path / "again", N_VIDEOS, seed=3, frames=FRAMES, size=SIZE)
    for name in ("questions.jsonl", "open.jsonl"):
        assert (again / name).read_bytes() == (dataset / name).read_bytes()
    other = generate(tmp_path / "other", N_VIDEOS, seed=4, frames=FRAMES, size=SIZE)
    assert (other / "questions.jsonl").read_bytes() != (dataset / "questions.jsonl").read_bytes()
    # The rendered pixels are deterministic; x264's bytes for them are not always (seen within one pytest run: a mean
    # of 0.73 uint8 levels apart after decoding), so the decoded videos are compared: the same seed's video stays
    # within 3 levels on average, another seed's is ~18 away.
    first, second, third = (decode_frames(root / "videos/syn00004.mp4", FRAMES).numpy().astype(np.int64)
                            for root in (again, dataset, other))
    assert np.abs(first - second).mean() < 3.0
    assert np.abs(third - second).mean() > 10.0
    # Video i does not depend on how many videos are made.
    fewer = generate(tmp_path / "fewer", 2, seed=3, frames=FRAMES, size=SIZE)
    assert rows_of(fewer) == rows_of(dataset)[:4]


def test_idempotent_and_regenerates_on_other_parameters(tmp_path):
    root = generate(tmp_path / "set", 3, seed=0)
    stamp = (root / "questions.jsonl").stat().st_mtime_ns
    (root / "videos/syn00001.mp4").write_bytes(b"left alone when meta.json matches")
    time.sleep(0.01)
    assert generate(root, 3, seed=0) == root
    assert (root / "questions.jsonl").stat().st_mtime_ns == stamp
    assert (root / "videos/syn00001.mp4").read_bytes() == b"left alone when meta.json matches"
    generate(root, 2, seed=0)  # other parameters: rewritten, and the third video goes
    assert sorted(p.name for p in (root / "videos").iterdir()) == ["syn00000.mp4", "syn00001.mp4"]
    assert decode_frames(root / "videos/syn00001.mp4", 4).shape == (4, 64, 64, 3)
    assert json.loads((root / "meta.json").read_text())["n_videos"] == 2


def test_load_counts_and_letters(dataset):
    report = load(dataset)
    assert len(report.questions) == 2 * N_VIDEOS and sum(report.skipped.values()) == 0
    assert report.n_videos == N_VIDEOS
    rows = {row["qid"]: row for row in rows_of(dataset)}
    for question in report.questions:
        assert isinstance(question, Question) and question.dataset == "synthetic"
        row = rows[question.qid]
        assert question.options == tuple(row["options"]) and question.answer == row["answer"]
        assert question.options[question.answer_index] == question.meta["kind"]
        assert question.video_path == str(dataset / row["video"]) and question.meta["kind"] in KINDS
    assert [q.qid for q in load(dataset, limit=5).questions] == [q.qid for q in report.questions[:5]]
    # Answers are spread over the letters, not stuck on one.
    assert len({q.answer for q in load(generate(dataset.parent / "many", 40, seed=0)).questions}) == 3


def test_load_skips_missing_videos_and_malformed_rows(tmp_path):
    root = generate(tmp_path / "set", 4, seed=1)
    (root / "videos/syn00002.mp4").unlink()
    rows = rows_of(root)
    rows.append({"qid": "broken", "video_id": "x", "video": "videos/syn00000.mp4", "question": "?"})
    rows.append({**rows[0], "qid": "bad-letter", "answer": "E"})
    rows.append("not an object")
    write_rows(root, rows)
    report = load(root)
    assert len(report.questions) == 6
    assert "syn00002" not in {q.video_id for q in report.questions}
    assert report.skipped == {
        "missing video": 2,
        "open-ended question (no options)": 1,  # the synthetic preset reads multiple-choice questions only
        "malformed row: answer not among options": 1,
        "malformed row: not an object": 1,
    }


def test_load_missing_root_or_questions(tmp_path):
    with pytest.raises(FileNotFoundError, match="synthetic"):
        load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no questions\.jsonl in .*synthetic\.generate"):
        load(tmp_path)


def test_an_old_questions_json_is_replaced_by_the_jsonl_table(tmp_path):
    root = generate(tmp_path / "set", 2, seed=0)
    (root / "meta.json").write_text("{}")  # as if made by another version: regenerated
    (root / "questions.json").write_text("[]")  # synthetic-v5's manifest
    generate(root, 2, seed=0)
    assert not (root / "questions.json").exists()
    assert len(load(root).questions) == len(rows_of(root)) == 4


@pytest.mark.parametrize(
    "kwargs",
    [{"n_videos": 0}, {"frames": 7}, {"size": 36}, {"size": 16}, {"questions_per_video": 4}],
)
def test_generate_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate(tmp_path, **{"n_videos": 2, **kwargs})


def test_longer_videos_and_one_question(tmp_path):
    root = generate(tmp_path / "long", 3, seed=0, frames=32, size=96, questions_per_video=1)
    rows = rows_of(root)
    assert len(rows) == 3
    frames = decode_frames(root / rows[0]["video"], 32).numpy().astype(np.int64)
    assert frames.shape == (32, 96, 96, 3)
    target = rows[0]["meta"]
    inner = erode(object_mask(target["kind"], target["cells"], 96))
    for f in target["target_frames"]:
        assert np.abs(frames[f][inner].mean(axis=0) - np.array(COLOURS[target["colour"]])).max() <= 12


def test_generation_is_reproducible_frame_for_frame(tmp_path):
    """Two generations of one set decode to identical frames (lossy x264 differed in a few videos per run)."""
    first = synthetic.generate(tmp_path / "a", 60, seed=30000, frames=16)
    second = synthetic.generate(tmp_path / "b", 60, seed=30000, frames=16)
    for index in range(60):
        name = f"videos/syn{index:05d}.mp4"
        assert torch.equal(decode_frames(first / name, 16), decode_frames(second / name, 16)), name
