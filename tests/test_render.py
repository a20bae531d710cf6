"""rl/render.py: PYOPENGL_PLATFORM follows MUJOCO_GL; without MUJOCO_GL a pixel run picks a headless backend that
renders, or stops with one line naming the fix (issue 13, case 7). The runs go through `python -m rl.train` in a
child process, as a user starts them, with the environment under test (not the test process's)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rl import render

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("gl,preset,expected", [
    ("osmesa", "egl", "osmesa"),     # the reported case: a GPU job's PYOPENGL_PLATFORM=egl next to the user's osmesa
    ("egl", "osmesa", "egl"),
    ("egl", None, "egl"),
    ("glfw", "egl", None),           # a desktop: PyOpenGL's own default
])
def test_pyopengl_platform_follows_mujoco_gl(gl, preset, expected):
    environ = {"MUJOCO_GL": gl, **({"PYOPENGL_PLATFORM": preset} if preset else {})}
    assert render.configure(renders=True, environ=environ) == gl
    assert environ.get("PYOPENGL_PLATFORM") == expected and environ["MUJOCO_GL"] == gl


def test_state_runs_without_mujoco_gl_set_nothing():
    environ = {}
    assert render.configure(renders=False, environ=environ) is None and environ == {}


def test_flag_value():
    assert render.flag_value(["--task", "x", "--obs", "pixels"], "--obs") == "pixels"
    assert render.flag_value(["--obs=state"], "--obs") == "state"
    assert render.flag_value(["--obs"], "--obs") is None and render.flag_value([], "--obs") is None


def tiny_pixel_run(out: Path) -> list[str]:
    return [sys.executable, "-m", "rl.train", "--method", "sac", "--task", "cartpole-swingup", "--obs", "pixels",
            "--out", str(out), "--episode-length", "24", "--env-steps", "48", "--initial-episodes", "2",
            "--context-length", "2", "--batch-size", "2", "--eval-every", "48", "--eval-episodes", "1",
            "--checkpoint-every", "48", "--log-every", "48", "--device", "cpu", "--torch-threads", "1",
            "--model.depth", "4", "--model.feature_dim", "8", "--sac.hidden_dim", "16", "--sac.n_layers", "1"]


def child_env(**set_vars: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **set_vars}


@pytest.mark.parametrize("env_vars", [{}, {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "egl"}],
                         ids=["no MUJOCO_GL", "MUJOCO_GL=osmesa with PYOPENGL_PLATFORM=egl"])
def test_a_pixel_run_renders_whatever_the_user_exported(env_vars, tmp_path):
    """Without MUJOCO_GL (dm_control alone would pick glfw and fail headless with a FatalError), and with a
    mismatched PYOPENGL_PLATFORM, a pixel run renders and finishes."""
    out = subprocess.run(tiny_pixel_run(tmp_path / "run"), cwd=ROOT, env=child_env(**env_vars), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "run" / "DONE").exists()


def test_no_working_renderer_is_one_line_exit_2(tmp_path):
    """When neither egl nor osmesa renders (stood in for by a probe that always fails), the run stops before
    anything is written, with one line naming the fix."""
    code = ("import sys; from rl import render; render.probe = lambda backend, timeout=0: (False, 'stand-in'); "
            "from rl.train import main; sys.exit(main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, *tiny_pixel_run(tmp_path / "run")[3:]], cwd=ROOT,
                         env=child_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    err = out.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: no headless MuJoCo renderer works here (MUJOCO_GL is unset; tried egl: stand-in; "
                          "osmesa: stand-in)") and "set MUJOCO_GL=egl" in err and "libosmesa6" in err, err
    assert not (tmp_path / "run").exists()
