"""Where a pruned prefill's time goes (GPU): torch.profiler over AdaTP / FastV / uniform forwards at one budget.

Explains the gaps in bench/prefill_speed.py: the device-to-host synchronisations inside scoring and selection
(each one stalls the CPU until the GPU drains, so the layers after the prune point are launched from an idle GPU),
and the kernels the selection adds. Prints a table per setting and writes bench/results/prefill_profile_<shape>.json.

Run: `python bench/prefill_profile.py --shape 7b --budget 0.2`.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
import transformers
from prefill_speed import FRAMES, PER_FRAME, PREFIX, QUESTION, SHAPES, build, inputs

import adatp

SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize",
            "cudaDeviceSynchronize", "cudaMemcpyAsync")


def profile(model, batch, config, reps: int, cuda_graphs: bool = False) -> dict:
    def forward():
        with torch.inference_mode():
            model(**batch, logits_to_keep=1, use_cache=False)

    state = adatp.enable(model, config, cuda_graphs=cuda_graphs) if config is not None else None
    try:
        for _ in range(3):
            forward()
        torch.cuda.synchronize()
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(reps):
                forward()
            torch.cuda.synchronize()
    finally:
        if state is not None:
            adatp.disable(model)
    events = prof.key_averages()
    rows = []
    for event in events:
        device_us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        rows.append({"name": event.key, "calls": event.count // reps, "cpu_ms": event.cpu_time_total / 1000 / reps,
                     "device_ms": device_us / 1000 / reps})
    syncs = {name: next((r["calls"] for r in rows if r["name"] == name), 0) for name in SYNC_OPS}
    kernels = [r for r in rows if r["device_ms"] > 0 and not r["name"].startswith(("aten::", "cuda"))]
    kernels.sort(key=lambda r: -r["device_ms"])
    cpu_ops = sorted((r for r in rows if r["name"].startswith("aten::")), key=lambda r: -r["cpu_ms"])
    return {"syncs_per_forward": syncs, "top_kernels": kernels[:12], "top_cpu_ops": cpu_ops[:12],
            "device_ms_total": sum(r["device_ms"] for r in kernels),
            "kernel_launches": sum(r["calls"] for r in kernels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b", help="LLaVA-OV LM shapes (its token layout)")
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = build(args.shape, "cuda")
    batch = inputs(model, "cuda")
    text_config = model.config.text_config
    n_visual, n_text = FRAMES * PER_FRAME, PREFIX + 1 + QUESTION
    settings = {"vanilla": (None, False)}
    for label, method, layer, score in (("adatp@2", "adatp", 2, "attention"), ("fastv@2", "fastv", 2, "attention"),
                                        ("uniform@2", "uniform", 2, "attention"), ("adatp@0", "adatp", 0, "norm")):
        retention = adatp.retention_for_budget(text_config, n_visual, n_text, args.budget, layer)
        settings[label] = (adatp.AdaTPConfig(method=method, prune_layer=layer, score=score, retention=retention),
                           False)
    settings["adatp@2 graphed selection"] = (settings["adatp@2"][0], True)
    results = {}
    for label, (config, graphs) in settings.items():
        results[label] = result = profile(model, batch, config, args.reps, cuda_graphs=graphs)
        print(f"\n## {label}: {result['kernel_launches']} kernel launches, {result['device_ms_total']:.1f} ms of "
              f"kernels per forward; syncs per forward: "
              + ", ".join(f"{k} {v}" for k, v in result["syncs_per_forward"].items() if v))
        print("| kernel | calls | device ms |")
        print("|---|---:|---:|")
        for row in result["top_kernels"][:8]:
            print(f"| {row['name'][:70]} | {row['calls']} | {row['device_ms']:.2f} |")
    out = Path(args.out or Path(__file__).parent / "results" / f"prefill_profile_{args.shape}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "prefill_profile", "shape": args.shape, "budget": args.budget, "reps": args.reps,
        "device": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "results": results,
    }, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
