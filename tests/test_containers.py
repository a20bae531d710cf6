"""The Apptainer definitions and the conda environment install what the project pins.

Apptainer is not installable here (neither in Debian 12 nor on PyPI), so the definition files are parsed (spython)
and checked, not built: containers/kalbench.def builds the environment of environment.yml, whose pip part must
carry pyproject.toml's dependencies with the same version specifiers; the CUDA extra (mamba-ssm) it compiles has
pyproject's pin; containers/dreamerv3.def pins the same DreamerV3 libraries as workflow/envs/dreamerv3.yaml and
the same simulator as pyproject.toml.
"""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def recipe(name: str):
    from spython.main.parse.parsers import SingularityParser

    stages = SingularityParser(str(ROOT / "containers" / name)).recipe
    assert len(stages) == 1, f"{name}: one build stage expected"
    return next(iter(stages.values()))


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements(specs) -> dict[str, Requirement]:
    """{canonical name: Requirement} of requirement strings (comments and pip options skipped)."""
    reqs = {}
    for spec in specs:
        spec = spec.split("#")[0].strip()
        if not spec or spec.startswith("-"):
            continue
        r = Requirement(spec)
        reqs[canonicalize_name(r.name)] = r
    return reqs


def conda_env(path: Path) -> tuple[list[str], list[str]]:
    """(conda dependencies, pip lines) of a conda environment file."""
    env = yaml.safe_load(path.read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next((d["pip"] for d in env["dependencies"] if isinstance(d, dict)), [])
    return conda, pip


def post_requirements(post: str) -> dict[str, Requirement]:
    """The quoted requirement specs of `pip install` commands in a %post section."""
    text = post.replace("\\\n", " ")
    specs = []
    for line in text.splitlines():
        if "pip install" in line:
            specs += [w for w in shlex.split(line.split("pip install", 1)[1]) if not w.startswith("-")
                      and re.match(r"^[A-Za-z0-9_.\-\[\]]+\s*([<>=!~]=?|$)", w)]
    return requirements(specs)


# ---------------------------------------------------------------------------------------------------------------
# environment.yml

def test_environment_yml_mirrors_pyproject():
    conda, pip = conda_env(ROOT / "environment.yml")
    assert "python=3.11" in conda and "pip" in conda
    env = requirements(pip)
    project = requirements(pyproject()["project"]["dependencies"])
    assert set(env) == set(project), f"only in one of them: {set(env) ^ set(project)}"
    for name, req in project.items():
        if name == "torch":
            continue
        assert env[name].specifier == req.specifier, f"{name}: {env[name]} vs pyproject {req}"
        assert env[name].extras == req.extras, name


def test_environment_yml_pins_the_tested_torch_as_a_cuda_build():
    _, pip = conda_env(ROOT / "environment.yml")
    torch = requirements(pip)["torch"]
    (pin,) = [s.version for s in torch.specifier if s.operator == "=="]
    # the version that the CPU set-up installs and CI tests (scripts/setup.sh: KALBENCH_TORCH default) ...
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert re.search(r"torch==\$\{KALBENCH_TORCH:-" + re.escape(pin) + r"\}", setup)
    # ... satisfies pyproject's requirement, and comes from a CUDA wheel index
    assert pyproject_torch().specifier.contains(pin)
    index = [line for line in pip if line.startswith("--extra-index-url")]
    assert len(index) == 1 and re.search(r"/whl/cu\d+$", index[0])


def pyproject_torch() -> Requirement:
    return requirements(pyproject()["project"]["dependencies"])["torch"]


# ---------------------------------------------------------------------------------------------------------------
# containers/kalbench.def

def test_kalbench_def_builds_environment_yml_on_cuda():
    r = recipe("kalbench.def")
    assert re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-(cudnn-)?devel-ubuntu\d+\.\d+", r.fromHeader), r.fromHeader
    files = [line.split() for line in r.files]
    assert ["environment.yml", "/opt/kalbench/environment.yml"] in files
    post = "\n".join(r.install)
    assert "env create --yes --prefix /opt/env --file /opt/kalbench/environment.yml" in post
    environ = dict(line.split("=", 1) for line in r.environ)
    # Issue 13, case 7: the image sets no renderer, so a user's MUJOCO_GL wins and the run picks one (rl/render.py).
    assert "MUJOCO_GL" not in environ and "PYOPENGL_PLATFORM" not in environ
    assert environ["PATH"].startswith("/opt/env/bin:")
    # The CUDA major version of the base image is the one of environment.yml's torch wheels (cuXY -> X).
    cuda_major = re.match(r"nvidia/cuda:(\d+)\.", r.fromHeader).group(1)
    _, pip = conda_env(ROOT / "environment.yml")
    (index,) = [line for line in pip if line.startswith("--extra-index-url")]
    assert re.search(r"/whl/cu(\d+)$", index).group(1)[:-1] == cuda_major


def test_kalbench_def_installs_pyprojects_cuda_extra_pins():
    post = "\n".join(recipe("kalbench.def").install)
    installed = post_requirements(post)
    cuda = requirements(pyproject()["project"]["optional-dependencies"]["cuda"])
    assert set(cuda) <= set(installed), f"missing from the image: {set(cuda) - set(installed)}"
    for name, req in cuda.items():
        assert installed[name].specifier == req.specifier, f"{name}: {installed[name]} vs pyproject {req}"
    # nothing from pyproject's main dependencies is installed outside environment.yml, with another version
    project = requirements(pyproject()["project"]["dependencies"])
    for name, req in installed.items():
        if name in project:
            assert req.specifier == project[name].specifier, name
    assert "--no-build-isolation" in post   # mamba-ssm compiled against the environment's torch


def test_post_requirements_reads_pip_install_lines():
    """The parser the pin checks rely on, on a known %post (so a check cannot pass by reading nothing)."""
    post = ('python -m pip install --no-cache-dir \\\n    "mamba-ssm==2.3.2.post1" "causal-conv1d>=1.4"\n'
            'echo done\npip install -q "numpy<2" packaging')
    reqs = post_requirements(post)
    assert {n: str(r.specifier) for n, r in reqs.items()} == {"mamba-ssm": "==2.3.2.post1",
                                                              "causal-conv1d": ">=1.4", "numpy": "<2",
                                                              "packaging": ""}


# ---------------------------------------------------------------------------------------------------------------
# containers/dreamerv3.def

def dreamerv3_def_pins() -> dict[str, Requirement]:
    """Every pinned requirement of containers/dreamerv3.def: its constraints file and its pip install lines."""
    post = "\n".join(recipe("dreamerv3.def").install)
    constraints = re.search(r"<<'EOF'\n(.*?)\nEOF", post, re.S)
    assert constraints, "dreamerv3.def: the constraints heredoc was not found"
    return {**requirements(constraints.group(1).splitlines()), **post_requirements(post)}


def test_dreamerv3_def_pins_match_its_conda_env_and_pyproject():
    pins = dreamerv3_def_pins()
    _, pip = conda_env(ROOT / "workflow" / "envs" / "dreamerv3.yaml")
    conda = requirements(pip)
    project = requirements(pyproject()["project"]["dependencies"])
    exact = {n: r for n, r in pins.items() if any(s.operator == "==" for s in r.specifier)}
    assert {"elements", "dm-control", "mujoco"} <= set(exact)
    for name, req in exact.items():
        assert name in conda, f"{name} is pinned in dreamerv3.def but not in workflow/envs/dreamerv3.yaml"
        assert conda[name].specifier == req.specifier, f"{name}: {req} vs conda env {conda[name]}"
        if name in project:   # the simulator of our tasks: the same as kalbench's own environment
            assert project[name].specifier == req.specifier, f"{name}: {req} vs pyproject {project[name]}"


def test_dreamerv3_def_checks_out_the_pinned_commit():
    from integrations.dreamerv3 import PINNED_COMMIT

    post = "\n".join(recipe("dreamerv3.def").install)
    assert f"DREAMERV3_COMMIT={PINNED_COMMIT}" in post
    environ = dict(line.split("=", 1) for line in recipe("dreamerv3.def").environ)
    assert "MUJOCO_GL" not in environ and "PYOPENGL_PLATFORM" not in environ   # rl/render.py chooses (case 7)


@pytest.mark.parametrize("name", ["kalbench.def", "dreamerv3.def"])
def test_definitions_are_used_by_the_workflow(name):
    """The image each definition builds is the one the workflow's rules name (containers/<name>.sif)."""
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    sif = "containers/" + name.replace(".def", ".sif")
    if name == "kalbench.def":
        assert schema["properties"]["container"]["default"] == sif
    else:
        assert schema["properties"]["dreamerv3"]["properties"]["container"]["default"] == sif
        assert sif in (ROOT / "workflow" / "rules" / "dreamerv3.smk").read_text()
