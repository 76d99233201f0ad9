"""The shipped tiny hybrid Qwen3.5 (assets/tiny-qwen3.5-synthetic): accuracy that depends on which tokens survive,
and AdaTP through the engine before the LM and after either full-attention layer (K = 4, K = 8)."""

import pytest

import adatp
from autotune.data import synthetic
from autotune.engine import Engine
from autotune.tinymodel import QWEN3_5_DIR

pytestmark = pytest.mark.slow

# bench/results/oq3_tiny-qwen3.5-synthetic.json, 300 held-out questions: vanilla 1.000; AdaTP 1.000 at budget 0.6
# (K = 0), 0.8 (K = 4) and 0.96 (K = 8). Here 80 of them, with room for a few misses.
VANILLA_AT_LEAST = 0.9
PRUNED_AT_LEAST = {0: 0.85, 4: 0.85, 8: 0.85}


@pytest.fixture(scope="module")
def engine():
    return Engine(str(QWEN3_5_DIR), frame_size=(32, 32))


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    root = synthetic.generate(tmp_path_factory.mktemp("held-out"), 40, seed=20_000)
    return synthetic.load(root).questions


def retention(engine, question, budget, layer):
    n_text = len(engine.prompt_ids(question)) - engine.n_visual
    return adatp.retention_for_budget(engine.model.config.text_config, engine.n_visual, n_text, budget, layer)


def test_accuracy_is_high_unpruned_and_depends_on_which_tokens_survive(engine, held_out):
    assert engine.family == "qwen3_5" and engine.n_visual == 8 * 16
    vanilla = engine.evaluate(held_out, None, batch_size=16)
    assert len(vanilla.correct) == 80 and vanilla.accuracy >= VANILLA_AT_LEAST
    scarce = dict(retention=0.05, prune_layer=0, score="norm")
    uniform = engine.evaluate(held_out, adatp.AdaTPConfig(method="uniform", **scarce), batch_size=16)
    assert uniform.accuracy <= vanilla.accuracy - 0.2
    for layer, budget in ((0, 0.6), (4, 0.8), (8, 0.96)):
        config = adatp.AdaTPConfig(retention=retention(engine, held_out[0], budget, layer), prune_layer=layer,
                                   score="attention" if layer else "norm")
        pruned = engine.evaluate(held_out, config, batch_size=16)
        assert pruned.flops_ratio <= budget + 1e-9
        assert pruned.kept_tokens < engine.n_visual
        assert pruned.accuracy >= PRUNED_AT_LEAST[layer], (layer, pruned.accuracy)


def test_demo_qwen3_5_spec_tunes_in_the_lm_and_exports(tmp_path, monkeypatch):
    from pathlib import Path

    from typer.testing import CliRunner

    from autotune.cli import app
    from autotune.spec import load_spec

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)  # the spec's model path is relative to the repository root
    overrides = ["n_trials=3", "budgets=[0.8]", "dataset.synthetic={n_videos: 12, seed: 30000}",
                 f"dataset.path={tmp_path / 'data'}", f"workdir={tmp_path / 'work'}",
                 f"presets_dir={tmp_path / 'presets'}", "pruner={name: none}"]
    runner = CliRunner()
    for command in ("study", "export"):
        result = runner.invoke(app, [command, "studies/demo-qwen3.5.yaml", *overrides, "--no-progress"])
        assert result.exit_code == 0, result.output
    spec = load_spec(repo / "studies" / "demo-qwen3.5.yaml", overrides)
    assert spec.base.prune_layer == 4 and spec.base.score == "attention"
    preset = adatp.load_preset(tmp_path / "presets" / "demo-qwen3.5-synthetic-b0.80.yaml")
    assert preset.flops_ratio <= 0.8 and preset.config.prune_layer == 4
    assert 0.0 <= preset.results["test_accuracy"]["value"] <= 1.0
