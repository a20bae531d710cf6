"""DreamerV3's JSONL logs -> kalbench's run directory (docs/architecture.md, "Run directory contract").

The log format (danijar/elements 3.22, `elements/logger.py`, class `JSONLOutput`, as DreamerV3's
`dreamerv3/main.py:make_logger` sets it up at the pinned commit): each `Logger.write()` appends one JSON object per
distinct step, `{"step": <int>, "<metric name>": <float>, ...}`, to `<logdir>/metrics.jsonl` (every scalar) and to
`<logdir>/scores.jsonl` (only names matching `episode/score`). `step` is the agent-step counter times the suite's
action repeat (`env.<suite>.repeat`), i.e. environment steps. Non-finite values are written as `NaN`/`Infinity`
(Python's json). Two values of one name at the same step keep only the last one. The driver runs its callbacks
env by env, each after counting that env's step, so episodes of parallel envs that end together still get
distinct steps (400, 402, ...: the xs of DreamerV3's published dmc_vision file step by 2 the same way).

DreamerV3's own scripts do not evaluate on an env-step schedule, so the launcher (`integrations.dreamerv3.launch`)
logs each evaluation as aggregate scalars under the names in `EVAL_KEYS`, which this module turns into eval.csv;
logs of DreamerV3's unmodified training script carry only training-episode scores, which `eval_from_scores` bins
(recorded as such in config.json).

Non-finite values (a diverged run logs `NaN`/`Infinity`, or a value that is not a number at all) never reach a
kalbench file as a number: an evaluation or a training-episode score whose return is not finite is skipped with
a warning naming the log line's step; any other value that is not finite (wall clock, return_std, a loss, fps)
is written as an empty cell (missing), with a warning; DONE writes `null` for a value it does not know.

Every file is written with rl/io.py (temp file in the same directory, fsync, rename). This module needs pandas,
numpy and the standard library only (no torch; eval columns and provenance from rl/run_contract.py): it runs in
DreamerV3's environment and in kalbench's.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from rl.io import atomic_to_csv, atomic_write_text
from rl.run_contract import EVAL_COLUMNS, provenance

log = logging.getLogger(__name__)
DONE_REASONS = ("env_steps", "wall_clock")

# Names the launcher logs through DreamerV3's logger (one set per evaluation, one per log interval).
EVAL_KEYS = {
    "return_mean": "kalbench/eval/return_mean",
    "return_std": "kalbench/eval/return_std",
    "episodes": "kalbench/eval/episodes",
    "wall_clock_s": "kalbench/eval/wall_clock_s",
}
WALL_CLOCK_KEY = "kalbench/wall_clock_s"
UPDATES_KEY = "kalbench/updates"
TRAIN_RETURN_KEY = "kalbench/train_return"
FPS_KEY = "kalbench/fps"  # environment steps per second over the last log interval
# DreamerV3's own names.
LOSS_PREFIX = "train/loss/"
SCORE_KEY = "episode/score"
POLICY_FPS_KEY = "fps/policy"  # agent steps per second (embodied/run/train.py)


# ---------------------------------------------------------------- values
def finite(value: Any) -> float | None:
    """The value as a finite float, or None (missing, NaN, +-inf, a bool, text, anything not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def missing_if_not_finite(table: pd.DataFrame, what: str, skip: Iterable[str] = ("env_step",)) -> pd.DataFrame:
    """Every value of `table` that is not a finite number (outside `skip`) -> NaN (an empty CSV cell), with one
    warning per column naming the env steps."""
    table = table.copy()
    for col in table.columns:
        if col in skip:
            continue
        values = [finite(v) for v in table[col]]
        bad = [step for step, v, raw in zip(table["env_step"], values, table[col])
               if v is None and not (raw is None or (isinstance(raw, float) and math.isnan(raw)))]
        if bad:
            log.warning("%s: %s is not a finite number at env step(s) %s; written as missing", what, col, bad[:10])
        table[col] = [math.nan if v is None else v for v in values]
    return table


# ---------------------------------------------------------------- reading
def read_jsonl_text(text: str, origin: str = "<text>") -> list[dict[str, Any]]:
    """The records of a JSONL log's text, in order. A torn last line (the writer died while appending) is
    dropped; a bad line anywhere else is an error naming it."""
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines) and not text.endswith("\n"):
                break
            raise ValueError(f"{origin}:{number}: not a JSON line ({e})") from e
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{origin}:{number}: a DreamerV3 log line is an object with a 'step', got {line[:80]!r}")
        records.append(record)
    return records


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """`read_jsonl_text` of a file; a missing file is an empty log."""
    path = Path(path)
    if not path.exists():
        return []
    return read_jsonl_text(path.read_text(), str(path))


def truncate_jsonl(path: str | Path, max_step: int) -> int:
    """Drop the lines of a JSONL log whose step is after `max_step` (a run resumed from its checkpoint at
    `max_step` redoes those steps and logs them again); rewrites the file atomically. Returns the lines dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    records, text = read_jsonl(path), path.read_text()
    keep = [r for r in records if int(r["step"]) <= max_step]
    if len(keep) == len(records) and (text == "" or text.endswith("\n")):
        return 0  # nothing to drop, no torn last line
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return len(records) - len(keep)


def eval_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """eval.csv from the launcher's evaluation records: one row per evaluation, by env step. An evaluation
    logged twice at one step (a run resumed from a checkpoint older than its last log lines) keeps the last."""
    rows = {}
    for r in records:
        if EVAL_KEYS["return_mean"] in r:
            step = int(r["step"])
            if finite(r[EVAL_KEYS["return_mean"]]) is None:
                log.warning("evaluation at env step %d: return %r is not a finite number; skipped", step,
                            r[EVAL_KEYS["return_mean"]])
                rows.pop(step, None)
                continue
            rows[step] = {
                "env_step": step,
                "wall_clock_s": r.get(EVAL_KEYS["wall_clock_s"], math.nan),
                "return_mean": r[EVAL_KEYS["return_mean"]],
                "return_std": r.get(EVAL_KEYS["return_std"], math.nan),
                "episodes": int(finite(r.get(EVAL_KEYS["episodes"], 0)) or 0),
            }
    table = pd.DataFrame([rows[k] for k in sorted(rows)], columns=EVAL_COLUMNS)
    table = missing_if_not_finite(table, "eval", skip=("env_step", "episodes"))
    return table.astype({"env_step": "int64", "episodes": "int64"})


def eval_from_scores(records: Iterable[dict[str, Any]], every: int) -> pd.DataFrame:
    """eval.csv from training-episode scores (`episode/score`), for logs of DreamerV3's unmodified training
    script, which does not evaluate: the episodes that end in ((k-1)*every, k*every] make the row at env step
    k*every. These are returns of the exploring (training) policy, not evaluations; wall_clock_s is unknown
    (NaN)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    scores = []
    for r in records:
        if SCORE_KEY in r:
            if finite(r[SCORE_KEY]) is None:
                log.warning("training episode at env step %s: score %r is not a finite number; skipped", r["step"],
                            r[SCORE_KEY])
                continue
            scores.append((int(r["step"]), finite(r[SCORE_KEY])))
    if not scores:
        return pd.DataFrame(columns=EVAL_COLUMNS).astype({"env_step": "int64", "episodes": "int64"})
    frame = pd.DataFrame(scores, columns=["step", "score"])
    frame["env_step"] = -(-frame["step"] // every) * every  # ceil to the bin's end
    table = frame.groupby("env_step")["score"].agg(return_mean="mean", return_std=lambda s: s.std(ddof=0),
                                                   episodes="size").reset_index()
    table["wall_clock_s"] = math.nan
    return table[EVAL_COLUMNS].astype({"env_step": "int64", "episodes": "int64"})


def train_table(records: Iterable[dict[str, Any]], action_repeat: int = 1) -> pd.DataFrame:
    """train.csv: one row per log line that has DreamerV3's training losses (`train/loss/<term>` ->
    `loss_<term>`): env_step, wall_clock_s, updates, the losses, train_return, fps (env steps per second; from
    DreamerV3's agent-step `fps/policy` times the action repeat where the launcher's own rate is missing)."""
    rows = {}
    for r in records:
        losses = {f"loss_{k[len(LOSS_PREFIX):]}": v for k, v in r.items() if k.startswith(LOSS_PREFIX)}
        if not losses:
            continue
        fps = r.get(FPS_KEY)
        if fps is None and POLICY_FPS_KEY in r:
            fps = r[POLICY_FPS_KEY] * action_repeat
        rows[int(r["step"])] = {"env_step": int(r["step"]), "wall_clock_s": r.get(WALL_CLOCK_KEY, math.nan),
                                "updates": r.get(UPDATES_KEY, math.nan), **losses,
                                "train_return": r.get(TRAIN_RETURN_KEY, math.nan),
                                "fps": math.nan if fps is None else fps}
    columns = ["env_step", "wall_clock_s", "updates"]
    for row in rows.values():
        columns += [k for k in row if k.startswith("loss_") and k not in columns]
    table = pd.DataFrame([rows[k] for k in sorted(rows)], columns=columns + ["train_return", "fps"])
    return missing_if_not_finite(table, "train")


def last_step(records: Iterable[dict[str, Any]]) -> int:
    """The largest step in the log (0 for an empty log)."""
    return max((int(r["step"]) for r in records), default=0)


# ---------------------------------------------------------------- writing
def _json(data: Any) -> str:
    return json.dumps(data, indent=2, default=_jsonable) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (Path, tuple, set)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_config(rundir: str | Path, config: dict[str, Any], prov: dict[str, Any]) -> Path:
    """config.json of a new run: the resolved config plus provenance; a restart appends to `restarts`."""
    return atomic_write_text(Path(rundir) / "config.json", _json({**config, "provenance": prov, "restarts": []}))


def record_restart(rundir: str | Path, prov: dict[str, Any]) -> Path:
    path = Path(rundir) / "config.json"
    data = json.loads(path.read_text())
    data.setdefault("restarts", []).append(prov)
    return atomic_write_text(path, _json(data))


def write_logs(logdir: str | Path, rundir: str | Path, action_repeat: int = 1,
               scores_every: int | None = None) -> pd.DataFrame:
    """eval.csv and train.csv of `rundir` from the JSONL logs in `logdir`; returns the eval table.

    With `scores_every`, runs without the launcher's evaluations (DreamerV3's own training script) get eval.csv
    from their training-episode scores (`eval_from_scores`)."""
    logdir, rundir = Path(logdir), Path(rundir)
    metrics = read_jsonl(logdir / "metrics.jsonl")
    evals = eval_table(metrics)
    if evals.empty and scores_every:
        evals = eval_from_scores(read_jsonl(logdir / "scores.jsonl"), scores_every)
    atomic_to_csv(evals, rundir / "eval.csv")
    train = train_table(metrics, action_repeat)
    if not train.empty:
        atomic_to_csv(train, rundir / "train.csv")
    return evals


def write_done(rundir: str | Path, evals: pd.DataFrame, env_steps: int, wall_clock_s: float,
               reason: str) -> Path:
    """DONE, the last file of a run: the return of the last evaluation and where the run stopped."""
    if reason not in DONE_REASONS:
        raise ValueError(f"reason must be one of {DONE_REASONS}, got {reason!r}")
    final = finite(evals["return_mean"].iloc[-1]) if len(evals) else None
    summary = {"final_return": final, "env_steps": int(env_steps), "wall_clock_s": finite(wall_clock_s),
               "reason": reason}
    return atomic_write_text(Path(rundir) / "DONE", _json(summary))


# ---------------------------------------------------------------- CLI: a DreamerV3 logdir made elsewhere
def convert(logdir: str | Path, rundir: str | Path, task: str, obs: str, seed: int, action_repeat: int,
            scores_every: int | None, done_reason: str | None) -> pd.DataFrame:
    """A run directory from a finished or running DreamerV3 logdir (config.yaml, metrics.jsonl, scores.jsonl)."""
    import yaml

    logdir, rundir = Path(logdir), Path(rundir)
    if not (logdir / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{logdir} has no metrics.jsonl: not a DreamerV3 logdir")
    dreamer_config = yaml.safe_load((logdir / "config.yaml").read_text()) if (logdir / "config.yaml").exists() else None
    config = {"method": "dreamerv3", "task": task, "obs": obs, "seed": seed, "action_repeat": action_repeat,
              "converted_from": str(logdir.resolve()),
              "eval_source": "kalbench_eval" if eval_table(read_jsonl(logdir / "metrics.jsonl")).size
              else f"training-episode scores binned every {scores_every} env steps",
              "dreamerv3": {"config": dreamer_config}}
    write_config(rundir, config, provenance(seed, "unknown (converted logs)", {}))
    evals = write_logs(logdir, rundir, action_repeat, scores_every)
    if done_reason:
        write_done(rundir, evals, last_step(read_jsonl(logdir / "metrics.jsonl")),
                   float(evals["wall_clock_s"].max()) if evals["wall_clock_s"].notna().any() else math.nan,
                   done_reason)
    return evals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m integrations.dreamerv3.adapter",
                                description="Convert a DreamerV3 logdir into a kalbench run directory.")
    p.add_argument("logdir", help="DreamerV3 logdir (metrics.jsonl, scores.jsonl, config.yaml)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--task", required=True, help="kalbench task name, e.g. walker-walk")
    p.add_argument("--obs", required=True, choices=["pixels", "state", "noisy_state"])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--action-repeat", type=int, default=1, help="to turn DreamerV3's agent-step fps into env steps")
    p.add_argument("--scores-every", type=int, default=None,
                   help="without the launcher's evaluations: bin training-episode scores every N env steps")
    p.add_argument("--done", choices=DONE_REASONS, default=None, help="also write DONE, with this reason")
    a = p.parse_args(argv)
    evals = convert(a.logdir, a.out, a.task, a.obs, a.seed, a.action_repeat, a.scores_every, a.done)
    print(f"{a.out}: {len(evals)} evaluation rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
