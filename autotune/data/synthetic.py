"""A synthetic video-QA benchmark with known answers: real mp4 files, generated offline in seconds.

Each video is a slowly drifting, low-contrast grey texture. At 2 or 3 random times an *event* shows one object
for 2-4 consecutive frames; events never overlap, are separated by at least one plain frame, and have different
kinds and different colours. A question asks "Which pattern did the {colour} object have?" with the 3 kinds as
options, always in the same order (so the other events' kinds are always among them). The answer lives in a few
frames and
the question's words say which ones, so pruning that keeps the wrong frames (or the wrong tokens in them) costs
accuracy.

Geometry is on a 4x4 grid of cells, each ``size // 4`` pixels square: at the default 64x64 one cell is 16x16 px,
i.e. exactly one 8x8-px visual token once frames are resized to 32x32 and split into 4x4 pooled tokens. Every
object fills a 2x2-cell region (4 tokens) at a random place; its kind is a texture, so that each of its tokens
alone says which kind it belongs to (a tiny model can then find "the stripes" token by token):

- ``block``: the region filled.
- ``stripes``: horizontal stripes, a quarter cell thick (4 px at 64x64), colour and background alternating.
- ``checker``: a checkerboard of quarter-cell squares.

Colours are saturated RGB so that yuv420p h264 keeps them apart (see COLOURS). Layout on disk::

    ROOT/videos/<video_id>.mp4
    ROOT/questions.jsonl  one question a line: {qid, video_id, video, question, options, answer, meta: {kind,
                          colour, target_frames, cells, events}}   (video: path relative to ROOT); a `datasets`
                          JSON table, read by the `synthetic` preset of autotune.data.table
    ROOT/open.jsonl       the same videos as an unlabelled, open-ended table: {id, clip, question} (what colour
                          was the object with this pattern?), for `studies/demo-own-data.yaml`
    ROOT/meta.json        generator version and parameters, written last: its presence means "complete"

    python -m autotune.data.synthetic ROOT N_VIDEOS [--seed S] [--frames F] [--size PX]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from autotune.data.protocol import letters

DATASET = "synthetic"
# v6: questions.jsonl (a `datasets` table) and open.jsonl; v5: lossless H.264 (x264's lossy output is not
# bit-reproducible). The videos are those of v5.
GENERATOR_VERSION = "synthetic-v6"
GRID = 4  # cells per side; one cell = one pooled visual token at 32x32 input
KINDS = ("block", "stripes", "checker")
OBJECT_CELLS = 2  # objects cover OBJECT_CELLS x OBJECT_CELLS cells
# Questions name a colour and ask for the kind, offered always in KINDS order (block is always A): the task is
# "find the object of that colour, read its texture", not also "find the answer among shuffled options", a hop a
# tiny model trained on CPU for minutes does not learn. Which object is asked still decides the answer.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
}
EVENT_LENGTHS = (2, 3, 4)  # consecutive frames per event
QUESTION_TEMPLATE = "Which pattern did the {colour} object have?"
OPEN_QUESTION_TEMPLATE = "What colour was the {kind} object?"
_FPS = 8
_TEXTURE_CELLS = 8  # background texture resolution before smooth upsampling


def generate(
    root: str | os.PathLike[str],
    n_videos: int,
    seed: int = 0,
    frames: int = 16,
    size: int = 64,
    questions_per_video: int = 2,
) -> Path:
    """Write ``n_videos`` videos and their questions under ``root``; return ``root`` as a Path.

    Deterministic in (seed, n_videos, frames, size, questions_per_video): the same arguments give the same
    questions.jsonl and open.jsonl bytes. If ``root/meta.json`` already records these arguments and this generator
    version, nothing is written. Otherwise the set is (re)written and meta.json comes last.
    """
    _check_arguments(n_videos, frames, size, questions_per_video)
    root = Path(root)
    params = {
        "n_videos": n_videos,
        "seed": seed,
        "frames": frames,
        "size": size,
        "questions_per_video": questions_per_video,
    }
    meta_path = root / "meta.json"
    if _matching_meta(meta_path, params):
        return root
    meta_path.unlink(missing_ok=True)
    codec = _pick_codec()
    rows = _write_videos(root / "videos", n_videos, seed, frames, size, questions_per_video, codec)
    (root / "questions.json").unlink(missing_ok=True)  # v5's manifest
    _write_jsonl(root / "questions.jsonl", rows)
    _write_jsonl(root / "open.jsonl", [_open_row(row) for row in rows])
    _write_text(meta_path, json.dumps(_meta(params, codec), indent=1) + "\n")
    return root


def _meta(params: dict[str, Any], codec: str) -> dict[str, Any]:
    """meta.json: the generator version, its arguments and what the videos were made with."""
    meta = {"generator": GENERATOR_VERSION, **params, "codec": codec, "fps": _FPS, "grid": GRID}
    meta["kinds"] = list(KINDS)
    meta["colours"] = {name: list(rgb) for name, rgb in COLOURS.items()}
    return meta


def _check_arguments(n_videos: int, frames: int, size: int, questions_per_video: int) -> None:
    """ValueError naming the first argument out of range."""
    if not isinstance(n_videos, int) or n_videos < 1:
        raise ValueError(f"n_videos must be an int >= 1, got {n_videos!r}")
    min_frames = len(KINDS) * min(EVENT_LENGTHS) + len(KINDS) - 1  # every event fits, one plain frame apart
    if not isinstance(frames, int) or frames < min_frames:
        raise ValueError(f"frames must be an int >= {min_frames}, got {frames!r}")
    if not isinstance(size, int) or size < 32 or size % (2 * GRID):
        raise ValueError(f"size must be an int >= 32 divisible by {2 * GRID}, got {size!r}")
    if not isinstance(questions_per_video, int) or not 1 <= questions_per_video <= len(KINDS):
        raise ValueError(f"questions_per_video must be an int in [1, {len(KINDS)}], got {questions_per_video!r}")


def _write_videos(
    video_dir: Path, n_videos: int, seed: int, frames: int, size: int, questions_per_video: int, codec: str
) -> list[dict[str, Any]]:
    """Write the mp4 files (removing other sets' leftovers) and return their question rows, in video order."""
    video_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    video_ids = []
    for index in range(n_videos):
        video_id = f"syn{index:05d}"
        video_ids.append(video_id)
        # One generator per video: video i is the same whatever n_videos is.
        rng = np.random.default_rng([seed, index])
        events = _draw_events(rng, frames)
        pixels = _render(rng, events, frames, size)
        _write_mp4(video_dir / f"{video_id}.mp4", pixels, codec)
        rows.extend(_questions(rng, video_id, events, questions_per_video))
    current = set(video_ids)
    for stale in video_dir.glob("syn*.mp4"):
        if stale.stem not in current:
            stale.unlink()
    return rows


def _matching_meta(meta_path: Path, params: dict[str, Any]) -> bool:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("generator") != GENERATOR_VERSION:
        return False
    return all(meta.get(key) == value for key, value in params.items())


def _draw_events(rng: np.random.Generator, frames: int) -> list[dict[str, Any]]:
    """2-3 non-overlapping events, at least one plain frame apart, each a distinct kind and colour."""
    count = int(rng.integers(2, len(KINDS) + 1))
    kinds = [KINDS[i] for i in rng.permutation(len(KINDS))[:count]]
    colour_names = list(COLOURS)
    colours = [colour_names[i] for i in rng.permutation(len(colour_names))[:count]]
    lengths = [int(rng.choice(EVENT_LENGTHS)) for _ in range(count)]
    while sum(lengths) + count - 1 > frames:  # only for short videos: shorten the longest event
        lengths[int(np.argmax(lengths))] -= 1
    # Spread the free frames over the count + 1 gaps (before, between, after); inner gaps get one frame extra.
    free = frames - sum(lengths) - (count - 1)
    cuts = np.sort(rng.integers(0, free + 1, size=count))
    gaps = np.diff(np.concatenate([[0], cuts, [free]]))
    events, start = [], 0
    for j in range(count):
        start += int(gaps[j]) + (1 if j else 0)
        kind = kinds[j]
        top, left = (int(v) for v in rng.integers(0, GRID - OBJECT_CELLS + 1, size=2))
        cells = [[top + r, left + c] for r in range(OBJECT_CELLS) for c in range(OBJECT_CELLS)]
        frame_list = list(range(start, start + lengths[j]))
        events.append({"kind": kind, "colour": colours[j], "frames": frame_list, "cells": cells})
        start += lengths[j]
    return events


def object_mask(kind: str, cells: list[list[int]], size: int) -> np.ndarray:
    """Boolean [size, size] mask of the pixels an object of ``kind`` covers (``cells`` as in the questions' meta)."""
    if kind not in KINDS:
        raise ValueError(f"unknown object kind {kind!r}; known: {', '.join(KINDS)}")
    cell = size // GRID
    stripe = max(1, cell // 4)
    rows, cols = np.meshgrid(np.arange(size) // stripe, np.arange(size) // stripe, indexing="ij")
    texture = {"block": np.ones((size, size), dtype=bool), "stripes": rows % 2 == 0,
               "checker": (rows + cols) % 2 == 0}[kind]
    region = np.zeros((size, size), dtype=bool)
    for row, col in cells:
        region[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = True
    return region & texture


def _smooth_field(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """Random [size, size, channels] field, bilinearly upsampled from an 8x8 grid: soft blobs, no block edges."""
    coarse = rng.normal(0.0, 1.0, (_TEXTURE_CELLS, _TEXTURE_CELLS, channels))
    positions = (np.arange(size) + 0.5) * _TEXTURE_CELLS / size - 0.5
    lower = np.clip(np.floor(positions).astype(int), 0, _TEXTURE_CELLS - 1)
    upper = np.clip(lower + 1, 0, _TEXTURE_CELLS - 1)
    weight = np.clip(positions - lower, 0.0, 1.0)
    interp = np.zeros((size, _TEXTURE_CELLS))
    interp[np.arange(size), lower] += 1.0 - weight
    interp[np.arange(size), upper] += weight
    return np.einsum("ij,jkc,lk->ilc", interp, coarse, interp)


def _render(rng: np.random.Generator, events: list[dict[str, Any]], frames: int, size: int) -> np.ndarray:
    """uint8 [frames, size, size, 3]: background drifting from texture A to texture B, objects painted on top."""
    base = rng.uniform(70.0, 110.0)
    luma_a, luma_b = _smooth_field(rng, size, 1) * 12.0, _smooth_field(rng, size, 1) * 12.0
    tint_a, tint_b = _smooth_field(rng, size, 3) * 4.0, _smooth_field(rng, size, 3) * 4.0
    drift = np.linspace(0.0, 1.0, frames)[:, None, None, None]
    background = base + (1.0 - drift) * (luma_a + tint_a) + drift * (luma_b + tint_b)
    video = np.clip(np.rint(background), 0, 255).astype(np.uint8)
    for event in events:
        mask = object_mask(event["kind"], event["cells"], size)
        for frame in event["frames"]:
            video[frame][mask] = COLOURS[event["colour"]]
    return video


def _questions(
    rng: np.random.Generator, video_id: str, events: list[dict[str, Any]], questions_per_video: int
) -> list[dict[str, Any]]:
    asked = rng.permutation(len(events))[: min(questions_per_video, len(events))]
    rows = []
    for number, event_index in enumerate(sorted(int(i) for i in asked)):
        target = events[event_index]
        options = list(KINDS)
        rows.append(
            {
                "qid": f"{video_id}-q{number}",
                "video_id": video_id,
                "video": f"videos/{video_id}.mp4",
                "question": QUESTION_TEMPLATE.format(colour=target["colour"]),
                "options": options,
                "answer": letters(len(options))[options.index(target["kind"])],
                "meta": {
                    "kind": target["kind"],
                    "colour": target["colour"],
                    "target_frames": target["frames"],
                    "cells": target["cells"],
                    "events": events,
                },
            }
        )
    return rows


def _pick_codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _atomic(path: Path) -> Path:
    """A private name beside `path` to write first: `os.replace` then swaps the whole file in, so two processes
    generating one set at once (workers started together on one root) never read each other's half-written files."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_mp4(path: Path, video: np.ndarray, codec: str) -> None:
    partial = _atomic(path)
    _encode_mp4(partial, video, codec)
    os.replace(partial, path)


def _encode_mp4(path: Path, video: np.ndarray, codec: str) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as container:
        if codec == "libx264":
            # Lossless (qp 0): x264's lossy output differed between runs for a few videos (same pixels in), which
            # flipped near-tie answers of the demo; a lossless stream decodes to the same frames whatever it holds.
            stream = container.add_stream(codec, rate=_FPS, options={"qp": "0", "preset": "veryfast", "threads": "1"})
        else:  # MPEG-4 part 2 fallback: a high bit rate, else colours ghost into the plain frames
            stream = container.add_stream(codec, rate=_FPS)
            stream.bit_rate = 4_000_000
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        for index, pixels in enumerate(video):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p")
            frame.pts = index  # explicit timestamps: with none, the muxed bytes vary from run to run
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_text(path: Path, text: str) -> None:
    partial = _atomic(path)
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    _write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def _open_row(row: dict[str, Any]) -> dict[str, Any]:
    """The question as a user's own unlabelled, open-ended table would hold it: an id, a clip, a question."""
    return {"id": row["qid"], "clip": row["video"], "question": OPEN_QUESTION_TEMPLATE.format(kind=row["meta"]["kind"])}


def load(root: str | os.PathLike[str], limit: int | None = None):
    """The synthetic questions under ``root`` (made by :func:`generate`), in file order; at most ``limit``: the
    `synthetic` preset of the table adapter. Missing root or questions.jsonl: FileNotFoundError."""
    from autotune.data.benchmarks import load_dataset
    from autotune.data.table import TableError

    if not (Path(root) / "questions.jsonl").is_file():
        if not Path(root).is_dir():
            raise FileNotFoundError(f"dataset root for {DATASET} not found: {root}")
        raise FileNotFoundError(f"no questions.jsonl in {root}: make the set with autotune.data.synthetic.generate")
    try:
        return load_dataset(DATASET, root, limit=limit)
    except TableError as error:
        raise FileNotFoundError(str(error)) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the synthetic video-QA set.")
    parser.add_argument("root")
    parser.add_argument("n_videos", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--questions-per-video", type=int, default=2)
    args = parser.parse_args(argv)
    root = generate(args.root, args.n_videos, args.seed, args.frames, args.size, args.questions_per_video)
    print(load(root).summary())


if __name__ == "__main__":
    main()
