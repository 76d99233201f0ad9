"""LLaVA-OneVision's video input side: pixel preprocessing, its saved settings, and the engine's front-end.

- :func:`preprocess_frames`: what transformers' ``LlavaOnevisionVideoProcessor`` computes, without torchvision
  (which has no CPU build here), as one batched tensor pipeline.
- :func:`preprocess_config_from`: the processor settings saved next to a model.
- :func:`expand_video_placeholder`: the prompt's one ``<video>`` token -> the video's tokens.
- :class:`LlavaOnevisionVideo`: a video file -> the model's inputs (:class:`adatp.video.base.VideoFrontEnd`).
"""

from __future__ import annotations

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
    resample_mode,
    rescale_and_normalise,
    resize_uint8,
)
from adatp.video.decode import decode_frames

__all__ = [
    "DEFAULT_MEAN",
    "DEFAULT_SIZE",
    "DEFAULT_STD",
    "LlavaOnevisionVideo",
    "expand_video_placeholder",
    "preprocess_config_from",
    "preprocess_frames",
]

# LLaVA-OneVision's published video_preprocessor_config.json (llava-hf/llava-onevision-qwen2-*-ov-hf).
DEFAULT_SIZE = (384, 384)
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


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

    What we check without torchvision (it has no CPU build here; tests/adatp/test_video.py): the CPU uint8 resize
    stays within 1 uint8 level of PIL's ``Image.resize(BICUBIC)``, which is also what LLaVA-NeXT's own SigLIP image
    processor (lmms-eval's llava_onevision path) resizes with. The non-CPU float path is looser, as it is in
    torchvision (it clamps once, after both passes). Bit-equality with torchvision itself is left to a session
    that has it.
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
        pixels = resize_uint8(pixels, (height, width), resample_mode(resample))
    return rescale_and_normalise(pixels, mean, std, rescale_factor)


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
    source, settings = find_processor_settings(model_dir)
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
        resample = resample_mode(resample)
    except ValueError as error:
        raise refuse("resample", str(error)) from None
    # LlavaOnevisionVideoProcessor's class attributes: what transformers uses for a key the file leaves out.
    mean = settings.get("image_mean", CLIP_MEAN)
    std = settings.get("image_std", CLIP_STD)
    mean = tuple(float(v) for v in (mean if isinstance(mean, list | tuple) else [mean] * 3))
    std = tuple(float(v) for v in (std if isinstance(std, list | tuple) else [std] * 3))
    return {
        "size": (int(size["height"]), int(size["width"])),
        "mean": mean,
        "std": std,
        "resample": resample,
        "rescale_factor": float(settings.get("rescale_factor", DEFAULT_RESCALE_FACTOR)),
    }


def expand_video_placeholder(ids: list[int], video_token_id: int, n_video_tokens: int, qid: str) -> list[int]:
    """A prompt's one video placeholder -> ``n_video_tokens`` copies of it (F*N + 1 with the ``image_newline``);
    ``ValueError`` naming question ``qid`` unless the prompt holds exactly one."""
    at = placeholder_index(ids, video_token_id, qid)
    return ids[:at] + [video_token_id] * n_video_tokens + ids[at + 1 :]


class LlavaOnevisionVideo:
    """LLaVA-OneVision: F frames resized to the tower's square input; F*N pooled tokens + image_newline per video.

    ``preprocess``: keyword arguments for :func:`preprocess_frames` (e.g. :func:`preprocess_config_from`'s; empty:
    the published settings). Encoded features are ``[F*N + 1, D]``, ``image_newline`` last.
    """

    def __init__(self, model, frames: int, preprocess: dict) -> None:
        self.model, self.frames, self.preprocess = model, frames, preprocess
        vision = model.config.vision_config
        self.tokens_per_frame = math.ceil(vision.image_size // vision.patch_size / 2) ** 2
        self.n_visual = frames * self.tokens_per_frame

    def weights(self) -> list[torch.Tensor]:
        inner = self.model.model
        return [*inner.vision_tower.parameters(), *inner.multi_modal_projector.parameters(), inner.image_newline]

    def protocol(self) -> dict:
        return {"tokens_per_frame": self.tokens_per_frame}

    def feature_shape(self) -> tuple[int, ...]:
        return self.n_visual + 1, self.model.config.text_config.hidden_size

    def pixels(self, video_path: str) -> torch.Tensor:
        return preprocess_frames(decode_frames(video_path, self.frames), **self.preprocess)

    def encode(self, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
        config = self.model.config
        output = self.model.model.get_video_features(
            pixels[None].to(device, self.model.dtype), vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        )
        return output.pooler_output[0]

    def expand(self, ids: list[int], video_path: str, qid: str) -> list[int]:
        """The one video placeholder -> the video's F*N + 1 tokens."""
        return expand_video_placeholder(ids, self.model.config.video_token_id, self.n_visual + 1, qid)

    def model_inputs(self, input_ids: torch.Tensor, features: list[torch.Tensor]) -> dict:
        return {"mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=torch.stack(features))}}
