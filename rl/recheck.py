"""What the tools that re-evaluate finished runs share (rl/window_eval.py, rl/lag_probe.py): checking the run
directories and the output path before any work, choosing the renderer once, and rebuilding a run's agent from its
config.json and checkpoint.pt.

Every check names the run directory (or flag) at fault in one line (ValueError; the tools exit 2). A run counts as
finished when it has DONE, config.json (a JSON object) and checkpoint.pt, and its checkpoint loads into the model its
config builds. Episodes of these tools use the seed stream `RECHECK_STREAM` (rl/run_contract.py), never used for
training or a run's own evaluations, so every tool and mode plays the same episodes of a run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from rl import render
from rl.run_contract import RECHECK_STREAM, episode_seed


def recheck_seed(run_seed: int, episode: int) -> int:
    """The seed of episode `episode` of every re-check tool for a run with seed `run_seed`."""
    return episode_seed(run_seed, RECHECK_STREAM, episode)


def add_common_arguments(parser: argparse.ArgumentParser, episodes_min: int) -> None:
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories (DONE, config.json, checkpoint.pt)")
    parser.add_argument("--episodes", type=int, default=20, help=f"episodes per run (>= {episodes_min})")
    parser.add_argument("--device", default="cpu", help="torch device for the model")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file (atomically)")


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """config.json of a finished run; ValueError naming the directory if it is not one."""
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: not a directory")
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"{run_dir}: no config.json (not a run directory)") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{run_dir}/config.json: unreadable ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{run_dir}/config.json: not a JSON object")
    for name, what in (("checkpoint.pt", "no checkpoint"), ("DONE", "not finished (no DONE)")):
        if not (run_dir / name).is_file():
            raise ValueError(f"{run_dir}: {what}")
    return config


def check_json_path(path: Path | None) -> None:
    """The --json target must be a file path whose folder exists or can be made."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"--json {path}: is a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--json {path}: {parent} is not a directory")
            break


def prepare(runs: list[Path], json_path: Path | None, pixels_ok: bool) -> list[tuple[Path, dict[str, Any]]]:
    """Check every run and the output path before any work; choose the renderer once for all runs (pixels if any run
    has them). Returns [(run directory, config.json)], duplicates (the same directory twice) dropped."""
    check_json_path(json_path)
    unique = list(dict.fromkeys(Path(r) for r in runs))
    checked = [(run, read_run_config(run)) for run in unique]
    pixels = [run for run, config in checked if config.get("obs") == "pixels"]
    if pixels and not pixels_ok:
        raise ValueError(f"{pixels[0]}: a pixel run has no true state to probe (state and noisy_state runs only)")
    render.configure(renders=bool(pixels))
    return checked


def load_trainer(run_dir: Path, config: dict[str, Any], device: str):
    """A Trainer built from the run's config (device replaced; a `cuda` Mamba backend becomes `auto`, so a GPU run
    can be re-evaluated on a CPU), its agent loaded from checkpoint.pt. Nothing is written.
    ValueError naming the run if the config does not build or the checkpoint does not fit it."""
    from rl.config import RunConfig, config_from_dict
    from rl.rundir import InvalidCheckpoint, RunDir
    from rl.train import Trainer

    names = {f.name for f in dataclasses.fields(RunConfig)}
    values = {k: v for k, v in config.items() if k in names}
    model = values.get("model")
    if isinstance(model, dict) and model.get("mamba_backend") == "cuda":
        values["model"] = {**model, "mamba_backend": "auto"}
    try:
        trainer = Trainer(config_from_dict({**values, "out": str(run_dir), "device": device}))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{run_dir}/config.json does not build a run: {str(e).splitlines()[0][:300]}") from None
    try:
        trainer.agent.load_state_dict(RunDir(run_dir).load_checkpoint()["agent"])
    except (InvalidCheckpoint, RuntimeError, KeyError) as e:
        trainer.close()
        raise ValueError(f"{run_dir}/checkpoint.pt does not fit its config.json: {str(e).splitlines()[0][:300]}") from None
    return trainer
