"""adatp.video for Qwen2.5-VL / Qwen3-VL: pixels and grid as transformers' video processors, their config files,
Qwen3-VL's timestamps, a video's fps and length.

transformers' Qwen video processors need torchvision, which is not installed here. The references are what runs
without it: the PIL Qwen2-VL *image* processor (same smart_resize, rescale, normalise and patch order; an image is a
video of two identical frames), transformers' own ``smart_resize`` / ``patchify`` / ``_calculate_timestamps`` code
(the two video modules cannot be imported without torchvision, so those functions are compiled from the installed
source files), and numbers worked out by hand.
"""

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from adatp.video import (
    VideoError,
    frame_indices,
    preprocess_frames,
    qwen3_timestamp_text,
    qwen3_timestamps,
    qwen_preprocess_config_from,
    qwen_video_grid,
    qwen_video_pixels,
    video_fps_and_length,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
QWEN3 = {"patch_size": 16, "min_pixels": 4096, "max_pixels": 25165824, "video_processor": "qwen3_vl"}
RAW = {"mean": 0.0, "std": 1.0, "rescale_factor": 1.0}  # pixel values = the uint8 values, as floats


def transformers_function(relative: str, name: str, owner: str | None = None):
    """A function (or a method that never uses ``self``) from the installed transformers' source file."""
    path = Path(transformers.__file__).parent / relative
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body = tree.body if owner is None else next(n.body for n in tree.body if getattr(n, "name", None) == owner)
    node = next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace = {"math": math, "np": np, "torch": torch}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


def smooth_image(rng, height, width):
    """Sinusoids plus noise: closer to a video frame than uniform noise, still not flat."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [127 + 100 * np.sin(x / 17 + c) * np.cos(y / 23 - c) for c in range(3)]
    return np.clip(np.stack(channels, -1) + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)


# --- (a) against transformers' PIL image processor ----------------------------------------------------------------


def pil_processor(min_pixels=3136, max_pixels=12845056):
    pil_module = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    return pil_module.Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


def against_pil(image: np.ndarray, max_pixels=12845056):
    from PIL import Image

    reference = pil_processor(max_pixels=max_pixels)(Image.fromarray(image), return_tensors="pt")
    pixels, grid = qwen_video_pixels(torch.from_numpy(np.stack([image, image])), max_pixels=max_pixels)
    assert pixels.dtype == torch.float32 and grid.dtype == torch.long
    assert torch.equal(grid, reference["image_grid_thw"].long())
    assert pixels.shape == reference["pixel_values"].shape
    return (pixels - reference["pixel_values"]).abs()


@pytest.mark.parametrize("height, width", [(56, 84), (112, 224), (308, 504), (476, 644)])
def test_no_resize_equals_pil_image_processor(height, width):
    """Sizes already multiples of 28 within the bounds: no resize on either side; only float rounding differs
    (measured max 2.4e-7)."""
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert against_pil(image).max() <= 1e-6


@pytest.mark.parametrize(
    "height, width, max_pixels, grid",
    [
        (300, 500, 12845056, (22, 36)),  # both axes grow: 308x504
        (1080, 1920, 12845056, (78, 138)),  # both grow: 1092x1932
        (480, 640, 100352, (18, 26)),  # both shrink to fit max_pixels: 252x364
        (720, 1280, 200704, (24, 42)),  # both shrink: 336x588
    ],
)
def test_resized_within_two_levels_of_pil(height, width, max_pixels, grid):
    """torch's antialiased uint8 bicubic (what torchvision runs on CPU, so what the processor computes) against
    PIL's: at most 2 uint8 levels apart (2/255/std < 0.031 after normalising), on under 1% of values."""
    image = smooth_image(np.random.default_rng(0), height, width)
    difference = against_pil(image, max_pixels)
    assert qwen_video_grid(2, height, width, max_pixels=max_pixels)[1:] == grid
    assert difference.max() <= 2.01 / 255 / min(CLIP_STD)
    assert (difference > 1e-4).float().mean() < 0.01


def test_resize_growing_one_axis_and_shrinking_the_other_differs_more_from_pil():
    """480x640 -> 476x644 (rows shrink, columns grow): both libraries resize in two separable uint8 passes, clamping
    to [0, 255] in between, but Pillow 13 runs the vertical pass first here and torch the horizontal one, so bicubic
    overshoot is clipped at different points: measured up to 9 uint8 levels on these frames (23 on uniform noise),
    on ~25% of values, mean 0.0037 after normalising. Resizing with PIL in torch's order (columns, then rows) comes
    back within 2 levels. The processor resizes with torch (torchvision's uint8 path), as we do."""
    from PIL import Image

    image = smooth_image(np.random.default_rng(0), 480, 640)
    difference = against_pil(image)
    levels = difference * torch.tensor(CLIP_STD).repeat_interleave(2 * 14 * 14) * 255
    assert levels.max() <= 10 and difference.mean() < 0.006

    ours = preprocess_frames(torch.from_numpy(image[None]), (476, 644), mean=0, std=1, rescale_factor=1.0)
    ours = ours[0].permute(1, 2, 0).numpy().astype(int)
    columns_first = Image.fromarray(image).resize((644, 480), Image.BICUBIC).resize((644, 476), Image.BICUBIC)
    assert np.abs(ours - np.asarray(columns_first).astype(int)).max() <= 2


# --- (b) grid and shape -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames, height, width, settings, grid",
    [
        # Qwen2.5-VL, factor 28, per frame in [3136, 12845056]; T = ceil(F / 2).
        (1, 480, 640, {}, (1, 34, 46)),  # round(480/28) = 17 -> 476, round(640/28) = 23 -> 644
        (3, 480, 640, {}, (2, 34, 46)),
        (5, 1080, 1920, {}, (3, 78, 138)),  # 39 * 28 = 1092, 69 * 28 = 1932
        (7, 100, 100, {}, (4, 8, 8)),  # round(3.57) = 4 -> 112
        (3, 70, 126, {}, (2, 4, 8)),  # 70/28 = 2.5 and 126/28 = 4.5 round half to even: 56 x 112
        (1, 20, 30, {}, (1, 4, 6)),  # 28x28 < 3136: beta = sqrt(3136/600) = 2.286 -> ceil: 56 x 84
        (3, 480, 640, {"max_pixels": 100352}, (2, 18, 26)),  # beta = 1.7496: floor(9.80) * 28, floor(13.06) * 28
        # cap_pixels_per_frame: max = max(min(12845056, int(2000*28*28*0.9) * 2 // 32), 3292) = 88200,
        # beta = sqrt(2073600/88200) = 4.8487: floor(7.95) * 28 = 196, floor(14.14) * 28 = 392
        (32, 1080, 1920, {"cap_pixels_per_frame": True, "max_video_tokens": 2000}, (16, 14, 28)),
        # Qwen3-VL, factor 32, t * h * w in [4096, 25165824] with t = F rounded to even
        (32, 480, 640, QWEN3, (16, 30, 40)),  # 32 * 480 * 640 = 9.8M: fits
        (5, 480, 640, QWEN3, (3, 30, 40)),  # t = round(2.5) * 2 = 4
        (2, 1080, 1920, QWEN3, (1, 68, 120)),  # 2 * 1088 * 1920 = 4.2M: fits
        # 32 * 1088 * 1920 = 66.8M > 25165824: beta = sqrt(32*1080*1920/25165824) = 1.6238,
        # floor(1080/1.6238/32 = 20.78) * 32 = 640, floor(1920/1.6238/32 = 36.95) * 32 = 1152
        (32, 1080, 1920, QWEN3, (16, 40, 72)),
        (8, 1080, 1920, QWEN3, (4, 68, 120)),
        # capped: per frame min(768 * 32 * 32, 25165824 // 8) = 786432, so 8 frames get 6291456: the same 640x1152
        (8, 1080, 1920, {**QWEN3, "cap_pixels_per_frame": True}, (4, 40, 72)),
        (2, 20, 30, QWEN3, (1, 2, 4)),  # under 32: scaled by 1.6 to 32x48 first, then round(1.5) = 2 -> 64
    ],
)
def test_grid_and_shapes_by_hand(frames, height, width, settings, grid):
    video = torch.zeros(frames, height, width, 3, dtype=torch.uint8)
    pixels, grid_thw = qwen_video_pixels(video, **settings)
    patch = settings.get("patch_size", 14)
    assert grid_thw.tolist() == [list(grid)] and grid_thw.dtype == torch.long
    assert pixels.shape == (math.prod(grid), 3 * 2 * patch * patch) and pixels.dtype == torch.float32
    assert qwen_video_grid(frames, height, width, **settings) == grid


def test_grid_matches_transformers_smart_resize():
    """Our target sizes against transformers' own smart_resize functions over a sweep of sizes and frame counts."""
    qwen2 = transformers_function("models/qwen2_vl/image_processing_pil_qwen2_vl.py", "smart_resize")
    qwen3 = transformers_function("models/qwen3_vl/video_processing_qwen3_vl.py", "smart_resize")
    rng = np.random.default_rng(0)
    for _ in range(300):
        frames, height, width = int(rng.integers(2, 80)), int(rng.integers(10, 2200)), int(rng.integers(10, 2200))
        if max(height, width) / min(height, width) > 200:
            continue
        h, w = qwen2(height, width, factor=28, min_pixels=3136, max_pixels=12845056)
        assert qwen_video_grid(frames, height, width) == (-(-frames // 2), h // 14, w // 14)
        h, w = qwen3(frames, height, width, temporal_factor=2, factor=32, min_pixels=4096, max_pixels=25165824)
        assert qwen_video_grid(frames, height, width, **QWEN3) == (-(-frames // 2), h // 16, w // 16)


def test_grid_is_the_same_for_every_settings_dict_key(tmp_path):
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(QWEN3_VIDEO_CONFIG))
    settings = qwen_preprocess_config_from(tmp_path)
    assert qwen_video_grid(32, 1080, 1920, **settings) == (16, 40, 72)
    with pytest.raises(TypeError):
        qwen_video_grid(32, 1080, 1920, colour="red")


# --- (c) patch order, temporal grouping, padding ------------------------------------------------------------------


def level(frame: int, channel: int) -> int:
    return 10 + 20 * frame + 5 * channel


def test_temporal_groups_take_consecutive_frames_in_order_and_pad_with_the_last():
    frames = torch.stack(
        [torch.tensor([level(f, c) for c in range(3)], dtype=torch.uint8).expand(56, 84, 3) for f in range(5)]
    )
    pixels, grid = qwen_video_pixels(frames, **RAW)
    assert grid.tolist() == [[3, 4, 6]]
    # columns (channel, temporal slot, 14 x 14 pixels); rows: 24 patches per group
    values = pixels.view(3, 24, 3, 2, 14 * 14)
    for t in range(3):
        for slot in range(2):
            frame = min(2 * t + slot, 4)  # the 6th frame is frame 4 repeated
            for c in range(3):
                assert torch.all(values[t, :, c, slot] == level(frame, c)), (t, slot, c)


def test_spatial_rows_come_in_merge_blocks():
    """A 4x6-patch frame whose patch (y, x) holds y * 6 + x: rows go block by block (2x2 patches merged into one
    token), row-major inside each block."""
    patch_id = torch.arange(24, dtype=torch.uint8).view(4, 6)
    frame = patch_id.repeat_interleave(14, 0).repeat_interleave(14, 1)  # 56 x 84
    frames = frame[None, :, :, None].expand(2, -1, -1, 3).contiguous()
    pixels, _ = qwen_video_pixels(frames, **RAW)
    expected = [
        (2 * by + my) * 6 + 2 * bx + mx for by in range(2) for bx in range(3) for my in range(2) for mx in range(2)
    ]
    assert pixels[:, 0].tolist() == expected
    assert torch.all(pixels == pixels[:, :1])  # each row: one patch of one value, all channels, both frames


@pytest.mark.parametrize("num_frames", [2, 5])
def test_equals_transformers_patchify_of_normalised_frames(num_frames):
    """Pixel for pixel what transformers' video patchify gives for the frames rescaled and normalised as its fused
    rescale_and_normalize does (no resize: 84x112 is a multiple of 28)."""
    patchify = transformers_function(
        "models/qwen2_vl/video_processing_qwen2_vl.py", "patchify", "Qwen2VLVideoProcessor"
    )
    frames = torch.randint(
        0, 256, (num_frames, 84, 112, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    mean = torch.tensor(CLIP_MEAN) * (1.0 / (1 / 255))
    std = torch.tensor(CLIP_STD) * (1.0 / (1 / 255))
    normalised = (frames.permute(0, 3, 1, 2).float() - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
    expected, grid_t, grid_h, grid_w = patchify(
        None, normalised[None], patch_size=14, merge_size=2, temporal_patch_size=2
    )
    pixels, grid = qwen_video_pixels(frames)
    assert grid.tolist() == [[grid_t, grid_h, grid_w]]
    assert torch.equal(pixels, expected[0])


def test_constant_frames_normalise_exactly_and_grey_is_rgb():
    colour = torch.tensor([10, 128, 250], dtype=torch.uint8)
    pixels, _ = qwen_video_pixels(colour.expand(2, 100, 150, 3).contiguous())  # resized: 112 x 140
    expected = (colour.double() / 255 - torch.tensor(CLIP_MEAN).double()) / torch.tensor(CLIP_STD).double()
    assert torch.allclose(pixels.view(-1, 3, 2 * 196).double(), expected.view(1, 3, 1), rtol=0, atol=1e-5)
    grey = torch.randint(0, 256, (3, 60, 90, 1), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(qwen_video_pixels(grey)[0], qwen_video_pixels(grey.expand(-1, -1, -1, 3))[0])
    assert torch.equal(qwen_video_pixels(grey.numpy())[0], qwen_video_pixels(grey)[0])


@pytest.mark.parametrize(
    "frames, settings",
    [
        (torch.zeros(2, 56, 56, 3), {}),  # float frames
        (torch.zeros(2, 56, 56, 4, dtype=torch.uint8), {}),  # RGBA
        (torch.zeros(56, 56, 3, dtype=torch.uint8), {}),  # no frame axis
        (torch.zeros(2, 56, 56, 3, dtype=torch.uint8), {"resample": "lanczos"}),
        (torch.zeros(2, 56, 56, 3, dtype=torch.uint8), {"video_processor": "llava"}),
        (torch.zeros(2, 56, 56, 3, dtype=torch.uint8), {"patch_size": 0}),
        (torch.zeros(2, 56, 56, 3, dtype=torch.uint8), {"resize_factor": 42}),  # not a multiple of 28
        (torch.zeros(2, 56, 56, 3, dtype=torch.uint8), {"mean": (0.5, 0.5)}),
        (torch.zeros(1, 64, 64, 3, dtype=torch.uint8), QWEN3),  # Qwen3-VL refuses fewer frames than 2
        (torch.zeros(2, 1, 300, 3, dtype=torch.uint8), {}),  # aspect ratio over 200
    ],
)
def test_rejects_what_it_cannot_reproduce(frames, settings):
    with pytest.raises(ValueError):
        qwen_video_pixels(frames, **settings)


def test_resize_factor_is_a_coarser_grid():
    pixels, grid = qwen_video_pixels(torch.zeros(2, 480, 640, 3, dtype=torch.uint8), resize_factor=56)
    assert grid.tolist() == [[1, 36, 44]]  # round(480/56 = 8.57) * 56 = 504, round(640/56 = 11.43) * 56 = 616
    assert pixels.shape == (36 * 44, 1176)


# --- (d) Qwen3-VL timestamps --------------------------------------------------------------------------------------


def test_timestamps_by_hand():
    # [0, 15, 30, 45, 60] at 30 fps, padded with 60: 0, .5, 1, 1.5, 2, 2 s; group means of first and last frame
    indices = [0, 15, 30, 45, 60]
    assert qwen3_timestamps(indices, 30.0) == [0.25, 1.25, 2.0]
    assert indices == [0, 15, 30, 45, 60]  # the caller's list is left alone (the processor extends its own)
    assert [qwen3_timestamp_text(s) for s in (0.25, 1.25, 2.0)] == ["<0.2 seconds>", "<1.2 seconds>", "<2.0 seconds>"]
    assert qwen3_timestamp_text(1.5) == "<1.5 seconds>" and qwen3_timestamp_text(12.96) == "<13.0 seconds>"
    # groups of 3: first and last of each group only, (0 + 2) / 2 and (3 + 3) / 2 frames at 2 fps
    assert qwen3_timestamps([0, 1, 2, 3], 2.0, temporal_patch_size=3) == [0.5, 1.5]
    assert qwen3_timestamps(np.array([0, 24]), 24) == [0.5]
    assert qwen3_timestamps([], 24.0) == []


def test_timestamps_equal_the_processors():
    calculate = transformers_function(
        "models/qwen3_vl/processing_qwen3_vl.py", "_calculate_timestamps", "Qwen3VLProcessor"
    )
    for total, count, fps in [(1000, 32, 29.97), (301, 32, 25.0), (40, 7, 10.0), (9000, 64, 30000 / 1001)]:
        indices = frame_indices(total, count)
        assert qwen3_timestamps(indices, fps) == calculate(None, list(indices), fps, 2)
        text = "".join(qwen3_timestamp_text(s) for s in qwen3_timestamps(indices, fps))
        assert text == "".join(f"<{s:.1f} seconds>" for s in calculate(None, list(indices), fps, 2))


@pytest.mark.parametrize("fps, temporal", [(0.0, 2), (-1.0, 2), (float("nan"), 2), (30.0, 0)])
def test_timestamps_reject_bad_arguments(fps, temporal):
    with pytest.raises(ValueError):
        qwen3_timestamps([0, 1], fps, temporal)


# --- (e) config files ---------------------------------------------------------------------------------------------

QWEN25_CONFIG = {  # Qwen/Qwen2.5-VL-7B-Instruct preprocessor_config.json (it has no video_preprocessor_config.json)
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": list(CLIP_MEAN),
    "image_std": list(CLIP_STD),
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}
QWEN3_VIDEO_CONFIG = {  # Qwen/Qwen3-VL-8B-Instruct video_preprocessor_config.json
    "size": {"longest_edge": 25165824, "shortest_edge": 4096},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor",
    "video_processor_type": "Qwen3VLVideoProcessor",
}
QWEN3_IMAGE_CONFIG = {  # and its preprocessor_config.json (images)
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_center_crop": None,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "image_processor_type": "Qwen2VLImageProcessorFast",
}


def write(directory: Path, name: str, content) -> Path:
    path = directory / name
    path.write_text(json.dumps(content) if not isinstance(content, str) else content, encoding="utf-8")
    return path


def test_config_qwen25(tmp_path):
    write(tmp_path, "preprocessor_config.json", QWEN25_CONFIG)
    write(tmp_path, "config.json", {"model_type": "qwen2_5_vl"})
    config = qwen_preprocess_config_from(tmp_path)
    assert config == {
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
        "resample": "bicubic",
        "rescale_factor": 1 / 255,
        "video_processor": "qwen2_vl",
        "cap_pixels_per_frame": False,
        "max_video_tokens": 128000,
    }
    video = torch.zeros(4, 480, 640, 3, dtype=torch.uint8)
    (pixels, grid), (default_pixels, default_grid) = qwen_video_pixels(video, **config), qwen_video_pixels(video)
    assert torch.equal(pixels, default_pixels) and torch.equal(grid, default_grid)


def test_config_qwen3_prefers_the_video_file(tmp_path):
    write(tmp_path, "preprocessor_config.json", QWEN3_IMAGE_CONFIG)
    write(tmp_path, "video_preprocessor_config.json", QWEN3_VIDEO_CONFIG)
    config = qwen_preprocess_config_from(tmp_path)
    assert config["video_processor"] == "qwen3_vl" and config["patch_size"] == 16
    assert (config["min_pixels"], config["max_pixels"]) == (4096, 25165824)
    assert config["mean"] == config["std"] == (0.5, 0.5, 0.5) and config["max_video_tokens"] == 768
    _, grid = qwen_video_pixels(torch.zeros(32, 1080, 1920, 3, dtype=torch.uint8), **config)
    assert grid.tolist() == [[16, 40, 72]]


def test_config_qwen3_without_video_file_uses_the_image_file_and_model_type(tmp_path):
    """As AutoVideoProcessor: Qwen2VLImageProcessorFast names no video processor, so config.json's model_type picks
    Qwen3VLVideoProcessor, built from the image settings."""
    write(tmp_path, "preprocessor_config.json", QWEN3_IMAGE_CONFIG)
    write(tmp_path, "config.json", {"model_type": "qwen3_vl"})
    config = qwen_preprocess_config_from(tmp_path)
    assert config["video_processor"] == "qwen3_vl"
    assert (config["min_pixels"], config["max_pixels"]) == (65536, 16777216)


def test_config_class_defaults_for_absent_keys(tmp_path):
    write(tmp_path, "video_preprocessor_config.json", {"video_processor_type": "Qwen3VLVideoProcessor"})
    config = qwen_preprocess_config_from(tmp_path)
    assert (config["patch_size"], config["min_pixels"], config["max_pixels"]) == (16, 131072, 786432)
    assert config["mean"] == (0.5, 0.5, 0.5)
    write(tmp_path, "video_preprocessor_config.json", {"video_processor_type": "Qwen2VLVideoProcessor", "fps": 2})
    config = qwen_preprocess_config_from(tmp_path)
    assert (config["patch_size"], config["min_pixels"], config["max_pixels"]) == (14, 100352, 602112)
    assert config["mean"] == CLIP_MEAN and config["resample"] == "bicubic"


def test_config_top_level_pixels_override_size_for_qwen2_only(tmp_path):
    settings = {"size": {"shortest_edge": 1000, "longest_edge": 2000000}, "max_pixels": 500000, "resample": 2}
    write(tmp_path, "video_preprocessor_config.json", {**settings, "video_processor_type": "Qwen2VLVideoProcessor"})
    config = qwen_preprocess_config_from(tmp_path)
    assert (config["min_pixels"], config["max_pixels"], config["resample"]) == (1000, 500000, "bilinear")
    write(tmp_path, "video_preprocessor_config.json", {**settings, "video_processor_type": "Qwen3VLVideoProcessor"})
    assert qwen_preprocess_config_from(tmp_path)["max_pixels"] == 2000000  # Qwen3VLVideoProcessor ignores it
    # {"min_pixels", "max_pixels"} as the size dict, then the top-level keys: Qwen2VLVideoProcessor's BC path
    nested = {"size": {"min_pixels": 1, "max_pixels": 2}, "min_pixels": 3136, "max_pixels": 4000000}
    write(tmp_path, "video_preprocessor_config.json", nested)
    assert qwen_preprocess_config_from(tmp_path)["max_pixels"] == 4000000


def test_config_lookup_order_and_no_files(tmp_path):
    write(tmp_path, "config.json", {"model_type": "qwen3_vl"})
    config = qwen_preprocess_config_from(tmp_path)  # no processor file: the published Qwen3-VL settings
    assert (config["video_processor"], config["min_pixels"], config["max_pixels"]) == ("qwen3_vl", 4096, 25165824)
    write(tmp_path, "preprocessor_config.json", {**QWEN25_CONFIG, "max_pixels": 1})
    write(tmp_path, "video_preprocessor_config.json", {**QWEN25_CONFIG, "max_pixels": 2})
    assert qwen_preprocess_config_from(tmp_path)["max_pixels"] == 2
    write(tmp_path, "processor_config.json", {"video_processor": {**QWEN25_CONFIG, "max_pixels": 3}})
    assert qwen_preprocess_config_from(tmp_path)["max_pixels"] == 3
    with pytest.raises(FileNotFoundError):
        qwen_preprocess_config_from(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "override, field",
    [
        ({"size": "big"}, "size"),
        ({"size": {"height": 384, "width": 384}}, "size"),
        ({"min_pixels": "3136"}, "min_pixels"),
        ({"max_pixels": -5}, "max_pixels"),
        ({"patch_size": 0}, "patch_size"),
        ({"merge_size": 2.5}, "merge_size"),
        ({"temporal_patch_size": True}, "temporal_patch_size"),
        ({"image_mean": [0.5, 0.5]}, "image_mean"),
        ({"image_std": [0.5, 0.0, 0.5]}, "image_std"),
        ({"resample": 1}, "resample"),
        ({"rescale_factor": -1}, "rescale_factor"),
        ({"do_normalize": False}, "do_normalize"),
        ({"do_resize": False}, "do_resize"),
        ({"cap_pixels_per_frame": "yes"}, "cap_pixels_per_frame"),
        ({"video_processor_type": "LlavaOnevisionVideoProcessor"}, "video_processor_type"),
    ],
)
def test_config_malformed_value_names_file_and_field(tmp_path, override, field):
    path = write(tmp_path, "preprocessor_config.json", {**QWEN25_CONFIG, **override})
    with pytest.raises(ValueError) as raised:
        qwen_preprocess_config_from(tmp_path)
    message = str(raised.value)
    assert str(path) in message and f"{field}=" in message and "\n" not in message


def test_config_unreadable_json(tmp_path):
    path = write(tmp_path, "video_preprocessor_config.json", "{not json")
    with pytest.raises(ValueError, match="not a readable JSON file") as raised:
        qwen_preprocess_config_from(tmp_path)
    assert str(path) in str(raised.value)


# --- (f) fps and length -------------------------------------------------------------------------------------------


def write_mp4(path: Path, frames: int, rate) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(frames):
            pixels = np.full((48, 64, 3), 10 + 6 * index, np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("frames, rate, fps", [(12, 10, 10.0), (37, 25, 25.0)])
def test_fps_and_length_of_a_written_mp4(tmp_path, frames, rate, fps):
    pytest.importorskip("decord")
    path = tmp_path / "clip.mp4"
    write_mp4(path, frames, rate)
    assert video_fps_and_length(path) == (fps, frames)
    assert video_fps_and_length(str(path), timeout_s=60) == (fps, frames)


def test_fps_and_length_errors_are_one_line_video_errors(tmp_path):
    pytest.importorskip("decord")
    good = tmp_path / "good.mp4"
    write_mp4(good, 20, 10)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    random = tmp_path / "random.mp4"
    random.write_bytes(np.random.default_rng(0).bytes(4000))
    text = write(tmp_path, "notes.mp4", "just text\n" * 40)
    empty = write(tmp_path, "empty.mp4", "")
    for path in (tmp_path / "missing.mp4", empty, text, random, truncated):
        for timeout_s in (None, 60):
            with pytest.raises(VideoError) as raised:
                video_fps_and_length(path, timeout_s=timeout_s)
            assert str(path) in str(raised.value) and "\n" not in str(raised.value)
