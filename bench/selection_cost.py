"""Host cost of the token selection alone: operators dispatched and time per call, per method and batch size.

On a GPU the eager selection is launch-bound (little arithmetic spread over many small kernels), so the number of
operators it dispatches predicts its GPU time better than any CPU timing; this benchmark counts them on any device.
Inputs are the 7B grid: 32 frames x 196 tokens, retention 0.2, random scores and frame features. On CUDA it also
times the selection replayed from a CUDA graph (`adatp.graphs`) and checks that it keeps the same tokens. Prints a
table and writes bench/results/selection_cost.json (selection_cost_cuda.json on CUDA).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import adatp
from adatp.graphs import GRAPHED_METHODS, SelectionGraphs
from adatp.select import select_visual_tokens

FRAMES, PER_FRAME, FEATURE_DIM = 32, 196, 3584
# Operators that only make views: no kernel on any device.
VIEWS = {"view", "_unsafe_view", "expand", "slice", "select", "unsqueeze", "squeeze", "t", "transpose", "permute",
         "alias", "detach", "as_strided", "reshape"}


class _Dispatched(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(call, device: torch.device, reps: int) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        call()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(method: str, batch: int, device: torch.device, reps: int) -> dict:
    generator = torch.Generator().manual_seed(batch)
    scores = torch.rand(batch, FRAMES, PER_FRAME, generator=generator).to(device)
    # Frames drift slowly, with a few cuts, so that the video has several segments of several frames.
    steps = torch.randn(batch, FRAMES, FEATURE_DIM, generator=generator)
    steps[:, ::7] *= 8
    features = steps.cumsum(1).to(device)
    question = torch.randn(batch, FEATURE_DIM, generator=generator).to(device)
    config = adatp.AdaTPConfig(retention=0.2, method=method, tau_s=0.9)

    def select(**inputs):
        return select_visual_tokens(config, FRAMES, PER_FRAME, batch=batch, device=device, **inputs)

    inputs = {"scores": scores, "frame_features": features, "question": question}
    with _Dispatched() as dispatched:
        eager = select(**inputs)
    kernels = sum(count for name, count in dispatched.ops.items() if name not in VIEWS)
    row = dict(method=method, batch=batch, kept=eager.shape[1], dispatched_ops=sum(dispatched.ops.values()),
               non_view_ops=kernels, eager_ms=_median_ms(lambda: select(**inputs), device, reps),
               ops=dict(dispatched.ops.most_common()))
    if device.type == "cuda" and method in GRAPHED_METHODS:
        graphs = SelectionGraphs()
        graphed = graphs.run((config,), select, inputs)
        row.update(graph_ms=_median_ms(lambda: graphs.run((config,), select, inputs), device, reps),
                   graph_matches_eager=bool(torch.equal(graphed, eager)))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = "selection_cost_cuda" if device.type == "cuda" else "selection_cost"
    out = Path(args.out or Path(__file__).parent / "results" / f"{name}.json")
    rows = [measure(method, batch, device, args.reps) for method in ("adatp", "fastv", "uniform") for batch in (1, 8)]
    result = dict(
        benchmark="selection_cost", date=datetime.date.today().isoformat(), device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(), threads=torch.get_num_threads(), torch=torch.__version__, adatp=adatp.__version__,
        frames=FRAMES, tokens_per_frame=PER_FRAME, retention=0.2, reps=args.reps, rows=rows,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"selection_cost on {result['device_name']} ({device.type}, {torch.get_num_threads()} threads): "
          f"{FRAMES} x {PER_FRAME} tokens, retention 0.2, median of {args.reps}")
    graphs = device.type == "cuda"
    print(f"{'method':8} {'batch':>5} {'ops':>5} {'non-view':>8} {'eager ms':>9}"
          + (f" {'graph ms':>9} {'same':>5}" if graphs else ""))
    for row in rows:
        line = (f"{row['method']:8} {row['batch']:>5} {row['dispatched_ops']:>5} {row['non_view_ops']:>8} "
                f"{row['eager_ms']:>9.3f}")
        if graphs:
            line += (f" {row['graph_ms']:>9.3f} {str(row['graph_matches_eager']):>5}" if "graph_ms" in row
                     else f" {'-':>9} {'-':>5}")
        print(line)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
