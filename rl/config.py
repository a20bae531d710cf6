"""`RunConfig`, the settings of one run, and its command line.

The command line is made by tyro from the dataclasses: every `RunConfig` field is a flag (`--context-length 32`;
`--context_length` works too), `--model.<field> V` sets a field of the method's model config (`KalMambaConfig`,
`RSSMConfig`, `VRKNConfig`, `PassthroughConfig` for `sac`; rl.methods.model_config_class), `--sac.<field> V` a
field of `SACConfig`. tyro types each value from the field's annotation (int, float, bool, str, `X | None`,
tuples as several words), refuses unknown flags, and writes `--help` from the fields' comments. Why tyro: it is
the shortest readable path from a flag to the dataclass that holds it (as in CleanRL), with no typing code of ours;
simple-parsing needs the same nested-dataclass set-up and has no defaults from an instance, and YAML-typed flag
values would still need a type check of our own. bool and None are also read in their YAML spelling
(`true`/`false`, `null`), as the study files and scripts write them. `--config FILE.yaml` holds the same keys
(underscored), with `model:` and `sac:` as mappings; it becomes flags placed before the command line's, so flags win.

One validator per value: each dataclass checks its own fields in `__post_init__` (RunConfig: bounds, task, obs,
device, the model config's class and ablation switch; each model config and SACConfig: theirs), with messages that
name the field. The study schema (config/schema.yaml) holds no second copy: the workflow checks every run of a
study with `first_refused` (the run CLI itself) before any job. `check_buildable` adds what only a model's
constructor can check. Errors: one line naming the flag or field; the CLI exits 2.

The config is built once per run: `RunConfig.model` and `RunConfig.sac` are the resolved config objects (defaults,
the method's own defaults, the ablation switch, the overrides) that rl/train.py builds the agent from and writes to
config.json (`resolved()`).

The path of a study value to the model, e.g. `model: {kalmamba: {d_model: 32}}` in config/default.yaml (4 hops):
  1. workflow/rules/common.smk:run_flags   -> `--model.d_model 32` on the train rule's `python -m rl.train` line
                                               (the study's sections for one method: rl/methods.py:study_settings)
  2. rl/config.py:parse_args (tyro)         -> `KalMambaConfig(d_model=32)`, checked by its `__post_init__`, held
                                               as `RunConfig.model`
  3. rl/methods.py:build_agent              -> `KalMamba(obs_shape, action_dim, cfg.model)` (called by
                                               rl/train.py:Trainer)
  4. models/kalmamba.py:KalMamba.__init__   -> the Mamba layers of width `cfg.d_model`
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tyro
import yaml
from tyro.constructors import ConstructorRegistry, PrimitiveConstructorSpec, PrimitiveTypeInfo

from rl import envs, methods

PROG = "python -m rl.train"


@dataclass
class RunConfig:
    """Train one agent (a world model + SAC, or plain SAC) on one dm_control task; writes a run directory
    (config.json, eval.csv, train.csv, checkpoint.pt, DONE). `--model.*` lists the fields of the method's model
    config: `--method M --help` shows those of M. `--config FILE.yaml`: the same keys in a YAML file (`model:` and
    `sac:` as mappings); flags win."""
    method: str                       # a method of rl/methods.py, or of the --plugin file
    task: str                         # dm_control `domain-task`, e.g. walker-walk
    obs: str                          # pixels | state | noisy_state
    out: str                          # run directory
    plugin: str = ""                  # Python file registering --method (examples/own_method.py); loaded first
    context_length: int = 32          # L of the training sub-sequences (>= 2, at most an episode's steps + 1)
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
    sac_features: str = "map"         # SAC's training features (rl/agent.py): map | mc (one MC-dropout sample)
    model: Any = None                 # the method's model config; None: its defaults with the ablation switch
    sac: Any = None                   # SACConfig; None: its defaults with the method's own (rl.methods.sac_defaults)

    def __post_init__(self) -> None:
        """ValueError naming the first bad field. Fills `model` and `sac` with the method's defaults where None."""
        from models.sac import SACConfig

        if self.plugin:
            methods.load_plugin(self.plugin)                   # registers its method before the name is checked
        model_cls = methods.model_config_class(self.method)   # unknown method / dreamerv3 -> its own message
        for name, check in (("task", envs.parse_task), ("obs", envs.check_obs_type)):
            try:
                check(getattr(self, name))
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
        if not self.out:
            raise ValueError("out: a run directory is required")
        for name, low in MINIMUM.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name}: {getattr(self, name)} must be >= {low}")
        for name in ("updates_per_step", "obs_noise_std", "action_noise_std"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: {v} must be a finite number >= 0")
        if self.sac_features not in SAC_FEATURES:
            raise ValueError(f"sac_features: {self.sac_features!r} is not one of {', '.join(SAC_FEATURES)}")
        if not self.wall_clock_hours > 0:
            raise ValueError(f"wall_clock_hours: {self.wall_clock_hours} must be > 0")
        if not (self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:")
                                                            and self.device[5:].isdigit())):
            raise ValueError(f"device: {self.device!r} is not one of auto, cpu, cuda, cuda:N")
        entries = self.agent_steps_per_episode() + 1
        if self.context_length > entries:
            raise ValueError(f"context_length: {self.context_length} exceeds the {entries} steps of an episode "
                             f"(episode_length {self.episode_length} / action_repeat {self.resolved_action_repeat()} "
                             "+ the first observation)")
        if self.model is None:
            self.model = methods.make_model_config(self.method)
        if type(self.model) is not model_cls:
            raise ValueError(f"model: method {self.method!r} takes a {model_cls.__name__}, "
                             f"not {type(self.model).__name__}")
        for k, v in methods.ablation_switch(self.method).items():
            if getattr(self.model, k) != v:
                raise ValueError(f"model.{k}: {getattr(self.model, k)!r} contradicts method {self.method!r}, "
                                 f"which sets {k}={v!r}")
        if self.sac is None:
            self.sac = SACConfig(**methods.sac_defaults(self.method))
        if type(self.sac) is not SACConfig:
            raise ValueError(f"sac: takes a SACConfig, not {type(self.sac).__name__}")

    def resolved_action_repeat(self) -> int:
        return self.action_repeat or envs.default_action_repeat(self.task)

    def agent_steps_per_episode(self) -> int:
        return math.ceil(self.episode_length / self.resolved_action_repeat())

    def resolved(self) -> dict[str, Any]:
        """The config as written to config.json: every field, the model and SAC configs as mappings, with the
        action repeat resolved."""
        d = dataclasses.asdict(self)
        d["action_repeat"] = self.resolved_action_repeat()
        return d


SAC_FEATURES = ("map", "mc")   # rl/agent.py: Agent(sac_features=...)

MINIMUM = {"context_length": 2, "env_steps": 1, "eval_every": 1, "eval_episodes": 1, "checkpoint_every": 1,
           "batch_size": 1, "initial_episodes": 1, "episode_length": 1, "log_every": 1, "seed": 0,
           "torch_threads": 0, "action_repeat": 0}


def check_buildable(cfg: RunConfig) -> None:
    """Build the run's agent on PyTorch's meta device (no memory, no compute; ~10 ms) so that a model setting
    which only the model's constructor checks (e.g. `--model.activation Foo`) is a bad value of the command line
    (exit 2, one line), not a traceback mid-run. Not checked here: what depends on the machine (`mamba_backend cuda`
    needs a GPU and mamba_ssm; the run checks it once its device is known, rl/train.py). Shapes are stand-ins: a
    64x64 image, or an 8-dim state, 2 actions. Raises ValueError naming the method's model and the error."""
    import torch

    model_cfg = cfg.model
    if getattr(model_cfg, "mamba_backend", None) == "cuda":
        model_cfg = dataclasses.replace(model_cfg, mamba_backend="torch")
    obs_shape = (3, 64, 64) if cfg.obs == "pixels" else (8,)
    try:
        with torch.device("meta"):
            methods.build_agent(cfg.method, obs_shape, 2, model_cfg, cfg.sac, torch.device("meta"))
    except (ValueError, TypeError, AttributeError, RuntimeError) as e:
        raise ValueError(f"--model/--sac: method {cfg.method!r} cannot be built with these settings: "
                         f"{type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------------------------------------
# the command line

# bool and None as YAML spells them too (true/false, null: the study files, workflow/rules/common.smk:cli_value
# and scripts/ write them so), besides tyro's own True/False/None.
YAML_WORDS = {bool: {"True": True, "true": True, "False": False, "false": False},
              type(None): {"None": None, "null": None}}
REGISTRY = ConstructorRegistry()


@REGISTRY.primitive_rule
def _yaml_spelling(info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
    words = YAML_WORDS.get(info.type)
    if words is None:
        return None
    return PrimitiveConstructorSpec(nargs=1, metavar="{" + ",".join(words) + "}", choices=tuple(words),
                                    instance_from_str=lambda args: words[args[0]],
                                    is_instance=lambda x: isinstance(x, info.type),
                                    str_from_instance=lambda x: [str(x)])


def parse_args(argv: list[str] | None = None) -> RunConfig:
    """Command line (+ its `--config` file) -> validated RunConfig. A bad flag or value: one line naming it on
    stderr, exit status 2."""
    try:
        return load(list(sys.argv[1:] if argv is None else argv))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def load(argv: list[str]) -> RunConfig:
    """`parse_args` without exiting: ValueError with one line naming the bad flag or value."""
    argv = list(argv)
    config_file = pop_flag(argv, "--config")   # not a RunConfig field: its file becomes flags before argv's
    if config_file is not None:
        argv = as_flags(load_yaml(config_file)) + argv
    plugin = last_value(argv, "--plugin")
    if plugin:
        methods.load_plugin(plugin)   # before the method is resolved: it registers a method name and its config
    asks_help = "-h" in argv or "--help" in argv
    method = last_value(argv, "--method") or (methods.REFERENCE if asks_help else None)   # help: the paper's method
    if method is None:
        raise ValueError("missing required --method (one of " + ", ".join(methods.ALL_METHODS) + ")")
    try:
        template = cli_template(method)
    except ValueError as e:
        raise ValueError(f"--method: {e}") from None
    markers = (tyro.conf.FlagConversionOff,)   # bools take a value: --keep-replay true
    if not asks_help:   # the help text comes from the fields' comments: reading them is most of tyro's time
        markers += (tyro.conf.HelptextFromCommentsOff,)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), REGISTRY:
            cfg = tyro.cli(RunConfig, args=argv, default=template, prog=PROG, config=markers)
    except SystemExit as e:
        if not e.code:   # --help
            raise
        raise ValueError(one_line(captured.getvalue())) from None
    check_buildable(cfg)
    return cfg


def cli_template(method: str) -> RunConfig:
    """tyro's default instance for `method`: RunConfig's defaults, the method's model and SAC configs, and the
    required fields marked tyro.MISSING. A template, never a config: built without `__post_init__`."""
    from models.sac import SACConfig

    template = object.__new__(RunConfig)
    for f in dataclasses.fields(RunConfig):
        setattr(template, f.name, tyro.MISSING if f.default is dataclasses.MISSING else f.default)
    template.model = methods.make_model_config(method)
    template.sac = SACConfig(**methods.sac_defaults(method))
    return template


def one_line(box: str) -> str:
    """tyro's error box -> its message on one line (the box's first section, without 'Error parsing'). Lines before
    the box (e.g. a warning printed while the command line was parsed) are skipped."""
    lines = box.strip().splitlines()
    top = next((i for i, line in enumerate(lines) if line.lstrip().startswith("╭")), 0)
    rows = [row.strip("│╭╮╰╯ ") for row in lines[top:]]
    message = []
    for row in rows[1:]:
        if not row.strip("─ "):
            break
        message.append(row)
    text = (" ".join(message) or rows[0].strip("─ ") or "bad command line").removeprefix("Error parsing ")
    text = text.removeprefix("RunConfig: ")
    if text.startswith("Unrecognized options"):
        text += f" ({PROG} --method M --help lists the flags of method M)"
    return text


def as_flags(values: dict[str, Any]) -> list[str]:
    """RunConfig fields -> the run CLI's words: {'env_steps': 3000, 'model': {'d_model': 32}, 'keep_replay': True}
    -> ['--env-steps', '3000', '--model.d_model', '32', '--keep-replay', 'True']; a list becomes several words."""
    words: list[str] = []
    for key, value in values.items():
        if key in ("model", "sac"):
            if not isinstance(value, dict):
                raise ValueError(f"{key}: expected a mapping of fields, got {value!r}")
            for field, v in value.items():
                words += [f"--{key}.{field}", *map(str, v if isinstance(v, list) else [v])]
        else:
            words += ["--" + key.replace("_", "-"), *map(str, value if isinstance(value, list) else [value])]
    return words


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """A dict of RunConfig fields (YAML values; `model` and `sac` as mappings) -> the RunConfig the run CLI makes of
    them (they become its flags). ValueError naming the bad key or value."""
    return load(as_flags(values))


def first_refused(runs: list[dict[str, Any]]) -> tuple[int, str] | None:
    """(index, error) of the first of `runs` (dicts of RunConfig fields) that the run CLI refuses, else None.
    The workflow checks every run of a study with it before any job (workflow/rules/common.smk)."""
    for i, values in enumerate(runs):
        try:
            config_from_dict(values)
        except ValueError as e:
            return i, str(e)
    return None


def pop_flag(argv: list[str], name: str) -> str | None:
    """Remove `name V` / `name=V` from argv (in place); returns V (the last one) or None."""
    value, i = None, 0
    while i < len(argv):
        if argv[i] == name:
            if i + 1 >= len(argv):
                raise ValueError(f"{name}: expected a value")
            value = argv.pop(i + 1)
            argv.pop(i)
        elif argv[i].startswith(name + "="):
            value = argv.pop(i)[len(name) + 1:]
        else:
            i += 1
    return value


def last_value(argv: list[str], name: str) -> str | None:
    """The value of the last `name V` / `name=V` of argv (flags win over earlier ones, as in tyro), else None."""
    return pop_flag(list(argv), name)


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
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"--config {path}: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of RunConfig fields")
    return data
