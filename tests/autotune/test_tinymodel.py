"""The demo model's trainer: builds the tokenizer and model from config, trains, saves, loads back."""

from autotune.data import synthetic
from autotune.engine import Engine
from autotune.tinymodel import train


def test_trainer_runs_end_to_end_and_saves_a_loadable_model(tmp_path):
    summary = train(tmp_path / "model", tmp_path / "data", videos=6, steps=4, batch=4)
    assert summary["steps"] == 4 and summary["questions"] == 12
    engine = Engine(str(tmp_path / "model"))
    questions = synthetic.load(tmp_path / "data").questions
    result = engine.evaluate(questions, None)
    assert len(result.predictions) == 12 and set(result.predictions.values()) <= set("ABCD")
    assert engine.frames == 16 and engine.tokens_per_frame == 16


def test_qwen3_5_trainer_feeds_the_engine_s_own_inputs(tmp_path):
    """The hybrid Qwen3.5 trains on what the engine later feeds it: the same prompt ids (a timestamp before each
    temporal group), pixels, grid and M-RoPE positions. With every token kept, the trainer's packed forward gives the
    engine's logits; the saved model loads back and is prunable at K = 4 and K = 8 (after its full-attention layers),
    and nowhere else."""
    import pytest
    import torch

    import adatp
    from autotune.tinymodel import QWEN3_5_LAYERS, _qwen_recipe

    summary = train(tmp_path / "model", tmp_path / "data", videos=4, steps=2, batch=2, family="qwen3_5")
    assert summary["family"] == "qwen3_5" and summary["questions"] == 8
    engine = Engine(str(tmp_path / "model"), frame_size=(32, 32))
    questions = synthetic.load(tmp_path / "data").questions
    assert engine.family == "qwen3_5" and engine.n_visual == 8 * 16 and engine.tokens_per_frame == 16
    result = engine.evaluate(questions, None)
    assert len(result.predictions) == 8 and set(result.predictions.values()) <= set("ABCD")
    recipe = _qwen_recipe(engine.tokenizer, questions[:2], seed=0, hybrid=True)
    recipe.model.load_state_dict(engine.model.state_dict())
    question = questions[0]
    assert recipe.prompt(question) == engine.prompt_ids(question)
    video = recipe.features(recipe.tower[question.video_id][None])
    logits = recipe.forward_kept([recipe.prompt(question)], video, [torch.ones(recipe.n_visual, dtype=torch.bool)])
    ids = torch.tensor([engine.prompt_ids(question)])
    pixels = engine.video.pixels(question.video_path)
    with torch.no_grad():
        stock = engine.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels,
                             video_grid_thw=torch.tensor([engine.video.grid]),
                             mm_token_type_ids=(ids == engine.model.config.video_token_id).int() * 2).logits[:, -1]
    assert torch.allclose(logits, stock, atol=1e-4, rtol=1e-4)
    assert [index for index, kind in enumerate(QWEN3_5_LAYERS) if kind == "full_attention"] == [3, 7]
    for layer in (4, 8):
        adatp.disable(engine.model)
        adatp.enable(engine.model, adatp.AdaTPConfig(retention=0.3, prune_layer=layer, score="attention"))
    adatp.disable(engine.model)
    with pytest.raises(adatp.ConfigError, match="valid: 0, 4, 8"):
        adatp.enable(engine.model, adatp.AdaTPConfig(retention=0.3, prune_layer=5, score="attention"))
