"""Replay buffer of whole episodes, sampled as fixed-length sub-sequences.

Alignment (CoRAL, docs/architecture.md): an episode with agent steps t = 0..T-1 is stored as T+1 entries
    obs[t] = o_t,   prev_actions[t] = a_{t-1},   rewards[t] = r_{t-1}        t = 0..T
with prev_actions[0] = 0 and rewards[0] = 0 (nothing happened before the first observation), so
rewards[t] is the reward received when a_{t-1} led to o_t. The buffer stores the agent's actions (before
any environment-side action noise).

Sampling: `sample(B, L, rng)` picks B episodes uniformly (with replacement) among those with at least L
entries and, in each, a start uniformly in [0, len - L]. Shorter episodes are never sampled (no padding);
if no episode is long enough, ValueError. Images stay uint8 in memory and in the batch; the world models
convert them.

Persistence: episodes are immutable once added, so `save(dir)` writes each one once as
`dir/episode_<index>.npz` (atomically) and `load(dir, n)` reads the first n back. The checkpoint records n:
episodes written after the checkpoint are ignored on resume, and overwritten when they are re-collected.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from rl.io import atomic_write_bytes

KEYS = ("obs", "prev_actions", "rewards")


class EpisodeReplay:
    def __init__(self) -> None:
        self.episodes: list[dict[str, np.ndarray]] = []
        self._saved = 0  # episodes [0, _saved) are already on disk

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_steps(self) -> int:
        """Agent steps stored (transitions)."""
        return sum(len(ep["rewards"]) - 1 for ep in self.episodes)

    def add_episode(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None:
        """Add one episode: `obs` (T+1, *obs_shape) = o_0..o_T, `actions` (T, A) = a_0..a_{T-1},
        `rewards` (T,) = r_0..r_{T-1} (r_t follows a_t)."""
        obs, actions, rewards = np.asarray(obs), np.asarray(actions, np.float32), np.asarray(rewards, np.float32)
        T = len(actions)
        if T < 1 or obs.shape[0] != T + 1 or rewards.shape != (T,) or actions.ndim != 2:
            raise ValueError(f"episode shapes: obs {obs.shape}, actions {actions.shape}, rewards {rewards.shape}; "
                             "expected (T+1, ...), (T, A), (T,) with T >= 1")
        prev_actions = np.concatenate([np.zeros_like(actions[:1]), actions])
        prev_rewards = np.concatenate([np.zeros(1, np.float32), rewards])
        self.episodes.append({"obs": obs, "prev_actions": prev_actions, "rewards": prev_rewards})

    def sample(self, batch_size: int, length: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """B sub-sequences of L consecutive entries: obs (B, L, *obs_shape) (uint8 or float32),
        prev_actions (B, L, A) float32, rewards (B, L) float32."""
        eligible = [i for i, ep in enumerate(self.episodes) if len(ep["rewards"]) >= length]
        if not eligible:
            lengths = sorted({len(ep["rewards"]) for ep in self.episodes})
            raise ValueError(f"no episode has {length} entries to sample a sub-sequence of length {length} "
                             f"(episode lengths in entries: {lengths})")
        picks = rng.choice(len(eligible), size=batch_size)
        batch: dict[str, list[np.ndarray]] = {k: [] for k in KEYS}
        for p in picks:
            ep = self.episodes[eligible[p]]
            start = rng.integers(0, len(ep["rewards"]) - length + 1)
            for k in KEYS:
                batch[k].append(ep[k][start:start + length])
        return {k: torch.from_numpy(np.stack(v)) for k, v in batch.items()}

    def save(self, directory: str | Path) -> None:
        """Write the episodes not yet on disk to `directory/episode_<index>.npz`."""
        directory = Path(directory)
        for i in range(self._saved, len(self.episodes)):
            buf = io.BytesIO()
            np.savez_compressed(buf, **self.episodes[i])
            atomic_write_bytes(directory / f"episode_{i:07d}.npz", buf.getvalue())
        self._saved = len(self.episodes)

    def load(self, directory: str | Path, n_episodes: int) -> None:
        """Replace the contents with the first `n_episodes` episodes saved in `directory`."""
        directory = Path(directory)
        self.episodes = []
        for i in range(n_episodes):
            path = directory / f"episode_{i:07d}.npz"
            if not path.exists():
                raise FileNotFoundError(f"replay episode {path} is missing (the checkpoint needs {n_episodes})")
            with np.load(path) as f:
                self.episodes.append({k: f[k] for k in KEYS})
        self._saved = n_episodes
