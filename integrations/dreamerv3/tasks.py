"""How kalbench's tasks look to DreamerV3, and back: names, per-episode seeds, observation layout.

Pure Python + numpy, so that the analysis (published score names) and the tests use it without DreamerV3.

Task names. kalbench writes `<domain>-<task>` (`walker-walk`, `ball_in_cup-catch`, `cartpole-swingup_sparse`).
DreamerV3 writes `dmc_<domain>_<task>`: its score files spell the domain in full (`dmc_ball_in_cup_catch`), its
DMC environment (`embodied/envs/dmc.py`) splits the name at the first underscore and knows `cup` as the short
name of `ball_in_cup` (`dmc_cup_catch`).
"""
from __future__ import annotations

import numpy as np

from rl import run_contract

# dm_control suite domains whose name has an underscore: the split of `dmc_<domain>_<task>` has to know them.
MULTIWORD_DOMAINS = ("ball_in_cup", "point_mass")
# DreamerV3's own DMC environment spells ball_in_cup as `cup` (embodied/envs/dmc.py at the pinned commit).
DREAMER_DOMAIN_ALIASES = {"cup": "ball_in_cup"}

# Observation keys DreamerV3's agent sees. Its encoder and decoder take every key of the observation space but
# is_first/is_last/is_terminal/reward, images (rank 3, uint8) through the CNN and vectors through the MLP.
OBS_KEY = {"pixels": "image", "state": "state", "noisy_state": "state"}

_STREAM = {"train": run_contract.TRAIN_STREAM, "eval": run_contract.EVAL_STREAM}


def from_dreamer_task(name: str) -> str:
    """`dmc_walker_walk` -> `walker-walk`; `dmc_ball_in_cup_catch` and `dmc_cup_catch` -> `ball_in_cup-catch`."""
    if not name.startswith("dmc_"):
        raise ValueError(f"not a DeepMind Control task name of DreamerV3: {name!r} (expected dmc_<domain>_<task>)")
    rest = name[len("dmc_"):]
    for domain in MULTIWORD_DOMAINS:
        if rest.startswith(domain + "_") and len(rest) > len(domain) + 1:
            return f"{domain}-{rest[len(domain) + 1:]}"
    domain, _, task = rest.partition("_")
    if not domain or not task:
        raise ValueError(f"cannot split {name!r} into domain and task")
    return f"{DREAMER_DOMAIN_ALIASES.get(domain, domain)}-{task}"


def to_dreamer_env_task(task: str) -> str:
    """`walker-walk` -> `dmc_walker_walk`, as DreamerV3's own DMC environment loads it (`ball_in_cup` -> `cup`)."""
    domain, sep, name = task.partition("-")
    if not sep or not domain or not name:
        raise ValueError(f"task {task!r} is not <domain>-<task>")
    domain = {v: k for k, v in DREAMER_DOMAIN_ALIASES.items()}.get(domain, domain)
    if "_" in domain:
        raise ValueError(f"DreamerV3's DMC environment cannot load domain {domain!r} (it splits the task name at "
                         "the first underscore); use --env-impl kalbench for this task")
    return f"dmc_{domain}_{name}"


def episode_seed(run_seed: int, mode: str, env_index: int, episode: int) -> int:
    """The seed of one episode of one environment of a run: rl/run_contract.py's `episode_seed` with the words
    (stream of `mode`, env_index, episode). Evaluations pass (evaluation number, episode) for (env_index, episode),
    which gives the seed rl/train.py uses for that evaluation episode. Raises ValueError for another mode or a
    negative word."""
    if mode not in _STREAM:
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    return run_contract.episode_seed(run_seed, _STREAM[mode], env_index, episode)


def to_dreamer_obs(obs: np.ndarray, obs_type: str) -> np.ndarray:
    """An observation of `rl.envs` as DreamerV3 takes it: pixels CHW uint8 -> HWC uint8, states float32 (D,)."""
    if obs_type == "pixels":
        obs = np.asarray(obs)
        if obs.ndim != 3 or obs.dtype != np.uint8:
            raise ValueError(f"pixels must be uint8 (C, H, W), got {obs.dtype} {obs.shape}")
        return np.ascontiguousarray(obs.transpose(1, 2, 0))
    if obs_type in ("state", "noisy_state"):
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim != 1:
            raise ValueError(f"states must be 1-D, got shape {obs.shape}")
        return obs
    raise ValueError(f"unknown observation type {obs_type!r}")


def dreamer_obs_shape(observation_shape: tuple[int, ...], obs_type: str) -> tuple[int, ...]:
    """The shape `to_dreamer_obs` returns for an observation of `observation_shape`."""
    if obs_type == "pixels":
        c, h, w = observation_shape
        return (h, w, c)
    return tuple(observation_shape)


def is_terminal(done: bool, info: dict, episode_length: int | None) -> bool:
    """True where an episode ended in a terminal state rather than at its time limit.

    `rl.envs` ends an episode after `episode_length` simulator steps, or earlier when the task terminates
    (discount 0); its `info["env_steps"]` counts the episode's simulator steps. DreamerV3 bootstraps from
    non-terminal last states, so a time-limit end must not be marked terminal."""
    if not done:
        return False
    steps = info.get("env_steps")
    if steps is None or episode_length is None:
        return False
    return int(steps) < int(episode_length)


def eval_env_count(episodes: int, max_envs: int) -> int:
    """Evaluation environments stepped together: the largest divisor of `episodes` that is <= max_envs, so that
    fixed-length episodes finish exactly `episodes` of them (no episode is run and then thrown away)."""
    if episodes < 1 or max_envs < 1:
        raise ValueError(f"episodes and max_envs must be >= 1, got {episodes}, {max_envs}")
    return max(n for n in range(1, min(episodes, max_envs) + 1) if episodes % n == 0)
