"""adatp.enable keeps transformers' contract: caches, compile, outputs, assisted decoding, labels, mixed batches.

Each behaviour is checked twice on a tiny model of every supported family (LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL),
built from config: at retention 1.0 the pruned model must give exactly (torch.equal) what the stock model gives; at
retention 0.3 it must run and agree with an independent way of computing the same thing (a cache-free pass, a batch
of one, plain greedy decoding, a hand-computed loss).
"""

import contextlib
import copy

import pytest
import torch
from families import FAMILIES
from transformers import CompileConfig

import adatp
import adatp.kinds
from adatp.flops import kept_count
from adatp.layers import CACHE_ARG
from adatp.pruned_cache import plan_of

FRAMES = 3
LAYERS = 4
GREEDY = dict(do_sample=False, max_new_tokens=4)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def model(family):
    return family.model(LAYERS)


@pytest.fixture(scope="module")
def eager_model(family):
    return family.model(LAYERS, attn="eager")


@pytest.fixture(scope="module")
def video_batch(family):
    return family.video_batch


def kinds(model):
    return adatp.kinds.layer_kinds(model.config.text_config)


def config(retention, prune_layer=2, **changes):
    changes.setdefault("score", "attention" if prune_layer > 0 else "norm")
    return adatp.AdaTPConfig(retention=retention, prune_layer=prune_layer, **changes)


def assert_identical(left, right, where="output"):
    """Tensors, tuples, dicts, ModelOutputs and caches compared exactly, recursively."""
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor) and left.shape == right.shape, where
        assert torch.equal(left, right), where
    elif isinstance(left, dict):  # ModelOutput is a dict
        assert set(left.keys()) == set(right.keys()), where
        for key in left:
            assert_identical(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, (tuple, list)):
        assert len(left) == len(right), where
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_identical(a, b, f"{where}[{index}]")
    elif hasattr(left, "layers"):  # a Cache: keys and values, or a linear-attention layer's states
        assert len(left.layers) == len(right.layers), where
        for index, (a, b) in enumerate(zip(left.layers, right.layers, strict=True)):
            for name in ("keys", "values", "conv_states", "recurrent_states"):
                if hasattr(a, name):
                    assert_identical(getattr(a, name), getattr(b, name), f"{where}.layers[{index}].{name}")
    else:
        assert left == right, where


def stock_full_pruned(model, run, prune_layer=2, **changes):
    """run() on the stock model, with AdaTP at retention 1.0, and at retention 0.3."""
    with torch.no_grad():
        stock = run()
        with adatp.pruning(model, config(1.0, prune_layer, **changes)):
            full = run()
        with adatp.pruning(model, config(0.3, prune_layer, **changes)):
            pruned = run()
    return stock, full, pruned


@pytest.mark.parametrize("prune_layer", [0, 2])
def test_static_cache_generate(family, video_batch, model, prune_layer):
    inputs = video_batch(2, frames=FRAMES, pads=(0, 3), seed=1)

    def run(cache="static"):
        return model.generate(**inputs, **GREEDY, cache_implementation=cache, return_dict_in_generate=True,
                              output_logits=True)

    stock, full, pruned = stock_full_pruned(model, run, prune_layer)
    assert_identical(stock.sequences, full.sequences)
    assert_identical(stock.logits, full.logits)
    with torch.no_grad(), adatp.pruning(model, config(0.3, prune_layer)):
        dynamic = run(cache="dynamic")
    assert torch.equal(pruned.sequences, dynamic.sequences)
    for static_step, dynamic_step in zip(pruned.logits, dynamic.logits, strict=True):
        assert torch.allclose(static_step, dynamic_step, atol=1e-4, rtol=1e-4)


def test_compiled_forward_fullgraph(family, video_batch, model):
    """One graph, no host synchronisation: with and without a video, unpruned and pruned with a fixed kept count."""
    with_video = video_batch(2, frames=FRAMES, seed=2)
    without_video = {key: with_video[key] for key in ("input_ids", "attention_mask")}
    # Qwen's stock forward with a video is not one graph (get_rope_index and the vision tower read the grid on the
    # host), so for Qwen only the text-only call compiles here; its decode steps compile in test_compiled_generate.
    calls = (without_video, with_video) if family.name == "llava_onevision" else (without_video,)
    for inputs in calls:
        stock, full, _ = stock_full_pruned(model, lambda inputs=inputs: model(**inputs, use_cache=False).logits)
        with torch.no_grad(), adatp.pruning(model, config(1.0)):
            torch._dynamo.reset()
            compiled = torch.compile(model.forward, fullgraph=True, backend="eager")
            compiled_full = compiled(**inputs, use_cache=False).logits
        with torch.no_grad(), adatp.pruning(model, config(0.3)):
            eager_pruned = model(**inputs, use_cache=False).logits
            torch._dynamo.reset()
            compiled = torch.compile(model.forward, fullgraph=True, backend="eager")
            compiled_pruned = compiled(**inputs, use_cache=False).logits
        assert torch.equal(stock, full) and torch.equal(stock, compiled_full)
        assert compiled_pruned.shape == eager_pruned.shape
        assert torch.allclose(compiled_pruned, eager_pruned, atol=1e-5, rtol=1e-5)
    if family.name == "llava_onevision":
        expected_length = with_video["input_ids"].shape[1] - FRAMES * family.tokens_per_frame + kept_count(
            FRAMES * family.tokens_per_frame, 0.3)
        assert compiled_pruned.shape[1] == expected_length


def test_compiled_generate(family, video_batch, model):
    inputs = video_batch(2, frames=FRAMES, pads=(0, 2), seed=3)
    compile_config = CompileConfig(fullgraph=True, backend="eager")
    compile_config._compile_all_devices = True  # generate compiles on GPUs only unless told (this is a CPU test)

    def run(compiled=True):
        torch._dynamo.reset()
        return model.generate(**inputs, **GREEDY, cache_implementation="static", output_logits=True,
                              return_dict_in_generate=True, compile_config=compile_config if compiled else None,
                              disable_compile=not compiled)

    stock, full, pruned = stock_full_pruned(model, run)
    assert_identical(stock.sequences, full.sequences)
    assert_identical(stock.logits, full.logits)
    with torch.no_grad(), adatp.pruning(model, config(0.3)):
        eager = run(compiled=False)
    assert torch.equal(pruned.sequences, eager.sequences)


@pytest.mark.parametrize("assist", ["assistant_model", "prompt_lookup"])
@pytest.mark.parametrize("prune_layer", [0, 2])
def test_assisted_decoding_equals_greedy(family, video_batch, eager_model, assist, prune_layer):
    """Assisted decoding is exact for greedy search: it must give plain greedy's tokens, pruned or not (eager
    attention: with SDPA the stock model returns no attention weights, and assisted decoding needs them). Its first
    forward is the prompt plus the draft's tokens: AdaTP must keep greedy's tokens, the draft read as no question."""
    model = eager_model
    inputs = video_batch(1, frames=FRAMES, seed=4)
    inputs["input_ids"][0, -4:] = inputs["input_ids"][0, 1]  # repeats for prompt lookup to draw from
    assistant = dict(assistant_model=family.model(2, attn="eager", seed=1)) if assist == "assistant_model" else dict(
        prompt_lookup_num_tokens=2)

    def run(**extra):
        return model.generate(**inputs, do_sample=False, max_new_tokens=6, return_dict_in_generate=True,
                              output_attentions=True, output_logits=True, **extra)

    if getattr(model, "_is_stateful", False):  # transformers < 5.25: linear-attention states cannot roll back
        for retention in (None, 1.0, 0.3):  # the stock model refuses, and so do we
            with torch.no_grad(), contextlib.ExitStack() as stack:
                if retention is not None:
                    stack.enter_context(adatp.pruning(model, config(retention, prune_layer)))
                with pytest.raises(ValueError, match="not supported with stateful models"):
                    run(**assistant)
        return
    stock, full, pruned = stock_full_pruned(model, lambda: run(**assistant), prune_layer)
    assert_identical(stock.sequences, full.sequences)
    with torch.no_grad(), adatp.pruning(model, config(0.3, prune_layer)) as state:
        assisted = run(**assistant)
        kept_assisted = state.kept_indices.clone()
        greedy = run()
        kept_greedy = state.kept_indices.clone()
    assert torch.equal(kept_assisted, kept_greedy)
    if "linear_attention" not in kinds(model):
        assert torch.equal(pruned.sequences, greedy.sequences) and torch.equal(assisted.sequences, greedy.sequences)
        return
    # transformers >= 5.25 rolls linear-attention states back, but not bit-exactly: its own assisted logits move
    # from greedy's by up to ~2e-2 on these tiny models. Pruned, they may move as much as the stock model's do and no
    # more, and a token may differ only where greedy's top two logits are that close.
    with torch.no_grad():
        stock_greedy = run()
    stock_drift = max(float((a - g).abs().max()) for a, g in zip(stock.logits, stock_greedy.logits, strict=True))
    tolerance = 2 * stock_drift + 1e-4
    for step, (a, g) in enumerate(zip(assisted.logits, greedy.logits, strict=True)):
        assert float((a - g).abs().max()) <= tolerance, (step, tolerance)
        if not torch.equal(a.argmax(-1), g.argmax(-1)):
            top = g[0].topk(2).values
            assert float(top[0] - top[1]) <= 2 * tolerance, (step, tolerance)
            break


def test_outputs_attentions_and_hidden_states(family, video_batch, eager_model):
    inputs = video_batch(2, frames=FRAMES, pads=(0, 3), seed=5)

    def run():
        return eager_model(**inputs, output_attentions=True, output_hidden_states=True)

    stock, full, pruned = stock_full_pruned(eager_model, run)
    assert_identical(stock, full)
    length = inputs["input_ids"].shape[1]
    kept = length - FRAMES * family.tokens_per_frame + kept_count(FRAMES * family.tokens_per_frame, 0.3)
    # Layers < K (=2) run over the whole sequence, layers >= K over the kept one.
    assert [h.shape[1] for h in pruned.hidden_states] == [length] * 3 + [kept] * (LAYERS - 2)
    # Attention weights come from the softmax-attention layers only (Qwen3.5: layers 1 and 3 of 4).
    softmax = [layer for layer, kind in enumerate(kinds(eager_model)) if kind != "linear_attention"]
    sizes = [length if layer < 2 else kept for layer in softmax]
    assert [a.shape[-1] for a in pruned.attentions] == sizes
    assert [a.shape[-2] for a in pruned.attentions] == sizes
    assert torch.allclose(eager_model.lm_head(pruned.hidden_states[-1]), pruned.logits, atol=1e-5)
    # The first K layers never see the pruning: their outputs match the stock model's.
    for layer in range(3):
        assert torch.equal(pruned.hidden_states[layer], stock.hidden_states[layer])
    for index, layer in enumerate(softmax):
        if layer < 2:
            assert torch.equal(pruned.attentions[index], stock.attentions[index])
    probabilities = pruned.attentions[-1].sum(-1)
    real_rows = adatp_state_rows(eager_model, inputs, 0.3)
    assert torch.allclose(probabilities[real_rows[:, None, :].expand_as(probabilities)],
                          torch.ones(()), atol=1e-5)


def adatp_state_rows(model, inputs, retention):
    """Which rows of the kept sequence are real tokens (not the input's left padding)."""
    with torch.no_grad(), adatp.pruning(model, config(retention)) as state:
        model(**inputs)
        return inputs["attention_mask"].bool().gather(1, state.plan.keep_columns) & state.plan.slot_valid


def test_dict_output_generate_with_attentions_and_hidden_states(family, video_batch, eager_model):
    inputs = video_batch(2, frames=FRAMES, pads=(0, 3), seed=6)

    def run():
        return eager_model.generate(**inputs, **GREEDY, return_dict_in_generate=True, output_attentions=True,
                                    output_hidden_states=True, output_scores=True, output_logits=True)

    stock, full, pruned = stock_full_pruned(eager_model, run)
    assert_identical(stock, full)
    assert len(pruned.attentions) == len(pruned.hidden_states) == GREEDY["max_new_tokens"]
    softmax = sum(kind != "linear_attention" for kind in kinds(eager_model))
    assert all(len(step) == softmax for step in pruned.attentions)
    assert all(len(step) == LAYERS + 1 for step in pruned.hidden_states)


@pytest.mark.parametrize("prune_layer", [0, 2])
def test_labels_give_the_loss_over_kept_positions(family, video_batch, model, prune_layer):
    inputs = video_batch(2, frames=FRAMES, pads=(0, 3), seed=7)
    labels = inputs["input_ids"].masked_fill(
        (inputs["input_ids"] == family.video_token) | (inputs["attention_mask"] == 0), -100)

    def run():
        return model(**inputs, labels=labels)

    stock, full, pruned = stock_full_pruned(model, run, prune_layer)
    assert_identical(stock.loss, full.loss)
    assert_identical(stock.logits, full.logits)
    with torch.no_grad(), adatp.pruning(model, config(0.3, prune_layer)) as state:
        logits = model(**inputs).logits
        kept_labels = labels.gather(1, state.plan.keep_columns).masked_fill(~state.plan.slot_valid, -100)
        as_tuple = model(**inputs, labels=labels, return_dict=False)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), kept_labels[:, 1:].flatten(),
                                                 ignore_index=-100)
    assert torch.allclose(pruned.loss, expected, atol=1e-6)
    assert torch.equal(as_tuple[0], pruned.loss) and torch.equal(as_tuple[1], pruned.logits)
    assert list(pruned.keys())[:2] == ["loss", "logits"]  # the stock order, so to_tuple() matches return_dict=False
    # Pre-shifted labels (`shift_labels`, input coordinates) are gathered too: each kept position keeps its own
    # target. They differ from `labels` only where a kept token's next input token was pruned.
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    kept_shifted = shifted.gather(1, state.plan.keep_columns).masked_fill(~state.plan.slot_valid, -100)
    with torch.no_grad(), adatp.pruning(model, config(0.3, prune_layer)):
        by_shift = model(**inputs, labels=labels, shift_labels=shifted).loss
    expected_shift = torch.nn.functional.cross_entropy(logits.flatten(0, 1), kept_shifted.flatten(), ignore_index=-100)
    assert torch.allclose(by_shift, expected_shift, atol=1e-6)
    # Text is never pruned: every labelled token still has a logit.
    assert (kept_labels != -100).sum() == (labels != -100).sum()
    # Labels built over the kept sequence (from a pruned call's logits) are taken as they are; other widths are a
    # one-line error, not an index error deep in a gather.
    with torch.no_grad(), adatp.pruning(model, config(0.3, prune_layer)):
        assert torch.equal(model(**inputs, labels=kept_labels).loss, pruned.loss)
        with pytest.raises(ValueError, match=r"adatp: labels must be \[batch, \d+\] over the input"):
            model(**inputs, labels=labels[:, 1:])


def test_logits_to_keep(family, video_batch, model):
    inputs = video_batch(2, frames=FRAMES, pads=(0, 3), seed=8)
    stock, full, pruned = stock_full_pruned(model, lambda: model(**inputs, logits_to_keep=3).logits)
    assert_identical(stock, full)
    with torch.no_grad(), adatp.pruning(model, config(0.3)):
        every = model(**inputs).logits
        indices = torch.tensor([0, every.shape[1] - 1])
        chosen = model(**inputs, logits_to_keep=indices).logits
    assert pruned.shape == (2, 3, every.shape[-1])
    assert torch.allclose(pruned, every[:, -3:], atol=1e-5)
    assert torch.allclose(chosen, every[:, indices], atol=1e-5)


@pytest.mark.parametrize("prune_layer", [0, 2])
def test_continue_generate_from_returned_cache(family, video_batch, model, prune_layer):
    inputs = video_batch(2, frames=FRAMES, pads=(0, 2), seed=9)

    def run():
        first = model.generate(**inputs, do_sample=False, max_new_tokens=3, return_dict_in_generate=True)
        cache = copy.deepcopy(first.past_key_values)
        mask = torch.cat([inputs["attention_mask"], torch.ones(2, 3, dtype=torch.long)], dim=1)
        second = model.generate(input_ids=first.sequences, attention_mask=mask, **{CACHE_ARG: cache},
                                do_sample=False, max_new_tokens=3, return_dict_in_generate=True)
        whole = model.generate(**inputs, do_sample=False, max_new_tokens=6, return_dict_in_generate=True)
        return first, second, whole

    stock, full, pruned = stock_full_pruned(model, run, prune_layer)
    for stock_part, full_part in zip(stock, full, strict=True):
        assert_identical(stock_part.sequences, full_part.sequences)
    first, second, whole = pruned
    assert torch.equal(second.sequences, whole.sequences)
    # The returned cache reports the original sequence's length; layers >= K physically hold the kept tokens.
    cache = first.past_key_values
    length = first.sequences.shape[1] - 1
    kept = length - FRAMES * family.tokens_per_frame + kept_count(FRAMES * family.tokens_per_frame, 0.3)
    attention = [0] + [layer for layer, kind in enumerate(kinds(model)) if kind != "linear_attention"]
    assert [cache.get_seq_length(layer) for layer in attention] == [length] * len(attention)
    held = [layer.keys.shape[2] if hasattr(layer, "keys") else None for layer in cache.layers]
    expected = [length] * prune_layer + [kept] * (LAYERS - prune_layer)
    assert held == [None if kind == "linear_attention" else size
                    for size, kind in zip(expected, kinds(model), strict=True)]


def test_stray_video_token_without_pixels_is_left_alone(family, video_batch, model):
    inputs = video_batch(2, frames=FRAMES, pads=(0, 3), seed=10)
    text_only = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}  # no pixels
    text_only["input_ids"][:, -3] = family.video_token  # plus a few stray ids among the question tokens

    def run():
        return model(**text_only).logits, model.generate(**text_only, **GREEDY)

    stock, full, pruned = stock_full_pruned(model, run)
    assert_identical(stock, full)
    assert_identical(stock, pruned)


@pytest.mark.parametrize("prune_layer", [0, 2])
def test_batch_mixing_videos_of_different_lengths_and_rows_without_video(family, video_batch, model, prune_layer):
    batch, rows, frames = family.mixed_rows(FRAMES)

    def run():
        return model(**batch).logits, model.generate(**batch, **GREEDY)

    stock, full, pruned = stock_full_pruned(model, run, prune_layer)
    assert_identical(stock, full)
    logits, sequences = pruned
    # Each row, pruned on its own (a batch of one, no padding), gives the same next-token logits and tokens.
    with torch.no_grad(), adatp.pruning(model, config(0.3, prune_layer)) as state:
        for index, row in enumerate(rows):
            alone = model(**row).logits[0, -1]
            assert torch.allclose(logits[index, -1], alone, atol=1e-4, rtol=1e-4), index
            generated = model.generate(**row, **GREEDY)[0, -GREEDY["max_new_tokens"]:]
            assert torch.equal(sequences[index, -GREEDY["max_new_tokens"]:], generated), index
        model(**batch)
        pruned_away = [family.visual(n) - kept_count(family.visual(n), 0.3) for n in frames]
        kept = state.kept_indices  # one selection per video: [V, M], or one [M_v] per video when shapes differ
        assert [len(video) for video in kept] == [kept_count(family.visual(n), 0.3) for n in frames]
        real = state.plan.slot_valid.sum(-1).tolist()
        length = batch["input_ids"].shape[1]
        assert real == [length - pruned_away[0] - pruned_away[1], length - pruned_away[2], length]


def test_beam_search_and_sampling(family, video_batch, model):
    inputs = video_batch(2, frames=FRAMES, pads=(0, 2), seed=12)

    def run():
        beams = model.generate(**inputs, max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False)
        torch.manual_seed(0)
        sampled = model.generate(**inputs, max_new_tokens=4, do_sample=True, num_return_sequences=2)
        return beams, sampled

    stock, full, pruned = stock_full_pruned(model, run)
    assert_identical(stock, full)
    assert pruned[0].shape == (4, inputs["input_ids"].shape[1] + 4)


def test_plan_travels_with_the_cache(family, video_batch, model):
    """The plan lives on the returned cache (deep copies included), not on the model: a stale plan cannot leak."""
    inputs = video_batch(1, frames=FRAMES, seed=13)
    with torch.no_grad(), adatp.pruning(model, config(0.3)) as state:
        out = model(**inputs)
        cache = out.past_key_values
        assert plan_of(cache) is state.plan
        assert plan_of(copy.deepcopy(cache)).prefill_length == inputs["input_ids"].shape[1]
        model(input_ids=inputs["input_ids"][:, :5])  # a text-only call in between
        assert state.plan is None and plan_of(cache) is not None
        cache.reset()
        assert plan_of(cache) is None and type(cache).__name__ == "DynamicCache"
