"""Qwen2.5-VL and Qwen3-VL: M-RoPE (3D (t, h, w) positions, `rope_deltas` for decoding) and videos as grids.

An AdaTP "frame" is one temporal patch group (temporal_patch_size = 2 input frames) of grid_h * grid_w / merge^2
tokens, in row-major (h, w) order, so position p is the same place in every frame. A video's tokens are the
`video_token_id` tokens; everything between them (vision start/end tokens, Qwen3-VL's timestamp text before each
group) is text and never pruned. Kept tokens keep their 3D positions; decoding goes on from the model's stored
`rope_deltas`, which a pruned prefill leaves as the unpruned one computed them (the cache reports the input's
length). Qwen3-VL's deepstack features are added at the kept visual positions only (`adatp.pruned_lm`).
"""

from __future__ import annotations

import warnings

import torch

from adatp.config import AdaTPConfig, ConfigError
from adatp.models.base import Positions, VideoCall, video_token_mask


class QwenAdapter:
    """The Qwen-VL families' shared answers (M-RoPE, grids, timestamps); a family sets its names."""

    family = ""
    class_names: tuple[str, ...] = ()
    inner_class_name = ""

    def __init__(self, inner):
        self.inner = inner
        self.video_token_id = inner.config.video_token_id
        self.merge = inner.config.vision_config.spatial_merge_size
        self.encoded_grids: dict[int, tuple[int, int]] = {}  # tokens -> (frames, tokens per frame), last encoding

    @classmethod
    def multimodal(cls, model):
        import transformers

        inner_class = getattr(transformers, cls.inner_class_name, None)
        inner = getattr(model, "model", model)
        return inner if inner_class is not None and isinstance(inner, inner_class) else None

    def check(self, config: AdaTPConfig) -> None:
        name = self.class_names[0]
        if config.positions == "renumber":
            raise ConfigError(f"config.positions: 'renumber' needs 1D RoPE; {name} uses M-RoPE (3D positions), "
                              "use 'original'")
        if config.relevance == "siglip":
            raise ConfigError(f"config.relevance: 'siglip' reads LLaVA-OneVision's pixel layout; for {name} "
                              "use 'llm'")

    def _grids(self, video_grid_thw: torch.Tensor) -> tuple[tuple[int, int], ...]:
        # The stock model reads the grid on the host too (to split the vision tower's output per video).
        return tuple((t, h * w // self.merge**2) for t, h, w in video_grid_thw.tolist())

    def saw_encoder_call(self, args, kwargs) -> None:
        """generate() encodes the videos before the prefill and then drops `video_grid_thw`: note each video's
        shape by its token count, to read the prefill's `mm_encoder_outputs` with."""
        grid = kwargs.get("video_grid_thw", args[0] if args else None)
        if grid is not None:
            self.encoded_grids = {}
            for frames, per_frame in self._grids(grid):
                tokens = frames * per_frame
                known = self.encoded_grids.setdefault(tokens, (frames, per_frame))
                if known != (frames, per_frame):  # two shapes with one token count: cannot tell them apart
                    self.encoded_grids[tokens] = None

    def video_call(self, input_ids, kwargs) -> VideoCall | None:
        grid = kwargs.get("video_grid_thw")
        encoded = (kwargs.get("mm_encoder_outputs") or {}).get("video")
        if grid is not None and grid.numel() and (kwargs.get("pixel_values_videos") is not None or encoded is not None):
            grids = self._grids(grid)
        elif encoded is not None and grid is None:
            grids = tuple(self.encoded_grids.get(len(features)) for features in encoded.pooler_output)
            if not grids or None in grids:
                warnings.warn("adatp: mm_encoder_outputs without video_grid_thw, for videos whose shapes were not "
                              "seen by get_video_features; pass video_grid_thw. This call runs unpruned",
                              stacklevel=3)
                return None
        else:
            return None
        video = video_token_mask(self.inner, self.video_token_id, input_ids, kwargs)
        return VideoCall(video_mask=video, grids=grids, trailing=0)

    @staticmethod
    def positions(position_ids, batch: int, length: int, past: int, device) -> Positions:
        """3D rope ids [3, B, L]; text ids [B, L] where the stock forward has them (a [4, B, L] input, or 1D ids)."""
        if position_ids is None:
            position_ids = (torch.arange(length, device=device) + past)[None]
        if position_ids.dim() == 2:
            text = position_ids.expand(batch, -1)
            return Positions(text[None].expand(3, -1, -1), text)
        if position_ids.shape[0] == 4:
            return Positions(position_ids[1:].expand(-1, batch, -1), position_ids[0].expand(batch, -1))
        return Positions(position_ids.expand(3, batch, -1), None)


class Qwen2_5_VLAdapter(QwenAdapter):
    family = "qwen2_5_vl"
    class_names = ("Qwen2_5_VLForConditionalGeneration",)
    inner_class_name = "Qwen2_5_VLModel"


class Qwen3VLAdapter(QwenAdapter):
    family = "qwen3_vl"
    class_names = ("Qwen3VLForConditionalGeneration",)
    inner_class_name = "Qwen3VLModel"
