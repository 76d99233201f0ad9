"""The shipped tiny Qwen2.5-VL (assets/tiny-qwen2.5-vl-synthetic) and studies/demo-qwen.yaml: accuracy that
depends on which tokens survive, and the tuning service end to end on it (study, export, preset, MLflow)."""

from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

import adatp
from autotune.cli import app
from autotune.data import synthetic
from autotune.engine import Engine
from autotune.spec import load_spec
from autotune.tinymodel import QWEN_DIR

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FRAME_SIZE = (32, 32)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    root = synthetic.generate(tmp_path_factory.mktemp("held-out"), 60, seed=20_000)
    return synthetic.load(root).questions


def test_accuracy_is_high_unpruned_and_falls_when_the_answer_tokens_go(held_out):
    engine = Engine(str(QWEN_DIR), frame_size=FRAME_SIZE)
    assert engine.family == "qwen2_5_vl" and engine.n_visual == 8 * 16
    vanilla = engine.evaluate(held_out, None, batch_size=16)
    uniform = engine.evaluate(held_out, adatp.AdaTPConfig(method="uniform", retention=0.1, prune_layer=0,
                                                          score="norm"), batch_size=16)
    n_text = len(engine.prompt_ids(held_out[0])) - engine.n_visual
    retention = adatp.retention_for_budget(engine.model.config.text_config, engine.n_visual, n_text, 0.5, 0)
    pruned = engine.evaluate(held_out, adatp.AdaTPConfig(retention=retention, prune_layer=0, score="norm"),
                             batch_size=16)
    assert len(vanilla.correct) == 120
    assert vanilla.accuracy >= 0.8
    assert uniform.accuracy <= vanilla.accuracy - 0.2
    assert pruned.flops_ratio <= 0.5 + 1e-9
    assert pruned.accuracy >= vanilla.accuracy - 0.15


def test_demo_qwen_spec_tunes_and_exports(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the spec's model path is relative to the repository root
    overrides = ["n_trials=3", "budgets=[0.5]", "dataset.synthetic={n_videos: 12, seed: 30000}",
                 f"dataset.path={tmp_path / 'data'}", f"workdir={tmp_path / 'work'}",
                 f"presets_dir={tmp_path / 'presets'}", "pruner={name: none}"]
    runner = CliRunner()
    studied = runner.invoke(app, ["study", "studies/demo-qwen.yaml", *overrides, "--no-progress"])
    assert studied.exit_code == 0, studied.output
    exported = runner.invoke(app, ["export", "studies/demo-qwen.yaml", *overrides, "--no-progress"])
    assert exported.exit_code == 0, exported.output
    spec = load_spec(REPO / "studies" / "demo-qwen.yaml", overrides)
    assert spec.model.frame_size == FRAME_SIZE
    preset = adatp.load_preset(tmp_path / "presets" / "demo-qwen-synthetic-b0.50.yaml")
    assert preset.flops_ratio <= 0.5 and preset.target["frames"] == 16
    assert 0.0 <= preset.results["test_accuracy"]["value"] <= 1.0
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    parents = client.search_runs([experiment.experiment_id], "tags.`autotune.kind` = 'study'")
    params = parents[0].data.params
    assert params["video.family"] == "qwen2_5_vl" and params["video.frame_size"] == "[32, 32]"
    assert params["video.grid"] == "[8, 8, 8]"  # the study's one grid: 8 groups of 8 x 8 patches


def test_shipped_presets_load_and_the_qwen_ones_name_their_model():
    shipped = sorted((REPO / "presets").glob("*.yaml"))
    presets = {path.name: adatp.load_preset(path) for path in shipped}
    qwen = {name: preset for name, preset in presets.items() if name.startswith("demo-qwen-")}
    assert len(qwen) == 3
    for preset in qwen.values():
        assert preset.target["model"] == "assets/tiny-qwen2.5-vl-synthetic"
        assert preset.flops_ratio <= preset.target["flops_budget"]
        assert preset.results["test_accuracy"]["value"] >= preset.results["vanilla_accuracy"]["value"] - 0.15
