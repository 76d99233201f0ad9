"""Per-trial time split (decode, vision, selection, LM prefill) with a cold and a warm feature cache.

`--shape demo` (default): the synthetic set with the demo's tiny LLaVA-OneVision (or --model), CPU or GPU.
`--shape 7b` / `--shape 0.5b` (GPU): the Qwen2 LM of LLaVA-OneVision 7B / 0.5B with random weights built from config
in bf16 with SDPA (no download), 32 frames x 196 visual tokens, a tiny vision tower on 27x27 frames (its output is
cached after the cold trial, as in a study), the demo tokenizer; the engine runs it in memory.
`--shape qwen2.5-vl-7b` (GPU): Qwen2.5-VL-7B's LM likewise, 32 frames resized to 448 x 448 -> 16 temporal groups x
256 tokens, a one-block vision tower with the real patch geometry, a word-level tokenizer with Qwen's video tokens.
`--smoke` runs a GPU shape on the CPU at width 64 (it checks the script; the numbers mean nothing) into /tmp.

A warm trial should cost little more than its pure pruned prefill: the same batches pushed through the pruned model
with nothing else around them (inputs prepared beforehand). On GPU the model FLOP utilisation (MFU) of the pure
prefill is reported against the dense bf16 peak of the device. Prints a table and writes
bench/results/trial_cost.json (demo) or trial_cost_<shape>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer

import adatp
from adatp.flops import prefill_flops
from autotune.data import synthetic
from autotune.engine import Engine
from autotune.tinymodel import DEFAULT_DIR

# Dense bf16 tensor-core peaks (FLOP/s) from the vendor data sheets, by device-name substring.
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12}


QWEN_FRAME = (448, 448)  # 32 x 32 patches of 14 px, merged 2 x 2: 256 tokens per group, 16 groups (prefill_speed's)


def gpu_engine(shape: str, cache_dir: Path | None, device: str = "cuda", questions=(), smoke: bool = False) -> Engine:
    from prefill_speed import QWEN_SHAPES, lm_dims  # bench/ is on sys.path when run as a script
    from prune_overhead import random_llava_ov

    hidden, intermediate, layers, heads, kv_heads = lm_dims(shape, smoke)
    text = dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads)
    dtype = torch.float32 if smoke else torch.bfloat16
    if shape in QWEN_SHAPES:
        return qwen_engine(text, device, dtype, questions, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_DIR)
    video_token = tokenizer.convert_tokens_to_ids("<video>")
    model = random_llava_ov(dict(text, vocab_size=152064), device, dtype, video_token_id=video_token)
    return Engine.from_model(model, tokenizer, device=device, frames=32, cache_dir=cache_dir,
                             preprocess={"size": (27, 27)})


def qwen_engine(text: dict, device: str, dtype: torch.dtype, questions, cache_dir: Path | None) -> Engine:
    """Qwen2.5-VL's LM with random weights, a tiny vision tower with the real patch geometry (run once per video,
    then cached), frames resized to 448 x 448, and a word-level tokenizer with Qwen's video tokens."""
    from prefill_speed import random_qwen2_5_vl

    from autotune.engine import render_prompt
    from autotune.tinymodel import QWEN_CHAT_TEMPLATE, train_tokenizer

    tokenizer = train_tokenizer([render_prompt(None, q, template=QWEN_CHAT_TEMPLATE) for q in questions],
                                "qwen2_5_vl")
    model = random_qwen2_5_vl(text, device, dtype)
    for name, token in (("video_token_id", "<|video_pad|>"), ("image_token_id", "<|image_pad|>"),
                        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        setattr(model.config, name, tokenizer.convert_tokens_to_ids(token))  # the tokenizer's ids, not Qwen's
    return Engine.from_model(model, tokenizer, device=device, frames=32, cache_dir=cache_dir,
                             preprocess={"min_pixels": 4 * 28 * 28, "max_pixels": 448 * 448}, frame_size=QWEN_FRAME)


def prepared_batches(engine: Engine, questions, batch_size: int) -> list[dict]:
    batches = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        batches.append(engine.batch_inputs(chunk, [engine.video_features(q.video_path) for q in chunk]))
    return batches


def pure_prefill_seconds(engine: Engine, batches: list[dict], config, cuda_graphs: bool = False) -> float:
    """The (pruned) forward alone over the same batches, inputs prepared beforehand (features already cached),
    after one untimed batch (which captures the selection's CUDA graph where there is one)."""
    pruning = (adatp.pruning(engine.model, config, cuda_graphs=cuda_graphs) if config is not None
               else contextlib.nullcontext())
    with torch.no_grad(), pruning:
        engine.model(**batches[0], logits_to_keep=1, use_cache=False)
        engine.synchronize()
        start = time.perf_counter()
        for inputs in batches:
            engine.model(**inputs, logits_to_keep=1, use_cache=False)
        engine.synchronize()
        return time.perf_counter() - start


def batch_flops(engine: Engine, batches: list[dict], config) -> float:
    """Analytic prefill FLOPs (2 x MACs) of the batches, padding included (the GPU computes it too)."""
    total = 0.0
    text_config = engine.model.config.text_config
    for inputs in batches:
        rows, width = inputs["input_ids"].shape
        n_text = width - engine.n_visual
        if config is None:
            total += rows * 2 * prefill_flops(text_config, engine.n_visual, n_text)
        else:
            total += rows * 2 * prefill_flops(text_config, engine.n_visual, n_text, config.retention,
                                              config.prune_layer)
    return total


PREFIX_POINTS = (0.2, 0.3, 0.5)


def compare_prefix_cache(engine: Engine, questions, batches: list[dict], args, budgets: bool) -> list[dict]:
    """Warm trials with and without the prefix cache, over the pure pruned prefill, at budgets (or, where the LM is
    too shallow to reach them at prune_layer 2, retentions) 0.2 / 0.3 / 0.5; and the analytic FLOPs a cached
    trial still spends per question, as a fraction of the pruned prefill."""
    from adatp.flops import prefixed_flops

    text_config = engine.model.config.text_config
    n_text = max(len(engine.prompt_ids(q)) for q in questions) - engine.n_visual
    configs = [adatp.AdaTPConfig(prune_layer=2, retention=adatp.retention_for_budget(
        text_config, engine.n_visual, n_text, point, 2) if budgets else point) for point in PREFIX_POINTS]
    timings, pures = {}, {}
    # Every uncached trial first: a stored prefix drops the video's features, which uncached trials need.
    for cached in (False, True):
        engine.prefix_cache = cached
        for point, config in zip(PREFIX_POINTS, configs, strict=True):
            engine.evaluate(questions, config.replace(tau_s=0.45), args.batch_size)  # builds prefixes once
            timings[cached, point] = [engine.evaluate(questions, config.replace(tau_s=0.5 + 0.1 * repeat),
                                                      args.batch_size).seconds["total"]
                                      for repeat in range(args.repeats)]
            if not cached:
                pures[point] = statistics.median(pure_prefill_seconds(
                    engine, batches, config.replace(tau_s=0.5 + 0.1 * repeat)) for repeat in range(args.repeats))
    rows = []
    for point, config in zip(PREFIX_POINTS, configs, strict=True):
        retention, pure = config.retention, pures[point]
        shares = []
        for question in questions:
            split = engine.prefix_length(question)
            n_question = len(engine.prompt_ids(question)) - split
            n_prefix_text = split - engine.n_visual
            shares.append(prefixed_flops(text_config, engine.n_visual, n_prefix_text, n_question, retention, 2)
                          / prefill_flops(text_config, engine.n_visual, n_prefix_text + n_question, retention, 2))
        uncached, cached = statistics.median(timings[False, point]), statistics.median(timings[True, point])
        rows.append(dict(point=point, kind="budget" if budgets else "retention", retention=retention,
                         flops_ratio=adatp.flops_ratio(text_config, engine.n_visual, n_text, retention, 2),
                         pure_pruned_prefill_s=pure, warm_uncached_s=uncached, warm_cached_s=cached,
                         uncached_over_pure=uncached / pure, cached_over_pure=cached / pure,
                         analytic_cached_over_pruned=statistics.mean(shares),
                         warm_uncached_runs_s=timings[False, point], warm_cached_runs_s=timings[True, point]))
    engine.prefix_cache = False
    return rows


def print_prefix_rows(rows: list[dict]) -> None:
    print(f"{'kind':9} {'point':>5} {'FLOPs':>6} {'pure s':>8} {'warm s':>8} {'cached s':>8} {'warm/pure':>9} "
          f"{'cached/pure':>11} {'FLOPs cached/pruned':>19}")
    for row in rows:
        print(f"{row['kind']:9} {row['point']:>5.2f} {row['flops_ratio']:>6.3f} {row['pure_pruned_prefill_s']:>8.3f} "
              f"{row['warm_uncached_s']:>8.3f} {row['warm_cached_s']:>8.3f} {row['uncached_over_pure']:>9.2f} "
              f"{row['cached_over_pure']:>11.2f} {row['analytic_cached_over_pruned']:>19.3f}")


def estimate_7b_cpu(args) -> None:
    """`--shape 7b-cpu`: the cached and uncached trial at LLaVA-OV-7B's full width on the CPU, estimated at 28 layers.

    A 3-layer LM at the Qwen2-7B widths (random weights, float32, as bench/prune_overhead.py): the whole pruned
    prefill (2 full layers, scoring, selection, 1 pruned layer) and the whole cached trial (the question through 2
    layers against the cached prefix, scoring from cached keys, selection, 1 pruned layer) are timed, and one
    pruned layer alone; each estimate adds 25 more pruned layers. 32 x 196 visual tokens, 14 prefix and 50
    question tokens, prune_layer 2, one question per call.
    """
    from prune_overhead import FRAMES, PER_FRAME, PREFIX, QUESTION, QWEN2_7B, random_llava_ov, timed

    from adatp.flops import LMShape, prefixed_flops
    from adatp.models.base import VideoCall

    torch.manual_seed(0)
    model = random_llava_ov(dict(QWEN2_7B, num_hidden_layers=3, vocab_size=1024), "cpu", torch.float32)
    lm = model.model.language_model
    shape_28 = LMShape(layers=28, hidden=3584, intermediate=18944, kv_heads=4, head_dim=128, heads=28)
    n_visual = FRAMES * PER_FRAME
    prefix_length = PREFIX + n_visual + 1
    length = prefix_length + QUESTION
    embeds = torch.randn(1, length + 1, 3584) * 0.02  # + 1: the probe token encode_prefix appends
    video = torch.zeros(1, length + 1, dtype=torch.bool)
    video[:, PREFIX:prefix_length] = True
    call = VideoCall(video_mask=video[:, :length], grids=((FRAMES, PER_FRAME),), trailing=1)
    prefix_call = VideoCall(video_mask=video[:, : prefix_length + 1], grids=((FRAMES, PER_FRAME),), trailing=1)
    suffix = embeds[:, prefix_length:length]
    positions = torch.arange(prefix_length, length)[None]
    rows = []
    with torch.no_grad():
        for budget in PREFIX_POINTS:
            retention = adatp.retention_for_budget(shape_28, n_visual, length - n_visual, budget, 2)
            config = adatp.AdaTPConfig(retention=retention, prune_layer=2)
            with adatp.pruning(model, config) as state:
                def uncached(state=state):
                    state.pending = call
                    lm(inputs_embeds=embeds[:, :length], use_cache=False)

                state.capture_prefix, state.pending = True, prefix_call
                lm(inputs_embeds=embeds[:, : prefix_length + 1], use_cache=False)
                state.capture_prefix, prefix = False, state.captured

                def cached(state=state, prefix=prefix):
                    state.prefix = prefix
                    lm(inputs_embeds=suffix, position_ids=positions, use_cache=False)
                    state.prefix = None

                t_uncached = timed(uncached, max(1, args.repeats // 2), "cpu", warmup=False)
                t_cached = timed(cached, args.repeats, "cpu")
            kept = adatp.flops.kept_count(n_visual, retention)
            kept_input = embeds[:, : length - n_visual + kept]
            def pruned_layer(hidden=kept_input, layer=lm.layers[2]):
                at = torch.arange(hidden.shape[1])[None]
                layer(hidden, attention_mask=None, position_embeddings=lm.rotary_emb(hidden, at), position_ids=at)

            t_layer = timed(pruned_layer, args.repeats, "cpu")
            uncached_28, cached_28 = t_uncached + 25 * t_layer, t_cached + 25 * t_layer
            flops_share = (prefixed_flops(shape_28, n_visual, PREFIX + 1, QUESTION, retention, 2)
                           / adatp.prefill_flops(shape_28, n_visual, PREFIX + 1 + QUESTION, retention, 2))
            rows.append(dict(budget=budget, retention=retention, kept=kept, uncached_3_layers_s=t_uncached,
                             cached_3_layers_s=t_cached, pruned_layer_s=t_layer, uncached_28_layers_s=uncached_28,
                             cached_28_layers_s=cached_28, cached_over_pure_28=cached_28 / uncached_28,
                             analytic_cached_over_pruned=flops_share, prefix_bytes_float32=prefix.nbytes()))
    result = dict(benchmark="trial_cost", shape="7b-cpu", date=datetime.date.today().isoformat(), device="cpu",
                  cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                  torch=torch.__version__, transformers=transformers.__version__, repeats=args.repeats,
                  prefix_tokens=prefix_length, question_tokens=QUESTION, rows=rows)
    out = Path(args.out or Path(__file__).parent / "results" / "trial_cost_7b-cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("trial_cost (7b-cpu): LLaVA-OV-7B widths, 3 layers timed, 28 estimated; prune_layer 2")
    print(f"{'budget':>6} {'kept':>5} {'pure 28L s':>10} {'cached 28L s':>12} {'cached/pure':>11} {'FLOPs share':>11}")
    for row in rows:
        print(f"{row['budget']:>6.2f} {row['kept']:>5} {row['uncached_28_layers_s']:>10.1f} "
              f"{row['cached_28_layers_s']:>12.1f} {row['cached_over_pure_28']:>11.3f} "
              f"{row['analytic_cached_over_pruned']:>11.3f}")
    print(f"prefix entry: {rows[0]['prefix_bytes_float32'] / 1e6:.1f} MB in float32 "
          f"(about {rows[0]['prefix_bytes_float32'] / 2e6:.1f} MB in bfloat16)")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("demo", "7b", "0.5b", "qwen2.5-vl-7b", "7b-cpu"), default="demo")
    parser.add_argument("--smoke", action="store_true",
                        help="GPU shapes on the CPU at width 64 (checks the script, not the speed)")
    parser.add_argument("--model", default=str(DEFAULT_DIR), help="--shape demo only")
    parser.add_argument("--videos", type=int, default=None, help="default 40 (demo), 32 (GPU shapes)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.3, help="GPU shapes: FLOPs budget of the trial config")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", type=Path, default=None,
                        help="GPU shapes: a synthetic set made beforehand with the same --videos (seed 777, "
                             "32 frames), for machines without PyAV; made there if missing or different")
    parser.add_argument("--no-prefix", action="store_true", help="skip the prefix-cache comparison")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.shape == "7b-cpu":
        estimate_7b_cpu(args)
        return
    name = "trial_cost" if args.shape == "demo" else f"trial_cost_{args.shape}{'_smoke' if args.smoke else ''}"
    default_dir = Path(tempfile.gettempdir()) if args.smoke else Path(__file__).parent / "results"
    out = Path(args.out or default_dir / f"{name}.json")
    work = Path(tempfile.mkdtemp(prefix="trial-cost-"))
    if args.shape == "demo":
        videos = args.videos or 40
        data = work / "data"
        synthetic.generate(data, videos, seed=777)
        engine = Engine(args.model, device=args.device, cache_dir=work / "cache")
        config = adatp.AdaTPConfig(retention=0.3, prune_layer=2)
    else:
        if args.device != "cuda" and not args.smoke:
            raise SystemExit(f"--shape {args.shape} needs a CUDA device (or --smoke)")
        videos = args.videos or (4 if args.smoke else 32)
        data = args.data or work / "data"
        synthetic.generate(data, videos, seed=777, frames=32)  # a no-op where the same set is there already
        # features stay in (pinned) host memory
        engine = gpu_engine(args.shape, cache_dir=None, device=args.device,
                            questions=synthetic.load(data).questions, smoke=args.smoke)
        n_text = 80  # about the synthetic prompts' length
        retention = adatp.retention_for_budget(engine.model.config.text_config, engine.n_visual, n_text,
                                               args.budget, 2)
        config = adatp.AdaTPConfig(retention=retention, prune_layer=2)
    questions = synthetic.load(data).questions

    engine.prefix_cache = False  # the rows below: the full pruned prefill; the prefix cache is compared after them
    cold = engine.evaluate(questions, config, args.batch_size)
    batches = prepared_batches(engine, questions, args.batch_size)
    parts = ("decode", "vision", "selection", "prefill")
    rows = [dict(trial="cold", questions=len(questions), **{k: cold.seconds[k] for k in parts},
                 total=cold.seconds["total"])]
    # On CUDA the warm trials run twice: selection eager, and replayed from CUDA graphs (captured per trial config).
    variants = {"eager": False, "cuda_graphs": True} if engine.device.type == "cuda" else {"eager": False}
    measured = {}
    for label, graphs in variants.items():
        engine.cuda_graphs = graphs
        warm_runs, pure_runs = [], []
        for repeat in range(args.repeats):
            trial_config = config.replace(tau_s=0.5 + 0.1 * repeat)  # a new config each trial, as a study does
            warm_runs.append(engine.evaluate(questions, trial_config, args.batch_size))
            pure_runs.append(pure_prefill_seconds(engine, batches, trial_config, graphs))
        warm_total = statistics.median(r.seconds["total"] for r in warm_runs)
        split = {key: statistics.median(r.seconds[key] for r in warm_runs) for key in parts}
        rows.append(dict(trial=f"warm, {label}", questions=len(questions), **split, total=warm_total))
        pure = statistics.median(pure_runs)
        measured[label] = dict(warm_trial_s=warm_total, pure_pruned_prefill_s=pure, warm_over_pure=warm_total / pure,
                               warm_trials_s=[r.seconds["total"] for r in warm_runs], pure_prefills_s=pure_runs)
    engine.cuda_graphs = False
    prefix_rows = ([] if args.no_prefix else
                   compare_prefix_cache(engine, questions, batches, args, budgets=args.shape != "demo"))
    result = dict(
        benchmark="trial_cost", shape=args.shape, date=datetime.date.today().isoformat(), device=args.device,
        cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(), torch=torch.__version__,
        transformers=transformers.__version__, model=engine.model_path, videos=videos,
        batch_size=args.batch_size, repeats=args.repeats, config=config.to_dict(), rows=rows, variants=measured,
        pure_pruned_prefill_s=measured["eager"]["pure_pruned_prefill_s"],  # the engine's default; see variants
        warm_over_pure=measured["eager"]["warm_over_pure"],
        vision_calls=engine.vision_calls, flops_ratio=cold.flops_ratio, prefix_cache=prefix_rows,
    )
    mfu_text = ""
    if engine.device.type == "cuda":
        name_gpu = torch.cuda.get_device_name()
        peak = next((value for key, value in PEAK_BF16.items() if key in name_gpu), None)
        vanilla = statistics.median(pure_prefill_seconds(engine, batches, None) for _ in range(args.repeats))
        pure = min(m["pure_pruned_prefill_s"] for m in measured.values())
        pruned_flop, vanilla_flop = batch_flops(engine, batches, config), batch_flops(engine, batches, None)
        result.update(gpu=name_gpu, peak_bf16_flops=peak, pure_vanilla_prefill_s=vanilla,
                      pruned_tflops=pruned_flop / pure / 1e12, vanilla_tflops=vanilla_flop / vanilla / 1e12,
                      mfu_pruned=pruned_flop / pure / peak if peak else None,
                      mfu_vanilla=vanilla_flop / vanilla / peak if peak else None,
                      latency_ratio=pure / vanilla, padded_flops_ratio=pruned_flop / vanilla_flop)
        mfu_text = (f"\n{name_gpu}: pure pruned prefill {result['pruned_tflops']:.0f} TFLOP/s"
                    + (f" (MFU {result['mfu_pruned']:.1%})" if peak else "")
                    + f", vanilla {result['vanilla_tflops']:.0f} TFLOP/s"
                    + (f" (MFU {result['mfu_vanilla']:.1%})" if peak else "")
                    + f"; latency ratio {pure / vanilla:.3f} at FLOPs ratio {pruned_flop / vanilla_flop:.3f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"trial_cost ({args.shape}) on {args.device}: {len(questions)} questions, {videos} videos, "
          f"batch {args.batch_size}")
    print(f"{'trial':18} {'decode s':>9} {'vision s':>9} {'select s':>9} {'prefill s':>10} {'total s':>8}")
    for row in rows:
        print(f"{row['trial']:18} {row['decode']:>9.3f} {row['vision']:>9.3f} {row['selection']:>9.3f} "
              f"{row['prefill']:>10.3f} {row['total']:>8.3f}")
    for label, m in measured.items():
        print(f"{label}: pure pruned prefill {m['pure_pruned_prefill_s']:.3f} s; warm trial / pure prefill = "
              f"{m['warm_over_pure']:.2f}x")
    if prefix_rows:
        print_prefix_rows(prefix_rows)
    print(f"vision tower ran {engine.vision_calls} times for {videos} videos{mfu_text}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
