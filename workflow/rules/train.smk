rule train:
    """One run: `python -m rl.train` for one (obs, task, method, context length, seed), into its run directory.
    Every setting comes from the study config, on the command line (run_flags in common.smk): the log shows the
    complete command, and the run's config.json the resolved config.

    The run's only declared output is DONE, which the run writes last (atomically). Snakemake deletes a job's
    declared outputs before it (re)starts the job, and only those: checkpoint.pt, eval.csv and train.csv of an
    interrupted, failed or preempted run survive, and the next attempt (a retry, or the next `snakemake`) resumes
    from the checkpoint. A run with DONE is never redone (unless its flags change: then the run refuses the old
    checkpoint, naming the changed setting). Two processes never train the same run: the run holds a lock on its
    directory (workflow/scripts/exclusive.sh), and a second one fails at once saying so."""
    output:
        RUN + "/DONE",
    log:
        LOGS + "/runs/{obs}/{task}/{method}/ctx{ctx}/seed{seed}.log",
    wildcard_constraints:
        # the methods rl.train trains, plugins included (dreamerv3 runs come from workflow/rules/dreamerv3.smk)
        method="|".join(methods.trained()),
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output[0]),
        flags=lambda wildcards: run_flags(wildcards.method),
        # GPUs this job holds: resources.train.gpus of the study (default 1; common.smk, job_resources)
        gpus=job_gpus,
    threads: config["resources"]["train"]["cpus_per_task"]
    resources:
        **job_resources(config["resources"]["train"], gpu_job=True),
    shell:
        JOB_ENV + "export OMP_NUM_THREADS={threads}; "
        "{SCRIPTS:q}/exclusive.sh {params.run_dir} {SCRIPTS:q}/with-free-gpu.sh {params.gpus}"
        " python -m rl.train --method {wildcards.method} --task {wildcards.task} --obs {wildcards.obs}"
        " --context-length {wildcards.ctx} --seed {wildcards.seed} {params.flags} --out {params.run_dir}"
        " > {log} 2>&1"
