"""AdaTP on transformers' `LlavaOnevisionForConditionalGeneration` (transformers 5.x, Qwen2/LLaMA-style LMs).

`enable` installs two things on the model instance (nothing on the class, so other models are untouched):
- a forward pre-hook on the multimodal model that records where the video tokens are (from `input_ids`);
- an instance-level `forward` on the language model that, on a prefill holding a video, runs layers
  0..K-1 on all tokens, scores the visual tokens, selects, and runs layers K.. on the kept tokens only.
  Decoding steps after such a prefill reuse the plan: layers < K attend over the full prefix, layers >= K over
  the kept prefix, each with its own 2D mask; kept tokens keep their original RoPE positions by default.

The `image_newline` token LLaVA-OV appends after a video is never pruned (it counts as a text token).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator

import torch
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast

from adatp.config import AdaTPConfig, ConfigError
from adatp.graphs import GRAPHED_METHODS, SelectionGraphs
from adatp.select import select_visual_tokens, true_columns


@dataclasses.dataclass
class _Plan:
    """What a pruned prefill decided, for the decoding steps that follow it."""

    keep_columns: torch.Tensor  # [B, L'] columns of the prefill sequence that layers >= K hold
    prefill_length: int
    position_shift: torch.Tensor  # [B, 1] original minus kept-group position (0 unless positions: renumber)


@dataclasses.dataclass
class PruningState:
    """Per-model state; `kept_indices` [B, M] (flat over F*N) is the last prefill's selection, for inspection."""

    config: AdaTPConfig
    tokens_per_frame: int
    video_token_id: int
    hook: object = None
    video_mask: torch.Tensor | None = None
    external_features: tuple[torch.Tensor, torch.Tensor] | None = None  # (frame [B,F,Dg], question [B,Dg])
    siglip: object = None
    tokenizer: object = None
    plan: _Plan | None = None
    seen: int = 0  # tokens of the original (unpruned) sequence processed so far, for default position ids
    kept_indices: torch.Tensor | None = None
    frames: int | None = None
    pending_pixels: torch.Tensor | None = None  # pixels seen by get_video_features (relevance: siglip)
    profile: bool = False  # when True, selection_seconds accumulates scoring + selection time (synchronised)
    selection_seconds: float = 0.0
    graphs: SelectionGraphs | None = None  # CUDA-graph replay of the selection (None: always eager)


@contextlib.contextmanager
def _timer(state: PruningState, device: torch.device):
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


def _multimodal(model):
    inner = getattr(model, "model", model)
    if not hasattr(inner, "language_model") or not hasattr(inner, "get_video_features"):
        raise TypeError(f"adatp.enable expects a LLaVA-OneVision model, got {type(model).__name__}")
    return inner


def enable(model, config: AdaTPConfig, tokenizer=None, profile: bool = False,
           cuda_graphs: bool = False) -> PruningState:
    """Turn AdaTP on for `model` (forward and generate). Re-enabling replaces the config.

    tokenizer: the model's tokenizer, needed only for `relevance: siglip` (to recover the question text).
    profile: accumulate the time spent scoring and selecting in `state.selection_seconds`.
    cuda_graphs: on a CUDA device, replay the selection from a CUDA graph (`adatp.graphs`; same indices). Off by
        default until tests/test_graphs.py and bench/prefill_speed.py have run on a GPU with it.
    """
    if not isinstance(config, AdaTPConfig):
        raise TypeError(f"config must be an AdaTPConfig, got {type(config).__name__}")
    disable(model)
    inner = _multimodal(model)
    layers = inner.config.text_config.num_hidden_layers
    if config.prune_layer >= layers:
        raise ConfigError(f"config.prune_layer: must be below the language model's {layers} layers, "
                          f"got {config.prune_layer}")
    vision = inner.config.vision_config
    side = vision.image_size // vision.patch_size
    state = PruningState(
        config=config,
        tokens_per_frame=math.ceil(side / 2) ** 2,
        video_token_id=inner.config.video_token_id,
        tokenizer=tokenizer,
        profile=profile,
        graphs=SelectionGraphs() if cuda_graphs else None,
    )
    if config.relevance == "siglip":
        from adatp.relevance import SiglipRelevance

        if tokenizer is None:
            raise ValueError("relevance 'siglip' needs enable(model, config, tokenizer=...) to read the question")
        state.siglip = SiglipRelevance(config.siglip_path, device=inner.image_newline.device)
        # generate() encodes the video before the prefill and drops the pixels: catch them on the way.
        original = inner.get_video_features

        def get_video_features(pixel_values_videos, *args, **kwargs):
            state.pending_pixels = pixel_values_videos
            return original(pixel_values_videos, *args, **kwargs)

        inner.get_video_features = get_video_features
    state.hook = inner.register_forward_pre_hook(_record_video, with_kwargs=True)
    inner._adatp_state = state
    language_model = inner.language_model
    language_model._adatp_state = state
    language_model.forward = _pruned_forward.__get__(language_model)
    return state


def disable(model) -> None:
    """Turn AdaTP off; the model computes exactly as before `enable`."""
    inner = _multimodal(model)
    state = getattr(inner, "_adatp_state", None)
    if state is None:
        return
    state.hook.remove()
    del inner._adatp_state
    del inner.language_model._adatp_state
    del inner.language_model.forward
    vars(inner).pop("get_video_features", None)


@contextlib.contextmanager
def pruning(model, config: AdaTPConfig, tokenizer=None, cuda_graphs: bool = False) -> Iterator[PruningState]:
    """`with adatp.pruning(model, config): ...` enables AdaTP inside the block only."""
    state = enable(model, config, tokenizer=tokenizer, cuda_graphs=cuda_graphs)
    try:
        yield state
    finally:
        disable(model)


def state_of(model) -> PruningState | None:
    return getattr(_multimodal(model), "_adatp_state", None)


def _record_video(module, args, kwargs):
    state: PruningState = module._adatp_state
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    embeds = kwargs.get("inputs_embeds")
    if input_ids is not None:
        video = input_ids == state.video_token_id
    else:
        marker = module.get_input_embeddings().weight[state.video_token_id]
        video = (embeds == marker).all(-1)
    state.video_mask = video if bool(video.any()) else None
    state.external_features = None
    pixels = kwargs.get("pixel_values_videos")
    pixels = state.pending_pixels if pixels is None else pixels
    state.pending_pixels = None
    if state.siglip is not None and pixels is not None and state.video_mask is not None and input_ids is not None:
        last_video = video.long().cumsum(-1).argmax(-1, keepdim=True)
        after = torch.arange(video.shape[1], device=video.device)[None] > last_video
        texts = state.tokenizer.batch_decode(input_ids.masked_fill(~after, state.tokenizer.pad_token_id or 0),
                                             skip_special_tokens=True)
        state.external_features = (state.siglip.frame_features(pixels), state.siglip.text_features(texts))
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention_scores(
    layer, hidden: torch.Tensor, position_embeddings, query_rows: torch.Tensor, key_mask: torch.Tensor,
    rows: int | None = None,
) -> torch.Tensor:
    """Attention of the query rows to every key in `layer`, averaged over heads and query rows -> [B, L].

    Only the T last rows are projected to queries (T = most query rows in a batch row), so the cost is
    T x L per head, never L x L. hidden: the layer's input (residual stream) [B, L, D]; query_rows [B, L] bool
    (the text after the video); key_mask [B, L] bool (padding). rows: T when the caller knows it (saves a
    host-device synchronisation in the middle of the forward).
    """
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    rows = int(query_rows.sum(-1).max()) if rows is None else rows
    normed = layer.input_layernorm(hidden)
    head_dim = attn.head_dim
    query = attn.q_proj(normed[:, length - rows :]).view(batch, rows, -1, head_dim).transpose(1, 2)
    key = attn.k_proj(normed).view(batch, length, -1, head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    query = query * cos[:, :, length - rows :] + _rotate_half(query) * sin[:, :, length - rows :]
    key = key * cos + _rotate_half(key) * sin
    kv_heads = key.shape[1]
    query = query.reshape(batch, kv_heads, -1, rows, head_dim)  # [B, Hkv, G, T, d]: GQA without repeating keys
    logits = torch.einsum("bkgtd,bkld->bkgtl", query.float(), key.float()) * attn.scaling
    row_position = torch.arange(length - rows, length, device=hidden.device)
    allowed = (torch.arange(length, device=hidden.device)[None, :] <= row_position[:, None])[None] & key_mask[:, None]
    logits = logits.masked_fill(~allowed[:, None, None], float("-inf"))
    probs = logits.softmax(-1).nan_to_num(0.0)
    valid_rows = query_rows[:, length - rows :].float()  # [B, T]
    per_row = probs.mean(dim=(1, 2))  # [B, T, L]
    return (per_row * valid_rows[..., None]).sum(1) / valid_rows.sum(-1, keepdim=True).clamp(min=1)


def _mask_mapping(lm, hidden, mask_2d, cache, position_ids, layer_idx):
    arguments = dict(
        config=lm.config,
        inputs_embeds=hidden,
        attention_mask=mask_2d,
        past_key_values=cache,
        position_ids=position_ids,
        layer_idx=layer_idx,
    )
    mapping = {"full_attention": create_causal_mask(**arguments)}
    if getattr(lm, "has_sliding_layers", False):
        mapping["sliding_attention"] = create_sliding_window_causal_mask(**arguments)
    return mapping


def _run_layers(lm, hidden, layers, masks, position_embeddings, position_ids, cache, use_cache, kwargs):
    for index in layers:
        hidden = lm.layers[index](
            hidden,
            attention_mask=masks[lm.config.layer_types[index]],
            position_embeddings=position_embeddings,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=use_cache,
            **kwargs,
        )
    return hidden


def _gather_rows(tensor: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    index = columns.view(*columns.shape, *([1] * (tensor.dim() - 2))).expand(-1, -1, *tensor.shape[2:])
    return tensor.gather(1, index)


def _pruned_forward(
    self,
    input_ids=None,
    attention_mask=None,
    position_ids=None,
    past_key_values=None,
    inputs_embeds=None,
    use_cache=None,
    **kwargs,
):
    """Language-model forward with AdaTP; falls through to the stock forward when there is nothing to prune."""
    state: PruningState = self._adatp_state
    video_mask, state.video_mask = state.video_mask, None
    external, state.external_features = state.external_features, None
    if inputs_embeds is None:
        inputs_embeds = self.embed_tokens(input_ids)
    use_cache = self.config.use_cache if use_cache is None else use_cache
    if use_cache and past_key_values is None:
        past_key_values = DynamicCache(config=self.config)
    is_prefill = past_key_values is None or past_key_values.get_seq_length(0) == 0
    if is_prefill:
        state.plan, state.seen, state.kept_indices, state.frames = None, 0, None, None
    batch, length, _ = inputs_embeds.shape
    if (is_prefill and video_mask is None) or (not is_prefill and state.plan is None):
        output = type(self).forward(
            self,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        state.seen += length
        return output

    mask_2d = (
        attention_mask.bool()
        if attention_mask is not None
        else torch.ones(batch, state.seen + length, dtype=torch.bool, device=inputs_embeds.device)
    )
    if position_ids is None:
        position_ids = (torch.arange(length, device=inputs_embeds.device) + state.seen)[None].expand(batch, -1)
    position_ids = position_ids.expand(batch, -1)
    if is_prefill:
        hidden = _pruned_prefill(self, state, inputs_embeds, mask_2d, position_ids, past_key_values, use_cache,
                                 video_mask, external, kwargs)
    else:
        hidden = _pruned_decode(self, state, inputs_embeds, mask_2d, position_ids, past_key_values, use_cache,
                                kwargs)
    state.seen += length
    return BaseModelOutputWithPast(
        last_hidden_state=self.norm(hidden), past_key_values=past_key_values if use_cache else None
    )


def _pruned_prefill(lm, state, embeds, mask_2d, position_ids, cache, use_cache, video_mask, external, kwargs):
    config = state.config
    batch, length, width = embeds.shape
    # Our one host-device synchronisation in the prefill, before any layer runs: every shape after it is known.
    positions = torch.arange(length, device=embeds.device)
    last_video = torch.where(video_mask, positions, -1).max(-1).values
    query_rows = (positions[None] > last_video[:, None]) & mask_2d[:, -length:]
    counts, query_counts = torch.stack([video_mask.sum(-1), query_rows.sum(-1)]).tolist()
    if len(set(counts)) != 1:
        raise ValueError(f"adatp: every batch row must hold the same number of video tokens, got {counts}")
    video_columns = true_columns(video_mask, counts[0])
    query_count = max(query_counts)
    visual_columns = video_columns[:, :-1]  # the last video token is image_newline: never pruned
    n_visual, per_frame = visual_columns.shape[1], state.tokens_per_frame
    if n_visual == 0 or n_visual % per_frame:
        raise ValueError(f"adatp: {n_visual} visual tokens is not a whole number of {per_frame}-token frames")
    frames = n_visual // per_frame
    prune_layer = config.prune_layer

    visual = _gather_rows(embeds, visual_columns).view(batch, frames, per_frame, width)
    if external is not None:
        frame_features, question = external
    else:
        frame_features = visual.float().mean(2)
        weights = query_rows.float()[..., None]
        question = (embeds.float() * weights).sum(1) / weights.sum(1).clamp(min=1)
    scores = None
    if config.uses_scores and config.score == "norm":
        scores = visual.float().norm(dim=-1)
    elif config.uses_scores and config.score == "text_sim":
        text = question if external is None else (embeds.float() * query_rows.float()[..., None]).sum(1)
        scores = torch.nn.functional.cosine_similarity(visual.float(), text[:, None, None], dim=-1)

    hidden = embeds
    full_embeddings = lm.rotary_emb(hidden, position_ids)
    if prune_layer > 0:
        masks = _mask_mapping(lm, hidden, mask_2d, cache, position_ids, 0)
        hidden = _run_layers(lm, hidden, range(prune_layer - 1), masks, full_embeddings, position_ids, cache,
                             use_cache, kwargs)
        if config.uses_scores and config.score == "attention":
            with _timer(state, embeds.device):
                per_key = attention_scores(lm.layers[prune_layer - 1], hidden, full_embeddings, query_rows, mask_2d,
                                           rows=query_count)
                scores = per_key.gather(1, visual_columns).view(batch, frames, per_frame)
        hidden = _run_layers(lm, hidden, [prune_layer - 1], masks, full_embeddings, position_ids, cache,
                             use_cache, kwargs)

    with _timer(state, embeds.device):
        kept = _select(state, frames, per_frame, batch, scores, frame_features, question, embeds.device)
    state.kept_indices, state.frames = kept, frames
    keep = torch.ones(batch, length, dtype=torch.bool, device=embeds.device)
    keep.scatter_(1, visual_columns, False)
    keep.scatter_(1, visual_columns.gather(1, kept), True)
    keep_columns = true_columns(keep, length - n_visual + kept.shape[1])

    hidden = _gather_rows(hidden, keep_columns)
    kept_mask = mask_2d.gather(1, keep_columns)
    kept_positions = position_ids.gather(1, keep_columns)
    if config.positions == "renumber":
        renumbered = (kept_mask.long().cumsum(-1) - 1).clamp(min=0) + kept_positions[:, :1]
        shift = kept_positions[:, -1:] - renumbered[:, -1:]
        kept_positions = renumbered
    else:
        shift = torch.zeros(batch, 1, dtype=position_ids.dtype, device=embeds.device)
    state.plan = _Plan(keep_columns=keep_columns, prefill_length=length, position_shift=shift)
    masks = _mask_mapping(lm, hidden, kept_mask, cache, kept_positions, prune_layer)
    embeddings = lm.rotary_emb(hidden, kept_positions)
    return _run_layers(lm, hidden, range(prune_layer, len(lm.layers)), masks, embeddings, kept_positions, cache,
                       use_cache, kwargs)


def _select(state, frames, per_frame, batch, scores, frame_features, question, device) -> torch.Tensor:
    config = state.config

    def select(**tensors):
        return select_visual_tokens(config, frames, per_frame, batch=batch, device=device, **tensors)

    if state.graphs is None or device.type != "cuda" or config.method not in GRAPHED_METHODS:
        return select(scores=scores, frame_features=frame_features, question=question)
    inputs = {"scores": scores}
    if config.method != "fastv":
        inputs.update(frame_features=frame_features, question=question)
    return state.graphs.run((config, frames, per_frame, batch), select, inputs)


def _pruned_decode(lm, state, embeds, mask_2d, position_ids, cache, use_cache, kwargs):
    plan = state.plan
    prune_layer = state.config.prune_layer
    kept_mask = torch.cat(
        [mask_2d[:, : plan.prefill_length].gather(1, plan.keep_columns), mask_2d[:, plan.prefill_length :]], dim=1
    )
    hidden = embeds
    if prune_layer > 0:
        masks = _mask_mapping(lm, hidden, mask_2d, cache, position_ids, 0)
        hidden = _run_layers(lm, hidden, range(prune_layer), masks, lm.rotary_emb(hidden, position_ids),
                             position_ids, cache, use_cache, kwargs)
    kept_positions = position_ids - plan.position_shift
    masks = _mask_mapping(lm, hidden, kept_mask, cache, kept_positions, prune_layer)
    return _run_layers(lm, hidden, range(prune_layer, len(lm.layers)), masks, lm.rotary_emb(hidden, kept_positions),
                       kept_positions, cache, use_cache, kwargs)
