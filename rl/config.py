"""`RunConfig`, the settings of one run, and the command line built from it.

Every field is a flag with underscores turned into dashes (`--context-length 32`). `--model.<field> V`
sets a field of the method's model config dataclass (`KalMambaConfig`, `RSSMConfig`, `VRKNConfig`,
`PassthroughConfig` for `sac`), `--sac.<field> V` a field of `SACConfig`; values are typed from those
dataclasses. `--config FILE.yaml` holds the same keys (underscored), with `model:` and `sac:` as nested
mappings; flags given on the command line win over the file. Unknown fields and bad values are errors that
name them.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rl import envs, methods


@dataclass
class RunConfig:
    method: str                       # a method of rl/methods.py, or of the --plugin file
    task: str                         # dm_control `domain-task`, e.g. walker-walk
    obs: str                          # pixels | state | noisy_state
    out: str                          # run directory
    plugin: str = ""                  # Python file registering --method (examples/own_method.py); loaded first
    context_length: int = 32          # L of the training sub-sequences
    seed: int = 0
    env_steps: int = 1_000_000        # budget in simulator steps (agent steps x action repeat)
    wall_clock_hours: float = 24.0    # budget in accumulated wall-clock hours (summed over restarts)
    eval_every: int = 20_000          # env steps between evaluations
    eval_episodes: int = 20           # episodes per evaluation (deterministic action, MC dropout off)
    checkpoint_every: int = 10_000    # env steps between checkpoints (taken at episode boundaries)
    device: str = "auto"              # auto (cuda if available) | cpu | cuda | cuda:N
    torch_threads: int = 0            # 0: PyTorch's default
    batch_size: int = 32              # B sequences per update
    initial_episodes: int = 5         # random-policy episodes before the first update
    updates_per_step: float = 0.5     # gradient updates per agent step of the last collected episode
    obs_noise_std: float = 0.3        # noisy_state only
    action_noise_std: float = 0.3     # noisy_state only
    action_repeat: int = 0            # 0: PlaNet default of the domain (rl/envs.py)
    episode_length: int = 1000        # simulator steps per episode
    log_every: int = 5_000            # env steps between rows of train.csv
    keep_replay: bool = False         # keep the replay episodes on disk once the run is DONE
    model: dict = field(default_factory=dict)   # model-config overrides (--model.<field>)
    sac: dict = field(default_factory=dict)     # SACConfig overrides (--sac.<field>)

    def resolved_action_repeat(self) -> int:
        return self.action_repeat or envs.default_action_repeat(self.task)

    def agent_steps_per_episode(self) -> int:
        return math.ceil(self.episode_length / self.resolved_action_repeat())

    def model_config(self) -> Any:
        """The method's model config: defaults, `model` overrides, ablation switch."""
        overrides = typed_fields(methods.model_config_class(self.method), self.model, "model")
        try:
            return methods.make_model_config(self.method, overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"--model: {e}") from None

    def sac_config(self) -> Any:
        """SACConfig: defaults, the method's own defaults (rl.methods: Method.sac), `sac` overrides."""
        from models.sac import SACConfig

        try:
            return SACConfig(**{**methods.sac_defaults(self.method), **typed_fields(SACConfig, self.sac, "sac")})
        except (TypeError, ValueError) as e:
            raise ValueError(f"--sac: {e}") from None

    def validate(self) -> "RunConfig":
        """Raise ValueError naming the first bad value."""
        if self.plugin:
            methods.load_plugin(self.plugin)      # before the method name is checked
        methods.model_config_class(self.method)   # unknown method / dreamerv3 -> error
        envs.parse_task(self.task)
        envs.check_obs_type(self.obs)
        if not self.out:
            raise ValueError("--out: a run directory is required")
        minimum = {"context_length": 2, "env_steps": 1, "eval_every": 1, "eval_episodes": 1, "checkpoint_every": 1,
                   "batch_size": 1, "initial_episodes": 1, "episode_length": 1, "log_every": 1, "seed": 0,
                   "torch_threads": 0, "action_repeat": 0}
        for name, low in minimum.items():
            if getattr(self, name) < low:
                raise ValueError(f"{flag(name)}: {getattr(self, name)} must be >= {low}")
        for name in ("updates_per_step", "obs_noise_std", "action_noise_std"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{flag(name)}: {v} must be a finite number >= 0")
        if not (self.wall_clock_hours > 0):
            raise ValueError(f"--wall-clock-hours: {self.wall_clock_hours} must be > 0")
        if not (self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:")
                                                            and self.device[5:].isdigit())):
            raise ValueError(f"--device: {self.device!r} is not one of auto, cpu, cuda, cuda:N")
        entries = self.agent_steps_per_episode() + 1
        if self.context_length > entries:
            raise ValueError(f"--context-length: {self.context_length} exceeds the {entries} steps of an episode "
                             f"(episode_length {self.episode_length} / action_repeat {self.resolved_action_repeat()} "
                             "+ the first observation)")
        from models.sac import SACConfig

        self.model = typed_fields(methods.model_config_class(self.method), self.model, "model")
        self.sac = typed_fields(SACConfig, self.sac, "sac")
        self.model_config()
        self.sac_config()
        check_buildable(self)
        return self

    def resolved(self) -> dict[str, Any]:
        """The config as written to config.json: every field, with the action repeat and the full model and
        SAC configs (defaults + overrides + ablation switch) filled in."""
        d = dataclasses.asdict(self)
        d["action_repeat"] = self.resolved_action_repeat()
        d["model"] = dataclasses.asdict(self.model_config())
        d["sac"] = dataclasses.asdict(self.sac_config())
        return d


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_buildable(cfg: RunConfig) -> None:
    """Build the run's agent on PyTorch's meta device (no memory, no compute; ~10 ms) so that a model setting
    which only the model's constructor checks (e.g. `--model.activation Foo`, `--model.hidden_dim 0` of a config
    without validators) is a bad value of the command line (exit 2, one line), not a traceback mid-run.
    Not checked here: what depends on the machine (`mamba_backend cuda` needs a GPU and mamba_ssm; the run checks
    it once its device is known, rl/train.py). Shapes are stand-ins: a 64x64 image, or an 8-dim state, 2 actions.
    Raises ValueError naming the method's model and the error."""
    import torch

    model_cfg = cfg.model_config()
    if getattr(model_cfg, "mamba_backend", None) == "cuda":
        model_cfg = dataclasses.replace(model_cfg, mamba_backend="torch")
    obs_shape = (3, 64, 64) if cfg.obs == "pixels" else (8,)
    try:
        with torch.device("meta"):
            methods.build_agent(cfg.method, obs_shape, 2, model_cfg, cfg.sac_config(), torch.device("meta"))
    except (ValueError, TypeError, AttributeError, RuntimeError) as e:
        raise ValueError(f"--model/--sac: method {cfg.method!r} cannot be built with these settings: "
                         f"{type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------------------------------------
# typing values from dataclass annotations

def coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert `value` (a command-line string or a YAML value) to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, name)
            except ValueError:
                pass
        raise ValueError(f"{name}: {value!r} is not a valid {tp}")
    bad = ValueError(f"{name}: {value!r} is not a valid {getattr(tp, '__name__', tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if f.is_integer():
            return int(f)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin in (tuple, list) or tp in (tuple, list, dict) or origin is dict:
        v = yaml.safe_load(value) if isinstance(value, str) else value
        container = origin or tp
        if container in (tuple, list) and isinstance(v, (list, tuple)):
            return container(v)
        if container is dict and isinstance(v, dict):
            return v
        raise bad
    return value


def typed_fields(cls: type, overrides: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`overrides` with each value typed from `cls`'s annotation; unknown field -> ValueError naming it."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    typed = {}
    for k, v in overrides.items():
        if k not in names:
            raise ValueError(f"--{prefix}.{k}: unknown field of {cls.__name__}; valid: {', '.join(names)}")
        typed[k] = coerce(v, hints[k], f"--{prefix}.{k}")
    return typed


# ---------------------------------------------------------------------------------------------------------
# the command line

SCALAR_FIELDS = [f for f in dataclasses.fields(RunConfig) if f.name not in ("model", "sac")]
REQUIRED = [f.name for f in SCALAR_FIELDS if f.default is dataclasses.MISSING]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rl.train", description="Train one agent on one dm_control task; writes a run directory.",
        epilog="--model.<field> V sets a field of the method's model config, --sac.<field> V a field of SACConfig.")
    p.add_argument("--config", help="YAML file with the same keys (model: and sac: as mappings); flags win")
    hints = typing.get_type_hints(RunConfig)
    for f in SCALAR_FIELDS:
        default = "required" if f.default is dataclasses.MISSING else f"default {f.default}"
        p.add_argument(flag(f.name), dest=f.name, default=argparse.SUPPRESS, metavar=hints[f.name].__name__.upper(),
                       help=f"({default})")
    return p


def _dotted_overrides(rest: list[str], parser: argparse.ArgumentParser) -> dict[str, dict[str, str]]:
    """['--model.latent_dim', '230', '--sac.hidden_dim=64'] -> {'model': {...}, 'sac': {...}} (strings)."""
    out: dict[str, dict[str, str]] = {"model": {}, "sac": {}}
    i = 0
    while i < len(rest):
        arg = rest[i]
        prefix = arg[2:].split(".", 1)[0] if arg.startswith("--") else None
        if prefix not in out or "." not in arg:
            parser.error(f"unrecognized argument: {arg}")
        key = arg[len(prefix) + 3:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(rest):
            i += 1
            value = rest[i]
        else:
            parser.error(f"{arg}: expected a value")
        out[prefix][key.replace("-", "_")] = value
        i += 1
    return out


def parse_args(argv: list[str] | None = None) -> RunConfig:
    """Command line (+ optional YAML) -> validated RunConfig; errors exit with status 2 and name the value."""
    parser = build_parser()
    ns, rest = parser.parse_known_args(argv)
    given = vars(ns)
    dotted = _dotted_overrides(rest, parser)
    try:
        values: dict[str, Any] = {"model": {}, "sac": {}}
        config_file = given.pop("config", None)
        if config_file:
            values.update(load_yaml(config_file))
        values.update(given)
        values["model"] = {**values["model"], **dotted["model"]}
        values["sac"] = {**values["sac"], **dotted["sac"]}
        return config_from_dict(values)
    except ValueError as e:
        parser.error(str(e))


def requested_obs(argv: list[str]) -> str | None:
    """The observation type a command line asks for (`--obs X`, `--obs=X`, or `obs:` of its `--config` file), read
    without checking anything and without importing dm_control (rl/render.py must choose the renderer first).
    None if it names none or cannot be read (parse_args then reports the problem)."""
    from rl.render import flag_value

    obs = flag_value(argv, "--obs")
    if obs is None and flag_value(argv, "--config") is not None:
        try:
            obs = load_yaml(flag_value(argv, "--config")).get("obs")
        except (OSError, ValueError, yaml.YAMLError):
            return None
    return obs if isinstance(obs, str) else None


def load_yaml(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of RunConfig fields")
    for k in ("model", "sac"):
        if not isinstance(data.get(k, {}), dict):
            raise ValueError(f"--config {path}: {k!r} must be a mapping")
    return data


def first_refused(runs: list[dict[str, Any]]) -> tuple[int, str] | None:
    """(index, error) of the first of `runs` (dicts of RunConfig fields) that `config_from_dict` refuses, else None.
    The workflow checks every run of a study with it before any job (workflow/rules/common.smk)."""
    for i, values in enumerate(runs):
        try:
            config_from_dict(values)
        except ValueError as e:
            return i, str(e)
    return None


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Type and validate a dict of RunConfig fields (strings or YAML values)."""
    hints = typing.get_type_hints(RunConfig)
    names = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    missing = [n for n in REQUIRED if n not in values]
    if missing:
        raise ValueError(f"missing required {', '.join(flag(n) for n in missing)}")
    typed = {k: (dict(v) if k in ("model", "sac") else coerce(v, hints[k], flag(k))) for k, v in values.items()}
    return RunConfig(**typed).validate()
