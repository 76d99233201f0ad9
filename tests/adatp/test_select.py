"""Selection invariants (hypothesis), and a loop-by-loop reference of our reconstruction of AdaTP's selection
(docs/method.md: segmentation, relevance, budgets, spatial cap) checked against the batched code."""

import math
from fractions import Fraction

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adatp.config import METHODS, AdaTPConfig
from adatp.flops import kept_count
from adatp.select import (
    relevant_segments,
    segment_budgets,
    segment_counts,
    segment_ids,
    segment_relevance,
    select_visual_tokens,
    spatial_cap_keep,
)


@st.composite
def videos(draw):
    batch = draw(st.integers(1, 3))
    frames = draw(st.integers(1, 9))
    per_frame = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    # Few distinct frame "scenes" so that segments of several frames appear.
    scenes = torch.randn(batch, 3, 8, generator=generator)
    scene_of_frame = torch.randint(0, 3, (batch, frames), generator=generator).sort(-1).values
    features = scenes.gather(1, scene_of_frame[..., None].expand(-1, -1, 8)) + 0.3 * torch.randn(
        batch, frames, 8, generator=generator
    )
    question = torch.randn(batch, 8, generator=generator)
    scores = torch.rand(batch, frames, per_frame, generator=generator)
    config = AdaTPConfig(
        tau_s=draw(st.floats(-1, 1)),
        tau_t=draw(st.floats(0, 1)),
        alpha_boost=draw(st.floats(1, 8)),
        gamma_cap=draw(st.floats(0.01, 1)),
        retention=draw(st.floats(0.01, 1)),
        prune_layer=2,
        method=draw(st.sampled_from(METHODS)),
        seed=seed,
    )
    return config, scores, features, question


def run(config, scores, features, question):
    return select_visual_tokens(
        config, scores.shape[1], scores.shape[2], scores=scores, frame_features=features, question=question
    )


@settings(max_examples=300, deadline=None)
@given(videos())
def test_exactly_m_sorted_unique_in_range(case):
    config, scores, features, question = case
    kept = run(config, scores, features, question)
    batch, frames, per_frame = scores.shape
    m = kept_count(frames * per_frame, config.retention)
    assert kept.shape == (batch, m)
    assert (kept[:, 1:] > kept[:, :-1]).all(), "sorted and unique"
    assert kept.min() >= 0 and kept.max() < frames * per_frame


def reference_segments(features, tau_s):
    ids = [0]
    for i in range(len(features) - 1):
        similarity = torch.nn.functional.cosine_similarity(features[i], features[i + 1], dim=0).item()
        ids.append(ids[-1] + (1 if similarity < tau_s else 0))
    return ids


def reference_proportional_topk(scores, features, kept, tau_s):
    """alpha_boost = 1, gamma_cap = 1: budgets proportional to segment length, then score top-k per segment."""
    frames, per_frame = scores.shape
    ids = reference_segments(features, tau_s)
    lengths = [ids.count(j) for j in range(max(ids) + 1)]
    ideal = [Fraction(kept * length, frames) for length in lengths]  # exact: equal remainders tie
    budgets = [math.floor(x) for x in ideal]
    order = sorted(range(len(ideal)), key=lambda j: -(ideal[j] - budgets[j]))
    for j in order[: kept - sum(budgets)]:
        budgets[j] += 1
    chosen = []
    for j, budget in enumerate(budgets):
        tokens = [(f * per_frame + p) for f in range(frames) if ids[f] == j for p in range(per_frame)]
        tokens.sort(key=lambda t: -scores.flatten()[t].item())
        chosen += tokens[:budget]
    return sorted(chosen)


@settings(max_examples=200, deadline=None)
@given(videos())
def test_alpha_one_gamma_one_is_proportional_topk(case):
    config, scores, features, question = case
    config = config.replace(alpha_boost=1.0, gamma_cap=1.0, method="adatp")
    kept = run(config, scores, features, question)
    m = kept.shape[1]
    for b in range(scores.shape[0]):
        assert kept[b].tolist() == reference_proportional_topk(scores[b], features[b], m, config.tau_s)


def reference_spatial_cap(scores, segments, budgets, gamma_cap):
    """Step 4 loop by loop for one video: per (segment, position) the cap best frames are eligible; per segment the
    budget best tokens, eligible before ineligible; equal scores go to the earlier token."""
    frames, per_frame = scores.shape
    flat = scores.flatten().tolist()
    keep = [False] * (frames * per_frame)
    for j in range(frames):
        members = [f for f in range(frames) if segments[f] == j]
        if not members:
            continue
        cap = max(1, math.ceil(gamma_cap * len(members) - 1e-9))
        eligible = set()
        for p in range(per_frame):
            tokens = sorted((f * per_frame + p for f in members), key=lambda t: (-flat[t], t))
            eligible.update(tokens[:cap])
        tokens = sorted((f * per_frame + p for f in members for p in range(per_frame)),
                        key=lambda t: (t not in eligible, -flat[t], t))
        for t in tokens[: int(budgets[j])]:
            keep[t] = True
    return keep


@settings(max_examples=300, deadline=None)
@given(videos(), st.sampled_from(["continuous", "ties", "signed ties"]))
def test_spatial_cap_matches_loop_reference(case, kind):
    config, scores, features, question = case
    if kind != "continuous":  # few distinct values: ties everywhere; -0.0 next to 0.0 in the signed case
        sign = torch.where((scores * 1000).floor() % 2 == 0, 1.0, -1.0) if kind == "signed ties" else 1.0
        scores = (scores * 3).floor() * sign
    segments = segment_ids(features, config.tau_s)
    counts = segment_counts(segments)
    kept = kept_count(scores.shape[1] * scores.shape[2], config.retention)
    relevant = relevant_segments(torch.rand(counts.shape, dtype=torch.float64), counts, config.tau_t)
    budgets = segment_budgets(counts, relevant, scores.shape[2], kept, config.alpha_boost)
    keep = spatial_cap_keep(scores, segments, budgets, config.gamma_cap)
    for b in range(scores.shape[0]):
        assert keep[b].tolist() == reference_spatial_cap(scores[b], segments[b].tolist(), budgets[b].tolist(),
                                                         config.gamma_cap)


@settings(max_examples=300, deadline=None)
@given(videos())
def test_spatial_cap_never_exceeded_when_it_can_be_met(case):
    config, scores, features, question = case
    config = config.replace(method="adatp")
    kept = run(config, scores, features, question)
    batch, frames, per_frame = scores.shape
    segments = segment_ids(features, config.tau_s)
    counts = segment_counts(segments)
    frame_relevance = torch.nn.functional.cosine_similarity(features, question[:, None], dim=-1)
    relevant = relevant_segments(segment_relevance(frame_relevance, segments), counts, config.tau_t)
    budgets = segment_budgets(counts, relevant, per_frame, kept.shape[1], config.alpha_boost)
    for b in range(batch):
        keep = torch.zeros(frames * per_frame, dtype=torch.bool)
        keep[kept[b]] = True
        keep = keep.view(frames, per_frame)
        for j in range(int(segments[b].max()) + 1):
            in_segment = segments[b] == j
            cap = max(1, math.ceil(config.gamma_cap * int(in_segment.sum()) - 1e-9))
            kept_per_position = keep[in_segment].sum(0)
            assert int(keep[in_segment].sum()) == int(budgets[b, j])
            if budgets[b, j] <= per_frame * min(cap, int(in_segment.sum())):
                assert int(kept_per_position.max()) <= cap


@settings(max_examples=300, deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=10),
    relevant_bits=st.lists(st.booleans(), min_size=10, max_size=10),
    per_frame=st.integers(1, 50),
    retention=st.floats(0.001, 1.0),
    alpha=st.floats(1.0, 20.0),
)
def test_budgets_exact_capped_and_boosted(counts, relevant_bits, per_frame, retention, alpha):
    counts_t = torch.tensor([counts])
    if counts_t.sum() == 0:
        return
    relevant = torch.tensor([relevant_bits[: len(counts)]]) & (counts_t > 0)
    total = int(counts_t.sum()) * per_frame
    kept = kept_count(total, retention)
    budgets = segment_budgets(counts_t, relevant, per_frame, kept, alpha)[0]
    assert int(budgets.sum()) == kept
    assert (budgets <= counts_t[0] * per_frame).all() and (budgets >= 0).all()
    # Water-filled ideal: relevant segments get alpha x the per-frame share of the others unless capped.
    per_frame_share = budgets.double() / counts_t[0].clamp(min=1)
    rel = relevant[0] & (counts_t[0] > 0)
    other = ~relevant[0] & (counts_t[0] > 0)
    if rel.any() and other.any():
        assert per_frame_share[rel].min() + 1 >= min(per_frame, per_frame_share[other].max()) - 1e-9


def test_budget_water_filling_numbers():
    # Two 2-frame segments, N = 10, 30 kept, alpha = 4: ideal 24 / 6 but relevant capped at 20 -> 20 / 10.
    budgets = segment_budgets(torch.tensor([[2, 2]]), torch.tensor([[True, False]]), 10, 30, 4.0)
    assert budgets.tolist() == [[20, 10]]
    # Largest remainder: 3 equal segments share 10 -> 4, 3, 3 (first fraction wins the tie).
    budgets = segment_budgets(torch.tensor([[1, 1, 1]]), torch.tensor([[False, False, False]]), 10, 10, 2.0)
    assert budgets.tolist() == [[4, 3, 3]]


@settings(max_examples=100, deadline=None)
@given(videos(), st.floats(-1, 1), st.floats(-1, 1))
def test_more_segments_as_tau_s_rises(case, t1, t2):
    _, _, features, _ = case
    low, high = min(t1, t2), max(t1, t2)
    assert (segment_ids(features, low).max(-1).values <= segment_ids(features, high).max(-1).values).all()


def test_relevance_min_max_and_single_segment():
    relevance = torch.tensor([[0.2, 0.8, 0.5, 0.0]], dtype=torch.float64)
    counts = torch.tensor([[2, 1, 3, 0]])
    # normalised: 0, 1, 0.5 (slot 3 empty)
    assert relevant_segments(relevance, counts, 0.5).tolist() == [[False, True, True, False]]
    assert relevant_segments(relevance, counts, 0.51).tolist() == [[False, True, False, False]]
    one = relevant_segments(torch.tensor([[0.3, 0.0]], dtype=torch.float64), torch.tensor([[4, 0]]), 0.99)
    assert one.tolist() == [[True, False]]


def test_uniform_is_even_per_frame():
    config = AdaTPConfig(method="uniform", retention=0.25, prune_layer=0, score="norm")
    kept = select_visual_tokens(config, 4, 16, batch=2)
    assert kept.shape == (2, 16)
    per_frame = torch.bincount(kept[0] // 16, minlength=4)
    assert per_frame.tolist() == [4, 4, 4, 4]
    assert (kept[0][:4] == torch.tensor([3, 7, 11, 15])).all()


def test_random_is_seeded():
    config = AdaTPConfig(method="random", retention=0.3, seed=7)
    a = select_visual_tokens(config, 4, 10)
    b = select_visual_tokens(config, 4, 10)
    c = select_visual_tokens(config.replace(seed=8), 4, 10)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_fastv_is_global_topk():
    scores = torch.arange(40.0).view(1, 4, 10)
    kept = select_visual_tokens(AdaTPConfig(method="fastv", retention=0.25), 4, 10, scores=scores)
    assert kept.tolist() == [list(range(30, 40))]


def test_adatp_keeps_relevant_segment_and_caps_repeats():
    # Frames 0-3 are one static scene, frames 4-7 another that matches the question: relevant segment gets
    # alpha x the per-frame budget; inside the static scene one position wins in at most ceil(0.5*4) = 2 frames.
    scene_a, scene_b = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0])
    features = torch.stack([scene_a] * 4 + [scene_b] * 4)[None]
    question = scene_b[None]
    scores = torch.rand(1, 8, 10, generator=torch.Generator().manual_seed(0))
    scores[:, :, 0] += 10  # position 0 dominates every frame (the local bias)
    config = AdaTPConfig(tau_s=0.5, tau_t=0.5, alpha_boost=3.0, gamma_cap=0.5, retention=0.2)
    kept = select_visual_tokens(config, 8, 10, scores=scores, frame_features=features, question=question)[0]
    frame = kept // 10
    assert int((frame >= 4).sum()) == 12 and int((frame < 4).sum()) == 4  # 16 kept: 3:1 -> 12 / 4
    assert int((kept % 10 == 0).sum()) == 4  # position 0 kept in 2 frames of each segment
