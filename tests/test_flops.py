"""FLOPs: paper numbers for LLaVA-OV-7B, budget inversion, and agreement with torch's FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, Qwen2Config, Qwen2Model

from adatp.flops import (
    LMShape,
    flops_ratio,
    kept_count,
    layer_flops,
    lm_shape,
    min_flops_ratio,
    prefill_flops,
    retention_for_budget,
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
    shape = LMShape(layers=1, hidden=10, intermediate=30, kv_heads=2, head_dim=3, heads=5)
    n = 7
    # 2nD^2 + 2nD*h_kv*d + 2n^2*D + 3nDD'
    assert layer_flops(shape, n) == 2 * 7 * 100 + 2 * 7 * 10 * 6 + 2 * 49 * 10 + 3 * 7 * 10 * 30 == 9520


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
