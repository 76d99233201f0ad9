#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one go (about 11 minutes on an H100, measured 2026-11-27):
#   tests/adatp/test_graphs.py, selection_cost, prefill_speed (LLaVA-OV 7b and 0.5b; Qwen2.5-VL-7B's LM at 16 x 256 video
#   tokens), prefill_profile (7b at budget 0.2), trial_cost (7b and qwen2.5-vl-7b with the prefix cache compared at
#   budgets 0.2 / 0.3 / 0.5; 0.5b without).
# Measured on an H100 (wall time of each call, wheel install included): test_graphs + selection_cost 61 s;
#   prefill_speed_7b + prefill_speed_0.5b 90 s; prefill_speed_qwen2.5-vl-7b + the three trial_cost steps 476 s.
# Qwen3.5, measured on an H200 on 2026-12-04: prefill_speed_qwen3.5-9b (the 9B's hybrid LM, 32 layers, in-LLM pruning
#   at K = 4) and prefill_speed_qwen3.5-35b-a3b (the MoE, 40 layers, ~70 GB of bf16 random weights: fits an H200, not an
#   80 GB H100 with activations; the step fails alone there). With test_graphs first, the three took 209 s of one call
#   (wheels installed). Their linear layers run flash-linear-attention's kernels when its wheels (fla-core and
#   flash-linear-attention 0.6.0, pure Python, ~1.5 MB) are in $WHEELS, and transformers' torch causal_conv1d unless
#   causal-conv1d is installed (the log says which).
# Two calls of under 10 minutes: STEPS="test_graphs selection_cost prefill_speed_7b prefill_speed_0.5b
#   prefill_speed_qwen2.5-vl-7b prefill_profile_7b trial_cost_0.5b prefill_speed_qwen3.5-9b" (about 6 minutes), then
#   STEPS="trial_cost_7b trial_cost_qwen2.5-vl-7b prefill_speed_qwen3.5-35b-a3b" (about 8 minutes).
# Results land in bench/results/ (or in $OUT when set, e.g. on a lent machine), each step's log under logs/ there
# (packed into logs.tgz under $OUT).
# Wheels in $WHEELS (default .whl/: e.g. transformers 5.23, decord, av, pytest) are installed first into a
# private target directory, for machines whose Python lacks them; nothing else is installed. For a Python 3.12 x86-64
# machine without them, from a machine with pip access:
#   pip download --no-deps -d .whl transformers==5.23.0 fla-core==0.6.0 flash-linear-attention==0.6.0
#   pip download --no-deps -d .whl --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2010_x86_64 --platform manylinux_2_17_x86_64 decord==0.6.0
# (transformers + decord are ~27 MB; PyAV's wheel is 36 MB more.) Without PyAV there,
# make trial_cost's videos beforehand: python -c "from autotune.data import synthetic; \
#   synthetic.generate('.gpu-data', 32, seed=777, frames=32)"
# STEPS (default all) picks steps by name, e.g. STEPS="test_graphs prefill_speed_7b", to fit a 10-minute limit.
set -uo pipefail
cd "$(dirname "$0")/.."
results=${OUT:-bench/results}
wheels=${WHEELS:-.whl}
data=${DATA:-.gpu-data}  # trial_cost's synthetic set (32 videos x 32 frames, seed 777): made here if missing
python=${PYTHON:-python3}
logs=$results/logs
mkdir -p "$logs"
if compgen -G "$wheels/*.whl" >/dev/null; then
    "$python" -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/adatp-site "$wheels"/*.whl
    export PYTHONPATH=/tmp/adatp-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:$PWD/bench:${PYTHONPATH:-}
"$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
torch.cuda.get_device_name())" || exit 1

status=0
steps=${STEPS:-all}
step() {  # step NAME TIMEOUT COMMAND...: run, keep the log, print its tail, remember a failure
    local name=$1 limit=$2
    shift 2
    [[ $steps == all || " $steps " == *" $name "* ]] || return 0
    echo "== $name"
    timeout "$limit" "$@" >"$logs/$name.log" 2>&1 || { echo "!! $name failed ($?)"; status=1; }
    tail -n 30 "$logs/$name.log"
}
step test_graphs 180 "$python" -m pytest -q -p no:cacheprovider tests/adatp/test_graphs.py
step selection_cost 120 "$python" bench/selection_cost.py --out "$results/selection_cost_cuda.json"
step prefill_speed_7b 300 "$python" bench/prefill_speed.py --shape 7b --out "$results/prefill_speed_7b.json"
step prefill_speed_0.5b 180 "$python" bench/prefill_speed.py --shape 0.5b --out "$results/prefill_speed_0.5b.json"
step prefill_speed_qwen2.5-vl-7b 240 "$python" bench/prefill_speed.py --shape qwen2.5-vl-7b \
    --out "$results/prefill_speed_qwen2.5-vl-7b.json"
step prefill_speed_qwen3.5-9b 240 "$python" bench/prefill_speed.py --shape qwen3.5-9b \
    --out "$results/prefill_speed_qwen3.5-9b.json"
step prefill_speed_qwen3.5-35b-a3b 300 "$python" bench/prefill_speed.py --shape qwen3.5-35b-a3b --reps 10 \
    --out "$results/prefill_speed_qwen3.5-35b-a3b.json"
if [[ $steps == all || $steps == *trial_cost* ]] && { ! "$python" -c "import decord" 2>/dev/null \
        || { ! "$python" -c "import av" 2>/dev/null && [ ! -f "$data/meta.json" ]; }; }; then
    echo "!! trial_cost needs decord, and PyAV or a synthetic set made beforehand in $data"; status=1
fi
step prefill_profile_7b 120 "$python" bench/prefill_profile.py --shape 7b --budget 0.2 \
    --out "$results/prefill_profile_7b.json"
step trial_cost_7b 250 "$python" bench/trial_cost.py --shape 7b --repeats 3 --data "$data" \
    --out "$results/trial_cost_7b.json"
step trial_cost_0.5b 90 "$python" bench/trial_cost.py --shape 0.5b --repeats 3 --no-prefix --data "$data" \
    --out "$results/trial_cost_0.5b.json"
step trial_cost_qwen2.5-vl-7b 250 "$python" bench/trial_cost.py --shape qwen2.5-vl-7b --repeats 3 --data "$data" \
    --out "$results/trial_cost_qwen2.5-vl-7b.json"
echo "== tables (bench/tables.py: paste into docs/performance.md; tests/autotune/test_readme_numbers.py checks they are there)"
"$python" bench/tables.py --results "$results"
if [[ -n ${OUT:-} ]]; then  # a lent machine sends back few files: the logs travel as one archive
    tar -czf "$results/logs.tgz" -C "$results" logs && rm -r "$logs"
fi
exit $status
