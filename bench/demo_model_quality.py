"""Accuracy of the demo's tiny LLaVA-OneVision on held-out synthetic questions, unpruned and pruned.

Shows that accuracy depends on which tokens survive (what makes the demo's Pareto front real), and how often
the letter-logit scoring agrees with generate + answer extraction. Prints a table, writes
bench/results/demo_model_quality.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from pathlib import Path

import torch

import adatp
from autotune.data import synthetic
from autotune.engine import Engine
from autotune.tinymodel import DEFAULT_DIR

HELD_OUT_SEED = 20_000  # training used seeds 10_000 + seed; the demo uses its own


def settings(engine: Engine, question, budget: float) -> dict[str, adatp.AdaTPConfig | None]:
    """The compared settings. A budget becomes a retention for this prompt length; with the demo's 4 layers and
    ~80 text tokens only prune_layer 0 reaches 0.3 (prune_layer 1 bottoms out near 0.43), so the budgeted rows
    prune before the LM with pre-LLM scores, and one row shows attention scores (prune_layer 1) at 0.5."""
    n_text = len(engine.prompt_ids(question)) - engine.n_visual
    text_config = engine.model.config.text_config
    at_budget = adatp.retention_for_budget(text_config, engine.n_visual, n_text, budget, 0)
    late = 0.5  # attention scores at prune_layer 1: the smallest of 0.5, 0.6, ... the model can reach
    while late < 1.0 and adatp.flops.min_flops_ratio(text_config, engine.n_visual, n_text, 1) > late:
        late = round(late + 0.1, 1)
    at_late = adatp.retention_for_budget(text_config, engine.n_visual, n_text, late, 1)
    before_lm = dict(prune_layer=0, score="norm")
    return {
        "vanilla": None,
        "uniform r=0.10": adatp.AdaTPConfig(method="uniform", retention=0.10, **before_lm),
        "random r=0.10": adatp.AdaTPConfig(method="random", retention=0.10, **before_lm),
        f"uniform b={budget}": adatp.AdaTPConfig(method="uniform", retention=at_budget, **before_lm),
        f"random b={budget}": adatp.AdaTPConfig(method="random", retention=at_budget, **before_lm),
        f"fastv-norm b={budget}": adatp.AdaTPConfig(method="fastv", retention=at_budget, **before_lm),
        f"adatp-norm b={budget}": adatp.AdaTPConfig(retention=at_budget, **before_lm),
        f"adatp-textsim b={budget}": adatp.AdaTPConfig(retention=at_budget, prune_layer=0, score="text_sim"),
        f"fastv K=1 b={late}": adatp.AdaTPConfig(method="fastv", retention=at_late, prune_layer=1),
        f"adatp K=1 b={late}": adatp.AdaTPConfig(retention=at_late, prune_layer=1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_DIR))
    parser.add_argument("--videos", type=int, default=150)
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--frame-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="Qwen models: the frame size (the tiny Qwen demo model takes 32 32)")
    parser.add_argument("--out", default=None, help="default bench/results/demo_model_quality[_<model dir>].json")
    args = parser.parse_args()
    suffix = "" if Path(args.model) == DEFAULT_DIR else f"_{Path(args.model).name}"
    args.out = args.out or str(Path(__file__).parent / "results" / f"demo_model_quality{suffix}.json")
    work = Path(tempfile.mkdtemp(prefix="demo-quality-"))
    synthetic.generate(work / "data", args.videos, seed=HELD_OUT_SEED)
    questions = synthetic.load(work / "data").questions
    frame_size = tuple(args.frame_size) if args.frame_size else None
    engine = Engine(args.model, cache_dir=work / "cache", frame_size=frame_size)
    rows = []
    for name, config in settings(engine, questions[0], args.budget).items():
        result = engine.evaluate(questions, config, batch_size=16)
        rows.append(dict(setting=name, accuracy=result.accuracy, flops_ratio=result.flops_ratio,
                         kept_tokens=result.kept_tokens, n=len(result.correct)))
    logits = engine.evaluate(questions, None, batch_size=16)
    generated = engine.evaluate(questions, None, batch_size=16, mode="generate")
    agreement = sum(logits.predictions[q] == generated.predictions[q] for q in logits.predictions) / len(questions)
    result = dict(benchmark="demo_model_quality", date=datetime.date.today().isoformat(), model=args.model,
                  torch=torch.__version__, videos=args.videos, questions=len(questions), rows=rows,
                  logits_generate_agreement=agreement, generate_accuracy=generated.accuracy)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"demo model on {len(questions)} held-out synthetic questions ({args.videos} videos)")
    print(f"{'setting':22} {'accuracy':>8} {'flops':>6} {'kept':>5}")
    for row in rows:
        print(f"{row['setting']:22} {row['accuracy']:>8.3f} {row['flops_ratio']:>6.3f} {row['kept_tokens']:>5}")
    print(f"logits vs generate agreement {agreement:.3f} (generate accuracy {generated.accuracy:.3f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
