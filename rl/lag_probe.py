"""Does the belief lag behind the state? Per state dimension, the belief probe's read-out (rl/probe.py: ridge on the
first half of the episodes, R^2 on the other half) of the true state s_t from the features the agent acts on at
t − 1, t and t + 1, and from the observation at t (README "KalMamba learns", lead "belief lag").

    python -m rl.lag_probe RUN_DIR [RUN_DIR ...] [--episodes 20] [--json OUT.json]

f_{t+1} has seen o_{t+1}, which tells something about s_t too (a smoother beats a filter), so even a perfect filter may
read s_t a little better from f_{t+1}; the evidence is the comparison between models on the same task. Where one
model's f_{t+1} reads s_t clearly better than its f_t while another's does not, its information about s_t arrives one
step late: for KalMamba, the observation w_t enters μ⁺_t through the
Kalman gain and, one step later, through the transition offset b_t = NN_post(Mamba(w_{≤t}), a_t); with a small gain
the second path carries it. The smoothed posterior the ELBO trains sees both, so the loss does not penalise the delay.
The episodes: deterministic policy, MAP model (as evaluations), online acting (`Agent.act`), the episodes of
rl/window_eval.py (rl/recheck.py); the first ⌊episodes/2⌋ fit the read-out, the others score it (a warning when the
fit has no more steps than features). Finished `state` and `noisy_state` runs only. Bad input (a directory that is not
a finished run, a pixel run, a checkpoint that does not fit its config, --episodes < 2, a --json path that cannot be
written): a one-line error naming it, exit 2, checked before any evaluation where it can be. The JSON is written
atomically.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rl import recheck
from rl.io import atomic_write_text
from rl.probe import PROBED_OBS, ProbeRecorder, fit_ridge, r2_scores, ridge_predict

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


def record(trainer, episodes: int) -> list[dict[str, np.ndarray]]:
    """Online deterministic episodes, as the run's evaluations play them (`Trainer.run_episode` with the belief probe's
    recorder): per episode the features (T, F), observations (T, O), true states (T, S)."""
    recorder = ProbeRecorder()
    for i in range(episodes):
        recorder.start_episode()
        trainer.run_episode(trainer.eval_env, recheck.recheck_seed(trainer.cfg.seed, i), "eval", recorder)
    return [{k: np.stack(v) for k, v in ep.items()} for ep in recorder.episodes]


def probe_run(run_dir: Path, config: dict[str, Any], episodes: int, device: str = "cpu") -> dict[str, Any]:
    """{run, episodes, state_names, fit_steps, feature_dim, rows: {input name: per-dimension R^2 (None where s does not
    vary)}} for the features at t-1, t, t+1 and the observation at t: the first ⌊episodes/2⌋ episodes fit the read-out,
    the others score it. ValueError for a run whose observation type has no true state."""
    if config.get("obs") not in PROBED_OBS:
        raise ValueError(f"{run_dir}: observation type {config.get('obs')!r} has no true state to probe "
                         f"(one of {', '.join(PROBED_OBS)})")
    trainer = recheck.load_trainer(run_dir, config, device)
    try:
        eps = record(trainer, episodes)
        half = len(eps) // 2
        rows = {}
        for key in ("features", "observation"):
            pairs = [(e[key], e["state"]) for e in eps]
            for shift in (SHIFTS if key == "features" else (0,)):
                name = f"{key} t" + ("" if shift == 0 else f"{shift:+d}")
                r2 = readout_r2(pairs[:half], pairs[half:], shift)
                rows[name] = [None if np.isnan(v) else float(v) for v in r2]
        return {"run": str(run_dir), "episodes": episodes, "state_names": trainer.eval_env.state_names(),
                "fit_steps": sum(len(e["state"]) for e in eps[:half]), "feature_dim": int(eps[0]["features"].shape[1]),
                "rows": rows}
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rl.lag_probe", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    recheck.add_common_arguments(p, episodes_min=2)
    args = p.parse_args(argv)
    if args.episodes < 2:
        print(f"error: --episodes must be >= 2 (half fit, half score), got {args.episodes}", file=sys.stderr)
        return 2
    results = []
    try:
        runs = recheck.prepare(args.runs, args.json, pixels_ok=False)
        for run, config in runs:
            res = probe_run(run, config, args.episodes, args.device)
            if res["fit_steps"] <= res["feature_dim"]:
                print(f"warning: {run}: the read-out is fitted on {res['fit_steps']} steps for {res['feature_dim']} "
                      "features: R^2 means little; use more --episodes", file=sys.stderr)
            width = max(len(n) for n in res["rows"])
            print(f"{res['run']}: R^2 of the true state s_t, {args.episodes} episodes")
            print(" " * width + "  " + "  ".join(f"{n:>11}" for n in res["state_names"]))
            for name, r2 in res["rows"].items():
                cells = (f"{v:11.3f}" if v is not None else f"{'–':>11}" for v in r2)
                print(f"{name:>{width}}  " + "  ".join(cells), flush=True)
            results.append(res)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
