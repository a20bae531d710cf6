"""The Snakemake workflow: the study configs and their schema, the DAG of the smoke, default, validation and paper
studies (dry runs), the run CLI the train rule calls, failure reporting, resuming an interrupted study, and (slow)
the smoke study end to end with its report.

Snakemake runs in a subprocess, as a user runs it; real runs go to a temporary working directory
(`snakemake -s <repo>/Snakefile --directory <tmp>`), never into the repository's results/.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def load_config(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())


def snakemake(*args: str, cwd: Path = ROOT, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """`snakemake ARGS` as a user types it (from `cwd`), stdout and stderr together."""
    env = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "OMP_NUM_THREADS": "1"}
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, **kw)


def job_stats(output: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints: {rule: count} (without the total)."""
    lines = output[output.index("Job stats:"):].splitlines()[3:]
    stats = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        stats[parts[0]] = int(parts[1])
    stats.pop("total")
    return stats


def write_study(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def tiny_study(name: str, runs: list[tuple[str, int]], **train) -> dict:
    """A study of noisy-state walker-walk runs [(method, seed)] at context 4 with tiny models and budgets."""
    methods = sorted({m for m, _ in runs})
    return {
        "study": name,
        "seeds": sorted({s for _, s in runs}),
        "main_context_length": 4,
        "experiments": {"noisy_state": {"obs": "noisy_state", "tasks": ["walker-walk"], "methods": methods,
                                        "context_lengths": [4]}},
        "train": {"env_steps": 3000, "wall_clock_hours": 1, "eval_every": 1000, "eval_episodes": 1,
                  "checkpoint_every": 1000, "batch_size": 4, "initial_episodes": 1, "updates_per_step": 0.05,
                  "log_every": 1000, **train},
        "model": {"rssm": {"stoch_dim": 4, "deter_dim": 8, "hidden_dim": 16, "mlp_hidden_dim": 16,
                           "reward_hidden_dim": 16}},
        "sac": {"hidden_dim": 16, "n_layers": 1},
        "analysis": {"bootstrap_reps": 10, "seed": 0},
        "resources": {"train": {"cpus_per_task": 1, "mem_mb": 1000, "runtime": 10},
                      "bench": {"cpus_per_task": 1, "mem_mb": 1000, "runtime": 10}},
    }


# ---------------------------------------------------------------------------------------------------------------
# the schema

@pytest.mark.parametrize("name", ["default", "smoke", "paper", "validation", "validation+validation_paper_sizes"])
def test_study_configs_are_valid(name):
    cfg = merged_config(*name.split("+"))
    validate(cfg, str(SCHEMA))
    assert cfg["container"] == "containers/kalbench.sif"   # the schema's default, filled in


def merged_config(*names: str) -> dict:
    """The study config Snakemake builds from `--configfile config/<a>.yaml config/<b>.yaml ...`: each file merged
    into the previous ones key by key (snakemake.utils.update_config)."""
    from snakemake.utils import update_config

    cfg = load_config(names[0])
    for name in names[1:]:
        update_config(cfg, load_config(name))
    return cfg


def _set(cfg: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for p in parents:
        cfg = cfg[p]
    cfg[last] = value


def _del(cfg: dict, path: str) -> None:
    *parents, last = path.split(".")
    for p in parents:
        cfg = cfg[p]
    del cfg[last]


BAD_CONFIGS = {
    # name: (change to config/smoke.yaml, words the message must contain)
    "unknown top-level key": (lambda c: _set(c, "seed", [0]), ["'seed' was unexpected"]),
    "method name not a name": (lambda c: c["experiments"]["pixels"]["methods"].append("Kal Mamba"),
                               ["experiments.pixels.methods[6]", "'Kal Mamba' does not match"]),
    "plugin not a Python file": (lambda c: _set(c, "plugins", ["examples/own_method.txt"]),
                                 ["plugins[0]", "does not match"]),
    "unknown observation type": (lambda c: _set(c, "experiments.pixels.obs", "pixel"),
                                 ["experiments.pixels.obs", "'pixel' is not one of"]),
    "task not domain-task": (lambda c: _set(c, "experiments.noisy_state.tasks", ["walker_walk"]),
                             ["experiments.noisy_state.tasks[0]", "'walker_walk' does not match"]),
    "context length 1": (lambda c: _set(c, "experiments.context.context_lengths", [1, 16]),
                         ["experiments.context.context_lengths[0]", "1 is less than the minimum of 2"]),
    "seeds not a list": (lambda c: _set(c, "seeds", "0,1,2"), ["seeds", "'0,1,2' is not of type 'array'"]),
    "duplicate seeds": (lambda c: _set(c, "seeds", [0, 0]), ["seeds", "non-unique"]),
    "missing budget": (lambda c: _del(c, "train.env_steps"), ["train", "'env_steps' is a required property"]),
    "a grid field under train": (lambda c: _set(c, "train.seed", 3), ["train", "'seed' should not be valid"]),
    "memory as text": (lambda c: _set(c, "resources.train.mem_mb", "2G"),
                       ["resources.train.mem_mb", "'2G' is not of type 'integer'"]),
}


def _validation_message(cfg: dict) -> str:
    """The message the Snakefile gives for `cfg` (validate_study_config): '<where>: <jsonschema message>'."""
    with pytest.raises(WorkflowError) as err:
        validate(cfg, str(SCHEMA))
    cause = err.value.__context__
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in cause.absolute_path).lstrip(".")
    return f"{where}: {cause.message}"


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_schema_rejects_bad_config_naming_it(case):
    change, words = BAD_CONFIGS[case]
    cfg = load_config("smoke")
    change(cfg)
    message = _validation_message(cfg)
    for w in words:
        assert w in message, f"{case}: {w!r} not in {message!r}"


def test_bad_config_stops_snakemake_before_any_job(tmp_path):
    cfg = load_config("smoke")
    cfg["analysis"]["bootstrap_rep"] = 3
    bad = write_study(tmp_path / "bad.yaml", cfg)
    out = snakemake("-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile", str(bad),
                    "--cores", "1")
    assert out.returncode != 0
    assert f"Invalid study config ({bad}): analysis: Additional properties are not allowed ('bootstrap_rep' was " \
           "unexpected)" in out.stdout, out.stdout
    assert not (tmp_path / "results").exists()   # no job ran


def test_the_schema_holds_no_copy_of_the_run_settings():
    """One validator per value: the fields, types and bounds of `train:`, `model.<family>:` and `sac:` are the
    dataclasses' own (their `__post_init__`); the schema keeps the study's structure only. A bad value there is the
    run CLI's to refuse (test_a_run_the_run_cli_refuses_stops_the_study_before_any_job)."""
    defs = yaml.safe_load(SCHEMA.read_text())["$defs"]
    for key in ("train", "kalmamba", "rssm", "vrkn", "passthrough", "sac"):
        assert defs[key]["type"] == "object" and "properties" not in defs[key], key
        assert "additionalProperties" not in defs[key], key


def test_every_suite_task_is_a_study_task():
    """Issue 13, case 4: every dm_control suite task (digits, capitals and all: swimmer-swimmer6, stacker-stack_4,
    humanoid_CMU-stand) passes the schema, the workflow's task wildcard (the same pattern, common.smk) and the run
    CLI; lqr's tasks (unbounded actions) only the run CLI refuses, naming them."""
    from dm_control import suite

    from rl.envs import valid_tasks

    pattern = yaml.safe_load(SCHEMA.read_text())["$defs"]["experiment"]["properties"]["tasks"]["items"]["pattern"]
    assert "task=TASK_PATTERN" in (ROOT / "workflow/rules/common.smk").read_text()
    runnable = set(valid_tasks())
    for domain, task in suite.ALL_TASKS:
        name = f"{domain}-{task}"
        cfg = load_config("smoke")
        cfg["experiments"]["noisy_state"]["tasks"] = [name]
        validate(cfg, str(SCHEMA))
        assert re.fullmatch(pattern.removeprefix("^").removesuffix("$"), name), name
        assert (name in runnable) == (domain != "lqr"), name
    assert {"swimmer-swimmer6", "stacker-stack_4", "humanoid_CMU-stand"} <= runnable


def test_a_study_of_every_suite_task_plans_one_run_per_task(tmp_path):
    """The DAG of a study with every runnable suite task: one train job each (the wildcard takes every name)."""
    from rl.envs import valid_tasks

    cfg = tiny_study("tasks", [("sac", 0)])
    cfg["experiments"]["noisy_state"]["tasks"] = valid_tasks()
    study = write_study(tmp_path / "tasks.yaml", cfg)
    out = snakemake("-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile", str(study),
                    "-n", "--cores", "1")
    assert out.returncode == 0, out.stdout[-3000:]
    assert job_stats(out.stdout)["train"] == len(valid_tasks())
    for task in ("swimmer-swimmer6", "stacker-stack_4", "humanoid_CMU-stand"):
        assert f"results/tasks/runs/noisy_state/{task}/sac/ctx4/seed0/DONE" in out.stdout, task


STUDY_RUNS_REFUSED = {
    # name: (change to a one-run study, words of the message)
    "unknown task": (lambda c: _set(c, "experiments.noisy_state.tasks", ["walker-walkk"]),
                     ["task walker-walkk", "unknown task 'walker-walkk'; valid tasks:"]),
    "lqr task": (lambda c: _set(c, "experiments.noisy_state.tasks", ["lqr-lqr_2_1"]), ["unknown task 'lqr-lqr_2_1'"]),
    "context longer than an episode": (lambda c: _set(c, "experiments.noisy_state.context_lengths", [600]),
                                       ["context length 600", "context_length: 600 exceeds"]),
    "a_min above a_init": (lambda c: _set(c, "model", {"kalmamba": {"a_min": 0.95}}),
                           ["method kalmamba", "a_min/a_init/a_max: need 0 <= a_min < a_init < a_max"]),
    "no such activation": (lambda c: _set(c, "model.rssm.activation", "Foo"),
                           ["method rssm", "activation: must name a torch.nn activation class"]),
    "misspelt train field": (lambda c: _set(c, "train.env_step", 10), ["Unrecognized options: --env-step, 10"]),
    "negative budget": (lambda c: _set(c, "train.env_steps", -5), ["env_steps: -5 must be >= 1"]),
    "unknown model field": (lambda c: _set(c, "model.rssm.latent_size", 8),
                            ["Unrecognized options: --model.latent_size, 8"]),
    "model field of wrong type": (lambda c: _set(c, "model.rssm.deter_dim", "big"),
                                  ["--model.deter-dim: invalid literal for int() with base 10: 'big'"]),
    "model size 0": (lambda c: _set(c, "model.rssm.hidden_dim", 0), ["hidden_dim: must be an int >= 1, got 0"]),
}


@pytest.mark.parametrize("case", list(STUDY_RUNS_REFUSED))
def test_a_run_the_run_cli_refuses_stops_the_study_before_any_job(case, tmp_path):
    """Issue 13, case 4: values each valid alone but not together (or not a suite task) stop Snakemake at its start
    with a message naming the grid, the run and the setting, before any job."""
    change, words = STUDY_RUNS_REFUSED[case]
    cfg = tiny_study("refused", [("kalmamba" if "a_min" in case else "rssm", 0)])
    change(cfg)
    study = write_study(tmp_path / "refused.yaml", cfg)
    out = snakemake("-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile", str(study),
                    "--cores", "1")
    assert out.returncode != 0
    assert f"Invalid study config ({study}): experiments.noisy_state: the run (obs noisy_state" in out.stdout, \
        out.stdout[-3000:]
    for w in words:
        assert w in out.stdout, (w, out.stdout[-3000:])
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------------------------------
# methods: rl/methods.py and the study's plugins

EXAMPLE_PLUGIN = str(ROOT / "examples" / "own_method.py")
BAD_METHODS = {
    # name: (change to a tiny study, the one-line message)
    "unknown method": (lambda c: c["experiments"]["noisy_state"]["methods"].append("kalmanba"),
                       "experiments.noisy_state.methods: unknown method 'kalmanba'; valid methods: kalmamba, rssm, "
                       "vrkn, sac, dreamerv3, kalmamba_no_mamba"),
    "a plugin's method without its plugin": (lambda c: c["experiments"]["noisy_state"]["methods"].append("gru"),
                                              "unknown method 'gru'"),
    "benchmark of an external method": (lambda c: _set(c, "benchmark", {"context_lengths": [4], "batch_size": 2,
                                                                        "methods": ["dreamerv3"]}),
                                        "benchmark.methods: method 'dreamerv3' is not timed by the update "
                                        "benchmark; valid: kalmamba, "),
    "no such plugin file": (lambda c: _set(c, "plugins", ["nowhere/mine.py"]),
                            "plugins: plugin 'nowhere/mine.py': no such Python file"),
    "model settings no method reads": (lambda c: _set(c, "model.gur", {"latent_dim": 8}),
                                       "model.gur: no method reads it; valid keys: kalmamba, rssm, vrkn, sac"),
}


@pytest.mark.parametrize("case", list(BAD_METHODS))
def test_a_method_name_the_registry_lacks_stops_the_study_in_one_line(case, tmp_path):
    change, message = BAD_METHODS[case]
    cfg = tiny_study("names", [("rssm", 0)])
    change(cfg)
    study = write_study(tmp_path / "names.yaml", cfg)
    out = snakemake("-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile", str(study),
                    "-n", "--cores", "1")
    assert out.returncode != 0
    line = next((ln for ln in out.stdout.splitlines() if "Invalid study config" in ln), "")
    assert line.startswith(f"Invalid study config ({study}): ") and message in line, out.stdout[-3000:]


def test_a_study_with_a_plugin_schedules_configures_and_times_its_method(tmp_path):
    """Issue 14: `plugins: [examples/own_method.py]` is the only change that puts `gru` in a study: its runs are
    train jobs that load the plugin and get `model.gru`, the benchmark loads (and so times) it, and the analysis
    plans its figures like any method's."""
    cfg = tiny_study("plugin", [("rssm", 0), ("gru", 0), ("gru", 1)])   # the grid: 2 methods x 2 seeds
    cfg["plugins"] = [EXAMPLE_PLUGIN]
    cfg["model"]["gru"] = {"latent_dim": 8, "mlp_hidden_dim": 16}
    cfg["benchmark"] = {"context_lengths": [4], "batch_size": 2, "quick": True}
    study = write_study(tmp_path / "plugin.yaml", cfg)
    out = snakemake("-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile", str(study),
                    "-n", "-p", "--cores", "1")
    assert out.returncode == 0, out.stdout[-3000:]
    assert job_stats(out.stdout)["train"] == 4
    train = [ln for ln in out.stdout.splitlines() if " -m rl.train " in ln]
    gru = [shlex.split(ln.split(" python ", 1)[1].split(" > ")[0]) for ln in train if "--method gru" in ln]
    assert len(gru) == 2
    for words in gru:
        assert words[words.index("--plugin") + 1] == EXAMPLE_PLUGIN
        assert words[words.index("--model.latent_dim") + 1] == "8"
    assert not [ln for ln in train if "--method rssm" in ln and "--plugin" in ln]
    bench = next(ln for ln in out.stdout.splitlines() if " -m benchmarks.update_step " in ln)
    assert f"--plugin {EXAMPLE_PLUGIN}" in bench


# ---------------------------------------------------------------------------------------------------------------
# dry runs: the DAG of the two studies

def dry_run(*args: str) -> str:
    out = snakemake("-n", "--forceall", "--nolock", "--cores", "2", "-p", *args)
    assert out.returncode == 0, out.stdout[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def smoke_dry_run() -> str:
    return dry_run("--configfile", "config/smoke.yaml")


def expected_train_jobs(cfg: dict) -> int:
    """Runs of the study (not DreamerV3's), counted independently of the workflow: the union of the grids."""
    runs = {(g["obs"], t, m, c, s) for g in cfg["experiments"].values() for t in g["tasks"] for m in g["methods"]
            for c in g["context_lengths"] for s in g.get("seeds", cfg["seeds"]) if m != "dreamerv3"}
    return len(runs)


def test_smoke_study_dry_run_job_counts(smoke_dry_run):
    cfg = load_config("smoke")
    # 6 pixel methods + 4 noisy-state methods at context 16, 3 more at context 32, each with 3 seeds
    assert expected_train_jobs(cfg) == (6 + 4 + 3) * 3
    assert job_stats(smoke_dry_run) == {"train": 39, "bench": 1, "bench_kalman": 1, "study_config": 1,
                                          "collect": 1, "estimates": 1, "figures": 1, "tables": 1, "all": 1}


def test_smoke_study_covers_every_part_of_the_pipeline():
    cfg = load_config("smoke")
    grids = cfg["experiments"].values()
    assert any(g["obs"] == "pixels" for g in grids) and any(g["obs"] == "noisy_state" for g in grids)
    methods = {m for g in grids for m in g["methods"]}
    assert {"kalmamba", "kalmamba_no_mamba", "kalmamba_no_dropout", "kalmamba_no_reg", "rssm", "vrkn",
            "sac"} <= methods
    assert len(cfg["seeds"]) >= 3
    assert len({c for g in grids for c in g["context_lengths"]}) >= 2
    assert "benchmark" in cfg and "kalman_benchmark" in cfg


def test_paper_study_dry_run_job_counts(tmp_path):
    cfg = load_config("paper")
    # Fig. 3: 4 pixel tasks x 6 methods + DreamerV3; Fig. 4: 4 noisy tasks x 4 methods; Fig. 5: 3 methods x 3 more
    # context lengths on noisy walker-walk; 5 seeds each
    assert expected_train_jobs(cfg) == (4 * 6 + 4 * 4 + 3 * 3) * 5 == 245
    # DreamerV3's published scores from a local copy (offline; the study fetches them at the pinned URL)
    (tmp_path / "dmc_vision-dreamerv3.json.gz").write_bytes(b"")
    local = '{"published": {"local_dir": "%s"}}' % tmp_path
    stats = job_stats(dry_run("--configfile", "config/paper.yaml", "--config", f"dreamerv3={local}"))
    assert stats.pop("train") == 245
    assert stats.pop("train_dreamerv3") == 4 * 5
    assert stats == {"bench": 1, "bench_kalman": 1, "published_scores": 1, "study_config": 1, "collect": 1,
                     "estimates": 1, "figures": 1, "tables": 1, "all": 1}


def closed_port_url() -> str:
    """An http URL on this machine that refuses connections (a port just released): nothing leaves the machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def offline(*args: str) -> list[str]:
    """`args` run without a network where user namespaces allow (`unshare -rn`: a network namespace with no
    interface but loopback, down), else as they are (the study then points its URL at a closed local port)."""
    try:
        ok = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return ["unshare", "-rn", *args] if ok else list(args)


def test_paper_study_builds_offline(tmp_path):
    """`snakemake -n --configfile config/paper.yaml` without a network: the DAG builds. Published scores come from
    a local copy when there is one ($KALBENCH_PUBLISHED_DIR here), else the job fetches them (not the dry run)."""
    url = closed_port_url()
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "OMP_NUM_THREADS": "1"}

    def dry(local_env: dict) -> str:
        cmd = offline(SNAKEMAKE, "-n", "--forceall", "--nolock", "--cores", "2", "-p", "--configfile",
                      "config/paper.yaml", "--config", 'dreamerv3={"published": {"url": "%s"}}' % url)
        out = subprocess.run(cmd, cwd=ROOT, env={**env, **local_env}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:]
        assert job_stats(out.stdout)["published_scores"] == 1
        return next(line for line in out.stdout.splitlines() if "python -m analysis.published" in line)

    # no local copy: the job will fetch it (and, without a network, write a note: the figures go without it)
    cmd = dry({"KALBENCH_PUBLISHED_DIR": str(empty)})
    assert f"analysis.published {url}dmc_vision-dreamerv3.json.gz --out" in cmd and "--note-if-unavailable" in cmd
    # a local copy: read from there
    (tmp_path / "dmc_vision-dreamerv3.json.gz").write_bytes(b"")
    cmd = dry({"KALBENCH_PUBLISHED_DIR": str(tmp_path)})
    assert f"analysis.published {tmp_path / 'dmc_vision-dreamerv3.json.gz'} --out" in cmd


def test_paper_study_matches_the_paper():
    cfg = load_config("paper")
    ex = cfg["experiments"]
    tasks = ["cartpole-swingup", "walker-walk", "walker-run", "quadruped-walk"]
    assert ex["pixels"]["tasks"] == tasks and ex["noisy_state"]["tasks"] == tasks
    assert set(ex["pixels"]["methods"]) == {"kalmamba", "kalmamba_no_mamba", "kalmamba_no_dropout",
                                            "kalmamba_no_reg", "rssm", "vrkn", "dreamerv3"}
    assert set(ex["noisy_state"]["methods"]) == {"kalmamba", "rssm", "vrkn", "sac"}
    assert ex["context"] == {"obs": "noisy_state", "tasks": ["walker-walk"], "methods": ["kalmamba", "rssm", "vrkn"],
                             "context_lengths": [32, 64, 128, 256]}
    assert len(cfg["seeds"]) >= 5
    assert cfg["train"]["env_steps"] == 1_000_000 and cfg["train"]["wall_clock_hours"] == 24


def test_default_study_dry_run_job_counts():
    """The README's main command: clean-state cartpole, 4 methods x 3 seeds, both benchmarks, no published scores
    (no network or local copy needed)."""
    cfg = load_config("default")
    assert expected_train_jobs(cfg) == 4 * 3
    assert job_stats(dry_run()) == {"train": 12, "bench": 1, "bench_kalman": 1, "study_config": 1, "collect": 1,
                                    "estimates": 1, "figures": 1, "tables": 1, "all": 1}


def published_copy(tmp_path: Path, cfg: dict) -> str:
    """`--config dreamerv3=...` pointing the study's published score files at empty stand-ins in tmp_path (a dry
    run only checks that they exist)."""
    files = cfg["dreamerv3"]["published"]["files"]
    for name in files:
        (tmp_path / name).write_bytes(b"")
    return "dreamerv3=" + yaml.safe_dump({"published": {"files": files, "local_dir": str(tmp_path)}},
                                         default_flow_style=True).strip()


SIZE_FIELDS = {"kalmamba": ("latent_dim", "d_model", "hidden_dim"), "rssm": ("stoch_dim", "deter_dim", "hidden_dim"),
               "vrkn": ("latent_dim", "hidden_dim"), "sac": ()}


@pytest.mark.parametrize("overlay", [None, "validation_paper_sizes", "validation_ablation"])
def test_validation_study_dry_run(overlay, tmp_path):
    """config/validation.yaml: cartpole-swingup from state and noisy_state, 4 methods x 3 seeds, 100k env steps,
    10 evaluation episodes every 10k, context 32, batch 16, one thread, small models, and nothing else changed from
    the model configs' defaults (the study validates the defaults). Merged with validation_paper_sizes.yaml: the
    same runs with every model and SAC setting at its default (the paper's sizes), in their own results; merged with
    validation_ablation.yaml: the same runs plus KalMamba's no-regulariser ablation, in the same results."""
    from models.sac import SACConfig
    from rl import methods
    from rl.config import parse_args

    paper_sizes = overlay == "validation_paper_sizes"
    names = ["validation", overlay] if overlay else ["validation"]
    cfg = merged_config(*names)
    out = dry_run("--configfile", *[f"config/{n}.yaml" for n in names], "--config", published_copy(tmp_path, cfg))
    study_methods = ("kalmamba", "rssm", "vrkn", "sac") + (("kalmamba_no_reg",) if overlay == "validation_ablation" else ())
    assert job_stats(out) == {"train": 6 * len(study_methods), "published_scores": 1, "study_config": 1, "collect": 1,
                              "estimates": 1, "figures": 1, "tables": 1, "all": 1}
    runs = [parse_args(argv) for argv in _commands(out, "rl.train")]
    study = "validation_paper_sizes" if paper_sizes else "validation"
    assert {(r.obs, r.method, r.seed) for r in runs} == {
        (o, m, s) for o in ("state", "noisy_state") for m in study_methods for s in (0, 1, 2)}
    for run in runs:
        assert run.task == "cartpole-swingup" and run.context_length == 32 and run.out.startswith(f"results/{study}/")
        assert (run.env_steps, run.eval_every, run.eval_episodes) == (100_000, 10_000, 10)
        assert (run.batch_size, run.torch_threads) == ((32, 0) if paper_sizes else (16, 1))
        family = methods.model_family(run.method)
        default = dataclasses.asdict(methods.make_model_config(run.method))
        model = dataclasses.asdict(run.model)
        changed = {k for k in model if model[k] != default[k]}
        assert changed == (set() if paper_sizes else set(SIZE_FIELDS[family])), (run.method, changed)
        sac = dataclasses.asdict(run.sac)
        sac_default = dataclasses.asdict(SACConfig(**methods.sac_defaults(run.method)))
        assert {k for k in sac if sac[k] != sac_default[k]} == (set() if paper_sizes else {"hidden_dim", "n_layers"})
    assert f"results/{study}/published/dmc_proprio-dreamerv3.json.gz" in out


def _commands(dry_run_output: str, module: str) -> list[list[str]]:
    """The argument lists after `python -m MODULE` of every job's shell command (up to the log redirection)."""
    cmds = []
    for line in dry_run_output.splitlines():
        if f"python -m {module} " in line:
            words = shlex.split(line.split(f"python -m {module} ", 1)[1].split(" > ")[0])
            cmds.append(words)
    return cmds


def test_train_commands_carry_every_study_setting(smoke_dry_run):
    """Each train job's command line parses with the run CLI itself, and the resolved run config holds every value
    of the study's train:, model: and sac: sections (ablations keep their own switch)."""
    from rl import methods
    from rl.config import parse_args

    cfg = load_config("smoke")
    cmds = _commands(smoke_dry_run, "rl.train")
    assert len(cmds) == 39
    seen = set()
    for argv in cmds:
        run = parse_args(argv)
        seen.add((run.obs, run.task, run.method, run.context_length, run.seed))
        assert run.out == f"results/smoke/runs/{run.obs}/{run.task}/{run.method}/ctx{run.context_length}/seed{run.seed}"
        for k, v in cfg["train"].items():
            assert getattr(run, k) == v, (k, argv)
        model = dataclasses.asdict(run.model)
        for k, v in cfg.get("model", {}).get(methods.model_family(run.method), {}).items():
            assert model[k] == (methods.ablation_switch(run.method).get(k, v)), (run.method, k)
        for k, v in methods.ablation_switch(run.method).items():
            assert model[k] == v
        sac = dataclasses.asdict(run.sac)
        for k, v in cfg.get("sac", {}).items():
            assert sac[k] == v
    from analysis.plan import expected_runs

    assert seen == expected_runs(cfg)


def test_a_study_value_reaches_the_model(tmp_path):
    """`model: {kalmamba: {d_model: 24}}` in a study YAML -> the train job's `--model.d_model 24`
    (common.smk:run_flags) -> `RunConfig.model.d_model` (rl.config.parse_args) -> the KalMamba that
    rl.methods.build_agent builds from that same config object, whose layers are 24 wide (README, "Config
    reference": the 4 hops)."""
    import torch.nn as nn

    from rl import methods
    from rl.config import parse_args

    cfg = tiny_study("hops", [("kalmamba", 0)])
    cfg["model"] = {"kalmamba": {"latent_dim": 8, "d_model": 24, "hidden_dim": 16, "mlp_hidden_dim": 16,
                                 "reward_hidden_dim": 16}}
    study = write_study(tmp_path / "hops.yaml", cfg)
    (argv,) = _commands(dry_run("-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile",
                                str(study)), "rl.train")
    assert argv[argv.index("--model.d_model") + 1] == "24"
    run = parse_args(argv)
    assert run.model.d_model == 24
    agent = methods.build_agent(run.method, (5,), 2, run.model, run.sac, "cpu")
    assert agent.world_model.cfg is run.model   # built once, used as is
    widths = {m.normalized_shape for m in agent.world_model.modules() if isinstance(m, nn.LayerNorm)}
    assert (24,) in widths, widths


def test_jobs_leave_the_renderer_to_the_run(smoke_dry_run):
    """Issue 13, case 7: no job's shell sets MUJOCO_GL or PYOPENGL_PLATFORM (a GPU job used to get
    PYOPENGL_PLATFORM=egl next to a user's MUJOCO_GL=osmesa); the run chooses them (rl/render.py)."""
    shells = [line for line in smoke_dry_run.splitlines() if "python -m " in line]
    assert shells and not [line for line in shells if "MUJOCO_GL" in line or "PYOPENGL_PLATFORM" in line]


def test_bench_command_parses_with_the_benchmark_cli(smoke_dry_run):
    from benchmarks.update_step import parse_args

    (argv,) = _commands(smoke_dry_run, "benchmarks.update_step")
    args = parse_args(argv)
    bench = load_config("smoke")["benchmark"]
    for k, v in bench.items():
        assert getattr(args, k) == v, k
    assert args.device == "auto"            # the schema's default: the job's GPU where it has one
    assert args.out == "results/smoke/bench/update_step.json"


def test_kalman_bench_command_parses_with_its_cli(smoke_dry_run):
    from benchmarks.kalman_scan import parse_args

    (argv,) = _commands(smoke_dry_run, "benchmarks.kalman_scan")
    args = parse_args(argv)
    for k, v in load_config("smoke")["kalman_benchmark"].items():
        assert getattr(args, k) == v, k
    assert args.out == "results/smoke/bench/kalman_scan.json"


def test_all_ends_in_the_planned_figures_and_tables(smoke_dry_run):
    from analysis.plan import expected_figures, expected_tables

    cfg = load_config("smoke")
    all_inputs = re.search(r"rule all:\n\s+input: (.*)\n", smoke_dry_run).group(1).split(", ")
    expected = ([f"results/smoke/figures/{f}.{e}" for f in expected_figures(cfg) for e in ("pdf", "png")]
                + [f"results/smoke/tables/{t}.{e}" for t in expected_tables(cfg) for e in ("md", "tex")]
                + ["results/smoke/bench/kalman_scan.json"])
    assert sorted(all_inputs) == sorted(expected)
    assert "fig6_update_step" in expected_figures(cfg)


# ---------------------------------------------------------------------------------------------------------------
# real (tiny) runs in a temporary working directory

def run_study(tmp_path: Path, cfg: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    study = write_study(tmp_path / f"{cfg['study']}.yaml", cfg)
    return snakemake("-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile", str(study),
                     *args, timeout=timeout)


def test_failing_run_is_reported_with_its_log(tmp_path):
    """A run that fails on the machine it runs on (`mamba_backend: cuda` without CUDA: a setting the study check
    cannot refuse, as the planning machine need not be the one that runs it) fails; Snakemake names the run's log,
    and the log says why in one line."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = tiny_study("failing", [("kalmamba", 0)])
    cfg["model"] = {"kalmamba": {"mamba_backend": "cuda"}}
    out = run_study(tmp_path, cfg, "--cores", "1", "results/failing/runs/noisy_state/walker-walk/kalmamba/ctx4/seed0/DONE")
    assert out.returncode != 0
    log = "results/failing/logs/runs/noisy_state/walker-walk/kalmamba/ctx4/seed0.log"
    assert log in out.stdout, out.stdout[-3000:]
    text = (tmp_path / log).read_text()
    assert "error: --model.mamba_backend cuda: cannot run here" in text and "Traceback" not in text, text


def test_dreamerv3_without_its_environment_stops_before_any_job(tmp_path):
    """Here DreamerV3 is not importable and no container or conda env is deployed: the study stops at its start,
    saying how to get DreamerV3's environment, before any job (not even the other methods' runs) starts."""
    cfg = tiny_study("dv3", [("rssm", 0), ("dreamerv3", 0)])
    env = {k: v for k, v in os.environ.items() if k != "KALBENCH_DREAMERV3_SRC"}
    study = write_study(tmp_path / "dv3.yaml", cfg)
    out = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile",
                          str(study), "--cores", "1", "--config", 'dreamerv3={"published": {"files": []}}'],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert out.returncode != 0
    assert "The study has method 'dreamerv3', but this installation cannot run it" in out.stdout, out.stdout[-3000:]
    assert "--sdm apptainer" in out.stdout and "KALBENCH_DREAMERV3_SRC" in out.stdout
    assert not (tmp_path / "results").exists()


FAKE_APPTAINER = """#!/bin/bash
# A stand-in for apptainer (not installable here): logs its arguments, then runs the command that follows the
# image with the Python environment of the tests first on PATH, as the image would provide it.
[ "$1" = "--version" ] && { echo "apptainer version 1.3.4"; exit 0; }
echo "$@" >> "$FAKE_APPTAINER_LOG"
shift
while [ $# -gt 0 ]; do case "$1" in *.sif) shift; break;; *) shift;; esac; done
export PATH="$FAKE_IMAGE_BIN:$PATH"
exec "$@"
"""


def test_sdm_apptainer_runs_jobs_in_the_image_with_the_gpu(tmp_path):
    """`--sdm apptainer` with a profile: each shell job runs as `apptainer exec ... --nv <repo>/containers/kalbench.sif
    bash -c '<job>'`, and the job relies on the image's Python (no host PATH) and EGL rendering."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(FAKE_APPTAINER)
    (bin_dir / "apptainer").chmod(0o755)
    cfg = tiny_study("sif", [("rssm", 0)])
    cfg["kalman_benchmark"] = {"quick": True, "dynamax": False, "repeats": 1}
    study = write_study(tmp_path / "sif.yaml", cfg)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_APPTAINER_LOG": str(calls),
           "FAKE_IMAGE_BIN": str(Path(sys.executable).parent), "OMP_NUM_THREADS": "1"}
    env.pop("MUJOCO_GL", None)
    out = subprocess.run([SNAKEMAKE, "--profile", "workflow/profiles/local", "--cores", "1", "--directory",
                          str(tmp_path), "--configfile", str(study), "--sdm", "apptainer", "--",
                          "results/sif/bench/kalman_scan.json"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    (call,) = calls.read_text().splitlines()
    before, job = call.split(f" {ROOT}/containers/kalbench.sif bash -c ", 1)
    assert before.startswith(f"exec --home {tmp_path} --nv")
    assert "export PATH=" not in job                      # the image's environment, not the host's venv
    assert "with-free-gpu.sh 1 python -m benchmarks.kalman_scan --repeats 1 --quick --no-dynamax" in job  # a GPU
    assert (tmp_path / "results/sif/bench/kalman_scan.json").is_file()


def test_a_run_directory_has_one_writer(tmp_path):
    """workflow/scripts/exclusive.sh: while one process holds a run directory, a second one fails at once."""
    script = ROOT / "workflow" / "scripts" / "exclusive.sh"
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([str(script), str(run_dir), "sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while not (run_dir / ".lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        second = subprocess.run([str(script), str(run_dir), "echo", "trained"], capture_output=True, text=True)
        assert second.returncode == 75
        assert f"another process is already writing {run_dir}" in second.stderr
        assert "trained" not in second.stdout
    finally:
        holder.kill()
        holder.wait()
    third = subprocess.run([str(script), str(run_dir), "echo", "trained"], capture_output=True, text=True)
    assert third.returncode == 0 and third.stdout == "trained\n"


@pytest.mark.slow
def test_interrupted_study_resumes_without_redoing_finished_runs(tmp_path):
    """Two runs, one at a time. Interrupt Snakemake (SIGINT, as Ctrl-C) while the second run trains, after its
    first checkpoint; run it again: the first run is not redone, the second resumes from its checkpoint."""
    cfg = tiny_study("resume", [("rssm", 0), ("rssm", 1)], env_steps=4000)
    runs = tmp_path / "results/resume/runs/noisy_state/walker-walk/rssm/ctx4"
    targets = [str(runs.relative_to(tmp_path) / f"seed{s}/DONE") for s in (0, 1)]
    study = write_study(tmp_path / "resume.yaml", cfg)
    env = {**os.environ, "MUJOCO_GL": "osmesa", "OMP_NUM_THREADS": "1"}
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile", str(study),
           "--cores", "1", *targets]
    # its own session: SIGINT to the whole process group, as Ctrl-C in a terminal sends it to snakemake and its jobs
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        first, second = sorted(runs.glob("seed*/DONE")), None
        while time.monotonic() < deadline:
            done = sorted(runs.glob("seed*/DONE"))
            started = [p for p in runs.glob("seed*/checkpoint.pt") if not (p.parent / "DONE").exists()]
            if len(done) == 1 and started:
                first, second = done[0].parent, started[0].parent
                break
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.5)
        assert second is not None, "the second run never checkpointed"
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (second / "DONE").exists() and (second / "checkpoint.pt").exists()
    log = tmp_path / f"results/resume/logs/runs/noisy_state/walker-walk/rssm/ctx4/{second.name}.log"
    assert "stopped by SIGINT: checkpoint written at env step" in log.read_text()
    first_done = (first / "DONE").stat().st_mtime_ns

    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    assert (first / "DONE").stat().st_mtime_ns == first_done          # not redone
    assert "1 of 1 steps (100%) done" in out.stdout                   # only the interrupted run ran
    assert re.search(r"resuming .* at env step [1-9]\d*", log.read_text()), log.read_text()[-2000:]
    assert (second / "DONE").exists()


@pytest.mark.slow
def test_study_recovers_after_snakemake_itself_was_killed(tmp_path):
    """Issue 13, case 9: `kill -9` of snakemake (and of its jobs: a lost node) while a run trains leaves the run's
    output marked incomplete and Snakemake's directory lock in place. The same plain command again (no
    --rerun-incomplete: the workflow's own profile, profiles/default, sets it; no --unlock: common.smk clears a
    lock no live snakemake holds) resumes the run from its checkpoint and finishes."""
    cfg = tiny_study("killed", [("rssm", 0)], env_steps=4000)
    run = tmp_path / "results/killed/runs/noisy_state/walker-walk/rssm/ctx4/seed0"
    study = write_study(tmp_path / "killed.yaml", cfg)
    env = {**os.environ, "MUJOCO_GL": "osmesa", "OMP_NUM_THREADS": "1"}
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile", str(study),
           "--cores", "1", str(run.relative_to(tmp_path) / "DONE")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (run / "checkpoint.pt").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.5)
        assert (run / "checkpoint.pt").exists(), "the run never checkpointed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert not (run / "DONE").exists()
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "IncompleteFilesException" not in out.stdout and "LockException" not in out.stdout
    log = tmp_path / "results/killed/logs/runs/noisy_state/walker-walk/rssm/ctx4/seed0.log"
    assert re.search(r"resuming .* at env step [1-9]\d*", log.read_text()), log.read_text()[-2000:]
    assert (run / "DONE").exists()


def test_every_documented_way_to_start_a_study_reruns_incomplete_jobs():
    """Issue 13, case 9: the workflow's own profile (read on every call) and both named profiles set
    rerun-incomplete; the commands in the Snakefile's docstring and in config/default.yaml need nothing more."""
    for profile in ("profiles/default", "slurm", "workflow/profiles/local"):
        assert yaml.safe_load((ROOT / profile / "config.yaml").read_text())["rerun-incomplete"] is True, profile
    assert "--rerun-incomplete" in (ROOT / "scripts/study.sh").read_text()


@pytest.mark.slow
def test_smoke_study(tmp_path):
    """The smoke study (the pipeline check: every rule, pixels included), in a fresh working directory: every figure
    and table, then the HTML report with the figures and the run table."""
    from analysis.plan import expected_outputs

    cfg = load_config("smoke")
    start = time.monotonic()
    out = snakemake("-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile",
                    str(ROOT / "config/smoke.yaml"), "--cores", "2", timeout=3 * 3600)
    minutes = (time.monotonic() - start) / 60
    assert out.returncode == 0, out.stdout[-5000:]
    results = tmp_path / "results" / "smoke"
    missing = [f for f in expected_outputs(cfg) if not (results / f).is_file()]
    assert not missing, missing
    assert len(list((results / "runs").glob("*/*/*/ctx*/seed*/DONE"))) == 39
    print(f"smoke study: {minutes:.1f} min")

    report = tmp_path / "report.html"
    out = snakemake("-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile",
                    str(ROOT / "config/smoke.yaml"), "--report", str(report))
    assert out.returncode == 0, out.stdout[-3000:]
    html = report.read_text()
    for name in ("fig3_pixels_aggregate.png", "fig6_update_step.png", "runs.csv", "study.yaml"):
        assert name in html, name
