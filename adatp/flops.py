"""Analytic prefill cost of the language model, with and without visual-token pruning.

Convention (the FastV / FastVID / AdaTP tables): one multiply-accumulate (MAC) counts as 1 FLOP, only the
matrix products of the decoder layers are counted (no embedding, norms, rotary, softmax or LM head), and the
attention matrix is counted in full (n^2, not the causal half), as eager attention computes it. Per softmax-attention
layer with n tokens, H query heads of dimension d (attention width H*d) and h_kv key/value heads:

    2n * D * (H*d)   q and o projections (D x H*d and H*d x D; a gated q_proj, Qwen3.5's, is 2 x as wide)
    2n * D * h_kv*d  k and v projections (D x h_kv*d each, grouped-query attention)
    2n^2 * (H*d)     Q K^T and softmax(.) V over all H heads
    3n * D * D'      gate, up and down projections of the SwiGLU MLP

For Qwen2 / LLaMA (LLaVA-OneVision, Qwen2.5-VL) H*d = D and this is the tables' `2nD^2 + 2nD*h_kv*d + 2n^2*D +
3nDD'`. Qwen3 (Qwen3-VL, Qwen3.5) sets d explicitly, so H*d may differ from D. Hybrid LMs (Qwen3.5) name each layer's
kind in `layer_types`; a Gated DeltaNet layer costs its projections, its short causal conv and the chunked delta rule,
linear in n (`adatp.kinds` gives each kind's cost). A Mixture-of-Experts MLP (Qwen3.5-MoE) costs what a token runs:
the router (D x E), its top-k experts (3 * D * D_e each), and the shared expert with its gate.

Norms are not counted, the RMSNorms on q and k included; `torch.utils.flop_counter.FlopCounterMode` does not count
them either (it counts matrix products only). It counts 2 FLOPs per MAC, so it reports twice these numbers on the
eager-attention LM (it does not see CPU SDPA kernels at all).

Pruning is FastV-style: layers before `prune_layer` see every token, layers from `prune_layer` on see only the
kept visual tokens plus all text tokens. Text tokens (question, `image_newline`, chat template) are included
because the user pays for them; `n_text=0` reproduces the paper tables. On a hybrid LM a pruned token saves less in
a linear layer than in an attention layer, so a FLOPs budget needs a lower retention than on a dense LM.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from adatp.kinds import kind, layer_kinds

__all__ = [
    "LMShape",
    "LinearAttentionShape",
    "MoEShape",
    "flops_ratio",
    "kept_count",
    "layer_flops",
    "lm_shape",
    "min_flops_ratio",
    "prefill_flops",
    "retention_for_budget",
    "scoring_flops",
]


@dataclasses.dataclass(frozen=True)
class LinearAttentionShape:
    """A Gated DeltaNet layer's dimensions: key/value heads and their dims, the conv kernel, the delta rule's chunk."""

    key_heads: int
    value_heads: int
    key_dim: int
    value_dim: int
    conv_kernel: int
    chunk: int = 64  # transformers' torch_chunk_gated_delta_rule pads the sequence to whole chunks of 64


@dataclasses.dataclass(frozen=True)
class MoEShape:
    """A sparse MLP: E routed experts of intermediate size D_e, top_k run per token, a shared expert of size D_s
    (0: none) with a one-output sigmoid gate."""

    experts: int
    top_k: int
    expert_intermediate: int
    shared_intermediate: int = 0


@dataclasses.dataclass(frozen=True)
class LMShape:
    """The dimensions of a decoder that its prefill cost depends on.

    layers: number of decoder layers L.
    hidden: hidden size D.
    intermediate: MLP intermediate size D' (0 for an MoE LM, whose MLP is `moe`).
    kv_heads: number of key/value heads h_kv.
    head_dim: per-head dimension d.
    heads: number of query heads H (H * d is the attention width: D for Qwen2/LLaMA, not always for Qwen3).
    layer_types: each layer's kind (`adatp.kinds`); empty: every layer is full attention.
    gated_query: the q projection also gives an output gate (Qwen3.5: 2 x H*d wide).
    linear: the linear-attention layers' shape, when there are any.
    moe: the sparse MLP's shape, for a Mixture-of-Experts LM.
    """

    layers: int
    hidden: int
    intermediate: int
    kv_heads: int
    head_dim: int
    heads: int
    layer_types: tuple[str, ...] = ()
    gated_query: bool = False
    linear: LinearAttentionShape | None = None
    moe: MoEShape | None = None

    @property
    def attention_width(self) -> int:
        """H * d, the width of the query projection's output and of the o projection's input."""
        return self.heads * self.head_dim

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.layer_types or ("full_attention",) * self.layers

    def mlp_macs_per_token(self) -> int:
        if self.moe is None:
            return 3 * self.hidden * self.intermediate
        moe = self.moe
        shared = 3 * self.hidden * moe.shared_intermediate + self.hidden if moe.shared_intermediate else 0
        return self.hidden * moe.experts + moe.top_k * 3 * self.hidden * moe.expert_intermediate + shared


# Fields through which transformers configs declare routed experts (Mixtral and Qwen3-VL-MoE: num_local_experts /
# num_experts; Qwen2/3-MoE and Qwen3.5-MoE: num_experts, moe_intermediate_size; DeepSeek: n_routed_experts; ...).
_MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "moe_intermediate_size")


def _is_positive(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_is_positive(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def lm_shape(text_config: Any) -> LMShape:
    """Read an `LMShape` from a transformers text config (Qwen2Config, LlamaConfig, Qwen2_5_VLTextConfig,
    Qwen3VLTextConfig, Qwen3_5TextConfig, Qwen3_5MoeTextConfig, ...).

    A composite config (LlavaOnevisionConfig, Qwen3_5Config, ...) is accepted too: its `get_text_config()` is used. An
    explicit `head_dim` (Qwen3) is honoured, else d = D // H. An `LMShape` is returned unchanged. Hybrid layers come
    from `layer_types`; Qwen3.5's gated attention from its model type. A Mixture-of-Experts config is read when it
    has the fields Qwen3.5-MoE uses (num_experts, num_experts_per_tok, moe_intermediate_size, and optionally
    shared_expert_intermediate_size, every layer sparse); any other MoE layout raises ValueError.
    """
    if isinstance(text_config, LMShape):
        return text_config
    outer = text_config
    get_text_config = getattr(text_config, "get_text_config", None)
    if callable(get_text_config):
        text_config = get_text_config()
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    kinds = layer_kinds(text_config)
    linear = None
    if "linear_attention" in kinds:
        linear = LinearAttentionShape(
            key_heads=text_config.linear_num_key_heads, value_heads=text_config.linear_num_value_heads,
            key_dim=text_config.linear_key_head_dim, value_dim=text_config.linear_value_head_dim,
            conv_kernel=text_config.linear_conv_kernel_dim)
    moe = _moe_shape(text_config, outer)
    return LMShape(
        layers=text_config.num_hidden_layers,
        hidden=text_config.hidden_size,
        intermediate=0 if moe is not None else text_config.intermediate_size,
        kv_heads=kv_heads,
        head_dim=head_dim,
        heads=heads,
        layer_types=kinds if set(kinds) != {"full_attention"} else (),
        gated_query=str(getattr(text_config, "model_type", "")).startswith(("qwen3_5", "qwen3_next")),
        linear=linear,
        moe=moe,
    )


def _moe_shape(text_config: Any, outer: Any) -> MoEShape | None:
    moe = {field: getattr(text_config, field, None) for field in _MOE_FIELDS}
    moe = {field: value for field, value in moe.items() if _is_positive(value)}
    if not moe:
        return None
    readable = all(_is_positive(getattr(text_config, field, None))
                   for field in ("num_experts", "num_experts_per_tok", "moe_intermediate_size"))
    sparse_every_layer = not getattr(text_config, "mlp_only_layers", None) and getattr(
        text_config, "decoder_sparse_step", 1) in (1, None)
    if not (readable and sparse_every_layer):
        name = type(text_config).__name__
        if text_config is not outer:
            name += f" (the text config of {type(outer).__name__})"
        fields = ", ".join(f"{field}={value}" for field, value in moe.items())
        raise ValueError(f"{name} is a Mixture-of-Experts language model ({fields}) of a layout adatp.flops does "
                         "not count (it reads num_experts, num_experts_per_tok and moe_intermediate_size, every "
                         "layer sparse)")
    return MoEShape(experts=text_config.num_experts, top_k=text_config.num_experts_per_tok,
                    expert_intermediate=text_config.moe_intermediate_size,
                    shared_intermediate=getattr(text_config, "shared_expert_intermediate_size", 0) or 0)


def _macs_per_token(shape: LMShape) -> tuple[int, int]:
    """(a, b) with a softmax-attention layer's cost a*n + b*n^2 MACs: a = projections + MLP, b = 2*(H*d)."""
    a = kind("full_attention").mixer_macs(shape, 1) - 2 * shape.attention_width + shape.mlp_macs_per_token()
    return a, 2 * shape.attention_width


def layer_flops(shape: LMShape, n: int, layer_kind: str = "full_attention") -> int:
    """Prefill cost of one decoder layer of `layer_kind` over `n` tokens, in MACs (1 multiply-accumulate = 1 FLOP).

    Full attention: `2n*D*(H*d) + 2n*D*h_kv*d + 2n^2*(H*d) + 3n*D*D'`, as an exact integer; with H*d = D
    (Qwen2/LLaMA) this is `2nD^2 + 2nD*h_kv*d + 2n^2*D + 3nDD'`. Other kinds: `adatp.kinds`.
    """
    return kind(layer_kind).mixer_macs(shape, n) + shape.mlp_macs_per_token() * n


def kept_count(n_visual: int, retention: float) -> int:
    """Number of visual tokens kept at `retention` in (0, 1]: `max(1, floor(retention * n_visual + 0.5))`.

    Rounds half up (not Python's banker's `round`), so 0.5 tokens -> 1 and 2.5 -> 3. The selection code uses
    this function too, so the FLOPs we report and the tokens we keep always agree.
    """
    _check_n_visual(n_visual)
    if not 0.0 < retention <= 1.0:
        raise ValueError(f"retention must be in (0, 1], got {retention}")
    return max(1, min(n_visual, math.floor(retention * n_visual + 0.5)))


def _check_n_visual(n_visual: int) -> None:
    if n_visual < 1:
        raise ValueError(f"n_visual must be >= 1, got {n_visual}")


def _check_counts(shape: LMShape, n_visual: int, n_text: int, prune_layer: int) -> None:
    _check_n_visual(n_visual)
    if n_text < 0:
        raise ValueError(f"n_text must be >= 0, got {n_text}")
    if not 0 <= prune_layer <= shape.layers:
        raise ValueError(f"prune_layer must be in [0, {shape.layers}] (the LM's layer count), got {prune_layer}")


def _prefill_macs(shape: LMShape, n_visual: int, n_text: int, kept: int, prune_layer: int) -> int:
    """Exact prefill MACs with `kept` visual tokens from `prune_layer` on."""
    full, pruned = n_visual + n_text, kept + n_text
    return sum(layer_flops(shape, full if index < prune_layer else pruned, name)
               for index, name in enumerate(shape.kinds))


def _ratio_for_kept(shape: LMShape, n_visual: int, n_text: int, kept: int, prune_layer: int) -> float:
    vanilla = _prefill_macs(shape, n_visual, n_text, n_visual, shape.layers)
    return _prefill_macs(shape, n_visual, n_text, kept, prune_layer) / vanilla


def prefill_flops(
    text_config: Any, n_visual: int, n_text: int = 0, retention: float = 1.0, prune_layer: int = 0
) -> float:
    """LM prefill cost in FLOPs (MACs, the paper convention) for one sequence.

    text_config: a transformers text config (or `LMShape`).
    n_visual: visual tokens before pruning (F * N; 6272 for 32 frames of LLaVA-OV).
    n_text: all other tokens of the prompt (they are never pruned), >= 0.
    retention: share of visual tokens kept, in (0, 1]; kept count is `kept_count(n_visual, retention)`.
    prune_layer: layers [0, prune_layer) see every token, layers [prune_layer, L) the kept ones; in [0, L].
    """
    shape = lm_shape(text_config)
    _check_counts(shape, n_visual, n_text, prune_layer)
    kept = kept_count(n_visual, retention)
    return float(_prefill_macs(shape, n_visual, n_text, kept, prune_layer))


def flops_ratio(text_config: Any, n_visual: int, n_text: int, retention: float, prune_layer: int) -> float:
    """Pruned / vanilla prefill cost, in (0, 1]; text tokens counted in both. Arguments as `prefill_flops`."""
    shape = lm_shape(text_config)
    _check_counts(shape, n_visual, n_text, prune_layer)
    return _ratio_for_kept(shape, n_visual, n_text, kept_count(n_visual, retention), prune_layer)


def min_flops_ratio(text_config: Any, n_visual: int, n_text: int, prune_layer: int) -> float:
    """The smallest FLOPs ratio reachable at `prune_layer`: one visual token kept from that layer on."""
    shape = lm_shape(text_config)
    _check_counts(shape, n_visual, n_text, prune_layer)
    return _ratio_for_kept(shape, n_visual, n_text, 1, prune_layer)


def retention_for_budget(text_config: Any, n_visual: int, n_text: int, budget: float, prune_layer: int) -> float:
    """The largest retention whose pruned prefill costs at most `budget` (a FLOPs ratio in (0, 1]).

    Returns `kept / n_visual`, where `kept` is the largest visual-token count with
    `flops_ratio(..., kept / n_visual, prune_layer) <= budget`; `kept_count` maps the result back to `kept`.
    Budget 1.0 gives retention 1.0.

    Raises ValueError when `budget` is outside (0, 1] or below `min_flops_ratio` (the cost of the layers
    before `prune_layer` plus one kept token after it).
    """
    shape = lm_shape(text_config)
    _check_counts(shape, n_visual, n_text, prune_layer)
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be a FLOPs ratio in (0, 1], got {budget}")
    minimum = _ratio_for_kept(shape, n_visual, n_text, 1, prune_layer)
    if budget < minimum:
        raise ValueError(
            f"budget {budget:.4f} is below the minimum FLOPs ratio {minimum:.4f} reachable with prune_layer="
            f"{prune_layer} ({prune_layer} full layers of {shape.layers}, then 1 visual + {n_text} text tokens); "
            f"raise the budget or lower prune_layer"
        )
    if prune_layer == shape.layers:  # nothing is pruned: every retention costs 1.0, and budget >= minimum = 1.0 here
        return 1.0
    # The cost is non-decreasing in the kept count: the largest kept within budget, by bisection (exact, and valid
    # for every layer kind, whose costs need not be one quadratic).
    low, high = 1, n_visual  # ratio(low) <= budget (checked above)
    while low < high:
        middle = (low + high + 1) // 2
        if _ratio_for_kept(shape, n_visual, n_text, middle, prune_layer) <= budget:
            low = middle
        else:
            high = middle - 1
    return low / n_visual


def scoring_flops(text_config: Any, n_tokens: int, n_query: int) -> float:
    """Extra cost (MACs) of `score: attention` at layer prune_layer - 1, outside the paper convention.

    Queries are projected for the n_query text rows only (n_query * D * H*d), keys for all n_tokens
    (n_tokens * D * h_kv*d), and the logits are n_query x n_tokens per head (n_query * n_tokens * H*d). Norms
    (the input RMSNorm, Qwen3's q/k RMSNorms), rotary and softmax are not counted. A gated q_proj (Qwen3.5) projects
    2 x H*d per query row.
    At the LLaVA-OV-7B shape (6272 visual + 64 text tokens, 25% kept at layer 2) it is 1.0e-3 of the pruned prefill,
    almost all of it the key projection of layer prune_layer - 1.
    """
    shape = lm_shape(text_config)
    width = shape.attention_width
    query = width * (2 if shape.gated_query else 1)  # a gated q_proj is projected whole (the gate half unused)
    return float(
        n_query * shape.hidden * query
        + n_tokens * shape.hidden * shape.kv_heads * shape.head_dim
        + n_query * n_tokens * width
    )


def prefixed_flops(text_config: Any, n_visual: int, n_prefix_text: int, n_question: int, retention: float,
                   prune_layer: int) -> float:
    """Prefill MACs of one question run from a cached prefix (`adatp.prefix`), in the paper convention.

    The prefix (n_prefix_text + n_visual tokens) went through layers < K once per video; a question's n_question
    tokens then cost, in each layer < K, their own projections and MLP plus attention to prefix + question
    (2 * q * (P + q) * H*d), and layers >= K run on the kept visual tokens + all text, as in the pruned prefill.
    Compare with `prefill_flops(text_config, n_visual, n_prefix_text + n_question, retention, prune_layer)`.
    """
    shape = lm_shape(text_config)
    n_text = n_prefix_text + n_question
    _check_counts(shape, n_visual, n_text, prune_layer)
    if prune_layer < 1:
        raise ValueError(f"prune_layer must be >= 1 for a prefix cache, got {prune_layer}")
    if not all(kind(name).prefix for name in shape.kinds[:prune_layer]):
        raise ValueError("a prefix cache needs softmax-attention layers below prune_layer (adatp.prefix does not "
                         "store linear-attention states)")
    linear, quadratic = _macs_per_token(shape)
    prefix = n_visual + n_prefix_text
    below = linear * n_question + quadratic * n_question * (prefix + n_question)
    above = sum(layer_flops(shape, kept_count(n_visual, retention) + n_text, name)
                for name in shape.kinds[prune_layer:])
    return float(prune_layer * below + above)
