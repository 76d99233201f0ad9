"""Video decoding and LLaVA-OneVision pixel preprocessing, torch-only.

The one place in the project that turns a video file into ``pixel_values_videos``:

- :func:`frame_indices`: which frames to read (lmms-eval's uniform sampling).
- :func:`decode_frames`: read them with decord; every failure is a :class:`VideoError`.
- :func:`preprocess_frames`: what transformers' ``LlavaOnevisionVideoProcessor`` computes, without torchvision
  (which has no CPU build here), as one batched tensor pipeline.
- :func:`preprocess_config_from`: the processor settings saved next to a model.

decord and PyAV are imported inside the functions that use them: ``adatp`` imports with torch + transformers only.
"""

from __future__ import annotations

import json
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


def _decode_in_child(path: Path, num_frames: int, timeout_s: float) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="adatp-decode-") as scratch:
        out = Path(scratch) / "frames.npy"
        command = [sys.executable, "-c", _CHILD_SOURCE, str(path), str(num_frames), str(out)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise VideoError(f"{path}: decoder timed out after {timeout_s:g} s") from None
        if done.returncode < 0:
            raise VideoError(f"{path}: decoder crashed (signal {-done.returncode})")
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
