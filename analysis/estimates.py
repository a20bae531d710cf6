"""Aggregate estimates with rliable (Agarwal et al. 2021): stratified-bootstrap confidence intervals.

Definitions used throughout (all in normalised score = return / 1000):
- Budget B: the study's `train.env_steps` (without a config: the env steps most often reached by the runs of the
  experiment that stopped at their budget, DONE reason "env_steps"). An evaluation counts as "within the budget"
  if env_step <= 1.01 * B (1% slack for an evaluation that lands a few steps past the budget, e.g. through action
  repeat).
- Final score of a run: its last evaluation within the budget. Only complete runs (DONE) enter the estimates.
- Short runs: in an env-step experiment ("main": the runs are compared at the budget B) a run that did not get
  there is left out of the final scores, the aggregates, the profiles, P(improvement) and the curves (a curve is
  the IQM over one fixed set of runs; a short run would cut every run's curve at its last step), and is counted
  and named in the coverage table and a warning. Short: DONE's env steps (without them: the last evaluation)
  < B (e.g. stopped by the wall clock), or the last evaluation within the budget more than one evaluation
  interval before B (the final evaluations missing or malformed); published runs: the last point < B, or more
  than one interval before it. In a wall-clock experiment ("context", Fig. 5) a run stopped by the wall clock has
  reached its budget: it is scored at its last evaluation and drawn in every figure.
- Fewer than 2 runs in a cell (a task's runs, a score matrix's runs per task, either side of P(improvement)):
  no interval can be estimated (a bootstrap of one run is that run: a zero-width "CI"); the point estimate is
  kept, ci_low / ci_high are empty (NaN) and n_runs says how many runs there are.
- Score matrix of a method: (runs x tasks) over the experiment's tasks. rliable needs the same number of runs
  per task: with n = the smallest number of complete runs of any task, each task contributes its n
  lowest-numbered seeds (the runs left out are logged). A method without a complete run on some task is left
  out of the aggregates of that experiment (still in the per-task estimates).
- Curves (sample efficiency): each run's evaluations are linearly interpolated onto a common grid, the
  multiples of the evaluation interval (`train.eval_every`, else the median gap between evaluations) between
  the latest first evaluation and the earliest last evaluation of the runs in the group (capped at the budget);
  wall-clock curves use a grid of hours in steps of 1/50 of the wall-clock budget (or of the longest run, when
  that is shorter). At each grid point the IQM
  across runs x tasks with a pointwise 95% CI.
- Belief probe (rl/probe.py; experiments on `state` / `noisy_state`): per run its last probe row within the
  budget; per method, task and input (`features`: the agent's features, `observation`: the raw observation) the
  mean R^2 over runs with a 95% stratified-bootstrap CI (rliable's aggregate_mean), and over all tasks (task
  "aggregate", a rectangular runs x tasks matrix as above) where the experiment has several.
Every rliable call gets one method's data and is preceded by `np.random.seed(seed)` (rliable resamples with
numpy's global generator), so each estimate is reproducible and independent of which other methods are present.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rliable import library, metrics

from analysis.collect import RUN_KEY
from analysis.plan import ESTIMATE_FILES, PUBLISHED_SUFFIX, Experiment, sort_methods
from rl.io import atomic_to_csv
from rl.methods import BASELINE, REFERENCE

log = logging.getLogger(__name__)

METRICS = ("IQM", "Median", "Mean", "Optimality gap")
TAUS = np.linspace(0.0, 1.0, 101)  # performance-profile thresholds (normalised score)
BUDGET_SLACK = 1.01
WALL_CLOCK_POINTS = 50
MIN_RUNS_FOR_CI = 2  # a bootstrap over one run has zero width: no interval below this many runs
REPS, SEED = 2000, 0
COLUMNS = {  # estimates/<name>.csv
    "final": ["experiment", "source", "method", "context_length", "task", "seed", "env_step", "return", "score",
              "env_steps_reached", "wall_clock_s_reached"],
    "aggregate": ["experiment", "method", "context_length", "metric", "estimate", "ci_low", "ci_high", "n_runs",
                  "n_tasks", "reps", "seed"],
    "per_task": ["experiment", "method", "context_length", "task", "metric", "estimate", "ci_low", "ci_high",
                 "n_runs"],
    "profiles": ["experiment", "method", "context_length", "tau", "fraction", "ci_low", "ci_high", "n_runs"],
    "improvement": ["experiment", "context_length", "method_x", "method_y", "probability", "ci_low", "ci_high",
                    "n_runs_x", "n_runs_y", "n_tasks"],
    "curves": ["experiment", "method", "context_length", "task", "x_kind", "x", "iqm", "ci_low", "ci_high",
               "n_runs"],
    "coverage": ["experiment", "expected_runs", "complete_runs", "short_runs", "no_eval_runs", "left_out",
                 "published_note", "budget_env_steps"],
    "probe": ["experiment", "method", "context_length", "task", "input", "estimate", "ci_low", "ci_high", "n_runs",
              "env_step"],
}
PROBE_INPUTS = ("features", "observation")


@dataclass(frozen=True)
class Settings:
    reps: int = REPS
    seed: int = SEED
    env_steps: int | None = None          # budget B (study train.env_steps)
    eval_every: int | None = None         # env-step grid spacing (study train.eval_every)
    wall_clock_hours: float | None = None  # wall-clock budget (study train.wall_clock_hours)

    @classmethod
    def from_config(cls, study_cfg: dict | None, reps: int | None = None, seed: int | None = None) -> "Settings":
        cfg = study_cfg or {}
        train, ana = cfg.get("train") or {}, cfg.get("analysis") or {}
        return cls(reps=int(reps if reps is not None else ana.get("bootstrap_reps", REPS)),
                   seed=int(seed if seed is not None else ana.get("seed", SEED)),
                   env_steps=train.get("env_steps"), eval_every=train.get("eval_every"),
                   wall_clock_hours=train.get("wall_clock_hours"))

    def __post_init__(self):
        if self.reps < 1:
            raise ValueError(f"reps: need >= 1 bootstrap replications, got {self.reps}")
        for name in ("env_steps", "eval_every", "wall_clock_hours"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}: must be > 0, got {value}")


# ---------------------------------------------------------------- rliable, seeded
def aggregate_metrics(scores: np.ndarray) -> np.ndarray:
    """IQM, median, mean and optimality gap (threshold 1) of a (runs x tasks) matrix, in METRICS order."""
    return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_median(scores),
                     metrics.aggregate_mean(scores), metrics.aggregate_optimality_gap(scores, 1.0)])


def iqm_per_point(scores: np.ndarray) -> np.ndarray:
    """IQM at each grid point of a (runs x tasks x points) array: equals
    `[metrics.aggregate_iqm(scores[..., i]) for i in range(points)]` (scipy's trim_mean with 25% cut at each end of
    the runs x tasks values), vectorised with one sort instead of one scipy call per point."""
    flat = np.sort(scores.reshape(-1, scores.shape[-1]), axis=0)
    cut = int(0.25 * flat.shape[0])
    return flat[cut:flat.shape[0] - cut].mean(axis=0)


def n_runs(data) -> int:
    """Runs per task of one method's data (an array runs x tasks x ..., or a list of them: the fewest)."""
    return min(d.shape[0] for d in data) if isinstance(data, (list, tuple)) else data.shape[0]


def interval_estimate(data, func, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(point estimate, 2 x ... CI) of func on one method's data (an array, or a list of arrays); the CI is NaN
    where there are fewer than MIN_RUNS_FOR_CI runs per task."""
    np.random.seed(seed)
    point, ci = library.get_interval_estimates({"m": data}, func, reps=reps)
    ci = np.asarray(ci["m"], dtype=float).reshape(2, -1)
    return np.atleast_1d(point["m"]), ci if n_runs(data) >= MIN_RUNS_FOR_CI else np.full_like(ci, np.nan)


def performance_profile(scores: np.ndarray, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Score distribution (fraction of runs with score > tau, tau in TAUS) and its 2 x len(TAUS) CI (NaN with
    fewer than MIN_RUNS_FOR_CI runs per task)."""
    np.random.seed(seed)
    profile, ci = library.create_performance_profile({"m": scores}, TAUS, reps=reps)
    ci = np.asarray(ci["m"], dtype=float)
    return profile["m"], ci if n_runs(scores) >= MIN_RUNS_FOR_CI else np.full_like(ci, np.nan)


# ---------------------------------------------------------------- which rows, which runs
def experiment_rows(scores: pd.DataFrame, exp: Experiment) -> pd.DataFrame:
    """Evaluations of the experiment's complete runs, plus published references of the same observation type
    and tasks (main experiments only; method renamed '<method> (published)', context length set to the
    experiment's)."""
    s = scores[scores["obs"].eq(exp.obs) & scores["task"].isin(exp.tasks) & scores["complete"]]
    runs = s[s["source"].eq("run") & s["method"].isin(exp.methods)
             & s["context_length"].isin(exp.context_lengths) & s["seed"].isin(exp.seeds)]
    if exp.kind != "main":
        return runs
    pub = s[s["source"].eq("published")].copy()
    pub["method"] = pub["method"] + PUBLISHED_SUFFIX
    pub["context_length"] = exp.context_lengths[0]
    pub["seed"] = pub["seed"].fillna(0)
    return pd.concat([runs, pub], ignore_index=True)


def published_on_grid(rows: pd.DataFrame, step: float) -> pd.DataFrame:
    """Published references onto the study's evaluation schedule: published curves are logged per training episode
    (DreamerV3: every few thousand env steps, one episode each), ours every `step` env steps over several episodes.
    Each published point at env step s goes to the grid point ceil(s / step) * step, and the points of one
    (method, task, seed) at the same grid point are averaged. Rows of our own runs are returned unchanged."""
    pub = rows["source"].eq("published")
    if not pub.any():
        return rows
    p = rows[pub].copy()
    p["env_step"] = np.ceil(p["env_step"].to_numpy(float) / step - 1e-9) * step
    keys = ["source", "method", "obs", "task", "context_length", "seed", "env_step"]
    p = p.groupby(keys, dropna=False, as_index=False).agg(
        {"wall_clock_s": "mean", "return": "mean", "score": "mean", "complete": "all"})
    return pd.concat([rows[~pub], p], ignore_index=True)


def budget(rows: pd.DataFrame, settings: Settings, done: pd.DataFrame | None = None) -> float:
    """The env-step budget B: the study's train.env_steps; without a config, the env steps most often reached by
    the runs that stopped at their budget (DONE reason "env_steps"), else the last evaluation of any run."""
    if settings.env_steps:
        return float(settings.env_steps)
    if done is not None and "done_reason" in done:
        reached = done.loc[done["done_reason"].eq("env_steps"), "done_env_steps"].dropna()
        if len(reached):
            return float(reached.mode().max())
    return float(rows.loc[rows["source"].eq("run"), "env_step"].max())


def final_scores(rows: pd.DataFrame, b: float, done: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run: its last evaluation within the budget b, and the env steps / wall-clock seconds the run
    reached (DONE's numbers where `done` has them: a run trains on after its last evaluation)."""
    keys = ["source", "method", "context_length", "task", "seed"]
    rows = rows.sort_values("env_step", kind="stable")
    within = rows[rows["env_step"] <= BUDGET_SLACK * b]
    final = within.groupby(keys, dropna=False).tail(1)[keys + ["env_step", "return", "score"]]
    reached = rows.groupby(keys, dropna=False).tail(1)[keys + ["env_step", "wall_clock_s"]].rename(
        columns={"env_step": "env_steps_reached", "wall_clock_s": "wall_clock_s_reached"})
    lost = reached.merge(final[keys], how="left", on=keys, indicator=True)
    for (source, method), r in lost[lost["_merge"] == "left_only"].groupby(["source", "method"]):
        log.warning("%s %s: %d run(s) without an evaluation within the budget of %g env steps (left out): %s",
                    source, method, len(r), b, r[["task", "context_length", "seed"]].to_dict("records")[:5])
    if done is not None and len(done):
        d = done.assign(source="run")[keys + ["done_env_steps", "done_wall_clock_s"]]
        d = d.astype({"context_length": "Int64", "seed": "Int64"})
        reached = reached.merge(d, how="left", on=keys)
        reached["env_steps_reached"] = reached["done_env_steps"].fillna(reached["env_steps_reached"])
        reached["wall_clock_s_reached"] = reached["done_wall_clock_s"].fillna(reached["wall_clock_s_reached"])
        reached = reached.drop(columns=["done_env_steps", "done_wall_clock_s"])
    final = final.merge(reached, on=keys, how="left")
    return final.sort_values(keys).reset_index(drop=True)


RUN_ID = ["source", "method", "context_length", "task", "seed"]


def short_runs(rows: pd.DataFrame, b: float, step: float, done: pd.DataFrame | None = None) -> pd.DataFrame:
    """The runs of `rows` that did not get to the budget b (module docstring, "Short runs"): one row per run with
    RUN_ID, `reached` (env steps: DONE's, else the last evaluation's), `last_eval` (the last evaluation within the
    budget; NaN if none) and `reason` (DONE's stop reason; "" for published runs)."""
    ordered = rows.sort_values("env_step", kind="stable")
    last = ordered.groupby(RUN_ID, dropna=False)["env_step"].max().rename("reached")
    within = ordered[ordered["env_step"] <= BUDGET_SLACK * b].groupby(RUN_ID, dropna=False)["env_step"].max()
    runs = pd.concat([last, within.rename("last_eval")], axis=1).reset_index()
    runs["reason"] = ""
    if done is not None and len(done):
        d = done.assign(source="run")[RUN_ID + ["done_env_steps", "done_reason"]]
        d = d.astype({"context_length": "Int64", "seed": "Int64"})
        runs = runs.merge(d, how="left", on=RUN_ID)
        runs["reached"] = runs["done_env_steps"].fillna(runs["reached"])
        runs["reason"] = runs["done_reason"].fillna("").astype(str)
        runs = runs.drop(columns=["done_env_steps", "done_reason"])
    short = (runs["reached"] < b) | (runs["last_eval"] < b - step)
    return runs[short.fillna(False)].reset_index(drop=True)


def run_name(r) -> str:
    """'rssm walker-walk ctx32 seed2' (a published run: 'dreamerv3 (published) walker-walk seed2')."""
    ctx = "" if pd.isna(r["context_length"]) or r["source"] == "published" else f" ctx{int(r['context_length'])}"
    return f"{r['method']} {r['task']}{ctx} seed{int(r['seed'])}"


def short_name(r) -> str:
    why = f"{r['reason']} " if r["reason"] else ""
    last = "no evaluation" if pd.isna(r["last_eval"]) else f"last evaluation at {r['last_eval']:g}"
    return f"{run_name(r)} (stopped {why}at {r['reached']:g} env steps, {last})"


def select_runs(final: pd.DataFrame, tasks: tuple[str, ...], label: str = "") -> dict[str, list[int]] | None:
    """Seeds per task for a rectangular (runs x tasks) matrix: the n lowest seeds of each task, n = the
    smallest count; None if some task has no run."""
    seeds = {t: sorted(final.loc[final["task"] == t, "seed"].astype(int)) for t in tasks}
    n = min(len(s) for s in seeds.values())
    if n == 0:
        return None
    for t, s in seeds.items():
        if len(s) > n:
            log.info("%s %s: %d of %d runs used for a rectangular score matrix", label, t, n, len(s))
    return {t: s[:n] for t, s in seeds.items()}


def score_matrix(final: pd.DataFrame, selection: dict[str, list[int]]) -> np.ndarray:
    """(runs x tasks) final scores of the selected seeds; column j = task j of `selection`."""
    by = final.set_index(["task", "seed"])["score"]
    n = len(next(iter(selection.values())))
    return np.array([[by[(t, seeds[i])] for t, seeds in selection.items()] for i in range(n)], dtype=float)


# ---------------------------------------------------------------- curves
def grid_step(rows: pd.DataFrame, settings: Settings) -> float:
    """The env-step grid of the curves: the study's eval_every, else the median gap between our runs' evaluations."""
    if settings.eval_every:
        return float(settings.eval_every)
    rows = rows[rows["source"].eq("run")]
    gaps = rows.sort_values("env_step").groupby(["source", "method", "context_length", "task", "seed"],
                                                dropna=False)["env_step"].diff().dropna()
    gaps = gaps[gaps > 0]
    return float(np.median(gaps)) if len(gaps) else 1.0


def curve_grid(runs: list[pd.DataFrame], x: str, step: float, cap: float) -> np.ndarray:
    lo = max(r[x].iloc[0] for r in runs)
    hi = min(min(r[x].iloc[-1] for r in runs), cap)
    return np.arange(np.ceil(lo / step - 1e-9) * step, hi + 1e-9 * step, step)


def curve_array(rows: pd.DataFrame, selection: dict[str, list[int]], x: str, step: float, cap: float):
    """(grid, runs x tasks x grid) of scores interpolated onto the common grid; (None, None) if it is empty."""
    curves = {}
    for (t, s), r in rows.dropna(subset=[x, "score"]).groupby(["task", "seed"]):
        r = r.sort_values(x).drop_duplicates(x, keep="last")
        curves[(t, int(s))] = r
    if any((t, s) not in curves for t, seeds in selection.items() for s in seeds):
        return None, None  # a run without any value of x (e.g. no wall clock: converted DreamerV3 logs)
    chosen = [[curves[(t, seeds[i])] for t, seeds in selection.items()]
              for i in range(len(next(iter(selection.values()))))]
    grid = curve_grid([r for row in chosen for r in row], x, step, cap)
    if len(grid) == 0:
        return None, None
    arr = np.array([[np.interp(grid, r[x].to_numpy(float), r["score"].to_numpy(float)) for r in row]
                    for row in chosen])
    return grid, arr


# ---------------------------------------------------------------- one experiment
def probe_estimates(probe: pd.DataFrame, exp: Experiment, b: float, settings: Settings) -> list[dict]:
    """Mean R^2 of the belief probe over runs, with CIs, per method, task and input (module docstring)."""
    if probe is None or not len(probe) or not exp.probed:
        return []
    p = probe[probe["obs"].eq(exp.obs) & probe["task"].isin(exp.tasks) & probe["method"].isin(exp.methods)
              & probe["context_length"].isin(exp.context_lengths) & probe["seed"].isin(exp.seeds)
              & probe["complete"].astype(bool) & (probe["env_step"] <= BUDGET_SLACK * b)]
    keys = ["method", "context_length", "task", "seed"]
    final = p.sort_values("env_step", kind="stable").groupby(keys).tail(1)
    out = []
    for (method, ctx), f in final.groupby(["method", "context_length"]):
        ids = dict(experiment=exp.name, method=method, context_length=int(ctx))
        for inp in PROBE_INPUTS:
            col = f"{inp}_r2"
            fi = f.dropna(subset=[col]).rename(columns={col: "score"})
            for task in exp.tasks:
                ft = fi[fi["task"] == task]
                if ft.empty:
                    continue
                point, ci = interval_estimate(ft[["score"]].to_numpy(float), metrics.aggregate_mean,
                                              settings.reps, settings.seed)
                out.append(dict(ids, task=task, input=inp, estimate=point[0], ci_low=ci[0, 0], ci_high=ci[1, 0],
                                n_runs=len(ft), env_step=int(ft["env_step"].max())))
            sel = select_runs(fi, exp.tasks, f"{exp.name}/{method}/probe") if len(exp.tasks) > 1 else None
            if sel is not None:
                m = score_matrix(fi, sel)
                point, ci = interval_estimate(m, metrics.aggregate_mean, settings.reps, settings.seed)
                out.append(dict(ids, task="aggregate", input=inp, estimate=point[0], ci_low=ci[0, 0],
                                ci_high=ci[1, 0], n_runs=m.shape[0], env_step=int(fi["env_step"].max())))
    return out


def estimate_experiment(scores: pd.DataFrame, runs: pd.DataFrame, exp: Experiment, settings: Settings,
                        from_config: bool, published: pd.DataFrame | None = None,
                        probe: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """All estimates of one experiment, as DataFrames named like ESTIMATE_FILES (`probe`: the collected probe
    table, analysis.collect.PROBE_COLUMNS)."""
    rows = experiment_rows(scores, exp)
    out = {k: [] for k in ESTIMATE_FILES}
    out["coverage"] = [coverage(exp, runs, from_config, settings, published)]
    if not rows["source"].eq("run").any():
        log.warning("%s: no complete runs; no estimates", exp.name)
        return _frames(out)
    done = runs[runs["obs"].eq(exp.obs) & runs["task"].isin(exp.tasks) & runs["method"].isin(exp.methods)
                & runs["status"].eq("complete")]
    b = budget(rows, settings, done)
    out["coverage"][0]["budget_env_steps"] = b
    step = grid_step(rows, settings)
    rows = published_on_grid(rows, step)
    if exp.kind == "main":
        short = short_runs(rows, b, step, done)
        if len(short):
            names = [short_name(r) for _, r in short.iterrows()]
            log.warning("%s: %d run(s) short of the env-step budget of %g, left out of the final scores, "
                        "aggregates, profiles, P(improvement) and curves: %s", exp.name, len(short), b,
                        "; ".join(names))
            ours = short[short["source"].eq("run")]
            out["coverage"][0]["short_runs"] = len(ours)
            out["coverage"][0]["left_out"] = "; ".join(filter(None, [out["coverage"][0]["left_out"], *names]))
            if len(ours) < len(short):
                out["coverage"][0]["published_note"] = "; ".join(filter(None, [
                    out["coverage"][0]["published_note"], f"{len(short) - len(ours)} published run(s) end "
                    f"before the budget, left out"]))
            keep = rows.merge(short[RUN_ID].assign(_short=True), how="left", on=RUN_ID)["_short"].isna()
            rows = rows[keep.to_numpy()]
    rows = rows.assign(wall_clock_h=rows["wall_clock_s"] / 3600.0)
    # grid over the budget, or over the span the runs reached when they all stopped well before it
    wall_reached = rows["wall_clock_h"].max()
    wall_step = min(settings.wall_clock_hours or wall_reached, wall_reached) / WALL_CLOCK_POINTS
    final = final_scores(rows, b, done)
    out["final"] += final.assign(experiment=exp.name).to_dict("records")
    rs, seed = settings.reps, settings.seed
    matrices = {}
    groups = [(m, c) for m in sort_methods(final["method"]) for c in exp.context_lengths]
    for method, ctx in groups:
        f = final[(final["method"] == method) & (final["context_length"] == ctx)]
        r = rows[(rows["method"] == method) & (rows["context_length"] == ctx)]
        if f.empty:
            continue
        ids = dict(experiment=exp.name, method=method, context_length=ctx)
        for task in exp.tasks:  # per task: all of its complete runs
            ft = f[f["task"] == task]
            if ft.empty:
                continue
            point, ci = interval_estimate(ft[["score"]].to_numpy(), metrics.aggregate_iqm, rs, seed)
            out["per_task"].append(dict(ids, task=task, metric="IQM", estimate=point[0], ci_low=ci[0, 0],
                                        ci_high=ci[1, 0], n_runs=len(ft)))
            if exp.kind == "main":
                sel = {task: sorted(ft["seed"].astype(int))}
                out["curves"] += curve_rows(r[r["task"] == task], sel, "env_step", step, b, ids, task, settings)
        sel = select_runs(f, exp.tasks, f"{exp.name}/{method}/ctx{ctx}")
        if sel is None:
            log.warning("%s: %s (ctx %s) lacks a complete run on some task; left out of the aggregates",
                        exp.name, method, ctx)
            continue
        m = score_matrix(f, sel)
        matrices[(method, ctx)] = m
        point, ci = interval_estimate(m, aggregate_metrics, rs, seed)
        for i, name in enumerate(METRICS):
            out["aggregate"].append(dict(ids, metric=name, estimate=point[i], ci_low=ci[0, i], ci_high=ci[1, i],
                                         n_runs=m.shape[0], n_tasks=m.shape[1], reps=rs, seed=seed))
        if exp.kind == "main":
            prof, pci = performance_profile(m, rs, seed)
            out["profiles"] += [dict(ids, tau=t, fraction=prof[i], ci_low=pci[0, i], ci_high=pci[1, i],
                                     n_runs=m.shape[0]) for i, t in enumerate(TAUS)]
        out["curves"] += curve_rows(r, sel, "env_step", step, b, ids, "aggregate", settings)
        if exp.kind == "context":
            out["curves"] += curve_rows(r, sel, "wall_clock_h", wall_step, np.inf, ids, "aggregate", settings)
    out["improvement"] = improvement_rows(exp, matrices, settings)
    out["probe"] = probe_estimates(probe, exp, b, settings)
    return _frames(out)


def _frames(out: dict[str, list[dict]]) -> dict[str, pd.DataFrame]:
    return {k: pd.DataFrame(v, columns=COLUMNS[k]) for k, v in out.items()}


def curve_rows(rows, selection, x, step, cap, ids, task, settings) -> list[dict]:
    grid, arr = curve_array(rows, selection, x, step, cap)
    if grid is None:
        log.warning("%s: no common %s range (or a run without %s values) for the curve of %s",
                    ids["experiment"], x, x, dict(ids, task=task))
        return []
    point, ci = interval_estimate(arr, iqm_per_point, settings.reps, settings.seed)
    return [dict(ids, task=task, x_kind=x, x=g, iqm=point[i], ci_low=ci[0, i], ci_high=ci[1, i],
                 n_runs=arr.shape[0]) for i, g in enumerate(grid)]


def improvement_rows(exp: Experiment, matrices: dict, settings: Settings) -> list[dict]:
    """Probability of improvement P(X > Y) (rliable) at each context length: X = REFERENCE (rl.methods: KalMamba)
    against every other method Y with a score matrix (published ones included), then X = every other method of
    ours against Y = BASELINE (rl.methods: plain SAC). Rows in that order."""
    pairs = [(REFERENCE, m, ctx) for (m, ctx) in matrices if m != REFERENCE]
    pairs += [(m, BASELINE, ctx) for (m, ctx) in matrices
              if m not in (REFERENCE, BASELINE) and not m.endswith(PUBLISHED_SUFFIX)]
    rows = []
    for method_x, method_y, ctx in pairs:
        x, y = matrices.get((method_x, ctx)), matrices.get((method_y, ctx))
        if x is None or y is None:
            continue
        point, ci = interval_estimate([x, y], metrics.probability_of_improvement, settings.reps, settings.seed)
        rows.append(dict(experiment=exp.name, context_length=ctx, method_x=method_x, method_y=method_y,
                         probability=point[0], ci_low=ci[0, 0], ci_high=ci[1, 0], n_runs_x=x.shape[0],
                         n_runs_y=y.shape[0], n_tasks=x.shape[1]))
    return rows


def coverage(exp: Experiment, runs: pd.DataFrame, from_config: bool, settings: Settings,
             published: pd.DataFrame | None = None) -> dict:
    """How many of the experiment's runs are complete (expected by the config, or found), how many of those have
    no usable evaluation (left out; named), and the note on unavailable published scores of its observation type
    (main experiments). `short_runs` is filled in by `estimate_experiment`."""
    match = runs[runs["obs"].eq(exp.obs) & runs["task"].isin(exp.tasks) & runs["method"].isin(exp.methods)
                 & runs["context_length"].isin(exp.context_lengths) & runs["seed"].isin(exp.seeds)]
    status = {tuple(r[k] for k in RUN_KEY): r["status"] for _, r in match.iterrows()}
    keys = set(status) | (set(exp.expected_runs()) if from_config else set())
    complete = sum(status.get(k) == "complete" for k in keys)
    no_eval = match[match["status"].eq("complete") & match["n_evals"].fillna(0).eq(0)]
    names = [f"{r['method']} {r['task']} ctx{int(r['context_length'])} seed{int(r['seed'])} (no evaluation)"
             for _, r in no_eval.iterrows()]
    note = ""
    if exp.kind == "main" and published is not None and len(published):
        gone = published[published["status"].eq("unavailable") & published["obs"].isin([exp.obs, ""])]
        if len(gone):
            note = "without published scores: unavailable offline"
            log.warning("%s: drawn without published scores %s (unavailable: %s)", exp.name,
                        ", ".join(gone["file"]), "; ".join(gone["note"]))
    return dict(experiment=exp.name, expected_runs=len(keys), complete_runs=complete, short_runs=0,
                no_eval_runs=len(no_eval), left_out="; ".join(names), published_note=note,
                budget_env_steps=settings.env_steps)


def coverage_note(coverage: pd.DataFrame, experiment: str) -> str:
    """What a figure or table of the experiment must say about its runs: 'incomplete: k of n runs' for missing or
    running runs, 's short of the budget, left out', 'e without evaluations, left out', and the note on
    published scores; '' if nothing is amiss."""
    c = coverage[coverage["experiment"] == experiment] if len(coverage) else coverage
    if c.empty:
        return ""
    c = c.iloc[0]
    k, n = int(c["complete_runs"]), int(c["expected_runs"])
    short, no_eval = (int(c.get(col, 0)) if pd.notna(c.get(col, 0)) else 0 for col in ("short_runs", "no_eval_runs"))
    parts = [f"incomplete: {k} of {n} runs" if k < n else "",
             f"{short} run{'s' if short > 1 else ''} short of the budget, left out" if short else "",
             f"{no_eval} run{'s' if no_eval > 1 else ''} without evaluations, left out" if no_eval else "",
             str(c.get("published_note", "")) if pd.notna(c.get("published_note", "")) else ""]
    return "; ".join(p for p in parts if p)


# ---------------------------------------------------------------- all experiments
def estimate_all(scores: pd.DataFrame, runs: pd.DataFrame, experiments: list[Experiment], settings: Settings,
                 from_config: bool, published: pd.DataFrame | None = None,
                 probe: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """`published`: the status of the published score files (collect's published.csv), for the coverage notes."""
    parts = [estimate_experiment(scores, runs, e, settings, from_config, published, probe) for e in experiments]
    out = {}
    for name in ESTIMATE_FILES:
        frames = [p[name] for p in parts if len(p[name])]
        out[name] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS[name])
    return out


def write_estimates(results_dir: str | Path, estimates: dict[str, pd.DataFrame]) -> list[Path]:
    out = Path(results_dir) / "estimates"
    return [atomic_to_csv(df, out / f"{name}.csv") for name, df in estimates.items()]


def read_estimates(results_dir: str | Path) -> dict[str, pd.DataFrame]:
    d = Path(results_dir) / "estimates"
    out = {name: pd.read_csv(d / f"{name}.csv") for name in ESTIMATE_FILES}
    for col in ("left_out", "published_note"):  # text columns: empty is "", not NaN
        if col in out["coverage"]:
            out["coverage"][col] = out["coverage"][col].fillna("").astype(str)
    return out
