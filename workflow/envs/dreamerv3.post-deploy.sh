#!/usr/bin/env bash
# Runs once after Snakemake creates the conda env of dreamerv3.yaml (in that env): DreamerV3 at the pinned commit
# into $CONDA_PREFIX/src/dreamerv3, and its requirements. Must match integrations/dreamerv3/__init__.py
# (PINNED_COMMIT, PREFIX_SUBDIR) and containers/dreamerv3.def.
set -euo pipefail
repo=https://github.com/danijar/dreamerv3.git
commit=e3f02248693a79dc8b0ebd62c93683888ddaccfe
prefix=${CONDA_PREFIX:-$(python -c 'import sys; print(sys.prefix)')}
src="$prefix/src/dreamerv3"
rm -rf "$src"
git init -q "$src"
git -C "$src" remote add origin "$repo"
git -C "$src" fetch -q --depth 1 origin "$commit"
git -C "$src" checkout -q --detach FETCH_HEAD
test "$(git -C "$src" rev-parse HEAD)" = "$commit"
# The versions installed from dreamerv3.yaml constrain its open requirements (elements>=..., ...).
python -m pip freeze --exclude-editable > "$prefix/src/kalbench-constraints.txt"
python -m pip install --no-cache-dir -r "$src/requirements.txt" -c "$prefix/src/kalbench-constraints.txt"
