"""KalMamba (Becker, Freymuth & Neumann 2024): Mamba learns the parameters of a linear Gaussian SSM in a latent space;
inference is a parallel Kalman filter and RTS smoother (arXiv:2406.15131, Fig. 1-2; docs/paper-notes.md).

Latent state z_t ∈ R^D, all covariances diagonal, every product element-wise.

    encoder:   e_t = enc(o_t),  w_t = Linear(e_t),  σ²_w,t = softplus(Linear(e_t) + shift) + 0.01   (q(w_t|z_t) = N(z_t, σ²_w,t))
    prior:     z_0 ~ N(0, diag σ²_0),  σ²_0 = softplus(θ + shift) + 0.001 learned                     (no transition before t = 0)
    backbone:  x_t = NN_pre([w_t, a_{t-1}])                       (B, T, d_model)
               m_t = Linear(MambaStack(x)_t)                     (B, T, D)   causal: m_t = f(w_{≤t}, a_{≤t-1})
               (A_raw, b_t, q_raw) = NN_post([m_t, a_t])          a_t = prev_actions[t+1]; zeros at t = T-1 (unused)
               A_t = scaled_sigmoid(A_raw) ∈ [0.4, 0.99],  Σ^dyn_t = scaled_sigmoid(q_raw) ∈ [0.001, 0.1]
    dynamics:  z_{t+1} | z_t ~ N(A_t z_t + b_t, Σ^dyn_t)         (index t of A, b, Σ^dyn maps z_t to z_{t+1})
    inference: (μ⁺, Σ⁺, μ⁻, Σ⁻) = kalman_filter(w, σ²_w, A, b, Σ^dyn, 0, σ²_0);  (μˢ, Σˢ) = kalman_smoother(...)

The encoder and prior lines are `models.nets.LatentObservation` (shared with VRKN).

No dynamics parameter depends on a filter output, so the backbone is one parallel Mamba pass and the filter and
smoother are two associative scans on GPU (`models.kalman`, method "parallel"; on CPU compiled loops, "numba").

Loss (per time step, averaged over batch and time; ẑ_t ~ N(μˢ_t, Σˢ_t) one reparameterised sample of the smoothed
marginals, shared by decoders and KL; docs/paper-notes.md#smoothing-elbo, paper Eq. 2):

    loss = obs_scale · NLL(o_t | ẑ_t) + reward_scale · NLL(r_t | ẑ_t)                    `recon`, `reward`
         + (1/T) · init_kl_scale · mean max(0, KL(N(μˢ_0, Σˢ_0) ‖ N(0, σ²_0)) − free_nats)
         + ((T−1)/T) · kl_scale · mean_{b, t≥1} max(0, KL_t − free_nats)                  `kl_loss` (raw: `kl`)
         + α · mean_{b,t} (m_t − μ⁺_t)ᵀ (Σ⁺_t)⁻¹ (m_t − μ⁺_t) / d                           `reg` (unweighted: `mahalanobis`)
    (d = D for `reg_reduction="mean"`, the default; d = 1 for "sum", Eq. 2's quadratic form; reward_scale: 10 on
    images, 1 on states unless set)
    KL_t = KL( q(z_t | z_{t−1} = ẑ_{t−1}, w) ‖ N(A_{t−1} ẑ_{t−1} + b_{t−1}, Σ^dyn_{t−1}) ),
    q(z_t | z_{t−1}, w) = N(μˢ_t + G_t (z_{t−1} − μˢ_{t−1}), Σˢ_t − G_t J_{t−1} Σˢ_t),
    J_{t−1} = Σ⁺_{t−1} A_{t−1} / Σ⁻_t,   G_t = Σˢ_t J_{t−1} / Σˢ_{t−1}.
The conditional and its KL are the VRKN objective's, shared with the VRKN baseline (`models.kalman.
smoothed_conditional_kl`): the variance is evaluated in the cancellation-free product form Σˢ_t L_{t−1} / Σˢ_{t−1},
L_{t−1} = Σ⁺_{t−1} Σ^dyn_{t−1} / Σ⁻_t (positive by construction), and then floored at COND_VAR_FLOOR against
underflow. `reward` is the NLL of `rewards[:, t]` = r_{t−1}, the reward received on arriving at o_t (architecture.md).

Gradient choices (documented UNKNOWNs): the regulariser has no stop-gradient by default (it trains m_t towards μ⁺_t
and the filter towards m_t; `reg_detach_belief=True` stops the gradient into μ⁺, Σ⁺); the KL's prior mean
A ẑ + b and the conditional mean are differentiated through the reparameterised sample ẑ; NN_pre sees w_t with
gradient (the encoder is trained by both the ELBO and the backbone).

Monte-Carlo dropout (p = `dropout`) acts after every hidden layer of NN_pre and NN_post and on every Mamba layer
(`models.mamba`): on in train() (the model loss), off in eval() (features for SAC, acting, evaluation). Dropout in
NN_pre/NN_post keeps MC dropout in the `no_mamba` ablation, so that each ablation switch changes one thing.

Ablations (docs/architecture.md): `use_mamba=False` (m_t = Linear(NN_pre([w_t, a_{t−1}])), no temporal layers:
the dynamics at t see only the current input), `dropout=0.0`, `reg_alpha=0.0` (the term is not computed).

Shapes: B batch, T time, D latent_dim, A action_dim; obs (B, T, 3, 64, 64) uint8 or (B, T, O) float.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models.diagnostics import kalman_gain_stats, kl_active_fraction
from models.kalman import (METHODS, kalman_filter, kalman_filter_smoother, kalman_predict, kalman_update,
                           smoothed_conditional_kl)
from models.mamba import BACKENDS, MambaStack
from models.nets import (LatentObservation, diag_gaussian_kl, gaussian_log_lik, make_decoder, mlp, over_time,
                         reward_scale_for, scaled_sigmoid)

REG_REDUCTIONS = ("sum", "mean")


@dataclass
class KalMambaConfig:
    """KalMamba hyper-parameters. The paper's values are UNKNOWN unless tagged [S-glm]; each default's source is
    given in brackets, with the keys of docs/paper-notes.md#source-keys (every open value and our choice:
    docs/paper-notes.md#unknowns-and-our-values). Names follow `VRKNConfig` where the concept is the same."""
    latent_dim: int = 230            # D = d_z; VRKN's `lod` (= RSSM 200 + 30), matched capacity [INF]
    # backbone
    d_model: int = 256               # Mamba width (128–256 suggested); Mamba output projected to D [INF]
    n_layers: int = 2                # Mamba layers (residual, pre-norm) [INF]
    d_state: int = 16                # mamba_ssm defaults [INF]
    d_conv: int = 4
    expand: int = 2
    hidden_dim: int = 300            # NN_pre / NN_post hidden width (VRKN transition width 300) [INF, C-VRKN]
    nn_layers: int = 1               # hidden layers of NN_pre and of NN_post, ELU ("small NN", Fig. 2) [INF]
    # NN_pre sees (w_t, a_{t-1}) only, not σ²_w,t; NN_post sees (m_t, a_t) [UNKNOWN whether σ²_w enters; INF: no]
    dropout: float = 0.1             # MC dropout (VRKN `mc_drop_prob`) [INF, C-VRKN]; 0 = `no_dropout` ablation
    use_mamba: bool = True           # False = `no_mamba` ablation
    mamba_backend: str = "auto"      # models.mamba backend: "auto" | "torch" | "cuda"
    # transition / observation parameterisations
    a_min: float = 0.4               # A_t ∈ [0.4, 0.99] [S-glm]
    a_max: float = 0.99
    a_init: float = 0.9              # A at raw output 0: VRKN's init_ev [C-VRKN]
    var_dyn_min: float = 0.001       # Σ^dyn scaled sigmoid [0.001, 0.1], init 0.01 (VRKN) [C-VRKN]
    var_dyn_max: float = 0.1
    var_dyn_init: float = 0.01
    obs_var_init: float = 1.0        # σ²_w = softplus(x + shift) + 0.01, init 1.0 (VRKN) [C-VRKN]
    obs_var_min: float = 0.01
    init_var: float = 1.0            # learned σ²_0 (mean fixed at 0), init 1.0, floor 0.001 (VRKN) [S-glm, C-VRKN]
    init_var_min: float = 0.001
    # encoder / decoders
    conv_depth: int = 32             # Dreamer conv encoder/decoder (images) [C-VRKN]
    mlp_hidden_dim: int = 300        # state encoder/decoder 3×300 ELU (CoRAL/VRKN) [C-CoRAL, C-VRKN]
    mlp_layers: int = 3
    reward_hidden_dim: int = 300     # reward head 3×300 ELU (VRKN) [C-VRKN]
    reward_layers: int = 3
    obs_std: float = 1.0             # fixed std of p(o_t | z_t) (VRKN) [C-VRKN]
    reward_std: float = 1.0          # fixed std of p(r_t | z_t) (VRKN) [C-VRKN]
    # objective
    free_nats: float = 1.0           # as max(0, KL − free_nats) [C-CoRAL]: CoRAL's SSM+SAC value (VRKN's 3.0 is for
                                     # 64x64 images, where the KL is far above 3); with 3.0 the KL had a gradient on
                                     # < 10 % of (b, t) on cartpole states (docs/paper-notes.md#free-nats); alone
                                     # (from the old defaults) it did not make KalMamba learn (README "KalMamba
                                     # learns", leads table: free_nats_1)
    kl_scale: float = 1.0            # VRKN / CoRAL [C-VRKN, C-CoRAL]
    init_kl_scale: float = 0.0       # VRKN `initial_kl_scale_factor` [C-VRKN]
    obs_loss_scale: float = 1.0      # VRKN [C-VRKN]
    reward_loss_scale: float | None = None  # None: by observation type: 10 on images (VRKN's `decoder_loss_scales`,
                                     # all its settings have images), 1 on state vectors (CoRAL's
                                     # `reward_scale_factor`; the state NLL has a few dims, not 12288 pixels;
                                     # docs/paper-notes.md#reward-weight); alone (from the old defaults) it did
                                     # not make KalMamba learn (README leads table: reward_x1)
    reg_alpha: float = 1.0           # α of the Mahalanobis regulariser, Eq. 2 [S-glm]; 0 = `no_reg` ablation
    reg_reduction: str = "mean"      # over D: "sum" = Eq. 2's quadratic form, "mean" = sum / D; averaged over batch
                                     # and time either way [UNKNOWN]. "mean": the sum's gradient dominated the
                                     # model update at D = 64 (docs/paper-notes.md#regulariser-reduction); the one
                                     # lead that alone made KalMamba learn (README "KalMamba learns": reg_mean)
    reg_detach_belief: bool = False  # stop-gradient into μ⁺, Σ⁺ in R [INF: no; docs/paper-notes.md#stop-gradient];
                                     # True (with the sum) did not learn, Kalman gain ~0 (README leads: reg_detach)
    features_with_m: bool = False    # SAC's features: μ⁺_t (False, the paper: "SAC uses the filtered mean") or
                                     # concat(μ⁺_t, m_t) (True, a diagnostic, not the paper's: m_t has seen w_t at
                                     # step t, μ⁺_t mostly one step later when the Kalman gain is small; README
                                     # "KalMamba learns", belief lag)
    kalman_method: str = "auto"      # models.kalman method: "auto" (parallel scan on CUDA, numba kernels on CPU) |
                                     # "numba" | "fused" | "parallel" | "sequential" (reference loop)
    # optimisation (read by rl/agent.py)
    lr: float = 3e-4                 # Adam, CoRAL model lr [C-CoRAL]
    adam_eps: float = 1e-8
    grad_clip: float = 10.0          # global grad-norm clip, CoRAL [C-CoRAL]

    def __post_init__(self):
        for name in ("latent_dim", "d_model", "n_layers", "d_state", "d_conv", "expand", "hidden_dim", "conv_depth",
                     "mlp_hidden_dim", "mlp_layers", "reward_hidden_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive int, got {value!r}")
        for name in ("nn_layers", "reward_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: must be an int >= 0, got {value!r}")
        if not 0 <= self.a_min < self.a_init < self.a_max:
            raise ValueError(f"a_min/a_init/a_max: need 0 <= a_min < a_init < a_max, got "
                             f"{self.a_min}, {self.a_init}, {self.a_max}")
        if not 0 < self.var_dyn_min < self.var_dyn_init < self.var_dyn_max:
            raise ValueError(f"var_dyn_min/var_dyn_init/var_dyn_max: need 0 < min < init < max, got "
                             f"{self.var_dyn_min}, {self.var_dyn_init}, {self.var_dyn_max}")
        for name, init, floor in (("obs_var", self.obs_var_init, self.obs_var_min),
                                  ("init_var", self.init_var, self.init_var_min)):
            if not 0 < floor < init:
                raise ValueError(f"{name}: need 0 < floor < init, got floor {floor}, init {init}")
        for name in ("obs_std", "reward_std", "lr", "adam_eps", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        for name in ("kl_scale", "init_kl_scale", "obs_loss_scale", "reward_loss_scale"):
            value = getattr(self, name)
            if not (value is None and name == "reward_loss_scale") and not value >= 0:
                raise ValueError(f"{name}: must be >= 0, got {value!r}")
        if self.reg_reduction not in REG_REDUCTIONS:
            raise ValueError(f"reg_reduction: must be one of {REG_REDUCTIONS}, got {self.reg_reduction!r}")
        if self.kalman_method not in METHODS:
            raise ValueError(f"kalman_method: must be one of {METHODS}, got {self.kalman_method!r}")
        if self.mamba_backend not in BACKENDS:
            raise ValueError(f"mamba_backend: must be one of {BACKENDS}, got {self.mamba_backend!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.reg_alpha < 0 or self.free_nats < 0:
            raise ValueError(f"reg_alpha/free_nats: must be >= 0, got {self.reg_alpha}, {self.free_nats}")


class KalMamba(nn.Module):
    """KalMamba world model with the kalbench WorldModel interface (docs/architecture.md)."""

    critic_grad = False

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, cfg: KalMambaConfig):
        super().__init__()
        self.cfg, self.obs_shape, self.action_dim = cfg, tuple(obs_shape), action_dim
        D = cfg.latent_dim
        self.feature_dim = 2 * D if cfg.features_with_m else D
        self.latent = LatentObservation.from_config(self.obs_shape, cfg)
        self.register_load_state_dict_pre_hook(LatentObservation.load_legacy_keys)
        self.image, self.obs_event_dims = self.latent.image, self.latent.obs_event_dims
        self.reward_loss_scale = reward_scale_for(cfg.reward_loss_scale, self.image)

        self.nn_pre = mlp(D + action_dim, cfg.d_model, cfg.hidden_dim, cfg.nn_layers, act=nn.ELU, dropout=cfg.dropout)
        self.mamba = (MambaStack(cfg.d_model, cfg.n_layers, cfg.d_state, cfg.d_conv, cfg.expand, cfg.dropout,
                                 cfg.mamba_backend) if cfg.use_mamba else None)
        self.m_proj = nn.Linear(cfg.d_model, D)
        self.nn_post = mlp(D + action_dim, 3 * D, cfg.hidden_dim, cfg.nn_layers, act=nn.ELU, dropout=cfg.dropout)

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
        """obs (B, T, *obs_shape) -> (decoder target (B, T, *obs_shape), w (B, T, D), σ²_w (B, T, D))
        (`models.nets.LatentObservation`)."""
        return self.latent(obs, dequantize)

    def transition(self, m: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """NN_post: m (..., D), a (..., A) -> A, b, Σ^dyn (..., D) of the transition to the next step."""
        cfg = self.cfg
        raw_A, b, raw_q = self.nn_post(torch.cat([m, a], dim=-1)).chunk(3, dim=-1)
        A = scaled_sigmoid(raw_A, cfg.a_min, cfg.a_max, cfg.a_init)
        var_dyn = scaled_sigmoid(raw_q, cfg.var_dyn_min, cfg.var_dyn_max, cfg.var_dyn_init)
        return A, b, var_dyn

    def backbone(self, w: Tensor, prev_actions: Tensor) -> dict[str, Tensor]:
        """w (B, T, D), prev_actions (B, T, A) -> dict of (B, T, D): m, A, b, var_dyn (index t: z_t -> z_{t+1},
        computed from m_t and a_t = prev_actions[:, t+1]; the last index uses a zero action and is unused)."""
        x = self.nn_pre(torch.cat([w, prev_actions], dim=-1))
        if self.mamba is not None:
            x = self.mamba(x)
        m = self.m_proj(x)
        next_actions = torch.cat([prev_actions[:, 1:], torch.zeros_like(prev_actions[:, :1])], dim=1)
        A, b, var_dyn = self.transition(m, next_actions)
        return {"m": m, "A": A, "b": b, "var_dyn": var_dyn}

    def infer(self, obs: Tensor, prev_actions: Tensor, dequantize: bool = False,
              smooth: bool = True) -> dict[str, Tensor]:
        """Everything the loss needs: target, w, var_w, m, A, b, var_dyn, mu_f, var_f, mu_p, var_p and, if `smooth`,
        mu_s, var_s. Each (B, T, D) except target (B, T, *obs_shape)."""
        self._check_batch(obs, prev_actions)
        target, w, var_w = self.latent_obs(obs, dequantize)
        out = {"target": target, "w": w, "var_w": var_w, **self.backbone(w, prev_actions)}
        # validate=False: every variance here is positive by construction (softplus + a floor), so the value
        # checks would only add passes over the data and host syncs to the training step
        args = (w, var_w, out["A"], out["b"], out["var_dyn"], self.mu0, self.var0)
        if smooth:
            beliefs = kalman_filter_smoother(*args, method=self.cfg.kalman_method, validate=False)
            out.update(zip(("mu_f", "var_f", "mu_p", "var_p", "mu_s", "var_s"), beliefs))
        else:
            beliefs = kalman_filter(*args, method=self.cfg.kalman_method, validate=False)
            out.update(zip(("mu_f", "var_f", "mu_p", "var_p"), beliefs))
        return out

    def _check_batch(self, obs: Tensor, prev_actions: Tensor, rewards: Tensor | None = None) -> None:
        if obs.dim() != 2 + len(self.obs_shape) or tuple(obs.shape[2:]) != self.obs_shape:
            raise ValueError(f"obs: expected shape (B, T, {', '.join(map(str, self.obs_shape))}), got {tuple(obs.shape)}")
        B, T = obs.shape[:2]
        if tuple(prev_actions.shape) != (B, T, self.action_dim):
            raise ValueError(f"prev_actions: expected shape {(B, T, self.action_dim)}, got {tuple(prev_actions.shape)}")
        if rewards is not None and tuple(rewards.shape) != (B, T):
            raise ValueError(f"rewards: expected shape {(B, T)}, got {tuple(rewards.shape)}")

    # ---- WorldModel interface -----------------------------------------------------------------------------------
    def loss(self, obs: Tensor, prev_actions: Tensor, rewards: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Negative smoothing ELBO + α · Mahalanobis regulariser, per time step (module docstring).

        obs (B, T, *obs_shape), prev_actions (B, T, A), rewards (B, T). Images are dequantised in train() mode.
        Returns (scalar loss, scalar terms). Terms: detached `recon`, `reward` (unweighted NLLs), `kl`, `init_kl`,
        `kl_loss`, `mahalanobis` (Eq. 2's quadratic form, mean over (b, t)), `reg`; and the loss's weighted summands
        `loss_recon`, `loss_reward`, `loss_kl`, `loss_reg`, *not* detached (their sum is the loss; the agent takes
        per-term gradient norms of them at log steps)."""
        cfg = self.cfg
        self._check_batch(obs, prev_actions, rewards)
        f = self.infer(obs, prev_actions, dequantize=self.training, smooth=True)
        mu_s, var_s = f["mu_s"], f["var_s"]
        z_s = mu_s + var_s.sqrt() * torch.randn_like(mu_s)                                   # (B, T, D)

        recon = -gaussian_log_lik(f["target"], over_time(self.decoder, z_s, 1), self.obs_event_dims,
                                  cfg.obs_std).mean()
        reward = -gaussian_log_lik(rewards, self.reward_head(z_s).squeeze(-1), 0, cfg.reward_std).mean()

        T = obs.shape[1]
        init_kl = diag_gaussian_kl(mu_s[:, 0], var_s[:, 0], f["mu_p"][:, 0], f["var_p"][:, 0])       # (B,)
        kl_loss = init_kl.new_zeros(())
        if cfg.init_kl_scale > 0:
            kl_loss = kl_loss + cfg.init_kl_scale * (init_kl - cfg.free_nats).clamp(min=0).mean() / T
        if T > 1:
            dyn_kl = self.dynamics_kl(f, z_s)                                                       # (B, T-1)
            kl_loss = kl_loss + (T - 1) / T * cfg.kl_scale * (dyn_kl - cfg.free_nats).clamp(min=0).mean()
            kl = dyn_kl.mean()
        else:
            kl = init_kl.new_zeros(())

        if cfg.reg_alpha > 0:
            mahalanobis, reg = self.regulariser(f["m"], f["mu_f"], f["var_f"])
        else:                                   # `no_reg`: not part of the graph at all
            with torch.no_grad():
                mahalanobis, _ = self.regulariser(f["m"], f["mu_f"], f["var_f"])
            reg = mahalanobis.new_zeros(())

        parts = {"loss_recon": cfg.obs_loss_scale * recon, "loss_reward": self.reward_loss_scale * reward,
                 "loss_kl": kl_loss, "loss_reg": reg}
        loss = parts["loss_recon"] + parts["loss_reward"] + parts["loss_kl"] + parts["loss_reg"]
        terms = {"recon": recon, "reward": reward, "kl": kl, "init_kl": init_kl.mean(), "kl_loss": kl_loss,
                 "mahalanobis": mahalanobis, "reg": reg}
        return loss, {**{k: v.detach() for k, v in terms.items()}, **parts}

    def regulariser(self, m: Tensor, mu_f: Tensor, var_f: Tensor) -> tuple[Tensor, Tensor]:
        """The Mahalanobis regulariser (paper Eq. 2; docs/paper-notes.md#regulariser),
        R_t = (m_t − μ⁺_t)ᵀ (Σ⁺_t)⁻¹ (m_t − μ⁺_t).

        m, mu_f, var_f (B, T, D). Returns (mean_{b,t} R_t, α · mean_{b,t} R_t / d), with d = D for
        `reg_reduction="mean"` and d = 1 for "sum" (Eq. 2 sums over t; we average over (b, t) like every other term).
        With `reg_detach_belief`, μ⁺ and Σ⁺ are constants here (stop-gradient): R then trains m towards the filter
        and cannot move the filter. Without it, ∂R/∂Σ⁺ = −(m − μ⁺)² / Σ⁺² ≤ 0: by itself R pushes Σ⁺ up."""
        cfg = self.cfg
        if cfg.reg_detach_belief:
            mu_f, var_f = mu_f.detach(), var_f.detach()
        quad = self.mahalanobis(m, mu_f, var_f).mean()
        reduced = quad / m.shape[-1] if cfg.reg_reduction == "mean" else quad
        return quad, cfg.reg_alpha * reduced

    @torch.no_grad()
    def diagnostics(self, obs: Tensor, prev_actions: Tensor, rewards: Tensor) -> dict[str, Tensor]:
        """Scalar diagnostics on a batch (models.diagnostics; train.csv `diag_*`), in the current train/eval mode:
        `kl_active` (fraction of (b, t ≥ 1) with KL_t > free_nats), `gain_mean`, `gain_median` (Kalman gain
        Σ⁻/(Σ⁻ + σ²_w)) and `obs_var_median` (σ²_w). obs, prev_actions, rewards as in `loss`."""
        f = self.infer(obs, prev_actions, dequantize=self.training, smooth=True)
        out = kalman_gain_stats(f["var_p"], f["var_w"])
        if obs.shape[1] > 1:
            z_s = f["mu_s"] + f["var_s"].sqrt() * torch.randn_like(f["mu_s"])
            out.update(kl_active_fraction(self.dynamics_kl(f, z_s), self.cfg.free_nats))
        return out

    @staticmethod
    def dynamics_kl(f: dict[str, Tensor], z_s: Tensor) -> Tensor:
        """KL_t = KL(q(z_t | z_{t−1} = ẑ_{t−1}, w) ‖ N(A_{t−1} ẑ_{t−1} + b_{t−1}, Σ^dyn_{t−1})) for t = 1..T−1,
        summed over D -> (B, T−1). `f`: the output of `infer` (smoothed), z_s (B, T, D) the smoothed sample."""
        return smoothed_conditional_kl(f["var_f"], f["var_p"], f["mu_s"], f["var_s"], f["A"], f["b"], f["var_dyn"], z_s)

    @staticmethod
    def mahalanobis(m: Tensor, mu_f: Tensor, var_f: Tensor) -> Tensor:
        """(m_t − μ⁺_t)ᵀ (Σ⁺_t)⁻¹ (m_t − μ⁺_t) with diagonal Σ⁺: (B, T, D) -> (B, T)."""
        return ((m - mu_f) ** 2 / var_f).sum(-1)

    def features(self, obs: Tensor, prev_actions: Tensor) -> Tensor:
        """Filtered means μ⁺_t (B, T, D), filtering from the start of the sequence (no dequantisation); with
        `features_with_m`, concat(μ⁺_t, m_t) (B, T, 2D)."""
        f = self.infer(obs, prev_actions, dequantize=False, smooth=False)
        return self.sac_input(f["mu_f"], f["m"])

    def sac_input(self, mu_f: Tensor, m: Tensor) -> Tensor:
        """What SAC sees of a step: μ⁺ (..., D), or concat(μ⁺, m) (..., 2D) with `features_with_m`."""
        return torch.cat([mu_f, m], dim=-1) if self.cfg.features_with_m else mu_f

    def initial_state(self, batch_size: int) -> dict[str, Any]:
        """Acting state before the first observation: `first` (B, 1) True (the next step uses the prior N(0, σ²_0),
        no transition), placeholders for the last filtered belief `mean`, `var` and backbone output `m` (B, D),
        and the Mamba layers' recurrent states (`mamba`, None when use_mamba=False)."""
        D, device = self.cfg.latent_dim, self.mu0.device
        dtype = self.latent.raw_var0.dtype
        return {"mean": self.mu0.expand(batch_size, D).clone(),
                "var": self.var0.detach().expand(batch_size, D).clone(),
                "m": torch.zeros(batch_size, D, device=device, dtype=dtype),
                "mamba": None if self.mamba is None else self.mamba.initial_state(batch_size, device, dtype),
                "first": torch.ones(batch_size, 1, dtype=torch.bool, device=device)}

    def observe(self, state: dict[str, Any], obs_t: Tensor, prev_action_t: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """One online step (docs/paper-notes.md#acting), O(1) in the episode length.
        obs_t (B, *obs_shape), prev_action_t (B, A) = a_{t−1} -> (features: μ⁺_t (B, D), or concat(μ⁺_t, m_t) (B, 2D)
        with `features_with_m`; next state).

        predict:  (A, b, Σ^dyn) = NN_post(m_{t−1}, a_{t−1});  μ⁻_t = A μ⁺_{t−1} + b,  Σ⁻_t = A² Σ⁺_{t−1} + Σ^dyn
                  (at the first step: the prior N(0, σ²_0))
        update:   (μ⁺_t, Σ⁺_t) from w_t
        backbone: m_t = Linear(Mamba.step(NN_pre(w_t, a_{t−1}))), kept for the next prediction.
        In eval() mode this reproduces `features()` step by step."""
        _, w, var_w = self.latent_obs(obs_t.unsqueeze(1), dequantize=False)
        w, var_w = w[:, 0], var_w[:, 0]
        A, b, var_dyn = self.transition(state["m"], prev_action_t)
        mu_pred, var_pred = kalman_predict(state["mean"], state["var"], A, b, var_dyn)
        first = state["first"]
        mu_p = torch.where(first, self.mu0.expand_as(mu_pred), mu_pred)
        var_p = torch.where(first, self.var0.expand_as(var_pred), var_pred)
        mu_f, var_f = kalman_update(mu_p, var_p, w, var_w)

        x = self.nn_pre(torch.cat([w, prev_action_t], dim=-1))
        mamba_state = state["mamba"]
        if self.mamba is not None:
            x, mamba_state = self.mamba.step(x, mamba_state)
        m = self.m_proj(x)
        return self.sac_input(mu_f, m), {"mean": mu_f, "var": var_f, "m": m, "mamba": mamba_state, "first": torch.zeros_like(first)}
