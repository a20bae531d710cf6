"""Soft actor-critic on fixed-size features (Haarnoja et al. 2018), with the CoRAL "SSM + SAC" defaults
(docs/paper-notes.md#sac-on-beliefs). It knows nothing about world models: it sees feature vectors `s` (N, F),
actions `a` (N, A) in [-1, 1], rewards `r` (N,) and next features `s'` (N, F).

One `update` = one critic step, one actor step, one temperature step, one target-critic EMA step:

    a' ~ π(·|s'),   y = r + γ (min_i Q̄_i(s', a') − α log π(a'|s'))                (no gradient, no termination)
    L_Q  = Σ_i mean (Q_i(s, a) − y)²                                              (both heads, CoRAL)
    L_π  = mean [ α log π(ã|s) − min_i Q_i(s, ã) ],   ã ~ π(·|s) reparameterised  (critic frozen, s detached)
    L_α  = α · mean(H − H_target),   H = −log π(ã|s),   α = exp(log_α)            (CoRAL's temperature loss)
    θ̄   ← τ θ̄ + (1 − τ) θ,   τ = target_ema

The actor is a tanh-squashed diagonal Gaussian:  u ~ N(μ, σ²),  a = tanh(u),
    μ = mean_scale · tanh(x_μ / mean_scale)                 (Dreamer mean scaling, mean_scale = 5)
    σ = softplus(x_σ + softplus⁻¹(init_std)) + min_std      (σ = init_std + min_std at x_σ = 0)
    log π(a|s) = Σ_d [ log N(u_d; μ_d, σ_d²) − log(1 − tanh²(u_d)) ],
    log(1 − tanh²(u)) = 2 (log 2 − u − softplus(−2u))      (numerically stable form).

Checkpointing: the three Adam optimisers (critic, actor, temperature) live on the module and their states
are part of `SAC.state_dict()` through PyTorch's extra-state hook (`get_extra_state`/`set_extra_state`,
key `<prefix>_extra_state`), so `torch.save(sac.state_dict())` / `sac.load_state_dict(...)` restore the
whole learner, target critic included. The optimiser state of `extra_critic_params` (e.g. plain SAC's
pixel encoder) is saved there too; the parameters themselves belong to their owner module.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from models import checks
from models.nets import LOG_2PI, mlp, softplus_positive


@dataclass
class SACConfig:
    """SAC hyper-parameters. Defaults: CoRAL `mf_default.yml` (docs/paper-notes.md#sac-on-beliefs)."""
    hidden_dim: int = 1024          # actor and critic width
    n_layers: int = 3               # hidden layers of actor and of each critic (ELU)
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    alpha_lr: float = 1e-3
    adam_eps: float = 1e-8
    init_alpha: float = 0.1         # entropy temperature at initialisation (exp-parameterised)
    target_entropy: float | None = None   # None -> −|A|
    gamma: float = 0.99
    target_ema: float = 0.995       # target critic θ̄ ← τ θ̄ + (1 − τ) θ, every update
    actor_grad_clip: float = 10.0   # global grad-norm clips
    critic_grad_clip: float = 100.0
    alpha_grad_clip: float = 1.0
    init_std: float = math.exp(-4.0)   # actor σ at raw output 0 is init_std + min_std (CoRAL: e^-4 ≈ 0.0183)
    min_std: float = 0.005
    mean_scale: float = 5.0          # μ = mean_scale · tanh(x / mean_scale)

    def __post_init__(self):
        checks.ints(self, 1, "hidden_dim", "n_layers")
        checks.above(self, 0, "actor_lr", "critic_lr", "alpha_lr", "adam_eps", "init_alpha", "actor_grad_clip",
                     "critic_grad_clip", "alpha_grad_clip", "init_std", "min_std", "mean_scale")
        checks.within(self, "gamma", 0, 1)
        checks.within(self, "target_ema", 0, 1)
        if self.target_entropy is not None and not (isinstance(self.target_entropy, (int, float))
                                                    and math.isfinite(self.target_entropy)):
            raise ValueError(f"target_entropy: must be a finite number or None, got {self.target_entropy!r}")


def tanh_log_det_jacobian(u: Tensor) -> Tensor:
    """log |d tanh(u) / du| = log(1 − tanh²(u)) = 2 (log 2 − u − softplus(−2u)), element-wise."""
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


class SquashedGaussianActor(nn.Module):
    """π(a|s): a = tanh(u), u ~ N(μ(s), diag σ(s)²). (N, F) -> actions (N, A) in (−1, 1)."""

    def __init__(self, feature_dim: int, action_dim: int, cfg: SACConfig):
        super().__init__()
        self.net = mlp(feature_dim, 2 * action_dim, cfg.hidden_dim, cfg.n_layers, act=nn.ELU)
        self.mean_scale, self.init_std, self.min_std = cfg.mean_scale, cfg.init_std, cfg.min_std

    def dist_params(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """Pre-squash mean and std, each (N, A)."""
        raw_mu, raw_std = self.net(s).chunk(2, dim=-1)
        mu = self.mean_scale * torch.tanh(raw_mu / self.mean_scale)
        std = softplus_positive(raw_std, init=self.init_std + self.min_std, floor=self.min_std)
        return mu, std

    @staticmethod
    def log_prob_of_pre_tanh(u: Tensor, mu: Tensor, std: Tensor) -> Tensor:
        """log π(tanh(u)) for pre-squash samples u (N, A): Gaussian log-density minus the tanh log-Jacobian,
        summed over action dimensions -> (N,)."""
        log_normal = -0.5 * ((u - mu) / std) ** 2 - torch.log(std) - 0.5 * LOG_2PI
        return (log_normal - tanh_log_det_jacobian(u)).sum(-1)

    def sample(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised sample a (N, A) and its log-probability log π(a|s) (N,)."""
        mu, std = self.dist_params(s)
        u = mu + std * torch.randn_like(mu)
        return torch.tanh(u), self.log_prob_of_pre_tanh(u, mu, std)

    def mode(self, s: Tensor) -> Tensor:
        """The deterministic action tanh(μ) (N, A) used for evaluation."""
        return torch.tanh(self.dist_params(s)[0])


class TwinQ(nn.Module):
    """Two independent Q-networks on concat(s, a): (N, F), (N, A) -> (q1 (N,), q2 (N,))."""

    def __init__(self, feature_dim: int, action_dim: int, cfg: SACConfig):
        super().__init__()
        self.q1 = mlp(feature_dim + action_dim, 1, cfg.hidden_dim, cfg.n_layers, act=nn.ELU)
        self.q2 = mlp(feature_dim + action_dim, 1, cfg.hidden_dim, cfg.n_layers, act=nn.ELU)

    def forward(self, s: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([s, a], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """θ̄ ← decay · θ̄ + (1 − decay) · θ for every parameter (buffers are copied)."""
    for p_t, p in zip(target.parameters(), online.parameters()):
        p_t.lerp_(p, 1.0 - decay)
    for b_t, b in zip(target.buffers(), online.buffers()):
        b_t.copy_(b)


class SAC(nn.Module):
    """Actor, twin critic, target critic, learned temperature, and their optimisers."""

    def __init__(self, feature_dim: int, action_dim: int, cfg: SACConfig,
                 extra_critic_params: Iterable[nn.Parameter] = ()):
        super().__init__()
        self.cfg, self.feature_dim, self.action_dim = cfg, feature_dim, action_dim
        self.actor = SquashedGaussianActor(feature_dim, action_dim, cfg)
        self.critic = TwinQ(feature_dim, action_dim, cfg)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_alpha)))
        self.target_entropy = float(-action_dim if cfg.target_entropy is None else cfg.target_entropy)

        self.extra_critic_params = list(extra_critic_params)
        self.critic_params = list(self.critic.parameters()) + self.extra_critic_params
        self.critic_opt = torch.optim.Adam(self.critic_params, lr=cfg.critic_lr, eps=cfg.adam_eps)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, eps=cfg.adam_eps)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr, eps=cfg.adam_eps)

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    @torch.no_grad()
    def act(self, features: Tensor, deterministic: bool) -> Tensor:
        """(N, F) -> (N, A) in [−1, 1]: tanh(μ) if deterministic, else a sample of π."""
        return self.actor.mode(features) if deterministic else self.actor.sample(features)[0]

    @torch.no_grad()
    def critic_target_value(self, r: Tensor, s_next: Tensor) -> Tensor:
        """y = r + γ (min_i Q̄_i(s', a') − α log π(a'|s')), a' ~ π(·|s'). (N,), (N, F) -> (N,)."""
        a_next, logp_next = self.actor.sample(s_next)
        q1, q2 = self.critic_target(s_next, a_next)
        return r + self.cfg.gamma * (torch.min(q1, q2) - self.alpha * logp_next)

    def update(self, s: Tensor, a: Tensor, r: Tensor, s_next: Tensor) -> dict[str, float]:
        """One critic, one actor, one temperature and one target-EMA step on N transitions.

        s (N, F) may carry gradient into `extra_critic_params` (used only by the critic loss); the actor
        sees s.detach(), the target s_next.detach(). Returns scalar diagnostics.
        """
        cfg = self.cfg
        # critic
        y = self.critic_target_value(r, s_next.detach())
        q1, q2 = self.critic(s, a)
        critic_loss = (q1 - y).pow(2).mean() + (q2 - y).pow(2).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        nn.utils.clip_grad_norm_(self.critic_params, cfg.critic_grad_clip)
        self.critic_opt.step()

        # actor (critic frozen so its .grad is untouched)
        s_actor = s.detach()
        alpha = self.alpha.detach()
        self.critic.requires_grad_(False)
        a_pi, logp = self.actor.sample(s_actor)
        q_pi = torch.min(*self.critic(s_actor, a_pi))
        actor_loss = (alpha * logp - q_pi).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.actor_grad_clip)
        self.actor_opt.step()
        self.critic.requires_grad_(True)

        # temperature
        entropy = -logp.detach().mean()
        alpha_loss = self.alpha * (entropy - self.target_entropy)
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        nn.utils.clip_grad_norm_([self.log_alpha], cfg.alpha_grad_clip)
        self.alpha_opt.step()

        ema_update(self.critic_target, self.critic, cfg.target_ema)
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(),
                "alpha_loss": alpha_loss.item(), "alpha": alpha.item(), "entropy": entropy.item(),
                "q_mean": 0.5 * (q1 + q2).mean().item(), "target_mean": y.mean().item()}

    # optimiser states travel inside state_dict() (key "<prefix>_extra_state")
    def get_extra_state(self) -> dict[str, Any]:
        return {"critic_opt": self.critic_opt.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
