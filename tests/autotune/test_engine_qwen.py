"""The evaluation engine on tiny Qwen2.5-VL, Qwen3-VL and Qwen3.5 (hybrid) saved with save_pretrained and loaded back
through the Auto classes, over synthetic mp4s: cached features (deepstack too) equal the stock pixel path, prompts
expand as the processors do, one grid per study."""

import json

import pytest
import torch
from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3VLConfig, Qwen3VLForConditionalGeneration

import adatp
from autotune.data import synthetic
from autotune.engine import Engine, render_prompt
from autotune.tinymodel import QWEN_CHAT_TEMPLATE, QWEN_PREPROCESS, build_qwen_model, train_tokenizer

FRAME_SIZE = (32, 32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(root, 4, seed=3)
    return synthetic.load(root).questions


def _qwen3(tokenizer):
    base = build_qwen_model(tokenizer).config
    text = base.text_config.to_dict()
    text.update(head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [8, 4, 4],
                                              "mrope_interleaved": True})
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=text["hidden_size"], num_position_embeddings=16,
                  deepstack_visual_indexes=[0, 1])
    ids = {key: getattr(base, key) for key in ("video_token_id", "image_token_id", "vision_start_token_id",
                                               "vision_end_token_id")}
    torch.manual_seed(0)
    return Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=text, vision_config=vision, **ids))


def _qwen3_5(tokenizer):
    """Qwen3.5: Gated DeltaNet and full attention alternating (K = 2 follows a full layer), no deepstack."""
    base = build_qwen_model(tokenizer).config
    text = base.text_config.to_dict()
    layers = text["num_hidden_layers"]
    text = {key: text[key] for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                       "num_key_value_heads", "vocab_size", "pad_token_id")}
    text.update(head_dim=32, layer_types=["linear_attention", "full_attention"] * (layers // 2),
                linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
                rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 2, 2],
                                 "mrope_interleaved": True, "partial_rotary_factor": 0.5})
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=text["hidden_size"], num_position_embeddings=16)
    ids = {key: getattr(base, key) for key in ("video_token_id", "image_token_id", "vision_start_token_id",
                                               "vision_end_token_id")}
    torch.manual_seed(0)
    return Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=text, vision_config=vision, **ids))


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def model_dir(request, tmp_path_factory, dataset):
    directory = tmp_path_factory.mktemp(request.param)
    tokenizer = train_tokenizer([render_prompt(None, q, template=QWEN_CHAT_TEMPLATE) + " seconds" for q in dataset],
                                "qwen2_5_vl")
    model = {"qwen2_5_vl": build_qwen_model, "qwen3_vl": _qwen3, "qwen3_5": _qwen3_5}[request.param](tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    settings = dict(QWEN_PREPROCESS)
    if request.param != "qwen2_5_vl":  # Qwen3VLVideoProcessor (Qwen3.5's too) bounds the whole clip: 16 x 32 x 32 px
        settings.update(video_processor_type="Qwen3VLVideoProcessor", size={"shortest_edge": 256,
                                                                           "longest_edge": 16 * 32 * 32})
    (directory / "video_preprocessor_config.json").write_text(json.dumps(settings))
    return directory


def test_loads_through_auto_classes_and_caches_features_once(model_dir, dataset, tmp_path):
    engine = Engine(str(model_dir), frame_size=FRAME_SIZE, cache_dir=tmp_path / "cache")
    assert model_dir.name.startswith(engine.family)
    assert engine.video_protocol["grid"] == [8, 8, 8] and engine.n_visual == 8 * 16
    first = engine.evaluate(dataset, adatp.AdaTPConfig(retention=0.3, prune_layer=2))
    videos = len({q.video_id for q in dataset})
    assert engine.vision_calls == videos
    packed = engine.video_features(dataset[0].video_path)
    levels = 2 if engine.family == "qwen3_vl" else 0  # deepstack features are cached with the video
    assert packed.shape == (1 + levels, engine.n_visual, engine.model.config.text_config.hidden_size)
    fresh = Engine(str(model_dir), frame_size=FRAME_SIZE, cache_dir=tmp_path / "cache")
    again = fresh.evaluate(dataset, adatp.AdaTPConfig(retention=0.3, prune_layer=2))
    assert fresh.vision_calls == 0 and again.predictions == first.predictions
    assert first.kept_tokens == adatp.flops.kept_count(engine.n_visual, 0.3)


def test_cached_features_equal_the_stock_pixel_path(model_dir, dataset):
    """Logits from cached features (mm_encoder_outputs, deepstack included) = the stock model fed pixels, grid and
    token types as its processor gives them; pruned or not."""
    engine = Engine(str(model_dir), frame_size=FRAME_SIZE)
    questions = dataset[:3]
    inputs = engine.batch_inputs(questions, [engine.video_features(q.video_path) for q in questions])
    pixels = torch.cat([engine.video.pixels(q.video_path) for q in questions])
    stock_inputs = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        mm_token_type_ids=inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"],
                        pixel_values_videos=pixels)
    model = engine.model
    for config in (None, adatp.AdaTPConfig(retention=0.3, prune_layer=2)):
        with torch.no_grad(), adatp.pruning(model, config) if config else torch.no_grad():
            cached = model(**inputs).logits[:, -1]
            stock = model(**stock_inputs).logits[:, -1]
        assert torch.allclose(cached, stock, atol=1e-5), config


def test_prompts_expand_as_the_processor_does(model_dir, dataset):
    engine = Engine(str(model_dir), frame_size=FRAME_SIZE)
    config = engine.model.config
    ids = engine.prompt_ids(dataset[0])
    groups = engine.video_protocol["grid"][0]
    assert ids.count(config.video_token_id) == engine.n_visual
    starts = [i for i, token in enumerate(ids) if token == config.vision_start_token_id]
    if engine.family == "qwen2_5_vl":  # one run of T*N pads between one start and one end
        assert len(starts) == 1 and ids[starts[0] + engine.n_visual + 1] == config.vision_end_token_id
    else:  # Qwen3-VL, Qwen3.5: per group "<t seconds>" <|vision_start|> N pads <|vision_end|>
        assert len(starts) == groups
        ends = [-1] + [start + 16 + 1 for start in starts]
        assert all(start - end > 1 for start, end in zip(starts, ends, strict=False))  # timestamp text before each
        if engine.family == "qwen3_vl":  # (AutoTokenizer gives Qwen3.5 its own BPE class, which reads our word-level
            text = engine.tokenizer.decode(ids)  # test vocabulary differently: only the layout is checked there)
            assert text.count("seconds") >= groups and "<" in text
        assert all(ids[start + 16 + 1] == config.vision_end_token_id for start in starts)


def test_one_grid_for_videos_of_any_size(model_dir, tmp_path):
    """Videos of another resolution get the study's grid (frame_size), so n_visual and retention stay fixed."""
    root = synthetic.generate(tmp_path / "large", 1, seed=5, size=96)
    question = synthetic.load(root).questions[0]
    engine = Engine(str(model_dir), frame_size=FRAME_SIZE)
    assert engine.video_features(question.video_path).shape[1] == engine.n_visual


def test_llava_takes_no_frame_size():
    from autotune.tinymodel import DEFAULT_DIR

    with pytest.raises(ValueError, match="frame_size applies to Qwen-VL models only"):
        Engine(str(DEFAULT_DIR), frame_size=(32, 32))


@pytest.mark.parametrize("prune_layer", [1, 2])
def test_cached_prefixes_give_the_uncached_answers(model_dir, dataset, tmp_path, prune_layer):
    """Questions of one video batched on one cached prefix (3D positions, Qwen3-VL's timestamps and deepstack)
    answer as the full pruned prefill does."""
    config = adatp.AdaTPConfig(retention=0.3, prune_layer=prune_layer, tau_s=0.6)
    if model_dir.name.startswith("qwen3_5"):  # layer 0 is Gated DeltaNet: K = 1 is refused, K = 2 runs uncached
        engine = Engine(str(model_dir), frame_size=FRAME_SIZE, cache_dir=tmp_path / "hybrid")
        if prune_layer == 1:
            with pytest.raises(adatp.ConfigError, match="valid: 0, 2"):
                engine.evaluate(dataset, config, batch_size=3)
        else:
            engine.evaluate(dataset, config, batch_size=3)
            assert engine.prefix_builds == 0 and not adatp.prefix.supports(config, engine.model)
        return
    cached = Engine(str(model_dir), frame_size=FRAME_SIZE, cache_dir=tmp_path / "cached")
    plain = Engine(str(model_dir), frame_size=FRAME_SIZE, cache_dir=tmp_path / "plain", prefix_cache=False)
    got = cached.evaluate(dataset, config, batch_size=3)
    assert got.predictions == plain.evaluate(dataset, config, batch_size=3).predictions
    assert cached.prefix_builds == len({q.video_id for q in dataset})
