"""End-to-end training time (issue 12, item 4): one whole `python -m rl.train` run per method, exactly as a study
runs it, side by side in one call.

    python -m benchmarks.end_to_end                          # config/validation.yaml, its first experiment
                                                             # (clean cartpole-swingup states), every method, 100k env steps
    python -m benchmarks.end_to_end --methods kalmamba sac --env-steps 20000 --parallel 2 --out /tmp/e2e_20k.json
    python -m benchmarks.end_to_end --config config/default.yaml --experiment noisy_state --workdir /tmp/e2e
    git worktree add ../old-checkout 362eec8                 # then, the same settings on the code of that commit:
    python -m benchmarks.end_to_end --repo ../old-checkout --out results/bench/end_to_end_before.json

Each run gets the run CLI's fields that the study config gives the method (`rl.methods.study_settings`: the
`train:`, `model.<family>:` and `sac:` sections, e.g. `torch_threads: 1` and the validation study's small models),
plus `--method`, `--task`, `--obs`, `--context-length`, `--seed` and, with `--env-steps`, a different budget.
Evaluations (and the belief probe) stay as the study sets them: they are part of a run's time. `--parallel N` runs
N at a time (each run still uses `torch_threads` threads: on a 2-core machine, `--parallel 2` with 1 thread per run
is one core per run, the way the studies run). Run directories go to `--workdir` (default: a temporary folder,
removed afterwards unless a run failed); a run directory that exists there already is an error, so every number is a fresh run.
`--repo DIR` runs `python -m rl.train` of another checkout (its code, with this checkout's reading of the study
config): the same settings timed on, say, the commit before a speed change (its run CLI must accept the flags).

Per method (JSON `results`, one row each):
- `wall_s`: wall-clock seconds from starting the process to its exit (imports, numba's first compile or cache
  load, environment, training, evaluations);
- `cpu_s`: user + system CPU seconds of the process and its threads (os.wait4);
- `run_wall_s`: the run's own training clock (DONE `wall_clock_s`: from the first environment step, over restarts);
- `updates` (gradient updates: the final checkpoint's counter), `final_return` (DONE), `status` ("ok" or
  "failed: ..."). A run with 0 updates (a budget within the random-policy episodes, `initial_episodes`) times only
  start-up, environment and evaluation: the table says so under it.
`summary`: `wall_s` of the reference method (KalMamba) over each other method's, and, for KalMamba, the issue-12
goal (TARGET_S = 360 s for 100k env steps on one core: 1 torch thread, one run per core). Output: a table on stdout
and JSON at `--out` with the machine (benchmarks/machine.py; its `torch_threads` is this process's, the runs' is
`config.torch_threads_per_run`). Every run's settings are checked by the run CLI's own validation before any run
starts. Exit status 2 on a bad argument, config or run setting, 1 if a run failed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from rl import methods
from rl.config import as_flags, first_refused
from rl.io import atomic_write_text
from rl.run_contract import git_commit

TARGET_S = 360.0   # issue 12: KalMamba, 100k env steps on one core, <= 6 min
TARGET_ENV_STEPS = 100_000


SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"


def study_config(path: str) -> dict[str, Any]:
    """The study YAML as a mapping, checked against config/schema.yaml as the workflow checks it (with the schema's
    defaults filled in). ValueError naming the file, and the key and what is wrong with it."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"--config {path}: {' '.join(str(e).split())}") from None
    if not isinstance(config, dict) or not isinstance(config.get("experiments"), dict) or "train" not in config:
        raise ValueError(f"--config {path}: not a study config (needs `experiments:` and `train:`; config/schema.yaml)")
    try:
        validate(config, str(SCHEMA))
    except WorkflowError as e:
        cause = e.__context__
        if not hasattr(cause, "absolute_path"):   # not a jsonschema.ValidationError
            raise
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in cause.absolute_path).lstrip(".")
        raise ValueError(f"--config {path}: {where or 'top level'}: {' '.join(cause.message.split())} "
                         "(config/schema.yaml lists every key a study may have)") from None
    return config


def run_values(config: dict[str, Any], method: str, experiment: dict[str, Any], task: str, ctx: int, seed: int,
               env_steps: int | None, out: Path) -> dict[str, Any]:
    """The RunConfig fields of one benchmark run: the study's settings of `method`, then the run's identity."""
    values = methods.study_settings(config, method)
    if env_steps is not None:
        values["env_steps"] = env_steps
    if "plugin" in values:   # the run may start in another checkout (--repo)
        values["plugin"] = str(Path(values["plugin"]).resolve())
    return {**values, "method": method, "task": task, "obs": experiment["obs"], "context_length": ctx,
            "seed": seed, "out": str(out)}


def final_updates(run_dir: Path) -> int | None:
    """The gradient-update counter of the run's final checkpoint (written at the end of every run), None if absent."""
    from rl.rundir import InvalidCheckpoint, RunDir

    try:
        return int(RunDir(run_dir).load_checkpoint()["counters"]["updates"])
    except (OSError, InvalidCheckpoint, KeyError):
        return None


def finished_row(method: str, run_dir: Path, log: Path, started: float, code: int, usage) -> dict[str, Any]:
    """One result row from a run's exit code, rusage and run directory."""
    row: dict[str, Any] = {"method": method, "wall_s": time.perf_counter() - started,
                           "cpu_s": usage.ru_utime + usage.ru_stime, "run_wall_s": None, "updates": None,
                           "final_return": None, "env_steps": None, "status": "ok"}
    done = run_dir / "DONE"
    if code != 0 or not done.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        row["status"] = f"failed: exit {code}" + (f" ({tail[0][:200]})" if tail else "") + f"; log {log}"
        return row
    info = json.loads(done.read_text())
    row.update(run_wall_s=info.get("wall_clock_s"), final_return=info.get("final_return"),
               env_steps=info.get("env_steps"), updates=final_updates(run_dir))
    return row


def run_all(cases: list[tuple[str, list[str], Path]], parallel: int, workdir: Path, repo: Path) -> list[dict[str, Any]]:
    """Run each (method, argv, run_dir) as a child process in `repo`, `parallel` at a time; rows in the order of
    `cases`."""
    pending, running, rows = list(cases), {}, {}
    try:
        _run_loop(pending, running, rows, parallel, workdir, repo)
    finally:
        for proc, *_ in running.values():   # interrupted: no run outlives the benchmark
            proc.kill()
            proc.wait()
    return [rows[method] for method, _, _ in cases]


def _run_loop(pending: list, running: dict, rows: dict, parallel: int, workdir: Path, repo: Path) -> None:
    while pending or running:
        while pending and len(running) < parallel:
            method, argv, run_dir = pending.pop(0)
            log = workdir / f"{method}.log"
            with open(log, "w") as f:
                proc = subprocess.Popen([sys.executable, "-m", "rl.train", *argv], stdout=f, stderr=subprocess.STDOUT,
                                        cwd=repo)
            running[proc.pid] = (proc, method, run_dir, log, time.perf_counter())
            print(f"{time.strftime('%H:%M:%S')} start {method} (pid {proc.pid})", flush=True)
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        proc, method, run_dir, log, started = running.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)   # reaped here, not by Popen
        rows[method] = finished_row(method, run_dir, log, started, proc.returncode, usage)
        print(f"{time.strftime('%H:%M:%S')} end {method}: {rows[method]['status']}, {rows[method]['wall_s']:.0f} s",
              flush=True)


def summarise(rows: list[dict[str, Any]], env_steps: int, threads: Any) -> dict[str, Any]:
    ok = {r["method"]: r for r in rows if r["status"] == "ok"}
    ref = ok.get(methods.REFERENCE)
    summary: dict[str, Any] = {"reference": methods.REFERENCE, "wall_ratio": {}, "target_s": TARGET_S,
                               "target_applies": env_steps == TARGET_ENV_STEPS and threads == 1}
    if ref is not None:
        summary["wall_ratio"] = {m: ref["wall_s"] / r["wall_s"] for m, r in ok.items() if m != methods.REFERENCE}
        summary["target_met"] = ref["wall_s"] <= TARGET_S if summary["target_applies"] else None
    return summary


def format_table(data: dict[str, Any]) -> str:
    cfg, summary = data["config"], data["summary"]
    lines = [f"end_to_end: {cfg['config']} experiment {cfg['experiment']} ({cfg['obs']}, {cfg['task']}), "
             f"{cfg['env_steps']} env steps, context {cfg['context_length']}, seed {cfg['seed']}, "
             f"{cfg['torch_threads_per_run'] or 'default'} torch thread(s) per run, {cfg['parallel']} run(s) at a time",
             f"{'method':>20} {'wall s':>8} {'cpu s':>8} {'run s':>8} {'updates':>8} {'return':>7}  status"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    for r in data["results"]:
        lines.append(f"{r['method']:>20} {fmt(r['wall_s'], '.0f'):>8} {fmt(r['cpu_s'], '.0f'):>8} "
                     f"{fmt(r['run_wall_s'], '.0f'):>8} {fmt(r['updates'], 'd'):>8} {fmt(r['final_return'], '.0f'):>7}"
                     f"  {r['status']}")
    for m, ratio in summary["wall_ratio"].items():
        lines.append(f"wall time {summary['reference']} / {m}: {ratio:.2f}x")
    idle = [r["method"] for r in data["results"] if r["status"] == "ok" and r["updates"] == 0]
    if idle:
        lines.append(f"note: no gradient update in {', '.join(idle)}: the budget ends within the random-policy "
                     "episodes, so these times are start-up, environment and evaluation only")
    if summary.get("target_met") is not None:
        lines.append(f"{summary['reference']} goal (issue 12): <= {TARGET_S:.0f} s for {TARGET_ENV_STEPS} env steps "
                     f"on one core: {'met' if summary['target_met'] else 'not met'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.end_to_end", description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--config", default="config/validation.yaml", help="study config (default %(default)s)")
    p.add_argument("--experiment", help="one of the study's experiments (default: its first)")
    p.add_argument("--task", help="one of the experiment's tasks (default: its first)")
    p.add_argument("--methods", nargs="+", help="default: the experiment's methods that rl.train trains")
    p.add_argument("--context-length", type=int, help="default: the study's main_context_length, else the "
                                                       "experiment's first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--env-steps", type=int, help="budget of every run (default: the study's train.env_steps)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (default %(default)s)")
    p.add_argument("--workdir", help="where the run directories go (default: a temporary folder, removed after)")
    p.add_argument("--repo", default=".", help="checkout whose rl.train runs (default: this one)")
    p.add_argument("--out", default="results/bench/end_to_end.json", help="JSON output path")
    args = p.parse_args(argv)
    if not (Path(args.repo) / "rl" / "train.py").is_file():
        p.error(f"--repo {args.repo!r}: not a kalbench checkout (no rl/train.py)")
    try:
        config = study_config(args.config)
    except ValueError as e:
        p.error(str(e))
    methods.load_plugins(config.get("plugins") or [])
    experiments = config["experiments"]
    args.experiment = args.experiment or next(iter(experiments))
    if args.experiment not in experiments:
        p.error(f"--experiment {args.experiment!r}: not in {args.config} (has {', '.join(experiments)})")
    grid = experiments[args.experiment]
    args.task = args.task or grid["tasks"][0]
    if args.task not in grid["tasks"]:
        p.error(f"--task {args.task!r}: not a task of experiment {args.experiment!r} ({', '.join(grid['tasks'])})")
    trained = methods.trained()
    args.methods = args.methods or [m for m in grid["methods"] if m in trained]
    for m in args.methods:
        if m not in trained:
            p.error(f"--methods: {m!r} is not a method rl.train trains (valid: {', '.join(trained)})")
    if len(set(args.methods)) != len(args.methods):
        p.error(f"--methods: a method is named twice: {' '.join(args.methods)}")
    if args.context_length is None:
        main_ctx = config.get("main_context_length")
        args.context_length = main_ctx if main_ctx in grid["context_lengths"] else grid["context_lengths"][0]
    if args.env_steps is not None and args.env_steps < 1:
        p.error(f"--env-steps must be >= 1, got {args.env_steps}")
    if args.parallel < 1:
        p.error(f"--parallel must be >= 1, got {args.parallel}")
    out_dir = Path(args.out).resolve().parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        p.error(f"--out {args.out!r}: cannot create its folder ({e.strerror})")
    if not os.access(out_dir, os.W_OK):
        p.error(f"--out {args.out!r}: its folder {str(out_dir)!r} is not writable")
    args.study, args.grid = config, grid
    return args


def error(message: str) -> int:
    print(f"python -m benchmarks.end_to_end: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.gettempdir()).resolve()
    cases = []
    for m in args.methods:
        run_dir = workdir / m
        if args.workdir and run_dir.exists():
            return error(f"run directory {run_dir} exists (every run must be fresh)")
        values = run_values(args.study, m, args.grid, args.task, args.context_length, args.seed, args.env_steps,
                            run_dir)
        cases.append((m, values, run_dir))
    refused = first_refused([values for _, values, _ in cases])   # the run CLI's own checks, before any run
    if refused is not None:
        i, why = refused
        return error(f"the {cases[i][0]} run cannot start: {why}")
    if not args.workdir:   # a fresh temporary folder, made only now that every run may start
        workdir = Path(tempfile.mkdtemp(prefix="kalbench-e2e-")).resolve()
        cases = [(m, {**values, "out": str(workdir / m)}, workdir / m) for m, values, _ in cases]
    workdir.mkdir(parents=True, exist_ok=True)
    cases = [(m, as_flags(values), run_dir) for m, values, run_dir in cases]
    train = args.study["train"]
    env_steps = args.env_steps if args.env_steps is not None else train["env_steps"]
    config = {"config": args.config, "experiment": args.experiment, "obs": args.grid["obs"], "task": args.task,
              "context_length": args.context_length, "seed": args.seed, "env_steps": env_steps,
              "torch_threads_per_run": train.get("torch_threads"), "parallel": args.parallel, "methods": args.methods,
              "repo": str(Path(args.repo).resolve()), "commit": git_commit(Path(args.repo).resolve()),
              "commands": {m: ["python", "-m", "rl.train", *argv] for m, argv, _ in cases}}
    rows = run_all(cases, args.parallel, workdir, Path(args.repo).resolve())
    failed = any(r["status"] != "ok" for r in rows)
    if not args.workdir and not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not args.workdir:
        print(f"kept {workdir} (a run failed: its log is there)")
    from benchmarks.machine import describe

    summary = summarise(rows, env_steps, config["torch_threads_per_run"])
    data = {"machine": describe(), "config": config, "summary": summary, "results": rows}
    print(format_table(data))
    atomic_write_text(args.out, json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
