"""adatp.validation: the one kit that configs, presets and study specs check their fields with. The same mistake
reads the same in all three; only the field's path in front differs."""

import copy
import math

import pytest
import yaml

from adatp import AdaTPConfig, ConfigError, load_preset, validation
from autotune.spec import SpecError, spec_from_dict

SPEC = {"name": "t", "model": {"path": "/models/tiny"}, "dataset": {"name": "synthetic", "root": "/data/s"},
        "budgets": [0.5]}
PRESET = {"format": "adatp-preset/v1", "config": {},
          "target": {"model": "m", "dataset": "synthetic", "frames": 16, "flops_budget": 0.5}}


def _set(document: dict, dotted: str, value) -> dict:
    document = copy.deepcopy(document)
    *parents, last = dotted.split(".")
    node = document
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return document


def spec_error(dotted: str, value) -> str:
    with pytest.raises(SpecError) as error:
        spec_from_dict(_set(SPEC, dotted, value), check_paths=False)
    return str(error.value)


def preset_error(tmp_path, dotted: str, value) -> str:
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(_set(PRESET, dotted, value)))
    with pytest.raises(ConfigError) as error:
        load_preset(path)
    return str(error.value).split(f" (in {path})")[0]


def config_error(**fields) -> str:
    with pytest.raises(ConfigError) as error:
        AdaTPConfig(**fields)
    return str(error.value)


def test_the_valid_documents_load():
    assert spec_from_dict(SPEC, check_paths=False).budgets == (0.5,)
    assert AdaTPConfig.from_dict(PRESET["config"]) == AdaTPConfig()


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    (("x", 0.0, 0.0, 1.0), {"low_open": True}, "x: must be in (0, 1], got 0.0"),
    (("x", 1.0, 0.0, 1.0), {"high_open": True}, "x: must be in [0, 1), got 1.0"),
    (("x", -0.5, 0.0), {}, "x: must be in [0, inf], got -0.5"),
    (("x", True), {}, "x: must be a number, got bool True"),
    (("x", math.nan), {}, "x: must be finite, got nan"),
    (("x", "0.3"), {}, "x: must be a number, got str '0.3'"),
])
def test_number_names_the_range_it_needs(args, kwargs, message):
    with pytest.raises(ConfigError) as error:
        validation.number(*args, **kwargs)
    assert str(error.value) == message


def test_number_and_integer_return_what_they_accept_and_raise_the_callers_class():
    assert validation.number("x", 1, 0.0, 1.0) == 1.0 and isinstance(validation.number("x", 1), float)
    assert validation.number("x", 1e-9, 0.0, 1.0, low_open=True) == 1e-9
    assert validation.integer("x", 7, 0, 7) == 7
    with pytest.raises(SpecError, match=r"^x: must be in \[0, 7\], got 8$"):
        validation.integer("x", 8, 0, 7, error=SpecError)
    with pytest.raises(SpecError, match=r"^x: must be >= 1, got 0$"):
        validation.integer("x", 0, 1, error=SpecError)
    assert validation.interval(-1.0, 1.0) == "[-1, 1]" and validation.interval(0.0, math.inf, True) == "(0, inf]"


def test_a_threshold_out_of_range_reads_the_same_in_config_preset_and_spec(tmp_path):
    said = "tau_s: must be in [-1, 1], got 1.5"
    assert config_error(tau_s=1.5) == f"config.{said}"
    assert preset_error(tmp_path, "config.tau_s", 1.5) == f"preset.config.{said}"
    assert spec_error("base.tau_s", 1.5) == f"base.{said}"
    # The search space is checked against the same table of ranges, in the same words.
    assert spec_error("space.gamma_cap", [0.0, 0.5]).startswith(
        "space.gamma_cap: must lie within gamma_cap's valid range (0, 1]")


@pytest.mark.parametrize(("preset_field", "spec_field", "value", "said"), [
    ("target.frames", "dataset.frames", 0, "must be >= 1, got 0"),
    ("target.frames", "n_trials", True, "must be an integer, got bool True"),
    ("target.frames", "batch_size", 2.0, "must be an integer, got float 2.0"),
    ("target.model", "dataset.root", "", "must be a non-empty string, got an empty string"),
    ("target.dataset", "model.path", 5, "must be a non-empty string, got int 5"),
    ("target.flops_budget", "budgets", [0.0], "must be in (0, 1], got 0.0"),
    ("target", "sampler", [1], "must be a mapping, got list [1]"),
])
def test_the_same_mistake_reads_the_same_in_a_preset_and_a_spec(tmp_path, preset_field, spec_field, value, said):
    preset_value = value[0] if isinstance(value, list) and spec_field == "budgets" else value
    assert preset_error(tmp_path, preset_field, preset_value) == f"preset.{preset_field}: {said}"
    spec_path = "budgets[0]" if spec_field == "budgets" else spec_field
    assert spec_error(spec_field, value) == f"{spec_path}: {said}"


def test_an_unknown_key_names_what_is_allowed_everywhere(tmp_path):
    assert preset_error(tmp_path, "target.fps", 2).startswith("preset.target.fps: unknown key (allowed: model, ")
    assert spec_error("dataset.fps", 2).startswith(
        "dataset.fps: unknown key (allowed: name, preset, source, path, root, ")
    with pytest.raises(ConfigError, match=r"^config.fps: unknown key \(allowed: alpha_boost, "):
        AdaTPConfig.from_dict({"fps": 2})
