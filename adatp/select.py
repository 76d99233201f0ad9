"""AdaTP's selection pipeline as small batched tensor functions, plus the baselines: segmentation (tau_s), text
relevance (tau_t), budget allocation per segment (alpha_boost), the spatial cap (gamma_cap) and the sorted kept
indices, in our reconstruction from the paper's description (docs/method.md).

Shapes: B videos, F frames, N tokens per frame (h*w after pooling), S = F segment slots (a video has at most F
segments; slot j is empty when the video has fewer). Every function works on the whole batch at once; none loops
over tokens, frames or segments in Python.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F_

from adatp.config import AdaTPConfig
from adatp.flops import kept_count


def segment_ids(frame_features: torch.Tensor, tau_s: float) -> torch.Tensor:
    """Step 1. [B, F, Dg] -> [B, F] segment id per frame; a segment ends after frame i iff cos(g_i, g_i+1) < tau_s."""
    similarity = F_.cosine_similarity(frame_features[:, :-1].float(), frame_features[:, 1:].float(), dim=-1)
    starts = (similarity < tau_s).long()
    first = torch.zeros(starts.shape[0], 1, dtype=torch.long, device=starts.device)
    return torch.cat([first, starts.cumsum(-1)], dim=-1)


def segment_counts(segments: torch.Tensor) -> torch.Tensor:
    """[B, F] segment ids -> [B, S=F] number of frames in each segment slot (0 for empty slots)."""
    counts = torch.zeros_like(segments)
    return counts.scatter_add_(-1, segments, torch.ones_like(segments))


def segment_relevance(frame_relevance: torch.Tensor, segments: torch.Tensor,
                      counts: torch.Tensor | None = None) -> torch.Tensor:
    """Step 2a. Mean of per-frame relevance [B, F] over each segment -> [B, S] (0 for empty slots)."""
    totals = torch.zeros_like(frame_relevance, dtype=torch.float64)
    totals.scatter_add_(-1, segments, frame_relevance.double())
    return totals / (segment_counts(segments) if counts is None else counts).clamp(min=1)


def relevant_segments(relevance: torch.Tensor, counts: torch.Tensor, tau_t: float) -> torch.Tensor:
    """Step 2b. Min-max normalise [B, S] relevance over a video's segments; relevant iff normalised >= tau_t.

    A single segment, or segments of equal relevance (range < 1e-6), all count as relevant.
    """
    present = counts > 0
    low = torch.where(present, relevance, torch.inf).amin(-1, keepdim=True)
    high = torch.where(present, relevance, -torch.inf).amax(-1, keepdim=True)
    spread = high - low
    flat = spread < 1e-6
    normalised = (relevance - low) / torch.where(flat, torch.ones_like(spread), spread)
    return present & (flat | (normalised >= tau_t - 1e-9))  # tolerance: rounding must not flip a tie


def segment_budgets(
    counts: torch.Tensor, relevant: torch.Tensor, tokens_per_frame: int, kept: int, alpha_boost: float
) -> torch.Tensor:
    """Step 3. Token budget per segment [B, S], summing to `kept` exactly in every video.

    Weight w_j = |S_j| * (alpha_boost if relevant else 1); budgets proportional to w, capped at |S_j| * N with the
    surplus water-filled to uncapped segments (closed form below), then integerised by largest remainder.
    """
    counts = counts.double()
    weights = counts * torch.where(relevant, alpha_boost, 1.0).double()
    caps = counts * tokens_per_frame
    # Water-filling: x_j = min(cap_j, lam * w_j) with sum x = kept. Sort segments by the level t_j = cap_j / w_j at
    # which they saturate; with the first k capped, lam_k = (kept - sum_{<k} cap) / sum_{>=k} w; the answer is the
    # first k with lam_k <= t_k.
    level = torch.where(weights > 0, caps / weights.clamp(min=1e-30), torch.inf)
    level_sorted, order = level.sort(dim=-1, stable=True)
    caps_sorted = caps.gather(-1, order)
    weights_sorted = weights.gather(-1, order)
    capped_before = caps_sorted.cumsum(-1) - caps_sorted
    weight_from = weights_sorted.flip(-1).cumsum(-1).flip(-1)
    lam = (kept - capped_before) / weight_from.clamp(min=1e-30)
    first_valid = (lam <= level_sorted * (1 + 1e-12)).long().argmax(-1, keepdim=True)
    lam = lam.gather(-1, first_valid)
    ideal = torch.minimum(caps, lam * weights)
    # Largest remainder: floor everything, then +1 to the segments with the largest fractional parts. Fractions equal
    # in exact arithmetic (e.g. segments of equal length) differ in the last bits here: rounding makes them tie, and
    # ties go to the earlier segment.
    base = ideal.floor()
    fraction = torch.where(base < caps, (ideal - base).round(decimals=9), -1.0)
    missing = (kept - base.sum(-1, keepdim=True)).round().long()
    rank = fraction.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
    return (base + (rank < missing).double()).long()


def _descending_key(values: torch.Tensor) -> torch.Tensor:
    """float32 [..] -> int64 in [0, 2^32) whose ascending order is the values' descending order (-0.0 == 0.0).

    The IEEE bits of a float, read as a signed integer, order like the floats once the magnitude bits of negative
    numbers are flipped; subtracting that from 2^31 - 1 reverses the order and makes it non-negative.
    """
    bits = (values.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0
    signed = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
    return (2**31 - 1) - signed


def _rank_in_group(keys: torch.Tensor, group_shift: int) -> torch.Tensor:
    """Rank [B, T] of each element within its group; keys [B, T] int64 = (group << group_shift) | order in group.

    One stable sort of the packed keys orders by group, then by the in-group key ascending; ties keep index order.
    """
    sorted_keys, order = keys.sort(dim=-1, stable=True)
    grouped = sorted_keys >> group_shift
    position = torch.arange(keys.shape[-1], device=keys.device).expand_as(keys)
    starts = F_.pad(grouped[:, 1:] != grouped[:, :-1], (1, 0), value=True)
    first = torch.where(starts, position, 0).cummax(-1).values
    return torch.empty_like(order).scatter_(-1, order, position - first)


def spatial_cap_keep(
    scores: torch.Tensor, segments: torch.Tensor, budgets: torch.Tensor, gamma_cap: float,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Step 4. Keep mask [B, F*N] from scores [B, F, N], segment ids [B, F] and budgets [B, S].

    In segment j a position may be kept in at most c_j = max(1, ceil(gamma_cap * |S_j|)) frames: each position's c_j
    best-scored frames are eligible; the segment keeps its B_j best eligible tokens, topped up with the best
    ineligible ones if fewer than B_j are eligible. Equal scores go to the earlier token. counts: segment_counts
    (computed when not given). Scores must not be NaN.
    """
    batch, frames, per_frame = scores.shape
    counts = segment_counts(segments) if counts is None else counts
    frame_cap = torch.ceil(gamma_cap * counts.double() - 1e-9).long().clamp(min=1)
    token_segment = segments[:, :, None].expand(batch, frames, per_frame).reshape(batch, -1)
    position = torch.arange(per_frame, device=scores.device).repeat(frames)
    descending = _descending_key(scores.reshape(batch, -1))
    # Groups (segment, position): rank frames by score. Then groups (segment): eligible first, then by score.
    rank_at_position = _rank_in_group(((token_segment * per_frame + position) << 32) | descending, 32)
    eligible = rank_at_position < frame_cap.gather(-1, token_segment)
    rank_in_segment = _rank_in_group((token_segment << 33) | ((~eligible).long() << 32) | descending, 33)
    return rank_in_segment < budgets.gather(-1, token_segment)


def true_columns(mask: torch.Tensor, count: int) -> torch.Tensor:
    """[B, T] bool with exactly `count` True per row -> [B, count] their column indices, ascending.

    A stable sort instead of `nonzero()`: the output shape is known ahead, so the host never waits for the GPU.
    """
    return mask.to(torch.uint8).argsort(dim=-1, descending=True, stable=True)[:, :count]


def _keep_to_indices(keep: torch.Tensor, kept: int) -> torch.Tensor:
    """[B, T] bool with exactly `kept` True per row -> [B, kept] sorted flat indices."""
    return true_columns(keep, kept)


def _top_k_indices(scores: torch.Tensor, kept: int) -> torch.Tensor:
    return scores.topk(kept, dim=-1, sorted=False).indices.sort(-1).values


def uniform_indices(batch: int, frames: int, per_frame: int, kept: int, device=None) -> torch.Tensor:
    """Baseline: the same count per frame (remainder spread evenly over frames), evenly spaced positions."""
    frame = torch.arange(frames, device=device)
    per_frame_count = (frame + 1) * kept // frames - frame * kept // frames
    position = torch.arange(per_frame, device=device)
    # Position p is kept when the running quota floor(p * k / N) steps up: exactly k evenly spaced positions.
    quota = per_frame_count[:, None]
    steps = ((position[None] + 1) * quota) // per_frame - (position[None] * quota) // per_frame
    keep = (steps > 0).reshape(1, -1).expand(batch, -1)
    return _keep_to_indices(keep, kept)


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def random_indices(batch: int, total: int, kept: int, seed: int, device=None) -> torch.Tensor:
    """Baseline: `kept` tokens drawn uniformly without replacement, seeded (CPU generator, reproducible anywhere)."""
    draw = torch.rand(batch, total, generator=_generator(seed))
    return _top_k_indices(draw, kept).to(device)


def select_visual_tokens(
    config: AdaTPConfig,
    frames: int,
    tokens_per_frame: int,
    *,
    batch: int = 1,
    scores: torch.Tensor | None = None,
    frame_features: torch.Tensor | None = None,
    question: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor:
    """Indices [B, M] (sorted, flat over F*N) of the visual tokens to keep, M = kept_count(F*N, retention).

    scores [B, F, N]: per-token scores (needed by adatp, fastv, adatp_random_segments).
    frame_features [B, F, Dg] and question [B, Dg]: features in one space for segmentation and text relevance
    (adatp; adatp_random_segments needs frame_features only).
    """
    total = frames * tokens_per_frame
    kept = kept_count(total, config.retention)
    if scores is not None:
        batch, device = scores.shape[0], scores.device
    if config.method == "uniform":
        return uniform_indices(batch, frames, tokens_per_frame, kept, device)
    if config.method == "random":
        return random_indices(batch, total, kept, config.seed, device)
    if scores is None:
        raise ValueError(f"method {config.method!r} needs per-token scores")
    if scores.shape[1:] != (frames, tokens_per_frame):
        raise ValueError(f"scores must be [B, {frames}, {tokens_per_frame}], got {list(scores.shape)}")
    if config.method == "fastv":
        return _top_k_indices(scores.reshape(batch, -1).float(), kept)
    if frame_features is None:
        raise ValueError(f"method {config.method!r} needs frame features")
    segments = segment_ids(frame_features, config.tau_s)
    counts = segment_counts(segments)
    if config.method == "adatp_random_segments":
        draw = torch.rand(batch, frames, generator=_generator(config.seed), dtype=torch.float64)
        relevance = draw.to(counts.device)
    else:
        if question is None:
            raise ValueError("method 'adatp' needs a question embedding")
        frame_relevance = F_.cosine_similarity(frame_features.float(), question[:, None].float(), dim=-1)
        relevance = segment_relevance(frame_relevance, segments, counts)
    relevant = relevant_segments(relevance, counts, config.tau_t)
    budgets = segment_budgets(counts, relevant, tokens_per_frame, kept, config.alpha_boost)
    keep = spatial_cap_keep(scores, segments, budgets, config.gamma_cap, counts)
    return _keep_to_indices(keep, kept)
