"""The adapter contract: what one Video LLM family tells the shared pruned-LM forward, and the data it returns.

The bottom of `adatp`'s model seam (it imports nothing else of adatp but the config). An adapter answers only the
questions that differ between families (`ModelAdapter`):
- the call's video layout (`video_call` -> `VideoCall`): which tokens are video, how they group into videos and
  frames (F frames of N tokens each, in row-major (h, w) order, so a spatial position is the same in every frame);
- what is never pruned: tokens outside `VideoCall.video_mask` and each video's `trailing` tokens (LLaVA-OV's
  `image_newline`; Qwen's vision start/end tokens and timestamp text sit between video tokens and are text);
- the positions (`positions` -> `Positions`): 1D RoPE, or M-RoPE's 3D (t, h, w) ids. Kept tokens always keep the
  positions of the unpruned sequence;
- what it cannot honour (`check`: raises `ConfigError` naming the field).
Everything else (scoring, selection, gathering, per-layer masks and caches, decoding) is shared.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch

from adatp.config import AdaTPConfig

__all__ = ["ModelAdapter", "Positions", "VideoCall", "video_token_mask"]


@dataclasses.dataclass
class VideoCall:
    """The video features one multimodal call scatters into its input embeddings.

    Video v is the v-th run of `frames * tokens_per_frame + trailing` video tokens in row-major order of
    `video_mask` (the order `masked_scatter` fills them in); its last `trailing` tokens are never pruned.
    """

    video_mask: torch.Tensor  # [B, L] positions holding video tokens
    grids: tuple[tuple[int, int], ...]  # (frames F, tokens per frame N) per video
    trailing: int = 0  # LLaVA-OV: 1 (the image_newline after each video)
    external: tuple[torch.Tensor, torch.Tensor] | None = None  # siglip: (frame [V,F,Dg], question [B,Dg])

    @property
    def videos(self) -> int:
        return len(self.grids)

    def tokens(self, video: int) -> int:
        frames, per_frame = self.grids[video]
        return frames * per_frame + self.trailing


@dataclasses.dataclass
class Positions:
    """Positions of the current tokens: `rope` for the rotary module ([B, L], or [3, B, L] for M-RoPE) and `text`
    ([B, L] or None) for masks and the layers' `position_ids`, as the stock forward passes them."""

    rope: torch.Tensor
    text: torch.Tensor | None

    def gather(self, columns: torch.Tensor) -> Positions:
        """The positions of `columns` [B, L'] of each row (kept tokens keep their own)."""
        rope = self.rope.gather(-1, columns.expand(*self.rope.shape[:-2], *columns.shape))
        return Positions(rope, None if self.text is None else self.text.gather(-1, columns))


def video_token_mask(inner, video_token_id: int, input_ids, kwargs: dict) -> torch.Tensor:
    """[B, L] positions of the video placeholder token, found as the stock models find them: in `input_ids`, else
    as rows of `inputs_embeds` equal to the placeholder's embedding."""
    if input_ids is not None:
        return input_ids == video_token_id
    marker = inner.get_input_embeddings().weight[video_token_id]
    return (kwargs["inputs_embeds"] == marker).all(-1)


class ModelAdapter(Protocol):
    """One model family. `adatp.models.adapter_for(model)` builds it around the inner multimodal model."""

    family: str  # e.g. "qwen3_5"
    class_names: tuple[str, ...]  # the `...ForConditionalGeneration` classes it takes
    video_token_id: int
    inner: object  # the multimodal model holding `language_model`

    @classmethod
    def multimodal(cls, model) -> object | None:
        """The inner multimodal model of `model` when this adapter takes it, else None."""

    def check(self, config: AdaTPConfig) -> None:
        """Raise `ConfigError` (naming the field) for an option this family cannot honour."""

    def saw_encoder_call(self, args, kwargs) -> None:
        """Note what `get_video_features` was called with (generate drops the grid before the prefill)."""

    def video_call(self, input_ids, kwargs) -> VideoCall | None:
        """The video layout of a multimodal forward call, or None when it scatters no video features."""

    def positions(self, position_ids, batch: int, length: int, past: int, device) -> Positions:
        """The positions of `length` tokens after `past` as the stock language model builds them."""
