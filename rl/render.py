"""MuJoCo's renderer for pixel observations: the one place that sets `MUJOCO_GL` and `PYOPENGL_PLATFORM`.

dm_control picks its OpenGL backend from `MUJOCO_GL` when it is first imported, and PyOpenGL its platform from
`PYOPENGL_PLATFORM`; the two must agree (MUJOCO_GL=osmesa with PYOPENGL_PLATFORM=egl renders nothing). Rules:

- `MUJOCO_GL` set (by the user, a container, a job script): it is kept, and `PYOPENGL_PLATFORM` follows it:
  egl -> egl, osmesa -> osmesa, anything else (glfw, a desktop) -> unset (PyOpenGL's own default).
- `MUJOCO_GL` unset and the process renders (pixel observations): the first headless backend that renders a
  frame in a child process, egl (a GPU driver) then osmesa (software, Debian `libosmesa6`), is chosen; if none
  does, `RendererUnavailable` names what was tried and the fix.
- `MUJOCO_GL` unset and nothing is rendered (state observations): nothing is set.

`configure` must run before dm_control is first imported (rl/train.py and integrations/dreamerv3/launch.py call
it first thing).
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import MutableMapping

HEADLESS = ("egl", "osmesa")        # tried in this order when MUJOCO_GL is unset
PYOPENGL_PLATFORM = {"egl": "egl", "osmesa": "osmesa"}
PROBE_TIMEOUT_S = 120

# Renders one 8x8 frame of a one-geom model, as the runs render (dm_control's Physics.render).
_PROBE = ("from dm_control import mujoco; "
          "p = mujoco.Physics.from_xml_string('<mujoco><worldbody><light pos=\"0 0 1\"/><geom size=\".1\"/>"
          "</worldbody></mujoco>'); p.render(8, 8); p.free()")

FIX = ("set MUJOCO_GL=egl (needs an NVIDIA/EGL driver) or MUJOCO_GL=osmesa (needs Debian's libosmesa6: "
       "`apt-get install libosmesa6`); README: 'Training one agent'")


class RendererUnavailable(ValueError):
    """No headless MuJoCo renderer works on this machine (a setting of the machine: the run exits 2)."""


def follow(environ: MutableMapping[str, str] = os.environ) -> None:
    """Make PYOPENGL_PLATFORM agree with MUJOCO_GL (module docstring); no-op when MUJOCO_GL is unset."""
    gl = environ.get("MUJOCO_GL")
    if not gl:
        return
    if gl in PYOPENGL_PLATFORM:
        environ["PYOPENGL_PLATFORM"] = PYOPENGL_PLATFORM[gl]
    else:
        environ.pop("PYOPENGL_PLATFORM", None)


def probe(backend: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Render one frame with `backend` in a child process: (True, "") or (False, the last line of its error)."""
    env = {**os.environ, "MUJOCO_GL": backend}
    follow(env)
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"no frame within {timeout:.0f} s"
    if out.returncode == 0:
        return True, ""
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    return False, lines[-1] if lines else f"exit status {out.returncode}"


def flag_value(argv: list[str], name: str) -> str | None:
    """The value of `name` (e.g. "--obs") in a command line, as `--obs X` or `--obs=X`; None if absent. Read before
    the command line is parsed (parsing may import dm_control)."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return None


def configure(renders: bool, environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set MUJOCO_GL / PYOPENGL_PLATFORM for this process (module docstring) before dm_control is imported.

    renders: whether the process renders frames (pixel observations). Returns the backend in use (None: unset,
    nothing renders). Raises RendererUnavailable when it renders, MUJOCO_GL is unset and no headless backend works.
    """
    if environ.get("MUJOCO_GL"):
        follow(environ)
        return environ["MUJOCO_GL"]
    if not renders:
        return None
    if "dm_control._render" in sys.modules:
        raise RuntimeError("rl.render.configure: dm_control was imported before the renderer was chosen")
    tried = []
    for backend in HEADLESS:
        ok, why = probe(backend)
        if ok:
            environ["MUJOCO_GL"] = backend
            follow(environ)
            return backend
        tried.append(f"{backend}: {why}")
    raise RendererUnavailable(f"no headless MuJoCo renderer works here (MUJOCO_GL is unset; tried "
                              f"{'; '.join(tried)}); {FIX}")
