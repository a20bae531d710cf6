"""Our tasks (`rl.envs.make_env`) behind DreamerV3's environment interface, `embodied.Env`.

Import this module only where DreamerV3 is importable (`integrations.dreamerv3.import_dreamerv3()` first).

The interface (embodied/core/base.py and embodied/envs/from_dm.py at the pinned commit): `obs_space` is a dict of
`elements.Space` holding `reward`, `is_first`, `is_last`, `is_terminal` and the observations; `act_space` holds
`reset` (bool) and the actions; `step(action)` takes a dict of both. A step with `reset` set (and the first step
after an episode ended) starts a new episode and returns its first observation with `is_first=True` and reward 0;
every other step returns the reward of the action that led to it.

DreamerV3 builds environments through `dreamerv3/main.py:make_env(config, index, **overrides)`, which knows a
fixed table of suites. `make_env` below is that function with one more suite, `kalbench` (`--task
kalbench_walker-walk`, settings under `env.kalbench.*`); every other suite goes to DreamerV3's own function.
"""
from __future__ import annotations

import functools

import elements
import embodied
import numpy as np

from integrations.dreamerv3.tasks import (OBS_KEY, dreamer_obs_shape, episode_seed, is_terminal,
                                          to_dreamer_obs)

# The suite name of our tasks in DreamerV3's `--task <suite>_<task>` naming (kalbench_walker-walk).
SUITE = "kalbench"


class KalbenchEnv(embodied.Env):
    """One `rl.envs` task (`obs_type` pixels, state or noisy_state), `repeat` = its action repeat.

    Training (mode "train"): episode k of environment `index` is seeded by `episode_seed(seed, "train", index,
    first_episode + k)`. Evaluation (mode "eval"): `start_evaluation(number, slot, stride)` before each
    evaluation; the env's k-th episode of it is episode i = slot + k * stride of evaluation `number`, seeded by
    `episode_seed(seed, "eval", number, i)`: the seed rl/train.py gives evaluation episode i, so every method is
    evaluated on the same episodes."""

    def __init__(self, task: str, obs_type: str, seed: int, mode: str = "train", index: int = 0,
                 first_episode: int = 0, repeat: int = 0, obs_noise_std: float = 0.3,
                 action_noise_std: float = 0.3, size: int = 64, episode_length: int = 1000):
        from rl.envs import make_env

        self._obs_type = obs_type
        self._key = OBS_KEY[obs_type]
        self._seed, self._mode, self._index = int(seed), mode, int(index)
        episode_seed(self._seed, mode, self._index, 0)  # checks mode, seed, index
        self._env = make_env(task, obs_type, self._seed, obs_noise_std=obs_noise_std,
                             action_noise_std=action_noise_std, action_repeat=repeat or None,
                             image_size=int(size), episode_length=int(episode_length))
        self._episode = int(first_episode)
        self._eval = None  # (number, slot, stride) of the evaluation under way
        self.episode_index = None  # index of the episode under way (within the evaluation, in eval mode)
        self._done = True
        self.action_repeat = int(self._env.action_repeat)

    @functools.cached_property
    def obs_space(self):
        shape = dreamer_obs_shape(tuple(self._env.observation_shape), self._obs_type)
        dtype = np.uint8 if self._obs_type == "pixels" else np.float32
        return {
            self._key: elements.Space(dtype, shape),
            "reward": elements.Space(np.float32),
            "is_first": elements.Space(bool),
            "is_last": elements.Space(bool),
            "is_terminal": elements.Space(bool),
        }

    @functools.cached_property
    def act_space(self):
        return {
            "reset": elements.Space(bool),
            "action": elements.Space(np.float32, (int(self._env.action_dim),), -1.0, 1.0),
        }

    def start_evaluation(self, number: int, slot: int, stride: int) -> None:
        """The next episodes belong to evaluation `number`: slot, slot + stride, slot + 2 * stride, ..."""
        if self._mode != "eval":
            raise ValueError(f"start_evaluation needs an env in mode 'eval', this one is in mode {self._mode!r}")
        if number < 0 or slot < 0 or stride < 1:
            raise ValueError(f"need number >= 0, slot >= 0, stride >= 1; got {number}, {slot}, {stride}")
        self._eval, self._episode, self._done = (int(number), int(slot), int(stride)), 0, True

    def _next_seed(self) -> int:
        if self._mode == "train":
            self.episode_index = self._episode
            return episode_seed(self._seed, "train", self._index, self._episode)
        if self._eval is None:
            raise RuntimeError("an eval env needs start_evaluation() before its first episode")
        number, slot, stride = self._eval
        self.episode_index = slot + self._episode * stride
        return episode_seed(self._seed, "eval", number, self.episode_index)

    def step(self, action):
        if action["reset"] or self._done:
            seed = self._next_seed()
            self._episode += 1
            self._done = False
            return self._transition(self._env.reset(seed=seed), 0.0, first=True, last=False, terminal=False)
        obs, reward, done, info = self._env.step(np.asarray(action["action"], dtype=np.float32))
        self._done = bool(done)
        terminal = is_terminal(self._done, info, getattr(self._env, "episode_length", None))
        return self._transition(obs, reward, first=False, last=self._done, terminal=terminal)

    def _transition(self, obs, reward, first, last, terminal):
        return {
            self._key: to_dreamer_obs(obs, self._obs_type),
            "reward": np.float32(reward),
            "is_first": first,
            "is_last": last,
            "is_terminal": terminal,
        }

    def close(self):
        close = getattr(self._env, "close", None)
        if callable(close):
            close()


def make_env(config, index, **overrides):
    """DreamerV3's `make_env(config, index, **overrides)` plus the `kalbench` suite.

    `config` is DreamerV3's config; `config.env.kalbench` holds KalbenchEnv's settings (obs_type, repeat, noise,
    size, episode_length), `config.seed` the run seed; `overrides` (mode, first_episode) win over both."""
    import dreamerv3.main as dv3main

    suite, task = config.task.split("_", 1)
    if suite != SUITE:
        original = getattr(dv3main, "_kalbench_original_make_env", dv3main.make_env)
        return original(config, index, **overrides)
    kwargs = {**dict(config.env[SUITE]), "seed": int(config.seed), **overrides}
    return dv3main.wrap_env(KalbenchEnv(task, index=index, **kwargs), config)


def install(dv3main) -> None:
    """Make DreamerV3's own `make_agent` (which builds env 0 to read the spaces) use `make_env` above."""
    if not hasattr(dv3main, "_kalbench_original_make_env"):
        dv3main._kalbench_original_make_env = dv3main.make_env
    dv3main.make_env = make_env
