"""Open question 4 of the AdaTP paper on the demo: is AdaTP's gain semantic (text-relevant segments get the budget),
or would any segment-wise reallocation do as well?

On the synthetic demo set with the shipped tiny LLaVA-OneVision (studies/demo.yaml), at each demo budget:
- `adatp`, tuned: the demo's study (30 TPE trials with successive halving), selected on the tune split;
- `adatp_random_segments`, tuned the same way: the same spec, sampler, seeds and trial count, with segment relevance
  replaced by a random draw (the ablation the paper never ran);
- `default`: AdaTP with the default thresholds (the tuner's warm start), at the same retention, untuned;
- `uniform`, `random` and `fastv` (the spec's scores and prune layer) at the same retention, untuned.
Every arm is evaluated once on the held-out test split; accuracy with a 95% bootstrap CI, and the paired difference
(with its 95% paired-bootstrap CI) of tuned AdaTP against each other arm on the same test questions.

The two tuned arms run through the service itself (`autotune study` + `autotune export` logic, in-process) into a
temporary workdir. Prints a table and writes bench/results/ablation.json.
`--spec` runs the same comparison on another study spec (a real dataset and model: GPU hours); `--tuned adatp` drops
the random-relevance arm (the quality table of a demo: tuned vs default vs FastV vs uniform).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from autotune.export import export_presets
from autotune.spec import load_spec
from autotune.stats import accuracy_summary, paired_difference
from autotune.study import Workspace, create_studies, quiet_optuna, run_studies
from autotune.versions import package_versions

ROOT = Path(__file__).resolve().parents[1]
TUNED = ("adatp", "adatp_random_segments")
UNTUNED = ("default", "uniform", "random", "fastv")


def tuned_arm(spec_path: str, method: str, work: Path, data: Path | None,
              overrides: list[str]) -> tuple[Workspace, dict]:
    """Run the spec's study with `base.method=method` and export it: budget -> Exported (preset with test results)."""
    placed = [f"dataset.root={data}"] if data is not None else []  # the demo's generated set: once, for both arms
    spec = load_spec(spec_path, [
        f"name=ablation-{method.replace('_', '-')}", f"workdir={work / method}", f"presets_dir={work / method}/presets",
        f"cache_dir={work / 'cache'}", f"base.method={method}", *placed, *overrides])
    workspace = Workspace.open(spec)
    studies = create_studies(workspace)
    run_studies(workspace, studies, progress=False, echo=lambda line: None)
    exported = export_presets(workspace, progress=False, echo=lambda line: None)
    return workspace, {item.budget: item for item in exported}


def _shown(path: str) -> str:
    """A spec path relative to the repository when inside it (results files stay portable)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "studies" / "demo.yaml"),
                        help="study spec (default: the demo); a real one measures the question on real data")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ablation.json"))
    parser.add_argument("--override", action="append", default=[], help="key=value for the spec (both arms)")
    parser.add_argument("--tuned", nargs="+", choices=TUNED, default=list(TUNED), help="the arms tuned by a study")
    args = parser.parse_args()
    quiet_optuna()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="adatp-ablation-") as tmp:
        work = Path(tmp)
        demo = Path(args.spec).resolve() == (ROOT / "studies" / "demo.yaml").resolve()
        arms = {method: tuned_arm(args.spec, method, work, work / "data" if demo else None, args.override)
                for method in args.tuned}
        workspace = arms["adatp"][0]
        engine, test = workspace.engine, workspace.test
        vanilla = workspace.vanilla(test)
        qids = [q.qid for q in test]
        rows = []
        for budget in workspace.spec.budgets:
            outcomes: dict[str, list[bool]] = {}
            configs = {}
            for method in args.tuned:
                item = arms[method][1][budget]
                configs[method] = item.preset.config
                result = engine.evaluate(test, item.preset.config, batch_size=workspace.spec.batch_size)
                outcomes[method] = [result.correct[qid] for qid in qids]
                assert abs(sum(outcomes[method]) / len(qids) - item.preset.results["test_accuracy"]["value"]) < 1e-3
            retention = configs["adatp"].retention
            for method in UNTUNED:  # default: the spec's base config (the thresholds every study enqueues first)
                configs[method] = workspace.spec.base.replace(method="adatp" if method == "default" else method,
                                                              retention=retention)
                result = engine.evaluate(test, configs[method], batch_size=workspace.spec.batch_size)
                outcomes[method] = [result.correct[qid] for qid in qids]
            outcomes["vanilla"] = [vanilla[qid] == q.answer for qid, q in zip(qids, test, strict=True)]
            for method, correct in outcomes.items():
                summary = accuracy_summary(correct)
                row = {"budget": budget, "method": method, "tuned": method in TUNED,
                       "test_accuracy": summary["value"], "ci95": summary["ci95"], "n": summary["n"],
                       "retention": 1.0 if method == "vanilla" else configs[method].retention}
                if method != "vanilla":
                    row.update(score=configs[method].score, prune_layer=configs[method].prune_layer)
                if method in TUNED:
                    row["trial"] = arms[method][1][budget].preset.provenance["trial"]
                    row["tune_accuracy"] = arms[method][1][budget].preset.results["tune_accuracy"]["value"]
                    row["thresholds"] = {name: round(getattr(configs[method], name), 4)
                                         for name in workspace.spec.space}
                if method != "adatp":
                    paired = paired_difference(outcomes["adatp"], correct)
                    row["adatp_minus_this"] = paired["value"]
                    row["adatp_minus_this_ci95"] = paired["ci95"]
                    row["wins_losses"] = [paired["wins"], paired["losses"]]
                rows.append(row)
        seconds = time.perf_counter() - started
    result = dict(benchmark="ablation", date=datetime.date.today().isoformat(), device="cpu",
                  threads=torch.get_num_threads(), machine=platform.machine(), seconds=round(seconds, 1),
                  spec=_shown(args.spec), overrides=args.override, test_questions=len(qids),
                  versions=package_versions(), rows=rows)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"ablation on {_shown(args.spec)}: {len(qids)} test questions, {seconds:.0f} s")
    print(f"{'budget':>6} {'method':<22} {'test acc':>8} {'95% CI':>16} {'adatp - this [95% CI]':>26}")
    for row in rows:
        diff = (f"{row['adatp_minus_this']:+.3f} [{row['adatp_minus_this_ci95'][0]:+.3f}, "
                f"{row['adatp_minus_this_ci95'][1]:+.3f}]" if "adatp_minus_this" in row else "-")
        print(f"{row['budget']:>6.2f} {row['method']:<22} {row['test_accuracy']:>8.3f} "
              f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] {diff:>26}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
