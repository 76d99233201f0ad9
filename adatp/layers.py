"""Running decoder layers by hand: the masks each layer kind needs, the layer loop, and row gathers.

A pruned forward runs layers 0..K-1 over every token and K.. over the kept ones, so it builds masks per range of
layers instead of once per model: for each kind present in the range (`adatp.kinds`), the stock mask function of
that kind, asked about the range's first layer of that kind (a hybrid cache answers mask sizes for attention
layers only).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers import masking_utils

from adatp.kinds import kind, layer_kinds
from adatp.models.base import Positions

__all__ = ["CACHE_ARG", "deepstack_additions", "gather_rows", "kinds_of", "masks_for", "run_layers"]

# transformers 5.24 renamed `past_key_values` to `cache` in model, layer and mask signatures (the old name is
# deprecated); we take either and pass on the name of the installed release.
CACHE_ARG = ("cache" if "cache" in inspect.signature(masking_utils.create_causal_mask).parameters
             else "past_key_values")


def kinds_of(lm) -> tuple[str, ...]:
    """The kind of each of the language model's layers."""
    return layer_kinds(lm.config)


def masks_for(lm, layers: Sequence[int], hidden: torch.Tensor, mask_2d: torch.Tensor, cache,
              text_positions: torch.Tensor | None) -> dict[str, object]:
    """{kind name: mask} for running `layers` on `hidden` [B, L, D] with the 2D padding mask `mask_2d` [B, past+L]."""
    kinds = kinds_of(lm)
    first: dict[str, int] = {}
    for index in layers:
        first.setdefault(kinds[index], index)
    masks = {}
    for name, index in first.items():
        build = getattr(masking_utils, kind(name).mask)
        masks[name] = build(config=lm.config, inputs_embeds=hidden, attention_mask=mask_2d,
                            position_ids=text_positions, **{CACHE_ARG: cache}, layer_idx=index)
    return masks


def run_layers(lm, hidden: torch.Tensor, layers: Sequence[int], masks: dict, position_embeddings,
               positions: Positions, cache, use_cache: bool, kwargs: dict, deepstack=()) -> torch.Tensor:
    """Run `layers` (indices); after layer i < len(deepstack), add deepstack[i] ([B, L, D], zero off video)."""
    kinds = kinds_of(lm)
    for index in layers:
        hidden = lm.layers[index](
            hidden,
            attention_mask=masks[kinds[index]],
            position_embeddings=position_embeddings,
            position_ids=positions.text,
            use_cache=use_cache,
            **{CACHE_ARG: cache},
            **kwargs,
        )
        if index < len(deepstack) and deepstack[index] is not None:
            hidden = hidden + deepstack[index]
    return hidden


def gather_rows(tensor: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """tensor [B, L, ...] -> [B, L', ...]: the columns [B, L'] of each row."""
    index = columns.view(*columns.shape, *([1] * (tensor.dim() - 2))).expand(-1, -1, *tensor.shape[2:])
    return tensor.gather(1, index)


def deepstack_additions(embeds: torch.Tensor, visual_pos_masks, deepstack_visual_embeds) -> list[torch.Tensor]:
    """Qwen3-VL's deepstack features as dense [B, L, D] additions (zero off the visual positions)."""
    if not deepstack_visual_embeds:
        return []
    where = visual_pos_masks.to(embeds.device)[..., None]
    return [torch.zeros_like(embeds).masked_scatter(where, level.to(embeds.device, embeds.dtype))
            for level in deepstack_visual_embeds]
