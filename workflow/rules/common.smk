# The study's runs and the run CLI's flags, both read from the (validated) study config.
import os
import shlex
import sys

from snakemake_interface_executor_plugins.settings import DeploymentMethod

STUDY = config["study"]
RESULTS = f"results/{STUDY}"   # relative to the working directory (the repository root, or --directory)
LOGS = f"{RESULTS}/logs"

# Every job's shell starts with JOB_ENV: the Python environment that runs Snakemake first on PATH (so that
# `.venv/bin/snakemake` needs no activated venv), except where jobs run in a container (--sdm apptainer) or a conda
# env, which bring their own; and the repository's code importable from any working directory (--directory) and
# inside the container (which holds the environment, not the code). GL_ENV: a headless MuJoCo renderer unless the
# environment already chose one (the container sets egl; otherwise egl for a job holding a GPU, else osmesa).
# (Both are shell-command templates: Snakemake fills in {BASEDIR:q}, {PYTHON_BIN:q} and {params.gl}; `{{` is `{`.)
BASEDIR = workflow.basedir
SCRIPTS = os.path.join(BASEDIR, "workflow", "scripts")
_OWN_ENV = {DeploymentMethod.APPTAINER, DeploymentMethod.CONDA} & set(workflow.deployment_settings.deployment_method)
PYTHON_BIN = "" if _OWN_ENV else os.path.dirname(sys.executable)
JOB_ENV = ("export PATH={PYTHON_BIN:q}:$PATH; " if PYTHON_BIN else "") + \
    "export PYTHONPATH={BASEDIR:q}${{PYTHONPATH:+:$PYTHONPATH}}; "


def gl_backend(wildcards, resources):
    """MuJoCo's default renderer for a job: egl on a GPU, osmesa (software) without one."""
    return "egl" if resources.get("gpu", 0) else "osmesa"


GL_ENV = "export MUJOCO_GL=${{MUJOCO_GL:-{params.gl}}} PYOPENGL_PLATFORM=${{PYOPENGL_PLATFORM:-{params.gl}}}; "

# One run directory: the run CLI's --out. Its files: config.json, eval.csv, train.csv, checkpoint.pt, DONE.
RUN = RESULTS + "/runs/{obs}/{task}/{method}/ctx{ctx}/seed{seed}"

ALL_METHODS = ["kalmamba", "kalmamba_no_mamba", "kalmamba_no_dropout", "kalmamba_no_reg",
               "rssm", "vrkn", "sac", "dreamerv3"]

# The `model:` section of the study config whose fields become a method's --model.<field> flags (the model config
# dataclass of the method: rl.methods.model_family; plain SAC's is PassthroughConfig, its pixel encoder).
# The workflow does not import rl (and torch) to know it; tests/test_workflow.py checks it against rl.methods.
MODEL_FAMILY = {"kalmamba": "kalmamba", "kalmamba_no_mamba": "kalmamba", "kalmamba_no_dropout": "kalmamba",
                "kalmamba_no_reg": "kalmamba", "rssm": "rssm", "vrkn": "vrkn", "sac": "sac"}

# Each ablation is KalMamba with one KalMambaConfig field switched off (rl.methods.ablation_switch). The study's
# setting of that field (e.g. `model.kalmamba.dropout: 0.1`) is for KalMamba; the ablation does not get it (the run
# CLI refuses a value that contradicts the ablation).
ABLATED_FIELD = {"kalmamba_no_mamba": "use_mamba", "kalmamba_no_dropout": "dropout", "kalmamba_no_reg": "reg_alpha"}


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


def run_flags(method):
    """The run CLI's flags that come from the study config, for one method:
    `train:` -> --<field-name>, `model.<family of method>:` -> --model.<field>, `sac:` -> --sac.<field>."""
    model = dict(config.get("model", {}).get(MODEL_FAMILY[method]) or {})
    model.pop(ABLATED_FIELD.get(method), None)
    return " ".join(flags for flags in [
        cli_flags(config["train"]),
        cli_flags(model, prefix="--model.", dashes=False),
        cli_flags(config.get("sac", {}), prefix="--sac.", dashes=False),
    ] if flags)


wildcard_constraints:
    obs="pixels|state|noisy_state",
    task="[a-z][a-z_]*-[a-z][a-z_]*",
    ctx=r"\d+",
    seed=r"\d+",
