"""Qwen2.5-VL / Qwen3-VL / Qwen3.5's video input side: pixels and grid, their saved settings, Qwen3-VL's timestamps,
and the engine's front-end.

- :func:`qwen_video_pixels`: what transformers' ``Qwen2VLVideoProcessor`` (Qwen2-VL, Qwen2.5-VL) and
  ``Qwen3VLVideoProcessor`` (Qwen3-VL, Qwen3.5) compute: ``pixel_values_videos`` and ``video_grid_thw``, torch-only.
- :func:`qwen_video_grid`: the grid alone; :func:`qwen_preprocess_config_from`: the settings saved next to a model;
  :func:`qwen_published_settings`: the published checkpoints' settings.
- :func:`qwen3_timestamps`, :func:`qwen3_timestamp_text`: the ``<t seconds>`` text ``Qwen3VLProcessor`` puts before
  each temporal group.
- :func:`qwen_pixels`: frames resized to one frame size first, then :func:`qwen_video_pixels`.
- :class:`QwenVideo`: a video file -> the model's inputs (:class:`adatp.video.base.VideoFrontEnd`).
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from adatp.video.base import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_RESCALE_FACTOR,
    find_processor_settings,
    placeholder_index,
    read_json,
    resample_mode,
    rescale_and_normalise,
    resize_uint8,
)
from adatp.video.decode import VideoError, decode_frames, frame_indices, video_fps_and_length

__all__ = [
    "QWEN25_MAX_PIXELS",
    "QWEN25_MIN_PIXELS",
    "QWEN_FRAME_SIZE",
    "QwenVideo",
    "qwen3_timestamp_text",
    "qwen3_timestamps",
    "qwen_pixels",
    "qwen_preprocess_config_from",
    "qwen_published_settings",
    "qwen_video_grid",
    "qwen_video_pixels",
]

# What qwen_video_pixels() defaults to: Qwen/Qwen2.5-VL-*-Instruct (and Qwen2-VL) ship only preprocessor_config.json,
# {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, CLIP
# mean/std}; AutoVideoProcessor builds Qwen2VLVideoProcessor from it (min/max_pixels -> size shortest/longest_edge).
QWEN25_MIN_PIXELS = 56 * 56  # 3136
QWEN25_MAX_PIXELS = 28 * 28 * 16384  # 12845056
_IMAGENET_STANDARD = (0.5, 0.5, 0.5)  # IMAGENET_STANDARD_MEAN = _STD

# The frame size QwenVideo resizes every frame to unless told otherwise: a 16:9 frame; at Qwen2.5-VL's settings
# 364 x 644 -> 13 x 23 = 299 tokens per group.
QWEN_FRAME_SIZE = (360, 640)

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
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
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
_SIZE_SHAPE = 'expected {"shortest_edge": min_pixels, "longest_edge": max_pixels}'


def qwen_published_settings(video_processor: str) -> dict:
    """The published checkpoints' video settings for ``"qwen2_vl"`` (Qwen2.5-VL) or ``"qwen3_vl"`` (Qwen3-VL), as
    keyword arguments for :func:`qwen_video_pixels`: what a model with no processor file on disk gets."""
    return {**_QWEN_PUBLISHED[video_processor], "video_processor": video_processor, "cap_pixels_per_frame": False}


# --- pixels and grid ----------------------------------------------------------------------------------------------


def qwen_video_pixels(
    frames: torch.Tensor | np.ndarray,
    *,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    min_pixels: int = QWEN25_MIN_PIXELS,
    max_pixels: int = QWEN25_MAX_PIXELS,
    mean: float | tuple[float, ...] = CLIP_MEAN,
    std: float | tuple[float, ...] = CLIP_STD,
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

    1. Target size: :func:`qwen_video_grid` (the processors' ``smart_resize``; see there).
    2. Resize all frames to it, on uint8, exactly as :func:`adatp.video.preprocess_frames` does (torch's antialiased
       bicubic: within 1 level of PIL on CPU); no resize when the size already matches.
    3. Fused rescale + normalise: ``(x - mean / rescale_factor) / (std / rescale_factor)`` in float32.
    4. Pad F to a multiple of ``temporal_patch_size`` by repeating the last frame.
    5. Patches in the processor's order: rows ``(t, h-block, w-block, merge row, merge col)`` with blocks of
       ``merge_size x merge_size`` patches, so the vision merger's 2x2 groups are consecutive rows; columns
       ``(channel, temporal, patch row, patch col)``.
    """
    pixels = _video_channels_first(frames)
    num_frames, _, height, width = pixels.shape
    grid = qwen_video_grid(
        num_frames, height, width, patch_size=patch_size, temporal_patch_size=temporal_patch_size,
        merge_size=merge_size, min_pixels=min_pixels, max_pixels=max_pixels, resize_factor=resize_factor,
        video_processor=video_processor, cap_pixels_per_frame=cap_pixels_per_frame, max_video_tokens=max_video_tokens,
    )
    mode, mean, std = resample_mode(resample), _three(mean, "mean"), _three(std, "std")
    if not rescale_factor > 0:
        raise ValueError(f"rescale_factor must be > 0, got {rescale_factor!r}")
    size = (grid[1] * patch_size, grid[2] * patch_size)
    if size != (height, width):
        pixels = resize_uint8(pixels, size, mode)
    values = _pad_to_groups(rescale_and_normalise(pixels, mean, std, rescale_factor), temporal_patch_size)
    flat = _patches(values, grid, patch_size, temporal_patch_size, merge_size)
    return flat, torch.tensor([list(grid)], dtype=torch.long)


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


def _pad_to_groups(values: torch.Tensor, temporal_patch_size: int) -> torch.Tensor:
    """``[F, ...]`` -> F rounded up to a multiple of ``temporal_patch_size``, the last frame repeated."""
    if pad := -values.shape[0] % temporal_patch_size:
        values = torch.cat([values, values[-1:].expand(pad, -1, -1, -1)])
    return values


def _patches(values: torch.Tensor, grid: tuple[int, int, int], patch_size: int, temporal_patch_size: int,
             merge_size: int) -> torch.Tensor:
    """float ``[T*temporal, 3, h*patch, w*patch]`` -> ``[T*h*w, 3*temporal*patch*patch]`` in the processor's order."""
    (grid_t, grid_h, grid_w), m, p = grid, merge_size, patch_size
    patches = values.view(grid_t, temporal_patch_size, 3, grid_h // m, m, p, grid_w // m, m, p)
    # -> (t, h-block, w-block, merge row, merge col, channel, temporal, patch row, patch col)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(grid_t * grid_h * grid_w, 3 * temporal_patch_size * p * p)


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

    The frame size is the processors' ``smart_resize``: multiples of ``factor = resize_factor or patch_size *
    merge_size``, aspect ratio kept, nearest multiple when that fits the pixel bounds, else scaled to them (floor to
    fit ``max_pixels``, ceil to reach ``min_pixels``). The one difference between the two: ``"qwen2_vl"`` bounds the
    pixels of *one frame* by ``[min_pixels, max_pixels]``; ``"qwen3_vl"`` bounds ``t * h * w``, the pixels of the
    *whole clip* (``t`` = F rounded to a multiple of ``temporal_patch_size``), so its frame size depends on the frame
    count (ask with the frame count you will decode), first scales frames smaller than ``factor`` up to it, and
    refuses fewer than ``temporal_patch_size`` frames. ``cap_pixels_per_frame=True`` adds each processor's optional
    qwen-vl-utils budget (a per-video total for Qwen2, a per-frame ceiling of ``max_video_tokens * factor**2`` for
    Qwen3; ``max_video_tokens`` None = the class default, 128000 / 768); off by default, as in transformers.

    Takes the same keywords as :func:`qwen_video_pixels` (``mean``, ``std``, ``resample``, ``rescale_factor`` are
    accepted and ignored, so ``**qwen_preprocess_config_from(model_dir)`` fits both).
    """
    unknown = set(pixel_settings) - {"mean", "std", "resample", "rescale_factor"}
    if unknown:
        raise TypeError(f"qwen_video_grid() got unexpected keyword arguments {sorted(unknown)}")
    family = _processor_family(video_processor)
    _require_positive_ints(num_frames=num_frames, height=height, width=width, patch_size=patch_size,
                           temporal_patch_size=temporal_patch_size, merge_size=merge_size, min_pixels=min_pixels,
                           max_pixels=max_pixels)
    factor = _resize_multiple(patch_size, merge_size, resize_factor)
    if max_video_tokens is None:
        max_video_tokens = _QWEN_CLASS_DEFAULTS[family]["max_video_tokens"]
    _require_positive_int("max_video_tokens", max_video_tokens)
    if cap_pixels_per_frame:
        max_pixels = _capped_max_pixels(family, num_frames, temporal_patch_size, factor, min_pixels, max_pixels,
                                        max_video_tokens)
    if family == _QWEN2:
        new_height, new_width = _smart_resize_frame(height, width, factor, min_pixels, max_pixels)
    else:
        new_height, new_width = _smart_resize_clip(num_frames, height, width, temporal_patch_size, factor, min_pixels,
                                                   max_pixels)
    return -(-num_frames // temporal_patch_size), new_height // patch_size, new_width // patch_size


def _processor_family(video_processor: str) -> str:
    family = _QWEN_ALIASES.get(video_processor) if isinstance(video_processor, str) else None
    if family is None:
        raise ValueError(f"video_processor must be 'qwen2_vl' or 'qwen3_vl', got {video_processor!r}")
    return family


def _resize_multiple(patch_size: int, merge_size: int, resize_factor: int | None) -> int:
    """What frame sides are rounded to: ``resize_factor``, else ``patch_size * merge_size`` (a merged patch)."""
    factor = patch_size * merge_size
    if resize_factor is not None:
        _require_positive_int("resize_factor", resize_factor)
        if resize_factor % factor:
            raise ValueError(f"resize_factor must be a multiple of patch_size * merge_size = {factor}: {resize_factor}")
        factor = resize_factor
    return factor


def _capped_max_pixels(family: str, num_frames: int, temporal_patch_size: int, factor: int, min_pixels: int,
                       max_pixels: int, max_video_tokens: int) -> int:
    """``max_pixels`` under the processor's optional qwen-vl-utils budget (``cap_pixels_per_frame``)."""
    if family == _QWEN2:  # Qwen2VLVideoProcessor.resize: an even share of 90% of max_video_tokens
        total = int(max_video_tokens * factor * factor * 0.9)
        return max(min(max_pixels, total * temporal_patch_size // num_frames), int(min_pixels * 1.05))
    # Qwen3VLVideoProcessor.resize: per-frame ceiling, budget scaled back to the clip
    per_frame = max(min(max_video_tokens * factor * factor, max_pixels // num_frames), int(min_pixels * 1.05))
    return per_frame * num_frames


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


def _require_positive_ints(**values) -> None:
    for name, value in values.items():
        _require_positive_int(name, value)


def _three(value, name: str) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, int | float) and not isinstance(value, bool) else value
    try:
        result = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        result = ()
    if len(result) != 3:
        raise ValueError(f"{name} must be a number or 3 numbers (R, G, B), got {value!r}")
    return result


# --- settings saved with a model ----------------------------------------------------------------------------------


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
    source, settings = find_processor_settings(model_dir)
    settings = {} if settings is None else {key: value for key, value in settings.items() if value is not None}
    family = _qwen_family(model_dir, source, settings)
    if source is None:
        return qwen_published_settings(family)
    defaults = _QWEN_CLASS_DEFAULTS[family]
    for key in ("do_resize", "do_rescale", "do_normalize"):
        if settings.get(key, True) is not True:
            raise _refusal(source, settings, key, "qwen_video_pixels always resizes, rescales and normalises")
    min_pixels, max_pixels = _pixel_bounds(source, settings, family, defaults)
    patching = _patching_settings(source, settings, defaults)
    values = _value_settings(source, settings, defaults)
    cap = settings.get("cap_pixels_per_frame", False)
    if not isinstance(cap, bool):
        raise _refusal(source, settings, "cap_pixels_per_frame", "expected true or false")
    return {
        "patch_size": patching["patch_size"],
        "temporal_patch_size": patching["temporal_patch_size"],
        "merge_size": patching["merge_size"],
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "mean": values["mean"],
        "std": values["std"],
        "resample": values["resample"],
        "rescale_factor": values["rescale_factor"],
        "video_processor": family,
        "cap_pixels_per_frame": cap,
        "max_video_tokens": patching["max_video_tokens"],
    }


def _refusal(source: Path, settings: dict, key: str, why: str, value=None) -> ValueError:
    """The error naming the file, the field and its value (``settings[key]`` unless ``value`` is given)."""
    return ValueError(f"{source}: {key}={settings.get(key) if value is None else value!r}: {why}")


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
    model_type = read_json(config).get("model_type") if config.is_file() else None
    return _QWEN_ALIASES.get(model_type, _QWEN2) if isinstance(model_type, str) else _QWEN2


def _pixel_bounds(source: Path, settings: dict, family: str, defaults: dict) -> tuple[int, int]:
    """``(min_pixels, max_pixels)`` from ``size`` (and, for Qwen2, the top-level keys that override it)."""
    size = settings.get("size", {"shortest_edge": defaults["min_pixels"], "longest_edge": defaults["max_pixels"]})
    if not isinstance(size, dict):
        raise _refusal(source, settings, "size", _SIZE_SHAPE)
    size, origin = dict(size), {"shortest_edge": "size.shortest_edge", "longest_edge": "size.longest_edge"}
    if family == _QWEN2:
        for top, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            if top in settings:
                size[edge], origin[edge] = settings[top], top
                size.pop(top, None)
    if set(size) != {"shortest_edge", "longest_edge"}:
        raise _refusal(source, settings, "size", _SIZE_SHAPE, size)
    for edge in ("shortest_edge", "longest_edge"):
        if isinstance(size[edge], bool) or not isinstance(size[edge], int) or size[edge] < 1:
            raise _refusal(source, settings, origin[edge], "expected a positive integer (pixels)", size[edge])
    return size["shortest_edge"], size["longest_edge"]


def _patching_settings(source: Path, settings: dict, defaults: dict) -> dict:
    """``patch_size``, ``temporal_patch_size``, ``merge_size``, ``max_video_tokens``: positive integers."""
    result = {}
    for key in ("patch_size", "temporal_patch_size", "merge_size", "max_video_tokens"):
        value = settings.get(key, defaults[key])
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _refusal(source, settings, key, "expected a positive integer")
        result[key] = value
    return result


def _value_settings(source: Path, settings: dict, defaults: dict) -> dict:
    """``mean``, ``std``, ``resample``, ``rescale_factor``: how pixel values are resized and scaled."""
    result = {}
    for key, name in (("image_mean", "mean"), ("image_std", "std")):
        try:
            result[name] = _three(settings.get(key, defaults[name]), key)
        except ValueError:
            raise _refusal(source, settings, key, "expected a number or 3 numbers (R, G, B)") from None
    if any(v <= 0 for v in result["std"]):
        raise _refusal(source, settings, "image_std", "must be > 0")
    try:
        result["resample"] = resample_mode(settings.get("resample", 3))
    except ValueError as error:
        raise _refusal(source, settings, "resample", str(error)) from None
    rescale_factor = settings.get("rescale_factor", DEFAULT_RESCALE_FACTOR)
    if isinstance(rescale_factor, bool) or not isinstance(rescale_factor, int | float) or not rescale_factor > 0:
        raise _refusal(source, settings, "rescale_factor", "expected a positive number")
    result["rescale_factor"] = float(rescale_factor)
    return result


# --- Qwen3-VL timestamps ------------------------------------------------------------------------------------------


def qwen3_timestamps(frame_indices: list[int], fps: float, temporal_patch_size: int = 2) -> list[float]:
    """Seconds that ``Qwen3VLProcessor`` writes before each temporal group of a video (``_calculate_timestamps``).

    ``frame_indices``: the indices of the decoded frames in the video (what the processor's metadata calls
    ``frames_indices``); ``fps``: the video's own average frame rate (``metadata.fps``, e.g.
    :func:`adatp.video.video_fps_and_length`), not the sampling rate. As the processor: the index list is padded to a
    multiple of ``temporal_patch_size`` by repeating its last index, each index becomes ``index / fps`` seconds, and
    each group gets the mean of its first and last frame's time. One value per group: ``ceil(len(frame_indices) / 2)``.
    """
    if isinstance(fps, bool) or not isinstance(fps, int | float | np.floating) or not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    _require_positive_int("temporal_patch_size", temporal_patch_size)
    indices = np.asarray(list(frame_indices)).astype(np.int64)
    if pad := -len(indices) % temporal_patch_size:
        indices = np.pad(indices, (0, pad), mode="edge")
    # Python's int / fps: float64, or float32 for a float32 fps
    seconds = (indices.astype(np.result_type(fps, 1.0)) / fps).reshape(-1, temporal_patch_size)
    return ((seconds[:, 0] + seconds[:, -1]) / 2).tolist()


def qwen3_timestamp_text(seconds: float) -> str:
    """The text ``Qwen3VLProcessor`` puts before a temporal group's ``<|vision_start|>``: ``"<1.5 seconds>"``
    (one decimal, Python's ``:.1f``, so 0.25 -> ``"<0.2 seconds>"``)."""
    return f"<{seconds:.1f} seconds>"


# --- the front-end ------------------------------------------------------------------------------------------------


def qwen_pixels(frames: torch.Tensor, frame_size: tuple[int, int], preprocess: dict):
    """uint8 [F, H, W, 3] frames -> (pixel_values_videos, video_grid_thw): resized to `frame_size` first (bicubic,
    antialiased, on uint8 as the processors resize), then the Qwen-VL processor's own steps (:func:`qwen_video_pixels`
    with ``preprocess`` as its keywords)."""
    frames = frames.permute(0, 3, 1, 2)
    if tuple(frames.shape[-2:]) != tuple(frame_size):
        frames = torch.nn.functional.interpolate(frames, size=tuple(frame_size), mode="bicubic", antialias=True)
    return qwen_video_pixels(frames.permute(0, 2, 3, 1).contiguous(), **preprocess)


class QwenVideo:
    """Qwen2.5-VL / Qwen3-VL / Qwen3.5: frames resized to one `frame_size`, then the processor's own resize and
    patching; T = ceil(F / 2) temporal groups of N merged tokens. With `timestamps` (Qwen3-VL, Qwen3.5) the prompt
    carries a timestamp before each group. Encoded features are packed [1 + deepstack levels, T*N, D].

    ``preprocess``: keywords for :func:`qwen_video_pixels` (e.g. :func:`qwen_preprocess_config_from`'s); what it
    leaves out comes from the vision config (patch, temporal patch, merge sizes), then the published settings.
    """

    def __init__(self, model, tokenizer, frames: int, preprocess: dict,
                 frame_size: tuple[int, int] = QWEN_FRAME_SIZE, timestamps: bool = False) -> None:
        self.model, self.tokenizer, self.frames, self.timestamps = model, tokenizer, frames, timestamps
        self.frame_size = tuple(frame_size)
        config, vision = model.config, model.config.vision_config
        published = qwen_published_settings(_QWEN3 if timestamps else _QWEN2)  # where no file says
        self.preprocess = {**published, "patch_size": vision.patch_size,
                           "temporal_patch_size": vision.temporal_patch_size, "merge_size": vision.spatial_merge_size,
                           **preprocess}
        # Qwen3-VL's processor bounds the whole clip's pixels: the grid depends on the frame count too.
        self.grid = tuple(qwen_video_grid(frames, *self.frame_size, **self.preprocess))
        height, width = self.grid[1:]
        self.tokens_per_frame = height * width // self.preprocess["merge_size"] ** 2
        self.n_visual = self.grid[0] * self.tokens_per_frame
        self.start, self.end, self.pad = config.vision_start_token_id, config.vision_end_token_id, config.video_token_id
        self._seconds: dict[str, list[float]] = {}  # video path -> Qwen3-VL timestamps

    def weights(self) -> list[torch.Tensor]:
        return list(self.model.model.visual.parameters())

    def protocol(self) -> dict:
        limits = {key: self.preprocess[key] for key in ("min_pixels", "max_pixels") if key in self.preprocess}
        return {"frame_size": list(self.frame_size), "grid": list(self.grid), **limits}

    def feature_shape(self) -> tuple[int, ...]:
        levels = len(getattr(self.model.config.vision_config, "deepstack_visual_indexes", None) or ())
        return 1 + levels, self.n_visual, self.model.config.text_config.hidden_size

    def pixels(self, video_path: str) -> torch.Tensor:
        pixels, grid = qwen_pixels(decode_frames(video_path, self.frames), self.frame_size, self.preprocess)
        if tuple(grid[0].tolist()) != self.grid:
            raise VideoError(f"{video_path}: grid {grid[0].tolist()} is not the study's {list(self.grid)}")
        return pixels

    def encode(self, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
        grid = torch.tensor([self.grid], device=device)
        output = self.model.model.get_video_features(pixels.to(device, self.model.dtype), grid)
        levels = [level[0] for level in getattr(output, "deepstack_features", None) or []]
        return torch.stack([output.pooler_output[0], *levels])

    def _timestamps(self, video_path: str) -> list[float]:
        """Per-group seconds of a video; probed once per video (its questions share them)."""
        if video_path not in self._seconds:
            try:
                fps, total = video_fps_and_length(video_path)
            except (VideoError, OSError):  # the video is skipped at evaluation; this prompt only sizes the text
                fps, total = 1.0, self.frames
            indices = frame_indices(total, self.frames)
            self._seconds[video_path] = qwen3_timestamps(indices, fps, self.preprocess["temporal_patch_size"])
        return self._seconds[video_path]

    def expand(self, ids: list[int], video_path: str, qid: str) -> list[int]:
        """`<|vision_start|><|video_pad|><|vision_end|>` -> the processor's expansion: T*N pads (Qwen2.5-VL), or
        per group `<t seconds><|vision_start|>` N pads `<|vision_end|>` (Qwen3-VL)."""
        at = placeholder_index(ids, self.pad, qid)
        if ids[at - 1 : at + 2] != [self.start, self.pad, self.end]:
            raise ValueError(f"question {qid}: the chat template must render the video as "
                             "<|vision_start|><|video_pad|><|vision_end|>")
        if not self.timestamps:
            body = [self.start] + [self.pad] * self.n_visual + [self.end]
        else:
            texts = [qwen3_timestamp_text(seconds) for seconds in self._timestamps(video_path)]
            group = [self.start] + [self.pad] * self.tokens_per_frame + [self.end]
            timestamp_ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            body = list(itertools.chain.from_iterable(text + group for text in timestamp_ids))
        return ids[: at - 1] + body + ids[at + 2 :]

    def model_inputs(self, input_ids: torch.Tensor, features: list[torch.Tensor]) -> dict:
        pooler = tuple(packed[0] for packed in features)
        if features[0].shape[0] > 1:  # Qwen3-VL: deepstack features, one tuple per level
            from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

            levels = [tuple(packed[level] for packed in features) for level in range(1, features[0].shape[0])]
            video = BaseModelOutputWithDeepstackFeatures(pooler_output=pooler, deepstack_features=levels)
        else:
            video = BaseModelOutputWithPooling(pooler_output=pooler)
        return {"mm_token_type_ids": (input_ids == self.pad).int() * 2,
                "video_grid_thw": torch.tensor([self.grid] * len(features), device=input_ids.device),
                "mm_encoder_outputs": {"video": video}}
