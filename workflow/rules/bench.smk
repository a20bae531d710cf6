# The benchmarks: the update-time benchmark (paper Fig. 6, `python -m benchmarks.update_step`, flags from the study's
# `benchmark:`) and, where the study has `kalman_benchmark:`, the Kalman filter/smoother scan benchmark
# (`python -m benchmarks.kalman_scan`). Both write JSON with the machine they ran on.

# Switches of benchmarks.update_step: study key -> (flag when true, flag when false); None: the script's default.
BENCH_SWITCHES = {"breakdown": (None, "--no-breakdown"), "memory": (None, "--no-memory"), "quick": ("--quick", None)}


# The same for benchmarks.kalman_scan (--dynamax is a BooleanOptionalAction).
KALMAN_SWITCHES = {"dynamax": ("--dynamax", "--no-dynamax"), "quick": ("--quick", None)}


def bench_flags(section, switch_flags=BENCH_SWITCHES):
    """A benchmark section of the study as flags: {'context_lengths': [32, 64], 'memory': False} ->
    '--context-lengths 32 64 --no-memory'."""
    switches = [switch_flags[k][0 if v else 1] for k, v in section.items() if k in switch_flags]
    values = {k: v for k, v in section.items() if k not in switch_flags}
    return " ".join([cli_flags(values)] + [s for s in switches if s])


rule bench:
    """The update-time benchmark (Fig. 6): forward and update time and peak memory vs context length, per method,
    with the machine it ran on. The study's `benchmark:` section becomes its flags; its plugins are loaded (and
    timed, unless `benchmark.methods` lists the methods)."""
    output:
        report(RESULTS + "/bench/update_step.json", caption="../report/bench.rst", category="Benchmark"),
    log:
        LOGS + "/bench.log",
    params:
        flags=bench_flags(config.get("benchmark", {})),
        plugins=" ".join(f"--plugin {shlex.quote(p)}" for p in PLUGINS),
        gpus=job_gpus,
    threads: config["resources"]["bench"]["cpus_per_task"]
    resources:
        **job_resources(config["resources"]["bench"], gpu_job=True),
    shell:
        JOB_ENV + "export OMP_NUM_THREADS={threads}; "
        "{SCRIPTS:q}/with-free-gpu.sh {params.gpus}"
        " python -m benchmarks.update_step {params.plugins} {params.flags} --out {output} > {log} 2>&1"


rule bench_kalman:
    """The Kalman benchmark: our diagonal filter + RTS smoother, sequential loop vs parallel scan (and dynamax's
    LGSSM filter/smoother where asked), forward and backward, against the sequence length."""
    output:
        report(RESULTS + "/bench/kalman_scan.json", caption="../report/bench_kalman.rst", category="Benchmark"),
    log:
        LOGS + "/bench_kalman.log",
    params:
        flags=bench_flags(config.get("kalman_benchmark", {}), KALMAN_SWITCHES),
        gpus=job_gpus,
    threads: config["resources"]["bench"]["cpus_per_task"]
    resources:
        **job_resources(config["resources"]["bench"], gpu_job=True),
    shell:
        JOB_ENV + "export OMP_NUM_THREADS={threads}; "
        "{SCRIPTS:q}/with-free-gpu.sh {params.gpus}"
        " python -m benchmarks.kalman_scan {params.flags} --out {output} > {log} 2>&1"
