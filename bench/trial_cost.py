"""Per-trial time split (decode, vision, selection, LM prefill) with a cold and a warm feature cache.

On the synthetic set with the demo's tiny LLaVA-OneVision (or --model). A warm trial should cost little more than
its pure pruned prefill: the same batches pushed through the pruned model with nothing else around them.
Prints a table and writes bench/results/trial_cost.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

import adatp
from autotune.data import synthetic
from autotune.engine import Engine
from autotune.tinymodel import DEFAULT_DIR


def pure_prefill_seconds(engine: Engine, questions, config, batch_size: int) -> float:
    """The pruned forward alone over the same batches, inputs prepared beforehand (features already cached)."""
    batches = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        batches.append(engine._batch_inputs(chunk, [engine.video_features(q.video_path) for q in chunk]))
    with torch.no_grad(), adatp.pruning(engine.model, config):
        start = time.perf_counter()
        for inputs in batches:
            engine.model(**inputs, logits_to_keep=1, use_cache=False)
        engine._sync()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_DIR))
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "trial_cost.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trial-cost-"))
    synthetic.generate(work / "data", args.videos, seed=777)
    questions = synthetic.load(work / "data").questions
    engine = Engine(args.model, device=args.device, cache_dir=work / "cache")
    config = adatp.AdaTPConfig(retention=0.3, prune_layer=2)

    cold = engine.evaluate(questions, config, args.batch_size)
    warm_runs, pure_runs = [], []
    for repeat in range(args.repeats):
        trial_config = config.replace(tau_s=0.5 + 0.1 * repeat)  # a new config each trial, as a study does
        warm_runs.append(engine.evaluate(questions, trial_config, args.batch_size))
        pure_runs.append(pure_prefill_seconds(engine, questions, trial_config, args.batch_size))
    warm_total = statistics.median(r.seconds["total"] for r in warm_runs)
    pure = statistics.median(pure_runs)
    parts = ("decode", "vision", "selection", "prefill")
    split = {key: statistics.median(r.seconds[key] for r in warm_runs) for key in parts}
    rows = [
        dict(trial="cold", questions=len(questions), **{k: cold.seconds[k] for k in parts},
             total=cold.seconds["total"]),
        dict(trial="warm (median)", questions=len(questions), **split, total=warm_total),
    ]
    result = dict(
        benchmark="trial_cost", date=datetime.date.today().isoformat(), device=args.device,
        cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(), torch=torch.__version__,
        transformers=transformers.__version__, model=args.model, videos=args.videos, batch_size=args.batch_size,
        repeats=args.repeats, config=config.to_dict(), rows=rows, pure_pruned_prefill_s=pure,
        warm_over_pure=warm_total / pure, vision_calls=engine.vision_calls,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"trial_cost on {args.device}: {len(questions)} questions, {args.videos} videos, batch {args.batch_size}")
    print(f"{'trial':14} {'decode s':>9} {'vision s':>9} {'select s':>9} {'prefill s':>10} {'total s':>8}")
    for row in rows:
        print(f"{row['trial']:14} {row['decode']:>9.3f} {row['vision']:>9.3f} {row['selection']:>9.3f} "
              f"{row['prefill']:>10.3f} {row['total']:>8.3f}")
    print(f"pure pruned prefill {pure:.3f} s; warm trial / pure prefill = {warm_total / pure:.2f}x "
          f"(vision tower ran {engine.vision_calls} times for {args.videos} videos)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
