"""CUDA-graph replay of the selection (adatp.graphs): the same indices and logits as the eager selection.

Needs a CUDA device (run on a GPU machine: `pytest tests/adatp/test_graphs.py`); on CPU the graphs are never used, which
the last test checks.
"""

import pytest
import torch
from tiny import tiny_model, video_batch

import adatp

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on a CUDA machine)")

CONFIGS = [
    adatp.AdaTPConfig(retention=0.3, prune_layer=2, score="attention"),
    adatp.AdaTPConfig(retention=0.2, prune_layer=2, score="attention", tau_s=0.2, tau_t=0.3, alpha_boost=3.0,
                      gamma_cap=0.3),
    adatp.AdaTPConfig(retention=0.5, prune_layer=0, score="norm", tau_s=0.5),
    adatp.AdaTPConfig(retention=0.3, prune_layer=2, score="attention", method="fastv"),
]


def _run(model, inputs, config, cuda_graphs):
    with torch.no_grad():
        state = adatp.enable(model, config, cuda_graphs=cuda_graphs)
        try:
            outputs = [(model(**inputs).logits, state.kept_indices.clone()) for _ in range(3)]
        finally:
            adatp.disable(model)
    return outputs, state


@cuda
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.method}@{c.prune_layer}-r{c.retention}")
def test_graph_replay_keeps_exactly_the_eager_tokens(config):
    model = tiny_model(4).cuda()
    for seed, pads in ((1, (0, 3, 5)), (2, (0, 0, 0))):  # a second input: the replay must not reuse stale inputs
        inputs = {k: v.cuda() for k, v in video_batch(3, pads=pads, seed=seed).items()}
        eager, eager_state = _run(model, inputs, config, cuda_graphs=False)
        graphed, state = _run(model, inputs, config, cuda_graphs=True)
        assert eager_state.graphs is None
        assert (state.graphs.captures, state.graphs.replays) == (1, 3)
        for (logits, kept), (graph_logits, graph_kept) in zip(eager, graphed, strict=True):
            assert torch.equal(kept, graph_kept)
            assert torch.equal(logits, graph_logits)


@cuda
def test_graph_cache_is_bounded_and_keyed_by_config():
    model = tiny_model(4).cuda()
    inputs = {k: v.cuda() for k, v in video_batch(2, seed=4).items()}
    state = adatp.enable(model, CONFIGS[0], cuda_graphs=True)
    try:
        with torch.no_grad():
            for step in range(6):  # six configs through one state, as a study's trials would
                state.config = CONFIGS[0].replace(tau_s=0.1 * step)
                model(**inputs)
    finally:
        adatp.disable(model)
    assert state.graphs.captures == 6 and len(state.graphs.graphs) == state.graphs.capacity == 4


def test_cpu_never_captures():
    model = tiny_model(4)
    inputs = video_batch(2, seed=5)
    graphed, state = _run(model, inputs, CONFIGS[0], cuda_graphs=True)
    eager, _ = _run(model, inputs, CONFIGS[0], cuda_graphs=False)
    assert (state.graphs.captures, state.graphs.replays) == (0, 0)
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(graphed, eager, strict=True))


def test_graphs_are_the_default_and_idle_on_cpu():
    model = tiny_model(4)
    inputs = video_batch(2, seed=6)
    state = adatp.enable(model, CONFIGS[0])
    try:
        with torch.no_grad():
            default_logits = model(**inputs).logits
    finally:
        adatp.disable(model)
    eager, _ = _run(model, inputs, CONFIGS[0], cuda_graphs=False)
    assert state.graphs is not None and (state.graphs.captures, state.graphs.replays) == (0, 0)
    assert torch.equal(default_logits, eager[0][0])


@cuda
def test_no_capture_inside_torch_compile():
    """The pruned forward traced by dynamo must not capture a CUDA graph. With graph breaks allowed: LLaVA-OV's own
    forward does not trace as one graph on torch 2.11 / 2.13 even without AdaTP (transformers 5.23; on CUDA the
    `masked_scatter` of the video features fails on an unbacked size, on the CPU a mapping proxy mutation)."""
    model = tiny_model(4).cuda()
    inputs = {k: v.cuda() for k, v in video_batch(2, seed=7).items()}
    eager, _ = _run(model, inputs, CONFIGS[0], cuda_graphs=False)
    state = adatp.enable(model, CONFIGS[0])  # graphs on by default
    try:
        torch._dynamo.reset()
        compiled = torch.compile(model.forward)
        with torch.no_grad():
            logits = compiled(**inputs).logits
    finally:
        adatp.disable(model)
    assert state.graphs.captures == 0
    assert torch.allclose(logits, eager[0][0], atol=1e-4, rtol=1e-4)
