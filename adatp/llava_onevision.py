"""AdaTP on transformers' `LlavaOnevisionForConditionalGeneration` (transformers 5.x, Qwen2/LLaMA-style LMs).

`enable` installs, on the model instance only (nothing on the class, so other models are untouched):
- a forward pre-hook on the multimodal model that notes, on a call that scatters video features (pixels or
  `mm_encoder_outputs`), where the video tokens are and how many videos and frames they hold;
- an instance-level `forward` on the language model that, on such a call starting a fresh cache, runs layers
  0..K-1 on all tokens, scores the visual tokens, selects per video, and runs layers K.. on the kept tokens only.
  The plan travels on the returned cache (`adatp.pruned_cache`): later calls continuing from it attend, in layers
  >= K, over the kept prefix only; kept tokens keep their original RoPE positions by default;
- an instance-level `forward` on the causal LM that computes the loss of `labels` over the positions that have
  logits, and `create_masks_for_generate` that keeps `generate` handing 2D masks to the forward (the pruned layers
  need their own masks, which a mask prepared for the whole sequence cannot give).

Everything else passes through to the stock forward unchanged: calls without video features, calls continuing an
unpruned cache, rows without a video (they keep all their tokens). The contract of a pruned call is in the README.
The `image_newline` token LLaVA-OV appends after each video is never pruned (it counts as a text token).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import time
import warnings
from collections.abc import Iterator

import torch
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils.output_capturing import capture_outputs

from adatp.config import AdaTPConfig, ConfigError
from adatp.graphs import GRAPHED_METHODS, SelectionGraphs
from adatp.pruned_cache import Plan, attach, plan_of
from adatp.select import select_visual_tokens, true_columns

# transformers 5.24 renamed `past_key_values` to `cache` in model, layer and mask signatures (the old name is
# deprecated); we take either and pass on the name of the installed release.
CACHE_ARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


@dataclasses.dataclass
class VideoCall:
    """The video features one multimodal call scatters into its input embeddings."""

    video_mask: torch.Tensor  # [B, L] positions holding video features (image_newline included)
    videos: int  # V videos in the call, in row-major order of their tokens
    frames: int  # F frames per video (one shape for all videos of a call)
    external: tuple[torch.Tensor, torch.Tensor] | None = None  # siglip: (frame [V,F,Dg], question [B,Dg])


@dataclasses.dataclass
class _Layout:
    """How the videos of a call sit in the batch, known on the host before any layer runs."""

    videos_per_row: list[int]
    query_count: int  # most text tokens after the last video in a row


@dataclasses.dataclass
class PruningState:
    """Per-model state. After a pruned prefill: `kept_indices` [V, M] (flat over F*N, one row per video, in
    row-major order of the video tokens), `frames` F and `plan` (what layers >= K hold), for inspection."""

    config: AdaTPConfig
    tokens_per_frame: int
    video_token_id: int
    hook: object = None
    pending: VideoCall | None = None  # set by the multimodal pre-hook, consumed by the next LM call
    siglip: object = None
    tokenizer: object = None
    kept_indices: torch.Tensor | None = None
    frames: int | None = None
    plan: Plan | None = None  # the last call's plan; None when the last call was not a pruned prefill
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

    model: a `LlavaOnevisionForConditionalGeneration` (or its inner `LlavaOnevisionModel`).
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
    language_model.forward = _bound_like(_language_model_forward, language_model)
    if model is not inner:
        model.forward = _bound_like(_causal_lm_forward, model)
        model.create_masks_for_generate = _masks_for_generate
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
    if model is not inner:
        vars(model).pop("forward", None)
        vars(model).pop("create_masks_for_generate", None)


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


def _video_shape(state: PruningState, kwargs: dict) -> tuple[int, int] | None:
    """(videos, frames) of the video features this call scatters, from shapes only; None when it scatters none."""
    encoded = (kwargs.get("mm_encoder_outputs") or {}).get("video")
    if encoded is not None:
        videos, tokens = encoded.pooler_output.shape[:2]
        frames, rest = divmod(tokens - 1, state.tokens_per_frame)
        return (videos, frames) if frames > 0 and rest == 0 else None
    pixels = kwargs.get("pixel_values_videos")
    if pixels is None or pixels.dim() != 5 or pixels.shape[1] == 0:
        return None
    return pixels.shape[0], pixels.shape[1]


def _record_video(module, args, kwargs):
    state: PruningState = module._adatp_state
    state.plan = None
    pixels = kwargs.get("pixel_values_videos")
    pixels = state.pending_pixels if pixels is None else pixels
    state.pending_pixels = None
    shape = _video_shape(state, kwargs)
    if shape is None:
        state.pending = None
        return None
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    if input_ids is not None:
        video = input_ids == state.video_token_id
    else:  # the stock model finds video placeholders in embeddings the same way
        marker = module.get_input_embeddings().weight[state.video_token_id]
        video = (kwargs["inputs_embeds"] == marker).all(-1)
    state.pending = VideoCall(video_mask=video, videos=shape[0], frames=shape[1])
    if state.siglip is not None and pixels is not None and input_ids is not None:
        last_video = torch.where(video, torch.arange(video.shape[1], device=video.device), -1).max(-1).values
        after = torch.arange(video.shape[1], device=video.device)[None] > last_video[:, None]
        texts = state.tokenizer.batch_decode(input_ids.masked_fill(~after, state.tokenizer.pad_token_id or 0),
                                             skip_special_tokens=True)
        state.pending.external = (state.siglip.frame_features(pixels), state.siglip.text_features(texts))
    return None


def _bound_like(function, module):
    """`function` bound to `module`, showing the signature of the module's own forward (generate reads it)."""
    original = type(module).forward

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        return function(self, *args, **kwargs)

    return forward.__get__(module)


def _masks_for_generate(config=None, inputs_embeds=None, attention_mask=None, **kwargs):
    """`generate` asks the model for its masks on compilable caches; a pruned model builds its own per layer."""
    return attention_mask


def _causal_lm_forward(self, *args, labels=None, **kwargs):
    """The causal LM's forward; with `labels`, the loss covers the positions that have logits (the kept ones)."""
    output = type(self).forward(self, *args, **kwargs)
    if labels is None:
        return output
    plan = self.model._adatp_state.plan
    if plan is not None and plan.pruned:
        labels = _kept_labels(labels, plan)
        if kwargs.get("shift_labels") is not None:
            kwargs["shift_labels"] = _kept_labels(kwargs["shift_labels"], plan)
    logits = output.logits if not isinstance(output, tuple) else output[0]
    loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs)
    if isinstance(output, tuple):
        return (loss, *output)
    return type(output)(loss=loss, **output)  # loss first, as the stock output orders it


def _kept_labels(labels: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Labels over the input [B, L] -> over the kept sequence [B, L'] (-100 on padding slots)."""
    kept = labels.gather(1, plan.keep_columns.to(labels.device))
    return kept.masked_fill(~plan.slot_valid.to(labels.device), -100)


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
        position_ids=position_ids,
        **{CACHE_ARG: cache},
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
            use_cache=use_cache,
            **{CACHE_ARG: cache},
            **kwargs,
        )
    return hidden


def _gather_rows(tensor: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    index = columns.view(*columns.shape, *([1] * (tensor.dim() - 2))).expand(-1, -1, *tensor.shape[2:])
    return tensor.gather(1, index)


def _is_fresh(cache) -> bool:
    """True when `cache` holds nothing yet (a prefill). Under compile, a static cache counts as fresh."""
    if cache is None:
        return True
    length = cache.get_seq_length()
    if isinstance(length, torch.Tensor):
        return torch.compiler.is_compiling() or int(length) == 0
    return length == 0


def _layout(state: PruningState, call: VideoCall, mask_2d: torch.Tensor) -> _Layout | None:
    """Videos per row and the query count; None when the video tokens do not split into whole videos per row.

    Eager: one host-device synchronisation, before any layer runs, after which every shape is known. Under
    torch.compile there is none: the call's V videos are taken to be V/B per row (shapes alone fix the plan).
    """
    batch, length = call.video_mask.shape
    per_video = call.frames * state.tokens_per_frame + 1
    if torch.compiler.is_compiling():
        if call.videos % batch:
            raise ValueError(f"adatp: under torch.compile every batch row must hold the same number of videos, "
                             f"got {call.videos} videos in {batch} rows")
        per_row = call.videos // batch
        return _Layout([per_row] * batch, length - per_row * per_video)
    positions = torch.arange(length, device=mask_2d.device)
    last_video = torch.where(call.video_mask, positions, -1).max(-1).values
    query_rows = (positions[None] > last_video[:, None]) & mask_2d[:, -length:]
    counts, query_counts = torch.stack([call.video_mask.sum(-1), query_rows.sum(-1)]).tolist()
    if sum(counts) != call.videos * per_video or any(count % per_video for count in counts):
        warnings.warn(f"adatp: video tokens per row {counts} are not whole videos of {per_video} tokens; "
                      "this call runs unpruned", stacklevel=4)
        return None
    return _Layout([count // per_video for count in counts], max(query_counts))


def _language_model_forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                            inputs_embeds=None, use_cache=None, **kwargs):
    """The language model's forward with AdaTP: a pruned prefill, a continuation of a pruned cache, or stock."""
    state: PruningState = self._adatp_state
    call, state.pending = state.pending, None
    past_key_values = kwargs.pop("cache", past_key_values)
    plan = plan_of(past_key_values)
    # A mask prepared for the whole model (a dict of 4D masks, a 4D tensor, flex attention's BlockMask), not 2D.
    dict_mask = attention_mask is not None and (
        not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2)
    if inputs_embeds is None and input_ids is not None:
        inputs_embeds = self.embed_tokens(input_ids)
    layout = None
    if plan is None and call is not None and not dict_mask and _is_fresh(past_key_values):
        batch, length = inputs_embeds.shape[:2]
        mask_2d = _mask_2d(attention_mask, batch, length, inputs_embeds.device)
        layout = _layout(state, call, mask_2d)
    if plan is None and layout is None:
        return type(self).forward(self, attention_mask=attention_mask, position_ids=position_ids,
                                  inputs_embeds=inputs_embeds, use_cache=use_cache, **{CACHE_ARG: past_key_values},
                                  **kwargs)
    if dict_mask:
        raise ValueError("adatp: a call continuing a pruned cache needs a 2D attention mask (or none), "
                         "not a prepared 4D mask: the pruned layers hold fewer tokens than the others")
    use_cache = self.config.use_cache if use_cache is None else use_cache
    return _pruned_forward(self, state=state, call=call, layout=layout, plan=plan, attention_mask=attention_mask,
                           position_ids=position_ids, past_key_values=past_key_values, inputs_embeds=inputs_embeds,
                           use_cache=use_cache, **kwargs)


def _mask_2d(attention_mask, batch: int, length: int, device) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    return attention_mask.to(device=device, dtype=torch.bool)


@capture_outputs
def _pruned_forward(self, *, state, call, layout, plan, attention_mask, position_ids, past_key_values, inputs_embeds,
                    use_cache, **kwargs):
    """Layers run by hand on a pruned prefill or after one; hidden states and attentions are captured by the same
    hooks as the stock forward (`capture_outputs`), so `output_hidden_states` / `output_attentions` hold."""
    batch, length, _ = inputs_embeds.shape
    cache = past_key_values
    if use_cache and cache is None:
        cache = DynamicCache(config=self.config)
    past = 0 if plan is None else cache.get_seq_length()  # original coordinates
    mask_2d = _mask_2d(attention_mask, batch, past + length, inputs_embeds.device)
    if position_ids is None:
        position_ids = (torch.arange(length, device=inputs_embeds.device) + past)[None]
    position_ids = position_ids.expand(batch, -1)
    if plan is None:
        hidden = _pruned_prefill(self, state, call, layout, inputs_embeds, mask_2d, position_ids, cache, use_cache,
                                 kwargs)
    else:
        hidden = _pruned_decode(self, state.config, plan, inputs_embeds, mask_2d, position_ids, cache, use_cache,
                                kwargs)
    return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), **{CACHE_ARG: cache if use_cache else None})


def _pruned_prefill(lm, state, call, layout, embeds, mask_2d, position_ids, cache, use_cache, kwargs):
    config = state.config
    batch, length, width = embeds.shape
    per_frame, frames, videos = state.tokens_per_frame, call.frames, call.videos
    n_visual = frames * per_frame
    device = embeds.device
    # Video v is the v-th run of F*N + 1 video tokens in row-major order (the order masked_scatter fills them in).
    flat = true_columns(call.video_mask.reshape(1, -1), videos * (n_visual + 1))[0].view(videos, n_visual + 1)
    video_row = flat[:, 0] // length  # [V]
    visual_columns = flat[:, :-1] % length  # [V, F*N]; each video's last token is image_newline: never pruned
    positions = torch.arange(length, device=device)
    last_video = torch.where(call.video_mask, positions, -1).max(-1).values
    query_rows = (positions[None] > last_video[:, None]) & mask_2d[:, -length:]

    visual = embeds[video_row[:, None], visual_columns].view(videos, frames, per_frame, width)
    if call.external is not None:
        frame_features, question = call.external[0], call.external[1][video_row]
    else:
        frame_features = visual.float().mean(2)
        weights = query_rows.float()[..., None]
        question = ((embeds.float() * weights).sum(1) / weights.sum(1).clamp(min=1))[video_row]
    scores = None
    if config.uses_scores and config.score == "norm":
        scores = visual.float().norm(dim=-1)
    elif config.uses_scores and config.score == "text_sim":
        text = question if call.external is None else (embeds.float() * query_rows.float()[..., None]).sum(1)[
            video_row]
        scores = torch.nn.functional.cosine_similarity(visual.float(), text[:, None, None], dim=-1)

    hidden = embeds
    prune_layer = config.prune_layer
    full_embeddings = lm.rotary_emb(hidden, position_ids)
    if prune_layer > 0:
        masks = _mask_mapping(lm, hidden, mask_2d, cache, position_ids, 0)
        hidden = _run_layers(lm, hidden, range(prune_layer - 1), masks, full_embeddings, position_ids, cache,
                             use_cache, kwargs)
        if config.uses_scores and config.score == "attention":
            with _timer(state, device):
                per_key = attention_scores(lm.layers[prune_layer - 1], hidden, full_embeddings, query_rows,
                                           mask_2d[:, -length:], rows=layout.query_count)
                scores = per_key[video_row[:, None], visual_columns].view(videos, frames, per_frame)
        hidden = _run_layers(lm, hidden, [prune_layer - 1], masks, full_embeddings, position_ids, cache,
                             use_cache, kwargs)

    with _timer(state, device):
        kept = _select(state, frames, per_frame, videos, scores, frame_features, question, device)
    keep = torch.ones(batch, length, dtype=torch.bool, device=device)
    keep[video_row[:, None], visual_columns] = False
    keep[video_row[:, None], visual_columns.gather(1, kept)] = True
    # Rows keep different counts when they hold different numbers of videos: the kept columns go right-aligned
    # into one rectangle, and the rows that kept fewer are left-padded with pruned columns masked out.
    kept_length = length - min(layout.videos_per_row) * (n_visual - kept.shape[1])
    keep_columns = keep.to(torch.uint8).argsort(dim=-1, stable=True)[:, length - kept_length :]
    slot_valid = keep.gather(1, keep_columns)

    hidden = _gather_rows(hidden, keep_columns)
    kept_mask = mask_2d[:, -length:].gather(1, keep_columns) & slot_valid
    kept_positions = position_ids.gather(1, keep_columns)
    if config.positions == "renumber":
        first = torch.where(kept_mask, kept_positions, kept_positions.max()).amin(-1, keepdim=True)
        renumbered = (kept_mask.long().cumsum(-1) - 1).clamp(min=0) + first
        shift = kept_positions[:, -1:] - renumbered[:, -1:]
        kept_positions = renumbered
    else:
        shift = torch.zeros(batch, 1, dtype=position_ids.dtype, device=device)
    plan = Plan(keep_columns=keep_columns, slot_valid=slot_valid, prefill_length=length, prune_layer=prune_layer,
                position_shift=shift)
    state.kept_indices, state.frames, state.plan = kept, frames, plan
    masks = _mask_mapping(lm, hidden, kept_mask, cache, kept_positions, prune_layer)
    embeddings = lm.rotary_emb(hidden, kept_positions)
    hidden = _run_layers(lm, hidden, range(prune_layer, len(lm.layers)), masks, embeddings, kept_positions, cache,
                         use_cache, kwargs)
    if use_cache and cache is not None:
        attach(cache, plan)
    return hidden


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


def _pruned_decode(lm, config, plan, embeds, mask_2d, position_ids, cache, use_cache, kwargs):
    """Tokens after a pruned prefill: layers < K attend over the whole prefix, layers >= K over the kept one."""
    prune_layer = plan.prune_layer
    hidden = embeds
    if prune_layer > 0:
        masks = _mask_mapping(lm, hidden, mask_2d, cache, position_ids, 0)
        hidden = _run_layers(lm, hidden, range(prune_layer), masks, lm.rotary_emb(hidden, position_ids),
                             position_ids, cache, use_cache, kwargs)
    kept_positions = position_ids - plan.position_shift
    masks = _mask_mapping(lm, hidden, plan.kept_mask(mask_2d), cache, kept_positions, prune_layer)
    return _run_layers(lm, hidden, range(prune_layer, len(lm.layers)), masks, lm.rotary_emb(hidden, kept_positions),
                       kept_positions, cache, use_cache, kwargs)
