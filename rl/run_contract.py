"""What every runner of a kalbench run shares (docs/architecture.md, "Run directory contract"): the columns of
eval.csv, the rule that seeds each episode, and the provenance block of config.json.

Two runners write run directories: rl/train.py (every method built on `models/`) and the DreamerV3 loop
(integrations/dreamerv3). This module is their single source for the pieces above. It needs the standard library and
numpy only (no torch), because the DreamerV3 side imports it in DreamerV3's own environment.
"""
from __future__ import annotations

import datetime
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

EVAL_COLUMNS = ["env_step", "wall_clock_s", "return_mean", "return_std", "episodes"]

# Seed streams of `episode_seed` (rl/train.py derives its other generators from streams 2-4: keep these distinct).
# RECHECK_STREAM: the episodes of the tools that re-evaluate finished runs (rl/window_eval.py, rl/lag_probe.py).
TRAIN_STREAM, EVAL_STREAM, RECHECK_STREAM = 0, 1, 5


def episode_seed(run_seed: int, stream: int, *index: int) -> int:
    """The 32-bit seed of one episode: a pure function of the run seed, the stream and the episode's index words,
    words [run_seed, stream, *index] -> numpy SeedSequence -> its first uint32 word.

    Index words. rl/train.py: training episode k -> (TRAIN_STREAM, k); episode i of evaluation n -> (EVAL_STREAM, n,
    i). The DreamerV3 loop evaluates with the same words, so every method is evaluated on the same episodes. Its
    training episodes are (TRAIN_STREAM, env index, restart · 10⁶ + k): its parallel envs and restarts keep no shared
    episode counter, so its training seeds differ from rl/train.py's (integrations/dreamerv3/envs.py).

    Raises ValueError if a word is negative.
    """
    words = [int(run_seed), int(stream), *(int(i) for i in index)]
    if min(words) < 0:
        raise ValueError(f"episode_seed: seed, stream and indices must be >= 0, got {words}")
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0])


def git_commit(repo: Path = Path(__file__).resolve().parent.parent) -> dict[str, Any]:
    """{"git_commit": commit of the code that runs, "git_dirty": whether tracked files differ from it}; None for
    either where git cannot tell (not a checkout, git missing)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def provenance(seed: int, device: str, packages: dict[str, str | None]) -> dict[str, Any]:
    """The provenance block of config.json: git commit and dirty flag, package versions (the Python version first),
    the device in words, host name, start time (UTC) and the run seed."""
    return {**git_commit(), "packages": {"python": platform.python_version(), **packages}, "device": device,
            "hostname": socket.gethostname(), "start_time": now(), "seed": seed}
