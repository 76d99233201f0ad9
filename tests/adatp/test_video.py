"""adatp.video: frame sampling, decoding real mp4 files (and broken ones), LLaVA-OV pixel preprocessing."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from adatp.video import VideoError, decode_frames, frame_indices, preprocess_config_from, preprocess_frames
from adatp.video import decode as video

av = pytest.importorskip("av")
pytest.importorskip("decord")

N_FRAMES = 40
HEIGHT, WIDTH = 48, 80  # not square: catches a swapped H/W


def level(i: int) -> int:
    """Grey level of frame i in the test video: 40 frames, 6 levels apart, well inside the codec's range."""
    return 10 + 6 * i


def write_mp4(path, frames: np.ndarray, faststart: bool = False) -> None:
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def grey_ramp(tmp_path_factory):
    frames = np.stack([np.full((HEIGHT, WIDTH, 3), level(i), np.uint8) for i in range(N_FRAMES)])
    path = tmp_path_factory.mktemp("video") / "ramp.mp4"
    write_mp4(path, frames)
    faststart = path.with_name("ramp_faststart.mp4")
    write_mp4(faststart, frames, faststart=True)
    return path, faststart


# --- frame_indices ------------------------------------------------------------------------------------------------


def test_frame_indices_truncate_like_lmms_eval():
    # linspace(0, 99, 8) = 0, 14.14, 28.29, 42.43, 56.57, 70.71, 84.86, 99: truncation, not rounding (57, 71, 85).
    assert frame_indices(100, 8) == [0, 14, 28, 42, 56, 70, 84, 99]
    assert frame_indices(40, 16) == [0, 2, 5, 7, 10, 13, 15, 18, 20, 23, 26, 28, 31, 33, 36, 39]
    assert frame_indices(16, 16) == list(range(16))
    assert frame_indices(5, 8) == [0, 0, 1, 1, 2, 2, 3, 4]  # fewer frames than asked: repeats, as lmms-eval
    assert frame_indices(1, 3) == [0, 0, 0]
    assert frame_indices(7, 1) == [0]


@pytest.mark.parametrize("total, num_frames", [(0, 4), (10, 0), (-1, 3)])
def test_frame_indices_rejects_empty(total, num_frames):
    with pytest.raises(ValueError):
        frame_indices(total, num_frames)


# --- decode_frames ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", [0, 1])
def test_decode_reads_the_sampled_frames(grey_ramp, which):
    frames = decode_frames(grey_ramp[which], 16)
    assert frames.dtype == torch.uint8 and frames.shape == (16, HEIGHT, WIDTH, 3)
    expected = torch.tensor([level(i) for i in frame_indices(N_FRAMES, 16)], dtype=torch.float32)
    means = frames.float().mean(dim=(1, 2, 3))
    # yuv420p round trip of flat grey: within 2 levels; neighbouring frames are 6 apart, so an off-by-one shows.
    assert torch.allclose(means, expected, atol=2.0), (means, expected)


def test_decode_in_child_process_gives_identical_frames(grey_ramp):
    assert torch.equal(decode_frames(grey_ramp[0], 16, timeout_s=60), decode_frames(grey_ramp[0], 16))


def _broken_files(tmp_path, good):
    data = good.read_bytes()
    rng = np.random.default_rng(0)
    files = {
        "missing": tmp_path / "missing.mp4",
        "empty": tmp_path / "empty.mp4",
        "random_bytes": tmp_path / "random.mp4",
        "truncated": tmp_path / "truncated.mp4",  # moov at the end: cut off
        "truncated_faststart": tmp_path / "truncated_fs.mp4",  # moov intact, samples cut off
        "not_a_video": tmp_path / "notes.mp4",
    }
    files["empty"].write_bytes(b"")
    files["random_bytes"].write_bytes(rng.bytes(5000))
    files["truncated"].write_bytes(data[: len(data) // 2])
    fast = good.with_name("ramp_faststart.mp4").read_bytes()
    files["truncated_faststart"].write_bytes(fast[: int(len(fast) * 0.6)])
    files["not_a_video"].write_text("just some text\n" * 50)
    no_stream = tmp_path / "no_stream.mp4"
    with av.open(str(no_stream), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        container.start_encoding()
    files["no_video_stream"] = no_stream
    return files


@pytest.mark.parametrize(
    "kind", ["missing", "empty", "random_bytes", "truncated", "truncated_faststart", "not_a_video", "no_video_stream"]
)
@pytest.mark.parametrize("timeout_s", [None, 60])
def test_broken_videos_raise_video_error_naming_the_file(tmp_path, grey_ramp, kind, timeout_s):
    path = _broken_files(tmp_path, grey_ramp[0])[kind]
    with pytest.raises(VideoError) as raised:
        decode_frames(path, 8, timeout_s=timeout_s)
    message = str(raised.value)
    assert str(path) in message and "\n" not in message


def test_broken_video_keeps_stderr_quiet(tmp_path, grey_ramp, capfd):
    files = _broken_files(tmp_path, grey_ramp[0])
    capfd.readouterr()
    for kind in ("random_bytes", "truncated", "not_a_video", "truncated_faststart"):
        with pytest.raises(VideoError):
            decode_frames(files[kind], 8)
    assert capfd.readouterr().err == ""


def test_corrupted_videos_never_crash_the_process(tmp_path, grey_ramp):
    """40 randomly damaged copies (truncated, overwritten, cut-out bytes), decoded in a fresh interpreter: it must
    exit normally, every file giving either frames of the right shape or a VideoError."""
    rng = np.random.default_rng(1)
    sources = [grey_ramp[0].read_bytes(), grey_ramp[1].read_bytes()]
    paths = []
    for k in range(40):
        data = bytearray(sources[k % 2])
        if k % 3 == 0:
            data = data[: int(rng.integers(16, len(data)))]
        elif k % 3 == 1:
            for position in rng.integers(0, len(data), int(rng.integers(1, 60))):
                data[int(position)] = int(rng.integers(0, 256))
        else:
            start = int(rng.integers(0, len(data)))
            del data[start : start + int(rng.integers(1, 400))]
        path = tmp_path / f"damaged{k}.mp4"
        path.write_bytes(bytes(data))
        paths.append(str(path))
    script = textwrap.dedent(
        """
        import json, sys
        from adatp.video import VideoError, decode_frames
        outcomes = []
        for path in json.loads(sys.argv[1]):
            try:
                frames = decode_frames(path, 8)
                outcomes.append("frames" if tuple(frames.shape[::3]) == (8, 3) else "bad shape")
            except VideoError:
                outcomes.append("VideoError")
        print(json.dumps(outcomes))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(paths)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcomes = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(outcomes) == 40 and set(outcomes) <= {"frames", "VideoError"}
    assert outcomes.count("VideoError") >= 10  # most damage is caught, not decoded into garbage silently


def test_child_decoder_timeout_and_crash_become_video_errors(grey_ramp, monkeypatch):
    with pytest.raises(VideoError, match="timed out"):
        decode_frames(grey_ramp[0], 8, timeout_s=0.001)
    monkeypatch.setattr(video, "_CHILD_SOURCE", "import os; os.abort()")
    with pytest.raises(VideoError, match=r"crashed \(signal 6\)"):
        decode_frames(grey_ramp[0], 8, timeout_s=60)


# --- preprocess_frames --------------------------------------------------------------------------------------------


def test_preprocess_shape_dtype_range():
    frames = torch.randint(0, 256, (5, HEIGHT, WIDTH, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels = preprocess_frames(frames)
    assert pixels.dtype == torch.float32 and pixels.shape == (5, 3, 384, 384)
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0
    assert preprocess_frames(frames.numpy(), size=(32, 24)).shape == (5, 3, 32, 24)


def test_constant_frame_normalises_exactly():
    colour = torch.tensor([10, 128, 250], dtype=torch.uint8)
    frames = colour.expand(2, HEIGHT, WIDTH, 3).contiguous()
    expected = (colour.double() / 255 - 0.5) / 0.5
    pixels = preprocess_frames(frames)  # resize keeps a flat frame flat, to the uint8 level
    assert torch.allclose(pixels.double(), expected.view(1, 3, 1, 1).expand_as(pixels), rtol=0, atol=1e-6)
    clip_mean, clip_std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    pixels = preprocess_frames(frames, mean=clip_mean, std=clip_std)
    expected = (colour.double() / 255 - torch.tensor(clip_mean, dtype=torch.double)) / torch.tensor(clip_std).double()
    assert torch.allclose(pixels.double(), expected.view(1, 3, 1, 1).expand_as(pixels), rtol=0, atol=1e-5)


def test_channel_order_and_grey_input():
    red = torch.zeros(1, 16, 16, 3, dtype=torch.uint8)
    red[..., 0] = 255
    pixels = preprocess_frames(red, size=(8, 8))
    assert torch.all(pixels[:, 0] == 1.0) and torch.all(pixels[:, 1:] == -1.0)
    grey = torch.randint(0, 256, (2, 20, 30, 1), dtype=torch.uint8)
    assert torch.equal(preprocess_frames(grey, size=(10, 12)), preprocess_frames(grey.expand(-1, -1, -1, 3), (10, 12)))


def _uint8_resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """preprocess_frames' resized uint8 values: mean 0, std 1, no rescale leaves them as they are."""
    pixels = preprocess_frames(torch.from_numpy(frames), size, mean=(0, 0, 0), std=(1, 1, 1), rescale_factor=1.0)
    assert torch.equal(pixels, pixels.round())
    return pixels.permute(0, 2, 3, 1).numpy().astype(np.int64)


def _smooth_frames(rng, count, height, width):
    y, x = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([127 + 100 * np.sin(x / 17 + c + k) * np.cos(y / 23 - c) for c in range(3)], -1)
        + rng.normal(0, 20, (height, width, 3))
        for k in range(count)
    ]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "name, shape, size",
    [
        ("random 2x upsample", (3, 32, 32), (64, 64)),
        ("random 2x downsample", (3, 64, 64), (32, 32)),
        ("random 480x640 to 384", (2, 480, 640), (384, 384)),
        ("smooth 360x640 to 384", (2, 360, 640), (384, 384)),
    ],
)
def test_resize_matches_pil_bicubic_within_one_level(name, shape, size):
    """On CPU the uint8 resize is torch's PIL-compatible antialiased bicubic kernel: measured max 1 level off
    PIL's Image.resize(BICUBIC), on <0.4% of values (see preprocess_frames' docstring)."""
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    count, height, width = shape
    if name.startswith("random"):
        frames = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    else:
        frames = _smooth_frames(rng, count, height, width)
    ours = _uint8_resize(frames, size)
    pil = np.stack([np.asarray(image.fromarray(f).resize(size[::-1], image.BICUBIC)) for f in frames]).astype(np.int64)
    difference = np.abs(ours - pil)
    assert difference.max() <= 1, name
    assert (difference > 0).mean() < 0.01, name


def test_same_size_is_not_resized():
    frames = torch.randint(0, 256, (2, 24, 24, 3), dtype=torch.uint8)
    pixels = preprocess_frames(frames, size=(24, 24), mean=(0, 0, 0), std=(1, 1, 1), rescale_factor=1.0)
    assert torch.equal(pixels, frames.permute(0, 3, 1, 2).float())


@pytest.mark.parametrize(
    "frames, kwargs",
    [
        (torch.zeros(2, 8, 8, 3), {}),  # float input
        (torch.zeros(2, 8, 8, 4, dtype=torch.uint8), {}),  # RGBA
        (torch.zeros(8, 8, 3, dtype=torch.uint8), {}),  # one frame without the F axis
        (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), {"resample": "lanczos"}),
    ],
)
def test_preprocess_rejects_what_it_does_not_reproduce(frames, kwargs):
    with pytest.raises(ValueError):
        preprocess_frames(frames, **kwargs)


# --- preprocess_config_from ---------------------------------------------------------------------------------------

HUB_VIDEO_CONFIG = {  # llava-hf/llava-onevision-qwen2-0.5b-ov-hf video_preprocessor_config.json, abridged
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "LlavaOnevisionProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 384, "width": 384},
    "video_processor_type": "LlavaOnevisionVideoProcessor",
}


def test_config_from_video_preprocessor_json(tmp_path):
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(HUB_VIDEO_CONFIG))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 7, "width": 7}}))
    config = preprocess_config_from(tmp_path)
    assert config == {
        "size": (384, 384),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "resample": "bicubic",
        "rescale_factor": 1 / 255,
    }
    frames = torch.full((1, 10, 10, 3), 255, dtype=torch.uint8)
    assert torch.all(preprocess_frames(frames, **config) == 1.0)


def test_config_lookup_order_and_class_defaults(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 32, "width": 32}}))
    config = preprocess_config_from(tmp_path)
    # Keys the file leaves out take LlavaOnevisionVideoProcessor's class defaults (CLIP mean/std), as transformers.
    assert config["size"] == (32, 32) and config["mean"] == (0.48145466, 0.4578275, 0.40821073)
    nested = {"video_processor": {**HUB_VIDEO_CONFIG, "size": {"height": 64, "width": 48}}, "processor_class": "x"}
    (tmp_path / "processor_config.json").write_text(json.dumps(nested))
    assert preprocess_config_from(tmp_path)["size"] == (64, 48)


def test_config_defaults_without_files(tmp_path):
    assert preprocess_config_from(tmp_path) == {
        "size": (384, 384),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "resample": "bicubic",
        "rescale_factor": 1 / 255,
    }
    with pytest.raises(FileNotFoundError):
        preprocess_config_from(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "override, key",
    [
        ({"do_center_crop": True}, "do_center_crop"),
        ({"do_normalize": False}, "do_normalize"),
        ({"size": {"shortest_edge": 384}}, "size"),
        ({"resample": 1}, "resample"),
    ],
)
def test_config_refuses_settings_it_cannot_reproduce(tmp_path, override, key):
    path = tmp_path / "video_preprocessor_config.json"
    path.write_text(json.dumps({**HUB_VIDEO_CONFIG, **override}))
    with pytest.raises(ValueError, match=f"{path}: {key}="):
        preprocess_config_from(tmp_path)


def test_config_unreadable_json(tmp_path):
    (tmp_path / "video_preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON file"):
        preprocess_config_from(tmp_path)
