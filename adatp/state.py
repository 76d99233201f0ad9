"""The per-model pruning state that `adatp.enable` installs, and the profiling timer around scoring and selection."""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch

from adatp.config import AdaTPConfig
from adatp.graphs import SelectionGraphs
from adatp.models import multimodal_of
from adatp.models.base import VideoCall
from adatp.pruned_cache import Plan

__all__ = ["PruningState", "state_of", "timed"]


@dataclasses.dataclass
class PruningState:
    """Per-model state. After a pruned prefill: `kept_indices` (flat over F*N; [V, M] when the call's videos share
    one shape, else a tuple of one [M_v] tensor per video; in row-major order of the video tokens), `frames` F and
    `plan` (what layers >= K hold), for inspection."""

    config: AdaTPConfig
    adapter: object
    hook: object = None
    pending: VideoCall | None = None  # set by the multimodal pre-hook, consumed by the next LM call
    siglip: object = None
    tokenizer: object = None
    kept_indices: torch.Tensor | tuple[torch.Tensor, ...] | None = None
    frames: int | None = None
    plan: Plan | None = None  # the last call's plan; None when the last call was not a pruned prefill
    pending_pixels: torch.Tensor | None = None  # pixels seen by get_video_features (relevance: siglip)
    profile: bool = False  # when True, selection_seconds accumulates scoring + selection time (synchronised)
    selection_seconds: float = 0.0
    graphs: SelectionGraphs | None = None  # CUDA-graph replay of the selection (None: always eager)
    prefix: object = None  # adatp.prefix.Prefix the calls continue (`use_prefix`), else None
    capture_prefix: bool = False  # `encode_prefix`: the next call's layers < K go into `captured`
    captured: object = None
    # During `generate`: the prompt's length. Assisted decoding's first forward is the prompt plus the draft's tokens;
    # those are never read as the question (the selection must be greedy's), only kept as text.
    prompt_length: int | None = None

    @property
    def video_token_id(self) -> int:
        return self.adapter.video_token_id


def state_of(model) -> PruningState | None:
    """The pruning state of a model enabled with `adatp.enable`, else None."""
    return getattr(multimodal_of(model), "_adatp_state", None)


@contextlib.contextmanager
def timed(state: PruningState, device: torch.device):
    """Add the block's time to `state.selection_seconds` when profiling (synchronised on CUDA)."""
    if not state.profile:
        yield
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    state.selection_seconds += time.perf_counter() - start
