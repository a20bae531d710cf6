"""DreamerV3 (Hafner et al.), the official JAX implementation, as kalbench's `dreamerv3` method (issue 7).

The code of github.com/danijar/dreamerv3 at `PINNED_COMMIT` is fetched when its environment is built
(`containers/dreamerv3.def`, or `workflow/envs/dreamerv3.yaml` + its post-deploy script) and is never part of
this repository. This package holds our side only:

- `tasks`:   task names, per-episode seeds and observation layout between kalbench and DreamerV3 (stdlib + numpy)
- `envs`:    our `rl.envs` tasks behind DreamerV3's `embodied.Env` interface (needs DreamerV3 importable)
- `launch`:  `python -m integrations.dreamerv3.launch ...`: one run, written as a kalbench run directory
- `loop`:    the training loop on kalbench's schedule (DreamerV3's own agent, replay, driver, logger, checkpoint)
- `adapter`: DreamerV3's JSONL logs -> eval.csv / train.csv / config.json / DONE (pandas only)

Importing this module is cheap and never imports DreamerV3; `import_dreamerv3()` does, with a clear error
where it is not installed.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

REPO_URL = "https://github.com/danijar/dreamerv3"
# Verified in DreamerV3's history (HEAD of main when pinned, 2026-05-25, "Fix Atari frame maxpooling on reset
# (#213)"); the published score files of analysis/published.py are read at the same commit.
PINNED_COMMIT = "e3f02248693a79dc8b0ebd62c93683888ddaccfe"
# A directory holding a checkout of DreamerV3 (its `dreamerv3/` and `embodied/` packages); put first on
# sys.path by `import_dreamerv3`. The container and the conda env make DreamerV3 importable without it.
SRC_ENV_VAR = "KALBENCH_DREAMERV3_SRC"

SETUP_HINT = (
    "DreamerV3 runs in its own environment: run the workflow with `--sdm conda` (workflow/envs/dreamerv3.yaml) "
    "or `--sdm apptainer` (build containers/dreamerv3.sif from containers/dreamerv3.def), or point "
    f"{SRC_ENV_VAR} at a checkout of {REPO_URL} at commit {PINNED_COMMIT} in an environment with its "
    "requirements installed."
)


class DreamerV3Unavailable(RuntimeError):
    """DreamerV3 (or one of its dependencies) cannot be imported here."""


# Where the conda env of workflow/envs/dreamerv3.yaml puts the checkout (its post-deploy script).
PREFIX_SUBDIR = ("src", "dreamerv3")


def is_checkout(path: Path) -> bool:
    return (path / "dreamerv3" / "main.py").is_file() and (path / "embodied" / "__init__.py").is_file()


def source_dir_from_env() -> Path | None:
    """The DreamerV3 checkout to import: $KALBENCH_DREAMERV3_SRC if set (an error if it is not a checkout), else
    `<sys.prefix>/src/dreamerv3` if the environment holds one, else None (import whatever is installed)."""
    value = os.environ.get(SRC_ENV_VAR)
    if value:
        path = Path(value).expanduser().resolve()
        if not is_checkout(path):
            raise DreamerV3Unavailable(
                f"{SRC_ENV_VAR}={value} is not a DreamerV3 checkout (no dreamerv3/main.py and embodied/__init__.py)")
        return path
    path = Path(sys.prefix).joinpath(*PREFIX_SUBDIR)
    return path if is_checkout(path) else None


def import_dreamerv3() -> SimpleNamespace:
    """Import DreamerV3's entry module and libraries: namespace(main, embodied, elements, source_dir).

    Raises DreamerV3Unavailable naming the missing module and how to get DreamerV3's environment."""
    src = source_dir_from_env()
    if src is not None and str(src) not in sys.path:
        sys.path.insert(0, str(src))
    try:
        elements = importlib.import_module("elements")
        embodied = importlib.import_module("embodied")
        main = importlib.import_module("dreamerv3.main")
    except ImportError as e:
        raise DreamerV3Unavailable(f"DreamerV3 is not importable here ({e}). {SETUP_HINT}") from e
    source = Path(main.__file__).resolve().parent.parent
    return SimpleNamespace(main=main, embodied=embodied, elements=elements, source_dir=source)


def source_commit(source_dir: Path) -> str | None:
    """The git commit of a DreamerV3 checkout: `git rev-parse HEAD`, else read from .git directly (no git binary
    in the environment); None where it is not a git work tree."""
    try:
        out = subprocess.run(["git", "-C", str(source_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    git = Path(source_dir) / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None
        ref = head.split(None, 1)[1]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None
