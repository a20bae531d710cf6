"""Recurrent state-space model (RSSM; Hafner et al. 2019, PlaNet/Dreamer-v1) as the world model of the
"RSSM + SAC" baseline, with the CoRAL "SSM + SAC" defaults (github.com/pbecker93/CoRAL; docs/paper-notes.md#baselines).

Latent state s_t = (h_t, z_t): a deterministic GRU state h_t and a stochastic state z_t.

    h_t = GRU(pre([z_{t-1}, a_{t-1}]), h_{t-1})               deterministic path      (z_{-1} = 0, h_{-1} = 0)
    p(z_t | h_t)      = N(μ^p(h_t),        diag σ^p(h_t)²)      prior (transition)
    q(z_t | h_t, o_t) = N(μ^q(h_t, e_t),   diag σ^q(h_t, e_t)²)  filtering posterior, e_t = enc(o_t)
    σ = softplus(x) + min_std                                    (CoRAL SimpleGaussianParameterLayer)
    p(o_t | z_t, h_t) = N(dec([z_t, h_t]), I),   p(r_t | z_t, h_t) = N(rew([z_t, h_t]), 1)

The posterior conditions only on h_t and e_t (PlaNet's original "deterministic part" update). Training uses the
filtering ELBO (posterior samples z_t feed both the next GRU step and the decoders); loss, averaged over batch
and time:

    L = obs_scale · NLL(o_t) + reward_scale · NLL(r_t) + kl_scale · KL-term,
    KL-term = mean_{b,t} max(KL(q_t ‖ p_t), free_nats)                                    (plain)
            = α · mean max(KL(sg(q_t) ‖ p_t), free_nats) + (1 − α) · mean max(KL(q_t ‖ sg(p_t)), free_nats)
                                                                           (CoRAL's balanced KL, default α = 0.8)

sg = stop-gradient. Free nats are applied per (b, t), as in CoRAL (`clamp(min=free_nats)`).

Features for SAC: concat(posterior mean μ^q_t, h_t) (CoRAL `use_det_features=True`). The filter is sequential by
nature: one Python loop over time. Batch alignment (docs/architecture.md): obs[t] = o_t, prev_actions[t] = a_{t-1},
rewards[t] = r_{t-1}; the first prediction of a sequence starts from the zero state with prev_actions[0], as
in CoRAL's `forward_pass`.

Shapes: B batch, T time, S stoch_dim, H deter_dim, A action_dim, E embedding size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from models import checks
from models.nets import diag_gaussian_kl, gaussian_log_lik, is_image, make_decoder, make_encoder, mlp, obs_to_target, over_time
from models.diagnostics import kl_active_fraction
from models.vrkn import check_batch  # (shared batch-shape check; candidate for models/nets.py)


@dataclass
class RSSMConfig:
    """RSSM hyper-parameters. Source of each default: CoRAL `common_defaults/mfrl/mf_default.yml` unless
    noted ([INF]: our choice, docs/paper-notes.md#source-keys)."""
    stoch_dim: int = 64              # z_t size (CoRAL `transition.lsd`; the VRKN repo's RSSM uses 30)
    deter_dim: int = 200             # h_t size (CoRAL `rec_state_dim`)
    hidden_dim: int = 400            # width of the prior / posterior / GRU-input nets (CoRAL `layer_size`)
    n_layers: int = 2                # hidden layers in each of those nets (CoRAL `num_layers`)
    min_std: float = 0.1             # σ = softplus(x) + min_std for prior and posterior
    activation: str = "ELU"          # torch.nn activation name for the transition nets
    conv_depth: int = 32             # Dreamer conv encoder/decoder depth (images)
    mlp_hidden_dim: int = 300        # state-vector encoder/decoder width (CoRAL encoder 3×300 ELU)
    mlp_layers: int = 3              # state-vector encoder/decoder hidden layers (decoder mirrors encoder: [INF])
    reward_hidden_dim: int = 128     # reward head 2×128 ELU (CoRAL `reward_decoder`)
    reward_layers: int = 2
    kl_scale: float = 1.0            # CoRAL `kl.scale_factor`
    free_nats: float = 1.0           # CoRAL `kl.free_nats` (the VRKN repo's RSSM: 3.0)
    kl_balanced: bool = True         # CoRAL `kl.balanced`
    kl_alpha: float = 0.8            # CoRAL `kl.alpha`: weight of the prior-training side KL(sg(q) ‖ p)
    obs_loss_scale: float = 1.0      # CoRAL (reconstruction scale 1)
    reward_loss_scale: float = 1.0   # CoRAL `reward_scale_factor`
    lr: float = 3e-4                 # CoRAL `model_learning_rate` (Adam)
    adam_eps: float = 1e-8           # CoRAL (Adam with eps 1e-8)
    grad_clip: float = 10.0          # CoRAL `model_clip_norm` (global grad norm)

    def __post_init__(self):
        checks.ints(self, 1, "stoch_dim", "deter_dim", "hidden_dim", "n_layers", "conv_depth", "mlp_hidden_dim",
                    "mlp_layers", "reward_hidden_dim")
        checks.ints(self, 0, "reward_layers")
        checks.activation(self, "activation")
        checks.at_least(self, 0, "min_std", "kl_scale", "free_nats", "obs_loss_scale", "reward_loss_scale")
        checks.within(self, "kl_alpha", 0, 1)
        checks.above(self, 0, "lr", "adam_eps", "grad_clip")


def kl_free_nats(post_mean: Tensor, post_std: Tensor, prior_mean: Tensor, prior_std: Tensor, free_nats: float,
                 balanced: bool = False, alpha: float = 0.8) -> tuple[Tensor, Tensor]:
    """The RSSM's KL term with free nats (and, optionally, CoRAL's balanced KL).

    Args: means/stds (..., S) of the posterior q and the prior p (per (b, t)); free_nats ≥ 0; alpha ∈ [0, 1].
    Returns:
        loss: scalar, mean over (...) of max(KL(q ‖ p), free_nats), or, if balanced,
              α · mean max(KL(sg(q) ‖ p), fn) + (1 − α) · mean max(KL(q ‖ sg(p)), fn).
        kl:   (...) the KL(q ‖ p) values themselves (for logging), summed over S.
    """
    if free_nats < 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"free_nats/alpha: need free_nats >= 0 and 0 <= alpha <= 1, got {free_nats}, {alpha}")
    q_var, p_var = post_std ** 2, prior_std ** 2
    kl = diag_gaussian_kl(post_mean, q_var, prior_mean, p_var)
    if not balanced:
        return kl.clamp(min=free_nats).mean(), kl
    kl_train_prior = diag_gaussian_kl(post_mean.detach(), q_var.detach(), prior_mean, p_var)
    kl_train_post = diag_gaussian_kl(post_mean, q_var, prior_mean.detach(), p_var.detach())
    loss = alpha * kl_train_prior.clamp(min=free_nats).mean() + (1 - alpha) * kl_train_post.clamp(min=free_nats).mean()
    return loss, kl


class GaussianHead(nn.Module):
    """MLP -> (mean, std) with std = softplus(x) + min_std. (N, in_dim) -> ((N, out_dim), (N, out_dim))."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, n_layers: int, act: type[nn.Module],
                 min_std: float):
        super().__init__()
        self.net = mlp(in_dim, 2 * out_dim, hidden_dim, n_layers, act=act)
        self.min_std = min_std

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw_std = self.net(x).chunk(2, dim=-1)
        return mean, F.softplus(raw_std) + self.min_std


class RSSM(nn.Module):
    """RSSM world model with the kalbench WorldModel interface (docs/architecture.md)."""

    critic_grad = False

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, cfg: RSSMConfig):
        super().__init__()
        self.cfg, self.obs_shape, self.action_dim = cfg, tuple(obs_shape), action_dim
        self.image = is_image(self.obs_shape)
        self.obs_event_dims = len(self.obs_shape)
        act = getattr(nn, cfg.activation)
        S, H = cfg.stoch_dim, cfg.deter_dim
        self.feature_dim = S + H

        self.encoder, embed_dim = make_encoder(self.obs_shape, cfg.mlp_hidden_dim, cfg.conv_depth, cfg.mlp_layers)
        # prediction: [z_{t-1}, a_{t-1}] -> n_layers × (Linear, act) -> GRU cell -> prior head
        self.pre_gru = nn.Sequential(mlp(S + action_dim, cfg.hidden_dim, cfg.hidden_dim, cfg.n_layers - 1, act=act), act())
        self.gru = nn.GRUCell(cfg.hidden_dim, H)
        self.prior_head = GaussianHead(H, S, cfg.hidden_dim, cfg.n_layers, act, cfg.min_std)
        # update: [e_t, h_t] -> posterior head
        self.post_head = GaussianHead(embed_dim + H, S, cfg.hidden_dim, cfg.n_layers, act, cfg.min_std)

        self.decoder = make_decoder(S + H, self.obs_shape, cfg.mlp_hidden_dim, cfg.conv_depth, cfg.mlp_layers)
        self.reward_head = mlp(S + H, 1, cfg.reward_hidden_dim, cfg.reward_layers, act=nn.ELU)

    # ---- one filtering step -------------------------------------------------------------------------------------
    def _step(self, z_prev: Tensor, h_prev: Tensor, a_prev: Tensor, embed_t: Tensor) -> dict[str, Tensor]:
        """(B, S), (B, H), (B, A), (B, E) -> prior (B, S)×2, posterior (B, S)×2, sample z_t (B, S), h_t (B, H)."""
        h = self.gru(self.pre_gru(torch.cat([z_prev, a_prev], dim=-1)), h_prev)
        prior_mean, prior_std = self.prior_head(h)
        post_mean, post_std = self.post_head(torch.cat([embed_t, h], dim=-1))
        z = post_mean + post_std * torch.randn_like(post_mean)
        return {"prior_mean": prior_mean, "prior_std": prior_std, "post_mean": post_mean, "post_std": post_std,
                "z": z, "h": h}

    def _filter(self, embed: Tensor, prev_actions: Tensor) -> dict[str, Tensor]:
        """Run the filter over a sequence. embed (B, T, E), prev_actions (B, T, A) -> dict of (B, T, ·)."""
        B, T = embed.shape[:2]
        state = self.initial_state(B)
        z, h = state["z"].to(embed), state["h"].to(embed)
        steps = []
        for t in range(T):
            out = self._step(z, h, prev_actions[:, t], embed[:, t])
            z, h = out["z"], out["h"]
            steps.append(out)
        return {k: torch.stack([s[k] for s in steps], dim=1) for k in steps[0]}

    def _embed(self, obs: Tensor, dequantize: bool) -> tuple[Tensor, Tensor]:
        target = obs_to_target(obs, self.image, dequantize).to(self.gru.weight_ih.dtype)
        return target, over_time(self.encoder, target, self.obs_event_dims)

    # ---- WorldModel interface -----------------------------------------------------------------------------------
    def loss(self, obs: Tensor, prev_actions: Tensor, rewards: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Negative filtering ELBO (images dequantised in train() mode). obs (B, T, *obs_shape), prev_actions (B, T, A),
        rewards (B, T). Returns (loss, terms): detached `obs_nll`, `reward_nll`, `kl`, `kl_loss`, and the loss's
        weighted summands `loss_recon`, `loss_reward`, `loss_kl`, not detached (their sum is the loss)."""
        cfg = self.cfg
        check_batch(obs, prev_actions, rewards, self.obs_shape, self.action_dim)
        target, embed = self._embed(obs, dequantize=self.training)
        s = self._filter(embed, prev_actions)
        feat = torch.cat([s["z"], s["h"]], dim=-1)                                        # (B, T, S + H)
        obs_nll = -gaussian_log_lik(target, over_time(self.decoder, feat, 1), self.obs_event_dims).mean()
        reward_nll = -gaussian_log_lik(rewards, self.reward_head(feat).squeeze(-1), 0).mean()
        kl_loss, kl = kl_free_nats(s["post_mean"], s["post_std"], s["prior_mean"], s["prior_std"],
                                   cfg.free_nats, cfg.kl_balanced, cfg.kl_alpha)
        parts = {"loss_recon": cfg.obs_loss_scale * obs_nll, "loss_reward": cfg.reward_loss_scale * reward_nll,
                 "loss_kl": cfg.kl_scale * kl_loss}
        loss = parts["loss_recon"] + parts["loss_reward"] + parts["loss_kl"]
        terms = {"obs_nll": obs_nll, "reward_nll": reward_nll, "kl": kl.mean(), "kl_loss": kl_loss}
        return loss, {**{k: v.detach() for k, v in terms.items()}, **parts}

    @torch.no_grad()
    def diagnostics(self, obs: Tensor, prev_actions: Tensor, rewards: Tensor) -> dict[str, Tensor]:
        """Scalar diagnostics on a batch (models.diagnostics; train.csv `diag_*`): `kl_active`, the fraction of
        (b, t) with KL(q_t ‖ p_t) > free_nats (where the clamped KL term has a gradient)."""
        check_batch(obs, prev_actions, rewards, self.obs_shape, self.action_dim)
        _, embed = self._embed(obs, dequantize=self.training)
        s = self._filter(embed, prev_actions)
        kl = diag_gaussian_kl(s["post_mean"], s["post_std"] ** 2, s["prior_mean"], s["prior_std"] ** 2)
        return kl_active_fraction(kl, self.cfg.free_nats)

    def features(self, obs: Tensor, prev_actions: Tensor) -> Tensor:
        """Filtered features concat(μ^q_t, h_t), (B, T, S + H), filtering from the start of the sequence."""
        check_batch(obs, prev_actions, None, self.obs_shape, self.action_dim)
        _, embed = self._embed(obs, dequantize=False)
        s = self._filter(embed, prev_actions)
        return torch.cat([s["post_mean"], s["h"]], dim=-1)

    def initial_state(self, batch_size: int) -> dict[str, Tensor]:
        """Zero stochastic and deterministic state (CoRAL `get_initial`): {"z": (B, S), "h": (B, H)}."""
        p = self.gru.weight_ih
        return {"z": p.new_zeros(batch_size, self.cfg.stoch_dim), "h": p.new_zeros(batch_size, self.cfg.deter_dim)}

    def observe(self, state: dict[str, Tensor], obs_t: Tensor, prev_action_t: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One online filtering step. obs_t (B, *obs_shape), prev_action_t (B, A) -> (features (B, S + H), state)."""
        _, embed = self._embed(obs_t.unsqueeze(1), dequantize=False)
        out = self._step(state["z"], state["h"], prev_action_t, embed[:, 0])
        return torch.cat([out["post_mean"], out["h"]], dim=-1), {"z": out["z"], "h": out["h"]}
