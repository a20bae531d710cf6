"""Collect run directories into the tidy scores table (`scores.csv`) and the run list (`runs.csv`,
`incomplete.csv`).

Layout read: `<results>/runs/<obs>/<task>/<method>/ctx<L>/seed<S>/{config.json, eval.csv, DONE}`.
- `scores.csv`: one row per evaluation of every run found, complete or not (contract in docs/architecture.md);
  normalised score = return / 1000 (DeepMind Control returns lie in [0, 1000]).
- `runs.csv`: one row per run found or expected, with its status: `complete` (has DONE), `running` (directory
  without DONE) or `missing` (expected by the study config, no directory).
- `incomplete.csv`: the rows of `runs.csv` whose status is not `complete`. Nothing is dropped silently.
- `probe.csv`: the belief probe (rl/probe.py) of every run that has one: one row per evaluation, the run's key,
  `complete`, `env_step, features_r2, observation_r2`.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from rl.io import atomic_to_csv

log = logging.getLogger(__name__)

MAX_RETURN = 1000.0  # DMC: score = return / 1000
SCORE_COLUMNS = ["source", "method", "obs", "task", "context_length", "seed",
                 "env_step", "wall_clock_s", "return", "score", "complete"]
RUN_COLUMNS = ["path", "obs", "task", "method", "context_length", "seed", "status", "expected", "n_evals",
               "last_env_step", "last_wall_clock_s", "done_env_steps", "done_wall_clock_s", "done_reason"]
RUN_KEY = ["obs", "task", "method", "context_length", "seed"]
PROBE_COLUMNS = [*RUN_KEY, "complete", "env_step", "features_r2", "observation_r2"]
_CTX, _SEED = re.compile(r"^ctx(\d+)$"), re.compile(r"^seed(\d+)$")


def run_path(runs_root: Path, obs: str, task: str, method: str, context_length: int, seed: int) -> Path:
    return Path(runs_root) / obs / task / method / f"ctx{context_length}" / f"seed{seed}"


def find_runs(runs_root: Path) -> dict[tuple, Path]:
    """Every run directory under runs_root, keyed by (obs, task, method, context_length, seed)."""
    runs = {}
    for d in sorted(Path(runs_root).glob("*/*/*/ctx*/seed*")):
        ctx, seed = _CTX.match(d.parent.name), _SEED.match(d.name)
        if d.is_dir() and ctx and seed:
            obs, task, method = d.parts[-5:-2]
            runs[(obs, task, method, int(ctx[1]), int(seed[1]))] = d
    return runs


def read_evals(run_dir: Path) -> pd.DataFrame:
    """eval.csv as (env_step, wall_clock_s, return); empty if the run has not evaluated yet."""
    path = run_dir / "eval.csv"
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame({"env_step": [], "wall_clock_s": [], "return": []})
    ev = pd.read_csv(path)
    ev = ev.rename(columns={"return_mean": "return"})[["env_step", "wall_clock_s", "return"]]
    bad = ev["return"].isna()
    if bad.any():
        log.warning("%s: %d evaluation(s) without a return ignored", path, int(bad.sum()))
    return ev[~bad].sort_values("env_step", kind="stable").reset_index(drop=True)


def read_done(run_dir: Path) -> dict | None:
    """The DONE marker's JSON ({} if unreadable), or None if the run has no DONE."""
    path = run_dir / "DONE"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text() or "{}")
    except json.JSONDecodeError:
        log.warning("%s: not JSON; the run still counts as complete", path)
        return {}


def check_config(run_dir: Path, key: tuple) -> None:
    """The run's config.json (if any) must agree with its path on obs/task/method/context_length/seed."""
    path = run_dir / "config.json"
    if not path.exists():
        return
    cfg = json.loads(path.read_text())
    for field, want in zip(RUN_KEY, key):
        if field in cfg and str(cfg[field]) != str(want):
            raise ValueError(f"{path}: {field}={cfg[field]!r} but the directory says {want!r}")


def collect(results_dir: str | Path, expected: Iterable[tuple] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, runs) for results_dir/runs; `expected` = run keys the study config asks for (optional)."""
    runs_root = Path(results_dir) / "runs"
    found = find_runs(runs_root)
    expected = set(expected or ())
    score_parts, run_rows = [], []
    for key in sorted(set(found) | expected):
        row = dict(zip(RUN_KEY, key), path=str(run_path(runs_root, *key)), expected=key in expected,
                   n_evals=0, last_env_step=np.nan, last_wall_clock_s=np.nan,
                   done_env_steps=np.nan, done_wall_clock_s=np.nan, done_reason="")
        if key not in found:
            run_rows.append({**row, "status": "missing"})
            continue
        d = found[key]
        check_config(d, key)
        done, ev = read_done(d), read_evals(d)
        row["status"] = "running" if done is None else "complete"
        if done:
            row.update(done_env_steps=done.get("env_steps", np.nan), done_wall_clock_s=done.get("wall_clock_s", np.nan),
                       done_reason=done.get("reason", ""))
        if len(ev):
            row.update(n_evals=len(ev), last_env_step=ev["env_step"].iloc[-1],
                       last_wall_clock_s=ev["wall_clock_s"].iloc[-1])
        elif done is not None:
            log.warning("%s: complete but has no evaluations", d)
        if key not in expected and expected:
            log.info("%s: found but not in the study config", d)
        run_rows.append(row)
        score_parts.append(ev.assign(**dict(zip(RUN_KEY, key)), source="run", complete=done is not None))
    scores = pd.concat(score_parts, ignore_index=True) if score_parts else pd.DataFrame(columns=SCORE_COLUMNS)
    scores["score"] = scores["return"] / MAX_RETURN
    runs = pd.DataFrame(run_rows, columns=RUN_COLUMNS)
    n_bad = int((runs["status"] != "complete").sum())
    if n_bad:
        log.warning("%d of %d runs are not complete (see incomplete.csv)", n_bad, len(runs))
    return tidy_scores(scores), runs


def collect_probe(results_dir: str | Path) -> pd.DataFrame:
    """The probe.csv rows of every run directory under results_dir/runs (PROBE_COLUMNS); runs without one (pixels,
    or no evaluation yet) have no rows."""
    parts = []
    for key, d in find_runs(Path(results_dir) / "runs").items():
        path = d / "probe.csv"
        if path.exists() and path.stat().st_size:
            part = pd.read_csv(path)[PROBE_COLUMNS[-3:]]
            parts.append(part.assign(**dict(zip(RUN_KEY, key)), complete=(d / "DONE").exists()))
    probe = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PROBE_COLUMNS)
    return probe[PROBE_COLUMNS].sort_values([*RUN_KEY, "env_step"], kind="stable").reset_index(drop=True)


def read_probe(path: str | Path) -> pd.DataFrame:
    """probe.csv of the results directory; an empty table (PROBE_COLUMNS) where it does not exist."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=PROBE_COLUMNS)
    return pd.read_csv(path, dtype={"method": str, "obs": str, "task": str})


def tidy_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """The contract's column order and types, sorted; context_length/seed may be empty for published rows."""
    scores = scores[SCORE_COLUMNS].copy()
    for col in ("context_length", "seed"):
        scores[col] = pd.to_numeric(scores[col]).astype("Int64")
    if scores["complete"].isna().any():
        raise ValueError("complete: empty for some rows of the scores table")
    scores["complete"] = scores["complete"].astype(bool)
    return scores.sort_values(["source", "obs", "task", "method", "context_length", "seed", "env_step"],
                              kind="stable").reset_index(drop=True)


def load_published(files: Iterable[str | Path], tasks: Iterable[str] | None = None,
                   bin_every: int | None = None) -> pd.DataFrame:
    """Published reference scores as rows of the tidy table (source = "published").

    A `.csv` file is read as a tidy table (the columns of SCORE_COLUMNS; context_length and seed may be empty);
    any other file (DreamerV3's `scores/*.json.gz`, a path or URL) goes through
    `analysis.published.load_published(path, tasks=..., bin_every=...)`: only the given tasks (the study's; None:
    all), points averaged into bins of `bin_every` env steps (the study's eval_every; None: as published).
    Published rows count as complete; their context length is left empty."""
    parts = []
    for f in files:
        if str(f).endswith(".csv"):
            part = pd.read_csv(f, dtype={"method": str, "obs": str, "task": str, "source": str})
            if tasks is not None:
                part = part[part["task"].isin(list(tasks))]
        else:
            from analysis.published import load_published as load

            part = load(f, tasks=tasks, bin_every=bin_every)
        parts.append(check_published(part, f))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=SCORE_COLUMNS)


def check_published(rows: pd.DataFrame, origin: str | Path = "published rows") -> pd.DataFrame:
    """Published rows in the tidy table's columns: ValueError naming a missing column or a row that is not
    source="published"; `complete` is set to True, `score` recomputed as return / 1000 where it is empty."""
    rows = rows.copy()
    if "source" not in rows:
        rows["source"] = "published"
    for col, default in (("complete", True), ("context_length", np.nan), ("seed", np.nan),
                         ("wall_clock_s", np.nan), ("score", np.nan)):
        if col not in rows:
            rows[col] = default
    missing = [c for c in SCORE_COLUMNS if c not in rows]
    if missing:
        raise ValueError(f"{origin}: published scores lack column(s) {missing}")
    bad = rows.loc[rows["source"] != "published", "source"]
    if len(bad):
        raise ValueError(f"{origin}: source must be 'published' for reference scores, got {bad.iloc[0]!r}")
    rows["complete"] = True
    rows["score"] = rows["score"].fillna(rows["return"] / MAX_RETURN)
    return rows[SCORE_COLUMNS]


def with_published(scores: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """The tidy table of our runs plus published reference rows (checked by `check_published`)."""
    parts = [tidy_scores(df) for df in (scores, check_published(published)) if len(df)]
    return tidy_scores(pd.concat(parts, ignore_index=True)) if parts else tidy_scores(scores)


def read_scores(path: str | Path) -> pd.DataFrame:
    scores = pd.read_csv(path, dtype={"method": str, "obs": str, "task": str, "source": str})
    return tidy_scores(scores)


def read_runs(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"done_reason": str}, keep_default_na=False, na_values=[""])


def write_collect(results_dir: str | Path, scores: pd.DataFrame, runs: pd.DataFrame,
                  probe: pd.DataFrame | None = None) -> list[Path]:
    results_dir = Path(results_dir)
    probe = pd.DataFrame(columns=PROBE_COLUMNS) if probe is None else probe
    return [atomic_to_csv(scores, results_dir / "scores.csv"),
            atomic_to_csv(runs, results_dir / "runs.csv"),
            atomic_to_csv(runs[runs["status"] != "complete"], results_dir / "incomplete.csv"),
            atomic_to_csv(probe, results_dir / "probe.csv")]
