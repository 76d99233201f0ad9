import copy
import os

import numpy as np
import pytest
import yaml

from adatp.config import AdaTPConfig, ConfigError
from adatp.presets import FORMAT, Preset, load_preset, save_preset, select_preset


def _document() -> dict:
    """A valid preset document with every section filled."""
    return {
        "format": "adatp-preset/v1",
        "config": {
            "tau_s": 0.83,
            "tau_t": 0.35,
            "alpha_boost": 3.5,
            "gamma_cap": 0.4,
            "retention": 0.21,
            "prune_layer": 3,
            "seed": 7,
        },
        "target": {
            "model": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
            "dataset": "videomme",
            "frames": 32,
            "flops_budget": 0.3,
        },
        "results": {
            "flops_ratio": 0.2987,
            "tune_accuracy": {"value": 0.6125, "n": 600, "ci95": [0.5733, 0.6517]},
            "test_accuracy": {"value": 0.5975, "n": 1200, "ci95": [0.5692, 0.6258]},
            "vanilla_accuracy": {"value": 0.6083, "n": 1200},
            "default_accuracy": None,
            "paired": {"test_minus_vanilla": -0.0108, "test_minus_vanilla_ci95": [-0.0258, 0.0042]},
        },
        "provenance": {
            "study": "videomme-b0.30",
            "trial": 17,
            "mlflow_run_id": "3f2a9c",
            "created": "2025-06-01T12:00:00+00:00",
            "versions": {"torch": "2.13.0+cpu", "transformers": "5.23.0"},
        },
    }


def _write(directory, name, document) -> str:
    path = directory / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return str(path)


def _load_error(tmp_path, document) -> str:
    with pytest.raises(ConfigError) as error:
        load_preset(_write(tmp_path, "preset.yaml", document))
    message = str(error.value)
    assert "\n" not in message
    return message


def _set(document: dict, dotted: str, value) -> dict:
    document = copy.deepcopy(document)
    *parents, last = dotted.split(".")
    node = document
    for key in parents:
        node = node[key]
    node[last] = value
    return document


def test_round_trip_keeps_every_number(tmp_path):
    preset = Preset.from_dict(_document())
    path = save_preset(preset, tmp_path / "deep" / "dir" / "videomme-b0.30.yaml")
    loaded = load_preset(path)
    assert loaded == preset
    assert loaded.path == str(path)
    assert loaded.config == AdaTPConfig(
        tau_s=0.83, tau_t=0.35, alpha_boost=3.5, gamma_cap=0.4, retention=0.21, prune_layer=3, seed=7
    )
    assert loaded.target["flops_budget"] == 0.3 and loaded.target["frames"] == 32
    assert loaded.results["test_accuracy"] == {"value": 0.5975, "n": 1200, "ci95": [0.5692, 0.6258]}
    assert loaded.results["default_accuracy"] is None
    assert loaded.results["paired"]["test_minus_vanilla_ci95"] == [-0.0258, 0.0042]
    assert loaded.provenance["versions"] == {"torch": "2.13.0+cpu", "transformers": "5.23.0"}
    assert (loaded.flops_ratio, loaded.test_accuracy) == (0.2987, 0.5975)


def test_saved_file_has_stable_order_and_rewrites_identically(tmp_path):
    first = save_preset(Preset.from_dict(_document()), tmp_path / "a.yaml")
    text = first.read_text()
    assert [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")] == [
        "format",
        "config",
        "target",
        "results",
        "provenance",
    ]
    assert text.startswith(f"format: {FORMAT}\nconfig:\n  tau_s: 0.83\n")
    assert "ci95: [0.5692, 0.6258]" in text
    second = save_preset(load_preset(first), tmp_path / "b.yaml")
    assert second.read_text() == text
    assert sorted(os.listdir(tmp_path)) == ["a.yaml", "b.yaml"]  # no temporary files left behind


def test_save_writes_numpy_numbers_as_plain_yaml(tmp_path):
    preset = Preset(
        config=AdaTPConfig(tau_s=np.float64(0.75)),
        target={"model": "m", "dataset": "synthetic", "frames": 8, "flops_budget": np.float64(0.5)},
        results={"flops_ratio": np.float64(0.49), "test_accuracy": {"value": np.float64(0.8), "n": 40}},
    )
    loaded = load_preset(save_preset(preset, tmp_path / "p.yaml"))
    assert loaded == preset
    assert type(loaded.config.tau_s) is float and loaded.results["test_accuracy"] == {"value": 0.8, "n": 40}


def test_mlvu_macro_fields_load_back(tmp_path):
    document = _document()
    document["results"]["test_accuracy"].update(macro=0.7056, macro_missing=["needle"])
    loaded = load_preset(_write(tmp_path, "p.yaml", document))
    assert loaded.results["test_accuracy"]["macro"] == 0.7056
    assert loaded.results["test_accuracy"]["macro_missing"] == ["needle"]
    assert load_preset(save_preset(loaded, tmp_path / "q.yaml")) == loaded


def _fidelity_document(test: float = 0.85) -> dict:
    """`_document` as measured on an unlabelled, open-ended table: fidelity to the unpruned model, no accuracy."""
    document = _document()
    results = document["results"]
    for key in ("tune_accuracy", "test_accuracy", "vanilla_accuracy", "default_accuracy"):
        del results[key]
    results["tune_fidelity"] = {"value": 0.9, "n": 60}
    results["test_fidelity"] = {"value": test, "n": 120, "ci95": [0.8, 0.9]}
    results["default_fidelity"] = {"value": 0.8, "n": 120}
    results["scoring"] = {"objective": "fidelity", "answers": "open-ended", "metric": "token_f1",
                          "reference": "unpruned"}
    return document


def test_fidelity_results_and_scoring_round_trip(tmp_path):
    preset = Preset.from_dict(_fidelity_document())
    path = save_preset(preset, tmp_path / "open-b0.30.yaml")
    loaded = load_preset(path)
    assert loaded == preset
    assert loaded.results["scoring"] == {"objective": "fidelity", "answers": "open-ended", "metric": "token_f1",
                                         "reference": "unpruned"}
    assert loaded.test_accuracy is None and loaded.test_score == 0.85
    assert loaded.held_out == ("fidelity", {"value": 0.85, "n": 120, "ci95": [0.8, 0.9]}, {"value": 0.8, "n": 120},
                               None)
    text = path.read_text()
    assert text.index("tune_fidelity:") < text.index("test_fidelity:") < text.index("default_fidelity:")
    assert text.index("paired:") < text.index("scoring:") < text.index("provenance:")
    # A labelled preset is viewed by its accuracy, even if it also carries fidelity numbers.
    labelled = Preset.from_dict(_set(_document(), "results.test_fidelity", {"value": 0.99, "n": 1200}))
    assert labelled.held_out[:2] == ("accuracy", {"value": 0.5975, "n": 1200, "ci95": [0.5692, 0.6258]})
    assert labelled.held_out[3] == {"value": 0.6083, "n": 1200} and labelled.test_score == 0.5975
    assert Preset.from_dict(_set(_document(), "results.scoring", None)).results.get("scoring") is None


def test_minimal_preset_loads_with_empty_results_and_provenance(tmp_path):
    document = {"format": FORMAT, "config": {}, "target": _document()["target"], "results": None}
    loaded = load_preset(_write(tmp_path, "p.yaml", document))
    assert (loaded.config, loaded.results, loaded.provenance) == (AdaTPConfig(), {}, {})
    assert (loaded.flops_ratio, loaded.test_accuracy) == (0.3, None)
    assert load_preset(save_preset(loaded, tmp_path / "q.yaml")) == loaded


def test_save_refuses_an_invalid_preset_and_writes_nothing(tmp_path):
    preset = Preset.from_dict(_document())
    preset.target["flops_budget"] = 1.5
    with pytest.raises(ConfigError, match=r"^preset.target.flops_budget: must be in \(0, 1\], got 1.5$"):
        save_preset(preset, tmp_path / "bad.yaml")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("config.tau_s", 1.5, "preset.config.tau_s: must be in [-1, 1], got 1.5"),
        ("config.retention", "0.3", "preset.config.retention: must be a number, got str '0.3'"),
        ("config.prune_layer", True, "preset.config.prune_layer: must be an integer, got bool True"),
        ("config.method", "holitom", "preset.config.method: must be one of adatp, uniform"),
        ("config", [0.9], "preset.config: must be a mapping, got list"),
        ("target", "videomme", "preset.target: must be a mapping, got str 'videomme'"),
        ("target.flops_budget", 0, "preset.target.flops_budget: must be in (0, 1], got 0"),
        ("target.flops_budget", 1.2, "preset.target.flops_budget: must be in (0, 1], got 1.2"),
        ("target.flops_budget", "30%", "preset.target.flops_budget: must be a number, got str '30%'"),
        ("target.frames", 0, "preset.target.frames: must be >= 1, got 0"),
        ("target.frames", 32.0, "preset.target.frames: must be an integer, got float 32.0"),
        ("target.dataset", 5, "preset.target.dataset: must be a non-empty string, got int 5"),
        ("target.model", "", "preset.target.model: must be a non-empty string, got an empty string"),
        ("results", [0.6], "preset.results: must be a mapping, got list"),
        ("results.flops_ratio", 1.5, "preset.results.flops_ratio: must be in (0, 1], got 1.5"),
        ("results.flops_ratio", 0.0, "preset.results.flops_ratio: must be in (0, 1], got 0.0"),
        ("results.tune_accuracy", 0.61, "preset.results.tune_accuracy: must be a mapping, got float 0.61"),
        ("results.test_accuracy.value", 1.2, "preset.results.test_accuracy.value: must be in [0, 1], got 1.2"),
        ("results.test_accuracy.n", -1, "preset.results.test_accuracy.n: must be >= 0, got -1"),
        ("results.test_accuracy.n", 12.5, "preset.results.test_accuracy.n: must be an integer, got float 12.5"),
        (
            "results.test_accuracy.ci95",
            [0.7, 0.6],
            "preset.results.test_accuracy.ci95: lo must be <= hi, got [0.7, 0.6]",
        ),
        ("results.test_accuracy.ci95", [0.5], "preset.results.test_accuracy.ci95: must be a list [lo, hi], got [0.5]"),
        (
            "results.vanilla_accuracy.ci95",
            [0.5, 1.1],
            "preset.results.vanilla_accuracy.ci95[1]: must be in [0, 1], got 1.1",
        ),
        ("results.test_accuracy.macro", 70.5, "preset.results.test_accuracy.macro: must be in [0, 1], got 70.5"),
        (
            "results.test_accuracy.macro_missing",
            "needle",
            "preset.results.test_accuracy.macro_missing: must be a list of task type names, got 'needle'",
        ),
        (
            "results.paired.test_minus_vanilla",
            "small",
            "preset.results.paired.test_minus_vanilla: must be a number, got str 'small'",
        ),
        ("results.test_fidelity", {"value": 1.2, "n": 9},
         "preset.results.test_fidelity.value: must be in [0, 1], got 1.2"),
        ("results.scoring", {"reference_model": "x"},
         "preset.results.scoring.reference_model: unknown key (allowed: objective, answers, metric, reference)"),
        ("results.default_fidelity", 0.8, "preset.results.default_fidelity: must be a mapping, got float 0.8"),
        ("results.scoring", "token_f1", "preset.results.scoring: must be a mapping, got str 'token_f1'"),
        ("results.scoring", {"metric": "bleu"},
         "preset.results.scoring.metric: must be one of letter, exact_match, token_f1, relative_accuracy, got 'bleu'"),
        ("results.scoring", {"objective": "auto"},
         "preset.results.scoring.objective: must be one of accuracy, fidelity, got 'auto'"),
        ("results.scoring", {"answers": "free"},
         "preset.results.scoring.answers: must be one of multiple-choice, open-ended, got 'free'"),
        ("results.scoring", {"reference": "model"},
         "preset.results.scoring.reference: must be one of gold, unpruned, got 'model'"),
        ("provenance.trial", -1, "preset.provenance.trial: must be >= 0, got -1"),
        ("provenance.study", 42, "preset.provenance.study: must be a non-empty string, got int 42"),
        ("provenance.created", "yesterday", "preset.provenance.created: must be an ISO 8601 time"),
        ("provenance.versions", ["torch"], "preset.provenance.versions: must be a mapping, got list"),
        ("provenance.versions.torch", ["2.13"], "preset.provenance.versions.torch: must be a version string, got list"),
    ],
)
def test_bad_field_gives_one_line_naming_it(tmp_path, field, value, message):
    error = _load_error(tmp_path, _set(_document(), field, value))
    assert message in error
    assert error.endswith(f"(in {tmp_path / 'preset.yaml'})")


@pytest.mark.parametrize(
    ("section", "key", "allowed"),
    [
        ("", "extra", "format, config, target, results, provenance"),
        ("config.", "tau_x", "alpha_boost, gamma_cap, method, positions"),
        ("target.", "fps", "model, dataset, frames, flops_budget"),
        (
            "results.",
            "accuracy",
            "flops_ratio, tune_accuracy, test_accuracy, vanilla_accuracy, default_accuracy, tune_fidelity, "
            "test_fidelity, default_fidelity, paired, scoring)",

        ),
        ("results.test_accuracy.", "std", "value, n, ci95"),
        ("provenance.", "user", "study, trial, mlflow_run_id, versions, created"),
    ],
)
def test_unknown_key_is_named_with_what_is_allowed(tmp_path, section, key, allowed):
    error = _load_error(tmp_path, _set(_document(), section + key, 1))
    assert error.startswith(f"preset.{section}{key}: unknown key (allowed: {allowed}")


@pytest.mark.parametrize(
    "section",
    [
        "format",
        "config",
        "target",
        "target.dataset",
        "target.flops_budget",
        "results.test_accuracy.n",
        "results.test_accuracy.value",
    ],
)
def test_missing_required_key_is_named(tmp_path, section):
    document = _document()
    *parents, last = section.split(".")
    node = document
    for key in parents:
        node = node[key]
    del node[last]
    assert _load_error(tmp_path, document).startswith(f"preset.{section}: missing (required")


def test_free_form_sections_take_any_names(tmp_path):
    document = _set(_document(), "provenance.versions", {"numpy": 2, "my-fork": "0.1.dev3", "python": 3.11})
    document = _set(document, "results.paired", {"anything_goes": 0.5, "deltas": [-1.5, 2.0, 3]})
    loaded = load_preset(_write(tmp_path, "p.yaml", document))
    assert loaded.provenance["versions"] == {"numpy": "2", "my-fork": "0.1.dev3", "python": "3.11"}
    assert loaded.results["paired"] == {"anything_goes": 0.5, "deltas": [-1.5, 2.0, 3.0]}


def test_unquoted_yaml_timestamp_is_kept_as_iso_text(tmp_path):
    text = yaml.safe_dump(_set(_document(), "provenance.created", "x")).replace(
        "created: x", "created: 2025-06-01 12:00:00Z"
    )
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert load_preset(path).provenance["created"] == "2025-06-01T12:00:00+00:00"


def test_newer_format_says_upgrade_even_with_unknown_keys(tmp_path):
    document = _set(_document(), "format", "adatp-preset/v2")
    document["schedule"] = {"per_layer": True}
    error = _load_error(tmp_path, document)
    assert error.startswith(
        "preset.format: adatp-preset/v2 is newer than this adatp understands (adatp-preset/v1); upgrade adatp"
    )


@pytest.mark.parametrize("value", ["adatp-preset/v0", "adatp/v1", 1, None])
def test_unknown_format_is_rejected(tmp_path, value):
    error = _load_error(tmp_path, _set(_document(), "format", value))
    assert error.startswith(f"preset.format: must be adatp-preset/v1, got {value!r}")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^preset: no such file .*nowhere\.yaml$"):
        load_preset(tmp_path / "nowhere.yaml")


def test_malformed_yaml_is_one_line_with_its_position(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("format: adatp-preset/v1\nconfig:\n  tau_s: [0.9\ntarget: {}\n")
    with pytest.raises(ConfigError) as error:
        load_preset(path)
    message = str(error.value)
    assert message.startswith(f"preset: malformed YAML in {path} at line 4, column 7: expected ',' or ']'")
    assert "\n" not in message


@pytest.mark.parametrize(("text", "message"), [("", "is empty"), ("- 1\n- 2\n", "preset: must be a mapping, got list")])
def test_empty_file_and_non_mapping(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_preset(path)


def _preset_file(directory, name, dataset, budget, ratio, accuracy) -> None:
    document = _set(_set(_document(), "target.dataset", dataset), "target.flops_budget", budget)
    document = _set(document, "results.flops_ratio", ratio)
    document = _set(document, "results.test_accuracy", None if accuracy is None else {"value": accuracy, "n": 100})
    save_preset(Preset.from_dict(document), directory / name)


@pytest.fixture
def preset_dir(tmp_path):
    _preset_file(tmp_path, "a.yaml", "videomme", 0.3, 0.29, 0.60)
    _preset_file(tmp_path, "b.yaml", "videomme", 0.5, 0.48, 0.64)
    _preset_file(tmp_path, "c.yaml", "videomme", 0.3, 0.25, 0.60)  # ties a on accuracy, cheaper
    _preset_file(tmp_path, "d.yaml", "mlvu", 0.3, 0.30000000000000004, 0.70)
    (tmp_path / "broken.yaml").write_text("format: adatp-preset/v1\nconfig: {tau_s: 7}\n")
    (tmp_path / "notes.txt").write_text("not a preset")
    return tmp_path


@pytest.mark.parametrize(
    ("dataset", "budget", "ratio", "accuracy"),
    [
        ("videomme", 0.3, 0.25, 0.60),  # a and c fit and tie on accuracy: the cheaper c wins
        ("videomme", 0.29, 0.25, 0.60),
        ("videomme", 0.5, 0.48, 0.64),  # b is more accurate than a and c
        ("videomme", 1.0, 0.48, 0.64),
        ("mlvu", 0.3, 0.30000000000000004, 0.70),  # float noise above the budget still fits
    ],
)
def test_select_preset_picks_the_most_accurate_that_fits(preset_dir, dataset, budget, ratio, accuracy):
    chosen = select_preset(preset_dir, dataset=dataset, budget=budget)
    assert (chosen.target["dataset"], chosen.flops_ratio, chosen.test_accuracy) == (dataset, ratio, accuracy)
    assert chosen.path is not None and chosen.path.endswith(".yaml")


def test_select_preset_says_what_exists_when_none_fits(preset_dir):
    with pytest.raises(ConfigError) as error:
        select_preset(preset_dir, dataset="videomme", budget=0.2)
    assert str(error.value) == (
        f"select_preset: no preset in {preset_dir} for dataset 'videomme' within flops budget 0.2 "
        "(its presets cost 0.25, 0.29, 0.48; skipped 1 unreadable: broken.yaml)"
    )
    with pytest.raises(ConfigError, match=r"dataset 'longvideobench' .* \(there is no preset for it; skipped 1"):
        select_preset(preset_dir, dataset="longvideobench", budget=0.5)


def test_select_preset_falls_back_to_the_target_budget_and_ranks_unmeasured_last(tmp_path):
    _preset_file(tmp_path, "unmeasured.yaml", "videomme", 0.4, None, None)
    with pytest.raises(ConfigError, match="its presets cost 0.4\\)$"):
        select_preset(tmp_path, dataset="videomme", budget=0.35)
    assert select_preset(tmp_path, dataset="videomme", budget=0.4).flops_ratio == 0.4
    _preset_file(tmp_path, "measured.yaml", "videomme", 0.4, 0.39, 0.1)
    assert select_preset(tmp_path, dataset="videomme", budget=0.4).test_accuracy == 0.1


def test_select_preset_ranks_unlabelled_presets_by_test_fidelity(tmp_path):
    for name, fidelity in (("low.yaml", 0.7), ("high.yaml", 0.9)):
        save_preset(Preset.from_dict(_fidelity_document(fidelity)), tmp_path / name)
    _preset_file(tmp_path, "unmeasured.yaml", "videomme", 0.3, 0.29, None)
    chosen = select_preset(tmp_path, dataset="videomme", budget=0.3)
    assert (os.path.basename(chosen.path), chosen.test_score, chosen.test_accuracy) == ("high.yaml", 0.9, None)


def test_select_preset_checks_its_arguments(tmp_path):
    with pytest.raises(ConfigError, match=r"^select_preset.budget: must be in \(0, 1\], got 0$"):
        select_preset(tmp_path, dataset="videomme", budget=0)
    with pytest.raises(ConfigError, match="^select_preset.directory: no such directory"):
        select_preset(tmp_path / "missing", dataset="videomme", budget=0.3)
