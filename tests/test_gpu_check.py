"""scripts/gpu-check.sh without a GPU (forced with --cpu-only, so that the test means the same on every machine):
it says so, runs the CPU-side pieces, reports every GPU step as skipped and exits 0; bad command lines exit 2.
scripts/gpu_check_summary.py reads a GPU run's outputs (JUnit XML, benchmark JSON, run directory) into the
documented headline numbers."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
GPU_STEPS = ("cuda_tests", "mamba_ssm", "kalman_bench", "update_bench", "train_pixels")
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check_summary  # noqa: E402


def run_script(*args, timeout=600):
    # steps' own limits x5: this checks what the script does, not how fast a shared test machine is
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_TIMEOUT_SCALE="5")
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_without_gpu_runs_the_cpu_pieces_and_reports_the_skips(tmp_path):
    out = tmp_path / "check"
    proc = run_script("--cpu-only", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--cpu-only: running the CPU-side pieces only" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status == {"environment": "ok", "cli_help": "ok", "kalman_bench_cpu": "ok",
                      **{name: "skipped" for name in GPU_STEPS}}
    assert summary["skipped"] == list(GPU_STEPS) and summary["failed"] == [] and summary["gpu"] is False
    for name in GPU_STEPS:
        assert f"== {name}: skipped (--cpu-only)" in proc.stdout
    assert json.loads((out / "environment.json").read_text())["mamba_ssm"]
    assert (out / "cli_help.log").read_text().count("--help: ok") == 3
    kalman = json.loads((out / "kalman_scan_cpu_quick.json").read_text())
    assert {r["method"] for r in kalman["results"]} == {"plain_loop", "sequential", "fused", "parallel", "auto"}
    headline = next(s["headline"] for s in summary["steps"] if s["step"] == "kalman_bench_cpu")
    assert headline.startswith("T=8 fwd+bwd ms: plain_loop ") and headline in proc.stdout


@pytest.mark.parametrize("args, message", [(["--fast"], "unknown option '--fast'"),
                                           (["a", "b"], "one output folder, got 'a' and 'b'")])
def test_bad_command_line_exits_2(args, message):
    proc = run_script(*args, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr


def test_summary_of_a_gpu_run(tmp_path):
    """Hand-made outputs of the GPU steps -> the headline numbers, the goal check and the exit status."""
    rows = [("environment", "ok", "0", "3", "environment.log"), ("cuda_tests", "ok", "0", "20", "cuda_tests.log"),
            ("mamba_ssm", "skipped", "", "0", "mamba_ssm is not importable here"),
            ("update_bench", "ok", "0", "100", "update_bench.log"), ("train_pixels", "timeout", "124", "170", "x")]
    (tmp_path / "steps.tsv").write_text("".join("\t".join(r) + "\n" for r in rows))
    (tmp_path / "cuda_tests.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="5" failures="1" errors="0" skipped="1"/></testsuites>')
    update = [{"method": m, "context_length": T, "update_s": s} for m, T, s in
              [("kalmamba", 32, 0.10), ("kalmamba", 256, 0.25), ("rssm", 256, 0.5), ("vrkn", 256, 1.0)]]
    (tmp_path / "update_step.json").write_text(json.dumps({"results": update}))
    s = gpu_check_summary.summarise(tmp_path, gpu=True)
    by_step = {x["step"]: x for x in s["steps"]}
    assert by_step["cuda_tests"]["headline"] == "3 passed, 1 failed, 1 skipped"
    data = by_step["update_bench"]["data"]
    assert data["kalmamba_ctx256_over_ctx32"] == pytest.approx(2.5) and data["goal_ctx256_over_ctx32_met"] is False
    assert data["kalmamba_over_rssm_ctx256"] == pytest.approx(0.5)
    assert data["kalmamba_over_vrkn_ctx256"] == pytest.approx(0.25)
    assert "ctx256/ctx32 2.50x (goal <= 2x: not met)" in by_step["update_bench"]["headline"]
    assert s["failed"] == ["train_pixels"] and s["skipped"] == ["mamba_ssm"]
    run = tmp_path / "train_pixels"
    run.mkdir()
    (run / "DONE").write_text(json.dumps({"final_return": 12.5, "env_steps": 8000, "wall_clock_s": 118.2,
                                          "reason": "wall_clock"}))
    assert gpu_check_summary.main([str(tmp_path), "--gpu", "1"]) == 1  # train_pixels timed out
    written = json.loads((tmp_path / "summary.json").read_text())
    train = next(x for x in written["steps"] if x["step"] == "train_pixels")
    assert train["headline"] == "8000 env steps in 118 s, final return 12.5 (wall_clock)"
