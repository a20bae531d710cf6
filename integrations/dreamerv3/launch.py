"""One DreamerV3 run on a kalbench task, written as a kalbench run directory (docs/architecture.md).

    python -m integrations.dreamerv3.launch --task walker-walk --obs pixels --seed 0 --env-steps 1000000 \\
        --eval-every 20000 --eval-episodes 20 --out results/x/runs/pixels/walker-walk/dreamerv3/ctx32/seed0 \\
        [--context-length 32] [--wall-clock-hours 24] [--checkpoint-every 20000] [--device auto|cpu|cuda] \\
        [--dreamerv3-src DIR] [--configs dmc_vision ...] [--allow-unpinned] [-- DREAMERV3 FLAGS ...]

DreamerV3 (its checkout at `--dreamerv3-src`, else $KALBENCH_DREAMERV3_SRC, else `<env prefix>/src/dreamerv3`
where the conda env put it, else whatever `import dreamerv3` finds) is configured by its own system: the
`defaults` of its `dreamerv3/configs.yaml`, then the named blocks (`--configs`; default `dmc_vision` for pixels,
`dmc_proprio` for noisy_state, its own DMC setups), then kalbench's settings (JSONL logging only, the JAX
platform of `--device`), then the DreamerV3 flags after `--` (`--run.envs 4 --jax.compute_dtype float32`,
parsed by its `elements.Flags`), and last the run's identity (`task`, `seed`, `logdir`), which no flag may change.

The task is our `rl.envs` task behind DreamerV3's env interface (integrations/dreamerv3/envs.py): DreamerV3
task `kalbench_<task>`, settings `env.kalbench.*` (observation type, action repeat = the task's PlaNet repeat,
noise, image size, episode length), so it sees the same observations, action repeat, noise and evaluation
episodes as every other method. The loop (integrations/dreamerv3/loop.py) runs kalbench's schedule.

Run directory: `dreamerv3/` (DreamerV3's logdir: config.yaml, metrics.jsonl, scores.jsonl, ckpt/, replay/),
config.json (this run's settings, DreamerV3's resolved config, its commit, provenance), eval.csv, train.csv,
DONE (written last). Running the same command again resumes from DreamerV3's checkpoint; a run with DONE is
left alone. Exit status: 0 done; 143 / 130 stopped by SIGTERM / SIGINT after a checkpoint; 2 bad command line
or a run directory holding another config.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

from integrations import dreamerv3 as dv3pkg
from integrations.dreamerv3 import adapter

OBS_TYPES = ("pixels", "state", "noisy_state")
# DreamerV3's own DMC setups (its configs.yaml): pixels without proprioception, states with its 1M-parameter size.
DEFAULT_CONFIGS = {"pixels": ("dmc_vision",), "state": ("dmc_proprio",), "noisy_state": ("dmc_proprio",)}
# kalbench's settings on top of the config blocks (flags after `--` may change them): JSONL logs only (DreamerV3's
# default adds `scope`, a viewer's format that the adapter does not read).
KALBENCH_OVERRIDES = {"logger.outputs": ["jsonl"]}
# Set from --task/--seed/--out only.
IDENTITY_KEYS = ("task", "seed", "logdir")
DEVICES = ("auto", "cpu", "cuda", "gpu", "tpu")
# config.json settings that may differ between a run and its restart (as rl/train.py's RESTART_MAY_CHANGE); every
# other setting must be the same. In DreamerV3's own config: where it runs and the spelling of its logdir.
RESTART_MAY_CHANGE = ("wall_clock_hours", "device", "dreamerv3_src", "allow_unpinned")
DV3_MAY_CHANGE = ("logdir", "jax.platform")


class ConfigMismatch(ValueError):
    """The run directory holds a run with another config."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, dv3_flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="python -m integrations.dreamerv3.launch",
                                description="One DreamerV3 run on a kalbench task (see the module docstring).")
    p.add_argument("--task", required=True, help="DMC task as <domain>-<task>, e.g. walker-walk")
    p.add_argument("--obs", required=True, choices=OBS_TYPES)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--env-steps", type=int, required=True, help="budget in environment (simulator) steps")
    p.add_argument("--eval-every", type=int, required=True, help="evaluate every N env steps")
    p.add_argument("--eval-episodes", type=int, required=True)
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument("--context-length", type=int, default=None,
                   help="the study's context length of this run (DreamerV3 has none; recorded in config.json)")
    p.add_argument("--wall-clock-hours", type=float, default=math.inf)
    p.add_argument("--checkpoint-every", type=int, default=None, help="env steps (default: --eval-every)")
    p.add_argument("--device", default="auto",
                   help="auto (cuda if JAX sees a GPU) | cpu | cuda | cuda:N (the job's GPU is chosen outside: "
                        "CUDA_VISIBLE_DEVICES) | tpu")
    p.add_argument("--dreamerv3-src", default=None, help=f"DreamerV3 checkout (default: ${dv3pkg.SRC_ENV_VAR})")
    p.add_argument("--configs", nargs="+", default=None,
                   help="DreamerV3 config blocks after its defaults (default: dmc_vision / dmc_proprio)")
    env = env_defaults()
    p.add_argument("--action-repeat", type=int, default=0, help="0: the task's PlaNet action repeat (rl/envs.py)")
    p.add_argument("--obs-noise-std", type=float, default=env["obs_noise_std"], help="noisy_state only")
    p.add_argument("--action-noise-std", type=float, default=env["action_noise_std"], help="noisy_state only")
    p.add_argument("--episode-length", type=int, default=env["episode_length"], help="simulator steps")
    p.add_argument("--allow-unpinned", action="store_true",
                   help=f"run a DreamerV3 checkout at another commit than {dv3pkg.PINNED_COMMIT[:12]}")
    a = p.parse_args(ours)
    for name in ("seed",):
        if getattr(a, name) < 0:
            p.error(f"--{name} must be >= 0, got {getattr(a, name)}")
    for name in ("env_steps", "eval_every", "eval_episodes", "checkpoint_every", "context_length",
                 "episode_length"):
        value = getattr(a, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if a.action_repeat < 0 or a.obs_noise_std < 0 or a.action_noise_std < 0:
        p.error(f"--action-repeat, --obs-noise-std, --action-noise-std must be >= 0, got {a.action_repeat}, "
                f"{a.obs_noise_std}, {a.action_noise_std}")
    if not a.wall_clock_hours > 0:
        p.error(f"--wall-clock-hours must be > 0, got {a.wall_clock_hours}")
    try:
        from rl.envs import parse_task

        parse_task(a.task)
    except ValueError as e:
        p.error(str(e))
    if a.device.split(":")[0] not in DEVICES:
        p.error(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), got {a.device!r}")
    a.checkpoint_every = a.checkpoint_every or a.eval_every
    a.configs = a.configs or list(DEFAULT_CONFIGS[a.obs])
    a.dreamerv3_flags = dv3_flags
    return a


def env_defaults() -> dict:
    """rl.envs.make_env's defaults (one source of truth for every method's environment)."""
    import inspect

    from rl.envs import make_env

    params = inspect.signature(make_env).parameters
    return {name: params[name].default for name in ("obs_noise_std", "action_noise_std", "image_size",
                                                     "episode_length")}


def env_settings(a: argparse.Namespace, action_repeat: int) -> dict:
    """DreamerV3's `env.kalbench` section: the keyword arguments of KalbenchEnv (integrations/dreamerv3/envs.py)."""
    return {"obs_type": a.obs, "repeat": action_repeat, "obs_noise_std": a.obs_noise_std,
            "action_noise_std": a.action_noise_std, "size": env_defaults()["image_size"],
            "episode_length": a.episode_length}


def jax_platform(device: str) -> str:
    """`auto` -> cuda where JAX finds a GPU (asked in a subprocess: DreamerV3 sets the platform before JAX
    starts its backends), else cpu."""
    if device != "auto":
        device = device.split(":")[0]
        return "cuda" if device == "gpu" else device
    try:
        out = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return "cpu"
    return "cuda" if out.stdout.strip() == "gpu" else "cpu"


def dreamer_config(dv3, a: argparse.Namespace, action_repeat: int, logdir: Path):
    """DreamerV3's config for this run, built the way its main() builds it (see the module docstring)."""
    elements = dv3.elements
    from ruamel.yaml import YAML

    configs = YAML(typ="safe").load((dv3.source_dir / "dreamerv3" / "configs.yaml").read_text())
    unknown = [c for c in a.configs if c not in configs]
    if unknown:
        raise ValueError(f"unknown DreamerV3 config block(s) {unknown}; it has {sorted(configs)}")
    # Our suite's settings join DreamerV3's `env` section, so that `--env.kalbench.<key>` flags work.
    configs["defaults"]["env"]["kalbench"] = env_settings(a, action_repeat)
    config = elements.Config(configs["defaults"])
    for name in a.configs:
        config = config.update(configs[name])
    config = config.update({**KALBENCH_OVERRIDES, "jax.platform": jax_platform(a.device)})
    names = [f[2:].split("=")[0] for f in a.dreamerv3_flags if f.startswith("--")]
    fixed = [f"--{n}" for n in names if n in IDENTITY_KEYS or n.startswith("env.kalbench")]
    if fixed:
        raise ValueError(f"DreamerV3 flags {fixed} are set by the launcher (use --task/--seed/--out and its "
                         "environment flags --action-repeat, --obs-noise-std, --action-noise-std, --episode-length)")
    config = elements.Flags(config).parse(a.dreamerv3_flags)
    return config.update({"task": f"kalbench_{a.task}", "seed": a.seed, "logdir": str(logdir)})


def run_config(a: argparse.Namespace, dv3, dconfig, action_repeat: int, commit: str | None) -> dict:
    """config.json's settings: the run's key, schedule and DreamerV3's identity and resolved config."""
    return {"method": "dreamerv3", "task": a.task, "obs": a.obs, "context_length": a.context_length,
            "seed": a.seed, "env_steps": a.env_steps, "wall_clock_hours": a.wall_clock_hours,
            "eval_every": a.eval_every, "eval_episodes": a.eval_episodes, "checkpoint_every": a.checkpoint_every,
            "action_repeat": action_repeat, "obs_noise_std": a.obs_noise_std,
            "action_noise_std": a.action_noise_std, "episode_length": a.episode_length, "device": a.device, "dreamerv3_src": str(dv3.source_dir),
            "allow_unpinned": a.allow_unpinned,
            "dreamerv3": {"repo": dv3pkg.REPO_URL, "pinned_commit": dv3pkg.PINNED_COMMIT, "commit": commit,
                          "configs": a.configs, "flags": a.dreamerv3_flags, "config": dict(dconfig)}}


def check_restart(rundir: Path, config: dict) -> None:
    """A run directory with config.json must hold this run (same settings but those that may change)."""
    old = json.loads((rundir / "config.json").read_text())
    old_dv3, new_dv3 = old.get("dreamerv3", {}), json.loads(json.dumps(config["dreamerv3"]))
    changed = {k: (old.get(k), v) for k, v in config.items()
               if k not in RESTART_MAY_CHANGE and k != "dreamerv3" and old.get(k) != v}
    for k in ("commit", "configs", "flags"):
        if old_dv3.get(k) != new_dv3.get(k):
            changed[f"dreamerv3.{k}"] = (old_dv3.get(k), new_dv3.get(k))
    # DreamerV3's resolved config, but for what may change between restarts (where it runs, the logdir's spelling)
    old_cfg, new_cfg = flat(old_dv3.get("config", {})), flat(new_dv3["config"])
    for k in sorted(set(old_cfg) | set(new_cfg)):
        if k not in DV3_MAY_CHANGE and old_cfg.get(k) != new_cfg.get(k):
            changed[f"dreamerv3.config.{k}"] = (old_cfg.get(k), new_cfg.get(k))
    if changed:
        diff = "; ".join(f"{k}: {o!r} there, {n!r} now" for k, (o, n) in changed.items())
        raise ConfigMismatch(f"{rundir} holds a run with a different config ({diff}); use another --out or "
                             "delete that directory")


def flat(mapping: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in mapping.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions = {}
    for name in ("jax", "jaxlib", "elements", "ninjax", "portal", "granular", "optax", "numpy", "dm_control",
                 "mujoco"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def main(argv: list[str] | None = None) -> int:
    from rl import render

    argv = list(sys.argv[1:] if argv is None else argv)
    try:   # before dm_control is imported (parse_args imports it to check the task)
        render.configure(renders=render.flag_value(argv, "--obs") == "pixels")
    except render.RendererUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    a = parse_args(argv)
    rundir = Path(a.out)
    if (rundir / "DONE").exists():
        print(f"{rundir} is complete (DONE: {(rundir / 'DONE').read_text().strip()}); nothing to do", flush=True)
        return 0
    if a.dreamerv3_src:
        import os

        os.environ[dv3pkg.SRC_ENV_VAR] = a.dreamerv3_src
    try:
        dv3 = dv3pkg.import_dreamerv3()
    except dv3pkg.DreamerV3Unavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    commit = dv3pkg.source_commit(dv3.source_dir)
    if commit != dv3pkg.PINNED_COMMIT:
        message = (f"the DreamerV3 checkout {dv3.source_dir} is at commit {commit or 'unknown (no git work tree)'}, "
                   f"not the pinned {dv3pkg.PINNED_COMMIT}")
        if not a.allow_unpinned:
            print(f"error: {message} (--allow-unpinned runs it anyway, recording its commit)", file=sys.stderr)
            return 2
        print(f"warning: {message}", file=sys.stderr)

    from rl.envs import default_action_repeat

    action_repeat = a.action_repeat or default_action_repeat(a.task)
    try:
        dconfig = dreamer_config(dv3, a, action_repeat, rundir / "dreamerv3")
    except (KeyError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = run_config(a, dv3, dconfig, action_repeat, commit)
    prov = adapter.provenance(a.seed, f"jax:{dconfig.jax.platform}", package_versions())
    rundir.mkdir(parents=True, exist_ok=True)
    if (rundir / "config.json").exists():
        try:
            check_restart(rundir, config)
        except ConfigMismatch as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        adapter.record_restart(rundir, prov)
    else:
        adapter.write_config(rundir, config, prov)
    logdir = dv3.elements.Path(dconfig.logdir)
    logdir.mkdir()
    dconfig.save(logdir / "config.yaml")

    from integrations.dreamerv3 import envs
    from integrations.dreamerv3.loop import Loop, Preempted

    envs.install(dv3.main)
    schedule = {"env_steps": a.env_steps, "wall_clock_hours": a.wall_clock_hours, "eval_every": a.eval_every,
                "eval_episodes": a.eval_episodes, "checkpoint_every": a.checkpoint_every,
                "action_repeat": action_repeat}
    loop = Loop(dv3, dconfig, schedule, rundir, say=lambda m: print(m, flush=True))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, loop.on_signal)
    try:
        reason = loop.loop()
    except Preempted as e:
        loop.save_checkpoint()
        loop.write_log()
        print(f"stopped by {e}; checkpoint written, run the same command to resume", flush=True)
        return 128 + e.signum
    evals = adapter.write_logs(logdir, rundir, action_repeat)
    adapter.write_done(rundir, evals, loop.env_step(), loop.wall_clock(), reason)
    print(f"done: {(rundir / 'DONE').read_text().strip()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
