"""Video decoding and LLaVA-OneVision pixel preprocessing, torch-only.

The one place in the project that turns a video file into ``pixel_values_videos``:

- :func:`frame_indices`: which frames to read (lmms-eval's uniform sampling).
- :func:`decode_frames`: read them with decord; every failure is a :class:`VideoError`.
- :func:`preprocess_frames`: what transformers' ``LlavaOnevisionVideoProcessor`` computes, without torchvision
  (which has no CPU build here), as one batched tensor pipeline.
- :func:`preprocess_config_from`: the processor settings saved next to a model.
- :func:`qwen_video_pixels`: what transformers' ``Qwen2VLVideoProcessor`` (Qwen2-VL, Qwen2.5-VL) and
  ``Qwen3VLVideoProcessor`` (Qwen3-VL) compute: ``pixel_values_videos`` and ``video_grid_thw``, torch-only.
- :func:`qwen_preprocess_config_from`: their settings saved next to a model; :func:`qwen_video_grid`: the grid alone.
- :func:`qwen3_timestamps`, :func:`qwen3_timestamp_text`: the ``<t seconds>`` text ``Qwen3VLProcessor`` puts before
  each temporal group; :func:`video_fps_and_length`: the frame rate and frame count they are computed from.

decord and PyAV are imported inside the functions that use them: ``adatp`` imports with torch + transformers only.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "VideoError",
    "decode_frames",
    "frame_indices",
    "preprocess_config_from",
    "preprocess_frames",
    "qwen3_timestamp_text",
    "qwen3_timestamps",
    "qwen_preprocess_config_from",
    "qwen_video_grid",
    "qwen_video_pixels",
    "video_fps_and_length",
]

# LLaVA-OneVision's published video_preprocessor_config.json (llava-hf/llava-onevision-qwen2-*-ov-hf).
DEFAULT_SIZE = (384, 384)
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
DEFAULT_RESCALE_FACTOR = 1 / 255

# LlavaOnevisionVideoProcessor's class attributes: what transformers uses for a key that a config file leaves out.
_CLASS_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OPENAI_CLIP_MEAN
_CLASS_STD = (0.26862954, 0.26130258, 0.27577711)  # OPENAI_CLIP_STD

# PIL resampling codes, as stored in *preprocessor_config.json ("resample": 3).
_RESAMPLE_NAMES = {2: "bilinear", 3: "bicubic"}


class VideoError(Exception):
    """A video that cannot be read: missing, corrupt, truncated, without frames, or a decoder that died."""


def frame_indices(total: int, num_frames: int) -> list[int]:
    """Indices of ``num_frames`` frames spread uniformly over a video of ``total`` frames.

    ``numpy.linspace(0, total - 1, num_frames, dtype=int)``: the float positions are *truncated* toward zero, exactly
    as lmms-eval's ``llava_onevision.load_video`` (and LLaVA-NeXT's own video loader) do. When ``num_frames > total``
    indices repeat, as there.
    """
    if total < 1:
        raise ValueError(f"total must be >= 1 frame, got {total}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return np.linspace(0, total - 1, num_frames, dtype=int).tolist()


def decode_frames(path: str | os.PathLike, num_frames: int, *, timeout_s: float | None = None) -> torch.Tensor:
    """Decode ``num_frames`` uniformly sampled frames (:func:`frame_indices`) as RGB ``uint8 [F, H, W, 3]``.

    decord (``VideoReader(path, ctx=cpu(0), num_threads=1)`` and ``get_batch``) does the decoding, as in lmms-eval.
    The container is first opened with PyAV (header only, ~1 ms): files that are not videos, have no video stream or
    no frames fail there with a clean message instead of decord's console output.

    Every failure raises :class:`VideoError` with a one-line reason naming the file. decord is native code and is known
    to hang or crash on some broken files (dmlc/decord#269, #373); with ``timeout_s`` set, decoding runs in a child
    process that is killed after that many seconds, so neither a hang nor a crash can take this process down
    (costs ~0.1 s of interpreter start per video). The frames are identical either way.
    """
    path = Path(path)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not path.is_file():
        raise VideoError(f"{path}: video file not found")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file")
    _probe_container(path)
    if timeout_s is None:
        frames = _decode_in_process(path, num_frames)
    else:
        frames = _decode_in_child(path, num_frames, timeout_s)
    if frames.ndim != 4 or frames.shape[0] != num_frames or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VideoError(f"{path}: decoder returned {frames.dtype} frames of shape {tuple(frames.shape)}")
    return torch.from_numpy(np.ascontiguousarray(frames))


# decord prefixes its messages with "[12:34:56] /src/file.cc:61: " (once per nested rethrow) and the exception type.
_DECORD_NOISE = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: |decord\._ffi\.base\.DECORDError: |Check failed: ")


def _one_line(error: BaseException) -> str:
    message = getattr(error, "strerror", None) or str(error)
    lines = [_DECORD_NOISE.sub("", line).strip() for line in str(message).splitlines()]
    lines = [line for line in lines if line]
    text = lines[-1] if lines else type(error).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def _probe_container(path: Path) -> None:
    try:
        import av
    except ImportError:  # PyAV is only a guard; decord alone still reports broken files
        return
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            if stream.frames == 0 and not stream.duration and not container.duration:
                raise VideoError(f"{path}: video stream has no frames")
    except av.FFmpegError as error:
        raise VideoError(f"{path}: cannot open container: {_one_line(error)}") from None


def _decode_in_process(path: Path, num_frames: int) -> np.ndarray:
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # ffmpeg's per-packet complaints; the VideoError says what failed
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        total = len(reader)
        if total < 1:
            raise VideoError(f"{path}: video has no frames")
        return reader.get_batch(frame_indices(total, num_frames)).asnumpy()
    except VideoError:
        raise
    except Exception as error:  # decord raises RuntimeError / DECORDError with multi-line C++ traces
        raise VideoError(f"{path}: decode failed: {_one_line(error)}") from None


# Runs in a bare interpreter (numpy + decord only, no torch import): sampling must stay frame_indices'.
_CHILD_SOURCE = """
import sys, numpy as np, decord
path, num_frames, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
decord.logging.set_level(decord.logging.QUIET)
reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
total = len(reader)
if total < 1:
    sys.exit("video has no frames")
np.save(out, reader.get_batch(np.linspace(0, total - 1, num_frames, dtype=int).tolist()).asnumpy())
"""


def _run_child(path: Path, source: str, arguments: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run decoder code in a child process (a hang or a crash in decord cannot take the caller down)."""
    command = [sys.executable, "-c", source, str(path), *arguments]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise VideoError(f"{path}: decoder timed out after {timeout_s:g} s") from None
    if done.returncode < 0:
        raise VideoError(f"{path}: decoder crashed (signal {-done.returncode})")
    return done


def _decode_in_child(path: Path, num_frames: int, timeout_s: float) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="adatp-decode-") as scratch:
        out = Path(scratch) / "frames.npy"
        done = _run_child(path, _CHILD_SOURCE, [str(num_frames), str(out)], timeout_s)
        if done.returncode != 0 or not out.is_file():
            reason = _one_line(RuntimeError(done.stderr)) if done.stderr.strip() else f"exit code {done.returncode}"
            raise VideoError(f"{path}: decode failed: {reason}")
        return np.load(out)


def preprocess_frames(
    frames: torch.Tensor | np.ndarray,
    size: tuple[int, int] = DEFAULT_SIZE,
    mean: tuple[float, ...] = DEFAULT_MEAN,
    std: tuple[float, ...] = DEFAULT_STD,
    resample: str | int = "bicubic",
    rescale_factor: float = DEFAULT_RESCALE_FACTOR,
) -> torch.Tensor:
    """RGB ``uint8 [F, H, W, 3]`` frames -> normalised ``float32 [F, 3, h, w]`` pixel values, on ``frames``' device.

    Reproduces ``LlavaOnevisionVideoProcessor`` (transformers 5.23, ``BaseVideoProcessor._preprocess``), step by step:

    1. ``convert_to_rgb``: a no-op for 3 channels (1 channel is repeated; other channel counts are refused).
    2. channels-first, then ``resize`` to ``size = (height, width)`` (no aspect preservation: the config's
       ``{"height", "width"}`` size ignores ``default_to_square``) with ``tvF.resize(..., antialias=True)`` on the
       *uint8* tensor. torchvision's ``resize_image`` does, and so do we with the same ``F.interpolate`` call:
       on CPU, bicubic (and bilinear on AVX2/AVX512 CPUs) runs natively on uint8 (``align_corners=False``,
       ``antialias=True``; torch's uint8 kernel rounds, clamps to [0, 255] after each separable pass like PIL);
       on other devices it casts to float32, interpolates, clamps to [0, 255], rounds and casts back to uint8.
       Same size in and out: no resize at all.
    3. Fused rescale + normalise: ``(x.float() - mean * 255) / (std * 255)`` with ``mean / std`` built as float32
       tensors times ``1 / rescale_factor``, exactly ``_fuse_mean_std_and_rescale_factor`` + ``tvF.normalize``.

    So, with the same torch build, the output is meant to equal the processor's bit for bit on the same device
    (same ``F.interpolate`` call on the same uint8 tensor, same float32 normalisation ops). The processor resizes
    on CPU unless called with ``device=``: keep ``frames`` on CPU here to match its default (decode_frames returns
    CPU tensors), and move the float32 result to the GPU afterwards.

    What we checked without torchvision (torchvision has no CPU build here; tests/test_video.py, torch 2.13 CPU,
    AVX512): the CPU uint8 resize is within 1 uint8 level of PIL's ``Image.resize(BICUBIC)``, with 0.01-0.4% of
    values differing, on random and smooth frames for 2x up, 2x down, 480x640->384 and 1080x1920->384. PIL is
    also what LLaVA-NeXT's own SigLIP image processor (lmms-eval's llava_onevision path) resizes with, so we are
    within 1 level (2/255 after normalising) of that pipeline too. The non-CPU float path is looser, as it is in
    torchvision: up to 19 levels from PIL on random 2x upsampling, 4 on smooth 360x640->384, 1 on smooth
    1080x1920->384 (it clamps once, after both passes). A constant frame of value c maps to
    ``(c / 255 - mean) / std`` within 1e-6. Bit-equality with torchvision itself is left to a session that has it.
    """
    pixels = torch.as_tensor(frames)
    if pixels.dtype != torch.uint8 or pixels.ndim != 4:
        raise ValueError(f"frames must be uint8 [F, H, W, C], got {pixels.dtype} {tuple(pixels.shape)}")
    if pixels.shape[-1] == 1:
        pixels = pixels.expand(-1, -1, -1, 3)
    elif pixels.shape[-1] != 3:
        raise ValueError(f"frames must have 1 or 3 channels (RGB), got {pixels.shape[-1]}")
    height, width = (int(size[0]), int(size[1]))
    pixels = pixels.permute(0, 3, 1, 2).contiguous()
    if (height, width) != tuple(pixels.shape[-2:]):
        pixels = _resize_uint8(pixels, (height, width), _resample_mode(resample))

    scale = 1.0 / rescale_factor
    mean_scaled = (torch.tensor(mean, device=pixels.device) * scale).view(-1, 1, 1)
    std_scaled = (torch.tensor(std, device=pixels.device) * scale).view(-1, 1, 1)
    return pixels.to(torch.float32).sub_(mean_scaled).div_(std_scaled)


def _resample_mode(resample: str | int) -> str:
    mode = _RESAMPLE_NAMES.get(resample, resample) if isinstance(resample, int) else str(resample).lower()
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"resample must be 'bicubic' or 'bilinear' (PIL codes 3, 2), got {resample!r}")
    return mode


def _resize_uint8(pixels: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    native_uint8 = pixels.device.type == "cpu" and (
        mode == "bicubic" or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    )
    if native_uint8:
        return F.interpolate(pixels, size=size, mode=mode, align_corners=False, antialias=True)
    resized = F.interpolate(pixels.to(torch.float32), size=size, mode=mode, align_corners=False, antialias=True)
    if mode == "bicubic":
        resized = resized.clamp_(0, 255)
    return resized.round_().to(torch.uint8)


def preprocess_config_from(model_dir: str | os.PathLike) -> dict:
    """Video preprocessing settings saved with a local model, as keyword arguments for :func:`preprocess_frames`.

    Looks where transformers does, in its order: ``processor_config.json`` (its nested ``"video_processor"``),
    ``video_preprocessor_config.json``, ``preprocessor_config.json``. A key the file leaves out takes
    ``LlavaOnevisionVideoProcessor``'s class default (CLIP mean/std, 384x384, bicubic, 1/255), as transformers would.
    A directory with none of these files gets LLaVA-OneVision's published settings (mean = std = 0.5, 384x384,
    bicubic, 1/255), the same as :func:`preprocess_frames`' defaults.

    Returns ``{"size": (height, width), "mean": (...), "std": (...), "resample": "bicubic", "rescale_factor": f}``.
    Raises ``ValueError`` naming the file and key for settings that :func:`preprocess_frames` does not reproduce
    (center crop, no resize/rescale/normalise, a shortest-edge size, another resampling filter).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    source, settings = _find_processor_settings(model_dir)
    if settings is None:
        return {
            "size": DEFAULT_SIZE,
            "mean": DEFAULT_MEAN,
            "std": DEFAULT_STD,
            "resample": "bicubic",
            "rescale_factor": DEFAULT_RESCALE_FACTOR,
        }

    def refuse(key: str, why: str) -> ValueError:
        return ValueError(f"{source}: {key}={settings.get(key)!r}: {why}")

    for key in ("do_resize", "do_rescale", "do_normalize"):
        if settings.get(key, True) is False:
            raise refuse(key, "preprocess_frames always resizes, rescales and normalises")
    if settings.get("do_center_crop"):
        raise refuse("do_center_crop", "center crop is not reproduced")
    size = settings.get("size", {"height": DEFAULT_SIZE[0], "width": DEFAULT_SIZE[1]})
    if isinstance(size, int):
        size = {"height": size, "width": size}
    if not isinstance(size, dict) or set(size) != {"height", "width"}:
        raise refuse("size", 'only {"height": h, "width": w} is reproduced')
    resample = settings.get("resample", 3)
    try:
        resample = _resample_mode(resample)
    except ValueError as error:
        raise refuse("resample", str(error)) from None
    mean = settings.get("image_mean", _CLASS_MEAN)
    std = settings.get("image_std", _CLASS_STD)
    mean = tuple(float(v) for v in (mean if isinstance(mean, list | tuple) else [mean] * 3))
    std = tuple(float(v) for v in (std if isinstance(std, list | tuple) else [std] * 3))
    return {
        "size": (int(size["height"]), int(size["width"])),
        "mean": mean,
        "std": std,
        "resample": resample,
        "rescale_factor": float(settings.get("rescale_factor", DEFAULT_RESCALE_FACTOR)),
    }


def _find_processor_settings(model_dir: Path) -> tuple[Path | None, dict | None]:
    nested = model_dir / "processor_config.json"
    if nested.is_file():
        settings = _read_json(nested)
        if isinstance(settings.get("video_processor"), dict):
            return nested, settings["video_processor"]
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        candidate = model_dir / name
        if candidate.is_file():
            return candidate, _read_json(candidate)
    return None, None


def _read_json(path: Path) -> dict:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON file: {_one_line(error)}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(settings).__name__}")
    return settings


# --- Qwen2-VL / Qwen2.5-VL / Qwen3-VL -----------------------------------------------------------------------------

# What qwen_video_pixels() defaults to: Qwen/Qwen2.5-VL-*-Instruct (and Qwen2-VL) ship only preprocessor_config.json,
# {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, CLIP
# mean/std}; AutoVideoProcessor builds Qwen2VLVideoProcessor from it (min/max_pixels -> size shortest/longest_edge).
QWEN25_MIN_PIXELS = 56 * 56  # 3136
QWEN25_MAX_PIXELS = 28 * 28 * 16384  # 12845056
_IMAGENET_STANDARD = (0.5, 0.5, 0.5)  # IMAGENET_STANDARD_MEAN = _STD

_QWEN2 = "qwen2_vl"  # Qwen2VLVideoProcessor: Qwen2-VL, Qwen2.5-VL
_QWEN3 = "qwen3_vl"  # Qwen3VLVideoProcessor: Qwen3-VL (dense and MoE), Qwen3.5 (dense and MoE)
_QWEN_ALIASES = {"qwen2_vl": _QWEN2, "qwen2_5_vl": _QWEN2, "qwen3_vl": _QWEN3, "qwen3_vl_moe": _QWEN3,
                 "qwen3_5": _QWEN3, "qwen3_5_moe": _QWEN3}  # Qwen3.5 uses Qwen3VLVideoProcessor
_QWEN_PROCESSOR_CLASSES = {"Qwen2VLVideoProcessor": _QWEN2, "Qwen3VLVideoProcessor": _QWEN3}

# The video processors' class attributes (transformers 5.23): what a key that a config file leaves out becomes.
_QWEN_CLASS_DEFAULTS = {
    _QWEN2: {
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "min_pixels": 128 * 28 * 28,  # size["shortest_edge"] = 100352
        "max_pixels": 28 * 28 * 768,  # size["longest_edge"] = 602112
        "mean": _CLASS_MEAN,
        "std": _CLASS_STD,
        "resample": "bicubic",
        "rescale_factor": DEFAULT_RESCALE_FACTOR,
        "max_video_tokens": 128000,
    },
    _QWEN3: {
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "min_pixels": 128 * 32 * 32,  # 131072
        "max_pixels": 32 * 32 * 768,  # 786432
        "mean": _IMAGENET_STANDARD,
        "std": _IMAGENET_STANDARD,
        "resample": "bicubic",
        "rescale_factor": DEFAULT_RESCALE_FACTOR,
        "max_video_tokens": 768,
    },
}
# The published checkpoints' settings, for a model directory without any processor file.
_QWEN_PUBLISHED = {
    _QWEN2: {**_QWEN_CLASS_DEFAULTS[_QWEN2], "min_pixels": QWEN25_MIN_PIXELS, "max_pixels": QWEN25_MAX_PIXELS},
    # Qwen/Qwen3-VL-*-Instruct video_preprocessor_config.json: size {"shortest_edge": 4096, "longest_edge": 25165824}
    _QWEN3: {**_QWEN_CLASS_DEFAULTS[_QWEN3], "min_pixels": 4096, "max_pixels": 768 * 32 * 32 * 32},
}


def qwen_published_settings(video_processor: str) -> dict:
    """The published checkpoints' video settings for ``"qwen2_vl"`` (Qwen2.5-VL) or ``"qwen3_vl"`` (Qwen3-VL), as
    keyword arguments for :func:`qwen_video_pixels`: what a model with no processor file on disk gets."""
    return {**_QWEN_PUBLISHED[video_processor], "video_processor": video_processor, "cap_pixels_per_frame": False}


def qwen_video_pixels(
    frames: torch.Tensor | np.ndarray,
    *,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    min_pixels: int = QWEN25_MIN_PIXELS,
    max_pixels: int = QWEN25_MAX_PIXELS,
    mean: float | tuple[float, ...] = _CLASS_MEAN,
    std: float | tuple[float, ...] = _CLASS_STD,
    resample: str | int = "bicubic",
    rescale_factor: float = DEFAULT_RESCALE_FACTOR,
    resize_factor: int | None = None,
    video_processor: str = _QWEN2,
    cap_pixels_per_frame: bool = False,
    max_video_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB ``uint8 [F, H, W, 3]`` frames -> ``(pixel_values_videos, video_grid_thw)`` as a Qwen-VL video processor.

    ``pixel_values_videos`` is ``float32 [T*h*w, 3 * temporal_patch_size * patch_size**2]`` on ``frames``' device,
    ``video_grid_thw`` is ``int64 [[T, h, w]]`` on the CPU (as the processor returns it): T temporal groups of
    ``temporal_patch_size`` frames, ``h x w`` patches of ``patch_size`` pixels per group. The defaults are
    Qwen2.5-VL's (its published config through ``Qwen2VLVideoProcessor``); :func:`qwen_preprocess_config_from`
    gives a model's own. Reproduces ``Qwen2VLVideoProcessor._preprocess`` (``video_processor="qwen2_vl"``) or
    ``Qwen3VLVideoProcessor._preprocess`` (``"qwen3_vl"``), transformers 5.23, for one video:

    1. Target size (:func:`qwen_video_grid`): ``smart_resize`` to multiples of ``factor = resize_factor or
       patch_size * merge_size``, aspect ratio kept, nearest multiple when that fits the pixel bounds, else scaled to
       them (floor to fit ``max_pixels``, ceil to reach ``min_pixels``). The one difference between the two:
       ``"qwen2_vl"`` bounds the pixels of *one frame* by ``[min_pixels, max_pixels]``; ``"qwen3_vl"`` bounds
       ``t * h * w``, the pixels of the *whole clip* (``t`` = F rounded to a multiple of ``temporal_patch_size``), so
       its frame size depends on the frame count, first scales frames smaller than ``factor`` up to it, and refuses
       fewer than ``temporal_patch_size`` frames. ``cap_pixels_per_frame=True`` adds each processor's optional
       qwen-vl-utils budget (a per-video total for Qwen2, a per-frame ceiling of ``max_video_tokens * factor**2``
       for Qwen3; ``max_video_tokens`` None = the class default, 128000 / 768); off by default, as in transformers.
    2. Resize all frames to it, on uint8, exactly as :func:`preprocess_frames` does (torch's antialiased bicubic:
       within 1 level of PIL on CPU); no resize when the size already matches.
    3. Fused rescale + normalise: ``(x - mean / rescale_factor) / (std / rescale_factor)`` in float32.
    4. Pad F to a multiple of ``temporal_patch_size`` by repeating the last frame.
    5. Patches in the processor's order: rows ``(t, h-block, w-block, merge row, merge col)`` with blocks of
       ``merge_size x merge_size`` patches, so the vision merger's 2x2 groups are consecutive rows; columns
       ``(channel, temporal, patch row, patch col)``.
    """
    pixels = _video_channels_first(frames)
    num_frames, _, height, width = pixels.shape
    grid_t, grid_h, grid_w = qwen_video_grid(
        num_frames,
        height,
        width,
        patch_size=patch_size,
        temporal_patch_size=temporal_patch_size,
        merge_size=merge_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        resize_factor=resize_factor,
        video_processor=video_processor,
        cap_pixels_per_frame=cap_pixels_per_frame,
        max_video_tokens=max_video_tokens,
    )
    mode = _resample_mode(resample)
    mean, std = _three(mean, "mean"), _three(std, "std")
    if not rescale_factor > 0:
        raise ValueError(f"rescale_factor must be > 0, got {rescale_factor!r}")
    size = (grid_h * patch_size, grid_w * patch_size)
    if size != (height, width):
        pixels = _resize_uint8(pixels, size, mode)

    scale = 1.0 / rescale_factor
    mean_scaled = (torch.tensor(mean, device=pixels.device) * scale).view(-1, 1, 1)
    std_scaled = (torch.tensor(std, device=pixels.device) * scale).view(-1, 1, 1)
    values = pixels.to(torch.float32).sub_(mean_scaled).div_(std_scaled)
    if pad := -num_frames % temporal_patch_size:
        values = torch.cat([values, values[-1:].expand(pad, -1, -1, -1)])

    m, p = merge_size, patch_size
    patches = values.view(grid_t, temporal_patch_size, 3, grid_h // m, m, p, grid_w // m, m, p)
    # -> (t, h-block, w-block, merge row, merge col, channel, temporal, patch row, patch col)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, 3 * temporal_patch_size * p * p)
    return flat, torch.tensor([[grid_t, grid_h, grid_w]], dtype=torch.long)


def qwen_video_grid(
    num_frames: int,
    height: int,
    width: int,
    *,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    min_pixels: int = QWEN25_MIN_PIXELS,
    max_pixels: int = QWEN25_MAX_PIXELS,
    resize_factor: int | None = None,
    video_processor: str = _QWEN2,
    cap_pixels_per_frame: bool = False,
    max_video_tokens: int | None = None,
    **pixel_settings,
) -> tuple[int, int, int]:
    """``(T, h, w)`` in patches that :func:`qwen_video_pixels` gives ``num_frames`` frames of ``height x width``,
    without touching pixels (the processor's ``get_num_of_video_patches`` is ``T * h * w``).

    Takes the same keywords as :func:`qwen_video_pixels` (``mean``, ``std``, ``resample``, ``rescale_factor`` are
    accepted and ignored, so ``**qwen_preprocess_config_from(model_dir)`` fits both). With ``"qwen3_vl"`` the
    frame size depends on ``num_frames``: ask with the frame count you will decode.
    """
    unknown = set(pixel_settings) - {"mean", "std", "resample", "rescale_factor"}
    if unknown:
        raise TypeError(f"qwen_video_grid() got unexpected keyword arguments {sorted(unknown)}")
    family = _QWEN_ALIASES.get(video_processor) if isinstance(video_processor, str) else None
    if family is None:
        raise ValueError(f"video_processor must be 'qwen2_vl' or 'qwen3_vl', got {video_processor!r}")
    for name, value in [
        ("num_frames", num_frames),
        ("height", height),
        ("width", width),
        ("patch_size", patch_size),
        ("temporal_patch_size", temporal_patch_size),
        ("merge_size", merge_size),
        ("min_pixels", min_pixels),
        ("max_pixels", max_pixels),
    ]:
        _require_positive_int(name, value)
    factor = patch_size * merge_size
    if resize_factor is not None:
        _require_positive_int("resize_factor", resize_factor)
        if resize_factor % factor:
            raise ValueError(f"resize_factor must be a multiple of patch_size * merge_size = {factor}: {resize_factor}")
        factor = resize_factor
    if max_video_tokens is None:
        max_video_tokens = _QWEN_CLASS_DEFAULTS[family]["max_video_tokens"]
    _require_positive_int("max_video_tokens", max_video_tokens)

    if family == _QWEN2:
        if cap_pixels_per_frame:  # Qwen2VLVideoProcessor.resize: an even share of 90% of max_video_tokens
            total = int(max_video_tokens * factor * factor * 0.9)
            max_pixels = max(min(max_pixels, total * temporal_patch_size // num_frames), int(min_pixels * 1.05))
        new_height, new_width = _smart_resize_frame(height, width, factor, min_pixels, max_pixels)
    else:
        if cap_pixels_per_frame:  # Qwen3VLVideoProcessor.resize: per-frame ceiling, budget scaled back to the clip
            per_frame = max(min(max_video_tokens * factor * factor, max_pixels // num_frames), int(min_pixels * 1.05))
            max_pixels = per_frame * num_frames
        new_height, new_width = _smart_resize_clip(
            num_frames, height, width, temporal_patch_size, factor, min_pixels, max_pixels
        )
    return -(-num_frames // temporal_patch_size), new_height // patch_size, new_width // patch_size


def _smart_resize_frame(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen2_vl's smart_resize: bounds the pixels of one frame. Python's round() (half to even), as there."""
    _check_aspect_ratio(height, width)
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _smart_resize_clip(
    num_frames: int, height: int, width: int, temporal_factor: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """qwen3_vl's smart_resize: bounds t * h * w, the pixels of the whole clip (beta from the unrounded count)."""
    if num_frames < temporal_factor:
        raise ValueError(f"Qwen3-VL needs at least temporal_patch_size = {temporal_factor} frames, got {num_frames}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    _check_aspect_ratio(height, width)
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _check_aspect_ratio(height: int, width: int) -> None:
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {height}x{width}")


def _require_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _three(value, name: str) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, int | float) and not isinstance(value, bool) else value
    try:
        result = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        result = ()
    if len(result) != 3:
        raise ValueError(f"{name} must be a number or 3 numbers (R, G, B), got {value!r}")
    return result


def _video_channels_first(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    pixels = torch.as_tensor(frames)
    if pixels.dtype != torch.uint8 or pixels.ndim != 4:
        raise ValueError(f"frames must be uint8 [F, H, W, C], got {pixels.dtype} {tuple(pixels.shape)}")
    if pixels.shape[-1] == 1:  # the processor's convert_to_rgb: grey -> RGB
        pixels = pixels.expand(-1, -1, -1, 3)
    elif pixels.shape[-1] != 3:
        raise ValueError(f"frames must have 1 or 3 channels (RGB), got {pixels.shape[-1]}")
    if min(pixels.shape[:3]) < 1:
        raise ValueError(f"frames must be non-empty, got shape {tuple(pixels.shape)}")
    return pixels.permute(0, 3, 1, 2).contiguous()


def qwen_preprocess_config_from(model_dir: str | os.PathLike) -> dict:
    """A local Qwen-VL model's video settings, as keyword arguments for :func:`qwen_video_pixels`.

    Reads what ``AutoVideoProcessor.from_pretrained`` reads, in its order: ``processor_config.json``'s nested
    ``"video_processor"``, ``video_preprocessor_config.json``, ``preprocessor_config.json``. The processor class, as
    transformers picks it: the file's ``video_processor_type``, else its ``image_processor_type`` with
    ``ImageProcessor`` -> ``VideoProcessor``, else ``config.json``'s ``model_type`` (qwen2_vl, qwen2_5_vl ->
    ``"qwen2_vl"``; qwen3_vl, qwen3_vl_moe -> ``"qwen3_vl"``), else ``"qwen2_vl"``.

    Pixel bounds: ``size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}``; for ``"qwen2_vl"`` top-level
    ``min_pixels`` / ``max_pixels`` override it (its ``__init__`` does that; Qwen3VLVideoProcessor ignores them, so do
    we). A key absent (or null) takes that class's default, as in transformers: Qwen2VLVideoProcessor patch 14,
    size 100352..602112, CLIP mean/std; Qwen3VLVideoProcessor patch 16, size 131072..786432, mean = std = 0.5; both
    temporal 2, merge 2, bicubic, 1/255, ``cap_pixels_per_frame`` off. A directory without any processor file gets
    the published checkpoint's settings (Qwen2.5-VL: 3136..12845056; Qwen3-VL: 4096..25165824).

    Returns ``{"patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels", "mean", "std",
    "resample", "rescale_factor", "video_processor", "cap_pixels_per_frame", "max_video_tokens"}``. Sampling
    settings (``fps``, ``num_frames``, ``min/max_frames``) are not read. Raises ``ValueError`` naming the file and
    field for a malformed value or one :func:`qwen_video_pixels` does not reproduce (``do_resize`` / ``do_rescale`` /
    ``do_normalize`` false, a resampling filter other than bicubic / bilinear, a non-Qwen processor type).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    source, settings = _find_processor_settings(model_dir)
    settings = {} if settings is None else {key: value for key, value in settings.items() if value is not None}
    family = _qwen_family(model_dir, source, settings)
    if source is None:
        return qwen_published_settings(family)
    defaults = _QWEN_CLASS_DEFAULTS[family]

    def bad(key: str, why: str, value=None) -> ValueError:
        return ValueError(f"{source}: {key}={settings.get(key) if value is None else value!r}: {why}")

    for key in ("do_resize", "do_rescale", "do_normalize"):
        if settings.get(key, True) is not True:
            raise bad(key, "qwen_video_pixels always resizes, rescales and normalises")

    size = settings.get("size", {"shortest_edge": defaults["min_pixels"], "longest_edge": defaults["max_pixels"]})
    if not isinstance(size, dict):
        raise bad("size", 'expected {"shortest_edge": min_pixels, "longest_edge": max_pixels}')
    size, origin = dict(size), {"shortest_edge": "size.shortest_edge", "longest_edge": "size.longest_edge"}
    if family == _QWEN2:
        for top, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            if top in settings:
                size[edge], origin[edge] = settings[top], top
                size.pop(top, None)
    if set(size) != {"shortest_edge", "longest_edge"}:
        raise bad("size", 'expected {"shortest_edge": min_pixels, "longest_edge": max_pixels}', size)
    for edge in ("shortest_edge", "longest_edge"):
        if isinstance(size[edge], bool) or not isinstance(size[edge], int) or size[edge] < 1:
            raise bad(origin[edge], "expected a positive integer (pixels)", size[edge])

    result = {}
    for key in ("patch_size", "temporal_patch_size", "merge_size", "max_video_tokens"):
        value = settings.get(key, defaults[key])
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(key, "expected a positive integer")
        result[key] = value
    for key, name in (("image_mean", "mean"), ("image_std", "std")):
        try:
            result[name] = _three(settings.get(key, defaults[name]), key)
        except ValueError:
            raise bad(key, "expected a number or 3 numbers (R, G, B)") from None
    if any(v <= 0 for v in result["std"]):
        raise bad("image_std", "must be > 0")
    try:
        result["resample"] = _resample_mode(settings.get("resample", 3))
    except ValueError as error:
        raise bad("resample", str(error)) from None
    rescale_factor = settings.get("rescale_factor", DEFAULT_RESCALE_FACTOR)
    if isinstance(rescale_factor, bool) or not isinstance(rescale_factor, int | float) or not rescale_factor > 0:
        raise bad("rescale_factor", "expected a positive number")
    cap = settings.get("cap_pixels_per_frame", False)
    if not isinstance(cap, bool):
        raise bad("cap_pixels_per_frame", "expected true or false")
    return {
        "patch_size": result["patch_size"],
        "temporal_patch_size": result["temporal_patch_size"],
        "merge_size": result["merge_size"],
        "min_pixels": size["shortest_edge"],
        "max_pixels": size["longest_edge"],
        "mean": result["mean"],
        "std": result["std"],
        "resample": result["resample"],
        "rescale_factor": float(rescale_factor),
        "video_processor": family,
        "cap_pixels_per_frame": cap,
        "max_video_tokens": result["max_video_tokens"],
    }


def _qwen_family(model_dir: Path, source: Path | None, settings: dict) -> str:
    name = settings.get("video_processor_type")
    if name is not None:
        if name not in _QWEN_PROCESSOR_CLASSES:
            raise ValueError(f"{source}: video_processor_type={name!r}: not a Qwen2-VL / Qwen3-VL video processor")
        return _QWEN_PROCESSOR_CLASSES[name]
    image_name = settings.get("image_processor_type")
    derived = image_name.replace("ImageProcessor", "VideoProcessor") if isinstance(image_name, str) else None
    if derived in _QWEN_PROCESSOR_CLASSES:
        return _QWEN_PROCESSOR_CLASSES[derived]
    config = model_dir / "config.json"
    model_type = _read_json(config).get("model_type") if config.is_file() else None
    return _QWEN_ALIASES.get(model_type, _QWEN2) if isinstance(model_type, str) else _QWEN2


def qwen3_timestamps(frame_indices: list[int], fps: float, temporal_patch_size: int = 2) -> list[float]:
    """Seconds that ``Qwen3VLProcessor`` writes before each temporal group of a video (``_calculate_timestamps``).

    ``frame_indices``: the indices of the decoded frames in the video (what the processor's metadata calls
    ``frames_indices``); ``fps``: the video's own average frame rate (``metadata.fps``, e.g.
    :func:`video_fps_and_length`), not the sampling rate. As the processor: the index list is padded to a multiple
    of ``temporal_patch_size`` by repeating its last index, each index becomes ``index / fps`` seconds, and each group
    gets the mean of its first and last frame's time. One value per group: ``ceil(len(frame_indices) / 2)``.
    """
    if isinstance(fps, bool) or not isinstance(fps, int | float | np.floating) or not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    _require_positive_int("temporal_patch_size", temporal_patch_size)
    indices = [int(index) for index in frame_indices]
    if pad := -len(indices) % temporal_patch_size:
        indices += [indices[-1]] * pad
    seconds = [index / fps for index in indices]
    step = temporal_patch_size
    return [(seconds[i] + seconds[i + step - 1]) / 2 for i in range(0, len(seconds), step)]


def qwen3_timestamp_text(seconds: float) -> str:
    """The text ``Qwen3VLProcessor`` puts before a temporal group's ``<|vision_start|>``: ``"<1.5 seconds>"``
    (one decimal, Python's ``:.1f``, so 0.25 -> ``"<0.2 seconds>"``)."""
    return f"<{seconds:.1f} seconds>"


def video_fps_and_length(path: str | os.PathLike, *, timeout_s: float | None = None) -> tuple[float, int]:
    """``(average fps, frame count)`` of a video, as decord reports them (``get_avg_fps()``, ``len``) when
    :func:`decode_frames` opens it the same way, so ``frame_indices(count, n)`` are the frames it decodes.

    Errors as in :func:`decode_frames`: :class:`VideoError` with one line naming the file for a missing, empty,
    unreadable file, one without video stream or frames, or without a frame rate; ``timeout_s`` runs decord in a
    child process killed after that many seconds.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: video file not found")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file")
    _probe_container(path)
    fps, total = _fps_in_process(path) if timeout_s is None else _fps_in_child(path, timeout_s)
    if total < 1:
        raise VideoError(f"{path}: video has no frames")
    if not (math.isfinite(fps) and fps > 0):
        raise VideoError(f"{path}: no frame rate (decord reports {fps})")
    return fps, total


def _fps_in_process(path: Path) -> tuple[float, int]:
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        return float(reader.get_avg_fps()), len(reader)
    except Exception as error:  # decord raises RuntimeError / DECORDError with multi-line C++ traces
        raise VideoError(f"{path}: cannot read: {_one_line(error)}") from None


_FPS_CHILD_SOURCE = """
import sys, decord
decord.logging.set_level(decord.logging.QUIET)
reader = decord.VideoReader(sys.argv[1], ctx=decord.cpu(0), num_threads=1)
print(repr(float(reader.get_avg_fps())), len(reader))
"""


def _fps_in_child(path: Path, timeout_s: float) -> tuple[float, int]:
    done = _run_child(path, _FPS_CHILD_SOURCE, [], timeout_s)
    fields = done.stdout.split()
    if done.returncode != 0 or len(fields) != 2:
        reason = _one_line(RuntimeError(done.stderr)) if done.stderr.strip() else f"exit code {done.returncode}"
        raise VideoError(f"{path}: cannot read: {reason}")
    return float(fields[0]), int(fields[1])
