"""AdaTP on a tiny LLaVA-OneVision built from config: exactness, gathered-embedding equivalence, KV consistency."""

import pytest
import torch
from tiny import TOKENS_PER_FRAME, tiny_model, video_batch
from torch.utils.flop_counter import FlopCounterMode

import adatp
from adatp.flops import kept_count, prefill_flops, scoring_flops

LAYERS = 4


@pytest.fixture(scope="module")
def model():
    return tiny_model(LAYERS)


def config_for(prune_layer, **changes):
    changes.setdefault("score", "attention" if prune_layer > 0 else "norm")
    return adatp.AdaTPConfig(prune_layer=prune_layer, **changes)


@pytest.mark.parametrize("prune_layer", [0, 2])
@pytest.mark.parametrize("pads", [(0,), (0, 5, 2)])
def test_full_retention_is_identical(model, prune_layer, pads):
    inputs = video_batch(len(pads), pads=pads, seed=1)
    with torch.no_grad():
        reference = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                   return_dict_in_generate=True)
        with adatp.pruning(model, config_for(prune_layer, retention=1.0)) as state:
            pruned = model(**inputs).logits
            assert state.kept_indices.shape[1] == 6 * TOKENS_PER_FRAME
            pruned_generated = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                              return_dict_in_generate=True)
    assert torch.equal(reference, pruned)
    assert torch.equal(generated.sequences, pruned_generated.sequences)
    for step, step_pruned in zip(generated.logits, pruned_generated.logits, strict=True):
        assert torch.equal(step, step_pruned)


def test_disable_restores_model(model):
    inputs = video_batch(1, seed=2)
    with torch.no_grad():
        reference = model(**inputs).logits
        with adatp.pruning(model, config_for(2, retention=0.2)):
            pruned = model(**inputs).logits
        after = model(**inputs).logits
    assert pruned.shape[1] < reference.shape[1]  # logits come for the kept sequence only
    assert not torch.allclose(reference[:, -1], pruned[:, -1])
    assert torch.equal(reference, after)
    assert "forward" not in vars(model.model.language_model)
    assert not {"forward", "generate", "create_masks_for_generate"} & set(vars(model))


def test_a_deep_copy_of_an_enabled_model_generates_with_its_own_weights():
    import copy

    model = tiny_model(LAYERS)
    inputs = video_batch(1, seed=2)
    adatp.enable(model, config_for(2, retention=0.3))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.lm_head.weight[7] += 100.0  # the copy now always answers token 7
        ours = model.generate(**inputs, max_new_tokens=3, do_sample=False)[0, -3:]
        theirs = twin.generate(**inputs, max_new_tokens=3, do_sample=False)[0, -3:]
    assert theirs.tolist() == [7, 7, 7] and ours.tolist() != [7, 7, 7]
    assert adatp.state_of(twin).kept_indices is not None and adatp.state_of(twin) is not adatp.state_of(model)
    # Turning the copy off leaves the original on: its own video hook stays, and it still prunes.
    adatp.disable(twin)
    assert adatp.state_of(twin) is None and len(twin.model._forward_pre_hooks) == 0
    assert len(model.model._forward_pre_hooks) == 1
    adatp.state_of(model).kept_indices = None
    with torch.no_grad():
        model(**inputs)
    assert adatp.state_of(model).kept_indices is not None
    adatp.disable(model)


def merged_embeddings(model, inputs):
    """The LM input embeddings with video features scattered in, as LlavaOnevisionModel builds them."""
    inner = model.model
    embeds = inner.get_input_embeddings()(inputs["input_ids"])
    video = inner.get_video_features(inputs["pixel_values_videos"], vision_feature_layer=-1,
                                     vision_feature_select_strategy="full").pooler_output
    mask = (inputs["input_ids"] == model.config.video_token_id)[..., None]
    return embeds.masked_scatter(mask, video.flatten(0, 1).to(embeds.dtype)), mask[..., 0]


@pytest.mark.parametrize("method", ["adatp", "uniform", "fastv", "random", "adatp_random_segments"])
def test_prune_layer_zero_equals_gathered_embeddings(model, method):
    inputs = video_batch(3, pads=(0, 4, 1), seed=3)
    config = config_for(0, retention=0.3, method=method, score="text_sim", tau_s=0.0)
    with torch.no_grad():
        with adatp.pruning(model, config) as state:
            pruned = model(**inputs).logits
            kept = state.kept_indices
        embeds, video_mask = merged_embeddings(model, inputs)
        batch, length = inputs["input_ids"].shape
        video_columns = video_mask.nonzero()[:, 1].view(batch, -1)
        keep = torch.ones(batch, length, dtype=torch.bool)
        keep[torch.arange(batch)[:, None], video_columns[:, :-1]] = False
        keep[torch.arange(batch)[:, None], video_columns[:, :-1].gather(1, kept)] = True
        columns = keep.nonzero()[:, 1].view(batch, -1)
        positions = torch.arange(length).expand(batch, -1).gather(1, columns)
        hidden = model.model.language_model(
            inputs_embeds=embeds.gather(1, columns[..., None].expand(-1, -1, embeds.shape[-1])),
            attention_mask=inputs["attention_mask"].gather(1, columns),
            position_ids=positions,
        ).last_hidden_state
        expected = model.lm_head(hidden)
    assert pruned.shape == expected.shape
    assert torch.allclose(pruned, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prune_layer", [0, 1, 2, 3])
def test_sequence_length_per_layer(model, prune_layer):
    inputs = video_batch(2, pads=(0, 3), frames=5, seed=4)
    length = inputs["input_ids"].shape[1]
    n_visual = 5 * TOKENS_PER_FRAME
    kept = kept_count(n_visual, 0.35)
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
             for layer in model.model.language_model.layers]
    try:
        with torch.no_grad(), adatp.pruning(model, config_for(prune_layer, retention=0.35)):
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    expected = [length] * prune_layer + [length - n_visual + kept] * (LAYERS - prune_layer)
    assert seen == expected


@pytest.mark.parametrize("prune_layer", [0, 2])
@pytest.mark.parametrize("positions", ["original", "renumber"])
def test_decoding_matches_full_pruned_forward(model, prune_layer, positions):
    """Greedy generate with the KV cache = a cache-free pruned forward over prompt + generated tokens."""
    inputs = video_batch(2, pads=(0, 3), seed=5)
    config = config_for(prune_layer, retention=0.3, method="uniform", positions=positions)
    with torch.no_grad(), adatp.pruning(model, config):
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        sequences = out.sequences
        mask = torch.cat([inputs["attention_mask"], torch.ones(2, 4, dtype=torch.long)], dim=1)
        positions_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        full = model(input_ids=sequences[:, :-1], attention_mask=mask, position_ids=positions_ids,
                     pixel_values_videos=inputs["pixel_values_videos"], use_cache=False).logits
    for step in range(5):  # logits cover the kept sequence, whose last 5 rows are the prompt end + 4 new tokens
        assert torch.allclose(out.logits[step], full[:, step - 5], atol=1e-4, rtol=1e-4), step


def test_attention_scores_match_eager_attention_weights():
    """The few-row attention scores equal the eager attention map of layer K-1 averaged over heads and rows."""
    model = tiny_model(LAYERS, attn="eager")
    inputs = video_batch(2, pads=(0, 2), seed=6)
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
        weights = out.attentions[1]  # layer K-1 = 1 for prune_layer 2, [B, H, L, L]
        with adatp.pruning(model, config_for(2, method="fastv", retention=0.25)) as state:
            model(**inputs)
    video = inputs["input_ids"] == model.config.video_token_id
    batch, length = video.shape
    columns = video.nonzero()[:, 1].view(batch, -1)
    rows = torch.arange(length)[None] > columns[:, -1:]
    for b in range(batch):
        per_key = weights[b][:, rows[b]].mean(dim=(0, 1))
        scores = per_key[columns[b, :-1]]
        expected = scores.topk(state.kept_indices.shape[1]).indices.sort().values
        assert torch.equal(expected, state.kept_indices[b])


def count_language_model(model, inputs):
    with FlopCounterMode(display=False) as counter:
        model(**inputs, use_cache=False)
    return sum(counter.get_flop_counts()["LlavaOnevisionForConditionalGeneration.model.language_model"].values())


@pytest.mark.parametrize("prune_layer", [0, 2])
def test_flop_counter_matches_prefill_flops(prune_layer):
    """The counter on the eager LM = 2 x (prefill_flops + attention-scoring overhead), exactly; and within 1% of
    2 x prefill_flops alone once the LM is wide enough for the few-row scoring to be negligible."""
    frames, question_len, retention = 12, 40, 0.3
    inputs = video_batch(1, frames=frames, seed=7, question_len=question_len)
    length = inputs["input_ids"].shape[1]
    n_visual = frames * TOKENS_PER_FRAME
    n_text = length - n_visual
    config = config_for(prune_layer, retention=retention)
    for hidden, layers, exact in [(64, LAYERS, True), (512, 24, False)]:
        model = tiny_model(layers, attn="eager", hidden=hidden, intermediate=4 * hidden)
        with torch.no_grad(), adatp.pruning(model, config):
            counted = count_language_model(model, inputs)
        text_config = model.config.text_config
        expected = prefill_flops(text_config, n_visual, n_text, retention=retention, prune_layer=prune_layer)
        overhead = scoring_flops(text_config, length, question_len) if prune_layer > 0 else 0.0
        if exact:
            assert counted == 2 * (expected + overhead)
        else:
            assert counted == pytest.approx(2 * expected, rel=0.01)


def test_scoring_overhead_is_negligible_at_7b_shape():
    from transformers import Qwen2Config

    config = Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4)
    pruned = prefill_flops(config, 6272, 64, retention=0.25, prune_layer=2)
    assert scoring_flops(config, 6272 + 64, 64) / pruned < 2e-3


def test_prune_layer_beyond_the_model_is_a_config_error(model):
    with pytest.raises(adatp.ConfigError, match=r"config.prune_layer: must be below the language model's 4 layers"):
        adatp.enable(model, config_for(4))
    assert adatp.state_of(model) is None


def test_transformers_compile_checks_hold_at_full_retention():
    """transformers' own LLaVA-OV checks `test_generate_compile_model_forward_fullgraph` and
    `test_static_cache_no_recompile_with_smaller_length`, as they run them (static cache, `CompileConfig(fullgraph=True,
    dynamic=False)`, the default inductor backend, two input sets of one shape, then a shorter prompt), with AdaTP at
    retention 1.0: the same tokens as the eager stock model and no recompilation. A retention-1.0 prefill prunes
    nothing, so its cache carries no plan and the decode steps get the stock model's static 4D masks."""
    from transformers import CompileConfig

    model = tiny_model(LAYERS)
    batch = video_batch(4, frames=3, seed=3)
    sets = [{key: value[:2] for key, value in batch.items()}, {key: value[2:] for key, value in batch.items()}]
    shorter = video_batch(2, frames=3, seed=4, question_len=4)
    compile_config = CompileConfig(fullgraph=True, dynamic=False)
    compile_config._compile_all_devices = True  # as transformers' test does on CPU
    greedy = dict(do_sample=False, max_new_tokens=5)
    with torch.no_grad():
        eager = [model.generate(**inputs, **greedy) for inputs in (*sets, shorter)]
        with adatp.pruning(model, config_for(2, retention=1.0)):
            torch.compiler.reset()
            compiled = [model.generate(**sets[0], **greedy, cache_implementation="static",
                                       compile_config=compile_config)]
            with torch.compiler.set_stance("fail_on_recompile"):  # raises on any recompilation
                compiled += [model.generate(**inputs, **greedy, cache_implementation="static",
                                            compile_config=compile_config) for inputs in (sets[1], shorter)]
    assert shorter["input_ids"].shape[1] < sets[0]["input_ids"].shape[1]
    for reference, tokens in zip(eager, compiled, strict=True):
        assert torch.equal(reference, tokens)
