"""Prefill latency and peak memory: vanilla vs AdaTP, FastV and uniform at FLOPs budgets 0.2 / 0.3 / 0.5 (GPU).

A LLaVA-OneVision with the Qwen2 LM of the 7B (or 0.5B) model and random weights, built from config in bf16 with
SDPA (no download); 32 frames x 196 visual tokens handed in as precomputed video features (the vision tower's
output is cached across trials, so it is not part of a trial's prefill). For each setting: median latency of the
prefill (one forward with logits for the last position, as the evaluation engine does), its ratio to vanilla next
to the analytic FLOPs ratio, the scoring + selection time (`profile=True`, synchronised) as a share of the pruned
prefill, and the peak memory above the weights. The attention scores at the prune layer are computed for the T
question rows only; a full attention matrix would add heads x L x L x 2 bytes at that layer, which the peak-memory
column shows is absent (compare `adatp@2` with `uniform@2`, which computes no scores).

Run: `python bench/prefill_speed.py --shape 7b` (and `--shape 0.5b`); writes bench/results/prefill_speed_<shape>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
from pathlib import Path

import torch
import transformers
from prune_overhead import VIDEO_TOKEN, random_llava_ov
from transformers import LlavaOnevisionForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

import adatp
from adatp.flops import flops_ratio, kept_count, prefill_flops

FRAMES, PER_FRAME, PREFIX, QUESTION = 32, 196, 14, 64
# Qwen2 LM shapes of LLaVA-OneVision 7B and 0.5B (hidden, intermediate, layers, heads, kv heads).
SHAPES = {"7b": (3584, 18944, 28, 28, 4), "0.5b": (896, 4864, 24, 14, 2)}
BUDGETS = (0.2, 0.3, 0.5)
# (label, method, prune_layer, score, selection replayed from a CUDA graph)
METHODS = (("adatp@0", "adatp", 0, "norm", True), ("adatp@2", "adatp", 2, "attention", True),
           ("adatp@2 eager selection", "adatp", 2, "attention", False), ("fastv@2", "fastv", 2, "attention", True),
           ("uniform@0", "uniform", 0, "norm", True), ("uniform@2", "uniform", 2, "attention", True))


def build(shape: str, device: str) -> LlavaOnevisionForConditionalGeneration:
    hidden, intermediate, layers, heads, kv_heads = SHAPES[shape]
    text = dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=152064)
    return random_llava_ov(text, device, torch.bfloat16)


def inputs(model, device: str) -> dict:
    n_video = FRAMES * PER_FRAME + 1  # + image_newline
    ids = torch.randint(2000, 100000, (1, PREFIX + n_video + QUESTION), device=device)
    ids[0, PREFIX : PREFIX + n_video] = VIDEO_TOKEN
    hidden = model.config.text_config.hidden_size
    video = torch.randn(1, n_video, hidden, device=device, dtype=torch.bfloat16) * 0.5
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=video)})


def measure(model, batch: dict, config: adatp.AdaTPConfig | None, reps: int, warmup: int,
            cuda_graphs: bool = True) -> dict:
    """Median latency (ms, CUDA events) and peak memory above the weights (MiB); selection ms with profile=True."""

    def forward():
        with torch.inference_mode():
            return model(**batch, logits_to_keep=1, use_cache=False).logits

    state = adatp.enable(model, config, cuda_graphs=cuda_graphs) if config is not None else None
    try:
        for _ in range(warmup):
            forward()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        forward()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        samples = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end))
    finally:
        if state is not None:
            adatp.disable(model)
    selection = None
    if config is not None:
        state = adatp.enable(model, config, profile=True, cuda_graphs=cuda_graphs)
        try:
            for _ in range(reps):
                forward()
            torch.cuda.synchronize()
            selection = state.selection_seconds * 1000 / reps
            kept = state.kept_indices
        finally:
            adatp.disable(model)
    return {"latency_ms": statistics.median(samples), "latency_ms_all": samples, "peak_mib": peak,
            "selection_ms": selection, "kept_indices": None if config is None else kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = "cuda"
    model = build(args.shape, device)
    batch = inputs(model, device)
    text_config = model.config.text_config
    n_visual = FRAMES * PER_FRAME
    n_text = PREFIX + 1 + QUESTION  # the image_newline counts as text
    vanilla = measure(model, batch, None, args.reps, args.warmup)
    rows = [{"setting": "vanilla", "budget": 1.0, "retention": 1.0, "kept": n_visual, "flops_ratio": 1.0,
             **vanilla, "latency_ratio": 1.0}]
    for budget in BUDGETS:
        for label, method, prune_layer, score, graphs in METHODS:
            retention = adatp.retention_for_budget(text_config, n_visual, n_text, budget, prune_layer)
            config = adatp.AdaTPConfig(method=method, prune_layer=prune_layer, score=score, retention=retention)
            result = measure(model, batch, config, args.reps, args.warmup, cuda_graphs=graphs)
            ratio = flops_ratio(text_config, n_visual, n_text, retention, prune_layer)
            rows.append({"setting": label, "budget": budget, "retention": retention,
                         "kept": kept_count(n_visual, retention), "flops_ratio": ratio, **result,
                         "latency_ratio": result["latency_ms"] / vanilla["latency_ms"]})
    # The graph replays the eager selection: same kept tokens (same input, so this checks the capture).
    by_key = {(row["setting"], row["budget"]): row.pop("kept_indices") for row in rows}
    for row in rows:
        if row["setting"] == "adatp@2":
            row["graph_matches_eager"] = bool(torch.equal(by_key[("adatp@2", row["budget"])],
                                                          by_key[("adatp@2 eager selection", row["budget"])]))
        uniform = next((r for r in rows if r["setting"] == f"uniform@{row['setting'].split('@')[-1][:1]}"
                        and r["budget"] == row["budget"]), None)
        row["over_uniform_ms"] = (row["latency_ms"] - uniform["latency_ms"]) if uniform and row is not uniform \
            else None
    hidden, _, layers, heads, _ = SHAPES[args.shape]
    length = n_visual + n_text
    full_matrix_mib = heads * length * length * 2 / 2**20
    vanilla_tflop = 2 * prefill_flops(text_config, n_visual, n_text) / 1e12
    print(f"\nprefill at the {args.shape} shape ({layers} layers, hidden {hidden}), {FRAMES}x{PER_FRAME} visual + "
          f"{n_text} text tokens, bf16 SDPA, {torch.cuda.get_device_name()}, median of {args.reps}")
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
        print(f"| {row['setting']} | {row['budget']:.2f} | {row['kept']} | {row['flops_ratio']:.3f} | "
              f"{row['latency_ms']:.1f} | {row['latency_ratio']:.3f} | {row['ratio_over_flops']:.2f} | "
              f"{selection_text} | {share_text} | {over} | {row['peak_mib']:.0f} |")
    matches = [row["graph_matches_eager"] for row in rows if "graph_matches_eager" in row]
    print(f"\nCUDA-graph selection keeps the eager selection's tokens: {all(matches)} ({len(matches)} budgets)")
    out = Path(args.out or Path(__file__).parent / "results" / f"prefill_speed_{args.shape}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "prefill_speed", "shape": args.shape, "frames": FRAMES, "tokens_per_frame": PER_FRAME,
        "n_text": n_text, "reps": args.reps, "device": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "adatp": adatp.__version__, "python": platform.python_version(), "cuda": torch.version.cuda},
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "vanilla_tflop": vanilla_tflop, "full_attention_matrix_mib": full_matrix_mib, "rows": rows,
    }, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
