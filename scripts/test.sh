#!/usr/bin/env bash
# Set up (if needed) and run the test suite: everything except the tests marked slow.
# Pass pytest arguments to narrow it, e.g. `bash scripts/test.sh tests/test_kalman.py`;
# the slow group runs with `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
KALBENCH_WITH_SLURM=1 bash scripts/setup.sh
if (( $# )); then
    exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -m "not slow"
