"""A KV cache that remembers the pruning plan of the prefill that filled it.

After a pruned prefill, layers < K hold the whole prompt and layers >= K only the kept tokens. The cache object
is the one thing that travels with a generation (returned as `past_key_values`, deep-copied, cropped by assisted
decoding, reordered by beam search), so the plan lives on it: any later call that continues from this cache knows
which prompt columns its pruned layers hold, whichever model state or generate loop it comes from.

The cache's class is swapped for a subclass of its own class (DynamicCache, StaticCache, ...), so `isinstance`
checks and every cache method still hold. Lengths are reported in two coordinates:
- `get_seq_length(layer)`: tokens of the *original* (unpruned) sequence seen so far, the same for every layer. This
  is what `generate`, default position ids and users read to continue a sequence.
- `get_query_offset(layer)`: tokens physically held by that layer, which is what attention masks are built against.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Plan:
    """What a pruned prefill decided. Per-row tensors are [B, L'] with L' the length layers >= K hold.

    keep_columns: columns of the prefill sequence held by layers >= K, ascending in each row; rows that kept fewer
        tokens are left-padded with pruned columns, marked False in `slot_valid`.
    slot_valid: False on those padding slots (they are masked out of attention).
    prefill_length: L, the prefill's length.
    prune_layer: K; layers >= K hold the kept columns.
    position_shift [B, 1]: original minus kept position of tokens after the prefill (0 unless positions: renumber).
    """

    keep_columns: torch.Tensor
    slot_valid: torch.Tensor
    prefill_length: int
    prune_layer: int
    position_shift: torch.Tensor

    @property
    def pruned(self) -> int:
        """Tokens of the prefill that layers >= K do not hold."""
        return self.prefill_length - self.keep_columns.shape[1]

    def rows(self, index: torch.Tensor) -> Plan:
        """The plan for the batch rows `index` (beam reordering, row selection, repetition)."""
        take = {name: getattr(self, name).index_select(0, index.to(self.keep_columns.device))
                for name in ("keep_columns", "slot_valid", "position_shift")}
        return dataclasses.replace(self, **take)

    def drop_last(self, count: int) -> Plan:
        """The plan once the prefill's last `count` tokens are cropped away (assisted decoding can reject tokens that
        rode in the prefill; they are text after the video, which every row keeps in its last slots)."""
        return dataclasses.replace(self, keep_columns=self.keep_columns[:, :-count],
                                   slot_valid=self.slot_valid[:, :-count], prefill_length=self.prefill_length - count)

    def kept_mask(self, mask_2d: torch.Tensor) -> torch.Tensor:
        """A 2D mask over the original sequence [B, L + t] -> the mask over what layers >= K hold [B, L' + t]."""
        prefix = mask_2d[:, : self.prefill_length].gather(1, self.keep_columns) & self.slot_valid
        return torch.cat([prefix, mask_2d[:, self.prefill_length :]], dim=1)


class _PrunedCacheMixin:
    _adatp_plan: Plan
    _adatp_base: type

    def _adatp_offset(self, layer_idx: int) -> int:
        return self._adatp_plan.pruned if layer_idx >= self._adatp_plan.prune_layer else 0

    def get_seq_length(self, layer_idx: int = 0):
        length = super().get_seq_length(layer_idx)
        return length + self._adatp_offset(layer_idx) if self._adatp_plan.pruned else length

    def get_query_offset(self, layer_idx: int = 0):
        return super().get_query_offset(layer_idx) - self._adatp_offset(layer_idx)

    def crop(self, tokens_to_remove: int):
        if tokens_to_remove < 0:  # transformers 5.x: remove that many tokens from the end
            after_prefill = int(self.get_seq_length()) - self._adatp_plan.prefill_length
            into_prefill = -tokens_to_remove - after_prefill
            if into_prefill > 0:
                self._adatp_plan = self._adatp_plan.drop_last(into_prefill)
        super().crop(tokens_to_remove)

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        self._adatp_plan = self._adatp_plan.rows(beam_idx)

    def batch_repeat_interleave(self, repeats: int):
        super().batch_repeat_interleave(repeats)
        rows = torch.arange(self._adatp_plan.keep_columns.shape[0]).repeat_interleave(repeats)
        self._adatp_plan = self._adatp_plan.rows(rows)

    def batch_select_indices(self, indices: torch.Tensor):
        super().batch_select_indices(indices)
        self._adatp_plan = self._adatp_plan.rows(indices)

    def reset(self):
        super().reset()
        detach(self)


_SUBCLASSES: dict[type, type] = {}


def attach(cache, plan: Plan) -> None:
    """Make `cache` carry `plan` (replacing any earlier one)."""
    base = getattr(cache, "_adatp_base", type(cache))
    if base not in _SUBCLASSES:
        _SUBCLASSES[base] = type(f"Pruned{base.__name__}", (_PrunedCacheMixin, base), {"_adatp_base": base})
    cache.__class__ = _SUBCLASSES[base]
    cache._adatp_plan = plan


def detach(cache) -> None:
    """Forget the plan: the cache becomes an instance of its own class again."""
    if isinstance(cache, _PrunedCacheMixin):
        cache.__class__ = cache._adatp_base
        del cache._adatp_plan


def plan_of(cache) -> Plan | None:
    """The plan `cache` carries, or None (no cache, or one filled without pruning)."""
    return getattr(cache, "_adatp_plan", None)
