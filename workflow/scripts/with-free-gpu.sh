#!/usr/bin/env bash
# Usage: with-free-gpu.sh N COMMAND [ARGS...]
# Run COMMAND on a GPU of this machine that no other job started through this script holds, so that runs that
# each hold one unit of Snakemake's `gpu` resource (workflow/profiles/local) never share a GPU.
# It runs COMMAND as it is when N is 0 (a CPU job), or when a scheduler has already chosen the job's GPUs
# (Slurm sets CUDA_VISIBLE_DEVICES), or when this machine has no nvidia-smi.
set -euo pipefail
n=$1
shift
if [[ "$n" == 0 || -n "${CUDA_VISIBLE_DEVICES:-}" ]] || ! command -v nvidia-smi >/dev/null; then
    exec "$@"
fi
if [[ "$n" != 1 ]]; then
    echo "with-free-gpu.sh: a job holds one GPU or none (got $n)" >&2
    exit 2
fi
count=$(nvidia-smi -L | grep -c '^GPU ')
lockdir=${KALBENCH_GPU_LOCKS:-/tmp/kalbench-gpu-locks}
mkdir -p "$lockdir"
# Snakemake starts at most as many GPU jobs as its `gpu` resource allows, so a GPU frees up soon if none is free.
while true; do
    for ((i = 0; i < count; i++)); do
        exec 9>"$lockdir/gpu$i.lock"
        # The lock lives as long as file descriptor 9, which COMMAND inherits: until COMMAND ends.
        if flock --nonblock 9; then
            export CUDA_VISIBLE_DEVICES=$i
            exec "$@"
        fi
        exec 9>&-
    done
    sleep 5
done
