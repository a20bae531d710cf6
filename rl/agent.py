"""Agent = a world model + SAC on its features (CoRAL's "SSM + SAC"); the same class serves every method.

One training update on a batch of B sequences of length T (docs/architecture.md):
1. world-model step: `loss(obs, prev_actions, rewards)` in train() mode (MC dropout on), Adam with the
   model config's `lr` (and `adam_eps`, default 1e-8), global grad-norm clip `grad_clip`;
2. features: `features(obs, prev_actions)` recomputed with the updated model under no_grad, i.e. detached,
   unless `critic_grad` (plain SAC on pixels: the encoder is trained by the critic loss, and its parameters sit
   in SAC's critic optimiser instead of a model optimiser); with `sac_features="map"` (the default) in eval()
   mode, MC dropout off, the belief the agent acts on; with "mc" in train() mode, one MC-dropout sample, as the
   authors' CoRAL code computes SAC's training states (fidelity review, lead D6; README "KalMamba learns");
3. one SAC update on all B(T-1) transitions: s = feat[:, :-1], a = prev_actions[:, 1:], r = rewards[:, 1:],
   s' = feat[:, 1:].
A non-finite loss term or model gradient norm raises NonFiniteLossError naming it, before the model's
optimiser step; SAC's losses are checked after its step (its update is one call), which is early enough
for the training loop: it stops and never checkpoints the bad state.

Diagnostics (`diagnose`, called by the trainer once per log interval on its own batch; train.csv `diag_*`,
docs/architecture.md): per-term gradient norms of the model loss (its `loss_<part>` terms), the model's own
`diagnostics(...)` scalars if it has that method, and the scale of the features SAC sees. It changes no
parameter, optimiser state or RNG stream, so a run's training is the same with or without it.

Acting runs the model's one-step `observe` from `initial_state()` in eval() mode; the acting state carries
the model's state and the previous action.

Observation normalisation (CoRAL; docs/paper-notes.md#sac-on-beliefs): with `normalize_obs` (world models on
state vectors), the world model sees (o - mean) / std, the statistics fitted once on the initial random-policy
episodes (`fit_obs_normalizer`) and saved with the agent. Noise enters before it, inside the environment. Plain SAC
and pixel inputs are not normalised.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.diagnostics import feature_scale, gradient_norms
from rl.config import SAC_FEATURES


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf."""


def check_finite(values: dict[str, float], where: str) -> None:
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        names = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise NonFiniteLossError(f"non-finite {where} loss term(s): {names}")


OBS_STD_FLOOR = 1e-2   # a (nearly) constant state entry is centred, not blown up


class Agent:
    def __init__(self, world_model: nn.Module, sac: nn.Module, device: torch.device | str,
                 normalize_obs: bool = False, sac_features: str = "map"):
        if sac_features not in SAC_FEATURES:
            raise ValueError(f"sac_features: {sac_features!r} is not one of {', '.join(SAC_FEATURES)}")
        self.device = torch.device(device)
        self.normalize_obs = normalize_obs
        self.sac_features = sac_features
        self.obs_mean: Tensor | None = None   # (O,) set by fit_obs_normalizer
        self.obs_std: Tensor | None = None
        self.last_features: Tensor | None = None   # (F,) features of the latest `act` call
        self.world_model = world_model.to(self.device)
        self.sac = sac.to(self.device)
        params = list(world_model.parameters())
        self.model_opt = None
        if params and not world_model.critic_grad:
            cfg = world_model.cfg
            # fused: one kernel per parameter instead of ~9 ops and a host sync (the step count) each; the
            # same update as the default for-loop Adam up to rounding (tests/test_agent.py)
            self.model_opt = torch.optim.Adam(params, lr=cfg.lr, eps=getattr(cfg, "adam_eps", 1e-8), fused=True)
            self.grad_clip = cfg.grad_clip

    def fit_obs_normalizer(self, obs: np.ndarray) -> None:
        """Fit the observation statistics on `obs` (N, O), all steps of the initial episodes."""
        if not self.normalize_obs:
            return
        obs = torch.as_tensor(np.asarray(obs, np.float64))
        if obs.ndim != 2 or len(obs) < 2:
            raise ValueError(f"fit_obs_normalizer: need (N >= 2, O) state observations, got shape {tuple(obs.shape)}")
        self.obs_mean = obs.mean(0).float().to(self.device)
        self.obs_std = obs.std(0).clamp_min(OBS_STD_FLOOR).float().to(self.device)

    def normalize(self, obs: Tensor) -> Tensor:
        """What the world model sees of `obs` (..., O): (obs − mean) / std once fitted, else `obs` unchanged."""
        if self.obs_mean is None:
            return obs
        return (obs - self.obs_mean) / self.obs_std

    def _to_device(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        obs, prev_actions, rewards = (batch[k].to(self.device, non_blocking=True)
                                      for k in ("obs", "prev_actions", "rewards"))
        return self.normalize(obs), prev_actions, rewards

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One world-model step and one SAC step on `batch` (obs, prev_actions, rewards of shape (B, T, ...)).
        Returns the loss terms as floats: `model_loss`, `model_<term>`, `model_grad_norm`, `sac_<term>`."""
        obs, prev_actions, rewards = self._to_device(batch)
        wm, logs = self.world_model, {}
        if self.model_opt is not None:
            wm.train()
            loss, terms = wm.loss(obs, prev_actions, rewards)
            self.model_opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(wm.parameters(), self.grad_clip)
            names = ["model_loss"] + [f"model_{k}" for k in terms] + ["model_grad_norm"]
            values = torch.stack([loss.detach()] + [t.detach().float() for t in terms.values()] + [grad_norm])
            logs = dict(zip(names, values.tolist()))
            check_finite(logs, "world-model")
            self.model_opt.step()

        feat = self.training_features(obs, prev_actions)
        F, A = feat.shape[-1], prev_actions.shape[-1]
        sac_logs = self.sac.update(feat[:, :-1].reshape(-1, F), prev_actions[:, 1:].reshape(-1, A),
                                   rewards[:, 1:].reshape(-1), feat[:, 1:].reshape(-1, F))
        sac_logs = {f"sac_{k}": v for k, v in sac_logs.items()}
        check_finite(sac_logs, "SAC")
        return {**logs, **sac_logs}

    def training_features(self, obs: Tensor, prev_actions: Tensor) -> Tensor:
        """The features SAC is trained on (step 2 of an update): `features(obs, prev_actions)` (B, T, F) of the current
        model, obs already normalised and on the device; eval() mode, or train() mode with sac_features "mc"; with an
        autograd graph only where the model is trained through the critic (`critic_grad`)."""
        wm = self.world_model
        wm.train(self.sac_features == "mc")
        with torch.set_grad_enabled(wm.critic_grad and torch.is_grad_enabled()):
            return wm.features(obs, prev_actions)

    def diagnose(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """Diagnostics of the current model on `batch` (as in `update`), as floats named `diag_<name>`:
        - `diag_grad_<part>`: global L2 norm of the gradient of each weighted loss summand `loss_<part>` the model's
          loss returns (e.g. recon, reward, kl, reg), and `diag_grad_total` of the whole loss (pre-clip);
        - the model's `diagnostics(obs, prev_actions, rewards)` scalars (e.g. kl_active, gain_mean, obs_var_median);
        - `diag_feat_abs_mean`, `diag_feat_std`: the features SAC is trained on (eval or train mode: `sac_features`).
        The loss and model diagnostics are taken in train() mode (MC dropout on, as in the update). Parameters,
        `.grad`, optimiser states and the torch RNG are left unchanged (the RNG is forked)."""
        obs, prev_actions, rewards = self._to_device(batch)
        wm, out = self.world_model, {}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if self.model_opt is not None:
                wm.train()
                loss, terms = wm.loss(obs, prev_actions, rewards)
                parts = {k[len("loss_"):]: v for k, v in terms.items() if k.startswith("loss_")}
                norms = gradient_norms({**parts, "total": loss}, wm.parameters())
                out.update({f"grad_{k}": v for k, v in norms.items()})
                if hasattr(wm, "diagnostics"):
                    out.update(wm.diagnostics(obs, prev_actions, rewards))
            with torch.no_grad():
                out.update(feature_scale(self.training_features(obs, prev_actions)))
        values = torch.stack([v.detach().float().reshape(()) for v in out.values()]).tolist()
        return {f"diag_{k}": v for k, v in zip(out, values)}

    def initial_state(self) -> tuple[Any, Tensor]:
        """Acting state before the first observation of an episode: (model state, previous action = 0)."""
        return self.world_model.initial_state(1), torch.zeros(1, self.sac.action_dim, device=self.device)

    @torch.inference_mode()
    def act(self, obs: np.ndarray, state: tuple[Any, Tensor], deterministic: bool) -> tuple[np.ndarray, tuple]:
        """One online step: update the belief with `obs` and the previous action, then act.
        Returns the action (A,) float32 in [-1, 1] and the new acting state (inference tensors: for acting only).
        inference_mode, and eval() only when the model is not in it already (a recursive switch over every module
        cost ~0.14 ms a step): the same ops, ~25 % less time per step (README, benchmarks)."""
        if self.world_model.training:
            self.world_model.eval()
        model_state, prev_action = state
        obs_t = self.normalize(torch.as_tensor(obs, device=self.device).unsqueeze(0))
        feat, model_state = self.world_model.observe(model_state, obs_t, prev_action)
        self.last_features = feat[0]   # (F,) what SAC acted on: read by the belief probe (rl/probe.py)
        action = self.sac.act(feat, deterministic)
        return action[0].cpu().numpy(), (model_state, action)

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimiser states (SAC's optimisers are inside its own state_dict), observation statistics."""
        return {"world_model": self.world_model.state_dict(), "sac": self.sac.state_dict(),
                "model_opt": None if self.model_opt is None else self.model_opt.state_dict(),
                "obs_norm": None if self.obs_mean is None else (self.obs_mean, self.obs_std)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world_model.load_state_dict(state["world_model"])
        self.sac.load_state_dict(state["sac"])
        if self.model_opt is not None:
            self.model_opt.load_state_dict(state["model_opt"])
        norm = state["obs_norm"]
        self.obs_mean, self.obs_std = (None, None) if norm is None else (t.to(self.device) for t in norm)
