"""A tiny LLaVA-OneVision built from config (no download) and video inputs for it."""

import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

VIDEO_TOKEN, IMAGE_TOKEN, PAD_TOKEN = 250, 251, 0
TOKENS_PER_FRAME = 16  # 32 px / patch 4 = 8x8 patches, pooled 2x2 -> 4x4


def tiny_config(layers: int = 4, attn: str = "sdpa", hidden: int = 64, intermediate: int = 128) -> LlavaOnevisionConfig:
    config = LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=32, patch_size=4, vision_use_head=False,
        ),
        text_config=dict(
            model_type="qwen2", hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=4096,
            pad_token_id=PAD_TOKEN, tie_word_embeddings=False,
        ),
        video_token_id=VIDEO_TOKEN, image_token_id=IMAGE_TOKEN, vision_feature_layer=-1,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
    )
    config._attn_implementation = attn
    config.text_config._attn_implementation = attn
    config.vision_config._attn_implementation = attn
    return config


def tiny_model(layers: int = 4, attn: str = "sdpa", seed: int = 0, **text) -> LlavaOnevisionForConditionalGeneration:
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(tiny_config(layers, attn, **text)).eval()
    # Random init gives near-uniform attention; scale up so scores and outputs actually vary with the input.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "language_model" in name and param.dim() == 2:
                param.mul_(4.0)
    return model


def video_batch(batch: int = 1, frames: int = 6, pads: tuple[int, ...] = (), seed: int = 0, question_len: int = 7):
    """input_ids with left padding, attention_mask and pixel_values_videos [B, F, 3, 32, 32]."""
    generator = torch.Generator().manual_seed(seed)
    n_video = frames * TOKENS_PER_FRAME + 1
    rows, masks = [], []
    pads = pads or (0,) * batch
    assert len(pads) == batch
    for pad in pads:  # rows differ in question length, so each row gets its own amount of left padding
        prefix = torch.randint(1, 200, (3,), generator=generator)
        question = torch.randint(1, 200, (question_len + max(pads) - pad,), generator=generator)
        body = torch.cat([prefix, torch.full((n_video,), VIDEO_TOKEN), question])
        rows.append(torch.cat([torch.full((pad,), PAD_TOKEN), body]))
        masks.append(torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones(body.numel(), dtype=torch.long)]))
    pixels = torch.randn(batch, frames, 3, 32, 32, generator=generator)
    return dict(input_ids=torch.stack(rows), attention_mask=torch.stack(masks), pixel_values_videos=pixels)
