"""Variational Recurrent Kalman Network (VRKN; Becker & Neumann, TMLR 2022) as the world model of the
"VRKN + SAC" baseline (github.com/pbecker93/vrkn; docs/paper-notes.md#baselines).

Latent state z_t ∈ R^D with a diagonal Gaussian belief; auxiliary observation (H = I) and learned prior as in KalMamba
(`models.nets.LatentObservation`):

    (w_t, σ²_w,t) = (Linear(e_t), softplus(Linear(e_t) + shift) + 0.01),   e_t = enc(o_t)      (init σ²_w = 1)
    z_0 ~ N(0, diag σ²_0),   σ²_0 = softplus(θ + shift) + 0.001 learned (init 1)                    (no transition at t = 0)
    z_t | z_{t-1} ~ N(A_t z_{t-1} + b_t, diag q_t),   (A_t, b_t, q_t) = f(μ⁺_{t-1}, a_{t-1})    (locally linear)

The transition parameters are computed from the previous *filtered mean* μ⁺_{t-1} and the action (an EKF-like
linearisation), which makes inference sequential:

    x  = MCDropout(ReLU(Linear([μ⁺_{t-1}, a_{t-1}])))
    g  = GRUCell(x, hidden = μ⁺_{t-1})                    ("fake GRU": the filtered mean is the GRU state)
    (A_raw, q_raw, b) = Linear(MCDropout(ReLU(Linear(MCDropout(g)))))       (3·D outputs)
    A  = 0.1 + 0.89 · sigmoid(A_raw + shift)   ∈ [0.1, 0.99], 0.9 at A_raw = 0
    q  = 0.001 + 0.099 · sigmoid(q_raw + shift) ∈ [0.001, 0.1], 0.01 at q_raw = 0

Inference: Kalman predict + update (Joseph form) per step, then a Rauch-Tung-Striebel smoother (`cfg.smoother`); the
single-step equations and the smoother come from `models.kalman` (not re-implemented here).

Objective: the smoothing ELBO (VRKN `AEVIObjective`; docs/paper-notes.md#smoothing-elbo). With ẑ_t ~ N(μˢ_t, Σˢ_t)
one sample of the smoothed marginals (used by the decoders and the KL):

    L = obs_scale · NLL(o_t | ẑ_t) + reward_scale · NLL(r_t | ẑ_t)          (reward_scale: 10 on images, 1 on states)
        + (1/T) · init_kl_scale · mean max(0, KL(N(μˢ_0, Σˢ_0) ‖ N(0, σ²_0)) − free_nats)
        + ((T−1)/T) · kl_scale · mean_{b, t≥1} max(0, KL_t − free_nats),
    KL_t = KL( q(z_t | z_{t-1} = ẑ_{t-1}, w_{≥t}) ‖ N(A_t ẑ_{t-1} + b_t, q_t) )     (models.kalman.smoothed_conditional_kl)

MC dropout is nn.Dropout: on in train() (the model loss), off in eval() (features for SAC, acting, evaluation:
VRKN's "MAP mode"). Features for SAC: the filtered mean μ⁺_t.

Index convention (as in `models.kalman`): the (B, T, D) arrays A, b, var_dyn hold at index t the transition
z_t -> z_{t+1}, i.e. the values computed at filter step t+1 from (μ⁺_t, prev_actions[t+1]); the last index is unused
(padded with A = 1, b = 0, var_dyn = 1).

Shapes: B batch, T time, D latent_dim, A action_dim.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models import checks
from models.diagnostics import kalman_gain_stats, kl_active_fraction
from models.kalman import (METHODS as KALMAN_METHODS, kalman_predict, kalman_smoother, kalman_update,
                           smoothed_conditional_kl)
from models.nets import (LatentObservation, diag_gaussian_kl, gaussian_log_lik, make_decoder, mlp, over_time,
                         reward_scale_for, scaled_sigmoid)


@dataclass
class VRKNConfig:
    """VRKN hyper-parameters. Source of each default: the official VRKN code (pbecker93/vrkn: `TransitionFactory`,
    `AEVRKNObjectiveFactory`, `AVPolicyTrainerFactory`, `experiments/actor_value/av_vrkn.py`) unless
    noted."""
    latent_dim: int = 230            # `lod` (= RSSM's 200 deterministic + 30 stochastic)
    hidden_dim: int = 300            # transition net width (`hidden_size`)
    activation: str = "ReLU"         # transition net activation
    dropout: float = 0.1             # MC-dropout rate (`mc_drop_prob`); 0 gives "VRKN (no MCD)"
    a_min: float = 0.1               # A ∈ [a_min, a_max], a_init at raw output 0 (`min_ev`, `max_ev`, `init_ev`)
    a_max: float = 0.99
    a_init: float = 0.9
    var_dyn_min: float = 0.001       # transition variance ∈ [min, max], init at raw output 0 (`*_trans_var`)
    var_dyn_max: float = 0.1
    var_dyn_init: float = 0.01
    obs_var_init: float = 1.0        # latent-observation variance softplus(x + shift) + min (`init_obs_var`, `min_obs_var`)
    obs_var_min: float = 0.01
    init_var: float = 1.0            # learned initial-state variance (`initial_state_var`, `min_initial_state_var`)
    init_var_min: float = 0.001
    conv_depth: int = 32             # Dreamer conv encoder/decoder depth (images)
    mlp_hidden_dim: int = 300        # state-vector encoder/decoder width ([INF]: CoRAL's vector encoder 3×300 ELU)
    mlp_layers: int = 3
    reward_hidden_dim: int = 300     # reward head 3×300 ELU (VRKN dense decoder default)
    reward_layers: int = 3
    free_nats: float = 3.0           # `free_nats`, applied to the dynamics KL as max(0, KL − free_nats)
    kl_scale: float = 1.0            # `kl_scale_factor`
    init_kl_scale: float = 0.0       # `initial_kl_scale_factor`
    obs_loss_scale: float = 1.0      # `decoder_loss_scales` = [1.0, 10.0] (av_vrkn.py, image-only input)
    reward_loss_scale: float | None = None  # None: by observation type (models.nets.reward_scale_for): 10 on images
                                     # (`decoder_loss_scales`; every VRKN setting has images), 1 on state vectors
                                     # (CoRAL `reward_scale_factor`; docs/paper-notes.md#reward-weight)
    smoother: str = "auto"           # models.kalman smoother method: "auto" | "numba" | "fused" | "parallel" |
                                     # "sequential"
    lr: float = 6e-4                 # `model_learning_rate` (Adam)
    adam_eps: float = 1e-8           # `model_adam_epsilon`
    grad_clip: float = 100.0         # `model_clip_norm` (global grad norm)

    def __post_init__(self):
        checks.ints(self, 1, "latent_dim", "hidden_dim", "conv_depth", "mlp_hidden_dim", "mlp_layers",
                    "reward_hidden_dim")
        checks.ints(self, 0, "reward_layers")
        checks.activation(self, "activation")
        checks.within(self, "dropout", 0, 1, high_open=True)
        checks.increasing(self, "a_min", "a_init", "a_max", low=0, strict_low=False)
        checks.increasing(self, "var_dyn_min", "var_dyn_init", "var_dyn_max", low=0, strict_low=True)
        checks.increasing(self, "obs_var_min", "obs_var_init", low=0, strict_low=False)
        checks.increasing(self, "init_var_min", "init_var", low=0, strict_low=False)
        checks.at_least(self, 0, "free_nats", "kl_scale", "init_kl_scale", "obs_loss_scale")
        checks.at_least(self, 0, "reward_loss_scale", none_ok=True)
        checks.one_of(self, "smoother", KALMAN_METHODS)
        checks.above(self, 0, "lr", "adam_eps", "grad_clip")


# ------------------------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------------------------

def check_batch(obs: Tensor, prev_actions: Tensor, rewards: Tensor | None, obs_shape: tuple[int, ...],
                action_dim: int) -> None:
    """ValueError naming the argument unless obs (B, T, *obs_shape), prev_actions (B, T, A), rewards (B, T)."""
    if obs.dim() != 2 + len(obs_shape) or tuple(obs.shape[2:]) != tuple(obs_shape):
        raise ValueError(f"obs: expected shape (B, T, {', '.join(map(str, obs_shape))}), got {tuple(obs.shape)}")
    B, T = obs.shape[:2]
    if tuple(prev_actions.shape) != (B, T, action_dim):
        raise ValueError(f"prev_actions: expected shape {(B, T, action_dim)}, got {tuple(prev_actions.shape)}")
    if rewards is not None and tuple(rewards.shape) != (B, T):
        raise ValueError(f"rewards: expected shape {(B, T)}, got {tuple(rewards.shape)}")


class LocallyLinearTransition(nn.Module):
    """(μ⁺_{t-1} (B, D), a_{t-1} (B, A)) -> (A_t, b_t, var_dyn_t), each (B, D), with MC dropout (VRKN's
    `TransitionFactory`)."""

    def __init__(self, latent_dim: int, action_dim: int, cfg: VRKNConfig):
        super().__init__()
        act = getattr(nn, cfg.activation)
        self.cfg = cfg
        self.pre = nn.Sequential(nn.Linear(latent_dim + action_dim, cfg.hidden_dim), act(), nn.Dropout(cfg.dropout))
        self.cell = nn.GRUCell(cfg.hidden_dim, latent_dim)
        self.post = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(latent_dim, cfg.hidden_dim), act(),
                                  nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_dim, 3 * latent_dim))

    def forward(self, mu: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.cfg
        raw = self.post(self.cell(self.pre(torch.cat([mu, a], dim=-1)), mu))
        a_raw, q_raw, b = raw.chunk(3, dim=-1)
        A = scaled_sigmoid(a_raw, cfg.a_min, cfg.a_max, cfg.a_init)
        var_dyn = scaled_sigmoid(q_raw, cfg.var_dyn_min, cfg.var_dyn_max, cfg.var_dyn_init)
        return A, b, var_dyn


class VRKN(nn.Module):
    """VRKN world model with the kalbench WorldModel interface (docs/architecture.md)."""

    critic_grad = False

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, cfg: VRKNConfig):
        super().__init__()
        self.cfg, self.obs_shape, self.action_dim = cfg, tuple(obs_shape), action_dim
        D = cfg.latent_dim
        self.feature_dim = D
        self.latent = LatentObservation.from_config(self.obs_shape, cfg)
        self.register_load_state_dict_pre_hook(LatentObservation.load_legacy_keys)
        self.image, self.obs_event_dims = self.latent.image, self.latent.obs_event_dims
        self.reward_loss_scale = reward_scale_for(cfg.reward_loss_scale, self.image)
        self.transition = LocallyLinearTransition(D, action_dim, cfg)
        self.decoder = make_decoder(D, self.obs_shape, cfg.mlp_hidden_dim, cfg.conv_depth, cfg.mlp_layers)
        self.reward_head = mlp(D, 1, cfg.reward_hidden_dim, cfg.reward_layers, act=nn.ELU)

    # ---- pieces -------------------------------------------------------------------------------------------------
    @property
    def mu0(self) -> Tensor:
        """Initial-state mean μ_0 = 0 (D,)."""
        return self.latent.mu0

    @property
    def var0(self) -> Tensor:
        """Learned initial-state variance σ²_0 (D,)."""
        return self.latent.var0

    def latent_obs(self, obs: Tensor, dequantize: bool) -> tuple[Tensor, Tensor, Tensor]:
        """obs (B, T, *obs_shape) -> (decoder target (B, T, *obs_shape), w (B, T, D), var_w (B, T, D))."""
        return self.latent(obs, dequantize)

    def filter(self, w: Tensor, var_w: Tensor, prev_actions: Tensor) -> dict[str, Tensor]:
        """Sequential Kalman filter with the locally linear transition.

        w, var_w (B, T, D), prev_actions (B, T, A) -> dict of (B, T, D): mu_f, var_f (filtered), mu_p, var_p
        (predicted; the prior at t = 0), A, b, var_dyn (index t: z_t -> z_{t+1}; last index padded, unused).
        prev_actions[:, 0] is not used (no transition before the first observation).
        """
        B, T, D = w.shape
        mu_p, var_p = self.mu0.expand(B, D), self.var0.expand(B, D)
        out = {k: [] for k in ("mu_f", "var_f", "mu_p", "var_p", "A", "b", "var_dyn")}
        for t in range(T):
            if t > 0:
                A, b, var_dyn = self.transition(mu_f, prev_actions[:, t])
                mu_p, var_p = kalman_predict(mu_f, var_f, A, b, var_dyn)
                out["A"].append(A), out["b"].append(b), out["var_dyn"].append(var_dyn)
            mu_f, var_f = kalman_update(mu_p, var_p, w[:, t], var_w[:, t])
            out["mu_f"].append(mu_f), out["var_f"].append(var_f), out["mu_p"].append(mu_p), out["var_p"].append(var_p)
        ones, zeros = torch.ones_like(mu_f), torch.zeros_like(mu_f)
        out["A"].append(ones), out["b"].append(zeros), out["var_dyn"].append(ones)
        return {k: torch.stack(v, dim=1) for k, v in out.items()}

    def _check_batch(self, obs: Tensor, prev_actions: Tensor, rewards: Tensor | None = None) -> None:
        check_batch(obs, prev_actions, rewards, self.obs_shape, self.action_dim)

    # ---- WorldModel interface -----------------------------------------------------------------------------------
    def loss(self, obs: Tensor, prev_actions: Tensor, rewards: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Negative smoothing ELBO (images dequantised in train() mode). obs (B, T, *obs_shape), prev_actions (B, T, A),
        rewards (B, T). Returns (loss, terms): detached `obs_nll`, `reward_nll`, `kl`, `init_kl`, `kl_loss`, and the
        loss's weighted summands `loss_recon`, `loss_reward`, `loss_kl`, not detached (their sum is the loss)."""
        cfg = self.cfg
        self._check_batch(obs, prev_actions, rewards)
        target, w, var_w = self.latent_obs(obs, dequantize=self.training)
        f = self.filter(w, var_w, prev_actions)
        mu_s, var_s = kalman_smoother(f["mu_f"], f["var_f"], f["mu_p"], f["var_p"], f["A"], method=cfg.smoother,
                                      validate=False)  # positive by construction: no value checks, no host syncs
        z_s = mu_s + var_s.sqrt() * torch.randn_like(mu_s)                                 # (B, T, D)

        obs_nll = -gaussian_log_lik(target, over_time(self.decoder, z_s, 1), self.obs_event_dims).mean()
        reward_nll = -gaussian_log_lik(rewards, self.reward_head(z_s).squeeze(-1), 0).mean()

        T = w.shape[1]
        init_kl = diag_gaussian_kl(mu_s[:, 0], var_s[:, 0], f["mu_p"][:, 0], f["var_p"][:, 0])   # (B,)
        init_kl_loss = cfg.init_kl_scale * torch.clamp(init_kl - cfg.free_nats, min=0).mean()
        if T > 1:
            dyn_kl = smoothed_conditional_kl(f["var_f"], f["var_p"], mu_s, var_s, f["A"], f["b"], f["var_dyn"], z_s)
            dyn_kl_loss = cfg.kl_scale * torch.clamp(dyn_kl - cfg.free_nats, min=0).mean()
            dyn_kl_mean = dyn_kl.mean()
        else:
            dyn_kl_loss = dyn_kl_mean = torch.zeros((), device=w.device)
        kl_loss = init_kl_loss / T + (T - 1) / T * dyn_kl_loss
        parts = {"loss_recon": cfg.obs_loss_scale * obs_nll, "loss_reward": self.reward_loss_scale * reward_nll,
                 "loss_kl": kl_loss}
        loss = parts["loss_recon"] + parts["loss_reward"] + parts["loss_kl"]
        terms = {"obs_nll": obs_nll, "reward_nll": reward_nll, "kl": dyn_kl_mean, "init_kl": init_kl.mean(),
                 "kl_loss": kl_loss}
        return loss, {**{k: v.detach() for k, v in terms.items()}, **parts}

    @torch.no_grad()
    def diagnostics(self, obs: Tensor, prev_actions: Tensor, rewards: Tensor) -> dict[str, Tensor]:
        """Scalar diagnostics on a batch (models.diagnostics; train.csv `diag_*`), in the current train/eval mode:
        `kl_active` (fraction of (b, t ≥ 1) with KL_t > free_nats), `gain_mean`, `gain_median`, `obs_var_median`."""
        _, w, var_w = self.latent_obs(obs, dequantize=self.training)
        f = self.filter(w, var_w, prev_actions)
        out = kalman_gain_stats(f["var_p"], var_w)
        if w.shape[1] > 1:
            mu_s, var_s = kalman_smoother(f["mu_f"], f["var_f"], f["mu_p"], f["var_p"], f["A"], method=self.cfg.smoother)
            z_s = mu_s + var_s.sqrt() * torch.randn_like(mu_s)
            kl = smoothed_conditional_kl(f["var_f"], f["var_p"], mu_s, var_s, f["A"], f["b"], f["var_dyn"], z_s)
            out.update(kl_active_fraction(kl, self.cfg.free_nats))
        return out

    def features(self, obs: Tensor, prev_actions: Tensor) -> Tensor:
        """Filtered means μ⁺_t (B, T, D), filtering from the start of the sequence."""
        self._check_batch(obs, prev_actions)
        _, w, var_w = self.latent_obs(obs, dequantize=False)
        return self.filter(w, var_w, prev_actions)["mu_f"]

    def initial_state(self, batch_size: int) -> dict[str, Tensor]:
        """Belief before the first observation: the learned prior N(0, σ²_0), flagged `first` (no transition)."""
        D = self.cfg.latent_dim
        return {"mean": self.mu0.expand(batch_size, D).clone(), "var": self.var0.detach().expand(batch_size, D).clone(),
                "first": torch.ones(batch_size, 1, dtype=torch.bool, device=self.mu0.device)}

    def observe(self, state: dict[str, Tensor], obs_t: Tensor, prev_action_t: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One online step: predict (skipped where `first`), then update with o_t.
        obs_t (B, *obs_shape), prev_action_t (B, A) -> (μ⁺_t (B, D), state)."""
        _, w, var_w = self.latent_obs(obs_t.unsqueeze(1), dequantize=False)
        A, b, var_dyn = self.transition(state["mean"], prev_action_t)
        mu_pred, var_pred = kalman_predict(state["mean"], state["var"], A, b, var_dyn)
        first = state["first"]
        mu_p = torch.where(first, self.mu0.expand_as(mu_pred), mu_pred)
        var_p = torch.where(first, self.var0.expand_as(var_pred), var_pred)
        mu_f, var_f = kalman_update(mu_p, var_p, w[:, 0], var_w[:, 0])
        return mu_f, {"mean": mu_f, "var": var_f, "first": torch.zeros_like(first)}
