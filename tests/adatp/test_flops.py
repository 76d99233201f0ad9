"""FLOPs: paper numbers for LLaVA-OV-7B, Qwen2.5-VL and Qwen3-VL shapes, budget inversion, and agreement with torch's
FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, MixtralConfig, Qwen2Config, Qwen2Model
from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel
from transformers.models.qwen3_vl import Qwen3VLConfig, Qwen3VLTextConfig, Qwen3VLTextModel
from transformers.models.qwen3_vl_moe import Qwen3VLMoeConfig, Qwen3VLMoeTextConfig

from adatp.flops import (
    LMShape,
    flops_ratio,
    kept_count,
    layer_flops,
    lm_shape,
    min_flops_ratio,
    prefill_flops,
    retention_for_budget,
    scoring_flops,
)

# LLaVA-OneVision-7B's language model (Qwen2-7B); vocab is irrelevant to prefill FLOPs.
QWEN2_7B = Qwen2Config(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=128,
)
N_VISUAL_32_FRAMES = 32 * 196


def test_lm_shape_reads_qwen2_7b():
    assert lm_shape(QWEN2_7B) == LMShape(layers=28, hidden=3584, intermediate=18944, kv_heads=4, head_dim=128, heads=28)


def test_lm_shape_honours_explicit_head_dim_and_missing_kv_heads():
    config = LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, head_dim=32
    )
    shape = lm_shape(config)
    assert (shape.head_dim, shape.kv_heads, shape.heads) == (32, 4, 4)


def test_layer_flops_formula_by_hand():
    shape = LMShape(layers=1, hidden=10, intermediate=30, kv_heads=3, head_dim=2, heads=5)  # H*d = D = 10
    n = 7
    # 2nD^2 + 2nD*h_kv*d + 2n^2*D + 3nDD'
    assert layer_flops(shape, n) == 2 * 7 * 100 + 2 * 7 * 10 * 6 + 2 * 49 * 10 + 3 * 7 * 10 * 30 == 9520


def test_layer_flops_formula_by_hand_when_attention_width_differs_from_hidden():
    shape = LMShape(layers=1, hidden=10, intermediate=30, kv_heads=2, head_dim=3, heads=5)  # H*d = 15 != D = 10
    n = 7
    assert shape.attention_width == 15
    # 2n*D*(H*d) + 2n*D*h_kv*d + 2n^2*(H*d) + 3n*D*D'
    assert layer_flops(shape, n) == 2 * 7 * 10 * 15 + 2 * 7 * 10 * 6 + 2 * 49 * 15 + 3 * 7 * 10 * 30 == 10710


def test_llava_ov_7b_vanilla_prefill_matches_paper():
    flops = prefill_flops(QWEN2_7B, n_visual=N_VISUAL_32_FRAMES, n_text=0)
    assert flops == 48_821_899_886_592.0  # exact MAC count
    assert abs(flops - 48.82e12) <= 0.01e12


def test_llava_ov_7b_fastv_k2_quarter_retention_matches_paper():
    flops = prefill_flops(QWEN2_7B, n_visual=N_VISUAL_32_FRAMES, n_text=0, retention=0.25, prune_layer=2)
    # 2 layers at 6272 tokens + 26 layers at 1568 tokens.
    assert flops == 13_446_307_381_248.0
    assert abs(flops - 13.45e12) <= 0.01e12
    ratio = flops_ratio(QWEN2_7B, N_VISUAL_32_FRAMES, 0, 0.25, 2)
    assert ratio == pytest.approx(13_446_307_381_248 / 48_821_899_886_592, rel=1e-12)
    assert ratio == pytest.approx(0.2754, abs=1e-4)


def test_text_tokens_are_counted_in_both_and_never_pruned():
    no_pruning = prefill_flops(QWEN2_7B, n_visual=100, n_text=50)
    assert no_pruning == 28 * layer_flops(lm_shape(QWEN2_7B), 150)
    pruned = prefill_flops(QWEN2_7B, n_visual=100, n_text=50, retention=0.1, prune_layer=0)
    assert pruned == 28 * layer_flops(lm_shape(QWEN2_7B), 10 + 50)
    assert flops_ratio(QWEN2_7B, 100, 50, 1.0, 2) == 1.0


def test_prune_layer_equal_to_layer_count_prunes_nothing():
    assert flops_ratio(QWEN2_7B, 1000, 10, 0.25, 28) == 1.0
    with pytest.raises(ValueError, match="prune_layer"):
        prefill_flops(QWEN2_7B, 1000, prune_layer=29)


@pytest.mark.parametrize(
    ("n_visual", "retention", "kept"),
    [
        (6272, 0.25, 1568),
        (4, 0.625, 3),  # 2.5 rounds half up to 3 (Python's round would give 2)
        (4, 0.375, 2),  # 1.5 -> 2
        (10, 0.01, 1),  # never fewer than one token
        (10, 1.0, 10),
        (3, 1 / 3, 1),
    ],
)
def test_kept_count_rounds_half_up(n_visual, retention, kept):
    assert kept_count(n_visual, retention) == kept


@pytest.mark.parametrize("retention", [0.0, -0.1, 1.01])
def test_kept_count_rejects_out_of_range_retention(retention):
    with pytest.raises(ValueError, match="retention"):
        kept_count(10, retention)


def _assert_largest_kept_within_budget(n_visual, n_text, budget, prune_layer):
    retention = retention_for_budget(QWEN2_7B, n_visual, n_text, budget, prune_layer)
    kept = kept_count(n_visual, retention)
    assert retention == kept / n_visual
    assert flops_ratio(QWEN2_7B, n_visual, n_text, retention, prune_layer) <= budget
    if kept < n_visual:  # one more token would overspend
        assert flops_ratio(QWEN2_7B, n_visual, n_text, (kept + 1) / n_visual, prune_layer) > budget


@settings(max_examples=60, deadline=None)
@given(
    budget=st.floats(min_value=0.09, max_value=1.0),
    prune_layer=st.sampled_from([0, 2]),
    n_text=st.sampled_from([0, 100]),
)
def test_retention_for_budget_is_the_largest_within_budget(budget, prune_layer, n_text):
    # 0.09 is above the prune_layer=2 floor (0.0716 with no text, 0.0838 with 100 text tokens).
    _assert_largest_kept_within_budget(N_VISUAL_32_FRAMES, n_text, budget, prune_layer)


@settings(max_examples=40, deadline=None)
@given(budget=st.floats(min_value=1e-4, max_value=1.0), n_visual=st.integers(1, 50), n_text=st.integers(0, 20))
def test_retention_for_budget_small_videos_at_layer_zero(budget, n_visual, n_text):
    if budget < min_flops_ratio(QWEN2_7B, n_visual, n_text, 0):
        with pytest.raises(ValueError, match="minimum FLOPs ratio"):
            retention_for_budget(QWEN2_7B, n_visual, n_text, budget, 0)
    else:
        _assert_largest_kept_within_budget(n_visual, n_text, budget, 0)


def test_retention_for_budget_known_values():
    assert retention_for_budget(QWEN2_7B, N_VISUAL_32_FRAMES, 0, 1.0, 2) == 1.0
    assert retention_for_budget(QWEN2_7B, N_VISUAL_32_FRAMES, 100, 1.0, 0) == 1.0
    # The FastV K=2 25% point costs 0.27542...; that budget gives back exactly 1568 tokens.
    budget = flops_ratio(QWEN2_7B, N_VISUAL_32_FRAMES, 0, 0.25, 2)
    assert retention_for_budget(QWEN2_7B, N_VISUAL_32_FRAMES, 0, budget, 2) == 0.25


def test_retention_for_budget_below_floor_names_the_minimum():
    floor = min_flops_ratio(QWEN2_7B, N_VISUAL_32_FRAMES, 0, 2)
    assert floor == pytest.approx(2 / 28, abs=1e-3)  # two full layers, then almost nothing
    with pytest.raises(ValueError, match=f"minimum FLOPs ratio {floor:.4f}"):
        retention_for_budget(QWEN2_7B, N_VISUAL_32_FRAMES, 0, 0.05, 2)
    with pytest.raises(ValueError, match="budget"):
        retention_for_budget(QWEN2_7B, N_VISUAL_32_FRAMES, 0, 1.5, 2)
    with pytest.raises(ValueError, match="minimum FLOPs ratio 1.0000"):
        retention_for_budget(QWEN2_7B, N_VISUAL_32_FRAMES, 0, 0.5, 28)


@pytest.mark.parametrize("n", [1, 57, 200])
def test_formula_is_half_of_flop_counter_on_eager_qwen2(n):
    # Eager attention: FlopCounterMode does not see CPU SDPA kernels, and eager materialises the full n x n
    # scores, which is what the 2n^2*D term counts. No lm_head: prefill_flops excludes it.
    config = Qwen2Config(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = Qwen2Model(config).eval()
    inputs_embeds = torch.randn(1, n, config.hidden_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(inputs_embeds=inputs_embeds)
    counted = counter.get_total_flops()
    expected = 2 * prefill_flops(config, n_visual=n, retention=1.0)
    assert counted == pytest.approx(expected, rel=1e-2)
    # In fact the match is exact even at these tiny widths: the counter counts 2 per MAC of mm/addmm/bmm only,
    # ignores the q/k/v biases of addmm (so the formula need not count them), and RMSNorm, SiLU, softmax and
    # rotary (an elementwise outer product in this transformers) are not matmuls. A transformers that builds
    # rotary frequencies with `@` would add at most n * head_dim here, so allow that and nothing else.
    assert 0 <= counted - expected <= n * lm_shape(config).head_dim


# --- Qwen2.5-VL (Qwen2 LM) and Qwen3-VL (Qwen3 LM: q/k RMSNorms, explicit head_dim) ---------------------------------


def test_lm_shape_reads_composite_qwen_vl_configs_and_their_text_configs():
    # transformers' defaults: Qwen2.5-VL's is the 72B LM, Qwen3-VL's a 32-layer 4096-wide one with 32 KV heads.
    qwen25 = LMShape(layers=80, hidden=8192, intermediate=29568, kv_heads=8, head_dim=128, heads=64)
    qwen3 = LMShape(layers=32, hidden=4096, intermediate=22016, kv_heads=32, head_dim=128, heads=32)
    assert lm_shape(Qwen2_5_VLConfig()) == lm_shape(Qwen2_5_VLTextConfig()) == qwen25
    assert lm_shape(Qwen3VLConfig()) == lm_shape(Qwen3VLTextConfig()) == qwen3


def test_published_qwen2_5_vl_7b_and_qwen3_vl_8b_shapes():
    qwen25_7b = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
        )
    )
    qwen3_8b = Qwen3VLConfig(
        text_config=dict(
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
        )
    )
    assert lm_shape(qwen25_7b) == LMShape(
        layers=28, hidden=3584, intermediate=18944, kv_heads=4, head_dim=128, heads=28
    )
    assert lm_shape(qwen3_8b) == LMShape(layers=36, hidden=4096, intermediate=12288, kv_heads=8, head_dim=128, heads=32)
    # Qwen2.5-VL-7B's LM has Qwen2-7B's shape, so LLaVA-OV-7B's 48.82e12 at 6272 tokens.
    assert prefill_flops(qwen25_7b, N_VISUAL_32_FRAMES) == 48_821_899_886_592.0
    # 36 * (2n*4096*4096 + 2n*4096*1024 + 2n^2*4096 + 3n*4096*12288) at n = 6272.
    assert prefill_flops(qwen3_8b, N_VISUAL_32_FRAMES) == 55_165_096_820_736.0
    # FastV K=2 at 25%: 2 layers at 6272 tokens, 34 at 1568.
    pruned = 2 * layer_flops(lm_shape(qwen3_8b), 6272) + 34 * layer_flops(lm_shape(qwen3_8b), 1568)
    assert flops_ratio(qwen3_8b, N_VISUAL_32_FRAMES, 0, 0.25, 2) == pytest.approx(
        pruned / 55_165_096_820_736, rel=1e-12
    )


# Qwen3-4B's LM (its config.json): H*d = 32*128 = 4096 != D = 2560, where the old 2nD^2 + 2n^2*D undercounts.
QWEN3_4B = Qwen3VLTextConfig(
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
)


def test_qwen3_4b_prefill_counts_the_attention_width_not_the_hidden_size():
    shape = lm_shape(QWEN3_4B)
    assert (shape.attention_width, shape.hidden) == (4096, 2560)
    flops = prefill_flops(QWEN3_4B, N_VISUAL_32_FRAMES)
    assert flops == 34_389_400_485_888.0
    n, d_model = N_VISUAL_32_FRAMES, 2560
    old = 36 * (2 * n * d_model**2 + 2 * n * d_model * 1024 + 2 * n * n * d_model + 3 * n * d_model * 9728)
    assert flops > 1.2 * old  # the H*d = D formula would miss over a sixth of the cost here


@settings(max_examples=40, deadline=None)
@given(
    budget=st.floats(min_value=0.09, max_value=1.0),
    prune_layer=st.sampled_from([0, 2]),
    n_text=st.sampled_from([0, 100]),
)
def test_retention_for_budget_is_the_largest_within_budget_when_attention_width_differs(budget, prune_layer, n_text):
    # 0.09 is above the prune_layer=2 floor (2/36 plus a little).
    retention = retention_for_budget(QWEN3_4B, N_VISUAL_32_FRAMES, n_text, budget, prune_layer)
    kept = kept_count(N_VISUAL_32_FRAMES, retention)
    assert flops_ratio(QWEN3_4B, N_VISUAL_32_FRAMES, n_text, retention, prune_layer) <= budget
    if kept < N_VISUAL_32_FRAMES:
        assert flops_ratio(QWEN3_4B, N_VISUAL_32_FRAMES, n_text, (kept + 1) / N_VISUAL_32_FRAMES, prune_layer) > budget


def test_retention_for_budget_round_trips_at_qwen3_4b_shape():
    budget = flops_ratio(QWEN3_4B, N_VISUAL_32_FRAMES, 64, 0.25, 2)
    assert retention_for_budget(QWEN3_4B, N_VISUAL_32_FRAMES, 64, budget, 2) == 0.25


def _tiny_qwen_vl_text_model(kind):
    """3 eager layers, D=64, 4 query heads, 2 KV heads; d=16 (H*d = D) for Qwen2.5-VL, d=32 (H*d = 128) for Qwen3-VL.
    mrope_section sums to d/2, as the real models' does."""
    common = dict(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        attn_implementation="eager",
    )
    if kind == "qwen2.5-vl":
        config = Qwen2_5_VLTextConfig(
            **common,
            bos_token_id=None,
            eos_token_id=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        )
        model_class = Qwen2_5_VLTextModel
    else:
        config = Qwen3VLTextConfig(
            **common,
            head_dim=32,
            rope_parameters={"rope_type": "default", "rope_theta": 5e5, "mrope_section": [8, 4, 4]},
        )
        model_class = Qwen3VLTextModel
    torch.manual_seed(0)
    return model_class(config).eval()


def _mrope_positions(n):
    return torch.arange(n).view(1, 1, n).expand(3, 1, n)  # [3, B, n]: temporal, height, width


@pytest.mark.parametrize("kind", ["qwen2.5-vl", "qwen3-vl"])
@pytest.mark.parametrize("n", [1, 57, 200])
def test_formula_is_half_of_flop_counter_on_eager_qwen_vl_text_models(kind, n):
    model = _tiny_qwen_vl_text_model(kind)
    config = model.config
    shape = lm_shape(config)
    assert shape.attention_width == (64 if kind == "qwen2.5-vl" else 128)
    inputs_embeds = torch.randn(1, n, config.hidden_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(inputs_embeds=inputs_embeds, position_ids=_mrope_positions(n), use_cache=False)
    counted = counter.get_total_flops()
    expected = 2 * prefill_flops(config, n_visual=n)
    assert counted == pytest.approx(expected, rel=1e-2)
    # Exact: the counter sees only the mm/addmm/bmm of the projections, QK^T and AV (biases, RMSNorms -- Qwen3's
    # q/k norms included --, SiLU, softmax and M-RoPE are elementwise and not counted).
    assert counted == expected
    if kind == "qwen3-vl":  # the old 2nD^2 + 2nD*h_kv*d + 2n^2*D + 3nDD' undercounts here
        d_model, kv_width, d_ff = shape.hidden, shape.kv_heads * shape.head_dim, shape.intermediate
        old = 2 * n * d_model**2 + 2 * n * d_model * kv_width + 2 * n * n * d_model + 3 * n * d_model * d_ff
        assert counted > 2 * shape.layers * old


@pytest.mark.parametrize("kind", ["qwen2.5-vl", "qwen3-vl"])
@pytest.mark.parametrize(("n_tokens", "n_query"), [(57, 9), (200, 1)])
def test_scoring_flops_is_half_of_flop_counter_on_qwen_vl_attention_scoring(kind, n_tokens, n_query):
    # Attention scoring as `score: attention` does it, on a real layer: queries for the last n_query rows, keys for
    # all rows, each through the model's own q/k RMSNorms (Qwen3) and M-RoPE, GQA logits without repeating keys.
    model = _tiny_qwen_vl_text_model(kind)
    layer, attn = model.layers[1], model.layers[1].self_attn
    hidden = torch.randn(1, n_tokens, model.config.hidden_size)
    cos, sin = (t.unsqueeze(1) for t in model.rotary_emb(hidden, _mrope_positions(n_tokens)))

    def rotate(x, cos, sin):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    q_norm = getattr(attn, "q_norm", torch.nn.Identity())
    k_norm = getattr(attn, "k_norm", torch.nn.Identity())
    head_dim = attn.head_dim
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        normed = layer.input_layernorm(hidden)
        query = q_norm(attn.q_proj(normed[:, -n_query:]).view(1, n_query, -1, head_dim)).transpose(1, 2)
        key = k_norm(attn.k_proj(normed).view(1, n_tokens, -1, head_dim)).transpose(1, 2)
        query = rotate(query, cos[:, :, -n_query:], sin[:, :, -n_query:])
        key = rotate(key, cos, sin)
        kv_heads = key.shape[1]
        query = query.reshape(1, kv_heads, -1, n_query, head_dim)
        logits = torch.einsum("bkgtd,bkld->bkgtl", query, key) * attn.scaling
        logits.softmax(-1)
    assert logits.shape == (1, 2, 2, n_query, n_tokens)
    assert counter.get_total_flops() == 2 * scoring_flops(model.config, n_tokens, n_query)


def test_mixture_of_experts_layouts_it_cannot_read_are_rejected():
    """Qwen3.5-MoE's layout (and Qwen3-VL-MoE's, the same fields) is read; others are refused in one line."""
    shape = lm_shape(Qwen3VLMoeConfig())
    assert shape.moe is not None and (shape.moe.experts, shape.moe.expert_intermediate) == (60, 1408)
    assert shape.intermediate == 0 and shape.moe.shared_intermediate == 0
    with pytest.raises(ValueError, match=r"^MixtralConfig is a Mixture-of-Experts .*num_local_experts=8.* of a layout "
                                         r"adatp.flops does not count"):
        retention_for_budget(MixtralConfig(), 100, 0, 0.5, 2)
    sparse_every_other = Qwen3VLMoeTextConfig(decoder_sparse_step=2)
    with pytest.raises(ValueError, match=r"^Qwen3VLMoeTextConfig is a Mixture-of-Experts"):
        lm_shape(sparse_every_other)
    # A dense config carrying a zero expert count is still dense.
    zero_experts = Qwen2Config(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4)
    zero_experts.num_experts = 0
    assert lm_shape(zero_experts).layers == 2
