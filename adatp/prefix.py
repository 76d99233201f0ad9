"""Prefix cache: what no threshold can change, computed once per video.

With `score: attention` at `prune_layer: K`, layers 0..K-1 over the prefix (everything up to the last video token:
system prompt, video, Qwen3-VL's timestamps) compute the same thing for every config and every question of that
video: attention is causal and the question comes after the video. `encode_prefix` runs the prefix once through
layers < K and keeps their keys and values, the hidden state entering layer K and the per-frame mean input
embeddings (relevance `llm`). A call under `use_prefix` then holds only the question (the suffix): it runs through
layers < K against the cached keys and values, the few-row attention scores at layer K-1 come from the cached keys
plus the question's, the selection runs as in a full pruned prefill, the kept prefix rows are gathered from the
cached layer-K input, and layers >= K run on kept prefix + question. Positions are the ones the full call would
have: the prefix's own, and for the suffix the next ones (`suffix_position_ids`).

Same predictions as the full pruned prefill, logits equal within dtype tolerance (tests/adatp/test_prefix.py). Limits:
one prefix per call (every row continues the same prefix: batch the questions of one video), `positions:
original`, scores from `attention` (or none: uniform / random), relevance `llm`; logits only (no cache returned).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from transformers.cache_utils import DynamicCache

from adatp.kinds import kind, layer_kinds
from adatp.layers import deepstack_additions, gather_rows, masks_for, run_layers
from adatp.models import multimodal_of
from adatp.models.base import Positions
from adatp.scoring import mean_query_attention
from adatp.select import select_visual_tokens
from adatp.state import state_of, timed


@dataclasses.dataclass
class Prefix:
    """A prefix run through layers < K, for one video (P tokens, F frames of N tokens, K = prune_layer)."""

    keys: torch.Tensor  # [K, Hkv, P, d] as layers < K cache them (after their norms and RoPE)
    values: torch.Tensor  # [K, Hkv, P, d]
    hidden: torch.Tensor  # [P, D] the input of layer K
    rope: torch.Tensor  # [P] positions, or [3, P] M-RoPE ids
    text: torch.Tensor | None  # [P] text position ids where the model passes them to its layers
    next_rope: torch.Tensor  # [1] or [3]: the position the model gives a text token right after the prefix
    video_columns: torch.Tensor  # [F*N] columns of the prunable video tokens
    frame_features: torch.Tensor  # [F, D] float32 mean input embedding per frame (relevance `llm`)
    deepstack: torch.Tensor | None  # [levels - K, F*N, D] Qwen3-VL additions after layers >= K, video tokens only
    frames: int
    per_frame: int

    @property
    def prune_layer(self) -> int:
        return self.keys.shape[0]

    @property
    def length(self) -> int:
        return self.hidden.shape[0]

    def nbytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors, by field name (what a cache stores; `from_tensors` rebuilds the prefix)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if isinstance(getattr(self, field.name), torch.Tensor)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Prefix:
        """Inverse of `tensors` (frames and tokens per frame follow from the shapes)."""
        frames = tensors["frame_features"].shape[0]
        return cls(**{name: tensors.get(name) for name in ("keys", "values", "hidden", "rope", "text", "next_rope",
                                                           "video_columns", "frame_features", "deepstack")},
                   frames=frames, per_frame=tensors["video_columns"].shape[0] // frames)

    def to(self, device: torch.device | str) -> Prefix:
        moved = {name: tensor.to(device) for name, tensor in self.tensors().items()}
        return dataclasses.replace(self, **moved)


def supports(config, model=None) -> bool:
    """Whether a config's trials can run from a prefix (else they need the full pruned prefill). With `model`, also
    whether its layers < K are all of a kind whose state a prefix stores (`adatp.kinds`: not Gated DeltaNet's)."""
    scores_ok = not config.uses_scores or config.score == "attention"
    if not (config.prune_layer >= 1 and scores_ok and config.positions == "original" and config.relevance == "llm"):
        return False
    if model is None:
        return True
    kinds = layer_kinds(multimodal_of(model).config.text_config)
    return all(kind(name).prefix for name in kinds[: config.prune_layer])


def encode_prefix(model, **inputs) -> Prefix:
    """Run the prefix of one video (batch 1, `input_ids` ending at the last video token, with the video's inputs as
    the model takes them) through layers < K of a model pruned with `adatp.enable` (K = its config's prune_layer)."""
    state = state_of(model)
    if state is None or not supports(state.config, model):
        raise ValueError("adatp: encode_prefix needs a model enabled with a config that prefixes serve "
                         "(prune_layer >= 1, score 'attention', positions 'original', relevance 'llm', and no "
                         "linear-attention layer below prune_layer)")
    # One text token more than the prefix: the position the model gives it is where a question starts (each model
    # and release has its own rule after a video, e.g. Qwen2.5-VL resumes at the grid's side, not at max + 1).
    ids = inputs["input_ids"]
    probe = ids[:, :1].masked_fill(ids[:, :1] == state.video_token_id, 0)
    inputs = {**inputs, "input_ids": torch.cat([ids, probe], dim=1)}
    for name, fill in (("attention_mask", 1), ("mm_token_type_ids", 0)):
        if inputs.get(name) is not None:
            inputs[name] = torch.cat([inputs[name], torch.full_like(inputs[name][:, :1], fill)], dim=1)
    state.capture_prefix, state.captured = True, None
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        state.capture_prefix = False
    prefix, state.captured = state.captured, None
    if prefix is None:
        raise ValueError("adatp: encode_prefix found no whole video in the prefix")
    return prefix


def suffix_position_ids(prefix: Prefix, attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded suffix batch ([B, q] mask) that continues `prefix`: [B, q], or [3, B, q]."""
    ordinal = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    if prefix.rope.dim() == 1:
        return ordinal + prefix.next_rope
    return ordinal[None] + prefix.next_rope[:, None, None]


@contextlib.contextmanager
def use_prefix(model, prefix: Prefix) -> Iterator[None]:
    """Inside: the model's calls hold suffixes continuing `prefix` (pass `suffix_position_ids`); logits only."""
    state = state_of(model)
    if state is None:
        raise ValueError("adatp: use_prefix needs a model enabled with adatp.enable")
    if prefix.prune_layer != state.config.prune_layer:
        raise ValueError(f"adatp: the prefix was encoded for prune_layer {prefix.prune_layer}, the config prunes "
                         f"at {state.config.prune_layer}")
    state.prefix = prefix
    try:
        yield
    finally:
        state.prefix = None


def capture(lm, state, call, embeds, positions: Positions, kwargs) -> torch.Tensor:
    """The prefix pass (`encode_prefix`): layers < K over the whole prefix, kept in `state.captured`."""
    prune_layer = state.config.prune_layer
    next_rope = positions.rope[..., 0, -1:].flatten()
    embeds, positions = embeds[:, :-1], Positions(positions.rope[..., :-1], None if positions.text is None
                                                    else positions.text[:, :-1])  # without the probe token
    length = embeds.shape[1]
    if embeds.shape[0] != 1 or call.videos != 1:
        raise ValueError("adatp: encode_prefix takes one prefix holding one video")
    frames, per_frame = call.grids[0]
    columns = torch.nonzero(call.video_mask[0]).flatten()[: frames * per_frame]
    if int(columns.max()) + 1 + call.trailing != length:
        raise ValueError("adatp: the prefix must end with its video (the question comes after it)")
    deepstack = [level[:, :-1] for level in deepstack_additions(
        torch.cat([embeds, embeds[:, :1]], dim=1), kwargs.pop("visual_pos_masks", None),
        kwargs.pop("deepstack_visual_embeds", None))]
    cache = DynamicCache(config=lm.config)
    mask = torch.ones(1, length, dtype=torch.bool, device=embeds.device)
    masks = masks_for(lm, range(prune_layer), embeds, mask, cache, positions.text)
    hidden = run_layers(lm, embeds, range(prune_layer), masks, lm.rotary_emb(embeds, positions.rope), positions,
                         cache, True, kwargs, deepstack)
    width = embeds.shape[-1]
    state.captured = Prefix(
        keys=torch.stack([cache.layers[index].keys[0] for index in range(prune_layer)]),
        values=torch.stack([cache.layers[index].values[0] for index in range(prune_layer)]),
        hidden=hidden[0],
        rope=positions.rope[..., 0, :],
        text=None if positions.text is None else positions.text[0],
        next_rope=next_rope,
        video_columns=columns,
        frame_features=embeds[0, columns].float().view(frames, per_frame, width).mean(1),
        deepstack=torch.stack([level[0, columns] for level in deepstack[prune_layer:]])
        if len(deepstack) > prune_layer else None,
        frames=frames,
        per_frame=per_frame,
    )
    return hidden


def prefixed_forward(lm, state, embeds, mask_2d, positions: Positions, kwargs) -> torch.Tensor:
    """Suffix rows [B, q] continuing `state.prefix`: returns the last layer's hidden states [B, P' + q, D]."""
    prefix: Prefix = state.prefix
    prune_layer = prefix.prune_layer
    # Layers < K: the suffix against the prefix's cached keys and values (every row continues the same prefix).
    cache = _prefix_cache(lm, prefix, embeds.shape[0])
    full_mask = torch.cat([torch.ones(embeds.shape[0], prefix.length, dtype=torch.bool, device=embeds.device),
                           mask_2d], dim=1)
    masks = masks_for(lm, range(prune_layer), embeds, full_mask, cache, positions.text)
    embeddings = lm.rotary_emb(embeds, positions.rope)
    scoring_input = run_layers(lm, embeds, range(prune_layer - 1), masks, embeddings, positions, cache, True, kwargs)
    hidden = run_layers(lm, scoring_input, [prune_layer - 1], masks, embeddings, positions, cache, True, kwargs)
    with timed(state, embeds.device):  # scoring and selection, as `selection_seconds` counts them in a full prefill
        scores = None
        if state.config.uses_scores:  # score 'attention' (`supports`)
            scores = _suffix_scores(lm, prefix, cache, full_mask, mask_2d, scoring_input, embeddings)
        kept = _select_for_suffix(state.config, prefix, embeds, mask_2d, scores)
    state.kept_indices, state.frames, state.plan = kept, prefix.frames, None
    return _layers_from_prune(lm, prefix, kept, hidden, mask_2d, positions, kwargs)


def _prefix_cache(lm, prefix: Prefix, batch: int) -> DynamicCache:
    """A cache holding the prefix's keys and values of layers < K, shared by the `batch` rows."""
    cache = DynamicCache(config=lm.config)
    for index in range(prefix.prune_layer):
        cache.update(prefix.keys[index].expand(batch, -1, -1, -1), prefix.values[index].expand(batch, -1, -1, -1),
                     index)
    return cache


def _suffix_scores(lm, prefix: Prefix, cache, full_mask, mask_2d, scoring_input, embeddings) -> torch.Tensor:
    """The question rows' attention at layer K-1 to the prefix's video tokens, from the cache: [B, F, N]."""
    batch, length = scoring_input.shape[:2]
    device = scoring_input.device
    cached = prefix.length
    keys = cache.layers[prefix.prune_layer - 1].keys  # [B, Hkv, P + q, d]: the prefix's and now the suffix's
    rows = torch.arange(cached, cached + length, device=device)
    allowed = ((torch.arange(cached + length, device=device)[None, :] <= rows[:, None])[None]
               & full_mask[:, None])
    per_key = mean_query_attention(lm.layers[prefix.prune_layer - 1], scoring_input, embeddings, keys, allowed,
                                   mask_2d)
    return per_key[:, prefix.video_columns].view(batch, prefix.frames, prefix.per_frame)


def _select_for_suffix(config, prefix: Prefix, embeds, mask_2d, scores) -> torch.Tensor:
    """Kept video indices [B, M] per row, with relevance `llm` from the prefix's frames and each row's question."""
    batch = embeds.shape[0]
    weights = mask_2d.float()[..., None]
    question = (embeds.float() * weights).sum(1) / weights.sum(1).clamp(min=1)
    return select_visual_tokens(config, prefix.frames, prefix.per_frame, batch=batch, device=embeds.device,
                                scores=scores, frame_features=prefix.frame_features.expand(batch, -1, -1),
                                question=question)


def _layers_from_prune(lm, prefix: Prefix, kept, hidden, mask_2d, positions: Positions, kwargs) -> torch.Tensor:
    """Layers >= K: the kept prefix rows (text and kept video tokens, in order) + the suffix, at their positions."""
    batch = hidden.shape[0]
    keep_columns = _kept_prefix_columns(prefix, kept)
    hidden = torch.cat([gather_rows(prefix.hidden.expand(batch, -1, -1), keep_columns), hidden], dim=1)
    layer_positions = _kept_positions(prefix, keep_columns, positions)
    layer_mask = torch.cat([torch.ones(batch, keep_columns.shape[1], dtype=torch.bool, device=hidden.device),
                            mask_2d], dim=1)
    deepstack = _kept_deepstack(prefix, keep_columns, hidden, mask_2d.shape[1])
    layers = range(prefix.prune_layer, len(lm.layers))
    masks = masks_for(lm, layers, hidden, layer_mask, None, layer_positions.text)
    return run_layers(lm, hidden, layers, masks, lm.rotary_emb(hidden, layer_positions.rope), layer_positions, None,
                      False, kwargs, deepstack)


def _kept_prefix_columns(prefix: Prefix, kept: torch.Tensor) -> torch.Tensor:
    """[B, P'] the prefix columns that layers >= K see: its text and each row's kept video tokens, in order."""
    batch, cached = kept.shape[0], prefix.length
    keep = torch.ones(batch, cached, dtype=torch.bool, device=kept.device)
    keep[:, prefix.video_columns] = False
    keep.scatter_(1, prefix.video_columns[kept], True)
    kept_length = cached - prefix.frames * prefix.per_frame + kept.shape[1]
    return keep.to(torch.uint8).argsort(dim=-1, stable=True)[:, cached - kept_length :]


def _kept_positions(prefix: Prefix, keep_columns: torch.Tensor, positions: Positions) -> Positions:
    """The kept prefix rows' own positions, then the suffix's."""
    batch = keep_columns.shape[0]
    axes = prefix.rope.shape[:-1]  # () for 1D RoPE, (3,) for M-RoPE
    prefix_rope = prefix.rope.unsqueeze(-2).expand(*axes, batch, -1).gather(-1, keep_columns.expand(*axes, -1, -1))
    rope = torch.cat([prefix_rope, positions.rope], dim=-1)
    text = None
    if prefix.text is not None and positions.text is not None:
        text = torch.cat([prefix.text.expand(batch, -1).gather(1, keep_columns), positions.text], dim=1)
    return Positions(rope, text)


def _kept_deepstack(prefix: Prefix, keep_columns: torch.Tensor, hidden: torch.Tensor, length: int) -> list:
    """Per layer, Qwen3-VL's deepstack additions at the kept rows ([B, P' + q, D], zero off video; None below K)."""
    batch, width = hidden.shape[0], hidden.shape[-1]
    deepstack = [None] * prefix.prune_layer
    if prefix.deepstack is not None:
        for level in prefix.deepstack:
            dense = torch.zeros(batch, prefix.length, width, dtype=hidden.dtype, device=hidden.device)
            dense[:, prefix.video_columns] = level.to(hidden.dtype)
            deepstack.append(torch.cat([gather_rows(dense, keep_columns),
                                        torch.zeros(batch, length, width, dtype=hidden.dtype, device=hidden.device)],
                                       1))
    return deepstack
