"""SYNTHETIC run directories for tests/test_analysis.py: made-up learning curves with a known structure.

Nothing here is a result. `make_study(root)` writes `root/runs/...` (config.json, eval.csv, train.csv, DONE) and
`root/bench/update_step.json` for a small three-experiment study and returns the study config and the
ground truth (every run's evaluations) for independent reference computations.

Known structure:
- evaluations every 1000 env steps from 0 to the budget of 10000; return(step) = level * (1 - exp(-step / 3000)),
  level drawn per run from a fixed generator;
- pixels/walker-walk/rssm/ctx32/seed0 evaluates past the budget (11000, 12000 with return 999): its final score
  must be the one at 10000;
- context: vrkn at context 128 is slow and stops at the wall clock (DONE reason wall_clock, 6500 env steps,
  last evaluation at 6000);
- noisy_state/cheetah-run/sac/ctx32/seed1 has no DONE (running, evaluated up to 5000);
- context: noisy_state/walker-walk/rssm/ctx128/seed2 has no directory (missing).
- every run on states writes probe.csv (one row per evaluation): features_r2 = PROBE_LEVEL[method] - 0.02 seed
  + step / 1e6, observation_r2 = 0.55 + 0.01 seed (the last row within the budget is what the analysis shows).
`make_published(path)` writes SYNTHETIC "published" reference rows (tidy CSV, source=published) for the pixel
tasks: dreamerv3 with 5 seeds, logged every 250 env steps from 250 on (denser than our evaluations).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

BUDGET, EVAL_EVERY, WALL_HOURS = 10_000, 1_000, 2.0
STUDY = {
    "study": "synthetic",
    "seeds": [0, 1, 2],
    "main_context_length": 32,
    "experiments": {
        "pixels": {"obs": "pixels", "tasks": ["cartpole-swingup", "walker-walk"],
                   "methods": ["kalmamba", "rssm", "sac", "kalmamba_no_mamba", "kalmamba_no_reg"],
                   "context_lengths": [32]},
        "noisy_state": {"obs": "noisy_state", "tasks": ["walker-walk", "cheetah-run"],
                        "methods": ["kalmamba", "rssm", "vrkn", "sac"], "context_lengths": [32]},
        "context": {"obs": "noisy_state", "tasks": ["walker-walk"], "methods": ["kalmamba", "rssm", "vrkn"],
                    "context_lengths": [32, 64, 128]},
    },
    "train": {"env_steps": BUDGET, "eval_every": EVAL_EVERY, "wall_clock_hours": WALL_HOURS},
    "benchmark": {"context_lengths": [32, 64, 128, 256], "batch_size": 16},
    "analysis": {"bootstrap_reps": 200, "seed": 0},
}
PAST_BUDGET = ("pixels", "walker-walk", "rssm", 32, 0)
RUNNING = ("noisy_state", "cheetah-run", "sac", 32, 1)
MISSING = ("noisy_state", "walker-walk", "rssm", 128, 2)
SLOW = ("vrkn", 128)  # (method, context length) stopped by the wall clock
PROBE_LEVEL = {"kalmamba": 0.9, "rssm": 0.8, "vrkn": 0.85, "sac": 0.55}
MEAN_LEVEL = {"kalmamba": 800, "rssm": 700, "vrkn": 820, "sac": 300, "dreamerv3": 600, "kalmamba_no_mamba": 450,
              "kalmamba_no_dropout": 700, "kalmamba_no_reg": 650}


def all_runs(study: dict) -> list[tuple]:
    keys = set()
    for g in study["experiments"].values():
        keys |= {(g["obs"], t, m, c, s) for t in g["tasks"] for m in g["methods"] for c in g["context_lengths"]
                 for s in study["seeds"]}
    return sorted(keys)


def write_run(d: Path, key: tuple, ev: pd.DataFrame, done: dict | None) -> None:
    d.mkdir(parents=True)
    obs, task, method, ctx, seed = key
    (d / "config.json").write_text(json.dumps({"obs": obs, "task": task, "method": method, "context_length": ctx,
                                               "seed": seed, "provenance": "synthetic test fixture"}))
    ev.assign(return_std=10.0, episodes=5).to_csv(d / "eval.csv", index=False)
    pd.DataFrame({"env_step": ev["env_step"], "wall_clock_s": ev["wall_clock_s"], "updates": ev["env_step"] // 2,
                  "loss": 1.0, "fps": 100.0}).to_csv(d / "train.csv", index=False)
    if obs != "pixels":
        pd.DataFrame({"env_step": ev["env_step"],
                      "features_r2": PROBE_LEVEL[method] - 0.02 * seed + ev["env_step"] / 1e6,
                      "observation_r2": 0.55 + 0.01 * seed}).to_csv(d / "probe.csv", index=False)
    if done is not None:
        (d / "DONE").write_text(json.dumps(done))


def make_study(root: Path, study: dict = STUDY) -> tuple[dict, dict]:
    """Write the synthetic study under root; returns (study config, truth: run key -> eval DataFrame of the
    complete runs, columns env_step, wall_clock_s, return)."""
    rng = np.random.default_rng(1234)
    truth = {}
    for key in all_runs(study):
        obs, task, method, ctx, seed = key
        level = float(np.clip(MEAN_LEVEL[method] + rng.normal(0, 120), 0, 1000))
        if key == MISSING:
            continue
        sec_per_step = 0.1 * (1 + ctx / 128)  # 10k steps: 0.35 h (ctx 32) to 0.56 h (ctx 128)
        if (method, ctx) == SLOW:
            sec_per_step = WALL_HOURS * 3600 / 6500  # reaches 6500 env steps within the wall clock
        steps = np.arange(0, BUDGET + 1, EVAL_EVERY)
        reached, reason = BUDGET, "env_steps"
        if steps[-1] * sec_per_step > WALL_HOURS * 3600:
            reached, reason = int(round(WALL_HOURS * 3600 / sec_per_step)), "wall_clock"
            steps = steps[steps <= reached]
        if key == RUNNING:
            steps = steps[steps <= 5000]
        ret = level * (1 - np.exp(-steps / 3000.0))
        ev = pd.DataFrame({"env_step": steps, "wall_clock_s": steps * sec_per_step + 5.0, "return_mean": ret})
        if key == PAST_BUDGET:
            ev = pd.concat([ev, pd.DataFrame({"env_step": [11000, 12000], "wall_clock_s": [9e3, 9.5e3],
                                              "return_mean": [999.0, 999.0]})], ignore_index=True)
        done = None if key == RUNNING else {"final_return": float(ev["return_mean"].iloc[-1]), "env_steps": reached,
                                            "wall_clock_s": reached * sec_per_step + 5.0, "reason": reason}
        run_dir = root / "runs" / obs / task / method / f"ctx{ctx}" / f"seed{seed}"
        write_run(run_dir, key, ev, done)
        if done is not None:
            truth[key] = ev.rename(columns={"return_mean": "return"})
    bench = {"machine": {"cpu": "synthetic", "gpu": None}, "config": {"synthetic": True},
             "results": [{"method": m, "context_length": L, "batch_size": 16, "device": "cpu",
                          "forward_s": f * L, "update_s": 3 * f * L, "peak_mem_mb": 100.0}
                         for m, f in (("rssm", 1e-4), ("vrkn", 2e-4)) for L in (32, 64, 128, 256)]
             + [{"method": "kalmamba", "context_length": L, "batch_size": 16, "device": "cpu",
                 "forward_s": 2e-3 * np.log2(L), "update_s": 6e-3 * np.log2(L), "peak_mem_mb": 100.0}
                for L in (32, 64, 128, 256)]}
    (root / "bench").mkdir(parents=True, exist_ok=True)
    (root / "bench" / "update_step.json").write_text(json.dumps(bench))
    return study, truth


PUBLISHED_EVERY, PUBLISHED_SEEDS = 250, 5


def make_published(path: Path, study: dict = STUDY) -> pd.DataFrame:
    """Write (and return) synthetic published reference rows in the tidy table's columns: method dreamerv3 on the
    pixel tasks, return(step) = level * (1 - exp(-step / 4000)), no context length, no wall clock."""
    rng = np.random.default_rng(99)
    steps = np.arange(PUBLISHED_EVERY, BUDGET + 5 * PUBLISHED_EVERY + 1, PUBLISHED_EVERY)  # runs past the budget
    rows = []
    for task in study["experiments"]["pixels"]["tasks"]:
        for seed in range(PUBLISHED_SEEDS):
            level = float(np.clip(600 + rng.normal(0, 100), 0, 1000))
            ret = level * (1 - np.exp(-steps / 4000.0))
            rows.append(pd.DataFrame({"source": "published", "method": "dreamerv3", "obs": "pixels", "task": task,
                                      "context_length": np.nan, "seed": seed, "env_step": steps,
                                      "wall_clock_s": np.nan, "return": ret, "score": ret / 1000.0,
                                      "complete": True}))
    df = pd.concat(rows, ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return df


# ---------------------------------------------------------------- small studies for the issue-13 cases
SMALL_BUDGET, SMALL_EVERY = 100_000, 20_000


def small_study(seeds: list[int], main: dict, context: dict | None = None) -> dict:
    """A study config with one main experiment (named after its obs) and optionally a context experiment; budget
    100k env steps, an evaluation every 20k, 1 h wall clock."""
    experiments = {main["obs"]: {**main, "context_lengths": [32]}}
    if context:
        experiments["context"] = context
    return {"study": "small", "seeds": seeds, "main_context_length": 32, "experiments": experiments,
            "train": {"env_steps": SMALL_BUDGET, "eval_every": SMALL_EVERY, "wall_clock_hours": 1.0},
            "analysis": {"bootstrap_reps": 50, "seed": 0}}


def ramp(final_return: float, upto: int = SMALL_BUDGET, budget: int = SMALL_BUDGET) -> pd.DataFrame:
    """Evaluations every 20k env steps from 0 to `upto`: return rising linearly to `final_return` at the budget
    (so a run stopped at 40k of a 900 ramp returns 360); 0.02 s of wall clock per env step."""
    steps = np.arange(0, upto + 1, SMALL_EVERY)
    return pd.DataFrame({"env_step": steps, "wall_clock_s": 0.02 * steps + 5.0,
                         "return_mean": final_return * steps / budget})


def write_small_run(root: Path, key: tuple, ev: pd.DataFrame | str | None, reached: int | None = SMALL_BUDGET,
                    reason: str = "env_steps") -> Path:
    """A run directory: eval.csv from a DataFrame (or raw text, or none), DONE with `reached` env steps and the
    stop reason (no DONE if reached is None)."""
    obs, task, method, ctx, seed = key
    d = root / "runs" / obs / task / method / f"ctx{ctx}" / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"obs": obs, "task": task, "method": method, "context_length": ctx,
                                               "seed": seed, "provenance": "synthetic test fixture"}))
    if isinstance(ev, pd.DataFrame):
        ev.assign(return_std=10.0, episodes=5).to_csv(d / "eval.csv", index=False)
    elif isinstance(ev, str):
        (d / "eval.csv").write_text(ev)
    if reached is not None:
        (d / "DONE").write_text(json.dumps({"final_return": 0.0, "env_steps": reached,
                                            "wall_clock_s": 0.02 * reached + 5.0, "reason": reason}))
    return d
