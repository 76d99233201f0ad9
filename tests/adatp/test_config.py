import dataclasses

import pytest

from adatp.config import AdaTPConfig, ConfigError


def test_defaults_are_our_reading_of_the_paper():
    config = AdaTPConfig()
    assert (config.tau_s, config.tau_t, config.alpha_boost, config.gamma_cap) == (0.9, 0.5, 2.0, 0.5)
    assert (config.retention, config.prune_layer) == (0.25, 2)
    assert (config.score, config.relevance, config.method) == ("attention", "llm", "adatp")
    assert (config.seed, config.positions, config.siglip_path) == (0, "original", None)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tau_s", 1.5, "config.tau_s: must be in [-1, 1], got 1.5"),
        ("tau_s", -1.01, "config.tau_s: must be in [-1, 1], got -1.01"),
        ("tau_s", float("nan"), "config.tau_s: must be finite, got nan"),
        ("tau_t", 1.2, "config.tau_t: must be in [0, 1], got 1.2"),
        ("tau_t", -0.1, "config.tau_t: must be in [0, 1], got -0.1"),
        ("alpha_boost", 0.5, "config.alpha_boost: must be in [1, 100], got 0.5"),
        ("alpha_boost", 101, "config.alpha_boost: must be in [1, 100], got 101"),
        ("gamma_cap", 0.0, "config.gamma_cap: must be in (0, 1], got 0.0"),
        ("gamma_cap", 1.5, "config.gamma_cap: must be in (0, 1], got 1.5"),
        ("retention", 0, "config.retention: must be in (0, 1], got 0"),
        ("retention", 1.01, "config.retention: must be in (0, 1], got 1.01"),
        ("retention", float("inf"), "config.retention: must be finite, got inf"),
        ("prune_layer", -1, "config.prune_layer: must be in [0, 1024], got -1"),
        ("prune_layer", 2.0, "config.prune_layer: must be an integer, got float 2.0"),
        ("seed", -3, "config.seed: must be in [0, "),
        ("seed", "7", "config.seed: must be an integer, got str '7'"),
        ("tau_s", "0.9", "config.tau_s: must be a number, got str '0.9'"),
        ("retention", None, "config.retention: must be a number, got NoneType None"),
        ("score", "entropy", "config.score: must be one of attention, norm, text_sim, got 'entropy'"),
        ("relevance", "clip", "config.relevance: must be one of llm, siglip, got 'clip'"),
        ("method", "dycoke", "config.method: must be one of adatp, uniform, random, fastv, adatp_random_segments"),
        ("positions", "shifted", "config.positions: must be one of original, renumber, got 'shifted'"),
        ("siglip_path", 3, "config.siglip_path: must be a string path, got int"),
    ],
)
def test_bad_value_names_the_field(field, value, message):
    with pytest.raises(ConfigError) as error:
        AdaTPConfig(**{field: value})
    assert message in str(error.value)


@pytest.mark.parametrize("field", ["tau_s", "tau_t", "alpha_boost", "gamma_cap", "retention", "prune_layer", "seed"])
@pytest.mark.parametrize("flag", [True, False])
def test_bool_is_not_a_number(field, flag):
    with pytest.raises(ConfigError) as error:
        AdaTPConfig(**{field: flag})
    assert f"config.{field}: must be " in str(error.value)
    assert f"got bool {flag}" in str(error.value)


@pytest.mark.parametrize("method", ["adatp", "fastv", "adatp_random_segments"])
def test_attention_scores_need_a_layer_before_pruning(method):
    with pytest.raises(ConfigError) as error:
        AdaTPConfig(method=method, score="attention", prune_layer=0)
    assert str(error.value).startswith("config.prune_layer: score 'attention' reads layer prune_layer - 1")
    assert str(error.value).endswith("got 0")


@pytest.mark.parametrize("method", ["uniform", "random"])
def test_unscored_methods_may_prune_before_the_lm(method):
    config = AdaTPConfig(method=method, score="attention", prune_layer=0)
    assert (config.prune_layer, config.uses_scores) == (0, False)


@pytest.mark.parametrize("score", ["norm", "text_sim"])
def test_pre_lm_scores_allow_prune_layer_0(score):
    assert AdaTPConfig(score=score, prune_layer=0).prune_layer == 0


def test_siglip_relevance_needs_a_checkpoint_path():
    with pytest.raises(ConfigError) as error:
        AdaTPConfig(relevance="siglip")
    assert str(error.value) == "config.siglip_path: required when relevance is 'siglip'"
    with pytest.raises(ConfigError, match="config.siglip_path: required"):
        AdaTPConfig(relevance="siglip", siglip_path="")
    assert AdaTPConfig(relevance="siglip", siglip_path="/models/siglip").siglip_path == "/models/siglip"


def test_from_dict_fills_defaults_and_round_trips():
    config = AdaTPConfig.from_dict({"tau_s": 0.8, "retention": 0.1})
    assert config == AdaTPConfig(tau_s=0.8, retention=0.1)
    assert AdaTPConfig.from_dict(config.to_dict()) == config


def test_from_dict_rejects_unknown_keys_and_non_mappings_with_the_given_path():
    with pytest.raises(ConfigError) as error:
        AdaTPConfig.from_dict({"tau_x": 0.5}, where="preset.config")
    assert str(error.value).startswith("preset.config.tau_x: unknown key (allowed: alpha_boost, gamma_cap, method")
    with pytest.raises(ConfigError, match=r"^preset.config: must be a mapping, got list \[0.9\]$"):
        AdaTPConfig.from_dict([0.9], where="preset.config")
    with pytest.raises(ConfigError, match=r"^preset.config.tau_t: must be in \[0, 1\], got 2$"):
        AdaTPConfig.from_dict({"tau_t": 2}, where="preset.config")


def test_config_is_frozen_and_replace_validates():
    config = AdaTPConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.tau_s = 0.5  # type: ignore[misc]
    assert config.replace(retention=0.5).retention == 0.5
    with pytest.raises(ConfigError, match="config.retention"):
        config.replace(retention=2.0)
