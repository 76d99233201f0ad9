"""Prefix cache (adatp.prefix): a suffix run from an encoded prefix equals the full pruned prefill.

Several questions of one video, left-padded into one batch, at prune_layer 1 and 2, on tiny models of every family
(LLaVA-OneVision: 1D RoPE and a trailing image_newline; Qwen2.5-VL: M-RoPE; Qwen3-VL: M-RoPE, timestamps and
deepstack additions). Same kept tokens, same answers, logits equal within float32 tolerance.
"""

import pytest
import tiny
import torch
from families import FAMILIES, QWEN_END, _pad_rows, _text

import adatp
from adatp.config import AdaTPConfig

QUESTION_LENGTHS = (5, 9, 7)


def _one_video(family, frames: int, seed: int):
    """(prefix ids [P], suffix bodies [n_i], the video's model inputs for batch size b -> dict)."""
    generator = torch.Generator().manual_seed(seed)
    questions = [_text(generator, n) for n in QUESTION_LENGTHS]
    if family.name == "llava_onevision":
        video = torch.full((frames * family.tokens_per_frame + 1,), tiny.VIDEO_TOKEN)
        prefix = torch.cat([_text(generator, 3), video])
        pixels = torch.randn(1, frames, 3, 32, 32, generator=generator)
        return prefix, questions, lambda b: {"pixel_values_videos": pixels.repeat(b, 1, 1, 1, 1)}
    ids, _ = family.video_tokens(generator, frames)
    assert ids[-1] == QWEN_END  # the video ends at its last pad token; vision_end belongs to the question
    prefix = torch.cat([_text(generator, 3), ids[:-1]])
    questions = [torch.cat([torch.tensor([QWEN_END]), question]) for question in questions]
    pixels, grid = family.pixels(generator, frames)
    return prefix, questions, lambda b: {"pixel_values_videos": pixels.repeat(b, 1),
                                         "video_grid_thw": grid.repeat(b, 1)}


def _types(family, input_ids):
    if family.name == "llava_onevision":
        return {}
    return {"mm_token_type_ids": (input_ids == family.video_token).long() * 2}


@pytest.mark.parametrize("prune_layer", [1, 2])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_suffixes_from_a_prefix_equal_the_full_pruned_prefill(name, prune_layer):
    family = FAMILIES[name]
    model = family.model(layers=4, seed=3)
    prefix_ids, questions, video = _one_video(family, frames=4, seed=5)
    config = AdaTPConfig(retention=0.4, prune_layer=prune_layer, score="attention", tau_s=0.5, tau_t=0.3,
                         gamma_cap=0.5, alpha_boost=2.0)
    if name.startswith("qwen3_5"):  # layer 0 is Gated DeltaNet, whose states a prefix does not store
        assert adatp.prefix.supports(config) and not adatp.prefix.supports(config, model)
        if prune_layer == 2:
            with adatp.pruning(model, config), pytest.raises(ValueError, match="no linear-attention layer below"):
                adatp.encode_prefix(model, input_ids=prefix_ids[None], **video(1),
                                    **_types(family, prefix_ids[None]))
        return
    full = _pad_rows([torch.cat([prefix_ids, question]) for question in questions])
    suffix = _pad_rows(questions)
    with torch.no_grad(), adatp.pruning(model, config) as state:
        expected = model(**full, **_types(family, full["input_ids"]), **video(len(questions)),
                         logits_to_keep=1, use_cache=False).logits[:, -1]
        expected_kept = state.kept_indices.clone()
        prefix_inputs = {"input_ids": prefix_ids[None], **video(1)}
        prefix = adatp.encode_prefix(model, **prefix_inputs, **_types(family, prefix_ids[None]))
        with adatp.use_prefix(model, prefix):
            got = model(**suffix, position_ids=adatp.suffix_position_ids(prefix, suffix["attention_mask"]),
                        logits_to_keep=1, use_cache=False).logits[:, -1]
        got_kept = state.kept_indices
    assert prefix.length == len(prefix_ids) and prefix.prune_layer == prune_layer
    assert prefix.frames == 4 and prefix.per_frame == family.tokens_per_frame
    assert torch.equal(got_kept, expected_kept)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
    # A different question picks different tokens: the selection really reads the question's attention.
    assert not torch.equal(got_kept[0], got_kept[1])


def test_prefix_round_trips_through_its_tensors_and_counts_its_bytes():
    family = FAMILIES["qwen3_vl"]
    model = family.model(layers=4, seed=3)
    prefix_ids, _, video = _one_video(family, frames=3, seed=7)
    config = AdaTPConfig(retention=0.5, prune_layer=1, score="attention")
    with torch.no_grad(), adatp.pruning(model, config):
        prefix = adatp.encode_prefix(model, input_ids=prefix_ids[None], **video(1), **_types(family, prefix_ids[None]))
    tensors = prefix.tensors()
    rebuilt = adatp.Prefix.from_tensors(tensors)
    assert all(torch.equal(getattr(rebuilt, key), value) for key, value in tensors.items())
    assert (rebuilt.frames, rebuilt.per_frame) == (prefix.frames, prefix.per_frame)
    text_config = model.config.text_config
    kv = 2 * 1 * text_config.num_key_value_heads * text_config.head_dim  # K = 1 layer
    per_token = kv + text_config.hidden_size  # keys + values of layers < K, and the layer-K input
    deepstack = (len(model.config.vision_config.deepstack_visual_indexes) - 1) * 3 * family.tokens_per_frame
    expected = 4 * (per_token * len(prefix_ids) + deepstack * text_config.hidden_size
                    + 3 * text_config.hidden_size)  # float32, plus frame features
    expected += 8 * (3 * len(prefix_ids) + 3 + 3 * family.tokens_per_frame)  # int64: 3D positions, next, columns
    assert prefix.nbytes() == expected


def test_prefix_refuses_configs_it_cannot_serve():
    family = FAMILIES["llava_onevision"]
    model = family.model(layers=4, seed=3)
    prefix_ids, _, video = _one_video(family, frames=2, seed=1)
    for config in (AdaTPConfig(prune_layer=0, score="norm"), AdaTPConfig(prune_layer=2, score="norm"),
                   AdaTPConfig(prune_layer=2, positions="renumber")):
        assert not adatp.prefix.supports(config)
        with adatp.pruning(model, config), pytest.raises(ValueError, match="encode_prefix needs"):
            adatp.encode_prefix(model, input_ids=prefix_ids[None], **video(1))
    with adatp.pruning(model, AdaTPConfig(prune_layer=2, score="attention")):
        prefix = adatp.encode_prefix(model, input_ids=prefix_ids[None], **video(1))
    with adatp.pruning(model, AdaTPConfig(prune_layer=1, score="attention")):
        with pytest.raises(ValueError, match="encoded for prune_layer 2"), adatp.use_prefix(model, prefix):
            pass


def test_prefixed_flops_is_half_of_flop_counter_on_a_cached_question():
    """adatp.flops.prefixed_flops against torch's FlopCounterMode on the real cached path (eager attention, which the
    counter sees on CPU), plus the cached scoring (the question's queries against every key; no key projection)
    and the one row of logits."""
    from torch.utils.flop_counter import FlopCounterMode

    from adatp.flops import kept_count, lm_shape, prefixed_flops

    family = FAMILIES["llava_onevision"]
    model = tiny.tiny_model(layers=4, attn="eager", seed=3)
    prefix_ids, questions, video = _one_video(family, frames=4, seed=5)
    question = questions[1][None]
    mask = torch.ones_like(question)
    with torch.no_grad(), adatp.pruning(model, AdaTPConfig(retention=0.4, prune_layer=2, score="attention")):
        prefix = adatp.encode_prefix(model, input_ids=prefix_ids[None], **video(1))
        with adatp.use_prefix(model, prefix), FlopCounterMode(display=False) as counter:
            model(input_ids=question, attention_mask=mask, position_ids=adatp.suffix_position_ids(prefix, mask),
                  logits_to_keep=1, use_cache=False)
    text = model.config.text_config
    shape = lm_shape(text)
    n_visual, n_question = 4 * family.tokens_per_frame, question.shape[1]
    n_prefix = len(prefix_ids)
    width = shape.attention_width
    scoring = n_question * shape.hidden * width + n_question * (n_prefix + n_question) * width
    logits = shape.hidden * text.vocab_size
    expected = 2 * (prefixed_flops(text, n_visual, n_prefix - n_visual, n_question, 0.4, 2) + scoring + logits)
    counted = counter.get_total_flops()
    # Exact up to rotary tables built with `@` (at most one head_dim per position, for the two rotary calls).
    rows = n_question + kept_count(n_visual, 0.4) + n_prefix - n_visual + n_question
    assert 0 <= counted - expected <= rows * shape.head_dim, (counted, expected)
