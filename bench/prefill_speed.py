"""Prefill latency and peak memory: vanilla vs AdaTP, FastV and uniform at FLOPs budgets 0.2 / 0.3 / 0.5 (GPU).

Shapes (`--shape`), each with random weights built from config in bf16 with SDPA (no download):
- `7b`, `0.5b`: LLaVA-OneVision with the Qwen2 LM of the 7B (or 0.5B) model; 32 frames x 196 visual tokens, then the
  `image_newline`.
- `qwen2.5-vl-7b`: Qwen2.5-VL-7B's LM (28 layers, D=3584, D'=18944, 28 heads, 4 KV heads, vocab 152064, M-RoPE
  sections [16, 24, 24]) behind a tiny vision tower that is never run. The video is laid out as Qwen's processor
  expands it: `<|vision_start|>`, T x N video tokens, `<|vision_end|>`, with `mm_token_type_ids` 2 on the video tokens
  and `video_grid_thw` [[16, 32, 32]]: 32 input frames of 448 x 448 px -> T = 16 temporal patch groups (2 frames
  each) of 32 x 32 patches of 14 px, merged 2 x 2 -> N = 256 tokens per group, 4,096 visual tokens (an AdaTP frame
  is one group). M-RoPE positions come from the stock `get_rope_index`.
- `qwen3.5-9b`, `qwen3.5-35b-a3b`: the default Qwen3.5 / Qwen3.5-MoE LMs of transformers' configs (32 / 40 layers of
  Gated DeltaNet with full attention every 4th, a gated q_proj, partial rotary; the MoE: 256 experts, top 8, and a
  shared expert), with the video as Qwen3-VL lays it out (per group `<t>` text, vision start, 256 tokens, vision
  end). In-LLM pruning goes at K = 4 (right after the first full-attention layer; K = 2 is refused there).
Video features are handed in precomputed (`mm_encoder_outputs={"video": ...}`; the vision tower's output is cached
across trials, so it is not part of a trial's prefill). For each setting: median latency of the prefill (one forward
with logits for the last position, as the evaluation engine does), its ratio to vanilla next to the analytic FLOPs
ratio, the scoring + selection time (`profile=True`, synchronised) as a share of the pruned prefill, and the peak
memory above the weights. The attention scores at the prune layer are computed for the T question rows only; a full
attention matrix would add heads x L x L x 2 bytes at that layer, which the peak-memory column shows is absent
(compare `adatp@2` with `uniform@2`, which computes no scores).

Run: `python bench/prefill_speed.py --shape 7b` (and `0.5b`, `qwen2.5-vl-7b`, `qwen3.5-9b`, `qwen3.5-35b-a3b`);
writes bench/results/prefill_speed_<shape>.json. `--smoke` checks the script on CPU in seconds: the same input layout
with 4 frames (groups), a 28-layer LM of width 64 (Qwen3.5: 32 layers), float32, 2 repetitions; it writes to the
temp directory unless `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers
from prune_overhead import VIDEO_TOKEN, random_llava_ov
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

import adatp
from adatp.flops import flops_ratio, kept_count, prefill_flops

# LLaVA-OneVision layout (bench/prefill_profile.py imports these): frames x tokens, text before and after the video.
FRAMES, PER_FRAME, PREFIX, QUESTION = 32, 196, 14, 64
# Qwen2 LM shapes of LLaVA-OneVision 7B and 0.5B (hidden, intermediate, layers, heads, kv heads).
SHAPES = {"7b": (3584, 18944, 28, 28, 4), "0.5b": (896, 4864, 24, 14, 2)}
# Qwen2.5-VL LM shapes, same fields; and the video layout: T temporal patch groups of a G x G patch grid.
QWEN_SHAPES = {"qwen2.5-vl-7b": (3584, 18944, 28, 28, 4)}
# Qwen3.5 shapes: the transformers defaults of Qwen3_5TextConfig (the 9B) and Qwen3_5MoeTextConfig (the 35B-A3B):
# 32 / 40 layers, Gated DeltaNet with full attention every 4th layer, so in-LLM pruning goes at K = 4.
HYBRID_SHAPES = {"qwen3.5-9b": "dense", "qwen3.5-35b-a3b": "moe"}
HYBRID_LAYER = 4
QWEN_GROUPS, QWEN_GRID, QWEN_PATCH = 16, 32, 14  # 32 frames of 448 x 448 px -> 16 x (32 x 32 patches) -> 16 x 256
QWEN_IMAGE, QWEN_VIDEO, QWEN_START, QWEN_END = 151655, 151656, 151652, 151653  # Qwen2.5-VL's token ids
VOCAB = 152064
SMOKE_LM = (64, 128, 28, 4, 2)  # --smoke: the 7B depth (budget 0.2 needs it at prune_layer 2), width 64
SMOKE_FRAMES = 4
BUDGETS = (0.2, 0.3, 0.5)
# (label, method, prune_layer, score, selection replayed from a CUDA graph)
METHODS = (("adatp@0", "adatp", 0, "norm", True), ("adatp@2", "adatp", 2, "attention", True),
           ("adatp@2 eager selection", "adatp", 2, "attention", False), ("fastv@2", "fastv", 2, "attention", True),
           ("uniform@0", "uniform", 0, "norm", True), ("uniform@2", "uniform", 2, "attention", True))


@dataclasses.dataclass(frozen=True)
class Layout:
    """One video per prompt: `frames` AdaTP frames (Qwen: temporal patch groups) of `per_frame` tokens, and `n_text`
    tokens that are never pruned (prefix, question, and LLaVA-OV's image_newline or Qwen's vision start/end)."""

    family: str
    frames: int
    per_frame: int
    n_text: int
    grid: tuple[int, int, int] | None = None  # Qwen's video_grid_thw row (T, H, W in patches)

    @property
    def n_visual(self) -> int:
        return self.frames * self.per_frame


def layout(shape: str, smoke: bool = False) -> Layout:
    frames = SMOKE_FRAMES if smoke else None
    if shape in HYBRID_SHAPES:  # per group: 2 timestamp tokens, <|vision_start|>, N video tokens, <|vision_end|>
        groups = frames or QWEN_GROUPS
        return Layout("qwen3_5", groups, (QWEN_GRID // 2) ** 2, PREFIX + 4 * groups + QUESTION,
                      (groups, QWEN_GRID, QWEN_GRID))
    if shape in QWEN_SHAPES:
        groups = frames or QWEN_GROUPS
        return Layout("qwen2_5_vl", groups, (QWEN_GRID // 2) ** 2, PREFIX + 2 + QUESTION,
                      (groups, QWEN_GRID, QWEN_GRID))
    return Layout("llava_onevision", frames or FRAMES, PER_FRAME, PREFIX + 1 + QUESTION)


def lm_dims(shape: str, smoke: bool = False) -> tuple[int, int, int, int, int]:
    """(hidden, intermediate, layers, heads, kv heads) of the LM that runs."""
    return SMOKE_LM if smoke else {**SHAPES, **QWEN_SHAPES}[shape]


def random_qwen3_5(shape: str, device: str, dtype: torch.dtype, smoke: bool = False):
    """A Qwen3.5 (or -MoE) with its default (9B / 35B-A3B) LM and random weights; --smoke: 32 layers of width 64."""
    moe = HYBRID_SHAPES[shape] == "moe"
    text = {}
    if smoke:
        text = dict(hidden_size=64, num_hidden_layers=32, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16)
        text.update(dict(moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=8) if moe
                    else dict(intermediate_size=128))
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=1, patch_size=QWEN_PATCH,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=text.get("hidden_size", 2048 if moe
                                                                                         else 4096))
    config_class, model_class = ((Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration) if moe
                                 else (Qwen3_5Config, Qwen3_5ForConditionalGeneration))
    config = config_class(text_config=dict(rope_parameters={"rope_type": "default", "rope_theta": 1e7,
                                                            "partial_rotary_factor": 0.25, "mrope_interleaved": True,
                                                            "mrope_section": [11, 11, 10] if not smoke else [2, 1, 1]},
                                           **text),
                          vision_config=vision, image_token_id=QWEN_IMAGE, video_token_id=QWEN_VIDEO,
                          vision_start_token_id=QWEN_START, vision_end_token_id=QWEN_END, tie_word_embeddings=False)
    for part in (config, config.text_config, config.vision_config):
        part._attn_implementation = "sdpa"
    return _random_weights(model_class, config, device, dtype)


def _random_weights(model_class, config, device: str, dtype: torch.dtype):
    with torch.device("meta"):
        model = model_class(config)
    model = model.to_empty(device=device).to(dtype).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("A_log"):  # Gated DeltaNet's decay: log of a positive rate, as the models store it
                param.uniform_(0.0, 2.7)
            else:
                param.normal_(0.0, 0.02)
        for module in model.modules():  # to_empty left the rotary inverse frequencies uninitialised
            if "RotaryEmbedding" in type(module).__name__:
                model._init_weights(module)
    return model


def random_qwen2_5_vl(text: dict, device: str, dtype: torch.dtype) -> Qwen2_5_VLForConditionalGeneration:
    """A Qwen2.5-VL with an LM of the given `text` config fields and random weights (no download).

    M-RoPE as in Qwen2.5-VL-7B (rope_theta 1e6, sections [16, 24, 24] of the 64 rotary pairs, scaled to other head
    sizes in --smoke). The vision tower has the real patch geometry (14 px patches, 2 x 2 merge, 2-frame temporal
    patches) but is one tiny block: the benchmark hands in precomputed features and never runs it.
    """
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    pairs = head_dim // 2
    section = [pairs // 4, 3 * pairs // 8, pairs - pairs // 4 - 3 * pairs // 8]  # [16, 24, 24] at head_dim 128
    config = Qwen2_5_VLConfig(
        text_config=dict(max_position_embeddings=128000, rms_norm_eps=1e-6, vocab_size=VOCAB, **text,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=1, patch_size=QWEN_PATCH,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[0],
                           tokens_per_second=2, out_hidden_size=text["hidden_size"]),
        image_token_id=QWEN_IMAGE, video_token_id=QWEN_VIDEO, vision_start_token_id=QWEN_START,
        vision_end_token_id=QWEN_END, tie_word_embeddings=False,
    )
    for part in (config, config.text_config, config.vision_config):
        part._attn_implementation = "sdpa"
    return _random_weights(Qwen2_5_VLForConditionalGeneration, config, device, dtype)


def build(shape: str, device: str, smoke: bool = False, dtype: torch.dtype = torch.bfloat16):
    if shape in HYBRID_SHAPES:
        return random_qwen3_5(shape, device, dtype, smoke)
    hidden, intermediate, layers, heads, kv_heads = lm_dims(shape, smoke)
    text = dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads)
    if shape in QWEN_SHAPES:
        return random_qwen2_5_vl(text, device, dtype)
    return random_llava_ov(dict(text, vocab_size=VOCAB), device, dtype)


def inputs(model, device: str, video: Layout | None = None) -> dict:
    """One prompt: PREFIX text tokens, the video, QUESTION text tokens; video features precomputed."""
    video = video or layout("7b")
    hidden = model.config.text_config.hidden_size
    dtype = model.dtype
    if video.family == "llava_onevision":
        n_video = video.n_visual + 1  # + image_newline
        ids = torch.randint(2000, 100000, (1, PREFIX + n_video + QUESTION), device=device)
        ids[0, PREFIX : PREFIX + n_video] = VIDEO_TOKEN
        features = torch.randn(1, n_video, hidden, device=device, dtype=dtype) * 0.5
        return dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                    mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=features)})
    if video.family == "qwen3_5":
        return _hybrid_inputs(device, video, hidden, dtype)
    # Qwen: <|vision_start|>, T*N video tokens, <|vision_end|>, as the processor expands one video.
    n_video = video.n_visual
    ids = torch.randint(2000, 100000, (1, PREFIX + 1 + n_video + 1 + QUESTION), device=device)
    ids[0, PREFIX] = QWEN_START
    ids[0, PREFIX + 1 : PREFIX + 1 + n_video] = QWEN_VIDEO
    ids[0, PREFIX + 1 + n_video] = QWEN_END
    features = torch.randn(n_video, hidden, device=device, dtype=dtype) * 0.5  # [T*N, D] for the one video
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == QWEN_VIDEO).long() * 2,
                video_grid_thw=torch.tensor([video.grid], device=device),
                mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=(features,))})


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({platform.processor() or 'cpu'})"


def measure(model, batch: dict, config: adatp.AdaTPConfig | None, reps: int, warmup: int,
            cuda_graphs: bool = True) -> dict:
    """Median latency (ms; CUDA events on a GPU, wall clock on CPU) and peak memory above the weights (MiB, GPU only);
    selection ms with profile=True."""
    cuda = model.device.type == "cuda"

    def forward():
        with torch.inference_mode():
            return model(**batch, logits_to_keep=1, use_cache=False).logits

    def sync():
        if cuda:
            torch.cuda.synchronize()

    state = adatp.enable(model, config, cuda_graphs=cuda_graphs) if config is not None else None
    try:
        for _ in range(warmup):
            forward()
        sync()
        peak = None
        if cuda:
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            forward()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        samples = []
        for _ in range(reps):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                forward()
                end.record()
                torch.cuda.synchronize()
                samples.append(start.elapsed_time(end))
            else:
                began = time.perf_counter()
                forward()
                samples.append((time.perf_counter() - began) * 1000)
    finally:
        if state is not None:
            adatp.disable(model)
    selection = None
    if config is not None:
        state = adatp.enable(model, config, profile=True, cuda_graphs=cuda_graphs)
        try:
            for _ in range(reps):
                forward()
            sync()
            selection = state.selection_seconds * 1000 / reps
            kept = state.kept_indices
        finally:
            adatp.disable(model)
    return {"latency_ms": statistics.median(samples), "latency_ms_all": samples, "peak_mib": peak,
            "selection_ms": selection, "kept_indices": None if config is None else kept}


def _hybrid_inputs(device: str, video: Layout, hidden: int, dtype: torch.dtype) -> dict:
    """Qwen3.5 (Qwen3-VL's layout): per temporal group `<t seconds>` text, vision start, N tokens, vision end."""
    group = [torch.randint(2000, 100000, (2,)), torch.tensor([QWEN_START]), torch.full((video.per_frame,), QWEN_VIDEO),
             torch.tensor([QWEN_END])]
    body = [torch.randint(2000, 100000, (PREFIX,))] + [part for _ in range(video.frames) for part in group]
    ids = torch.cat([*body, torch.randint(2000, 100000, (QUESTION,))])[None].to(device)
    features = torch.randn(video.n_visual, hidden, device=device, dtype=dtype) * 0.5
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == QWEN_VIDEO).long() * 2,
                video_grid_thw=torch.tensor([video.grid], device=device),
                mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=(features,))})


def methods(shape: str) -> tuple:
    """METHODS, with in-LLM pruning at K = 4 on the hybrid shapes (layer 3 is their first full-attention layer)."""
    if shape not in HYBRID_SHAPES:
        return METHODS
    return tuple((label.replace("@2", f"@{HYBRID_LAYER}"), method, HYBRID_LAYER if layer else 0, score, graphs)
                 for label, method, layer, score, graphs in METHODS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted({**SHAPES, **QWEN_SHAPES, **HYBRID_SHAPES}), default="7b")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU check in seconds: 4 frames, a 28-layer LM of width 64, float32, 2 repetitions")
    parser.add_argument("--reps", type=int, default=None, help="timed prefills per setting (default 10; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed prefills first (default 3; smoke 1)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    reps = args.reps or (2 if args.smoke else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    device = "cpu" if args.smoke else "cuda"
    video = layout(args.shape, args.smoke)
    model = build(args.shape, device, args.smoke, torch.float32 if args.smoke else torch.bfloat16)
    batch = inputs(model, device, video)
    text_config = model.config.text_config
    n_visual, n_text = video.n_visual, video.n_text
    vanilla = measure(model, batch, None, reps, warmup)
    rows = [{"setting": "vanilla", "budget": 1.0, "retention": 1.0, "kept": n_visual, "flops_ratio": 1.0,
             **vanilla, "latency_ratio": 1.0}]
    for budget in BUDGETS:
        for label, method, prune_layer, score, graphs in methods(args.shape):
            retention = adatp.retention_for_budget(text_config, n_visual, n_text, budget, prune_layer)
            config = adatp.AdaTPConfig(method=method, prune_layer=prune_layer, score=score, retention=retention)
            result = measure(model, batch, config, reps, warmup, cuda_graphs=graphs)
            ratio = flops_ratio(text_config, n_visual, n_text, retention, prune_layer)
            kept = kept_count(n_visual, retention)
            if result["kept_indices"].shape != (1, kept):
                raise RuntimeError(f"{label} at budget {budget} kept {tuple(result['kept_indices'].shape)} tokens, "
                                   f"expected (1, {kept}): the model was not pruned as configured")
            rows.append({"setting": label, "budget": budget, "retention": retention, "kept": kept,
                         "flops_ratio": ratio, **result, "latency_ratio": result["latency_ms"] / vanilla["latency_ms"]})
    # The graph replays the eager selection: same kept tokens (same input, so this checks the capture).
    by_key = {(row["setting"], row["budget"]): row.pop("kept_indices") for row in rows}
    for row in rows:
        if row["setting"] in ("adatp@2", f"adatp@{HYBRID_LAYER}") and (
                f"{row['setting']} eager selection", row["budget"]) in by_key:
            row["graph_matches_eager"] = bool(torch.equal(by_key[(row["setting"], row["budget"])],
                                                          by_key[(f"{row['setting']} eager selection", row["budget"])]))
        uniform = next((r for r in rows if r["setting"] == f"uniform@{row['setting'].split('@')[-1][:1]}"
                        and r["budget"] == row["budget"]), None)
        row["over_uniform_ms"] = (row["latency_ms"] - uniform["latency_ms"]) if uniform and row is not uniform \
            else None
    text = model.config.text_config
    hidden, layers, heads = text.hidden_size, text.num_hidden_layers, text.num_attention_heads
    length = n_visual + n_text
    full_matrix_mib = heads * length * length * 2 / 2**20
    vanilla_tflop = 2 * prefill_flops(text_config, n_visual, n_text) / 1e12
    unit = "frames" if video.family == "llava_onevision" else "temporal groups"
    grid = f", video_grid_thw {list(video.grid)}" if video.grid else ""
    print(f"\nprefill at the {args.shape} shape{' (smoke)' if args.smoke else ''} ({layers} layers, hidden {hidden}), "
          f"{video.frames} {unit} x {video.per_frame} visual + {n_text} text tokens{grid}, "
          f"{str(model.dtype).removeprefix('torch.')} SDPA, {device_name(device)}, median of {reps}")
    print(f"vanilla: {vanilla['latency_ms']:.1f} ms, {vanilla_tflop:.1f} TFLOP -> "
          f"{vanilla_tflop / vanilla['latency_ms'] * 1000:.0f} TFLOP/s; a full attention matrix at one layer would "
          f"be {full_matrix_mib:.0f} MiB\n")
    print("| setting | budget | kept | FLOPs ratio | latency ms | latency ratio | ratio / FLOPs ratio | selection ms "
          "| selection share | ms over uniform | peak MiB above weights |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        selection = row["selection_ms"]
        share = selection / row["latency_ms"] if selection is not None else None
        row["selection_share"] = share
        row["ratio_over_flops"] = row["latency_ratio"] / row["flops_ratio"]
        selection_text = "-" if selection is None else f"{selection:.2f}"
        share_text = "-" if share is None else f"{share:.2%}"
        over = "-" if row.get("over_uniform_ms") is None else f"{row['over_uniform_ms']:+.1f}"
        peak = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        print(f"| {row['setting']} | {row['budget']:.2f} | {row['kept']} | {row['flops_ratio']:.3f} | "
              f"{row['latency_ms']:.1f} | {row['latency_ratio']:.3f} | {row['ratio_over_flops']:.2f} | "
              f"{selection_text} | {share_text} | {over} | {peak} |")
    matches = [row["graph_matches_eager"] for row in rows if "graph_matches_eager" in row]
    print(f"\nCUDA-graph selection keeps the eager selection's tokens: {all(matches)} ({len(matches)} budgets)")
    name = f"prefill_speed_{args.shape}{'_smoke' if args.smoke else ''}.json"
    default_dir = Path(tempfile.gettempdir()) if args.smoke else Path(__file__).parent / "results"
    out = Path(args.out or default_dir / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {"video_grid_thw": list(video.grid), "input_frames": video.frames * 2,
             "frame_px": QWEN_GRID * QWEN_PATCH} if video.grid else {}
    out.write_text(json.dumps({
        "benchmark": "prefill_speed", "shape": args.shape, "smoke": args.smoke, "family": video.family,
        "frames": video.frames, "tokens_per_frame": video.per_frame, **extra,
        "n_text": n_text, "reps": reps, "device": device_name(device),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "adatp": adatp.__version__, "python": platform.python_version(), "cuda": torch.version.cuda},
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "vanilla_tflop": vanilla_tflop, "full_attention_matrix_mib": full_matrix_mib, "rows": rows,
    }, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
