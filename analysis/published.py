"""Published reference scores (DreamerV3's `scores/*.json.gz`) as rows of the tidy scores table.

The score files of github.com/danijar/dreamerv3 (directory `scores/` at the pinned commit
e3f02248693a79dc8b0ebd62c93683888ddaccfe; `PINNED_URL` names one) are named `<suite>-<method>.json.gz` and hold a
gzipped JSON list of runs `{"task": "dmc_walker_walk", "method": "dreamerv3", "seed": 0, "xs": [env steps],
"ys": [returns]}`. What a point is differs between files: `dmc_vision-dreamerv3` lists every training episode
(its xs step by 2 within a batch of parallel environments), `dmc_proprio-dreamerv3` and the baselines' files
one value per 10k / 20k env steps. `bin_every` = b averages the points into bins as DreamerV3's own `plot.py`
does (the mean of the points of a bin, reported at its right end k*b), with the bins closed on the right,
((k-1)*b, k*b], so that a value logged at exactly k*b counts at k*b (plot.py's np.histogram bins are closed on
the left). Binned, "the return at env step k*b" means about the same for every file; unbinned, the last point
of a dmc_vision-dreamerv3 run is a single training episode.

Rows (docs/architecture.md, "Tidy scores table"): source "published", method from the file (`dreamerv3`),
obs from the suite (`dmc_vision` -> `pixels`; `dmc_proprio` -> `state`: DMC's flattened state vector without
noise, kalbench's `state` observation type, so they are overlaid on `state` panels and never mix with `noisy_state`
runs), task in kalbench's spelling (`walker-walk`),
context_length empty (published methods have none), seed from the file, env_step, wall_clock_s NaN,
return, score = return / 1000, complete True.

Offline: a file fetched from a URL without a network is `PublishedUnavailable`. The CLI's
`--note-if-unavailable` (the workflow's rule `published_scores`) then writes, in the file's place, a small JSON
note `{"unavailable": "<why>", "source": "<url>"}`; reading that note raises `PublishedUnavailable` again, and
the analysis draws its figures without the file and says so. Delete the note to fetch the file on the next run.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from integrations.dreamerv3 import PINNED_COMMIT
from integrations.dreamerv3.tasks import from_dreamer_task
from rl.io import atomic_write_bytes

PINNED_BASE_URL = f"https://raw.githubusercontent.com/danijar/dreamerv3/{PINNED_COMMIT}/scores/"
PINNED_URL = PINNED_BASE_URL + "{name}"  # e.g. name = "dmc_vision-dreamerv3.json.gz"
# SHA-256 of DreamerV3's DeepMind Control score files at the pinned commit (read from its git objects).
PINNED_SHA256 = {
    "dmc_proprio-d4pg.json.gz": "a6d87670d584daef223736948cb08887b66758433431b4a39e735fff7a9e5bdf",
    "dmc_proprio-ddpg.json.gz": "894cde656c479594dbe481487c6f3e784f6dacfbfd88d28f506d0b1c47a61a89",
    "dmc_proprio-dmpo.json.gz": "e270f18cfdc75b0eaac7cf6dda8415ec1677568067b8a77ea021e242ecf72cf4",
    "dmc_proprio-dreamerv3.json.gz": "8182860a8a56dc56836c319fde9b941376621e1e0d474141c7d174ab833cc7f4",
    "dmc_proprio-mpo.json.gz": "cc6de76168519ab697cc8bf8d86ea78770526f741912cc5716724e963c1bd23e",
    "dmc_proprio-ppo_fixhp.json.gz": "8530f273c3a457b95e4819f788a39629e3663f15ef31c13a075c389faf2afe82",
    "dmc_vision-curl.json.gz": "1d024d75c143cfdbdeed63f8d476c669d4be647759b35ef8fd44ae20d679c47d",
    "dmc_vision-dreamerv3.json.gz": "68dd7e83ee6af076734e1edb843a3816cd241736c92e91837e7cf460231b7b08",
    "dmc_vision-drqv2.json.gz": "18f932e73f139f8192d79f84f90d74b4e7bb9e7a089944fa01a8d10895cf1337",
    "dmc_vision-ppo_fixhp.json.gz": "7cd24804d6596759c1bfc52d76c0c95badbd96ceae3239ef1602755c8b17c8e0",
    "dmc_vision-sac.json.gz": "1d8f352472da8016c113053eba46b4274fc3dac20e1a4eb05ed38267e2a26aa9",
}
SUITE_OBS = {"dmc_vision": "pixels", "dmc_proprio": "state"}
MAX_RETURN = 1000.0  # DMC: score = return / 1000
COLUMNS = ["source", "method", "obs", "task", "context_length", "seed", "env_step", "wall_clock_s", "return",
           "score", "complete"]
_NAME = re.compile(r"^(?P<suite>[a-z0-9_]+)-(?P<method>[A-Za-z0-9_.]+)\.json(\.gz)?$")


class PublishedUnavailable(OSError):
    """A published score file that cannot be had here: a URL without a network (or the note saying so)."""


def obs_of(name: str) -> str:
    """The observation type of a score file's rows, from its name (`SUITE_OBS`); "" if not a known suite."""
    m = _NAME.match(name)
    return SUITE_OBS.get(m["suite"], "") if m else ""


def pinned_url(name: str) -> str:
    """The URL of one score file of DreamerV3 at the pinned commit, e.g. `dmc_vision-dreamerv3.json.gz`."""
    if not _NAME.match(name):
        raise ValueError(f"not a DreamerV3 score file name: {name!r} (expected <suite>-<method>.json.gz)")
    return PINNED_URL.format(name=name)


def read_bytes(path_or_url: str | Path, timeout: float = 60.0) -> bytes:
    """The file's bytes: a local path, or an http(s)/file URL."""
    text = str(path_or_url)
    scheme = urllib.parse.urlparse(text).scheme
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(text, timeout=timeout) as response:
                return response.read()
        except (urllib.error.URLError, OSError) as e:  # no network, no route, refused, timed out, HTTP error
            raise PublishedUnavailable(f"{text}: {getattr(e, 'reason', e)}") from e
    if scheme == "file":
        with urllib.request.urlopen(text, timeout=timeout) as response:
            return response.read()
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"published score file not found: {path}")
    return path.read_bytes()


def parse_runs(data: bytes, origin: str = "<bytes>") -> list[dict]:
    """The runs of a score file (gzipped or plain JSON), checked: each has task, method, seed and equally long,
    finite xs/ys."""
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    try:
        runs = json.load(io.BytesIO(raw))
    except json.JSONDecodeError as e:
        raise ValueError(f"{origin}: not JSON ({e})") from e
    if isinstance(runs, dict) and "unavailable" in runs:
        raise PublishedUnavailable(f"{runs['unavailable']} (note {origin})")
    if not isinstance(runs, list):
        raise ValueError(f"{origin}: a score file is a JSON list of runs, got {type(runs).__name__}")
    for i, run in enumerate(runs):
        missing = {"task", "method", "seed", "xs", "ys"} - set(run) if isinstance(run, dict) else {"(object)"}
        if missing:
            raise ValueError(f"{origin}: run {i} lacks {sorted(missing)}")
        if len(run["xs"]) != len(run["ys"]):
            raise ValueError(f"{origin}: run {i} ({run['task']}, seed {run['seed']}) has {len(run['xs'])} xs "
                             f"but {len(run['ys'])} ys")
    return runs


def suite_of(name: str) -> str:
    """`dmc_vision-dreamerv3.json.gz` -> `dmc_vision`."""
    m = _NAME.match(name)
    if not m:
        raise ValueError(f"cannot tell the suite from {name!r} (expected <suite>-<method>.json.gz); pass obs=")
    return m["suite"]


def bin_points(xs: np.ndarray, ys: np.ndarray, every: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the points in each bin ((k-1)*every, k*every], at x = k*every; empty bins are left out."""
    if every < 1:
        raise ValueError(f"bin_every must be >= 1, got {every}")
    ends = np.ceil(np.asarray(xs, dtype=float) / every).astype(np.int64) * every
    frame = pd.DataFrame({"x": ends, "y": np.asarray(ys, dtype=float)}).groupby("x")["y"].mean()
    return frame.index.to_numpy(), frame.to_numpy()


def load_published(path_or_url: str | Path, *, obs: str | None = None, methods: Iterable[str] | None = None,
                   tasks: Iterable[str] | None = None, bin_every: int | None = None) -> pd.DataFrame:
    """One score file (local path or URL) as tidy-table rows (see the module docstring).

    obs: observation type of its rows (default: from the file name's suite, `SUITE_OBS`); methods / tasks: keep
    only these (tasks in kalbench's spelling, `walker-walk`); bin_every: average the points into bins of that
    many env steps (default: the file's own points). Only DeepMind Control files (`dmc_*`) are understood."""
    name = Path(urllib.parse.urlparse(str(path_or_url)).path).name
    if obs is None:
        suite = suite_of(name)
        if suite not in SUITE_OBS:
            raise ValueError(f"{name}: suite {suite!r} is not a DeepMind Control suite of DreamerV3's "
                             f"({', '.join(SUITE_OBS)}); pass obs= to load it anyway")
        obs = SUITE_OBS[suite]
    runs = parse_runs(read_bytes(path_or_url), str(path_or_url))
    methods = None if methods is None else set(methods)
    tasks = None if tasks is None else set(tasks)
    parts = []
    for run in runs:
        task = from_dreamer_task(run["task"])
        if (methods is not None and run["method"] not in methods) or (tasks is not None and task not in tasks):
            continue
        xs, ys = np.asarray(run["xs"], dtype=float), np.asarray(run["ys"], dtype=float)
        if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
            raise ValueError(f"{name}: run {run['task']} seed {run['seed']} has non-finite xs or ys")
        if bin_every:
            xs, ys = bin_points(xs, ys, bin_every)
        parts.append(pd.DataFrame({"method": run["method"], "task": task, "seed": int(run["seed"]),
                                   "env_step": np.rint(xs).astype(np.int64), "return": ys}))
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    rows = pd.concat(parts, ignore_index=True)
    rows = rows.assign(source="published", obs=obs, context_length=pd.NA, wall_clock_s=np.nan,
                       score=rows["return"] / MAX_RETURN, complete=True)
    rows["context_length"] = rows["context_length"].astype("Int64")
    rows["seed"] = rows["seed"].astype("Int64")
    return rows[COLUMNS].sort_values(["obs", "task", "method", "seed", "env_step"], kind="stable") \
        .reset_index(drop=True)


def check_pinned(name: str, data: bytes) -> str:
    """The SHA-256 of `data`; a ValueError if `name` is a file of the pinned commit and the bytes differ."""
    digest = hashlib.sha256(data).hexdigest()
    want = PINNED_SHA256.get(name)
    if want is not None and digest != want:
        raise ValueError(f"{name}: SHA-256 {digest} is not that of the file at DreamerV3 commit {PINNED_COMMIT} "
                         f"({want}); refusing a changed score file")
    return digest


def main(argv: list[str] | None = None) -> int:
    """`python -m analysis.published SOURCE --out FILE`: check a score file (path or URL), copy it to FILE.

    The check: where FILE's name is a score file of the pinned commit, the bytes must have its SHA-256; every
    file must parse as a score file (`parse_runs`). The copy is written atomically."""
    p = argparse.ArgumentParser(prog="python -m analysis.published", description=main.__doc__.split("\n")[0])
    p.add_argument("source", help="score file: path or http(s)/file URL")
    p.add_argument("--out", required=True, help="where to write the checked copy (its name says which file it is)")
    p.add_argument("--note-if-unavailable", action="store_true",
                   help="a URL that cannot be fetched (no network): write a note saying so to --out, exit 0")
    a = p.parse_args(argv)
    name = Path(a.out).name
    try:
        data = read_bytes(a.source)
    except PublishedUnavailable as e:
        if not a.note_if_unavailable:
            raise
        atomic_write_bytes(a.out, (json.dumps({"unavailable": str(e), "source": str(a.source)}) + "\n").encode())
        print(f"warning: {e}; wrote a note to {a.out}: the figures are drawn without {name} "
              f"(delete it to fetch again)", file=sys.stderr)
        return 0
    digest = check_pinned(name, data)
    runs = parse_runs(data, a.source)
    atomic_write_bytes(a.out, data)
    pinned = "the pinned commit's" if name in PINNED_SHA256 else "not a file of the pinned commit, unchecked"
    print(f"{a.out}: {len(runs)} runs, sha256 {digest} ({pinned})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
