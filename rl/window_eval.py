"""Acting on a sliding window (fidelity review lead D7; README "KalMamba learns"): re-evaluate a run's checkpoint
with the belief the agent acts on online, and with the features of the last L steps recomputed from scratch.

A recurrent world model (KalMamba's Mamba, RSSM's GRU) is trained on windows of `context_length` steps that start
from its initial state, but acts with `observe` from the episode start, so its state at acting step t has seen t
steps (up to 125 on a 1000-step cartpole episode at action repeat 8). Mode `window L` plays the same episodes with the
policy on `features(obs[t-L+1..t], prev_actions[t-L+1..t])[-1]`, the model filtering the last L steps from its
initial state as in training; `online` is the agent's own acting (`Agent.act`). Both use the MAP model (eval mode)
and the deterministic policy, as evaluations do.

    python -m rl.window_eval RUN_DIR [RUN_DIR ...] [--windows 16 32] [--episodes 20] [--json OUT.json]

Prints, per run and mode, the mean evaluation return, its standard deviation over the episodes, and the mean relative
L2 difference ‖f_window − f_online‖ / ‖f_online‖ over the acting steps. Every mode plays the same episodes (seeds
`episode_seed(run seed, RECHECK_STREAM, i)`, never used for training or the run's own evaluations), so the modes
differ only by the features the policy sees. Bad input (no run directory, no checkpoint, a window < 1): a one-line
error, exit 2. The JSON is written atomically.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl import render
from rl.io import atomic_write_text
from rl.run_contract import RECHECK_STREAM, episode_seed


def load_trainer(run_dir: Path, device: str):
    """A Trainer built from the run's config.json, its agent loaded from checkpoint.pt (nothing is written)."""
    from rl.config import RunConfig, config_from_dict
    from rl.rundir import RunDir
    from rl.train import Trainer

    rundir = RunDir(run_dir)
    config = rundir.read_config()
    if config is None or not rundir.has_checkpoint():
        raise ValueError(f"{run_dir}: not a run directory with config.json and checkpoint.pt")
    names = {f.name for f in dataclasses.fields(RunConfig)}
    cfg = config_from_dict({**{k: v for k, v in config.items() if k in names}, "out": str(run_dir),
                            "device": device})
    trainer = Trainer(cfg)
    trainer.agent.load_state_dict(rundir.load_checkpoint()["agent"])
    return trainer


@torch.no_grad()
def play(trainer, seed: int, window: int | None) -> tuple[float, list[float]]:
    """One deterministic episode; window None = online acting. Returns (return, relative feature differences)."""
    agent, env = trainer.agent, trainer.eval_env
    wm = agent.world_model
    wm.eval()
    obs = env.reset(seed=seed)
    model_state, prev_action = agent.initial_state()
    seen_obs, seen_actions, diffs, total, done = [], [], [], 0.0, False
    while not done:
        obs_t = agent.normalize(torch.as_tensor(obs, device=agent.device).unsqueeze(0))   # (1, *obs_shape)
        feat, model_state = wm.observe(model_state, obs_t, prev_action)                   # (1, F)
        if window is not None:
            seen_obs.append(obs_t)
            seen_actions.append(prev_action)
            f_window = wm.features(torch.stack(seen_obs[-window:], 1), torch.stack(seen_actions[-window:], 1))[:, -1]
            diffs.append(float((f_window - feat).norm() / feat.norm().clamp_min(1e-12)))
            feat = f_window
        prev_action = agent.sac.act(feat, deterministic=True)
        obs, reward, done, _ = env.step(prev_action[0].cpu().numpy())
        total += float(reward)
    return total, diffs


def evaluate(run_dir: Path, windows: list[int], episodes: int, device: str = "cpu") -> list[dict[str, Any]]:
    """Rows {run, mode, window, return_mean, return_std, episodes, feature_rel_diff} for `online` and each window."""
    trainer = load_trainer(run_dir, device)
    try:
        rows = []
        for window in [None, *windows]:
            returns, diffs = [], []
            for i in range(episodes):
                ret, d = play(trainer, episode_seed(trainer.cfg.seed, RECHECK_STREAM, i), window)
                returns.append(ret)
                diffs += d
            rows.append({"run": str(run_dir), "mode": "online" if window is None else f"window {window}",
                         "window": window, "return_mean": float(np.mean(returns)),
                         "return_std": float(np.std(returns)), "episodes": episodes,
                         "feature_rel_diff": float(np.mean(diffs)) if diffs else 0.0})
        return rows
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rl.window_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (config.json + checkpoint.pt)")
    p.add_argument("--windows", nargs="+", type=int, default=[32], help="window lengths L in agent steps (>= 1)")
    p.add_argument("--episodes", type=int, default=20, help="episodes per mode (>= 1)")
    p.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    bad = [w for w in args.windows if w < 1]
    if bad or args.episodes < 1:
        print(f"error: --windows and --episodes must be >= 1, got {bad[0] if bad else args.episodes}", file=sys.stderr)
        return 2
    rows = []
    try:
        for run in args.runs:
            config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
            render.configure(renders=config.get("obs") == "pixels")
            run_rows = evaluate(run, args.windows, args.episodes, args.device)
            for r in run_rows:
                print(f"{r['run']}  {r['mode']:>10}  return {r['return_mean']:7.1f} ± {r['return_std']:5.1f}"
                      f"  feature rel. diff {r['feature_rel_diff']:.3f}", flush=True)
            rows += run_rows
    except (ValueError, OSError, render.RendererUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
