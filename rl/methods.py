"""The methods kalbench compares: the one list of them, and plugins that add a user's own.

Every method but `dreamerv3` is a world model + the one SAC of models/sac.py inside the one Agent of
rl/agent.py (CoRAL's "SSM + SAC"); the world model follows `models.world_model.WorldModel`. A `Method` holds
all that the rest of kalbench knows about a method, and nothing else lists methods:
- the run CLI (rl/config.py, rl/train.py): its model and config classes, SAC defaults, ablation switch;
- the workflow (workflow/rules/common.smk): the names a study may use (the schema accepts any name; common.smk
  checks them here), the study YAML's `model:` key of its settings (`family`), the plugin file of a job;
- the analysis (analysis/plan.py, analysis/figures.py): order, display name, colour, dash pattern;
- the update-time benchmark (benchmarks/update_step.py): the methods it times by default.

Plugins. A user's method lives in one Python file (examples/own_method.py) with a world-model class, its config
dataclass and one module-level registration, e.g.

    METHOD = Method("gru", model=GRUWorldModel, config=GRUConfig, display_name="GRU", color="#000000")

`load_plugin(path)` imports the file and registers its METHOD (rl.train `--plugin`, benchmarks `--plugin`).
The workflow and the analysis must not import torch, so they read the same line as text
(`load_plugin(path, execute=False)`: the arguments must be literals, or names of classes defined in the file).

This module imports only the standard library; model modules are imported when a method's classes are needed.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")      # also a Snakemake wildcard value and a file-name part
COLOR_PATTERN = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class Method:
    """One method. `model` and `config` are classes, or "module:Class" strings imported when first needed."""
    name: str                                   # CLI `--method`, study YAML `methods:`, run-directory part
    model: str | type = ""                      # world-model class (models.world_model.WorldModel)
    config: str | type = ""                     # its config dataclass (fields: `--model.<field>`)
    display_name: str = ""                      # figures and tables ("" -> name)
    color: str = ""                             # "#rrggbb" in every figure ("" -> a spare colour by name)
    family: str = ""                            # key of the study YAML's `model:` mapping ("" -> name)
    switch: Mapping[str, Any] = field(default_factory=dict)   # ablation: config fields this method fixes
    dashes: tuple[float, ...] = ()              # line dash pattern (on, off, ... in points); () solid
    sac: Mapping[str, Any] = field(default_factory=dict)      # SACConfig defaults before the user's `--sac.*`
    normalize_obs: bool = True                  # the world model sees standardised state vectors (rl/agent.py)
    benchmark: bool = True                      # timed by `python -m benchmarks.update_step` by default
    external: str = ""                          # not trained by rl.train: how it runs instead
    plugin: str = ""                            # the file that registered it (set by load_plugin)

    def __post_init__(self):
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise ValueError(f"method name {self.name!r}: need lower-case letters, digits and _, starting "
                             "with a letter")
        if self.color and not (isinstance(self.color, str) and COLOR_PATTERN.match(self.color)):
            raise ValueError(f"method {self.name!r}: color {self.color!r} is not a '#rrggbb' hex colour")
        if not self.external and not (self.model and self.config):
            raise ValueError(f"method {self.name!r}: needs a model class and a config class")
        object.__setattr__(self, "display_name", self.display_name or self.name)
        object.__setattr__(self, "family", self.family or self.name)
        object.__setattr__(self, "dashes", tuple(self.dashes))

    @property
    def ablation(self) -> bool:
        """An ablation: the method of its `family` with the `switch` fields fixed."""
        return bool(self.switch)


# seaborn's "colorblind" palette (analysis/figures.py draws with these hex values)
_KM, _KMC = "models.kalmamba:KalMamba", "models.kalmamba:KalMambaConfig"
BUILTIN = (
    Method("kalmamba", _KM, _KMC, "KalMamba", "#d55e00"),                          # vermillion
    Method("rssm", "models.rssm:RSSM", "models.rssm:RSSMConfig", "RSSM", "#0173b2"),   # blue
    Method("vrkn", "models.vrkn:VRKN", "models.vrkn:VRKNConfig", "VRKN", "#029e73"),   # green
    # plain SAC follows CoRAL's plain_sac.yml (docs/paper-notes.md#baselines): lr 3e-4, actor clip 1000, raw (unnormalised) states
    Method("sac", "models.passthrough:Passthrough", "models.passthrough:PassthroughConfig", "SAC", "#949494",
           sac={"actor_lr": 3e-4, "critic_lr": 3e-4, "actor_grad_clip": 1000.0}, normalize_obs=False,
           benchmark=False),                                                        # grey
    Method("dreamerv3", display_name="DreamerV3", color="#cc78bc", benchmark=False,  # purple
           external="method 'dreamerv3' is not trained by rl.train: it runs the official DreamerV3 implementation "
                    "in its own environment through integrations/dreamerv3 (`python -m integrations.dreamerv3.launch "
                    "...`, scheduled by the workflow's dreamerv3 rule; see the README's DreamerV3 section), which "
                    "writes the same run directory"),
    # the ablations: KalMamba with one KalMambaConfig field switched off; warm colours and their own dot patterns
    Method("kalmamba_no_mamba", _KM, _KMC, "KalMamba w/o Mamba", "#56b4e9", family="kalmamba",       # sky blue
           switch={"use_mamba": False}, dashes=(1, 1.2), benchmark=False),
    Method("kalmamba_no_dropout", _KM, _KMC, "KalMamba w/o MC dropout", "#de8f05", family="kalmamba",  # orange
           switch={"dropout": 0.0}, dashes=(4, 1.2, 1, 1.2), benchmark=False),
    Method("kalmamba_no_reg", _KM, _KMC, "KalMamba w/o reg.", "#ca9161", family="kalmamba",           # brown
           switch={"reg_alpha": 0.0}, dashes=(4, 1.2, 1, 1.2, 1, 1.2), benchmark=False),
)
# The paper's method, the one the others are compared with: P(REFERENCE > Y) in the analysis, REFERENCE / Y update
# times in the benchmarks.
REFERENCE = "kalmamba"
# The model-free baseline: the analysis also gives P(Y > BASELINE) for every other method Y of ours (does a world
# model help SAC at all? issue 11: every SSM must beat plain SAC on noisy states).
BASELINE = "sac"
SPARE_COLORS = ("#fbafe4", "#ece133")   # pink, yellow: for a method without a colour, picked by a stable hash

_REGISTRY: dict[str, Method] = {m.name: m for m in BUILTIN}
METHODS = tuple(m.name for m in BUILTIN if not m.external)   # the built-in methods trained by rl.train
ALL_METHODS = tuple(_REGISTRY)                                  # ... and the external ones; names() adds plugins


# ---------------------------------------------------------------------------------------------------------
# lookups

def names() -> tuple[str, ...]:
    """Every registered method (built-ins in display order, then plugins in the order loaded)."""
    return tuple(_REGISTRY)


def trained() -> tuple[str, ...]:
    """The methods rl.train trains (all but the external ones)."""
    return tuple(n for n, m in _REGISTRY.items() if not m.external)


def benchmarked() -> tuple[str, ...]:
    """The methods `python -m benchmarks.update_step` times by default."""
    return tuple(n for n, m in _REGISTRY.items() if m.benchmark)


def get(method: str) -> Method:
    """The registered method; ValueError naming the valid ones if there is none of that name."""
    if method not in _REGISTRY:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(_REGISTRY)} "
                         "(a plugin's method is known once its file is loaded: --plugin FILE, or the study's plugins:)")
    return _REGISTRY[method]


def _trained(method: str) -> Method:
    m = get(method)
    if m.external:
        raise ValueError(m.external)
    return m


def _resolve(ref: str | type, method: Method) -> type:
    if isinstance(ref, type):
        return ref
    module, _, name = ref.partition(":")
    if not name:
        raise ValueError(f"method {method.name!r}: {ref!r} is a class name read without importing {method.plugin} "
                         "(load the plugin with execute=True to use its classes)")
    return getattr(importlib.import_module(module), name)


def model_class(method: str) -> type:
    m = _trained(method)
    return _resolve(m.model, m)


def model_config_class(method: str) -> type:
    """The dataclass whose fields `--model.<field>` sets for `method`."""
    m = _trained(method)
    return _resolve(m.config, m)


def model_family(method: str) -> str:
    """The key of the study YAML's `model:` mapping that holds this method's overrides (ablations share
    `kalmamba`'s)."""
    return get(method).family


def families() -> tuple[str, ...]:
    """The keys a study's `model:` mapping may have."""
    return tuple(dict.fromkeys(m.family for m in _REGISTRY.values() if not m.external))


def sac_defaults(method: str) -> dict[str, Any]:
    """SACConfig fields that `method` sets before the user's `--sac.<field>` overrides."""
    return dict(_trained(method).sac)


def ablation_switch(method: str) -> dict[str, Any]:
    return dict(_trained(method).switch)


def study_settings(config: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The run CLI's fields (rl.config.RunConfig; `model` and `sac` as mappings) that a study config
    (config/*.yaml, config/schema.yaml) gives every run of `method`: `plugin` (a plugin's method: its file), the
    `train:` section as it is, `model.<family of method>:` and `sac:`. An ablation fixes its own switched field
    (e.g. no dropout): the study's value of that field is for the full model, so the ablation does not get it (the
    run CLI refuses a value that contradicts the ablation). The workflow (common.smk: run_flags,
    check_study_runs) and benchmarks/end_to_end.py build their runs from it."""
    model = dict((config.get("model") or {}).get(model_family(method)) or {})
    for name in ablation_switch(method):
        model.pop(name, None)
    plugin = get(method).plugin
    return {**({"plugin": plugin} if plugin else {}), **config["train"], "model": model,
            "sac": dict(config.get("sac") or {})}


def make_model_config(method: str, overrides: dict[str, Any] | None = None) -> Any:
    """The method's model config: defaults, then `overrides`, then the ablation switch. Overriding the
    switched field with another value is an error (e.g. an ablation without dropout with `dropout=0.1`)."""
    overrides = dict(overrides or {})
    switch = ablation_switch(method)
    for k, v in switch.items():
        if k in overrides and overrides[k] != v:
            raise ValueError(f"--model.{k} {overrides[k]!r} contradicts method {method!r}, which sets {k}={v!r}")
    cls = model_config_class(method)
    names_ = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names_)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names_))}")
    return cls(**{**overrides, **switch})


def build_agent(method: str, obs_shape: tuple[int, ...], action_dim: int, model_cfg: Any, sac_cfg: Any,
                device: Any, sac_features: str = "map"):
    """World model + SAC on its features, inside the shared Agent. World models on state vectors see normalised
    observations (CoRAL) unless the method says otherwise (plain SAC). A model that lacks a member of the
    WorldModel protocol is a TypeError naming the members."""
    from models.sac import SAC
    from models.world_model import missing_members
    from rl.agent import Agent

    world_model = model_class(method)(tuple(obs_shape), action_dim, model_cfg)
    missing = missing_members(world_model)
    if missing:
        raise TypeError(f"method {method!r}: {type(world_model).__name__} lacks {', '.join(missing)} of the "
                        "WorldModel protocol (models/world_model.py)")
    extra = list(world_model.parameters()) if world_model.critic_grad else []
    sac = SAC(world_model.feature_dim, action_dim, sac_cfg, extra_critic_params=extra)
    normalize_obs = len(obs_shape) == 1 and _trained(method).normalize_obs
    return Agent(world_model, sac, device, normalize_obs=normalize_obs, sac_features=sac_features)


# ---------------------------------------------------------------------------------------------------------
# plugins

def load_plugin(path: str | Path, execute: bool = True) -> Method:
    """Register the method of the plugin file `path` (its module-level `METHOD = Method(...)`) and return it.

    execute=True imports the file (as module `kalbench_plugin_<stem>`): the method can be trained and timed.
    execute=False reads the METHOD line without running the file (no torch): name, display name, colour, ...
    for the workflow and the analysis; its classes stay names. Loading a file again returns its method as
    registered (a file read as text is imported when asked to execute). Raises ValueError naming the file: no such file,
    no METHOD, a name that is a built-in method or another plugin's."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".py":
        raise ValueError(f"plugin {str(path)!r}: no such Python file")
    for known in _REGISTRY.values():   # loaded before: imported once (its classes stay the same objects)
        if known.plugin and Path(known.plugin).resolve() == path.resolve():
            if isinstance(known.model, type) or not execute:
                return known
    method = dataclasses.replace(_execute(path) if execute else _read(path), plugin=str(path))
    old = _REGISTRY.get(method.name)
    if old is not None and (not old.plugin or Path(old.plugin).resolve() != path.resolve()):
        owner = "a built-in method" if not old.plugin else f"the method of plugin {old.plugin}"
        raise ValueError(f"plugin {str(path)!r}: method name {method.name!r} is {owner}; choose another name")
    _REGISTRY[method.name] = method
    return method


def load_plugins(paths: list[str] | tuple[str, ...], execute: bool = True) -> list[Method]:
    return [load_plugin(p, execute) for p in paths or ()]


def _execute(path: Path) -> Method:
    module_name = "kalbench_plugin_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module   # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise ValueError(f"plugin {str(path)!r}: importing it failed: {type(e).__name__}: {e}") from e
    method = getattr(module, "METHOD", None)
    if not isinstance(method, Method):
        raise ValueError(f"plugin {str(path)!r} registers no method: it needs a module-level "
                         "`METHOD = Method(...)` (rl.methods.Method; see examples/own_method.py)")
    return method


def _read(path: Path) -> Method:
    """The METHOD line of the file, read as text: literal arguments, class arguments by name."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as e:
        raise ValueError(f"plugin {str(path)!r}: not valid Python: {e}") from None
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if isinstance(getattr(node, "value", None), ast.Call) and any(getattr(t, "id", None) == "METHOD"
                                                                      for t in targets):
            call = node.value
            try:
                args = [_literal(a) for a in call.args]
                kwargs = {k.arg: _literal(k.value) for k in call.keywords}
                return Method(*args, **kwargs)
            except (ValueError, TypeError) as e:
                raise ValueError(f"plugin {str(path)!r}, line {node.lineno}: METHOD = Method(...) is read without "
                                 f"running the file, so its arguments must be literals or class names: {e}") from None
    raise ValueError(f"plugin {str(path)!r} registers no method: it needs a module-level "
                     "`METHOD = Method(...)` (rl.methods.Method; see examples/own_method.py)")


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Name):   # a class defined in the file: kept as its name
        return node.id
    return ast.literal_eval(node)
