"""The shipped demo model (assets/tiny-llava-ov-synthetic): accuracy that depends on which tokens survive."""

import pytest

import adatp
from autotune.data import synthetic
from autotune.engine import Engine
from autotune.tinymodel import DEFAULT_DIR


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    root = synthetic.generate(tmp_path_factory.mktemp("held-out"), 60, seed=20_000)
    return synthetic.load(root).questions


def test_accuracy_is_high_unpruned_and_falls_when_the_answer_tokens_go(held_out):
    engine = Engine(str(DEFAULT_DIR))
    vanilla = engine.evaluate(held_out, None, batch_size=16)
    uniform = engine.evaluate(held_out, adatp.AdaTPConfig(method="uniform", retention=0.1, prune_layer=0,
                                                          score="norm"), batch_size=16)
    n_text = len(engine.prompt_ids(held_out[0])) - engine.n_visual
    # 4 layers and ~80 text tokens: only pruning before the LM reaches a 0.3 budget (prune_layer 1 bottoms at ~0.43).
    retention = adatp.retention_for_budget(engine.model.config.text_config, engine.n_visual, n_text, 0.3, 0)
    pruned = engine.evaluate(held_out, adatp.AdaTPConfig(retention=retention, prune_layer=0, score="norm"),
                             batch_size=16)
    assert len(vanilla.correct) == 120
    assert vanilla.accuracy >= 0.8
    assert uniform.accuracy <= vanilla.accuracy - 0.2
    assert pruned.flops_ratio <= 0.3 + 1e-9
    assert pruned.accuracy >= vanilla.accuracy - 0.15  # AdaTP keeps most of it (0.923 of 1.0 on 300 questions)
