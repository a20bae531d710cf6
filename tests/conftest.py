"""Test defaults: headless MuJoCo rendering through OSMesa (unless the caller chose a backend), one torch
thread (the CI machine has 2 cores shared by several jobs), and reproducible global seeds."""
import os

os.environ.setdefault("MUJOCO_GL", "osmesa")

from rl import render  # noqa: E402

render.follow()  # PYOPENGL_PLATFORM to match MUJOCO_GL (the caller's, or osmesa)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

