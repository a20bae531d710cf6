"""The kalbench study: runs -> collect -> rliable estimates -> figures and tables (docs/architecture.md).

    .venv/bin/snakemake --cores 2                         # config/default.yaml: the small CPU study
    snakemake --profile slurm                             # config/paper.yaml on a Slurm cluster (slurm/config.yaml)
    snakemake --profile slurm --sdm apptainer             # ... every job inside containers/*.sif
    snakemake --profile workflow/profiles/local --configfile config/paper.yaml   # a workstation with GPUs
    snakemake --report results/default/report.html        # HTML report: figures, run table, provenance

Every call also reads the workflow's own profile, profiles/default/ (`--rerun-incomplete`): after snakemake itself
was killed (kill -9, a lost login node), the same command goes on (a Snakemake lock that no live snakemake holds is
cleared: common.smk); interrupted runs resume from their checkpoints.

How a study setting reaches a run: the study YAML's `train:`, `model:` and `sac:` sections become the run CLI's
flags in `run_flags()` (workflow/rules/common.smk); the train rule (workflow/rules/train.smk) puts them on its
`python -m rl.train` command line. Results go to results/<study>/ under the working directory (the repository
root, or `--directory DIR`).
"""
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

# The repository's packages (analysis.plan names the figures) importable without installing them.
sys.path.insert(0, workflow.basedir)

# The study: config/default.yaml, unless `--configfile` names another one. That one then *replaces* default.yaml
# (Snakemake would otherwise merge it into default.yaml, and a key missing from it would silently take the small
# CPU study's value).
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config/default.yaml")


def validate_study_config():
    """Every bad key or value stops the workflow here, before any job is built, with a message naming it and where
    it is. Fills in the schema's defaults (e.g. `container`)."""
    try:
        validate(config, "config/schema.yaml")
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

report: "workflow/report/workflow.rst"



def container_image(image):
    """A local image path is relative to the repository (whatever the working directory); URIs stay as they are."""
    return image if "://" in image or os.path.isabs(image) else os.path.join(workflow.basedir, image)


# Apptainer image of every job; used only with `--sdm apptainer` (containers/kalbench.def builds it). A rule with
# its own `container:` (dreamerv3) overrides it.
container: container_image(config["container"])


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"



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


# DreamerV3 runs come from their own rule, in their own environment (issue 7).
include: "workflow/rules/dreamerv3.smk"


include: "workflow/rules/bench.smk"
include: "workflow/rules/analysis.smk"


rule all:
    """The study to its figures and tables (and everything they need: every run, the update-time benchmark, the
    estimates), and the Kalman benchmark where the study has one."""
    default_target: True
    localrule: True
    input:
        rules.figures.output,
        rules.tables.output,
        rules.bench_kalman.output if "kalman_benchmark" in config else [],


onstart:
    check_dreamerv3_runnable()
