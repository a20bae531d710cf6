# From the runs to the paper's figures and tables: `python -m analysis {collect,estimates,figures,tables}`.
# analysis.plan names the files each step writes for this study (it imports neither matplotlib nor rliable).
import yaml
from analysis.plan import ESTIMATE_FILES, expected_figures, expected_tables
from rl.io import atomic_write_text

ANALYSIS = config["resources"]["analysis"]   # the schema's default unless the study sets it
# DreamerV3's published scores (PUBLISHED_FILES, common.smk) enter the scores table as
# source=published where the study has DreamerV3 runs or asks for them (`dreamerv3: {published: ...}`).
WANTS_PUBLISHED = "dreamerv3" in STUDY_METHODS or "published" in (config.get("dreamerv3") or {})
PUBLISHED = PUBLISHED_FILES if WANTS_PUBLISHED else []
FIGURES = expected_figures(config)
TABLES = expected_tables(config)


rule study_config:
    """The study config as this workflow resolved it (validated, schema defaults filled in): what the analysis
    reads (`--study-config`), and the study's provenance in the report. Rewritten when the config changes."""
    output:
        report(RESULTS + "/study.yaml", caption="../report/study.rst", category="Provenance"),
    params:
        study=config,
    localrule: True
    run:
        atomic_write_text(output[0], yaml.safe_dump(params.study, sort_keys=False))


rule collect:
    """All run directories -> scores.csv (one row per evaluation), runs.csv and incomplete.csv (one row per run),
    probe.csv (the belief probe of every run on states, rl/probe.py). Its input is every run's DONE: it starts only
    when all runs are complete, and never sees a run mid-write."""
    input:
        done=DONE_FILES,
        study=rules.study_config.output[0],
        published=PUBLISHED,
    output:
        scores=RESULTS + "/scores.csv",
        runs=report(RESULTS + "/runs.csv", caption="../report/runs.rst", category="Runs"),
        incomplete=RESULTS + "/incomplete.csv",
        published=RESULTS + "/published.csv",
        probe=RESULTS + "/probe.csv",
    log:
        LOGS + "/collect.log",
    threads: ANALYSIS["cpus_per_task"]
    resources:
        **job_resources(ANALYSIS),
    shell:
        JOB_ENV + "export OMP_NUM_THREADS={threads} MPLBACKEND=Agg; "
        "python -m analysis collect --results {RESULTS} --study-config {input.study}"
        + (" --published {input.published:q}" if PUBLISHED else "")
        + " > {log} 2>&1"


rule estimates:
    """rliable interval estimates: IQM, median, mean, optimality gap with stratified-bootstrap CIs; performance
    profiles; probability of improvement; sample-efficiency curves; the belief probe's mean R^2 with CIs."""
    input:
        rules.collect.output.scores,
        runs=rules.collect.output.runs,
        published=rules.collect.output.published,
        probe=rules.collect.output.probe,
        study=rules.study_config.output[0],
    output:
        expand(RESULTS + "/estimates/{name}.csv", name=ESTIMATE_FILES),
    log:
        LOGS + "/estimates.log",
    threads: ANALYSIS["cpus_per_task"]
    resources:
        **job_resources(ANALYSIS),
    params:
        reps=config["analysis"]["bootstrap_reps"],
        seed=config["analysis"]["seed"],
    shell:
        JOB_ENV + "export OMP_NUM_THREADS={threads} MPLBACKEND=Agg; "
        "python -m analysis estimates --results {RESULTS} --study-config {input.study}"
        " --reps {params.reps} --seed {params.seed} > {log} 2>&1"


rule figures:
    """The paper's figures (PDF for the paper, PNG for the report)."""
    input:
        rules.estimates.output,
        rules.collect.output.scores,
        rules.bench.output if "benchmark" in config else [],
        study=rules.study_config.output[0],
    output:
        pdf=expand(RESULTS + "/figures/{name}.pdf", name=FIGURES),
        png=[
            report(f"{RESULTS}/figures/{name}.png", caption="../report/figure.rst", category="Figures",
                   labels={"figure": name})
            for name in FIGURES
        ],
    log:
        LOGS + "/figures.log",
    threads: ANALYSIS["cpus_per_task"]
    resources:
        **job_resources(ANALYSIS),
    shell:
        JOB_ENV + "export OMP_NUM_THREADS={threads} MPLBACKEND=Agg; "
        "python -m analysis figures --results {RESULTS} --study-config {input.study} > {log} 2>&1"


rule tables:
    """Final-score IQM [95% CI] per method and task, as Markdown and LaTeX (booktabs)."""
    input:
        rules.estimates.output,
        study=rules.study_config.output[0],
    output:
        md=[
            report(f"{RESULTS}/tables/{name}.md", caption="../report/table.rst", category="Tables",
                   labels={"table": name})
            for name in TABLES
        ],
        tex=expand(RESULTS + "/tables/{name}.tex", name=TABLES),
    log:
        LOGS + "/tables.log",
    threads: ANALYSIS["cpus_per_task"]
    resources:
        **job_resources(ANALYSIS),
    shell:
        JOB_ENV + "export OMP_NUM_THREADS={threads} MPLBACKEND=Agg; "
        "python -m analysis tables --results {RESULTS} --study-config {input.study} > {log} 2>&1"
