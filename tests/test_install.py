"""kalbench installs no import packages (pyproject.toml, [tool.setuptools]): outside the repository, none of its
top-level folder names is importable from the environment, so they cannot clash with a user's own `models` or
`analysis` package; inside it, the documented `python -m` entry points work from the root."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("models", "rl", "analysis", "benchmarks", "integrations", "examples")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_no_top_level_name_is_installed(tmp_path):
    code = ("import importlib.util, sys; print(sorted(n for n in sys.argv[1:] "
            "if importlib.util.find_spec(n) is not None))")
    out = subprocess.run([sys.executable, "-c", code, *NAMES], cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]", f"importable outside the repository: {out.stdout.strip()}"


def test_entry_points_run_from_the_repository_root():
    for module in ("rl.train", "analysis", "benchmarks.update_step", "benchmarks.kalman_scan"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=_env(), capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, f"python -m {module} --help: {out.stderr[-500:]}"
