"""The run directory (docs/architecture.md, "Run directory contract"):

    config.json    resolved RunConfig + provenance; a restart appends to "restarts"
    eval.csv       env_step, wall_clock_s, return_mean, return_std, episodes
    probe.csv      env_step, features_r2, observation_r2 (state / noisy_state runs: the belief probe, rl/probe.py)
    train.csv      env_step, wall_clock_s, updates, <loss terms>, train_return, fps
    checkpoint.pt  everything needed to resume bit-for-bit; tensors and plain containers only (loaded with
                   torch.load(weights_only=True): a checkpoint from elsewhere never runs code)
    replay/        the replay episodes the checkpoint refers to (removed once DONE unless keep_replay)
    DONE           JSON, written last: final_return, env_steps, wall_clock_s, reason

Every file is written through rl/io.py (temp file in the same directory, fsync, rename). The CSVs are
rewritten whole from rows held in the checkpoint, so after a restart they agree with the resumed state.
"""
from __future__ import annotations

import json
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rl.io import atomic_save, atomic_to_csv, atomic_write_text
from rl.probe import PROBE_COLUMNS
from rl.run_contract import EVAL_COLUMNS, provenance as provenance_block
# What rl/train.py's snapshot holds; a checkpoint without one of them is not a kalbench checkpoint.
CHECKPOINT_KEYS = ("config", "agent", "rng", "counters", "wall_clock_s", "replay_episodes", "eval_rows", "train_rows",
                   "log_acc")


class InvalidCheckpoint(ValueError):
    """checkpoint.pt is not a checkpoint this code can resume (corrupt, foreign, or holding pickled objects)."""


def checkpoint_safe(obj: Any) -> Any:
    """`obj` with every numpy array turned into a tensor and every numpy scalar into a Python number, so that the
    checkpoint holds only what `torch.load(weights_only=True)` accepts: tensors, numbers, strings, None and
    dicts / lists / tuples of them (e.g. numpy's global RNG state keeps its MT19937 key as a uint32 tensor)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: checkpoint_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(checkpoint_safe(v) for v in obj)
    return obj
PACKAGES = ("torch", "numpy", "dm_control", "mujoco", "pandas", "kalbench", "mamba_ssm")


def package_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(device: torch.device, seed: int) -> dict[str, Any]:
    """config.json's provenance block (rl/run_contract.py) for a run of rl/train.py on `device`."""
    return provenance_block(seed, device_description(device), package_versions())


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.eval_csv = self.path / "eval.csv"
        self.train_csv = self.path / "train.csv"
        self.probe_csv = self.path / "probe.csv"
        self.checkpoint = self.path / "checkpoint.pt"
        self.replay = self.path / "replay"
        self.done = self.path / "DONE"

    def is_done(self) -> bool:
        return self.done.exists()

    def read_done(self) -> dict[str, Any]:
        return json.loads(self.done.read_text())

    def has_checkpoint(self) -> bool:
        return self.checkpoint.exists()

    def read_config(self) -> dict[str, Any] | None:
        return json.loads(self.config.read_text()) if self.config.exists() else None

    def write_config(self, config: dict[str, Any], prov: dict[str, Any]) -> None:
        atomic_write_text(self.config, json.dumps({**config, "provenance": prov, "restarts": []}, indent=2) + "\n")

    def record_restart(self, prov: dict[str, Any]) -> None:
        data = self.read_config()
        data.setdefault("restarts", []).append(prov)
        atomic_write_text(self.config, json.dumps(data, indent=2) + "\n")

    def write_eval(self, rows: list[dict[str, Any]]) -> None:
        """eval.csv from the evaluation rows; and probe.csv from their probe fields where the run has a probe."""
        atomic_to_csv(pd.DataFrame(rows, columns=EVAL_COLUMNS), self.eval_csv)
        if any("features_r2" in row for row in rows):
            atomic_to_csv(pd.DataFrame(rows, columns=PROBE_COLUMNS), self.probe_csv)

    def write_train(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = ["env_step", "wall_clock_s", "updates"]
        for row in rows:  # loss terms in order of first appearance, then train_return and fps last
            columns += [k for k in row if k not in columns and k not in ("train_return", "fps")]
        atomic_to_csv(pd.DataFrame(rows, columns=columns + ["train_return", "fps"]), self.train_csv)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write `state` in a form that `torch.load(weights_only=True)` reads (see `checkpoint_safe`)."""
        atomic_save(checkpoint_safe(state), self.checkpoint)

    def load_checkpoint(self) -> dict[str, Any]:
        """The checkpoint, loaded with `weights_only=True` (a pickle from elsewhere can hold only tensors and plain
        containers: it never runs code). InvalidCheckpoint naming the file if it is not a kalbench checkpoint."""
        import pickle

        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
            # torch's message wraps the cause in advice to load with weights_only=False: keep only the cause
            lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.startswith(
                ("Weights only load failed", "Please file an issue", "Check the documentation"))]
            why = lines[0] if lines else type(e).__name__
            raise InvalidCheckpoint(f"{self.checkpoint} is not a valid kalbench checkpoint (torch.load with "
                                    f"weights_only=True: {why[:300]}); nothing was overwritten. Move it away to start "
                                    "this run over, or use another --out") from None
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise InvalidCheckpoint(f"{self.checkpoint} is not a valid kalbench checkpoint (missing "
                                    f"{', '.join(missing)}); nothing was overwritten. Move it away to start this "
                                    "run over, or use another --out")
        return state

    def write_done(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.done, json.dumps(summary, indent=2) + "\n")

    def remove_replay(self) -> None:
        shutil.rmtree(self.replay, ignore_errors=True)
