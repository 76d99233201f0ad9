"""Layer kinds: how each kind of decoder layer behaves under pruning, in one table a new kind extends.

A language model's layers are named by `text_config.layer_types` (absent: every layer is `full_attention`).
- softmax attention (`full_attention`, `sliding_attention`): a KV cache with a sequence axis (pruned layers hold
  fewer tokens, so the cache offsets their lengths), causal masks, attention weights to score from at layer K-1,
  quadratic FLOPs, keys and values in a prefix;
- linear attention (`linear_attention`, Qwen3.5's Gated DeltaNet): a conv state and a recurrent state with no
  sequence axis (nothing to offset: the pruned prefill's states are simply the states of the kept sequence),
  padding masks only, no attention weights, FLOPs linear in the tokens, states a prefix does not store (yet).

Pure data and arithmetic (no torch import): `adatp.flops` reads the cost functions, `adatp.layers` the rest.
MACs follow `adatp.flops`' convention (one multiply-accumulate = 1) and count what transformers' eager/torch
implementation multiplies, which is what `FlopCounterMode` sees (2 FLOPs per MAC).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

__all__ = ["KINDS", "LayerKind", "kind", "layer_kinds", "valid_prune_layers"]


def _attention_macs(shape: Any, n: int) -> int:
    """Softmax attention over n tokens: q (x2 when gated: Qwen3.5's q_proj also gives the output gate), k, v and o
    projections, then Q K^T and softmax(.) V over all heads (n^2 in full, as eager attention computes it)."""
    width = shape.heads * shape.head_dim
    query = width * (2 if shape.gated_query else 1)
    projections = n * shape.hidden * (query + width + 2 * shape.kv_heads * shape.head_dim)
    return projections + 2 * n * n * width


def _gated_deltanet_macs(shape: Any, n: int) -> int:
    """Gated DeltaNet over n tokens, as transformers' torch implementation (`torch_chunk_gated_delta_rule`) runs it:
    - in projections (q, k, v; the output gate z; a and b, one per value head) and the out projection;
    - the depthwise causal conv over q, k, v: kernel k, run over n + k - 1 outputs (padding k - 1 on both sides);
    - the chunked delta rule: the sequence padded to whole chunks of c = 64, per value head and chunk
      2c^2*d_k (the two c x c products with the keys) + c^2*d_v (intra-chunk attention x values) + 3c*d_k*d_v (reads
      of the recurrent state, and its update). Linear in n. The triangular solves are not counted (nor by the
      counter), nor norms, gates and decays (elementwise)."""
    linear = shape.linear
    key_width = linear.key_heads * linear.key_dim
    value_width = linear.value_heads * linear.value_dim
    conv_channels = 2 * key_width + value_width
    projections = n * shape.hidden * (conv_channels + value_width + 2 * linear.value_heads + value_width)  # in, out
    conv = (n + linear.conv_kernel - 1) * linear.conv_kernel * conv_channels
    chunk = linear.chunk
    chunks = math.ceil(n / chunk)
    per_chunk = 2 * chunk * chunk * linear.key_dim + chunk * chunk * linear.value_dim + 3 * chunk * linear.key_dim * (
        linear.value_dim)
    return projections + conv + linear.value_heads * chunks * per_chunk


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """What the shared forward, the cache, the prefix and the FLOPs model need to know about one kind of layer.

    softmax: softmax attention (attention weights to score from; a KV cache with a sequence axis; K/V in a prefix).
    mask: the `transformers.masking_utils` function that builds this kind's mask (the stock models' choice).
    mixer_macs: the token mixer's prefill MACs over n tokens (the MLP is counted apart: it does not depend on kind).
    prefix: whether `adatp.prefix` can cache this kind's state over a shared prefix.
    """

    name: str
    softmax: bool
    mask: str
    mixer_macs: Callable[[Any, int], int]
    prefix: bool


KINDS: dict[str, LayerKind] = {
    "full_attention": LayerKind("full_attention", True, "create_causal_mask", _attention_macs, True),
    # Counted in full like the full layers (the window only bounds what a token attends to past the window).
    "sliding_attention": LayerKind("sliding_attention", True, "create_sliding_window_causal_mask", _attention_macs,
                                   True),
    "linear_attention": LayerKind("linear_attention", False, "create_recurrent_attention_mask", _gated_deltanet_macs,
                                  False),
}


def kind(name: str) -> LayerKind:
    """The kind called `name`; ValueError for a kind adatp does not know."""
    if name not in KINDS:
        raise ValueError(f"adatp: layer kind {name!r} is not supported (known: {', '.join(KINDS)})")
    return KINDS[name]


def layer_kinds(text_config: Any) -> tuple[str, ...]:
    """The kind of each decoder layer of a text config (`layer_types`, else every layer `full_attention`)."""
    layers = text_config.num_hidden_layers
    types = getattr(text_config, "layer_types", None)
    if not types:
        return ("full_attention",) * layers
    for name in types[:layers]:
        kind(name)
    return tuple(types[:layers])


def valid_prune_layers(kinds: tuple[str, ...]) -> list[int]:
    """The prune layers K an attention-scored config may use: K >= 1 right after a softmax-attention layer (the
    scores come from layer K-1's attention), and K < the layer count."""
    return [index + 1 for index, name in enumerate(kinds[:-1]) if kind(name).softmax]
