"""The engine's prefix cache: trials from cached prefixes answer as the full pruned prefill does, build each
video's prefix once, drop the features it makes redundant, and survive bounds and corrupt entries."""

import pytest
import torch
from test_engine import dataset, model_dir  # noqa: F401  (module fixtures: 6 synthetic videos, the tiny LLaVA-OV)

import adatp
from autotune.engine import Engine


@pytest.mark.parametrize("prune_layer", [1, 2])
def test_cached_trials_give_the_uncached_answers(model_dir, dataset, tmp_path, prune_layer):  # noqa: F811
    config = adatp.AdaTPConfig(retention=0.3, prune_layer=prune_layer, tau_s=0.6, gamma_cap=0.4)
    cached = Engine(str(model_dir), cache_dir=tmp_path / "cached")
    plain = Engine(str(model_dir), cache_dir=tmp_path / "plain", prefix_cache=False)
    # Batches of 3 mix videos (2 questions per video) in the plain engine and group them in the cached one.
    got = cached.evaluate(dataset, config, batch_size=3)
    expected = plain.evaluate(dataset, config, batch_size=3)
    assert got.predictions == expected.predictions
    assert got.flops_ratio == expected.flops_ratio and got.kept_tokens == expected.kept_tokens
    videos = len({q.video_id for q in dataset})
    assert cached.prefix_builds == videos and cached.vision_calls == videos
    assert got.seconds["prefix"] > 0 and expected.seconds["prefix"] == 0
    # Another config at the same prune_layer: every prefix is a hit; no decoding, no vision tower, no new prefix.
    other = adatp.AdaTPConfig(retention=0.5, prune_layer=prune_layer, tau_s=0.9, alpha_boost=4.0)
    again = cached.evaluate(dataset, other, batch_size=3)
    assert cached.prefix_builds == videos and cached.vision_calls == videos
    assert again.seconds["vision"] == again.seconds["decode"] == again.seconds["prefix"] == 0.0
    assert again.predictions == plain.evaluate(dataset, other, batch_size=3).predictions


def test_features_a_prefix_makes_redundant_are_dropped_and_prefixes_persist(model_dir, dataset, tmp_path):  # noqa: F811
    config = adatp.AdaTPConfig(retention=0.3, prune_layer=2)
    engine = Engine(str(model_dir), cache_dir=tmp_path / "cache")
    first = engine.evaluate(dataset, config)
    assert list((tmp_path / "cache" / "features").glob("*/*.pt")) == []
    stored = list((tmp_path / "cache" / "prefixes").glob("*/*.pt"))
    assert len(stored) == len({q.video_id for q in dataset})
    # Bytes per video: keys and values of layers < K, the layer-K input, positions, columns, frame features.
    text = engine.model.config.text_config
    prefix_length = engine.prefix_length(dataset[0])
    per_token = 2 * 2 * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads) + text.hidden_size
    frames = engine.frames
    floats = per_token * prefix_length + frames * text.hidden_size
    expected = 4 * floats + 8 * (2 * prefix_length + 1 + engine.n_visual)  # int64: positions (rope, text), columns
    prefix = engine.prefix(dataset[0], 2, {"prefix": 0.0, "decode": 0.0, "vision": 0.0})
    assert prefix.nbytes() == expected
    # A new process reads the prefixes from disk: no vision tower, same answers.
    fresh = Engine(str(model_dir), cache_dir=tmp_path / "cache")
    assert fresh.evaluate(dataset, config).predictions == first.predictions
    assert fresh.vision_calls == 0 and fresh.prefix_builds == 0


def test_corrupt_prefix_entries_are_misses_and_an_oversized_cache_evicts(model_dir, dataset, tmp_path):  # noqa: F811
    config = adatp.AdaTPConfig(retention=0.3, prune_layer=2)
    engine = Engine(str(model_dir), cache_dir=tmp_path / "cache")
    reference = engine.evaluate(dataset, config).predictions
    files = sorted((tmp_path / "cache" / "prefixes").glob("*/*.pt"))
    files[0].write_bytes(b"not a tensor file")
    torch.save({"keys": torch.zeros(3)}, files[1])  # loads, but is no prefix of this model
    fresh = Engine(str(model_dir), cache_dir=tmp_path / "cache")
    assert fresh.evaluate(dataset, config).predictions == reference
    assert fresh.prefixes.rejected == 2 and fresh.prefix_builds == 2
    # A disk bound of two entries: building the rest evicts the oldest, and every answer stays the same.
    size = files[2].stat().st_size
    bounded = Engine(str(model_dir), cache_dir=tmp_path / "bounded")
    bounded.prefixes.disk_bytes = 2 * size + size // 2
    assert bounded.evaluate(dataset, config).predictions == reference
    assert len(list((tmp_path / "bounded" / "prefixes").glob("*/*.pt"))) == 2
    bounded.prefixes.memory_bytes = size + size // 2
    bounded.prefixes.clear_memory()
    assert bounded.evaluate(dataset, config).predictions == reference
    assert len(bounded.prefixes._memory) == 1
