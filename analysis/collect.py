"""Collect run directories into the tidy scores table (`scores.csv`) and the run list (`runs.csv`,
`incomplete.csv`).

Layout read: `<results>/runs/<obs>/<task>/<method>/ctx<L>/seed<S>/{config.json, eval.csv, DONE}`.
- `scores.csv`: one row per evaluation of every run found, complete or not (contract in docs/architecture.md);
  normalised score = return / 1000 (DeepMind Control returns lie in [0, 1000]).
- `runs.csv`: one row per run found or expected, with its status: `complete` (has DONE), `running` (directory
  without DONE) or `missing` (expected by the study config, no directory).
- `incomplete.csv`: the rows of `runs.csv` whose status is not `complete`. Nothing is dropped silently.
- `published.csv`: one row per published score file asked for (`--published`): `loaded` (with its row count),
  or `unavailable` (fetched without a network: the workflow's copy is a note saying so), and why.
Malformed input is missing data, never a number (analysis/inputs.py): a value of eval.csv that is not a finite
number (or out of range: a negative env step or wall clock, a return outside [0, 1000]), a row with the wrong
field count, a repeated or backwards env step, and a DONE value that is not a finite number are left out with a
warning naming the file and line (a wall clock that goes back: that value missing).
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

from analysis.inputs import Numeric, lines_text, read_checked_csv
from rl.io import atomic_to_csv

log = logging.getLogger(__name__)

MAX_RETURN = 1000.0  # DMC: score = return / 1000
SCORE_COLUMNS = ["source", "method", "obs", "task", "context_length", "seed",
                 "env_step", "wall_clock_s", "return", "score", "complete"]
RUN_COLUMNS = ["path", "obs", "task", "method", "context_length", "seed", "status", "expected", "n_evals",
               "last_env_step", "last_wall_clock_s", "done_env_steps", "done_wall_clock_s", "done_reason"]
RUN_KEY = ["obs", "task", "method", "context_length", "seed"]
PUBLISHED_STATUS_COLUMNS = ["file", "obs", "status", "rows", "note"]
# eval.csv (rl/rundir.py, integrations/dreamerv3/adapter.py): what a usable row holds
EVAL_COLUMNS = {"env_step": Numeric(lo=0, required=True),
                "wall_clock_s": Numeric(lo=0, may_be_empty=True),  # empty: unknown (converted DreamerV3 logs)
                "return": Numeric(lo=0, hi=MAX_RETURN + 1e-6, required=True)}
DONE_NUMBERS = ("env_steps", "wall_clock_s")
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
    """eval.csv's valid rows as (env_step, wall_clock_s, return), by env step; empty if the run has not evaluated
    yet. Malformed rows and values: left out / missing, with a warning naming the line (analysis/inputs.py)."""
    path = run_dir / "eval.csv"
    ev = read_checked_csv(path, EVAL_COLUMNS, increasing="env_step", rename={"return_mean": "return"})
    back = ev["wall_clock_s"] < ev["wall_clock_s"].cummax()  # the wall clock of a run never goes back
    if back.any():
        log.warning("%s: %s: wall_clock_s goes back to an earlier time; treated as missing", path,
                    lines_text(ev.loc[back, "line"].astype(int).tolist()))
        ev.loc[back, "wall_clock_s"] = np.nan
    return ev[["env_step", "wall_clock_s", "return"]].reset_index(drop=True)


def read_done(run_dir: Path) -> dict | None:
    """The DONE marker's JSON, or None if the run has no DONE. Only valid values are kept: env_steps and
    wall_clock_s finite numbers >= 0, reason a string; anything else is left out with a warning (the run still
    counts as complete)."""
    path = run_dir / "DONE"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text() or "{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s: not JSON; the run counts as complete, its env steps as unknown", path)
        return {}
    if not isinstance(data, dict):
        log.warning("%s: not a JSON object; the run counts as complete, its env steps as unknown", path)
        return {}
    done = {}
    for key in DONE_NUMBERS:
        value = data.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value >= 0
        if ok:
            done[key] = float(value)
        elif key in data and value is not None:
            log.warning("%s: %s=%r is not a finite number >= 0; treated as missing", path, key, value)
    if isinstance(data.get("reason"), str):
        done["reason"] = data["reason"]
    elif data.get("reason") is not None:
        log.warning("%s: reason=%r is not a string; treated as missing", path, data["reason"])
    return done


def check_config(run_dir: Path, key: tuple) -> None:
    """The run's config.json (if any) must agree with its path on obs/task/method/context_length/seed."""
    path = run_dir / "config.json"
    if not path.exists():
        return
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s: not JSON; the run is known by its directory only", path)
        return
    if not isinstance(cfg, dict):
        log.warning("%s: not a JSON object; the run is known by its directory only", path)
        return
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
            log.warning("%s: complete (DONE) but without a usable evaluation; left out of every estimate", d)
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


PUBLISHED_CSV_COLUMNS = {"env_step": Numeric(lo=0, required=True),
                         "return": Numeric(lo=0, hi=MAX_RETURN + 1e-6, required=True),
                         "score": Numeric(lo=0, hi=1 + 1e-9, may_be_empty=True),
                         "wall_clock_s": Numeric(lo=0, may_be_empty=True),
                         "context_length": Numeric(lo=0, may_be_empty=True),
                         "seed": Numeric(lo=0, may_be_empty=True)}


def load_published(files: Iterable[str | Path], tasks: Iterable[str] | None = None,
                   bin_every: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Published reference scores as rows of the tidy table (source = "published"), and their status
    (PUBLISHED_STATUS_COLUMNS: one row per file).

    A `.csv` file is read as a tidy table (the columns of SCORE_COLUMNS; context_length and seed may be empty;
    malformed rows and values are left out with a warning, as in eval.csv); any other file (DreamerV3's
    `scores/*.json.gz`, a path or URL) goes through `analysis.published.load_published(path, tasks=...,
    bin_every=...)`: only the given tasks (the study's; None: all), points averaged into bins of `bin_every` env
    steps (the study's eval_every; None: as published). A file that cannot be had (a URL without a network, or the
    workflow's note saying so) is `unavailable`: a warning, no rows, and the figures say so.
    Published rows count as complete; their context length is left empty."""
    from analysis.published import PublishedUnavailable, obs_of
    from analysis.published import load_published as load

    parts, status = [], []
    for f in files:
        name = Path(str(f)).name
        if str(f).endswith(".csv"):
            part = read_checked_csv(f, PUBLISHED_CSV_COLUMNS, text=["source", "method", "obs", "task", "complete"],
                                    required_text=["method", "obs", "task"]).drop(columns="line")
            if (part["source"] == "").any():
                part.loc[part["source"] == "", "source"] = "published"
            if tasks is not None:
                part = part[part["task"].isin(list(tasks))]
            obs = ",".join(sorted(set(part["obs"])))
        else:
            try:
                part = load(f, tasks=tasks, bin_every=bin_every)
            except PublishedUnavailable as e:
                log.warning("published scores %s unavailable (%s); the figures are drawn without them", name, e)
                status.append(dict(file=name, obs=obs_of(name), status="unavailable", rows=0, note=str(e)))
                continue
            obs = obs_of(name)
        parts.append(check_published(part, f))
        status.append(dict(file=name, obs=obs, status="loaded", rows=len(part), note=""))
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=SCORE_COLUMNS)
    return rows, pd.DataFrame(status, columns=PUBLISHED_STATUS_COLUMNS)


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
    """scores.csv (collect's output, perhaps edited by hand): a row whose env_step, return or score is not a finite
    number is left out with a warning naming its line."""
    scores = pd.read_csv(path, dtype={"method": str, "obs": str, "task": str, "source": str})
    bad = pd.Series(False, index=scores.index)
    for col in ("env_step", "return", "score"):
        values = pd.to_numeric(scores[col], errors="coerce")
        bad_col = ~np.isfinite(values.to_numpy(float))
        if bad_col.any():
            log.warning("%s: %s: %s is not a finite number; row(s) left out", path,
                        lines_text((scores.index[bad_col] + 2).tolist()), col)
        scores[col] = values
        bad |= bad_col
    return tidy_scores(scores[~bad])


def read_published_status(results_dir: str | Path) -> pd.DataFrame:
    """published.csv (no file: no published scores asked for)."""
    path = Path(results_dir) / "published.csv"
    if not path.exists():
        return pd.DataFrame(columns=PUBLISHED_STATUS_COLUMNS)
    return pd.read_csv(path, keep_default_na=False, dtype={"file": str, "obs": str, "status": str, "note": str})


def read_runs(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"done_reason": str}, keep_default_na=False, na_values=[""])


def write_collect(results_dir: str | Path, scores: pd.DataFrame, runs: pd.DataFrame,
                  published: pd.DataFrame | None = None, probe: pd.DataFrame | None = None) -> list[Path]:
    results_dir = Path(results_dir)
    published = pd.DataFrame(columns=PUBLISHED_STATUS_COLUMNS) if published is None else published
    probe = pd.DataFrame(columns=PROBE_COLUMNS) if probe is None else probe
    return [atomic_to_csv(scores, results_dir / "scores.csv"),
            atomic_to_csv(runs, results_dir / "runs.csv"),
            atomic_to_csv(runs[runs["status"] != "complete"], results_dir / "incomplete.csv"),
            atomic_to_csv(published[PUBLISHED_STATUS_COLUMNS], results_dir / "published.csv"),
            atomic_to_csv(probe, results_dir / "probe.csv")]
