"""Method name -> world-model class, its config class, and the config switch of an ablation.

Every method but `dreamerv3` is a world model + the one SAC of models/sac.py inside the one Agent of
rl/agent.py. The model modules are imported only when a method is used.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import torch

# method -> (module, model class, config class, model family, ablation switch)
_METHODS: dict[str, tuple[str, str, str, str, dict[str, Any]]] = {
    "kalmamba": ("models.kalmamba", "KalMamba", "KalMambaConfig", "kalmamba", {}),
    "kalmamba_no_mamba": ("models.kalmamba", "KalMamba", "KalMambaConfig", "kalmamba", {"use_mamba": False}),
    "kalmamba_no_dropout": ("models.kalmamba", "KalMamba", "KalMambaConfig", "kalmamba", {"dropout": 0.0}),
    "kalmamba_no_reg": ("models.kalmamba", "KalMamba", "KalMambaConfig", "kalmamba", {"reg_alpha": 0.0}),
    "rssm": ("models.rssm", "RSSM", "RSSMConfig", "rssm", {}),
    "vrkn": ("models.vrkn", "VRKN", "VRKNConfig", "vrkn", {}),
    "sac": ("models.passthrough", "Passthrough", "PassthroughConfig", "sac", {}),
}
# SACConfig defaults of a method where its published design differs from CoRAL's "SSM + SAC" defaults
# (models/sac.py); flags win. Plain SAC: CoRAL's `plain_sac.yml` (docs/paper-notes.md#baselines), lr 3e-4, actor clip 1000.
SAC_DEFAULTS: dict[str, dict[str, Any]] = {
    "sac": {"actor_lr": 3e-4, "critic_lr": 3e-4, "actor_grad_clip": 1000.0},
}
EXTERNAL = {
    "dreamerv3": "method 'dreamerv3' is not trained by rl.train: it runs the official DreamerV3 implementation in "
                 "its own environment through integrations/dreamerv3 (`python -m integrations.dreamerv3.launch ...`, "
                 "scheduled by the workflow's dreamerv3 rule; see the README's DreamerV3 section), which writes the "
                 "same run directory",
}
METHODS = tuple(_METHODS)          # trained by rl.train
ALL_METHODS = METHODS + tuple(EXTERNAL)


def _entry(method: str) -> tuple[str, str, str, str, dict[str, Any]]:
    if method in EXTERNAL:
        raise ValueError(EXTERNAL[method])
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(ALL_METHODS)}")
    return _METHODS[method]


def model_class(method: str) -> type:
    module, cls, _, _, _ = _entry(method)
    return getattr(importlib.import_module(module), cls)


def model_config_class(method: str) -> type:
    """The dataclass whose fields `--model.<field>` sets for `method`."""
    module, _, cfg_cls, _, _ = _entry(method)
    return getattr(importlib.import_module(module), cfg_cls)


def model_family(method: str) -> str:
    """The key of the study YAML's `model:` mapping that holds this method's overrides (ablations share
    `kalmamba`'s)."""
    return _entry(method)[3]


def sac_defaults(method: str) -> dict[str, Any]:
    """SACConfig fields that `method` sets before the user's `--sac.<field>` overrides."""
    _entry(method)
    return dict(SAC_DEFAULTS.get(method, {}))


def ablation_switch(method: str) -> dict[str, Any]:
    return dict(_entry(method)[4])


def make_model_config(method: str, overrides: dict[str, Any] | None = None) -> Any:
    """The method's model config: defaults, then `overrides`, then the ablation switch. Overriding the
    switched field with another value is an error (e.g. `kalmamba_no_dropout` with `dropout=0.1`)."""
    overrides = dict(overrides or {})
    switch = ablation_switch(method)
    for k, v in switch.items():
        if k in overrides and overrides[k] != v:
            raise ValueError(f"--model.{k} {overrides[k]!r} contradicts method {method!r}, which sets {k}={v!r}")
    cls = model_config_class(method)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return cls(**{**overrides, **switch})


def build_agent(method: str, obs_shape: tuple[int, ...], action_dim: int, model_cfg: Any, sac_cfg: Any,
                device: torch.device | str):
    """World model + SAC on its features, inside the shared Agent. World models on state vectors see normalised
    observations (CoRAL); plain SAC does not (CoRAL's plain_sac.yml)."""
    from models.sac import SAC
    from rl.agent import Agent

    world_model = model_class(method)(tuple(obs_shape), action_dim, model_cfg)
    extra = list(world_model.parameters()) if world_model.critic_grad else []
    sac = SAC(world_model.feature_dim, action_dim, sac_cfg, extra_critic_params=extra)
    normalize_obs = len(obs_shape) == 1 and method != "sac"
    return Agent(world_model, sac, device, normalize_obs=normalize_obs)
