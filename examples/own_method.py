"""Your own world model in one file: a deterministic GRU world model, method name `gru`.

A useful non-probabilistic recurrent baseline: an RSSM without its stochastic state and KL. With B batch, T time,
A actions, H = cfg.latent_dim:

    e_t = enc(o_t)                                  (B, E)  conv encoder on pixels, ELU MLP on states
    h_t = GRU([e_t, a_{t-1}], h_{t-1}),  h_{-1} = 0 (B, H)  features = h_t (what SAC sees)
    loss = mean_{b,t} [ -log N(o_t | dec(h_t), I) - s_r log N(r_{t-1} | rew(h_t), 1) ]

(reconstruction + reward prediction; s_r = reward_loss_scale, by default 10 on pixels and 1 on states, as the
built-in models). Since h_t has seen o_t, the reconstruction term only makes h_t keep what it saw; the reward term
and SAC's critic shape it into a state. Batches follow docs/architecture.md: obs[t] = o_t, prev_actions[t] = a_{t-1}
(zeros at the episode start), rewards[t] = r_{t-1}.

How kalbench uses this file (README, "Adding your own method"):
    python -m rl.train --plugin examples/own_method.py --method gru --task walker-walk --obs state --out DIR
    python -m benchmarks.update_step --plugin examples/own_method.py --methods kalmamba rssm gru
    study YAML:  plugins: [examples/own_method.py]   and   gru   under an experiment's methods:
The METHOD line at the end is the registration. The workflow and the analysis read it without running this file
(no torch there), so its arguments are literals and the names of classes defined here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.nets import gaussian_log_lik, is_image, make_decoder, make_encoder, mlp, obs_to_target, reward_scale_for
from rl.methods import Method


@dataclass
class GRUConfig:
    """Every field is a `--model.<field>` flag and a key of the study YAML's `model: {gru: ...}`."""
    latent_dim: int = 200          # H, GRU state = features (the update benchmark sets it to its --latent-dim)
    conv_depth: int = 32           # pixels: Dreamer conv encoder/decoder depth
    mlp_hidden_dim: int = 300      # states: encoder/decoder width
    mlp_layers: int = 3            # states: encoder/decoder hidden layers
    reward_hidden_dim: int = 128   # reward head width
    reward_layers: int = 2         # reward head hidden layers
    reward_loss_scale: float | None = None   # None: 10 on pixels, 1 on states
    lr: float = 3e-4               # Adam (read by rl/agent.py)
    adam_eps: float = 1e-8
    grad_clip: float = 10.0        # global gradient-norm clip (read by rl/agent.py)

    def __post_init__(self):   # the one check of each value: the run CLI and the workflow report it (exit 2)
        for name in ("latent_dim", "conv_depth", "mlp_hidden_dim", "mlp_layers", "reward_hidden_dim", "lr",
                     "adam_eps", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"GRUConfig.{name}: {getattr(self, name)} must be > 0")
        if self.reward_layers < 0:
            raise ValueError(f"GRUConfig.reward_layers: {self.reward_layers} must be >= 0")
        if self.reward_loss_scale is not None and self.reward_loss_scale < 0:
            raise ValueError(f"GRUConfig.reward_loss_scale: {self.reward_loss_scale} must be >= 0 (or None)")


class GRUWorldModel(nn.Module):
    """The WorldModel protocol of models/world_model.py, built as GRUWorldModel(obs_shape, action_dim, cfg)."""

    critic_grad = False   # trained by its own loss; SAC sees detached features

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, cfg: GRUConfig):
        super().__init__()
        self.cfg, self.obs_shape, self.action_dim = cfg, tuple(obs_shape), action_dim
        self.image = is_image(self.obs_shape)
        self.event_dims = len(self.obs_shape)          # 3 for (3, 64, 64) images, 1 for (D,) states
        self.feature_dim = cfg.latent_dim
        self.encoder, embed_dim = make_encoder(self.obs_shape, cfg.mlp_hidden_dim, cfg.conv_depth, cfg.mlp_layers)
        self.gru = nn.GRU(embed_dim + action_dim, cfg.latent_dim, batch_first=True)
        self.decoder = make_decoder(cfg.latent_dim, self.obs_shape, cfg.mlp_hidden_dim, cfg.conv_depth,
                                    cfg.mlp_layers)
        self.reward_head = mlp(cfg.latent_dim, 1, cfg.reward_hidden_dim, cfg.reward_layers)
        self.reward_scale = reward_scale_for(cfg.reward_loss_scale, self.image)

    def _embed(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """obs (B, T, *obs_shape) -> (target (B, T, *obs_shape) float, embedding (B, T, E))."""
        B, T = obs.shape[:2]
        target = obs_to_target(obs, self.image, dequantize=False)
        return target, self.encoder(target.flatten(0, 1)).unflatten(0, (B, T))

    def _states(self, embed: Tensor, prev_actions: Tensor, h0: Tensor | None = None) -> Tensor:
        """(B, T, E), (B, T, A) -> h (B, T, H), from h0 (B, H) (zeros if None)."""
        h, _ = self.gru(torch.cat([embed, prev_actions], dim=-1), None if h0 is None else h0.unsqueeze(0))
        return h

    def loss(self, obs: Tensor, prev_actions: Tensor, rewards: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """obs (B, T, ...), prev_actions (B, T, A), rewards (B, T) -> (scalar loss, terms). `loss_recon` and
        `loss_reward` sum to the loss (not detached); `obs_nll`, `reward_nll` are detached."""
        target, embed = self._embed(obs)
        h = self._states(embed, prev_actions)                                       # (B, T, H)
        mean = self.decoder(h.flatten(0, 1)).unflatten(0, h.shape[:2])              # (B, T, *obs_shape)
        obs_nll = -gaussian_log_lik(target, mean, self.event_dims).mean()
        reward_nll = -gaussian_log_lik(rewards, self.reward_head(h).squeeze(-1), 0).mean()
        parts = {"loss_recon": obs_nll, "loss_reward": self.reward_scale * reward_nll}
        terms = {"obs_nll": obs_nll.detach(), "reward_nll": reward_nll.detach()}
        return parts["loss_recon"] + parts["loss_reward"], {**terms, **parts}

    def features(self, obs: Tensor, prev_actions: Tensor) -> Tensor:
        """(B, T, ...), (B, T, A) -> h (B, T, H): the GRU state after each observation."""
        return self._states(self._embed(obs)[1], prev_actions)

    def initial_state(self, batch_size: int) -> Tensor:
        """h_{-1} = 0, (batch_size, H)."""
        return self.gru.weight_hh_l0.new_zeros(batch_size, self.cfg.latent_dim)

    def observe(self, state: Tensor, obs_t: Tensor, prev_action_t: Tensor) -> tuple[Tensor, Tensor]:
        """One step: h (B, H), o_t (B, ...), a_{t-1} (B, A) -> (h_t, h_t); equals `features` at the last step."""
        embed = self._embed(obs_t.unsqueeze(1))[1]
        h = self._states(embed, prev_action_t.unsqueeze(1), state)[:, 0]
        return h, h


METHOD = Method("gru", model=GRUWorldModel, config=GRUConfig, display_name="GRU", color="#000000")
