# DreamerV3 (issue 7): the official JAX implementation at a pinned commit, in its own environment, as method
# `dreamerv3` of the study; and DreamerV3's published scores for the figures. Uses common.smk's RUN, RESULTS, LOGS,
# STUDY_METHODS, cli_flags, job_resources and the published score files (PUBLISHED_FILES, published_local/source).
#
# Study config (all optional; defaults below):
#   dreamerv3:
#     configs: {pixels: [dmc_vision], noisy_state: [dmc_proprio]}   # DreamerV3 config blocks per observation type
#     flags: []                 # DreamerV3 flags after `--`, e.g. ["--run.envs", 4] (its elements.Flags)
#     container: containers/dreamerv3.sif                           # image under --sdm apptainer
#     published:
#       files: [dmc_vision-dreamerv3.json.gz]   # DreamerV3's score files to overlay; [] for none
#       local_dir: null         # a directory with copies of them (null: $KALBENCH_PUBLISHED_DIR, else
#                               # <repo>/../shared/reference-scores); a file not there is fetched from `url`
#       url: null               # base URL to fetch from (null: DreamerV3's repository at the pinned commit)
#   resources: {dreamerv3: {cpus_per_task, mem_mb, runtime}}       # else resources.train
import os
import sys

from snakemake.exceptions import WorkflowError

DV3 = config.get("dreamerv3") or {}
DV3_CONFIGS = DV3.get("configs") or {}
DV3_RESOURCES = config["resources"].get("dreamerv3") or config["resources"]["train"]
# The run CLI's schedule keys that the DreamerV3 launcher shares (train: section of the study config).
DV3_TRAIN_KEYS = ("env_steps", "wall_clock_hours", "eval_every", "eval_episodes", "checkpoint_every", "device")


def dreamerv3_flags(wildcards):
    """The launcher's flags from the study config: the schedule (`train:`), the config blocks of this
    observation type, and DreamerV3's own flags after `--`."""
    words = [cli_flags({k: v for k, v in config["train"].items() if k in DV3_TRAIN_KEYS})]
    blocks = DV3_CONFIGS.get(wildcards.obs)
    if blocks:
        words.append("--configs " + " ".join(cli_value(b) for b in blocks))
    if DV3.get("flags"):
        words.append("-- " + " ".join(cli_value(f) for f in DV3["flags"]))
    return " ".join(words)


rule train_dreamerv3:
    """One DreamerV3 run into the same run directory as every other method's (config.json, eval.csv, train.csv,
    DONE): `python -m integrations.dreamerv3.launch` in DreamerV3's own environment (conda: workflow/envs/
    dreamerv3.yaml; apptainer: containers/dreamerv3.def). Only DONE is declared, as in the train rule: an
    interrupted run keeps DreamerV3's checkpoint (dreamerv3/ckpt) and resumes from it."""
    output:
        RUN + "/DONE",
    log:
        LOGS + "/runs/{obs}/{task}/{method}/ctx{ctx}/seed{seed}.log",
    wildcard_constraints:
        method="dreamerv3",
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output[0]),
        flags=dreamerv3_flags,
        gpus=job_gpus,
    threads: DV3_RESOURCES["cpus_per_task"]
    resources:
        **job_resources(DV3_RESOURCES, gpu_job=True),
    conda:
        "../envs/dreamerv3.yaml"
    container:
        DV3.get("container", "containers/dreamerv3.sif")
    shell:
        JOB_ENV + "export OMP_NUM_THREADS={threads}; "
        "{SCRIPTS:q}/exclusive.sh {params.run_dir} {SCRIPTS:q}/with-free-gpu.sh {params.gpus}"
        " python -m integrations.dreamerv3.launch --task {wildcards.task} --obs {wildcards.obs}"
        " --context-length {wildcards.ctx} --seed {wildcards.seed} --out {params.run_dir} {params.flags}"
        " > {log} 2>&1"


rule published_scores:
    """One published score file, checked (known SHA-256 at the pinned commit, parseable) and copied into the
    study's results, where `collect` reads it (`--published`); fetched from the URL when there is no local copy,
    a note saying it is unavailable when that fails."""
    input:
        lambda wildcards: published_local(wildcards.name) or [],
    output:
        RESULTS + "/published/{name}",
    wildcard_constraints:
        name=r"[a-z0-9_]+-[A-Za-z0-9_.]+\.json\.gz",
    params:
        source=lambda wildcards: published_source(wildcards.name),
    log:
        LOGS + "/published/{name}.log",
    localrule: True
    shell:
        JOB_ENV + "python -m analysis.published {params.source:q} --out {output} --note-if-unavailable > {log} 2>&1"


def check_dreamerv3_runnable():
    """DreamerV3 runs in its own environment (its JAX stack conflicts with ours): a container or conda env that
    the workflow deploys (--sdm apptainer / --sdm conda), or a Python environment with DreamerV3 importable
    (KALBENCH_DREAMERV3_SRC). Without one, a study with dreamerv3 stops here, before any job, and says how to get
    it, instead of failing every DreamerV3 run mid-study. (A dry run only shows the jobs: not checked.)"""
    if "dreamerv3" not in STUDY_METHODS or _OWN_ENV or workflow.dryrun:
        return
    from importlib.util import find_spec

    from integrations.dreamerv3 import SETUP_HINT, DreamerV3Unavailable, source_dir_from_env

    try:
        src = source_dir_from_env()
    except DreamerV3Unavailable as e:
        raise WorkflowError(f"The study has method 'dreamerv3', but {e}") from None
    missing = [m for m in ("jax", "elements", "embodied", "dreamerv3") if find_spec(m) is None
               and not (src is not None and (src / m).is_dir())]
    if missing:
        raise WorkflowError(
            "The study has method 'dreamerv3', but this installation cannot run it: "
            f"{', '.join(missing)} not importable in {sys.prefix}. {SETUP_HINT} "
            "Or remove dreamerv3 from the study's experiments."
        )


onstart:
    check_dreamerv3_runnable()
