#!/usr/bin/env bash
# Set up kalbench on a fresh Debian machine: system libraries (when run as root), then a virtual
# environment in .venv with the CPU build of PyTorch and the project with its test and benchmark extras.
# Idempotent: re-running it only installs what changed (keyed on pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${KALBENCH_VENV:-.venv}

# System libraries: OSMesa for headless MuJoCo rendering; slurm-wlm + munge for the local Slurm test cluster.
need_apt=()
ldconfig -p 2>/dev/null | grep -q libOSMesa || need_apt+=(libosmesa6)
if [[ "${KALBENCH_WITH_SLURM:-0}" == 1 ]]; then
    command -v slurmctld >/dev/null || need_apt+=(slurm-wlm munge)
fi
if (( ${#need_apt[@]} )); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "[setup] apt-get install ${need_apt[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "[setup] warning: missing system packages ${need_apt[*]} (install them with apt-get as root)" >&2
    fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
fi
stamp="$VENV/.kalbench-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "[setup] installing dependencies into $VENV"
    # The CPU wheel of torch first: a bare 'torch' requirement would pull a multi-GB CUDA build.
    "$VENV/bin/pip" install -q "torch==${KALBENCH_TORCH:-2.13.0}" numpy
    "$VENV/bin/pip" install -q -e ".[dev,bench]"
    echo "$want" > "$stamp"
fi
