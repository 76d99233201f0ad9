#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one go (about 6 minutes on an H100):
#   tests/test_graphs.py, prefill_speed (7b, 0.5b), trial_cost (7b, 0.5b), prefill_profile (7b at budget 0.2).
# Results land in bench/results/ (or in $OUT when set, e.g. on a lent machine) and each step's log next to them.
# Wheels in $WHEELS (default .whl/: e.g. transformers 5.23, decord, av, pytest) are installed first into a
# private target directory, for machines whose Python lacks them; nothing else is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
results=${OUT:-bench/results}
wheels=${WHEELS:-.whl}
python=${PYTHON:-python3}
mkdir -p "$results"
if compgen -G "$wheels/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/adatp-site "$wheels"/*.whl
    export PYTHONPATH=/tmp/adatp-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:$PWD/bench:${PYTHONPATH:-}
"$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
torch.cuda.get_device_name())" || exit 1

status=0
step() {  # step NAME TIMEOUT COMMAND...: run, keep the log, print its tail, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" >"$results/$name.log" 2>&1 || { echo "!! $name failed ($?)"; status=1; }
    tail -n 30 "$results/$name.log"
}
step test_graphs 180 "$python" -m pytest -q -p no:cacheprovider tests/test_graphs.py
step prefill_speed_7b 300 "$python" bench/prefill_speed.py --shape 7b --out "$results/prefill_speed_7b.json"
step prefill_speed_0.5b 180 "$python" bench/prefill_speed.py --shape 0.5b --out "$results/prefill_speed_0.5b.json"
if ! "$python" -c "import av, decord" 2>/dev/null; then
    echo "!! trial_cost needs PyAV and decord (synthetic videos): put their wheels in $wheels"; status=1
fi
step trial_cost_7b 300 "$python" bench/trial_cost.py --shape 7b --repeats 3 --out "$results/trial_cost_7b.json"
step trial_cost_0.5b 180 "$python" bench/trial_cost.py --shape 0.5b --repeats 3 --out "$results/trial_cost_0.5b.json"
step prefill_profile_7b 180 "$python" bench/prefill_profile.py --shape 7b --budget 0.2 \
    --out "$results/prefill_profile_7b.json"
exit $status
