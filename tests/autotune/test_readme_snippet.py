"""The README's inference snippet runs as written: the shipped model and preset, on a synthetic video."""

import re

import torch
from specs import REPO

import adatp
from autotune.data import synthetic
from autotune.engine import Engine


def test_the_inference_snippet_runs_against_a_shipped_preset(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"Inference with a preset:\s*```python\n(.*?)```", readme, re.S).group(1)
    (path,) = re.findall(r'load_preset\("([^"]+)"\)', snippet)
    assert (REPO / path).is_file()
    synthetic.generate(tmp_path / "data", 1, seed=5)
    question = synthetic.load(tmp_path / "data").questions[0]
    engine = Engine(str(REPO / "assets" / "tiny-llava-ov-synthetic"))  # the engine's prompt and pixels for `inputs`
    ids = torch.tensor([engine.prompt_ids(question)])
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                  pixel_values_videos=engine.video.pixels(question.video_path)[None])
    monkeypatch.chdir(REPO)
    namespace = {"inputs": inputs}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    out, model, preset = namespace["out"], namespace["model"], namespace["preset"]
    assert preset.target["flops_budget"] == 0.25
    assert out.shape[0] == 1 and ids.shape[1] < out.shape[1] <= ids.shape[1] + 16
    assert adatp.state_of(model) is None  # disabled again
    # The same call pruned: generation from the preset's config keeps its share of the visual tokens.
    with torch.no_grad(), adatp.pruning(model, preset.config) as state:
        model(**inputs, logits_to_keep=1)
        assert state.kept_indices.shape[-1] == adatp.flops.kept_count(engine.n_visual, preset.config.retention)
