# Helpers and study-wide values for every rule file (workflow/rules/*.smk), included first by the Snakefile: the study
# config's validation, the runs, the run CLI's flags, job resources and environment, DreamerV3's published score files.
import os
import shlex
import sys

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate
from snakemake_interface_executor_plugins.settings import DeploymentMethod

def validate_study_config():
    """Every bad key or value stops the workflow here, before any job is built, with a message naming it and where
    it is. Fills in the schema's defaults (e.g. `container`)."""
    try:
        validate(config, os.path.join(workflow.basedir, "config", "schema.yaml"))
    except WorkflowError as e:
        cause = e.__context__
        if not hasattr(cause, "absolute_path"):  # not a jsonschema.ValidationError: nothing to add
            raise
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in cause.absolute_path).lstrip(".")
        files = ", ".join(map(str, workflow.configfiles)) or "--config"
        raise WorkflowError(
            f"Invalid study config ({files}): {where or 'top level'}: {cause.message}. "
            "config/schema.yaml lists every key a study may have."
        ) from None


validate_study_config()


STUDY = config["study"]
RESULTS = f"results/{STUDY}"   # relative to the working directory (the repository root, or --directory)
LOGS = f"{RESULTS}/logs"

# Every job's shell starts with JOB_ENV: the Python environment that runs Snakemake first on PATH (so that
# `.venv/bin/snakemake` needs no activated venv), except where jobs run in a container (--sdm apptainer) or a conda
# env, which bring their own; and the repository's code importable from any working directory (--directory) and
# inside the container (which holds the environment, not the code). (A shell-command template: Snakemake fills in
# {BASEDIR:q} and {PYTHON_BIN:q}; `{{` is `{`.) The MuJoCo renderer is not set here: the run chooses it
# (rl/render.py: the user's MUJOCO_GL if set, with PYOPENGL_PLATFORM to match, else a headless backend that works).
BASEDIR = workflow.basedir
SCRIPTS = os.path.join(BASEDIR, "workflow", "scripts")
_OWN_ENV = {DeploymentMethod.APPTAINER, DeploymentMethod.CONDA} & set(workflow.deployment_settings.deployment_method)
PYTHON_BIN = "" if _OWN_ENV else os.path.dirname(sys.executable)
JOB_ENV = ("export PATH={PYTHON_BIN:q}:$PATH; " if PYTHON_BIN else "") + \
    "export PYTHONPATH={BASEDIR:q}${{PYTHONPATH:+:$PYTHONPATH}}; "


def container_image(image):
    """A local image path is relative to the repository (whatever the working directory); URIs stay as they are."""
    return image if "://" in image or os.path.isabs(image) else os.path.join(workflow.basedir, image)

# What a job asks its executor for lives in the rule itself, never only in a profile: Snakemake replaces a
# profile's whole `set-resources` (and `default-resources`) when the command line has its own, so a
# `--set-resources train:qos=long` would otherwise drop the GPU and the GPU partition of every train job.
#   GPUs: `resources.<job>.gpus` of the study (default 1 for runs and benchmarks), as the resource `gpu` (sbatch
#     --gpus=N; also what workflow/profiles/local counts) or, with KALBENCH_SLURM_GPU_FLAG=gres, `gres` (sbatch
#     --gres=gpu:N, for clusters that refuse --gpus).
#   KALBENCH_SLURM_PARTITION, KALBENCH_SLURM_GPU_PARTITION (jobs with a GPU), KALBENCH_SLURM_ACCOUNT: Slurm's
#     partition and account (ignored by other executors). A `--set-resources` on the command line still wins.
GPU_FLAGS = ("gpus", "gres")
GPU_FLAG = os.environ.get("KALBENCH_SLURM_GPU_FLAG", "gpus")
if GPU_FLAG not in GPU_FLAGS:
    raise WorkflowError(f"KALBENCH_SLURM_GPU_FLAG={GPU_FLAG!r}: must be one of {', '.join(GPU_FLAGS)}")


def job_resources(section, gpu_job=False):
    """A rule's resources from a `resources.<job>` section of the study: mem_mb, runtime (minutes), the GPUs of a
    GPU job (`gpus`, default 1) and the Slurm partition and account from the environment."""
    res = {"mem_mb": section["mem_mb"], "runtime": section["runtime"]}
    gpus = section.get("gpus", 1) if gpu_job else 0
    if gpus:
        res.update({"gpu": gpus} if GPU_FLAG == "gpus" else {"gres": f"gpu:{gpus}"})
    partition = (gpus and os.environ.get("KALBENCH_SLURM_GPU_PARTITION")) or os.environ.get("KALBENCH_SLURM_PARTITION")
    if partition:
        res["slurm_partition"] = partition
    if os.environ.get("KALBENCH_SLURM_ACCOUNT"):
        res["slurm_account"] = os.environ["KALBENCH_SLURM_ACCOUNT"]
    return res


def job_gpus(wildcards, resources):
    """GPUs a job holds (0 or 1; workflow/scripts/with-free-gpu.sh): its `gpu` resource, or the count of its
    `gres=gpu[:type][:N]`."""
    if resources.get("gpu", 0):
        return resources.get("gpu")
    gres = str(resources.get("gres", "") or "")
    if not gres.startswith("gpu"):
        return 0
    last = gres.split(":")[-1]
    return int(last) if last.isdigit() else 1

# One run directory: the run CLI's --out. Its files: config.json, eval.csv, train.csv, checkpoint.pt, DONE.
RUN = RESULTS + "/runs/{obs}/{task}/{method}/ctx{ctx}/seed{seed}"

# A task name as the study schema accepts it (one pattern for the schema and the wildcard; which names are suite
# tasks is the run CLI's check, check_study_runs below).
TASK_PATTERN = yaml.safe_load(open(os.path.join(BASEDIR, "config", "schema.yaml")))[
    "$defs"]["experiment"]["properties"]["tasks"]["items"]["pattern"].removeprefix("^").removesuffix("$")

# The methods (rl/methods.py, the one list of them) and the study's own (`plugins:`, each file's METHOD read as
# text: Snakemake's process does not import torch). The schema accepts any name; check_method_names() checks them.
from rl import methods

PLUGINS = config.get("plugins", [])   # paths relative to the working directory, as the jobs see them
STUDY_FILES = ", ".join(map(str, workflow.configfiles)) or "--config"


def load_plugins():
    """Register the study's plugin methods; a bad file stops the workflow with a one-line error naming it."""
    for path in PLUGINS:
        try:
            methods.load_plugin(path, execute=False)
        except ValueError as e:
            raise WorkflowError(f"Invalid study config ({STUDY_FILES}): plugins: {e}") from None


def check_method_names():
    """Every method of the study's experiments is a registered one, every method of its benchmark one that
    `benchmarks.update_step` times (trained by rl.train), and every `model:` key one a method reads: else a
    one-line error naming the bad name, where it is and the valid ones, before any job."""
    names, trained = methods.names(), methods.trained()
    for grid_name, grid in config["experiments"].items():
        for name in grid["methods"]:
            if name not in names:
                raise WorkflowError(f"Invalid study config ({STUDY_FILES}): experiments.{grid_name}.methods: unknown "
                                    f"method {name!r}; valid methods: {', '.join(names)} (a method of your own: "
                                    "list its file under plugins:)")
    for name in (config.get("benchmark") or {}).get("methods", []):
        if name not in trained:
            why = "is not timed by the update benchmark" if name in names else "is unknown"
            raise WorkflowError(f"Invalid study config ({STUDY_FILES}): benchmark.methods: method {name!r} {why}; "
                                f"valid: {', '.join(trained)}")
    for family in config.get("model") or {}:
        if family not in methods.families():
            raise WorkflowError(f"Invalid study config ({STUDY_FILES}): model.{family}: no method reads it; valid "
                                f"keys: {', '.join(methods.families())}")


load_plugins()
check_method_names()


def study_runs():
    """Every run of the study, once: the union over the experiment grids of obs x task x method x ctx x seed."""
    runs = set()
    for grid in config["experiments"].values():
        for seed in grid.get("seeds", config["seeds"]):
            for task in grid["tasks"]:
                for method in grid["methods"]:
                    for ctx in grid["context_lengths"]:
                        runs.add((grid["obs"], task, method, ctx, seed))
    return [dict(obs=o, task=t, method=m, ctx=c, seed=s) for o, t, m, c, s in sorted(runs)]


def check_study_runs():
    """Every run of the study is one the run CLI accepts: its own checks (rl.config: suite task names, context
    length vs episode length, the model configs' validators, building each model on the meta device) on the
    study's settings, before any job. The schema checks each key alone; this, the combinations. Stops with a
    message naming the grid, the run and the bad setting. Runs in a child process (it imports torch and
    dm_control, which must not touch Snakemake's process); skipped with a note where that environment lacks them
    (jobs in containers or conda envs: each run then checks its settings at its start)."""
    import json
    import subprocess

    runs, where, seen = [], [], set()
    for name, grid in config["experiments"].items():
        for task in grid["tasks"]:
            for method in grid["methods"]:
                for ctx in grid["context_lengths"]:
                    key = (grid["obs"], task, method, ctx)
                    if methods.get(method).external or key in seen:
                        continue
                    seen.add(key)
                    runs.append({**methods.study_settings(config, method), "method": method, "task": task,
                                 "obs": grid["obs"], "context_length": ctx, "out": RESULTS})
                    where.append(f"experiments.{name}: the run (obs {grid['obs']}, task {task}, method {method}, "
                                 f"context length {ctx})")
    code = "import json, sys; from rl.config import first_refused; print(json.dumps(first_refused(json.load(sys.stdin))))"
    env = {**os.environ, "MUJOCO_GL": "disable", "PYTHONPATH": BASEDIR + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(runs), capture_output=True, text=True,
                         env=env)
    if out.returncode != 0:
        if "ModuleNotFoundError" in out.stderr:
            print(f"Note: the study's runs are not checked against the run CLI here ({out.stderr.strip().splitlines()[-1]});"
                  " each run checks its settings when it starts.", file=sys.stderr)
            return
        raise WorkflowError(f"Checking the study's runs against the run CLI failed:\n{out.stderr[-3000:]}")
    refused = json.loads(out.stdout.strip().splitlines()[-1])
    if refused is not None:
        i, error = refused
        files = ", ".join(map(str, workflow.configfiles)) or "--config"
        raise WorkflowError(
            f"Invalid study config ({files}): {where[i]} cannot run: {error} (study keys: train.<f>, "
            f"model.{methods.model_family(runs[i]['method'])}.<f>, sac.<f> for --<f>, --model.<f>, --sac.<f>)")


STUDY_RUNS = study_runs()
STUDY_METHODS = sorted({run["method"] for run in STUDY_RUNS})
# What the analysis waits for: the DONE marker of every run (written last, atomically, by the run itself).
DONE_FILES = [(RUN + "/DONE").format(**run) for run in STUDY_RUNS]


def cli_value(value):
    """A config value as one shell word of the run CLI (YAML spelling for booleans and null)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return shlex.quote(str(value))


def cli_flags(section, prefix="--", dashes=True):
    """{'env_steps': 1000} -> '--env-steps 1000'; lists become several words: {'a': [1, 2]} -> '--a 1 2'."""
    words = []
    for key, value in section.items():
        words.append(prefix + (key.replace("_", "-") if dashes else key))
        values = value if isinstance(value, list) else [value]
        words += [cli_value(v) for v in values]
    return " ".join(words)


def clear_stale_snakemake_locks():
    """After `kill -9` of snakemake its directory locks (.snakemake/locks) stay, and every later call stops with a
    LockException. Each planning snakemake holds an flock on .snakemake/kalbench.flock for as long as it lives (the
    kernel drops it when the process dies, however): if this one gets it, no other snakemake of this working
    directory is alive, so any Snakemake lock left is stale and is removed. If not, another one runs, and nothing is
    touched (Snakemake then refuses to run alongside it, as usual)."""
    import fcntl
    import shutil

    os.makedirs(".snakemake", exist_ok=True)
    handle = open(os.path.join(".snakemake", "kalbench.flock"), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    shutil.rmtree(os.path.join(".snakemake", "locks"), ignore_errors=True)
    return handle   # kept open (a global below) for the life of this process


# Only where the Snakefile is read to plan (not again inside each job of a cluster executor).
if not workflow.remote_exec:
    check_study_runs()
    _PLANNER_FLOCK = clear_stale_snakemake_locks()


def run_flags(method):
    """The run CLI's flags that come from the study config, for one method (rl.methods.study_settings):
    `--plugin FILE` for a plugin's method, `train:` -> --<field-name>, `model.<family of method>:` -> --model.<field>,
    `sac:` -> --sac.<field>."""
    settings = methods.study_settings(config, method)
    model, sac = settings.pop("model"), settings.pop("sac")
    return " ".join(flags for flags in [
        cli_flags(settings),
        cli_flags(model, prefix="--model.", dashes=False),
        cli_flags(sac, prefix="--sac.", dashes=False),
    ] if flags)


from analysis.published import PINNED_BASE_URL

DV3_PUBLISHED = (config.get("dreamerv3") or {}).get("published") or {}
# DreamerV3's published score files (README, "Published scores offline"). Building the DAG never touches the
# network: a file is copied from a local directory when it is there (the study's dreamerv3.published.local_dir,
# else $KALBENCH_PUBLISHED_DIR, else <repo>/../shared/reference-scores), else the job fetches it from the URL;
# without a network the job writes a note in its place and the figures are drawn without it, saying so.
PUBLISHED_FILES = [f"{RESULTS}/published/{name}" for name in DV3_PUBLISHED.get("files", ["dmc_vision-dreamerv3.json.gz"])]
PUBLISHED_DIR = (DV3_PUBLISHED.get("local_dir") or os.environ.get("KALBENCH_PUBLISHED_DIR")
                 or os.path.join(os.path.dirname(workflow.basedir), "shared", "reference-scores"))
PUBLISHED_URL = DV3_PUBLISHED.get("url") or PINNED_BASE_URL


def published_local(name):
    """The local copy of a published score file, or None."""
    path = os.path.join(PUBLISHED_DIR, name)
    return path if os.path.isfile(path) else None


def published_source(name):
    """Where the job reads the file: its local copy, else the URL (fetched when the job runs, not here)."""
    return published_local(name) or PUBLISHED_URL.rstrip("/") + "/" + name


for _path in PUBLISHED_FILES:
    _name = os.path.basename(_path)
    if not published_local(_name) and not os.path.exists(_path):
        print(f"Published scores {_name}: no local copy in {PUBLISHED_DIR}; the job fetches it from "
              f"{published_source(_name)} (without a network the figures are drawn without it and say so)",
              file=sys.stderr)


wildcard_constraints:
    obs="pixels|state|noisy_state",
    task=TASK_PATTERN,
    ctx=r"\d+",
    seed=r"\d+",
