"""LLaVA-OneVision (and LLaVA-Video's HF port, same class): 1D RoPE, F frames of N pooled tokens per video, and one
`image_newline` token after each video that is never pruned (it counts as a text token)."""

from __future__ import annotations

import math

import torch

from adatp.config import AdaTPConfig
from adatp.models.base import Positions, VideoCall, video_token_mask


def _inner_class():
    from transformers import LlavaOnevisionModel

    return LlavaOnevisionModel


class LlavaOnevisionAdapter:
    family = "llava_onevision"
    class_names = ("LlavaOnevisionForConditionalGeneration",)

    def __init__(self, inner):
        self.inner = inner
        vision = inner.config.vision_config
        side = vision.image_size // vision.patch_size
        self.tokens_per_frame = math.ceil(side / 2) ** 2  # 2x2 bilinear pooling, rounded up (196 at 384/14)
        self.video_token_id = inner.config.video_token_id

    @staticmethod
    def multimodal(model):
        inner = getattr(model, "model", model)
        return inner if isinstance(inner, _inner_class()) else None

    def check(self, config: AdaTPConfig) -> None:
        """Every option is supported."""

    def saw_encoder_call(self, args, kwargs) -> None:
        """Nothing to note: the encoder's output shape [V, F*N+1, D] tells the frames."""

    def video_call(self, input_ids, kwargs) -> VideoCall | None:
        shape = self._video_shape(kwargs)
        if shape is None:
            return None
        video = video_token_mask(self.inner, self.video_token_id, input_ids, kwargs)
        videos, frames = shape
        return VideoCall(video_mask=video, grids=((frames, self.tokens_per_frame),) * videos, trailing=1)

    def _video_shape(self, kwargs: dict) -> tuple[int, int] | None:
        """(videos, frames) of the video features this call scatters, from shapes only; None when it scatters none."""
        encoded = (kwargs.get("mm_encoder_outputs") or {}).get("video")
        if encoded is not None:
            videos, tokens = encoded.pooler_output.shape[:2]
            frames, rest = divmod(tokens - 1, self.tokens_per_frame)
            return (videos, frames) if frames > 0 and rest == 0 else None
        pixels = kwargs.get("pixel_values_videos")
        if pixels is None or pixels.dim() != 5 or pixels.shape[1] == 0:
            return None
        return pixels.shape[0], pixels.shape[1]

    @staticmethod
    def positions(position_ids, batch: int, length: int, past: int, device) -> Positions:
        if position_ids is None:
            position_ids = (torch.arange(length, device=device) + past)[None]
        position_ids = position_ids.expand(batch, -1)
        return Positions(position_ids, position_ids)
