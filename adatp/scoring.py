"""Attention scores for pruning: how much the question attends to each token at one softmax-attention layer.

Computed for the few query rows only (the text after the last video), never as the full L x L attention matrix, so
the rest of the forward keeps SDPA / flash attention. Each layer's own query path is followed: its q/k norms
(Qwen3, Qwen3.5), partial rotary (Qwen3.5 rotates the first `rotary_dim` channels of each head and passes the rest
through), and a gated `q_proj` (Qwen3.5's projects [query | output gate] per head; the gate is dropped).
"""

from __future__ import annotations

import torch

__all__ = ["attention_scores", "mean_query_attention"]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, L, d] rotated by (cos, sin) [B, L, r] on its first r <= d channels (partial rotary)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rotary = cos.shape[-1]
    if rotary == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    rotated, passed = x[..., :rotary], x[..., rotary:]
    return torch.cat([rotated * cos + _rotate_half(rotated) * sin, passed], dim=-1)


def _queries(attn, normed: torch.Tensor) -> torch.Tensor:
    """The layer's queries [B, T, H, d] before rotary (gate dropped, q_norm applied)."""
    batch, rows, _ = normed.shape
    projected = attn.q_proj(normed)
    heads = attn.config.num_attention_heads
    if projected.shape[-1] == 2 * heads * attn.head_dim:  # gated: [query | gate] per head
        query = projected.view(batch, rows, heads, 2 * attn.head_dim)[..., : attn.head_dim]
    else:
        query = projected.view(batch, rows, -1, attn.head_dim)
    if hasattr(attn, "q_norm"):
        query = attn.q_norm(query)
    return query


def attention_scores(
    layer, hidden: torch.Tensor, position_embeddings, query_rows: torch.Tensor, key_mask: torch.Tensor,
    rows: int | None = None, end: int | None = None,
) -> torch.Tensor:
    """Attention of the query rows to every key in `layer`, averaged over heads and query rows -> [B, L].

    Only the T last rows are projected to queries (T = most query rows in a batch row), so the cost is
    T x L per head, never L x L. hidden: the layer's input (residual stream) [B, L, D]; position_embeddings: the
    LM's (cos, sin) [B, L, r] (M-RoPE already folded in by the rotary module); query_rows [B, L] bool (the text
    after the video); key_mask [B, L] bool (padding). rows: T when the caller knows it (saves a host-device
    synchronisation in the middle of the forward). end: the rows are the T before `end` (default L; assisted
    decoding's draft tokens ride after the prompt's end).
    """
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    rows = int(query_rows.sum(-1).max()) if rows is None else rows
    key = attn.k_proj(layer.input_layernorm(hidden)).view(batch, length, -1, attn.head_dim)
    if hasattr(attn, "k_norm"):
        key = attn.k_norm(key)
    cos, sin = position_embeddings
    key = _rope(key.transpose(1, 2), cos, sin)
    end = length if end is None else min(end, length)
    window = slice(end - rows, end)
    row_position = torch.arange(end - rows, end, device=hidden.device)
    allowed = (torch.arange(length, device=hidden.device)[None, :] <= row_position[:, None])[None] & key_mask[:, None]
    return mean_query_attention(layer, hidden[:, window], (cos[:, window], sin[:, window]), key, allowed,
                                query_rows[:, window])


def mean_query_attention(layer, rows_hidden: torch.Tensor, rows_embeddings, key: torch.Tensor,
                         allowed: torch.Tensor, valid_rows: torch.Tensor) -> torch.Tensor:
    """Attention of T query rows to L keys, averaged over heads and valid rows -> [B, L].

    rows_hidden: the layer's input at the rows [B, T, D]; rows_embeddings: their (cos, sin) [B, T, r]; key: the
    layer's keys [B, Hkv, L, d] after its norm and RoPE (as its cache holds them); allowed [B, T, L] bool;
    valid_rows [B, T] bool. Grouped-query attention without repeating the keys.
    """
    attn = layer.self_attn
    batch, rows, _ = rows_hidden.shape
    query = _queries(attn, layer.input_layernorm(rows_hidden))
    cos, sin = rows_embeddings
    query = _rope(query.transpose(1, 2), cos, sin)
    query = query.reshape(batch, key.shape[1], -1, rows, attn.head_dim)  # [B, Hkv, G, T, d]
    logits = torch.einsum("bkgtd,bkld->bkgtl", query.float(), key.float()) * attn.scaling
    logits = logits.masked_fill(~allowed[:, None, None], float("-inf"))
    probs = logits.softmax(-1).nan_to_num(0.0)
    valid = valid_rows.float()  # [B, T]
    per_row = probs.mean(dim=(1, 2))  # [B, T, L]
    return (per_row * valid[..., None]).sum(1) / valid.sum(-1, keepdim=True).clamp(min=1)
