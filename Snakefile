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

from snakemake.utils import min_version

min_version("9.0")

# The repository's packages (rl.methods, analysis.plan) importable without installing them.
sys.path.insert(0, workflow.basedir)

# The study: config/default.yaml, unless `--configfile` names another one. That one then *replaces* default.yaml
# (Snakemake would otherwise merge it into default.yaml, and a key missing from it would silently take the small
# CPU study's value).
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config/default.yaml")


report: "workflow/report/workflow.rst"


# Validates the study config (config/schema.yaml, then every run against the run CLI) and defines the helpers and
# study-wide values every rule file uses (RESULTS, RUN, STUDY_RUNS, JOB_ENV, PUBLISHED_FILES, ...).
include: "workflow/rules/common.smk"


# Apptainer image of every job; used only with `--sdm apptainer` (containers/kalbench.def builds it). A rule with
# its own `container:` (dreamerv3) overrides it.
container: container_image(config["container"])


include: "workflow/rules/train.smk"
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
