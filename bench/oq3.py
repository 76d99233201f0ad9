"""Open question 3 on a hybrid model: at matched FLOPs, does pruning inside the LM (after a full-attention layer, K > 0)
beat pruning before it (K = 0), and does AdaTP's debiased selection beat FastV's there?

Held-out synthetic questions (seed 20000, never trained on) through the engine; each budget becomes a retention per
prune layer (`adatp.retention_for_budget`), so every row of one budget spends the same analytic FLOPs. A prune layer
whose floor (all visual tokens gone) is above a budget has no row there. Default thresholds (no tuning): this asks
which *place* and *selection rule* hold up, not what a study finds. Prints a table, writes
bench/results/oq3_<model dir>.json.

    python bench/oq3.py --model assets/tiny-qwen3.5-synthetic --frame-size 32 32 --layers 0 4 8 \
        --budgets 0.75 0.85 0.95
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from pathlib import Path

import torch

import adatp
from adatp.flops import min_flops_ratio
from autotune.data import synthetic
from autotune.engine import Engine

HELD_OUT_SEED = 20_000  # as bench/demo_model_quality.py: training used 10_000 + seed, the demos 30_000
METHODS = ("adatp", "fastv", "uniform")


def configs(engine: Engine, question, layers: list[int], budgets: list[float]) -> list[tuple[dict, adatp.AdaTPConfig]]:
    """(row keys, config) for every reachable (budget, prune layer, method)."""
    n_text = len(engine.prompt_ids(question)) - engine.n_visual
    text_config = engine.model.config.text_config
    rows = []
    for budget in budgets:
        for layer in layers:
            if min_flops_ratio(text_config, engine.n_visual, n_text, layer) > budget:
                continue
            retention = adatp.retention_for_budget(text_config, engine.n_visual, n_text, budget, layer)
            score = "attention" if layer > 0 else "norm"
            for method in METHODS:
                config = adatp.AdaTPConfig(method=method, retention=retention, prune_layer=layer, score=score)
                rows.append((dict(budget=budget, prune_layer=layer, method=method, score=score), config))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--frame-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 4, 8])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.75, 0.85, 0.95])
    parser.add_argument("--videos", type=int, default=150)
    parser.add_argument("--out", default=None, help="default bench/results/oq3_<model dir>.json")
    args = parser.parse_args()
    out = Path(args.out or Path(__file__).parent / "results" / f"oq3_{Path(args.model).name}.json")
    work = Path(tempfile.mkdtemp(prefix="oq3-"))
    synthetic.generate(work / "data", args.videos, seed=HELD_OUT_SEED)
    questions = synthetic.load(work / "data").questions
    frame_size = tuple(args.frame_size) if args.frame_size else None
    engine = Engine(args.model, cache_dir=work / "cache", frame_size=frame_size)
    vanilla = engine.evaluate(questions, None, batch_size=16)
    n_text = len(engine.prompt_ids(questions[0])) - engine.n_visual
    floors = {layer: min_flops_ratio(engine.model.config.text_config, engine.n_visual, n_text, layer)
              for layer in args.layers}
    rows = []
    for keys, config in configs(engine, questions[0], args.layers, args.budgets):
        result = engine.evaluate(questions, config, batch_size=16)
        rows.append(dict(**keys, retention=config.retention, accuracy=result.accuracy,
                         flops_ratio=result.flops_ratio, kept_tokens=result.kept_tokens))
    report = dict(benchmark="oq3", date=datetime.date.today().isoformat(), model=args.model, torch=torch.__version__,
                  videos=args.videos, questions=len(questions), n_visual=engine.n_visual, n_text=n_text,
                  vanilla_accuracy=vanilla.accuracy, floors=floors, rows=rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{engine.family} on {len(questions)} held-out questions; vanilla {vanilla.accuracy:.3f}; "
          f"FLOPs floors {', '.join(f'K={k}: {v:.3f}' for k, v in floors.items())}")
    print(f"{'budget':>6} {'K':>2} {'method':8} {'accuracy':>8} {'flops':>6} {'kept':>5}")
    for row in rows:
        print(f"{row['budget']:>6.2f} {row['prune_layer']:>2} {row['method']:8} {row['accuracy']:>8.3f} "
              f"{row['flops_ratio']:>6.3f} {row['kept_tokens']:>5}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
