#!/usr/bin/env bash
# Set up (if needed) and run a study end to end, to figures and tables.
# Default: the small CPU study that shows learning (config/default.yaml) on all local cores; the pipeline check:
# bash scripts/study.sh config/smoke.yaml; the validation study: bash scripts/study.sh config/validation.yaml.
# Usage: bash scripts/study.sh [config/<study>.yaml] [extra snakemake arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
config=config/default.yaml
if (( $# )) && [[ "$1" == *.yaml ]]; then config=$1; shift; fi
exec .venv/bin/snakemake --configfile "$config" --cores "$(nproc)" --rerun-incomplete "$@"
