"""LLaVA-Video-7B-Qwen2's HF port (`llava-hf/LLaVA-Video-7B-Qwen2-hf`): same class as LLaVA-OneVision, 64 frames.

Its config (no download here): `LlavaOnevisionForConditionalGeneration` with a Qwen2-7B LM (28 layers, hidden 3584,
MLP 18944, 28 heads, 4 KV heads, rope_theta 1e6, RMSNorm eps 1e-6, untied head, vocab 152064 padded to 152128 for
the two added tokens), a SigLIP so400m/14 at 384 px (hidden 1152, MLP 4304, 16 heads, 26 of its 27 layers, no pooling
head), `image_token_index` 151646, `video_token_index` 151647, `vision_feature_layer` -1 (the last kept layer),
`vision_feature_select_strategy` "full", `vision_aspect_ratio` "anyres_max_9". Sources: transformers'
`convert_llava_onevision_weights_to_hf.py` (the SigLIP config and LlavaOnevisionConfig's defaults it keeps), the
config.json of the sibling port `llava-hf/llava-onevision-qwen2-7b-ov-hf` (the LM and vocab 152128), and
`lmms-lab/LLaVA-Video-7B-Qwen2` itself (Qwen2-7B LM, SigLIP so400m-384; its four bf16 shards hold 16.06 GB = 8.03e9
parameters, which the config below reproduces). Its authors train and run it at 64 frames (LLaVA-NeXT issue #292).

HF's port pools each frame's 27x27 patches 2x2 *bilinearly* to ceil(27/2)^2 = 14x14 = 196 tokens (LLaVA-OneVision's
code path), where the original LLaVA-Video code, and the AdaTP paper's setup, average-pool to 13x13 = 169 and put a
newline token after every row. A preset tuned for one layout does not carry over to the other: presets are per model.
"""

import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

import adatp
from adatp.flops import flops_ratio, kept_count, lm_shape, prefill_flops, retention_for_budget
from adatp.models import family_of

FRAMES = 64
TOKENS_PER_FRAME = 196
N_VISUAL = FRAMES * TOKENS_PER_FRAME  # 12,544
IMAGE_TOKEN, VIDEO_TOKEN = 151646, 151647
SPEC = "studies/videomme-llava-video-7b.yaml"

TEXT_7B = dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, vocab_size=152128, max_position_embeddings=32768,
               rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=151643,
               eos_token_id=151645)
VISION_SO400M = dict(model_type="siglip_vision_model", hidden_size=1152, image_size=384, patch_size=14,
                     intermediate_size=4304, num_attention_heads=16, num_hidden_layers=26, vision_use_head=False)


def llava_video_config(text: dict | None = None, vision: dict | None = None) -> LlavaOnevisionConfig:
    """The port's config; `text` / `vision` override fields (to shrink widths for a real forward)."""
    config = LlavaOnevisionConfig(
        text_config={**TEXT_7B, **(text or {})}, vision_config={**VISION_SO400M, **(vision or {})},
        image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_feature_layer=-1,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False,
    )
    for part in (config, config.text_config, config.vision_config):
        part._attn_implementation = "sdpa"
    return config


@pytest.fixture(scope="module")
def meta_model():
    """The full 8B model on the meta device: every module and shape, no memory."""
    with torch.device("meta"):
        return LlavaOnevisionForConditionalGeneration(llava_video_config())


def test_config_has_the_published_shape(meta_model):
    config = meta_model.config
    assert (config.video_token_id, config.image_token_id) == (VIDEO_TOKEN, IMAGE_TOKEN)
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-1, "full")
    assert config.text_config.rope_parameters["rope_theta"] == 1e6
    shape = lm_shape(config)
    assert (shape.layers, shape.hidden, shape.intermediate, shape.heads, shape.kv_heads, shape.head_dim) == (
        28, 3584, 18944, 28, 4, 128)
    # LM + SigLIP tower + projector: the "7B" is 8.03e9 parameters, as the released checkpoint.
    assert sum(p.numel() for p in meta_model.parameters()) == pytest.approx(8.03e9, rel=1e-3)


def test_hf_port_pools_to_196_tokens_per_frame_not_169(meta_model):
    side = 384 // 14
    assert side == 27 and math.ceil(side / 2) ** 2 == TOKENS_PER_FRAME and (side // 2) ** 2 == 169
    # The port's own pooling code, on meta tensors: 64 frames of 27x27 SigLIP patches -> 64 x 196 tokens.
    patches = torch.empty(FRAMES, side * side, 1152, device="meta")
    assert tuple(meta_model.model.apply_pooling(patches).shape) == (FRAMES, TOKENS_PER_FRAME, 1152)
    assert N_VISUAL == 12544


def test_adatp_enable_accepts_it(meta_model):
    assert family_of(meta_model) == "llava_onevision"
    state = adatp.enable(meta_model, adatp.AdaTPConfig(retention=0.3, prune_layer=2))
    try:
        assert state.adapter.tokens_per_frame == TOKENS_PER_FRAME
        assert state.adapter.video_token_id == VIDEO_TOKEN
    finally:
        adatp.disable(meta_model)
    with pytest.raises(adatp.ConfigError, match="below the language model's 28 layers"):
        adatp.enable(meta_model, adatp.AdaTPConfig(prune_layer=28))


def _layer_macs(n: int) -> int:
    """The README formula by hand at D=3584, h_kv*d=512, D'=18944: 2nD^2 + 2nD*h_kv*d + 2n^2*D + 3nDD'."""
    d_model, kv_width, mlp = 3584, 4 * 128, 18944
    return 2 * n * d_model**2 + 2 * n * d_model * kv_width + 2 * n * n * d_model + 3 * n * d_model * mlp


def test_vanilla_prefill_flops_at_64_frames(meta_model):
    text_config = meta_model.config.text_config
    by_hand = 28 * _layer_macs(N_VISUAL)
    assert by_hand == 113_434_381_254_656  # 113.43e12 MACs, 2.32x the 48.82e12 of LLaVA-OV's 32 x 196
    assert prefill_flops(text_config, N_VISUAL) == by_hand
    assert prefill_flops(text_config, 6272) == pytest.approx(48.82e12, rel=1e-4)
    # With the prompt's text (image_newline included) and a pruned prefill at layer 2.
    n_text, kept = 80, kept_count(N_VISUAL, 0.3)
    assert kept == 3763
    assert prefill_flops(text_config, N_VISUAL, n_text, 0.3, 2) == (
        2 * _layer_macs(N_VISUAL + n_text) + 26 * _layer_macs(kept + n_text))


@pytest.mark.parametrize(("budget", "n_text", "kept"), [(0.2, 0, 2251), (0.3, 0, 3828), (0.5, 0, 6659),
                                                         (0.3, 80, 3776)])
def test_retention_for_budget_at_64_frames(meta_model, budget, n_text, kept):
    text_config = meta_model.config.text_config
    retention = retention_for_budget(text_config, N_VISUAL, n_text, budget, 2)
    assert kept_count(N_VISUAL, retention) == kept
    assert flops_ratio(text_config, N_VISUAL, n_text, retention, 2) <= budget
    assert flops_ratio(text_config, N_VISUAL, n_text, (kept + 1) / N_VISUAL, 2) > budget


def test_same_budget_means_another_retention_than_llava_ov_32_frames(meta_model):
    """Attention's n^2 share grows with the video, so one FLOPs budget buys a different retention at 64 x 196 than
    at LLaVA-OV's 32 x 196 (and at the paper's 64 x 169): a preset is tied to its model and frame count."""
    text_config = meta_model.config.text_config
    video = retention_for_budget(text_config, N_VISUAL, 80, 0.3, 2)
    onevision = retention_for_budget(text_config, 32 * 196, 80, 0.3, 2)
    paper_layout = retention_for_budget(text_config, 64 * 169, 80 + 64 * 13, 0.3, 2)  # a newline per row: text
    assert round(video, 4) == 0.3010 and round(onevision, 4) == 0.2698
    assert len({round(video, 3), round(onevision, 3), round(paper_layout, 3)}) == 3


def test_pruned_forward_on_the_real_frame_grid():
    """A real (small) forward: SigLIP at 384 px / patch 14 and the port's token ids, widths shrunk, 2 frames."""
    torch.manual_seed(0)
    config = llava_video_config(
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2),
        vision=dict(hidden_size=16, intermediate_size=32, num_attention_heads=1, num_hidden_layers=1),
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    frames, n_video = 2, 2 * TOKENS_PER_FRAME + 1  # + the image_newline after the video
    generator = torch.Generator().manual_seed(0)
    prefix, question = torch.randint(1, 150000, (5,), generator=generator), torch.randint(1, 150000, (9,),
                                                                                          generator=generator)
    ids = torch.cat([prefix, torch.full((n_video,), VIDEO_TOKEN), question])[None]
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                 pixel_values_videos=torch.randn(1, frames, 3, 384, 384, generator=generator))
    with torch.no_grad():
        stock = model(**batch, logits_to_keep=1).logits
        with adatp.pruning(model, adatp.AdaTPConfig(retention=1.0, prune_layer=2)):
            full = model(**batch, logits_to_keep=1).logits
        with adatp.pruning(model, adatp.AdaTPConfig(retention=0.25, prune_layer=2)) as state:
            pruned = model(**batch).logits
    assert torch.equal(stock, full)
    kept = kept_count(frames * TOKENS_PER_FRAME, 0.25)
    assert kept == 98 and tuple(state.kept_indices.shape) == (1, kept)
    assert int(state.kept_indices.max()) < frames * TOKENS_PER_FRAME
    assert pruned.shape[1] == 5 + kept + 1 + 9  # text, kept visual tokens, image_newline, question


def test_spec_names_the_port_and_64_frames():
    """The spec loads (tests/autotune/test_spec.py::REAL_SPECS checks it with env roots); its raw model default is the
    port."""
    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / SPEC).read_text())
    assert raw["model"]["path"] == "${LLAVA_VIDEO_7B:-llava-hf/LLaVA-Video-7B-Qwen2-hf}"
    assert raw["dataset"]["frames"] == FRAMES
