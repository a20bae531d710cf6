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
L2 difference ‖f_window − f_online‖ / ‖f_online‖ over the acting steps ("–" for online). Every mode plays the same
episodes (rl/recheck.py: seed stream RECHECK_STREAM), so for a deterministic belief (KalMamba, VRKN) the modes differ
only by the features the policy sees; a window at least as long as the episode reproduces online acting (diff 0).
RSSM's belief is sampled (the GRU is fed a sample of its posterior, also in eval mode), so its diff and returns carry
sampling noise: a window longer than the episode measures that floor. Runs of every observation type, pixels too.
Bad input (a directory that is not a finished run, a checkpoint that does not fit its config, --windows or --episodes
< 1, a --json path that cannot be written): a one-line error naming it, exit 2, before any evaluation where it can be
checked first. The JSON is written atomically.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl import recheck
from rl.io import atomic_write_text


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


def evaluate(run_dir: Path, config: dict[str, Any], windows: list[int], episodes: int,
             device: str = "cpu") -> list[dict[str, Any]]:
    """Rows {run, mode, window, return_mean, return_std, episodes, feature_rel_diff} for `online` and each window
    (feature_rel_diff None for `online`; return_std the population std over the episodes)."""
    trainer = recheck.load_trainer(run_dir, config, device)
    try:
        rows = []
        for window in [None, *windows]:
            returns, diffs = [], []
            for i in range(episodes):
                ret, d = play(trainer, recheck.recheck_seed(trainer.cfg.seed, i), window)
                returns.append(ret)
                diffs += d
            rows.append({"run": str(run_dir), "mode": "online" if window is None else f"window {window}",
                         "window": window, "return_mean": float(np.mean(returns)),
                         "return_std": float(np.std(returns)), "episodes": episodes,
                         "feature_rel_diff": float(np.mean(diffs)) if diffs else None})
        return rows
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rl.window_eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    recheck.add_common_arguments(p, episodes_min=1)
    p.add_argument("--windows", nargs="+", type=int, default=[32], help="window lengths L in agent steps (>= 1)")
    args = p.parse_args(argv)
    for flag, values in (("--windows", args.windows), ("--episodes", [args.episodes])):
        bad = [v for v in values if v < 1]
        if bad:
            print(f"error: {flag} must be >= 1, got {bad[0]}", file=sys.stderr)
            return 2
    windows = sorted(set(args.windows))
    rows = []
    try:
        runs = recheck.prepare(args.runs, args.json, pixels_ok=True)
        for run, config in runs:
            run_rows = evaluate(run, config, windows, args.episodes, args.device)
            print(f"{run}: {args.episodes} episodes")
            for r in run_rows:
                diff = "–" if r["feature_rel_diff"] is None else f"{r['feature_rel_diff']:.3f}"
                print(f"  {r['mode']:>10}  return {r['return_mean']:7.1f} ± {r['return_std']:5.1f}"
                      f"  feature rel. diff {diff}", flush=True)
            rows += run_rows
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
