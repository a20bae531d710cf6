"""The world-model interface: what rl/agent.py (training, acting), rl/probe.py and the benchmarks call on a
world model. KalMamba, RSSM, VRKN, plain SAC's Passthrough and a plugin's model (examples/own_method.py) follow it;
docs/architecture.md ("World-model interface") is the same contract in prose.

Batch alignment (CoRAL): index t of a sequence holds obs[t] = o_t, prev_actions[t] = a_{t-1} (zeros at the episode
start) and rewards[t] = r_{t-1} (0 at the episode start). Shapes: B batch, T time, A actions, F features;
obs is (B, T, 3, 64, 64) uint8 pixels or (B, T, D) float32 states (standardised by the agent for world models).

A model is a torch.nn.Module built as `Model(obs_shape, action_dim, cfg)`; the agent trains its parameters with
Adam(cfg.lr, eps=cfg.adam_eps if the config has it, else 1e-8) and clips the global gradient norm at
cfg.grad_clip. Models are switched with .train() (the loss: MC dropout on) and .eval() (features, acting).
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor


class WorldModelConfig(Protocol):
    """What the agent reads from every model config dataclass (the rest is the model's own)."""
    lr: float           # Adam learning rate of the model
    grad_clip: float    # global gradient-norm clip of the model


@runtime_checkable
class WorldModel(Protocol):
    feature_dim: int     # F, the size of the features SAC sees
    critic_grad: bool    # True: no model loss; SAC's critic trains the model's parameters (plain SAC on pixels)
    cfg: Any             # the WorldModelConfig it was built with

    def loss(self, obs: Tensor, prev_actions: Tensor, rewards: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """obs (B, T, ...), prev_actions (B, T, A), rewards (B, T) -> (scalar loss, named scalar terms).
        Terms named `loss_<part>` are the loss's weighted summands, not detached, and sum to the loss (the agent
        logs their gradient norms); the other terms are detached."""

    def features(self, obs: Tensor, prev_actions: Tensor) -> Tensor:
        """(B, T, F): the filtered belief at every step, from the start of the sequence (no future inputs)."""

    def initial_state(self, batch_size: int) -> Any:
        """Acting: the model's state before the first observation of an episode."""

    def observe(self, state: Any, obs_t: Tensor, prev_action_t: Tensor) -> tuple[Tensor, Any]:
        """One online step: obs_t (B, ...), prev_action_t (B, A) -> (features (B, F), new state). Equals
        `features` of the sequence so far at its last step."""

    # Optional: `diagnostics(obs, prev_actions, rewards) -> dict[str, Tensor]` of named scalars (no_grad),
    # logged as train.csv `diag_<name>`.


def missing_members(model: object) -> list[str]:
    """The WorldModel members `model` lacks (empty if it follows the protocol)."""
    members = ("feature_dim", "critic_grad", "cfg", "loss", "features", "initial_state", "observe")
    return [m for m in members if not hasattr(model, m)]
