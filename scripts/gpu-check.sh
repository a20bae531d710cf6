#!/usr/bin/env bash
# GPU check (issue 12): on a machine with one CUDA GPU, run in <= 8 minutes everything the CPU cannot check, each
# step under its own time limit (and all of them under one budget), with logs and JSON in one folder:
#   environment    the machine (benchmarks.machine.describe, nvidia-smi) and whether mamba_ssm is importable
#   cuda_tests     pytest on the tests that skip without CUDA (Kalman on CUDA == CPU, auto = parallel on CUDA)
#   mamba_ssm      mamba_ssm's kernels against our torch path (tests/test_mamba.py), where mamba_ssm is importable
#   kalman_bench   benchmarks.kalman_scan on CUDA: plain loop, sequential, fused, parallel, auto; T = 32..1024
#   update_bench   benchmarks.update_step at the paper's sizes (Fig. 6): batch 32, contexts 32..512
#   train_pixels   a ~2-minute KalMamba run from pixels (cartpole-swingup) with EGL rendering
# then writes summary.json and prints a summary table (goal: KalMamba update time ctx 256 / ctx 32 <= 2x).
# Without a CUDA GPU (or with --cpu-only) it says so, runs the CPU-side pieces (the CLIs' --help, which imports
# them; the Kalman benchmark at tiny sizes on the CPU), reports every skipped step, and exits 0.
#
#   bash scripts/gpu-check.sh                      # -> results/gpu-check/<UTC timestamp>/
#   bash scripts/gpu-check.sh /tmp/gpu-check       # into that folder
#   bash scripts/gpu-check.sh --cpu-only DIR       # what a machine without a GPU does
# Exit status: 0 when no step failed or timed out, 1 otherwise, 2 for a bad command line.
# GPU_CHECK_BUDGET_S (default 450 s: 8 minutes less the grace before a kill) is the budget of all steps together,
# GPU_CHECK_TIMEOUT_SCALE (default 1) a factor on each step's own limit (for a slow or loaded machine), PYTHON the
# interpreter (default .venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

cpu_only=0
out=""
for arg in "$@"; do
    case "$arg" in
        --cpu-only) cpu_only=1 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu-check: unknown option '$arg' (see --help)" >&2; exit 2 ;;
        *) if [[ -n $out ]]; then echo "gpu-check: one output folder, got '$out' and '$arg'" >&2; exit 2; fi
           out=$arg ;;
    esac
done
out=${out:-results/gpu-check/$(date -u +%Y%m%dT%H%M%SZ)}
budget_s=${GPU_CHECK_BUDGET_S:-450}
scale=${GPU_CHECK_TIMEOUT_SCALE:-1}
for var in budget_s scale; do
    if ! [[ ${!var} =~ ^[0-9]+$ ]] || (( ${!var} < 1 )); then
        echo "gpu-check: GPU_CHECK_BUDGET_S and GPU_CHECK_TIMEOUT_SCALE must be positive integers," \
             "got '$budget_s' and '$scale'" >&2
        exit 2
    fi
done
mkdir -p "$out" || { echo "gpu-check: cannot create the output folder '$out'" >&2; exit 2; }
steps="$out/steps.tsv"
: > "$steps"
start=$SECONDS

record() {  # NAME STATUS RC SECONDS NOTE -> one line of steps.tsv
    printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$steps"
}

skip() {  # NAME WHY
    record "$1" skipped "" 0 "$2"
    echo "== $1: skipped ($2)"
}

step() {  # NAME LIMIT_S CMD...: CMD with its output in $out/NAME.log, under min(LIMIT_S, what is left of the budget)
    local name=$1 limit=$(( $2 * scale ))
    shift 2
    local left=$(( budget_s - (SECONDS - start) ))
    (( limit > left )) && limit=$left
    if (( limit < 5 )); then
        skip "$name" "no time left in the ${budget_s} s budget"
        return
    fi
    local cmd="$*"
    echo "== $name (limit ${limit} s): ${cmd:0:150}"
    local t0=$SECONDS rc status=ok
    timeout --kill-after=10 "$limit" "$@" < /dev/null > "$out/$name.log" 2>&1
    rc=$?
    if (( rc == 124 || rc == 137 )); then status=timeout; elif (( rc != 0 )); then status=failed; fi
    record "$name" "$status" "$rc" $(( SECONDS - t0 )) "$name.log"
    tail -n 3 "$out/$name.log" | sed 's/^/   | /'
}

if (( cpu_only )); then
    gpu=0
    why="--cpu-only"
elif "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2> /dev/null; then
    gpu=1
else
    gpu=0
    why="no CUDA GPU visible to torch"
fi
if (( gpu )); then
    echo "gpu-check: CUDA GPU found; writing to $out (budget ${budget_s} s)"
else
    echo "gpu-check: $why: running the CPU-side pieces only, the GPU steps are skipped; writing to $out"
fi

step environment 60 "$PY" -c "
import json, shutil, subprocess, sys
from pathlib import Path
from rl.io import atomic_write_text
from benchmarks.machine import describe
from models.mamba import load_mamba_ssm
d = describe()
kernels, why = load_mamba_ssm()
d['mamba_ssm'] = 'importable' if kernels is not None else f'not importable: {why}'
smi = shutil.which('nvidia-smi')
d['nvidia_smi'] = subprocess.run([smi], capture_output=True, text=True).stdout if smi else None
atomic_write_text(Path(sys.argv[1]) / 'environment.json', json.dumps(d, indent=1))
print(json.dumps({k: d[k] for k in ('hostname', 'cpu', 'torch', 'cuda', 'gpu', 'mamba_ssm')}))" "$out"

if (( gpu )); then
    step cuda_tests 60 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_kalman.py -k "cuda or gpu" \
        --junitxml "$out/cuda_tests.xml"
    if "$PY" -c "import sys; from models.mamba import load_mamba_ssm; sys.exit(load_mamba_ssm()[0] is None)" \
            2> /dev/null; then
        step mamba_ssm 60 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_mamba.py -k "mamba_ssm or cuda" \
            --junitxml "$out/mamba_ssm.xml"
    else
        skip mamba_ssm "mamba_ssm is not importable here (see environment.json)"
    fi
    step kalman_bench 90 "$PY" -m benchmarks.kalman_scan --device cuda --no-dynamax --repeats 3 \
        --context-lengths 32 64 128 256 512 1024 --methods plain_loop sequential fused parallel auto \
        --out "$out/kalman_scan.json"
    step update_bench 150 "$PY" -m benchmarks.update_step --device cuda --batch-size 32 \
        --context-lengths 32 64 128 256 512 --repeats 5 --warmup 1 --out "$out/update_step.json"
    # the run's own wall-clock budget leaves ~50 s of its step for start-up, the final evaluation and checkpoint
    left=$(( budget_s - (SECONDS - start) ))
    train_s=$(( (left < 170 ? left : 170) - 50 ))
    if (( train_s < 20 )); then
        skip train_pixels "no time left in the ${budget_s} s budget"
    else
        train_hours=$("$PY" -c "print(${train_s} / 3600)")
        step train_pixels 170 env MUJOCO_GL=egl PYOPENGL_PLATFORM=egl "$PY" -m rl.train --method kalmamba \
            --task cartpole-swingup --obs pixels --device cuda --out "$out/train_pixels" \
            --wall-clock-hours "$train_hours" --env-steps 1000000 --initial-episodes 2 --eval-every 10000 \
            --eval-episodes 1 --checkpoint-every 1000000 --log-every 1000
    fi
else
    step cli_help 60 "$PY" -c "
import runpy, sys
for module in ('benchmarks.update_step', 'benchmarks.kalman_scan', 'rl.train'):
    sys.argv = [module, '--help']
    try:
        runpy.run_module(module, run_name='__main__')
    except SystemExit as e:
        if e.code not in (0, None):
            sys.exit(f'{module} --help: exit status {e.code}')
    print(f'{module} --help: ok')"
    step kalman_bench_cpu 60 "$PY" -m benchmarks.kalman_scan --quick --threads 1 \
        --methods plain_loop sequential fused parallel auto --out "$out/kalman_scan_cpu_quick.json"
    for name in cuda_tests mamba_ssm kalman_bench update_bench train_pixels; do
        skip "$name" "$why"
    done
fi

"$PY" scripts/gpu_check_summary.py "$out" --gpu "$gpu"
