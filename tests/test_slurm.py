"""`snakemake --profile slurm` against a real one-node Slurm cluster on this machine (scripts/slurm-local.sh).

A minimal slice of a study (one tiny train run and the collect step) goes through the slurm executor exactly as a
user types it from the repository root, with the train job preempted once (scancel while it trains): Slurm itself
(scontrol) must show that each job ran there, the train job with one GPU, and the run must have resumed from its
checkpoint in the retried job. Needs root and Debian's slurm-wlm + munge (scripts/setup.sh installs them with
KALBENCH_WITH_SLURM=1); skipped otherwise.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_workflow import ROOT, tiny_study

needs_cluster = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("slurmctld") is None or shutil.which("munged") is None,
                       reason="slurm-wlm and munge are not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the local Slurm cluster needs root"),
]


def _marked(*marks):
    def apply(fn):
        for mark in reversed(marks):
            fn = mark(fn)
        return fn
    return apply

SCRIPT = ROOT / "scripts" / "slurm-local.sh"
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


@pytest.fixture(scope="module")
def cluster():
    up = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield
    finally:
        down = subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr


def scontrol_job(job_id: str) -> dict[str, str]:
    """Slurm's own record of a job (kept MinJobAge = 600 s after it ends): {'JobState': 'COMPLETED', ...}."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w[\w/:]*)=(\S*)", out))


@_marked(*needs_cluster)
def test_profile_runs_a_study_slice_in_slurm_and_resumes_a_preempted_run(cluster, tmp_path):
    cfg = tiny_study("slurm", [("rssm", 0)], env_steps=5000)
    (tmp_path / "slurm.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_dir = tmp_path / "results/slurm/runs/noisy_state/walker-walk/rssm/ctx4/seed0"
    # As typed by a user from the repository root (the profile is ./slurm); results in tmp_path. `timeout -k`: a
    # status check that hangs must not hang the test suite.
    cmd = ["timeout", "-k", "10", "600", SNAKEMAKE, "--profile", "slurm", "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "slurm.yaml"), "--slurm-init-seconds-before-status-checks", "2",
           "--slurm-keep-successful-logs", "results/slurm/scores.csv"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    preempted = None
    try:
        # Preempt the train job once, after the run's first checkpoint: Slurm sends it SIGTERM (scancel).
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / "checkpoint.pt").exists() and not (run_dir / "DONE").exists():
                running = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"], capture_output=True,
                                         text=True).stdout.split()
                if running:
                    preempted = running[0]
                    subprocess.run(["scancel", preempted], check=True)
                    break
            time.sleep(0.5)
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output[-4000:]
    assert preempted is not None, "the train job was never seen running with a checkpoint"

    # Every job went through sbatch: Slurm job ids and log files under .snakemake/slurm_logs.
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", output)
    logs = {job_id: Path(log) for job_id, log in submitted}
    train_ids = [j for j, log in submitted if "/rule_train/" in log]
    collect_ids = [j for j, log in submitted if "/rule_collect/" in log]
    assert len(train_ids) == 2 and train_ids[0] == preempted, submitted   # the preempted job, then its retry
    assert len(collect_ids) == 1
    assert all(str(log).startswith(str(tmp_path / ".snakemake/slurm_logs")) for log in logs.values())

    first, retry = (scontrol_job(j) for j in train_ids)
    assert first["JobState"] == "CANCELLED"
    for job in (retry, scontrol_job(collect_ids[0])):
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0"
        assert job["WorkDir"] == str(tmp_path)
    assert retry["TresPerJob"] == "gres:gpu:1"             # one GPU per train job (the train rule's resources)
    assert retry["MinMemoryNode"] == "1000M" and retry["TimeLimit"] == "00:10:00"   # the study's resources
    assert logs[train_ids[1]].is_file() and logs[collect_ids[0]].is_file()

    # The retried job resumed the run from the checkpoint the preempted one wrote, and finished it.
    log = (tmp_path / "results/slurm/logs/runs/noisy_state/walker-walk/rssm/ctx4/seed0.log").read_text()
    assert re.search(r"resuming .* at env step [1-9]\d*", log), log[-2000:]
    done = yaml.safe_load((run_dir / "DONE").read_text())
    assert done["env_steps"] == 5000 and done["reason"] == "env_steps"
    assert (tmp_path / "results/slurm/scores.csv").is_file()


@_marked(*needs_cluster)
def test_profile_as_typed_is_the_paper_study(tmp_path):
    """`snakemake --profile slurm`, exactly as typed from the repository root, plans the paper study (dry run; the
    published scores from a local copy, as the machine is offline)."""
    from tests.test_workflow import job_stats

    (tmp_path / "dmc_vision-dreamerv3.json.gz").write_bytes(b"")
    local = '{"published": {"local_dir": "%s"}}' % tmp_path
    out = subprocess.run([SNAKEMAKE, "--profile", "slurm", "-n", "--forceall", "--nolock", "--config",
                          f"dreamerv3={local}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    assert re.search(r"Using profiles? slurm\b", out.stdout), out.stdout[:500]   # (+ the workflow profile profiles/default)
    stats = job_stats(out.stdout)
    assert stats["train"] == 245 and stats["train_dreamerv3"] == 20 and stats["all"] == 1


# ---------------------------------------------------------------------------------------------------------------
# A stand-in sbatch (no cluster needed): what the profile submits

STAND_IN_SBATCH = """#!/bin/bash
# A stand-in for sbatch: records its arguments, submits nothing.
printf '%s\\n' "$*" >> "$FAKE_SBATCH_LOG"
echo "sbatch: error: stand-in sbatch, nothing submitted" >&2
exit 1
"""


def submitted_train_job(tmp_path: Path, *args: str, **env: str) -> str:
    """The sbatch arguments of the train job of a one-run study under `snakemake --profile slurm ARGS`, as typed
    from the repository root, with a stand-in sbatch (and do-nothing squeue/sinfo/sacct) first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(STAND_IN_SBATCH)
    for tool in ("squeue", "sinfo", "sacct", "scontrol", "sacctmgr", "sshare"):
        (bin_dir / tool).write_text("#!/bin/bash\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    (tmp_path / "fs.yaml").write_text(yaml.safe_dump(tiny_study("fs", [("rssm", 0)]), sort_keys=False))
    calls = tmp_path / "sbatch_calls.txt"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KALBENCH_SLURM_")}
    environ.update({"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SBATCH_LOG": str(calls),
                    "KALBENCH_SLURM_ACCOUNT": "acct", **env})
    out = subprocess.run([SNAKEMAKE, "--profile", "slurm", "--directory", str(tmp_path / "work"), "--configfile",
                          str(tmp_path / "fs.yaml"), "--retries", "0", *args, "--",
                          "results/fs/runs/noisy_state/walker-walk/rssm/ctx4/seed0/DONE"],
                         cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=600)
    assert "stand-in sbatch, nothing submitted" in out.stdout, out.stdout[-3000:]
    (call,) = calls.read_text().splitlines()
    return call.split(" --wrap=")[0]


@pytest.mark.parametrize("override", ["train:runtime=30", "train:qos=long"])
def test_a_command_line_set_resources_keeps_the_gpu_and_gpu_partition(override, tmp_path):
    """Issue 13, case 6: a `--set-resources` on the command line replaces the profile's whole `set-resources`; the
    train job must still ask for its GPU in the GPU partition (they are the train rule's own resources)."""
    call = submitted_train_job(tmp_path, "--set-resources", override, KALBENCH_SLURM_GPU_PARTITION="gpuq",
                               KALBENCH_SLURM_PARTITION="cpuq")
    words = call.split()
    assert "--gpus=1" in words and "--gres=gpu:1" not in call, call
    assert "-p gpuq" in call and "-A acct" in call, call
    assert ("-t 30" if "runtime" in override else "--qos=long") in call, call   # the override applies too
    assert "--mem 1000" in call and "--cpus-per-task=1" in words, call     # the study's resources


def test_gres_switch_asks_for_the_gpu_with_gres(tmp_path):
    """KALBENCH_SLURM_GPU_FLAG=gres: clusters that refuse --gpus get --gres=gpu:1 (and never both)."""
    call = submitted_train_job(tmp_path, "--set-resources", "train:runtime=30", KALBENCH_SLURM_GPU_FLAG="gres")
    assert "--gres=gpu:1" in call.split() and "--gpus" not in call, call
