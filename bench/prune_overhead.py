"""Selection overhead vs the pruned LM prefill it precedes, at the LLaVA-OneVision-7B shape.

F=32 frames x N=196 tokens, D=3584 (Qwen2-7B widths) with random weights built from config (no download).
On CPU the LM has fewer layers (default 3, pruning at layer 2); per-layer times are also measured and used to
estimate the full 28-layer prefill (2 full layers + 26 pruned). On GPU pass --layers 28.

Prints a table and writes bench/results/prune_overhead.json. Run: `.venv/bin/python bench/prune_overhead.py`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

import adatp
from adatp.flops import flops_ratio, kept_count
from adatp.models.base import VideoCall
from adatp.scoring import attention_scores
from adatp.select import select_visual_tokens

FRAMES, PER_FRAME, PREFIX, QUESTION = 32, 196, 14, 50
VIDEO_TOKEN = 1000


# The Qwen2 LM widths of LLaVA-OneVision-7B.
QWEN2_7B = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4)


def random_llava_ov(text: dict, device: str, dtype: torch.dtype,
                    video_token_id: int = VIDEO_TOKEN) -> LlavaOnevisionForConditionalGeneration:
    """A LLaVA-OneVision with a Qwen2 LM of the given `text` config fields and random weights (no download).

    The vision tower is tiny but has LLaVA-OV's pooled grid (27x27 patches -> 14x14 = 196 tokens per frame); the
    prefill benchmarks hand in precomputed video features; trial_cost runs it on 27x27 frames.
    """
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=1, image_size=27, patch_size=1),
        text_config=dict(model_type="qwen2", max_position_embeddings=32768, tie_word_embeddings=False, **text),
        video_token_id=video_token_id, image_token_id=video_token_id + 1, vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    config._attn_implementation = config.text_config._attn_implementation = "sdpa"
    config.vision_config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = LlavaOnevisionForConditionalGeneration(config)
    model = model.to_empty(device=device).to(dtype).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02)
        for name, buffer in model.named_buffers():
            if name.endswith("inv_freq") or name.endswith("original_inv_freq"):
                dim = buffer.shape[0] * 2
                buffer.copy_(1.0 / (1e6 ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim)))
            elif name.endswith("position_ids"):  # the vision embeddings' patch positions
                buffer.copy_(torch.arange(buffer.shape[-1], device=device).expand_as(buffer))
    return model


def build(layers: int, device: str, dtype: torch.dtype) -> LlavaOnevisionForConditionalGeneration:
    return random_llava_ov(dict(QWEN2_7B, num_hidden_layers=layers, vocab_size=1024), device, dtype)


def timed(fn, repeats: int, device: str, warmup: bool = True) -> float:
    """Median seconds of `repeats` calls, after one warm-up call unless `warmup` is False."""
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    if warmup:
        fn()
        sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--prune-layer", type=int, default=2)
    parser.add_argument("--retention", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per layer / selection measurement")
    parser.add_argument("--model-repeats", type=int, default=1,
                        help="timed calls of the whole LM (minutes each on CPU; layers and selection warm it up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 on CPU, bfloat16 on GPU by default")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "prune_overhead.json"))
    args = parser.parse_args()
    device = args.device
    default_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    dtype = getattr(torch, args.dtype) if args.dtype else default_dtype
    torch.manual_seed(0)
    model = build(args.layers, device, dtype)
    lm = model.model.language_model
    n_visual = FRAMES * PER_FRAME
    length = PREFIX + n_visual + 1 + QUESTION
    embeds = torch.randn(1, length, 3584, device=device, dtype=dtype) * 0.02
    video_mask = torch.zeros(1, length, dtype=torch.bool, device=device)
    video_mask[:, PREFIX : PREFIX + n_visual + 1] = True
    kept = kept_count(n_visual, args.retention)
    n_text = length - n_visual

    rows = []
    with torch.no_grad():
        whole = dict(repeats=args.model_repeats, device=device, warmup=device.startswith("cuda"))
        vanilla = timed(lambda: lm(inputs_embeds=embeds, use_cache=False), **whole)
        # Per-layer times at the full and the kept length, for the full-depth estimate.
        full_layer_input = embeds
        kept_layer_input = embeds[:, : length - n_visual + kept]
        layer = lm.layers[0]

        def run_layer(hidden):
            positions = torch.arange(hidden.shape[1], device=device)[None]
            return layer(hidden, attention_mask=None, position_embeddings=lm.rotary_emb(hidden, positions),
                         position_ids=positions)

        t_full_layer = timed(lambda: run_layer(full_layer_input), args.repeats, device)
        t_kept_layer = timed(lambda: run_layer(kept_layer_input), args.repeats, device)

        positions = torch.arange(length, device=device)[None]
        embeddings = lm.rotary_emb(embeds, positions)
        query_rows = torch.zeros(1, length, dtype=torch.bool, device=device)
        query_rows[:, PREFIX + n_visual + 1 :] = True
        key_mask = torch.ones(1, length, dtype=torch.bool, device=device)
        visual = embeds[:, PREFIX : PREFIX + n_visual].view(1, FRAMES, PER_FRAME, -1)
        frame_features = visual.float().mean(2)
        question = embeds[:, PREFIX + n_visual + 1 :].float().mean(1)

        for method in ("adatp", "fastv", "uniform"):
            config = adatp.AdaTPConfig(method=method, retention=args.retention, prune_layer=args.prune_layer)
            state = adatp.enable(model, config)

            def pruned(state=state):
                # as the hook sets it
                state.pending = VideoCall(video_mask=video_mask, grids=((FRAMES, PER_FRAME),), trailing=1)
                return lm(inputs_embeds=embeds, use_cache=False)

            t_pruned = timed(pruned, **whole)
            t_scores = 0.0
            scores = None
            if config.uses_scores:
                t_scores = timed(
                    lambda: attention_scores(lm.layers[args.prune_layer - 1], embeds, embeddings, query_rows, key_mask),
                    args.repeats, device,
                )
                scores = torch.rand(1, FRAMES, PER_FRAME, device=device)
            t_select = timed(
                lambda config=config, scores=scores: select_visual_tokens(
                    config, FRAMES, PER_FRAME, scores=scores, frame_features=frame_features, question=question,
                    device=device),
                max(args.repeats, 10), device,
            )
            adatp.disable(model)
            overhead = t_scores + t_select
            estimate_28 = 2 * t_full_layer + 26 * t_kept_layer
            rows.append(dict(
                method=method, layers=args.layers, prune_layer=args.prune_layer, retention=args.retention,
                kept=kept, flops_ratio=flops_ratio(model.config.text_config, n_visual, n_text, args.retention,
                                                   args.prune_layer),
                vanilla_s=vanilla, pruned_s=t_pruned, scoring_s=t_scores, select_s=t_select,
                overhead_share_measured=overhead / t_pruned,
                layer_full_s=t_full_layer, layer_kept_s=t_kept_layer,
                pruned_28_layers_estimate_s=estimate_28, overhead_share_28_layers=overhead / estimate_28,
            ))

    result = dict(
        benchmark="prune_overhead", date=datetime.date.today().isoformat(), device=device,
        cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
        gpu=torch.cuda.get_device_name() if device.startswith("cuda") else None, dtype=str(dtype),
        torch=torch.__version__, transformers=transformers.__version__, shape=dict(
            frames=FRAMES, tokens_per_frame=PER_FRAME, hidden=3584, text_tokens=n_text, sequence=length),
        repeats=args.repeats, model_repeats=args.model_repeats, rows=rows,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    header = (f"{'method':8} {'L':>3} {'K':>2} {'flops':>6} {'vanilla s':>10} {'pruned s':>9} {'score ms':>9} "
              f"{'select ms':>10} {'share':>7} {'share@28L':>10}")
    print(f"prune_overhead on {device} ({dtype}), {length} tokens, {n_visual} visual, keep {kept}")
    print(header)
    for row in rows:
        print(f"{row['method']:8} {row['layers']:>3} {row['prune_layer']:>2} {row['flops_ratio']:>6.3f} "
              f"{row['vanilla_s']:>10.2f} {row['pruned_s']:>9.2f} {1e3 * row['scoring_s']:>9.1f} "
              f"{1e3 * row['select_s']:>10.1f} {100 * row['overhead_share_measured']:>6.2f}% "
              f"{100 * row['overhead_share_28_layers']:>9.2f}%")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
