"""CUDA-graph replay of the token selection.

`select_visual_tokens` is a few hundred small kernels (sorts, gathers, cumulative sums on [B, F*N] tensors). On a
GPU each costs more to launch from Python than to run, so the selection takes milliseconds of host time in the
middle of the prefill while the GPU waits. Its shapes are fixed by (batch, frames, tokens per frame) and its
thresholds by the config, so one capture per (config, shapes) replays all of it as a single launch. A study
changes the config once per trial, which runs many batches; the capture costs about three eager selections.

Only the methods whose selection runs on the GPU alone are captured (adatp, fastv); the seeded baselines draw on a
CPU generator and stay eager. Anything that fails to capture falls back to eager for that key, with one warning.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch

GRAPHED_METHODS = ("adatp", "fastv")


class _Captured:
    def __init__(self, fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor]) -> None:
        device = next(iter(inputs.values())).device
        self.inputs = {name: tensor.clone() for name, tensor in inputs.items()}
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside the graph: lazy initialisation, sort workspaces
            for _ in range(2):
                fn(**self.inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn(**self.inputs)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        for name, tensor in inputs.items():
            self.inputs[name].copy_(tensor)
        self.graph.replay()
        return self.output.clone()


class SelectionGraphs:
    """A small LRU of captured selections, keyed by config and input shapes (each holds its own memory pool)."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self.graphs: OrderedDict[tuple, _Captured | None] = OrderedDict()
        self.captures = 0
        self.replays = 0

    def run(self, key: tuple, fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """fn(**inputs) through a graph for `key` (captured on first use); eager if capture failed before."""
        key = (key, *((name, tuple(t.shape), t.dtype, t.device) for name, t in sorted(inputs.items())))
        if key not in self.graphs:
            try:
                self.graphs[key] = _Captured(fn, inputs)
                self.captures += 1
            except RuntimeError as error:  # an op that cannot be captured: stay eager for this key
                warnings.warn(f"adatp: selection not captured in a CUDA graph ({error}); running it eagerly",
                              stacklevel=3)
                self.graphs[key] = None
            while len(self.graphs) > self.capacity:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        captured = self.graphs[key]
        if captured is None:
            return fn(**inputs)
        self.replays += 1
        return captured(inputs)
