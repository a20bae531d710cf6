"""Does the belief lag behind the state? Per state dimension, the belief probe's read-out (rl/probe.py: ridge on the
first half of the episodes, R^2 on the other half) of the true state s_t from the features the agent acts on at
t − 1, t and t + 1, and from the observation at t (README "KalMamba learns", lead "belief lag").

    python -m rl.lag_probe RUN_DIR [RUN_DIR ...] [--episodes 20] [--json OUT.json]

A timely filter predicts s_t at least as well from f_t as from f_{t+1}. Where f_{t+1} predicts s_t clearly better, the
information about s_t reaches the belief one step late: for KalMamba, the observation w_t enters μ⁺_t through the
Kalman gain and, one step later, through the transition offset b_t = NN_post(Mamba(w_{≤t}), a_t); with a small gain
the second path carries it. The smoothed posterior the ELBO trains sees both, so the loss does not penalise the delay.
The episodes: deterministic policy, MAP model (as evaluations), online acting (`Agent.act`), seeds
`episode_seed(run seed, RECHECK_STREAM, i)` (the same episodes as rl/window_eval.py). Runs on `state` and `noisy_state`
observations only. Bad input: a one-line error, exit 2. The JSON is written atomically.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl import render
from rl.io import atomic_write_text
from rl.probe import PROBED_OBS, fit_ridge, r2_scores, ridge_predict
from rl.run_contract import RECHECK_STREAM, episode_seed

SHIFTS = (-1, 0, 1)   # features at t + shift -> state at t


def shifted(episodes: list[tuple[np.ndarray, np.ndarray]], shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (x_{t+shift}, s_t) of every episode, stacked: episodes of (x (T, F), s (T, S)) -> ((N, F), (N, S))."""
    xs, ys = [], []
    for x, s in episodes:
        n = len(x) - abs(shift)
        if n < 1:
            continue
        xs.append(x[max(shift, 0):max(shift, 0) + n])
        ys.append(s[max(-shift, 0):max(-shift, 0) + n])
    if not xs:
        raise ValueError(f"no episode is longer than {abs(shift)} step(s)")
    return np.concatenate(xs), np.concatenate(ys)


def readout_r2(fit: list, test: list, shift: int) -> np.ndarray:
    """Per-dimension test R^2 (S,) of the ridge read-out of s_t from x_{t+shift}, fitted on `fit`, scored on `test`."""
    x_fit, y_fit = shifted(fit, shift)
    x_test, y_test = shifted(test, shift)
    return r2_scores(y_test, ridge_predict(fit_ridge(x_fit, y_fit), x_test))


@torch.no_grad()
def record(trainer, episodes: int) -> list[dict[str, np.ndarray]]:
    """Online deterministic episodes: per episode the features (T, F), observations (T, O), true states (T, S)."""
    agent, env = trainer.agent, trainer.eval_env
    out = []
    for i in range(episodes):
        obs, state, done = env.reset(seed=episode_seed(trainer.cfg.seed, RECHECK_STREAM, i)), agent.initial_state(), False
        ep = {"features": [], "observation": [], "state": []}
        while not done:
            action, state = agent.act(obs, state, deterministic=True)
            ep["features"].append(agent.last_features.cpu().numpy().astype(np.float64))
            ep["observation"].append(np.asarray(obs, np.float64))
            ep["state"].append(env.true_state())
            obs, _, done, _ = env.step(action)
        out.append({k: np.stack(v) for k, v in ep.items()})
    return out


def probe_run(run_dir: Path, episodes: int, device: str = "cpu") -> dict[str, Any]:
    """{run, episodes, state_names, rows: {input name: per-dimension R^2 (None where s does not vary)}} for the
    features at t-1, t, t+1 and the observation at t. ValueError for a pixel run or a directory without a run."""
    from rl.rundir import RunDir
    from rl.window_eval import load_trainer

    obs_type = (RunDir(run_dir).read_config() or {}).get("obs") if (run_dir / "config.json").is_file() else None
    if obs_type is not None and obs_type not in PROBED_OBS:
        raise ValueError(f"{run_dir}: observation type {obs_type!r} has no true state to probe "
                         f"(one of {', '.join(PROBED_OBS)})")
    trainer = load_trainer(run_dir, device)
    try:
        eps = record(trainer, episodes)
        half = len(eps) // 2
        rows = {}
        for key in ("features", "observation"):
            pairs = [(e[key], e["state"]) for e in eps]
            for shift in (SHIFTS if key == "features" else (0,)):
                name = f"{key} t" + ("" if shift == 0 else f"{shift:+d}")
                rows[name] = [None if np.isnan(v) else float(v) for v in readout_r2(pairs[:half], pairs[half:], shift)]
        return {"run": str(run_dir), "episodes": episodes, "state_names": trainer.eval_env.state_names(),
                "rows": rows}
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rl.lag_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (config.json + checkpoint.pt)")
    p.add_argument("--episodes", type=int, default=20, help="episodes, half to fit and half to score (>= 2)")
    p.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.episodes < 2:
        print(f"error: --episodes must be >= 2, got {args.episodes}", file=sys.stderr)
        return 2
    results = []
    try:
        render.configure(renders=False)
        for run in args.runs:
            res = probe_run(run, args.episodes, args.device)
            width = max(len(n) for n in res["rows"])
            print(f"{res['run']}: R^2 of the true state s_t, {args.episodes} episodes")
            print(" " * width + "  " + "  ".join(f"{n:>11}" for n in res["state_names"]))
            for name, r2 in res["rows"].items():
                print(f"{name:>{width}}  " + "  ".join(f"{v:11.3f}" if v is not None else f"{'–':>11}" for v in r2), flush=True)
            results.append(res)
    except (ValueError, OSError, render.RendererUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
