"""Tiny models of every supported family, built from config (no download), and video inputs for them.

A `Family` gives the same few things for each: a model, a left-padded batch with one video per row, and a batch
mixing rows with two videos (of different lengths where the family allows it), one video and none. `frames` is
always AdaTP frames: LLaVA-OV frames, or Qwen temporal patch groups (2 input frames each).
"""

from __future__ import annotations

import dataclasses

import tiny
import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

PAD_TOKEN = 0
QWEN_IMAGE, QWEN_VIDEO, QWEN_START, QWEN_END = 250, 251, 252, 253
QWEN_PATCH, QWEN_SIDE = 4, 8  # 8x8 patches of 4 px per frame, merged 2x2 -> 16 tokens per AdaTP frame


def _text(generator, n):
    return torch.randint(1, 200, (n,), generator=generator)


def _scale_language_model(model):
    # Random init gives near-uniform attention; scale up so scores and outputs actually vary with the input, and
    # the vision merger's output up to the text embeddings' norm so the video matters to the answer.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "language_model" in name and param.dim() == 2:
                param.mul_(4.0)
            elif "merger" in name and param.dim() == 2:
                param.mul_(2.0)
    return model


def _pad_rows(bodies, types=None):
    length = max(len(body) for body in bodies)
    input_ids = torch.stack([torch.cat([torch.full((length - len(b),), PAD_TOKEN), b]) for b in bodies])
    attention_mask = torch.stack([torch.cat([torch.zeros(length - len(b)), torch.ones(len(b))]).long()
                                  for b in bodies])
    batch = dict(input_ids=input_ids, attention_mask=attention_mask)
    if types is not None:
        batch["mm_token_type_ids"] = torch.stack([torch.cat([torch.zeros(length - len(t), dtype=t.dtype), t])
                                                  for t in types])
    return batch


@dataclasses.dataclass
class Family:
    name: str
    tokens_per_frame: int
    video_token: int

    def visual(self, frames: int) -> int:
        """Visual (prunable) tokens of one video of `frames` AdaTP frames."""
        return frames * self.tokens_per_frame


class Llava(Family):
    def __init__(self):
        super().__init__("llava_onevision", tiny.TOKENS_PER_FRAME, tiny.VIDEO_TOKEN)

    def model(self, layers=4, attn="sdpa", seed=0, **text):
        return tiny.tiny_model(layers, attn=attn, seed=seed, **text)

    def video_batch(self, batch=1, frames=3, pads=(), seed=0, question_len=7):
        return tiny.video_batch(batch, frames=frames, pads=pads, seed=seed, question_len=question_len)

    def mixed_rows(self, frames=3, seed=11):
        """Row 0: two videos; row 1: one video, left-padded; row 2: no video. LLaVA-OV's videos of one call share
        one frame count (pixel_values_videos is [V, F, ...])."""
        generator = torch.Generator().manual_seed(seed)
        video = torch.full((frames * self.tokens_per_frame + 1,), self.video_token)
        bodies = [torch.cat([_text(generator, 3), video, _text(generator, 4), video, _text(generator, 6)]),
                  torch.cat([_text(generator, 3), video, _text(generator, 6)]),
                  _text(generator, 12)]
        pixels = torch.randn(3, frames, 3, 32, 32, generator=generator)
        rows = [dict(input_ids=b[None], attention_mask=torch.ones(1, len(b), dtype=torch.long)) for b in bodies]
        rows[0]["pixel_values_videos"], rows[1]["pixel_values_videos"] = pixels[:2], pixels[2:]
        return dict(**_pad_rows(bodies), pixel_values_videos=pixels), rows, [frames, frames, frames]


class Qwen(Family):
    """Qwen2.5-VL, Qwen3-VL, Qwen3.5 or Qwen3.5-MoE. Qwen3-VL's and Qwen3.5's videos carry timestamp text before
    each temporal group."""

    def __init__(self, name):
        super().__init__(name, (QWEN_SIDE // 2) ** 2, QWEN_VIDEO)
        self.timestamps = name != "qwen2_5_vl"

    def config(self, layers=4, attn="sdpa", hidden=64, intermediate=128):
        rope = {"rope_type": "default", "rope_theta": 1e6}
        text = dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=256, max_position_embeddings=4096, pad_token_id=PAD_TOKEN,
                    bos_token_id=None, eos_token_id=None)
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=QWEN_PATCH,
                      spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden)
        ids = dict(image_token_id=QWEN_IMAGE, video_token_id=QWEN_VIDEO, vision_start_token_id=QWEN_START,
                   vision_end_token_id=QWEN_END, tie_word_embeddings=False)
        if self.name.startswith("qwen3_5"):
            return self._hybrid_config(text, vision, ids, rope, layers, attn)
        if self.timestamps:  # Qwen3: explicit head_dim with heads * head_dim != hidden, interleaved M-RoPE
            text.update(head_dim=32, rope_parameters={**rope, "mrope_section": [8, 4, 4], "mrope_interleaved": True})
            vision.update(num_position_embeddings=16, deepstack_visual_indexes=[0, 1])
            config = Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
        else:
            half = hidden // 4 // 2  # sections (t, h, w) sum to head_dim / 2, in the real models' 2:3:3 ratio
            text.update(rope_parameters={**rope, "mrope_section": [half // 4, 3 * half // 8, 3 * half // 8]})
            vision.update(window_size=16, fullatt_block_indexes=[1], tokens_per_second=2)
            config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        for part in (config, config.text_config, config.vision_config):
            part._attn_implementation = attn
        return config

    def _hybrid_config(self, text, vision, ids, rope, layers, attn):
        """Qwen3.5 (-MoE): Gated DeltaNet layers with full attention every 2nd layer (so that K = 2 follows one; the
        real models have it every 4th), a gated q_proj, partial rotary (half of head_dim 32), no deepstack."""
        text.update(head_dim=32, layer_types=["linear_attention", "full_attention"] * (layers // 2),
                    rope_parameters={**rope, "mrope_section": [4, 2, 2], "mrope_interleaved": True,
                                     "partial_rotary_factor": 0.5},
                    linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16,
                    linear_num_key_heads=2, linear_num_value_heads=4)
        vision.update(num_position_embeddings=16)
        if self.name == "qwen3_5_moe":
            intermediate = text.pop("intermediate_size")
            text.update(moe_intermediate_size=intermediate // 4, shared_expert_intermediate_size=intermediate * 3 // 8,
                        num_experts=4, num_experts_per_tok=2)
            config = Qwen3_5MoeConfig(text_config=text, vision_config=vision, **ids)
            if attn == "eager":  # the default grouped_mm experts are invisible to FlopCounterMode, like CPU SDPA
                config.text_config._experts_implementation = "eager"
        else:
            config = Qwen3_5Config(text_config=text, vision_config=vision, **ids)
        for part in (config, config.text_config, config.vision_config):
            part._attn_implementation = attn
        return config

    def model(self, layers=4, attn="sdpa", seed=0, hidden=64, intermediate=128):
        torch.manual_seed(seed)
        model_class = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "qwen3_vl": Qwen3VLForConditionalGeneration,
                       "qwen3_5": Qwen3_5ForConditionalGeneration,
                       "qwen3_5_moe": Qwen3_5MoeForConditionalGeneration}[self.name]
        return _scale_language_model(model_class(self.config(layers, attn, hidden, intermediate)).eval())

    def video_tokens(self, generator, frames):
        """(ids, token types) of one video's placeholder as the processor expands it."""
        video = torch.full((self.tokens_per_frame,), QWEN_VIDEO)
        if self.timestamps:
            parts = [torch.cat([_text(generator, 2), torch.tensor([QWEN_START]), video, torch.tensor([QWEN_END])])
                     for _ in range(frames)]
            ids = torch.cat(parts)
        else:
            ids = torch.cat([torch.tensor([QWEN_START]), video.repeat(frames), torch.tensor([QWEN_END])])
        return ids, (ids == QWEN_VIDEO).long() * 2

    def pixels(self, generator, frames):
        """(pixel_values_videos [T*h*w, C*2*p*p], grid [1, 3]) of one video."""
        patches = frames * QWEN_SIDE * QWEN_SIDE
        return (torch.randn(patches, 3 * 2 * QWEN_PATCH * QWEN_PATCH, generator=generator),
                torch.tensor([[frames, QWEN_SIDE, QWEN_SIDE]]))

    def _rows(self, generator, layout):
        """layout: per row, a list of text lengths and video frame counts (ints as ('t', n) / ('v', frames))."""
        bodies, types, pixels, grids, rows = [], [], [], [], []
        for parts in layout:
            ids, kinds, row_pixels, row_grids = [], [], [], []
            for kind, n in parts:
                if kind == "t":
                    ids.append(_text(generator, n))
                    kinds.append(torch.zeros(n, dtype=torch.long))
                else:
                    video_ids, video_types = self.video_tokens(generator, n)
                    ids.append(video_ids)
                    kinds.append(video_types)
                    patch, grid = self.pixels(generator, n)
                    row_pixels.append(patch)
                    row_grids.append(grid)
            body, body_types = torch.cat(ids), torch.cat(kinds)
            bodies.append(body)
            types.append(body_types)
            row = dict(input_ids=body[None], attention_mask=torch.ones(1, len(body), dtype=torch.long),
                       mm_token_type_ids=body_types[None])
            if row_pixels:
                row.update(pixel_values_videos=torch.cat(row_pixels), video_grid_thw=torch.cat(row_grids))
                pixels += row_pixels
                grids += row_grids
            rows.append(row)
        batch = _pad_rows(bodies, types)
        if pixels:
            batch.update(pixel_values_videos=torch.cat(pixels), video_grid_thw=torch.cat(grids))
        return batch, rows

    def video_batch(self, batch=1, frames=3, pads=(), seed=0, question_len=7):
        generator = torch.Generator().manual_seed(seed)
        pads = pads or (0,) * batch
        assert len(pads) == batch
        layout = [[("t", 3), ("v", frames), ("t", question_len + max(pads) - pad)] for pad in pads]
        return self._rows(generator, layout)[0]

    def mixed_rows(self, frames=3, seed=11):
        """Row 0: two videos of different lengths; row 1: one video, left-padded; row 2: no video."""
        generator = torch.Generator().manual_seed(seed)
        layout = [[("t", 3), ("v", frames), ("t", 4), ("v", frames + 1), ("t", 6)],
                  [("t", 3), ("v", frames), ("t", 6)],
                  [("t", 12)]]
        batch, rows = self._rows(generator, layout)
        return batch, rows, [frames, frames + 1, frames]


FAMILIES = {"llava_onevision": Llava(), "qwen2_5_vl": Qwen("qwen2_5_vl"), "qwen3_vl": Qwen("qwen3_vl"),
            "qwen3_5": Qwen("qwen3_5"), "qwen3_5_moe": Qwen("qwen3_5_moe")}
