"""The "world model" of plain SAC: no model, the observation itself is the feature.

- States (D,): features = the (noisy) observation as float32. No parameters, loss 0, `critic_grad = False`;
  observations are not normalised (CoRAL's plain SAC).
- Pixels (3, 64, 64): features = tanh(LayerNorm(Linear(ConvEncoder(image)))), the Dreamer conv encoder of
  models.nets followed by the SAC-AE/DrQ projection head (Yarats et al.), trained by the critic loss only
  (`critic_grad = True`: the agent hands these parameters to SAC's critic optimiser; the actor sees
  detached features). Unlike DrQ there is no image augmentation and, unlike SAC-AE, no decoder. Images are
  preprocessed like the world models' (5 bits, [-0.5, 0.5), no dequantisation noise).

It follows the world-model interface of docs/architecture.md; the loss is always a constant 0 with no
terms, and the acting state is unused (None).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models import checks
from models.nets import ConvEncoder, is_image, over_time, preprocess_image


@dataclass
class PassthroughConfig:
    feature_dim: int = 50      # pixels only: size of the projection (SAC-AE/DrQ)
    depth: int = 32            # pixels only: conv encoder depth (channels 32/64/128/256)
    # The interface asks every model config for these; plain SAC has no model loss, so no model optimiser
    # is ever stepped: on pixels the encoder is trained by SAC's critic optimiser (critic_lr, critic_grad_clip).
    lr: float = 0.0
    grad_clip: float = 0.0

    def __post_init__(self):
        checks.ints(self, 1, "feature_dim", "depth")
        checks.at_least(self, 0, "lr", "grad_clip")


class Passthrough(nn.Module):
    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, cfg: PassthroughConfig):
        super().__init__()
        self.cfg, self.obs_shape, self.action_dim = cfg, tuple(obs_shape), action_dim
        self.image = is_image(self.obs_shape)
        self.critic_grad = self.image
        if self.image:
            self.encoder = ConvEncoder(cfg.depth)
            self.head = nn.Sequential(nn.Linear(self.encoder.out_dim, cfg.feature_dim),
                                      nn.LayerNorm(cfg.feature_dim), nn.Tanh())
            self.feature_dim = cfg.feature_dim
        else:
            self.feature_dim = self.obs_shape[0]

    def _embed(self, obs: Tensor) -> Tensor:
        """(N, *obs_shape) -> (N, F)."""
        if not self.image:
            return obs.float()
        return self.head(self.encoder(preprocess_image(obs)))

    def loss(self, obs: Tensor, prev_actions: Tensor, rewards: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return torch.zeros((), device=obs.device), {}

    def features(self, obs: Tensor, prev_actions: Tensor) -> Tensor:
        return over_time(self._embed, obs, len(self.obs_shape))

    def initial_state(self, batch_size: int) -> Any:
        return None

    def observe(self, state: Any, obs_t: Tensor, prev_action_t: Tensor) -> tuple[Tensor, Any]:
        return self._embed(obs_t), None
