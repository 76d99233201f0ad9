"""What every family's video input side shares: the front-end contract, and the processor-file and pixel steps.

- :class:`VideoFrontEnd`: what one model family does to turn a video file into the model's inputs (pixels, vision
  features, the prompt's expanded video placeholder, the forward's keyword inputs). One class per family implements
  it: :class:`adatp.video.llava_onevision.LlavaOnevisionVideo`, :class:`adatp.video.qwen.QwenVideo`.
- :func:`placeholder_index`: where a prompt's one video placeholder sits.
- :func:`find_processor_settings`, :func:`read_json`: the processor settings saved next to a model, found where
  transformers looks for them.
- :func:`resample_mode`, :func:`resize_uint8`, :func:`rescale_and_normalise`: the resize and the fused rescale +
  normalise that transformers' video processors run, torch-only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from adatp.video.decode import one_line

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_RESCALE_FACTOR",
    "VideoFrontEnd",
    "find_processor_settings",
    "placeholder_index",
    "read_json",
    "resample_mode",
    "rescale_and_normalise",
    "resize_uint8",
]

DEFAULT_RESCALE_FACTOR = 1 / 255
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # transformers' OPENAI_CLIP_MEAN
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)  # transformers' OPENAI_CLIP_STD

# PIL resampling codes, as stored in *preprocessor_config.json ("resample": 3).
_RESAMPLE_NAMES = {2: "bilinear", 3: "bicubic"}


class VideoFrontEnd(Protocol):
    """One model family's video input side, for a model in memory and a fixed frame count.

    ``frames``: frames decoded per video; ``n_visual``: visual tokens per video (the ones AdaTP prunes);
    ``tokens_per_frame``: visual tokens per frame (LLaVA-OV) or per temporal group (Qwen).
    A video runs ``pixels`` (decode + preprocess, on the CPU) then ``encode`` (the vision tower, under the caller's
    ``torch.no_grad``); a prompt runs ``expand`` once; a batch of prompts runs ``model_inputs`` with each one's
    encoded features.
    """

    frames: int
    n_visual: int
    tokens_per_frame: int

    def weights(self) -> list[torch.Tensor]:
        """The tensors the encoded features depend on (vision tower, projector): what a feature cache keys on."""
        ...

    def protocol(self) -> dict:
        """The settings that fix the visual tokens besides family and frame count (JSON-serialisable)."""
        ...

    def feature_shape(self) -> tuple[int, ...]:
        """The shape of one video's :meth:`encode` output."""
        ...

    def pixels(self, video_path: str) -> torch.Tensor:
        """The video's preprocessed pixels; raises :class:`adatp.video.VideoError` for a video that cannot be read."""
        ...

    def encode(self, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
        """One video's features in the language model's space, packed as :meth:`feature_shape` says."""
        ...

    def expand(self, ids: list[int], video_path: str, qid: str) -> list[int]:
        """Prompt token ids with the chat template's one video placeholder expanded to the video's tokens.
        ``video_path``: the prompt's video (Qwen3-VL's timestamps are read from it); ``qid``: named in errors."""
        ...

    def model_inputs(self, input_ids: torch.Tensor, features: list[torch.Tensor]) -> dict:
        """The forward's video keyword inputs for a batch of expanded prompts, one :meth:`encode` output per row."""
        ...


def placeholder_index(ids: list[int], token: int, qid: str) -> int:
    """Where the one ``token`` sits in a prompt's ids; ``ValueError`` naming question ``qid`` if not exactly once."""
    if ids.count(token) != 1:
        raise ValueError(f"question {qid}: the chat template must render exactly one video placeholder")
    return ids.index(token)


def resample_mode(resample: str | int) -> str:
    """``"bicubic"`` or ``"bilinear"`` from a name or a PIL code (3, 2); ``ValueError`` for anything else."""
    mode = _RESAMPLE_NAMES.get(resample, resample) if isinstance(resample, int) else str(resample).lower()
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"resample must be 'bicubic' or 'bilinear' (PIL codes 3, 2), got {resample!r}")
    return mode


def resize_uint8(pixels: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """uint8 ``[F, 3, H, W]`` -> uint8 ``[F, 3, *size]``, antialiased, as torchvision's ``resize`` on uint8 does:
    natively on CPU where torch has the uint8 kernel, else in float32, clamped (bicubic) and rounded back."""
    native_uint8 = pixels.device.type == "cpu" and (
        mode == "bicubic" or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    )
    if native_uint8:
        return F.interpolate(pixels, size=size, mode=mode, align_corners=False, antialias=True)
    resized = F.interpolate(pixels.to(torch.float32), size=size, mode=mode, align_corners=False, antialias=True)
    if mode == "bicubic":
        resized = resized.clamp_(0, 255)
    return resized.round_().to(torch.uint8)


def rescale_and_normalise(
    pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], rescale_factor: float
) -> torch.Tensor:
    """uint8 ``[F, 3, h, w]`` -> float32 ``(x - mean / rescale_factor) / (std / rescale_factor)``: transformers'
    ``_fuse_mean_std_and_rescale_factor`` + ``normalize``, with mean and std as float32 tensors."""
    scale = 1.0 / rescale_factor
    mean_scaled = (torch.tensor(mean, device=pixels.device) * scale).view(-1, 1, 1)
    std_scaled = (torch.tensor(std, device=pixels.device) * scale).view(-1, 1, 1)
    return pixels.to(torch.float32).sub_(mean_scaled).div_(std_scaled)


def find_processor_settings(model_dir: Path) -> tuple[Path | None, dict | None]:
    """``(file, video processor settings)`` saved with a model, where transformers looks, in its order:
    ``processor_config.json``'s nested ``"video_processor"``, ``video_preprocessor_config.json``,
    ``preprocessor_config.json``; ``(None, None)`` when there is none."""
    nested = model_dir / "processor_config.json"
    if nested.is_file():
        settings = read_json(nested)
        if isinstance(settings.get("video_processor"), dict):
            return nested, settings["video_processor"]
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        candidate = model_dir / name
        if candidate.is_file():
            return candidate, read_json(candidate)
    return None, None


def read_json(path: Path) -> dict:
    """A JSON object from a file; ``ValueError`` naming the file for an unreadable one or another JSON value."""
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON file: {one_line(error)}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(settings).__name__}")
    return settings
