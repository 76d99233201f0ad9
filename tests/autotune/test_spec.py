import json
import os
import re
from pathlib import Path

import pytest
import yaml

from adatp.config import AdaTPConfig
from autotune.spec import (
    DEFAULT_SPACE,
    THRESHOLDS,
    SpecError,
    load_spec,
    mask_url,
    parse_override,
    spec_from_dict,
)

REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "studies"
# (spec file, dataset, data-root env var, model env var, frames)
REAL_SPECS = [
    ("videomme-llava-ov-7b.yaml", "videomme", "VIDEOMME_ROOT", "LLAVA_OV_7B", 32),
    ("mlvu-llava-ov-7b.yaml", "mlvu", "MLVU_ROOT", "LLAVA_OV_7B", 32),
    ("longvideobench-llava-ov-7b.yaml", "longvideobench", "LONGVIDEOBENCH_ROOT", "LLAVA_OV_7B", 32),
    ("videomme-llava-video-7b.yaml", "videomme", "VIDEOMME_ROOT", "LLAVA_VIDEO_7B", 64),
    ("videomme-qwen2.5-vl-7b.yaml", "videomme", "VIDEOMME_ROOT", "QWEN2_5_VL_7B", 32),
    ("videomme-qwen3-vl-8b.yaml", "videomme", "VIDEOMME_ROOT", "QWEN3_VL_8B", 32),
]


def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture
def valid(tmp_path):
    """A minimal valid spec mapping whose model dir and dataset root exist."""
    root = tmp_path / "mlvu"
    root.mkdir()
    return {
        "name": "t",
        "model": {"path": str(_model_dir(tmp_path / "model"))},
        "dataset": {"name": "mlvu", "root": str(root)},
        "budgets": [0.5, 0.3],
        "workdir": str(tmp_path / "work"),
    }


def test_demo_spec_loads(monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_spec(STUDIES / "demo.yaml")
    assert spec.name == "demo"
    assert spec.source == str(STUDIES / "demo.yaml")
    assert spec.model.path == str(REPO / "assets" / "tiny-llava-ov-synthetic")
    assert (spec.model.dtype, spec.model.device, spec.model.attn_implementation) == ("float32", "cpu", "sdpa")
    assert spec.model.cuda_graphs is False
    assert spec.dataset.name == "synthetic"
    assert spec.dataset.root == str(REPO / ".autotune" / "demo" / "data")
    assert (spec.dataset.frames, spec.dataset.test_fraction, spec.dataset.split_seed) == (16, 0.5, 0)
    assert spec.dataset.synthetic == {"n_videos": 120, "seed": 30000, "questions_per_video": 2}
    assert spec.budgets == (0.25, 0.35, 0.5)
    assert spec.base == AdaTPConfig(method="adatp", score="norm", prune_layer=0, relevance="llm")
    assert spec.space == DEFAULT_SPACE
    assert (spec.sampler.name, spec.sampler.seed, spec.sampler.n_startup_trials) == ("tpe", 0, 8)
    assert (spec.pruner.name, spec.pruner.rungs, spec.pruner.reduction_factor) == ("successive_halving", 4, 2)
    assert spec.n_trials == 30
    assert spec.workdir == str(REPO / ".autotune" / "demo")
    assert spec.storage == f"sqlite:///{REPO}/.autotune/demo/optuna.db"
    assert spec.tracking_uri == f"sqlite:///{REPO}/.autotune/demo/mlflow.db"
    assert spec.artifact_location == str(REPO / ".autotune" / "demo" / "mlartifacts")
    assert spec.cache_dir == str(REPO / ".autotune" / "demo" / "cache")
    assert spec.presets_dir == str(REPO / ".autotune" / "demo" / "presets")  # make demo leaves tracked files alone
    assert spec.study_name(0.3) == "demo-synthetic-b0.30"
    assert spec.study_name(0.5) == "demo-synthetic-b0.50"


def test_config_for_sets_retention_and_searched_thresholds(monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_spec(STUDIES / "demo.yaml")
    config = spec.config_for(0.41, {"tau_s": 0.8, "gamma_cap": 0.25})
    assert config == AdaTPConfig(
        tau_s=0.8, tau_t=0.5, alpha_boost=2.0, gamma_cap=0.25, retention=0.41, prune_layer=0, score="norm"
    )
    assert spec.config_for(0.6) == spec.base.replace(retention=0.6)
    with pytest.raises(SpecError, match=r"^params\.retention: not a threshold"):
        spec.config_for(0.6, {"retention": 0.2})


@pytest.mark.parametrize(("file", "dataset", "env", "model_env", "frames"), REAL_SPECS)
def test_real_specs_load_with_env_roots(monkeypatch, tmp_path, file, dataset, env, model_env, frames):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv(env, str(root))
    model = _model_dir(tmp_path / "model-7b")
    monkeypatch.setenv(model_env, str(model))
    monkeypatch.chdir(tmp_path)
    spec = load_spec(STUDIES / file)
    assert spec.name == Path(file).stem
    assert spec.model.path == str(model)
    assert (spec.model.dtype, spec.model.device, spec.model.attn_implementation) == ("bfloat16", "cuda", "sdpa")
    assert spec.model.cuda_graphs is False
    assert (spec.dataset.name, spec.dataset.root, spec.dataset.frames) == (dataset, str(root), frames)
    assert spec.budgets == (0.2, 0.3, 0.5)
    assert (spec.base.method, spec.base.score, spec.base.prune_layer) == ("adatp", "attention", 2)
    assert (spec.n_trials, spec.sampler.name, spec.pruner.name, spec.pruner.rungs) == (
        60,
        "tpe",
        "successive_halving",
        4,
    )
    assert spec.workdir == str(tmp_path / ".autotune" / spec.name)
    assert spec.storage == f"sqlite:///{tmp_path}/.autotune/{spec.name}/optuna.db"
    assert spec.study_name(0.2) == f"{spec.name}-{dataset}-b0.20"


@pytest.mark.parametrize(("file", "dataset", "env", "model_env", "frames"), REAL_SPECS)
def test_real_specs_name_the_unset_env_var(monkeypatch, tmp_path, file, dataset, env, model_env, frames):
    monkeypatch.delenv(env, raising=False)
    model = _model_dir(tmp_path / "model")
    with pytest.raises(SpecError, match=rf"^dataset\.path: environment variable {env} is not set \(in {file}\)$"):
        load_spec(STUDIES / file, [f"model.path={model}"])


def test_real_spec_model_override_replaces_the_hub_default(monkeypatch, tmp_path):
    monkeypatch.setenv("MLVU_ROOT", str(tmp_path))
    monkeypatch.delenv("LLAVA_OV_7B", raising=False)
    model = _model_dir(tmp_path / "model")
    spec = load_spec(STUDIES / "mlvu-llava-ov-7b.yaml", [f"model.path={model}"])
    assert spec.model.path == str(model)


def _set(data, dotted, value):
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 3, "epochs: unknown key (allowed: name, model, dataset, budgets,"),
        ("dataset.fps", 2, "dataset.fps: unknown key (allowed: name, preset, source, path, root, split, video_root, "
         "columns, answer_format, where, subset, missing_video, frames, test_fraction, split_seed, limit, synthetic)"),
        ("sampler.sed", 1, "sampler.sed: unknown key"),
        ("space", {"tau_x": [0, 1]}, "space.tau_x: unknown threshold (allowed: tau_s, tau_t, alpha_boost, gamma_cap)"),
        ("space", {"tau_s": [0.5, 1.2]}, "space.tau_s: must lie within tau_s's valid range [-1, 1], got [0.5, 1.2]"),
        ("space", {"gamma_cap": [0.0, 0.5]}, "space.gamma_cap: must lie within gamma_cap's valid range (0, 1]"),
        ("space", {"alpha_boost": [1, 101]}, "space.alpha_boost: must lie within alpha_boost's valid range [1, 100]"),
        ("space", {"tau_t": [0.8, 0.2]}, "space.tau_t: low must be < high, got [0.8, 0.2]"),
        ("space", {"tau_t": [0.5, 0.5]}, "space.tau_t: low must be < high"),
        ("space", {"tau_t": [0.5]}, "space.tau_t: must be a [low, high] pair, got [0.5]"),
        ("space", {}, "space: must search at least one threshold"),
        ("space", {"tau_s": [0.95, 1.0]}, "base.tau_s: 0.9 is outside the searched range space.tau_s = [0.95, 1]"),
        ("budgets", [0.3, 0], "budgets[1]: must be in (0, 1], got 0"),
        ("budgets", [1.5], "budgets[0]: must be in (0, 1], got 1.5"),
        ("budgets", ["x"], "budgets[0]: must be a number, got str 'x'"),
        ("budgets", [True], "budgets[0]: must be a number, got bool True"),
        ("budgets", [0.3, 0.5, 0.3], "budgets[2]: duplicate of budgets[0] (0.3)"),
        ("budgets", [0.301, 0.302], "budgets[1]: 0.302 and budgets[0] = 0.301 both round to 0.30"),
        ("budgets", [], "budgets: must be a non-empty list"),
        ("budgets", 0.3, "budgets: must be a non-empty list"),
        ("dataset.preset", "kinetics",
         "dataset.preset: must be one of videomme, mlvu, longvideobench, synthetic, got 'kinetics'"),
        ("dataset.name", "My QA", "dataset.name: must match [a-z0-9][a-z0-9_.-]* (lowercase slug), got 'My QA'"),
        ("dataset.test_fraction", 1.0, "dataset.test_fraction: must be in (0, 1), got 1.0"),
        ("dataset.frames", 0, "dataset.frames: must be >= 1, got 0"),
        ("dataset.limit", 2.5, "dataset.limit: must be an integer, got float 2.5"),
        ("dataset.synthetic", {"n_videos": 4},
         "dataset.synthetic: only for the synthetic preset or a table over its questions.jsonl / open.jsonl, not mlvu"),
        ("dataset.columns", {"clip": "file"},
         "dataset.columns.clip: unknown key (allowed: id, video, video_id, question, options, answer)"),
        ("dataset.columns", {"options": []},
         "dataset.columns.options: a list of option columns must be non-empty column names, got []"),
        ("dataset.columns", {"options": ["a", 3]},
         "dataset.columns.options: a list of option columns must be non-empty column names"),
        ("dataset.columns", {"question": 3}, "dataset.columns.question: must be"),
        ("dataset.source", "sql",
         "dataset.source: must be one of json, csv, parquet, disk, hub, videofolder, got 'sql'"),
        ("dataset.subset", {"stratify": "duration"}, "dataset.subset.n: required"),
        ("dataset.subset", {"n": 0}, "dataset.subset.n: must be >= 1, got 0"),
        ("dataset.subset", {"n": 5, "size": 3}, "dataset.subset.size: unknown key (allowed: n, stratify, seed)"),
        ("dataset.missing_video", "maybe", "dataset.missing_video: must be one of error, skip, got 'maybe'"),
        ("dataset.answer_format", "roman", "dataset.answer_format: must be one of auto, letter, index, text"),
        ("dataset.where", {"duration": {"long": 1}}, "dataset.where.duration: must be a value or a list of values"),
        ("sampler.name", "cmaes", "sampler.name: must be one of tpe, random, nsga2, gp, got 'cmaes'"),
        ("pruner.name", "patient", "pruner.name: must be one of successive_halving, hyperband, median, none"),
        ("pruner.reduction_factor", 1, "pruner.reduction_factor: must be >= 2, got 1"),
        ("n_trials", 0, "n_trials: must be >= 1, got 0"),
        ("n_trials", "5", "n_trials: must be an integer, got str '5'"),
        ("batch_size", 0, "batch_size: must be >= 1, got 0"),
        ("objective", "loss", "objective: must be one of auto, accuracy, fidelity, got 'loss'"),
        ("mode", "decode", "mode: must be one of auto, logits, generate, got 'decode'"),
        ("metric", "bleu", "metric: must be one of auto, letter, exact_match, token_f1, relative_accuracy, got 'bleu'"),
        ("max_new_tokens", 0, "max_new_tokens: must be in [1, 4096], got 0"),
        ("protocol", "lmms-eval-0.3", "protocol: must be one of lmms-eval-0.7, strict, got 'lmms-eval-0.3'"),
        ("name", "My Study", "name: must match [a-z0-9][a-z0-9_.-]*"),
        ("model.dtype", "float64", "model.dtype: must be one of float32, bfloat16, float16, got 'float64'"),
        ("model.device", "gpu", "model.device: must be cpu, cuda, cuda:N or mps, got 'gpu'"),
        ("model.trust_remote_code", "yes", "model.trust_remote_code: must be true or false, got 'yes'"),
        ("model.cuda_graphs", 1, "model.cuda_graphs: must be true or false, got 1"),
        ("base.retention", 0.3, "base.retention: not allowed; retention comes from each budget (budgets: 0.3, 0.5)"),
        ("base.tau_t", 1.5, "base.tau_t: must be in [0, 1], got 1.5"),
        ("base.prune_layer", 0, "base.prune_layer: score 'attention' reads layer prune_layer - 1"),
        ("base.speed", 1, "base.speed: unknown key"),
        ("warm_start", [{"tau_s": 0.5}], "warm_start[0].tau_s: must be inside space.tau_s = [0.7, 1], got 0.5"),
        ("warm_start", [{"retention": 0.5}], "warm_start[0].retention: not a searched threshold"),
        ("storage", "optuna.db", "storage: must be a SQLAlchemy URL"),
        ("heartbeat.outage", 0, "heartbeat.outage: must be >= 1, got 0"),
        ("heartbeat.outage", "1m", "heartbeat.outage: must be an integer, got str '1m'"),
        ("heartbeat.grace", 60, "heartbeat.grace: must exceed heartbeat.interval (60), got 60"),
        ("storage", "redis://u:pw@h/0", "storage: must be a SQLAlchemy URL (sqlite:///path.db, postgresql://"),
        ("tracking_uri", "ftp://host/x", "tracking_uri: must be sqlite:///path.db, postgresql://..., http(s)://"),
    ],
)
def test_bad_field_names_its_path(valid, field, value, message):
    _set(valid, field, value)
    with pytest.raises(SpecError) as caught:
        spec_from_dict(valid)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_bad_storage_url_is_masked_in_the_error(valid):
    valid["storage"] = "redis://u:hunter2@h/0"
    with pytest.raises(SpecError) as caught:
        spec_from_dict(valid)
    assert "hunter2" not in str(caught.value)
    assert "redis://u:***@h/0" in str(caught.value)


@pytest.mark.parametrize(("key", "message"), [("name", "name: required"), ("budgets", "budgets: required")])
def test_missing_required_field(valid, key, message):
    del valid[key]
    with pytest.raises(SpecError, match=f"^{message}$"):
        spec_from_dict(valid)


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [("model", "path", "model.path: required"), ("dataset", "root", "dataset.path: required")],
)
def test_missing_required_nested_field(valid, section, key, message):
    del valid[section][key]
    with pytest.raises(SpecError, match=f"^{message}$"):
        spec_from_dict(valid)


def test_missing_dataset_root(valid, tmp_path):
    valid["dataset"]["root"] = str(tmp_path / "nowhere")
    with pytest.raises(SpecError, match=rf"^dataset\.root: {tmp_path}/nowhere does not exist$"):  # the key it used
        spec_from_dict(valid)


def test_synthetic_root_may_be_missing_only_with_generator_params(valid, tmp_path):
    valid["dataset"] = {"name": "synthetic", "root": str(tmp_path / "gen"), "synthetic": {"n_videos": 4}}
    spec = spec_from_dict(valid)
    assert spec.dataset.synthetic == {"n_videos": 4, "seed": 0, "questions_per_video": 2}
    del valid["dataset"]["synthetic"]
    with pytest.raises(SpecError, match=r"^dataset\.root: .*/gen does not exist \(or give dataset\.synthetic"):
        spec_from_dict(valid)


def test_model_path_missing(valid, tmp_path):
    valid["model"]["path"] = str(tmp_path / "no-model")
    with pytest.raises(SpecError, match=rf"^model\.path: {tmp_path}/no-model is not a local directory$"):
        spec_from_dict(valid)


@pytest.mark.parametrize("value", [[360], [10, 640], [360, "640"], [360, True], "360x640", [360, 640, 3]])
def test_model_frame_size_must_be_two_pixel_sides(valid, value):
    valid["model"]["frame_size"] = value
    with pytest.raises(SpecError, match=r"^model\.frame_size: must be \[height, width\], two integers in \[28, 4096\]"):
        spec_from_dict(valid)
    valid["model"]["frame_size"] = [360, 640]
    spec = spec_from_dict(valid)
    assert spec.model.frame_size == (360, 640)
    assert spec.to_dict()["model"]["frame_size"] == [360, 640]  # JSON-safe, and loads back
    assert spec_from_dict(json.loads(json.dumps(spec.to_dict()))).model.frame_size == (360, 640)


def test_model_dir_without_config_json(valid, tmp_path):
    (tmp_path / "empty").mkdir()
    valid["model"]["path"] = str(tmp_path / "empty")
    with pytest.raises(SpecError, match=r"^model\.path: .*/empty has no config\.json"):
        spec_from_dict(valid)


def test_hub_id_not_in_cache(valid, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    valid["model"]["path"] = "nobody-xyz/not-a-model-123"
    message = "model.path: nobody-xyz/not-a-model-123 is not a local directory and not in the Hugging Face cache"
    with pytest.raises(SpecError) as caught:
        spec_from_dict(valid)
    assert str(caught.value) == message


def test_hub_id_in_cache_is_kept_as_an_id(valid, monkeypatch, tmp_path):
    import huggingface_hub

    asked = []

    def fake_lookup(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        return str(tmp_path / "snapshot" / filename)

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", fake_lookup)
    monkeypatch.chdir(tmp_path)
    valid["model"]["path"] = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    spec = spec_from_dict(valid)
    assert spec.model.path == "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    assert asked == [("llava-hf/llava-onevision-qwen2-7b-ov-hf", "config.json")]


def test_local_dir_shaped_like_a_hub_id_is_a_local_path(valid, monkeypatch, tmp_path):
    _model_dir(tmp_path / "models" / "tiny")
    monkeypatch.chdir(tmp_path)
    valid["model"]["path"] = "models/tiny"
    assert spec_from_dict(valid).model.path == str(tmp_path / "models" / "tiny")


def test_check_paths_false_skips_filesystem_checks(valid, tmp_path):
    valid["model"]["path"] = str(tmp_path / "absent-model")
    valid["dataset"]["root"] = str(tmp_path / "absent-root")
    spec = spec_from_dict(valid, check_paths=False)
    assert (spec.model.path, spec.dataset.root) == (str(tmp_path / "absent-model"), str(tmp_path / "absent-root"))


@pytest.mark.parametrize(
    ("text", "keys", "value"),
    [
        ("dataset.limit=40", ["dataset", "limit"], 40),
        ("budgets=[0.3,0.5]", ["budgets"], [0.3, 0.5]),
        ("model.path=foo", ["model", "path"], "foo"),
        ("model.trust_remote_code=true", ["model", "trust_remote_code"], True),
        ("model.cuda_graphs=true", ["model", "cuda_graphs"], True),
        ("dataset.limit=null", ["dataset", "limit"], None),
        ("storage=postgresql://u@h:5432/db", ["storage"], "postgresql://u@h:5432/db"),
        ("name=a=b", ["name"], "a=b"),
    ],
)
def test_parse_override(text, keys, value):
    assert parse_override(text) == (keys, value)


@pytest.mark.parametrize("text", ["n_trials", "=5", "dataset..limit=4", ".x=1", "budgets=[0.3"])
def test_bad_override_syntax(valid, text):
    with pytest.raises(SpecError, match=rf"^override '{re.escape(text)}': "):
        spec_from_dict(valid, [text])


def test_overrides_apply_before_validation(valid):
    spec = spec_from_dict(valid, ["n_trials=5", "budgets=[0.3]", "dataset.limit=40", "sampler.name=random"])
    assert (spec.n_trials, spec.budgets, spec.dataset.limit, spec.sampler.name) == (5, (0.3,), 40, "random")
    assert valid["budgets"] == [0.5, 0.3]  # the caller's mapping is untouched


def test_override_creates_a_missing_section_and_unknown_keys_still_fail(valid):
    spec = spec_from_dict(valid, ["pruner.rungs=2", "space.tau_t=[0.2,0.8]"])
    assert spec.pruner.rungs == 2
    assert spec.space == {"tau_t": (0.2, 0.8)}
    with pytest.raises(SpecError, match=r"^pruner\.rung: unknown key"):
        spec_from_dict(valid, ["pruner.rung=2"])
    with pytest.raises(SpecError, match=r"^override 'n_trials\.max=3': n_trials is not a mapping \(it holds 4\)$"):
        spec_from_dict(valid | {"n_trials": 4}, ["n_trials.max=3"])


def test_overrides_on_a_spec_file(monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_spec(STUDIES / "demo.yaml", ["n_trials=5", "budgets=[0.3]", "dataset.limit=40"])
    assert (spec.n_trials, spec.budgets, spec.dataset.limit) == (5, (0.3,), 40)
    with pytest.raises(SpecError, match=r"^n_trials: must be >= 1, got 0 \(in demo\.yaml\)$"):
        load_spec(STUDIES / "demo.yaml", ["n_trials=0"])


def test_env_expansion(valid, monkeypatch, tmp_path):
    monkeypatch.setenv("SPEC_TEST_ROOT", str(tmp_path))
    monkeypatch.delenv("SPEC_TEST_UNSET", raising=False)
    valid["dataset"]["root"] = "${SPEC_TEST_ROOT}/mlvu"
    valid["presets_dir"] = "${SPEC_TEST_UNSET:-/opt/presets}"
    valid["name"] = "run-${SPEC_TEST_UNSET:-x1}"
    spec = spec_from_dict(valid)
    assert spec.dataset.root == str(tmp_path / "mlvu")
    assert spec.presets_dir == "/opt/presets"
    assert spec.name == "run-x1"
    valid["cache_dir"] = "${SPEC_TEST_UNSET}/cache"
    with pytest.raises(SpecError, match=r"^cache_dir: environment variable SPEC_TEST_UNSET is not set$"):
        spec_from_dict(valid)
    valid["cache_dir"] = "c"
    valid["warm_start"] = [{"tau_s": "${SPEC_TEST_UNSET}"}]
    with pytest.raises(SpecError, match=r"^warm_start\[0\]\.tau_s: environment variable SPEC_TEST_UNSET"):
        spec_from_dict(valid)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
        (
            "postgresql+psycopg2://u:p%40ss@127.0.0.1:5432/autotune",
            "postgresql+psycopg2://u:***@127.0.0.1:5432/autotune",
        ),
        ("mysql://u:p@ss@h:3306/db", "mysql://u:***@h:3306/db"),
        ("postgresql://u@h/db?password=s3cret&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("postgresql://user@127.0.0.1:5432/autotune", "postgresql://user@127.0.0.1:5432/autotune"),
        ("sqlite:////tmp/optuna.db", "sqlite:////tmp/optuna.db"),
        ("https://mlflow.example.org:5000", "https://mlflow.example.org:5000"),
        ("/tmp/mlruns", "/tmp/mlruns"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_to_dict_is_json_safe_and_round_trips(monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_spec(STUDIES / "demo.yaml", ["warm_start=[{tau_s: 0.8, gamma_cap: 0.3}]"])
    data = spec.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert yaml.safe_load(yaml.safe_dump(data)) == data
    assert data["budgets"] == [0.25, 0.35, 0.5]
    assert data["space"]["tau_s"] == [0.7, 1.0]
    assert "retention" not in data["base"] and "source" not in data
    again = spec_from_dict(json.loads(json.dumps(data)), source=spec.source, check_paths=False)
    assert again == spec


def test_to_dict_masks_passwords(valid):
    valid["storage"] = "postgresql://tuner:hunter2@127.0.0.1:5432/autotune"
    valid["tracking_uri"] = "postgresql://tuner:hunter2@127.0.0.1:5432/mlflow"
    spec = spec_from_dict(valid)
    assert spec.storage == "postgresql://tuner:hunter2@127.0.0.1:5432/autotune"  # the real URL is kept for use
    text = json.dumps(spec.to_dict())
    assert "hunter2" not in text
    assert spec.to_dict()["storage"] == "postgresql://tuner:***@127.0.0.1:5432/autotune"


def test_relative_paths_resolve_against_cwd(valid, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _model_dir(tmp_path / "ckpt")
    (tmp_path / "videos").mkdir()
    valid["model"]["path"] = "./ckpt"
    valid["dataset"]["root"] = "videos"
    valid.update(
        workdir="runs/t",
        presets_dir="out/presets",
        cache_dir="cache",
        artifact_location="arts",
        storage="sqlite:///db/optuna.db",
        tracking_uri="mlruns",
    )
    spec = spec_from_dict(valid)
    assert spec.model.path == str(tmp_path / "ckpt")
    assert spec.dataset.root == str(tmp_path / "videos")
    assert spec.workdir == str(tmp_path / "runs" / "t")
    assert spec.presets_dir == str(tmp_path / "out" / "presets")
    assert spec.cache_dir == str(tmp_path / "cache")
    assert spec.artifact_location == str(tmp_path / "arts")
    assert spec.storage == f"sqlite:///{tmp_path}/db/optuna.db"
    assert spec.tracking_uri == str(tmp_path / "mlruns")
    for path in (spec.model.path, spec.dataset.root, spec.workdir, spec.presets_dir, spec.cache_dir):
        assert os.path.isabs(path)


def test_defaults_derive_from_the_workdir(valid, tmp_path):
    spec = spec_from_dict(valid)
    work = tmp_path / "work"
    assert spec.storage == f"sqlite:///{work}/optuna.db"
    assert spec.tracking_uri == f"sqlite:///{work}/mlflow.db"
    assert spec.artifact_location == str(work / "mlartifacts")
    assert spec.cache_dir == str(work / "cache")
    assert spec.budgets == (0.3, 0.5)  # sorted ascending
    assert (spec.objective, spec.n_trials, spec.batch_size, spec.warm_start) == ("auto", 30, 8, ())
    assert (spec.mode, spec.metric, spec.max_new_tokens) == ("auto", "auto", 16)
    assert tuple(spec.space) == THRESHOLDS
    assert spec.base == AdaTPConfig()


def test_int_is_accepted_where_a_float_is_expected(valid):
    spec = spec_from_dict(valid, ["budgets=[1]", "space.alpha_boost=[1, 8]", "warm_start=[{alpha_boost: 3}]"])
    assert spec.budgets == (1.0,)
    assert spec.space == {"alpha_boost": (1.0, 8.0)}
    assert spec.warm_start == ({"alpha_boost": 3.0},)


def test_load_spec_file_errors(tmp_path):
    with pytest.raises(SpecError, match=r"no such spec file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"^bad\.yaml: not valid YAML"):
        load_spec(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match=r"^list\.yaml: must be a YAML mapping"):
        load_spec(listed)


# ---------------------------------------------------------------------------------------------------- dataset tables
def _table(valid, tmp_path, name="qa.jsonl", **section):
    """`valid` with its dataset replaced by a table at tmp_path/name (created) and the given dataset keys."""
    path = tmp_path / name
    path.write_text('{"id": "q0"}\n')
    valid["dataset"] = {"path": str(path), **section}
    return valid


def test_a_table_section_reads_every_new_key(valid, tmp_path):
    spec = spec_from_dict(_table(
        valid, tmp_path, split="test", video_root=str(tmp_path / "clips"),
        columns={"id": "uid", "video": "clip", "options": ["a", "b", "c"], "answer": "gold"}, answer_format="index",
        where={"duration": ["short", "medium"], "level": 2}, subset={"n": 50, "stratify": "duration"},
        missing_video="skip",
    ))
    data = spec.dataset
    assert (data.name, data.root, data.preset, data.source, data.split) == (
        "qa", str(tmp_path / "qa.jsonl"), None, "json", "test")
    assert data.video_root == str(tmp_path / "clips")
    assert data.columns == {"id": "uid", "video": "clip", "options": ["a", "b", "c"], "answer": "gold"}
    assert (data.answer_format, data.missing_video) == ("index", "skip")
    assert data.where == {"duration": ["short", "medium"], "level": 2}
    assert data.subset == {"n": 50, "stratify": "duration", "seed": 0}  # seed defaults to 0
    assert spec.study_name(0.3) == "t-qa-b0.30"


@pytest.mark.parametrize(("name", "source"), [("qa.csv", "csv"), ("qa.tsv", "csv"), ("qa.parquet", "parquet"),
                                              ("qa.json", "json")])
def test_a_table_source_comes_from_its_suffix(valid, tmp_path, name, source):
    assert spec_from_dict(_table(valid, tmp_path, name)).dataset.source == source


def test_a_directory_table_is_disk_with_dataset_info_else_a_videofolder(valid, tmp_path):
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "dataset_info.json").write_text("{}")
    (tmp_path / "clips").mkdir()
    valid["dataset"] = {"path": str(tmp_path / "saved")}
    assert spec_from_dict(valid).dataset.source == "disk"
    valid["dataset"] = {"path": str(tmp_path / "clips")}
    assert spec_from_dict(valid).dataset.source == "videofolder"


def test_a_path_without_a_known_suffix_needs_a_source(valid, tmp_path):
    valid["dataset"] = {"path": str(tmp_path / "qa.txt")}
    with pytest.raises(SpecError, match=r"^dataset\.source: cannot tell the source of .*qa\.txt' from its name; say "
                                        r"source: json \| csv \| parquet \| disk \| hub \| videofolder$"):
        spec_from_dict(valid, check_paths=False)


def test_the_default_dataset_name_is_the_file_stem_as_a_slug(valid):
    valid["dataset"] = {"path": "/x/My QA.jsonl"}
    spec = spec_from_dict(valid, check_paths=False)
    assert (spec.dataset.name, spec.dataset.root) == ("my-qa", "/x/My QA.jsonl")
    valid["dataset"] = {"path": "/x/clips/**", "source": "parquet"}
    assert spec_from_dict(valid, check_paths=False).dataset.name == "clips"  # a folder's glob: the folder's name
    valid["dataset"] = {"path": "/x/My QA.jsonl", "name": "mine"}
    assert spec_from_dict(valid, check_paths=False).dataset.name == "mine"


def test_a_benchmark_name_without_source_is_its_preset(valid, tmp_path):
    """Older specs say `name: videomme` (no preset, no source): still the videomme preset, under that name."""
    valid["dataset"] = {"name": "videomme", "root": str(tmp_path)}
    data = spec_from_dict(valid).dataset
    assert (data.name, data.preset, data.source, data.root) == ("videomme", "videomme", None, str(tmp_path))
    valid["dataset"] = {"preset": "mlvu", "path": str(tmp_path)}
    assert (spec_from_dict(valid).dataset.name, spec_from_dict(valid).dataset.preset) == ("mlvu", "mlvu")
    # With a source it is a table of one's own that happens to share the name.
    _table(valid, tmp_path, name="videomme.jsonl", source="json")
    valid["dataset"]["name"] = "videomme"
    data = spec_from_dict(valid).dataset
    assert (data.name, data.preset, data.source) == ("videomme", None, "json")


def test_path_and_root_are_one_key(valid, tmp_path):
    valid["dataset"] = {"name": "mlvu", "path": str(tmp_path), "root": str(tmp_path)}
    with pytest.raises(SpecError, match=r"^dataset\.root: give path or root \(the same thing\), not both$"):
        spec_from_dict(valid)
    del valid["dataset"]["root"]
    assert spec_from_dict(valid).dataset.root == str(tmp_path)


def test_no_dataset_section_asks_for_the_table(valid):
    del valid["dataset"]
    with pytest.raises(SpecError, match=r"^dataset\.path: required \(the table to tune on\)$"):
        spec_from_dict(valid)


@pytest.mark.parametrize(("key", "value"), [("path", "justname"), ("path", "org/name/extra"), ("root", "a b/c")])
def test_a_hub_path_must_be_org_name(valid, key, value):
    valid["dataset"] = {"source": "hub", key: value}
    with pytest.raises(SpecError) as caught:
        spec_from_dict(valid)
    assert str(caught.value) == f"dataset.{key}: a hub dataset id is 'org/name', got '{value}'"


def test_a_hub_path_is_kept_as_an_id_and_not_looked_up(valid):
    valid["dataset"] = {"source": "hub", "path": "lmms-lab/Video-MME", "preset": "videomme"}
    data = spec_from_dict(valid).dataset  # check_paths is on: a hub id is read later, from the local HF cache
    assert (data.root, data.source, data.preset, data.name) == ("lmms-lab/Video-MME", "hub", "videomme", "videomme")
    valid["dataset"] = {"source": "hub", "path": "someone/My_QA"}
    assert spec_from_dict(valid).dataset.name == "my_qa"


def test_synthetic_parameters_fit_a_table_over_the_synthetic_files(valid, tmp_path):
    for name in ("questions.jsonl", "open.jsonl"):
        valid["dataset"] = {"path": str(tmp_path / "gen" / name), "synthetic": {"n_videos": 4, "seed": 1}}
        data = spec_from_dict(valid).dataset  # missing, but it will be generated
        assert data.synthetic == {"n_videos": 4, "seed": 1, "questions_per_video": 2} and data.preset is None
    _table(valid, tmp_path, synthetic={"n_videos": 4})
    with pytest.raises(SpecError, match=r"^dataset\.synthetic: only for the synthetic preset or a table over its "
                                        r"questions\.jsonl / open\.jsonl, not '.*qa\.jsonl'$"):
        spec_from_dict(valid)


def test_metric_and_max_new_tokens(valid):
    spec = spec_from_dict(valid | {"metric": "token_f1", "max_new_tokens": 64, "mode": "generate"})
    assert (spec.metric, spec.max_new_tokens, spec.mode, spec.objective) == ("token_f1", 64, "generate", "auto")
    assert (spec.to_dict()["metric"], spec.to_dict()["max_new_tokens"]) == ("token_f1", 64)
    with pytest.raises(SpecError) as caught:
        spec_from_dict(valid | {"metric": "bleu"})
    assert str(caught.value) == ("metric: must be one of auto, letter, exact_match, token_f1, relative_accuracy, "
                                 "got 'bleu'")
    with pytest.raises(SpecError) as caught:
        spec_from_dict(valid | {"metric": ["bleu"]})
    assert str(caught.value).startswith("metric: must be one of auto, letter, exact_match, token_f1, relative_accuracy")
