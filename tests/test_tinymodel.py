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
