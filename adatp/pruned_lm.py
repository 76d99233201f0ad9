"""The shared pruned-LM forward: AdaTP inside any supported Video LLM's language model (transformers 5.x).

`enable` installs, on the model instance only (nothing on the class, so other models are untouched):
- a forward pre-hook on the multimodal model that asks the model family's adapter (`adatp.models`) whether the
  call scatters video features and how they sit: which tokens are video, how they group into videos and frames;
- an instance-level `forward` on the language model that, on such a call starting a fresh cache, runs layers
  0..K-1 on all tokens, scores the visual tokens, selects per video, and runs layers K.. on the kept tokens only.
  The plan travels on the returned cache (`adatp.pruned_cache`): later calls continuing from it attend, in layers
  >= K, over the kept prefix only. Kept tokens keep their original RoPE positions (1D, or M-RoPE's 3D ids);
  whatever the model adds at visual positions inside the LM (Qwen3-VL's deepstack features) goes with them;
- an instance-level `forward` on the causal LM that computes the loss of `labels` over the positions that have
  logits, and `create_masks_for_generate` that keeps `generate` handing 2D masks to the forward (the pruned layers
  need their own masks, which a mask prepared for the whole sequence cannot give).

Everything else passes through to the stock forward unchanged: calls without video features, calls continuing an
unpruned cache, rows without a video (they keep all their tokens). The contract of a pruned call is in docs/method.md.
Tokens an adapter marks as never pruned (LLaVA-OV's `image_newline`, Qwen's vision start/end and timestamp text)
count as text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import types
import warnings
from collections.abc import Iterator

import torch
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_masks_for_generate
from transformers.modeling_outputs import BaseModelOutputWithPast, MoeModelOutputWithPast
from transformers.utils.output_capturing import capture_outputs

from adatp import prefix as prefixes
from adatp.config import AdaTPConfig, ConfigError
from adatp.graphs import GRAPHED_METHODS, SelectionGraphs
from adatp.kinds import layer_kinds, valid_prune_layers
from adatp.layers import CACHE_ARG, deepstack_additions, gather_rows, masks_for, run_layers
from adatp.models import adapter_for, multimodal_of
from adatp.models.base import Positions, VideoCall
from adatp.pruned_cache import Plan, attach, plan_of
from adatp.scoring import attention_scores
from adatp.select import select_visual_tokens, true_columns
from adatp.state import PruningState, state_of, timed


@dataclasses.dataclass
class _Layout:
    """How the videos of a call sit in the batch, known on the host before any layer runs."""

    video_rows: list[int]  # the batch row of each video
    query_count: int  # most text tokens after the last video in a row


@dataclasses.dataclass
class _Group:
    """Videos of one call that share a (frames, tokens per frame) shape: selected together."""

    videos: list[int]
    rows: torch.Tensor  # [Vg] batch row of each
    columns: torch.Tensor  # [Vg, F*N] column of each visual token in its row
    frames: int
    per_frame: int


def enable(model, config: AdaTPConfig, tokenizer=None, profile: bool = False,
           cuda_graphs: bool = True) -> PruningState:
    """Turn AdaTP on for `model` (forward and generate). Re-enabling replaces the config.

    model: a supported Video LLM (`adatp.models.SUPPORTED`), the `...ForConditionalGeneration` class or its inner
        multimodal model.
    tokenizer: the model's tokenizer, needed only for `relevance: siglip` (to recover the question text).
    profile: accumulate the time spent scoring and selecting in `state.selection_seconds`.
    cuda_graphs: on a CUDA device, replay the selection from a CUDA graph (`adatp.graphs`; the same indices, checked
        on an H100 by tests/adatp/test_graphs.py and bench/prefill_speed.py). On by default: it saves host time per
        pruned prefill at small batches (measured in docs/performance.md). Never used on CPU, inside `torch.compile` or
        inside a capture.
    """
    if not isinstance(config, AdaTPConfig):
        raise TypeError(f"config must be an AdaTPConfig, got {type(config).__name__}")
    disable(model)
    adapter = adapter_for(model)
    inner = adapter.inner
    _check_prune_layer(config, inner.config.text_config, adapter.class_names[0])
    adapter.check(config)
    state = PruningState(
        config=config,
        adapter=adapter,
        tokenizer=tokenizer,
        profile=profile,
        graphs=SelectionGraphs() if cuda_graphs else None,
    )
    if config.relevance == "siglip":
        from adatp.relevance import SiglipRelevance

        if tokenizer is None:
            raise ValueError("relevance 'siglip' needs enable(model, config, tokenizer=...) to read the question")
        state.siglip = SiglipRelevance(config.siglip_path, device=next(inner.parameters()).device)
    # generate() encodes the video before the prefill and drops the pixels and the grid: catch them on the way.
    # (generate picks the encoder's arguments by its signature, which `wraps` keeps.)
    inner.get_video_features = types.MethodType(functools.wraps(type(inner).get_video_features)(_get_video_features),
                                                inner)
    state.hook = inner.register_forward_pre_hook(_record_video, with_kwargs=True)
    inner._adatp_state = state
    language_model = inner.language_model
    language_model._adatp_state = state
    language_model.forward = _bound_like(_language_model_forward, language_model)
    if model is not inner:
        model.forward = _bound_like(_causal_lm_forward, model)
        model.create_masks_for_generate = _masks_for_generate(model)
        model.generate = types.MethodType(functools.wraps(type(model).generate)(_generate), model)
    return state


def _get_video_features(self, pixel_values_videos, *args, **kwargs):
    """The multimodal model's video encoder, noting the call for the prefill (and the pixels, for SigLIP
    relevance). Bound to the model, like `_generate`, so that a deep copy encodes with and records on the copy."""
    state = self._adatp_state
    if state.siglip is not None:
        state.pending_pixels = pixel_values_videos
    state.adapter.saw_encoder_call(args, kwargs)
    return type(self).get_video_features(self, pixel_values_videos, *args, **kwargs)


def _generate(self, *args, **kwargs):
    """The model's `generate`, with the prompt's length on its state for the call (`PruningState.prompt_length`).
    A method bound to the model, so that a deep copy of an enabled model generates with the copy."""
    state = state_of(self)
    prompt = args[0] if args and isinstance(args[0], torch.Tensor) else None
    for name in ("inputs", "input_ids", "inputs_embeds"):
        prompt = kwargs.get(name) if prompt is None else prompt
    if state is not None:
        state.prompt_length = None if prompt is None else prompt.shape[1]
    try:
        return type(self).generate(self, *args, **kwargs)
    finally:
        if state is not None:
            state.prompt_length = None


def _check_prune_layer(config: AdaTPConfig, text_config, name: str) -> None:
    """K = 0 prunes before the LM; K >= 1 needs attention at layer K-1 (a softmax-attention layer, `adatp.kinds`)."""
    kinds = layer_kinds(text_config)
    layer = config.prune_layer
    if layer >= len(kinds):
        raise ConfigError(f"config.prune_layer: must be below the language model's {len(kinds)} layers, got {layer}")
    valid = valid_prune_layers(kinds)
    if layer > 0 and layer not in valid:
        shown = ", ".join(map(str, [0, *valid[:8]])) + (", ..." if len(valid) > 8 else "")
        raise ConfigError(f"config.prune_layer: {layer} does not follow a full-attention layer of {name} (layer "
                          f"{layer - 1} is {kinds[layer - 1]}, which has no attention to score from); valid: {shown}")


def disable(model) -> None:
    """Turn AdaTP off; the model computes exactly as before `enable`."""
    inner = multimodal_of(model)
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
        vars(model).pop("generate", None)


@contextlib.contextmanager
def pruning(model, config: AdaTPConfig, tokenizer=None, cuda_graphs: bool = True) -> Iterator[PruningState]:
    """`with adatp.pruning(model, config): ...` enables AdaTP inside the block only."""
    state = enable(model, config, tokenizer=tokenizer, cuda_graphs=cuda_graphs)
    try:
        yield state
    finally:
        disable(model)


def _record_video(module, args, kwargs):
    state: PruningState = module._adatp_state
    state.plan = None
    pixels = kwargs.get("pixel_values_videos")
    pixels = state.pending_pixels if pixels is None else pixels
    state.pending_pixels = None
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    call = state.adapter.video_call(input_ids, kwargs)
    state.pending = call
    if call is not None and state.siglip is not None and pixels is not None and input_ids is not None:
        video = call.video_mask
        last_video = torch.where(video, torch.arange(video.shape[1], device=video.device), -1).max(-1).values
        after = torch.arange(video.shape[1], device=video.device)[None] > last_video[:, None]
        texts = state.tokenizer.batch_decode(input_ids.masked_fill(~after, state.tokenizer.pad_token_id or 0),
                                             skip_special_tokens=True)
        call.external = (state.siglip.frame_features(pixels), state.siglip.text_features(texts))
    return None


def _bound_like(function, module):
    """`function` bound to `module`, showing the signature of the module's own forward (generate reads it)."""
    original = type(module).forward

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        return function(self, *args, **kwargs)

    return forward.__get__(module)


def _masks_for_generate(model):
    """`generate` asks the model for its masks on compilable caches. A prefill that may prune, and every step after
    a pruned one, get the 2D mask (the pruned model builds its own per layer); steps over a cache that holds the
    whole sequence (nothing was pruned) get the stock model's masks, so that a compiled decode sees the same static
    shapes as without AdaTP."""
    stock = getattr(model, "create_masks_for_generate", create_masks_for_generate)  # before enable sets ours

    def masks(config=None, inputs_embeds=None, attention_mask=None, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers >= 5.25 names it `cache`
        if attention_mask is None or plan_of(cache) is not None or kwargs.get("is_first_iteration", True):
            return attention_mask
        return stock(config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    return masks


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
    """Labels over the input [B, L] -> over the kept sequence [B, L'] (-100 on padding slots). Labels already
    [B, L'] (built from a pruned call's logits) are taken as they are."""
    kept_length = plan.keep_columns.shape[1]
    if labels.shape[-1] == kept_length and kept_length != plan.prefill_length:
        return labels
    if labels.dim() != 2 or labels.shape[-1] != plan.prefill_length:
        raise ValueError(f"adatp: labels must be [batch, {plan.prefill_length}] over the input (or [batch, "
                         f"{kept_length}] over the kept tokens), got {list(labels.shape)}")
    kept = labels.gather(1, plan.keep_columns.to(labels.device))
    return kept.masked_fill(~plan.slot_valid.to(labels.device), -100)


def _is_fresh(cache) -> bool:
    """True when `cache` holds nothing yet (a prefill). Under compile, a static cache counts as fresh."""
    if cache is None:
        return True
    length = cache.get_seq_length()
    if isinstance(length, torch.Tensor):
        return torch.compiler.is_compiling() or int(length) == 0
    return length == 0


def _question_rows(call: VideoCall, mask_2d: torch.Tensor, length: int, prompt_length: int | None) -> torch.Tensor:
    """[B, L] True on the question: the text after each row's last video token, up to the prompt's end."""
    positions = torch.arange(length, device=mask_2d.device)
    last_video = torch.where(call.video_mask, positions, -1).max(-1).values
    rows = (positions[None] > last_video[:, None]) & mask_2d[:, -length:]
    if prompt_length is not None and prompt_length < length:  # assisted decoding's draft rides in the prefill
        rows &= positions[None] < prompt_length
    return rows


def _layout(call: VideoCall, mask_2d: torch.Tensor, prompt_length: int | None = None) -> _Layout | None:
    """The row of each video and the query count; None when the video tokens do not split into whole videos per row.

    Eager: one host-device synchronisation, before any layer runs, after which every shape is known. Under
    torch.compile there is none: the call's V videos are taken to be V/B per row (shapes alone fix the plan).
    """
    batch, length = call.video_mask.shape
    if torch.compiler.is_compiling():
        if call.videos % batch or len(set(call.grids)) > 1:
            raise ValueError(f"adatp: under torch.compile every batch row must hold the same number of videos of "
                             f"one shape, got {call.videos} videos in {batch} rows")
        per_row = call.videos // batch
        text = min(length, prompt_length or length) - per_row * call.tokens(0)
        return _Layout([video // per_row for video in range(call.videos)], text)
    query_rows = _question_rows(call, mask_2d, length, prompt_length)
    counts, query_counts = torch.stack([call.video_mask.sum(-1), query_rows.sum(-1)]).tolist()
    video_rows, video = [], 0
    for row, count in enumerate(counts):  # a loop over rows and videos, never tokens
        while count > 0 and video < call.videos:
            count -= call.tokens(video)
            video_rows.append(row)
            video += 1
        if count != 0:
            break
    if count != 0 or video != call.videos:
        expected = [call.tokens(v) for v in range(call.videos)]
        warnings.warn(f"adatp: video tokens per row {counts} are not whole videos of {expected} tokens; "
                      "this call runs unpruned", stacklevel=4)
        return None
    return _Layout(video_rows, max(query_counts))


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
    if state.prefix is not None or (state.capture_prefix and call is not None):
        return _prefix_call(self, state, call, attention_mask, position_ids, inputs_embeds, kwargs)
    layout = None
    if plan is None and call is not None and not dict_mask and _is_fresh(past_key_values):
        batch, length = inputs_embeds.shape[:2]
        mask_2d = _mask_2d(attention_mask, batch, length, inputs_embeds.device)
        layout = _layout(call, mask_2d, state.prompt_length)
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


def _prefix_call(lm, state, call, attention_mask, position_ids, inputs_embeds, kwargs):
    """`adatp.prefix`: encode a prefix (layers < K), or run a suffix that continues one (logits only)."""
    batch, length, _ = inputs_embeds.shape
    device = inputs_embeds.device
    positions = state.adapter.positions(position_ids, batch, length, 0, device)
    if state.prefix is not None:
        if call is not None:
            raise ValueError("adatp: a call continuing a prefix holds the question only, not another video")
        hidden = prefixes.prefixed_forward(lm, state, inputs_embeds, _mask_2d(attention_mask, batch, length, device),
                                           positions, kwargs)
    else:
        hidden = prefixes.capture(lm, state, call, inputs_embeds, positions, kwargs)
    return _output_class(lm)(last_hidden_state=lm.norm(hidden))


def _output_class(lm) -> type:
    """The stock forward's output class: MoE LMs return router logits too (captured like hidden states)."""
    records = getattr(lm, "_can_record_outputs", None) or {}
    return MoeModelOutputWithPast if "router_logits" in records else BaseModelOutputWithPast


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
    deepstack = deepstack_additions(inputs_embeds, kwargs.pop("visual_pos_masks", None),
                           kwargs.pop("deepstack_visual_embeds", None))
    cache = past_key_values
    if use_cache and cache is None:
        cache = DynamicCache(config=self.config)
    past = 0 if plan is None else cache.get_seq_length()  # original coordinates
    mask_2d = _mask_2d(attention_mask, batch, past + length, inputs_embeds.device)
    positions = state.adapter.positions(position_ids, batch, length, past, inputs_embeds.device)
    if plan is None:
        hidden = _pruned_prefill(self, state, call, layout, inputs_embeds, mask_2d, positions, cache, use_cache,
                                 kwargs, deepstack)
    else:
        hidden = _pruned_decode(self, plan, inputs_embeds, mask_2d, positions, cache, use_cache, kwargs, deepstack)
    return _output_class(self)(last_hidden_state=self.norm(hidden), **{CACHE_ARG: cache if use_cache else None})


def _groups(call: VideoCall, layout: _Layout, length: int, device) -> list[_Group]:
    """The call's videos grouped by shape, with the columns of their visual tokens (trailing tokens dropped)."""
    sizes = [call.tokens(video) for video in range(call.videos)]
    flat = true_columns(call.video_mask.reshape(1, -1), sum(sizes))[0]  # flat positions of all video tokens
    starts = [sum(sizes[:video]) for video in range(call.videos)]
    rows = torch.tensor(layout.video_rows, device=device)
    groups = []
    for grid in dict.fromkeys(call.grids):  # distinct shapes, in order of first appearance
        videos = [video for video in range(call.videos) if call.grids[video] == grid]
        frames, per_frame = grid
        offsets = torch.tensor([starts[video] for video in videos], device=device)
        columns = flat[offsets[:, None] + torch.arange(frames * per_frame, device=device)] % length
        groups.append(_Group(videos, rows[videos], columns, frames, per_frame))
    return groups


def _pruned_prefill(lm, state, call, layout, embeds, mask_2d, positions, cache, use_cache, kwargs, deepstack):
    """A fresh prefill: layers < K on every token, the selection per video, layers >= K on the kept tokens only."""
    batch, length, _ = embeds.shape
    groups = _groups(call, layout, length, embeds.device)
    query_rows = _question_rows(call, mask_2d, length, state.prompt_length)
    inputs = _selection_inputs(state.config, call, groups, embeds, query_rows)
    hidden = _layers_before_prune(lm, state, layout, groups, inputs, embeds, mask_2d, positions, query_rows, cache,
                                  use_cache, kwargs, deepstack)
    keep, pruned_per_row = _select_groups(state, call, layout, groups, inputs, batch, length, embeds.device)
    plan, kept_mask, kept_positions = _plan(state.config, keep, pruned_per_row, mask_2d, positions)
    state.plan = plan
    prune_layer = plan.prune_layer
    hidden = gather_rows(hidden, plan.keep_columns)
    deepstack = [None] * prune_layer + [gather_rows(level, plan.keep_columns) for level in deepstack[prune_layer:]]
    layers = range(prune_layer, len(lm.layers))
    masks = masks_for(lm, layers, hidden, kept_mask, cache, kept_positions.text)
    embeddings = lm.rotary_emb(hidden, kept_positions.rope)
    hidden = run_layers(lm, hidden, layers, masks, embeddings, kept_positions, cache, use_cache, kwargs, deepstack)
    # Nothing pruned in any row (retention 1.0): the cache is the stock model's, and carries no plan.
    nothing_pruned = not plan.pruned and not torch.compiler.is_compiling() and bool(plan.slot_valid.all())
    if use_cache and cache is not None and not nothing_pruned:
        attach(cache, plan)
    return hidden


def _selection_inputs(config: AdaTPConfig, call: VideoCall, groups: list[_Group], embeds: torch.Tensor,
                      query_rows: torch.Tensor) -> list[list]:
    """Per group: [frame features, question, pre-LM scores]; scores stay None until layer K-1 for `attention`."""
    width = embeds.shape[-1]
    weights = query_rows.float()[..., None]
    question_text = (embeds.float() * weights).sum(1)  # [B, D] summed text after the last video
    question_llm = question_text / weights.sum(1).clamp(min=1)
    inputs = []
    for group in groups:
        visual = embeds[group.rows[:, None], group.columns].view(len(group.videos), group.frames, group.per_frame,
                                                                 width)
        if call.external is not None:
            video_index = torch.tensor(group.videos, device=embeds.device)
            frame_features, question = call.external[0][video_index], call.external[1][group.rows]
        else:
            frame_features, question = visual.float().mean(2), question_llm[group.rows]
        scores = None
        if config.uses_scores and config.score == "norm":
            scores = visual.float().norm(dim=-1)
        elif config.uses_scores and config.score == "text_sim":
            text = question if call.external is None else question_text[group.rows]
            scores = torch.nn.functional.cosine_similarity(visual.float(), text[:, None, None], dim=-1)
        inputs.append([frame_features, question, scores])
    return inputs


def _layers_before_prune(lm, state, layout: _Layout, groups: list[_Group], inputs: list[list], embeds, mask_2d,
                         positions, query_rows, cache, use_cache, kwargs, deepstack) -> torch.Tensor:
    """Layers < K on every token; with score `attention`, each group's scores in `inputs` from layer K-1."""
    config = state.config
    prune_layer = config.prune_layer
    length = embeds.shape[1]
    # Also at K = 0, where it is unused: a dynamic RoPE grows its frequencies to the full positions on this call.
    full_embeddings = lm.rotary_emb(embeds, positions.rope)
    if prune_layer == 0:
        return embeds
    masks = masks_for(lm, range(prune_layer), embeds, mask_2d, cache, positions.text)
    hidden = run_layers(lm, embeds, range(prune_layer - 1), masks, full_embeddings, positions, cache, use_cache,
                        kwargs, deepstack)
    if config.uses_scores and config.score == "attention":
        with timed(state, embeds.device):
            per_key = attention_scores(lm.layers[prune_layer - 1], hidden, full_embeddings, query_rows,
                                       mask_2d[:, -length:], rows=layout.query_count, end=state.prompt_length)
            for group, group_inputs in zip(groups, inputs, strict=True):
                group_inputs[2] = per_key[group.rows[:, None], group.columns].view(
                    len(group.videos), group.frames, group.per_frame)
    return run_layers(lm, hidden, [prune_layer - 1], masks, full_embeddings, positions, cache, use_cache, kwargs,
                      deepstack)


def _select_groups(state, call: VideoCall, layout: _Layout, groups: list[_Group], inputs: list[list], batch: int,
                   length: int, device) -> tuple[torch.Tensor, list[int]]:
    """Select each group's videos: the [B, L] keep mask and the pruned count per row; the kept indices go on
    `state` (stacked when every video has one shape)."""
    keep = torch.ones(batch, length, dtype=torch.bool, device=device)
    pruned_per_row = [0] * batch
    kept_per_video = [None] * call.videos
    with timed(state, device):
        for group, (frame_features, question, scores) in zip(groups, inputs, strict=True):
            kept = _select(state, group.frames, group.per_frame, len(group.videos), scores, frame_features,
                           question, device)
            keep[group.rows[:, None], group.columns] = False
            keep[group.rows[:, None], group.columns.gather(1, kept)] = True
            for index, video in enumerate(group.videos):
                kept_per_video[video] = kept[index]
                pruned_per_row[layout.video_rows[video]] += group.frames * group.per_frame - kept.shape[1]
    same_shape = len(groups) == 1
    state.kept_indices = torch.stack(kept_per_video) if same_shape else tuple(kept_per_video)
    state.frames = groups[0].frames if same_shape else None
    return keep, pruned_per_row


def _plan(config: AdaTPConfig, keep: torch.Tensor, pruned_per_row: list[int], mask_2d: torch.Tensor,
          positions: Positions) -> tuple[Plan, torch.Tensor, Positions]:
    """The plan of the kept columns, with their [B, L'] mask and positions for layers >= K."""
    batch, length = keep.shape
    # Rows keep different counts when they hold different videos: the kept columns go right-aligned into one
    # rectangle, and the rows that kept fewer are left-padded with pruned columns masked out.
    kept_length = length - min(pruned_per_row)
    keep_columns = keep.to(torch.uint8).argsort(dim=-1, stable=True)[:, length - kept_length :]
    slot_valid = keep.gather(1, keep_columns)
    kept_mask = mask_2d[:, -length:].gather(1, keep_columns) & slot_valid
    kept_positions = positions.gather(keep_columns)
    if config.positions == "renumber":  # 1D RoPE only (adapters refuse it for M-RoPE)
        kept_positions, shift = _renumbered(kept_positions.rope, kept_mask)
    else:
        shift = torch.zeros(batch, 1, dtype=torch.long, device=keep.device)
    plan = Plan(keep_columns=keep_columns, slot_valid=slot_valid, prefill_length=length,
                prune_layer=config.prune_layer, position_shift=shift)
    return plan, kept_mask, kept_positions


def _renumbered(kept_rope: torch.Tensor, kept_mask: torch.Tensor) -> tuple[Positions, torch.Tensor]:
    """`positions: renumber`: consecutive positions from each row's first kept token, and the shift [B, 1] that
    decoding subtracts from the original positions after the prefill."""
    first = torch.where(kept_mask, kept_rope, kept_rope.max()).amin(-1, keepdim=True)
    renumbered = (kept_mask.long().cumsum(-1) - 1).clamp(min=0) + first
    return Positions(renumbered, renumbered), kept_rope[:, -1:] - renumbered[:, -1:]


def _select(state, frames, per_frame, batch, scores, frame_features, question, device) -> torch.Tensor:
    config = state.config

    def select(**tensors):
        return select_visual_tokens(config, frames, per_frame, batch=batch, device=device, **tensors)

    if (state.graphs is None or device.type != "cuda" or config.method not in GRAPHED_METHODS
            or torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing()):
        return select(scores=scores, frame_features=frame_features, question=question)
    inputs = {"scores": scores}
    if config.method != "fastv":
        inputs.update(frame_features=frame_features, question=question)
    return state.graphs.run((config, frames, per_frame, batch), select, inputs)


def _pruned_decode(lm, plan, embeds, mask_2d, positions, cache, use_cache, kwargs, deepstack):
    """Tokens after a pruned prefill: layers < K attend over the whole prefix, layers >= K over the kept one."""
    prune_layer = plan.prune_layer
    hidden = embeds
    if prune_layer > 0:
        masks = masks_for(lm, range(prune_layer), hidden, mask_2d, cache, positions.text)
        hidden = run_layers(lm, hidden, range(prune_layer), masks, lm.rotary_emb(hidden, positions.rope),
                             positions, cache, use_cache, kwargs, deepstack)
    if positions.rope.dim() == 2:  # 1D RoPE: renumbered positions continue from the kept prefix
        shifted = positions.rope - plan.position_shift
        positions = Positions(shifted, shifted)
    masks = masks_for(lm, range(prune_layer, len(lm.layers)), hidden, plan.kept_mask(mask_2d), cache,
                      positions.text)
    return run_layers(lm, hidden, range(prune_layer, len(lm.layers)), masks, lm.rotary_emb(hidden, positions.rope),
                       positions, cache, use_cache, kwargs, [None] * prune_layer + deepstack[prune_layer:])
