"""AdaTP on tiny Qwen2.5-VL, Qwen3-VL, Qwen3.5 and Qwen3.5-MoE built from config: exactness, gathered-embedding
equivalence with 3D positions and deepstack, per-layer lengths, KV consistency, FLOPs, and what the adapters
refuse. The Qwen3.5 models are hybrid (Gated DeltaNet, full attention every 2nd layer here)."""

import pytest
import torch
from families import FAMILIES
from torch.utils.flop_counter import FlopCounterMode

import adatp
from adatp.flops import kept_count, prefill_flops, scoring_flops
from adatp.models import SUPPORTED, family_of

LAYERS = 4
FRAMES = 3
QWEN = ["qwen2_5_vl", "qwen3_vl", "qwen3_5", "qwen3_5_moe"]


@pytest.fixture(scope="module", params=QWEN)
def family(request):
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def model(family):
    return family.model(LAYERS)


def config_for(prune_layer, **changes):
    changes.setdefault("score", "attention" if prune_layer > 0 else "norm")
    return adatp.AdaTPConfig(prune_layer=prune_layer, **changes)


def test_dispatch_names_the_family(family, model):
    assert family_of(model) == family.name == family_of(model.model)
    assert adatp.enable(model, config_for(2)).adapter.family == family.name
    adatp.disable(model)


@pytest.mark.parametrize("prune_layer", [0, 2])
@pytest.mark.parametrize("pads", [(0,), (0, 5, 2)])
def test_full_retention_is_identical(family, model, prune_layer, pads):
    inputs = family.video_batch(len(pads), frames=FRAMES, pads=pads, seed=1)
    greedy = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        reference = model(**inputs).logits
        generated = model.generate(**inputs, **greedy)
        with adatp.pruning(model, config_for(prune_layer, retention=1.0)) as state:
            pruned = model(**inputs).logits
            assert state.kept_indices.shape == (len(pads), family.visual(FRAMES))
            pruned_generated = model.generate(**inputs, **greedy)
    assert torch.equal(reference, pruned)
    assert torch.equal(generated.sequences, pruned_generated.sequences)
    for step, step_pruned in zip(generated.logits, pruned_generated.logits, strict=True):
        assert torch.equal(step, step_pruned)


def language_model_inputs(model, inputs):
    """What the stock multimodal model hands its language model: embeddings with video features scattered in, 3D
    positions, and (Qwen3-VL) the visual position mask and deepstack features."""
    seen = {}

    def hook(module, args, kwargs):
        seen.update(kwargs)

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("method", ["adatp", "uniform", "fastv", "random"])
def test_prune_layer_zero_equals_gathered_embeddings(family, model, method):
    """With prune_layer 0, the pruned forward is the stock language model run on the kept embeddings, with their
    original 3D positions (and their own deepstack features), hand-gathered here."""
    inputs = family.video_batch(3, frames=FRAMES, pads=(0, 4, 1), seed=3)
    config = config_for(0, retention=0.3, method=method, score="text_sim", tau_s=0.0)
    stock = language_model_inputs(model, inputs)
    with torch.no_grad(), adatp.pruning(model, config) as state:
        pruned = model(**inputs).logits
        columns, valid = state.plan.keep_columns, state.plan.slot_valid
    assert valid.all()  # one video per row: every row keeps the same count, no padding slots
    embeds, positions = stock["inputs_embeds"], stock["position_ids"]
    assert positions.shape[0] == 3 and positions.dim() == 3  # the stock model's M-RoPE ids
    gathered = dict(
        inputs_embeds=embeds.gather(1, columns[..., None].expand(-1, -1, embeds.shape[-1])),
        position_ids=positions.gather(2, columns.expand(3, -1, -1)),
        attention_mask=inputs["attention_mask"].gather(1, columns),
    )
    if stock.get("deepstack_visual_embeds") is not None:  # Qwen3-VL: the kept visual tokens' own features
        visual = stock["visual_pos_masks"]
        kept_visual = visual.gather(1, columns)
        dense = [torch.zeros_like(embeds).masked_scatter(visual[..., None], level)
                 for level in stock["deepstack_visual_embeds"]]
        gathered.update(visual_pos_masks=kept_visual, deepstack_visual_embeds=[
            level.gather(1, columns[..., None].expand(-1, -1, embeds.shape[-1]))[kept_visual] for level in dense])
    with torch.no_grad():
        hidden = model.model.language_model(**gathered).last_hidden_state
        expected = model.lm_head(hidden)
    assert pruned.shape == expected.shape
    assert torch.allclose(pruned, expected, atol=1e-5, rtol=1e-5)
    # Pruning changed the answer's logits: the test compares something that depends on which tokens are kept.
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits[:, -1], pruned[:, -1], atol=1e-3)


@pytest.mark.parametrize("prune_layer", [0, 1, 2, 3])
def test_sequence_length_per_layer(family, model, prune_layer):
    inputs = family.video_batch(2, frames=FRAMES, pads=(0, 3), seed=4)
    length = inputs["input_ids"].shape[1]
    n_visual = family.visual(FRAMES)
    kept = kept_count(n_visual, 0.35)
    if prune_layer in (1, 3) and family.name.startswith("qwen3_5"):  # layers 0 and 2 are linear attention
        with pytest.raises(adatp.ConfigError, match=r"config.prune_layer: \d does not follow a full-attention layer "
                                                    r".*; valid: 0, 2$"):
            adatp.enable(model, config_for(prune_layer, retention=0.35))
        return
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
             for layer in model.model.language_model.layers]
    try:
        with torch.no_grad(), adatp.pruning(model, config_for(prune_layer, retention=0.35)):
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == [length] * prune_layer + [length - n_visual + kept] * (LAYERS - prune_layer)


@pytest.mark.parametrize("prune_layer", [0, 2])
def test_decoding_matches_full_pruned_forward(family, model, prune_layer):
    """Greedy generate with the KV cache (positions from the stored rope_deltas) = a cache-free pruned forward over
    prompt + generated tokens (positions from get_rope_index over the whole sequence)."""
    inputs = family.video_batch(2, frames=FRAMES, pads=(0, 3), seed=5)
    config = config_for(prune_layer, retention=0.3, method="uniform")
    with torch.no_grad(), adatp.pruning(model, config):
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        new = torch.ones(2, 4, dtype=torch.long)
        full = model(input_ids=out.sequences[:, :-1], attention_mask=torch.cat([inputs["attention_mask"], new], 1),
                     mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"], 0 * new], 1),
                     pixel_values_videos=inputs["pixel_values_videos"], video_grid_thw=inputs["video_grid_thw"],
                     use_cache=False).logits
        cache = out.past_key_values
    held = [layer.keys.shape[2] for layer in cache.layers[prune_layer:] if hasattr(layer, "keys")]
    assert held and held == [full.shape[1]] * len(held)
    for step in range(5):  # logits cover the kept sequence, whose last 5 rows are the prompt end + 4 new tokens
        assert torch.allclose(out.logits[step], full[:, step - 5], atol=1e-4, rtol=1e-4), step


def test_videos_of_different_grids_in_one_row(family, model):
    """Two videos of different lengths in one row: selected per shape, each to its own kept count."""
    batch, rows, frames = family.mixed_rows(FRAMES)
    with torch.no_grad(), adatp.pruning(model, config_for(2, retention=0.3)) as state:
        model(**rows[0])
        kept = state.kept_indices
    assert isinstance(kept, tuple) and [len(video) for video in kept] == [
        kept_count(family.visual(n), 0.3) for n in frames[:2]]
    assert all(int(video.max()) < family.visual(n) for video, n in zip(kept, frames, strict=False))


def count_language_model(model, inputs):
    """FLOPs the counter sees in the LM, counted with grad mode on: on transformers 5.25 the counter's module tracker
    fails inside no_grad on Qwen3.5's conv kernel module (the stock model too). Nothing runs backward."""
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs, use_cache=False)
    name = f"{type(model).__name__}.model.language_model"
    return sum(counter.get_flop_counts()[name].values())


@pytest.mark.parametrize("prune_layer", [0, 2])
def test_flop_counter_matches_prefill_flops(family, prune_layer):
    """The counter on the eager LM = 2 x (prefill_flops + attention-scoring overhead), exactly; and within 1% of
    2 x prefill_flops alone once the LM is wide enough for the few-row scoring to be negligible. Vision start/end
    and Qwen3-VL's timestamps count as text."""
    frames, question_len, retention = 8, 40, 0.3
    inputs = family.video_batch(1, frames=frames, seed=7, question_len=question_len)
    length = inputs["input_ids"].shape[1]
    n_visual = family.visual(frames)
    config = config_for(prune_layer, retention=retention)
    for hidden, layers, exact in [(64, LAYERS, True), (512, 24, False)]:
        model = family.model(layers, attn="eager", hidden=hidden, intermediate=4 * hidden)
        with torch.no_grad(), adatp.pruning(model, config):
            counted = count_language_model(model, inputs)
        text_config = model.config.text_config
        expected = prefill_flops(text_config, n_visual, length - n_visual, retention=retention,
                                 prune_layer=prune_layer)
        query = question_len + 1  # the text after the last video token: vision_end, then the question
        overhead = scoring_flops(text_config, length, query) if prune_layer > 0 else 0.0
        if exact:
            assert counted == 2 * (expected + overhead)
        else:
            assert counted == pytest.approx(2 * expected, rel=0.01)


@pytest.mark.parametrize(("changes", "message"), [
    (dict(positions="renumber"), r"config.positions: 'renumber' needs 1D RoPE"),
    (dict(relevance="siglip", siglip_path="/nonexistent"), r"config.relevance: 'siglip'"),
])
def test_options_the_adapter_cannot_honour_are_config_errors(model, changes, message):
    with pytest.raises(adatp.ConfigError, match=message):
        adatp.enable(model, config_for(2, **changes))
    assert adatp.state_of(model) is None


def test_unsupported_model_names_the_supported_classes():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    text_only = Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
    with pytest.raises(TypeError) as error:
        adatp.enable(text_only, adatp.AdaTPConfig())
    assert all(name in str(error.value) for name in SUPPORTED) and "Qwen2ForCausalLM" in str(error.value)
    assert len(SUPPORTED) == 5
