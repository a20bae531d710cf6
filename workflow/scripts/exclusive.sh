#!/usr/bin/env bash
# Usage: exclusive.sh DIR COMMAND [ARGS...]
# Run COMMAND holding an exclusive lock on DIR/.lock (DIR is created if missing), so that two processes never write
# the same run directory: if another process holds the lock (e.g. a run left going by an earlier, killed
# `snakemake`), fail at once and say so, instead of training the same run twice.
set -euo pipefail
dir=$1
shift
mkdir -p "$dir"
exec 8>>"$dir/.lock"
if ! flock --nonblock 8; then
    echo "exclusive.sh: another process is already writing $dir (it holds $dir/.lock:" \
         "$(fuser "$dir/.lock" 2>/dev/null || echo 'see lsof')); wait for it to end or stop it, then run again" >&2
    exit 75
fi
# The lock lives as long as file descriptor 8, which COMMAND inherits: until COMMAND (and its children) end.
exec "$@"
