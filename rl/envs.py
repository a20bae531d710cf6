"""DeepMind Control suite tasks with the two observation types of the paper.

`make_env("walker-walk", "pixels", seed=0)` gives an environment with
    reset(seed=None) -> obs             step(action) -> (obs, reward, done, info)
    observation_shape, action_dim, action_repeat, episode_length
    true_state() -> the clean flattened state behind the latest observation (for the belief probe, rl/probe.py)
Observation types:
- `pixels`: 64x64 RGB uint8 in CHW layout, camera 0 (quadruped: camera 2, as in Dreamer).
- `state`: the concatenation of all entries of DMC's observation dict (in the dict's order, each flattened),
  float32, without noise of any kind (DreamerV3's `dmc_proprio` setting).
- `noisy_state`: the same concatenation of all entries of DMC's observation dict (in the dict's order, each
  flattened) plus i.i.d. N(0, obs_noise_std^2) noise every step, float32. Before the action reaches the
  simulator, N(0, action_noise_std^2) noise is added and the result is clipped to the action bounds; the
  same noisy action is held for all action-repeat sub-steps. The agent never sees the noisy action.
  Pixels get no noise of either kind.

Actions: the agent acts in [-1, 1]^A. Where a task's bounds differ (only quadruped among the suite tasks
here) the action is mapped affinely onto [minimum, maximum]; action noise is added in the agent's [-1, 1]
space, before that map. `lqr` is excluded: its actuators are unbounded.

Episodes last `episode_length` simulator steps (default 1000, DMC's own limit) = episode_length /
action_repeat agent steps; rewards are summed over the repeats. If episode_length is not a multiple of the
action repeat, the last agent step holds fewer sub-steps. A task that terminates earlier (discount 0)
ends the episode there.

Seeding: `seed` seeds the task's RNG (initial states, targets) and the noise RNG. `reset(seed=s)` reseeds
both, so an episode is a pure function of its seed and the actions: the training loop reseeds every
episode from (run seed, episode index) and never needs a mid-episode simulator state to resume.
"""
from __future__ import annotations

import numpy as np

OBS_TYPES = ("pixels", "state", "noisy_state")

# PlaNet's per-domain action repeat (used by Dreamer, VRKN and CoRAL); other domains get 2 (Dreamer's DMC
# default).
PLANET_ACTION_REPEAT = {"cartpole": 8, "walker": 2, "quadruped": 2, "finger": 2,
                        "cheetah": 4, "reacher": 4, "ball_in_cup": 4}
DEFAULT_ACTION_REPEAT = 2
CAMERA = {"quadruped": 2}  # every other domain renders camera 0
EXCLUDED_DOMAINS = ("lqr",)


def valid_tasks() -> list[str]:
    """All suite tasks as `domain-task` names (`lqr` excluded: unbounded actions)."""
    from dm_control import suite

    return [f"{d}-{t}" for d, t in suite.ALL_TASKS if d not in EXCLUDED_DOMAINS]


def parse_task(task: str) -> tuple[str, str]:
    """`"ball_in_cup-catch"` -> `("ball_in_cup", "catch")`; unknown names -> ValueError listing the valid ones."""
    names = valid_tasks()
    if task not in names:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(names)}")
    domain, name = task.split("-", 1)
    return domain, name


def default_action_repeat(task: str) -> int:
    domain, _ = parse_task(task)
    return PLANET_ACTION_REPEAT.get(domain, DEFAULT_ACTION_REPEAT)


def check_obs_type(obs_type: str) -> str:
    if obs_type not in OBS_TYPES:
        raise ValueError(f"unknown observation type {obs_type!r}; valid types: {', '.join(OBS_TYPES)}")
    return obs_type


def flatten_state(observation: dict) -> np.ndarray:
    """Concatenate all entries of a DMC observation dict (float64, each flattened, in the dict's order)."""
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in observation.values()])


class DMCEnv:
    """One dm_control task with action repeat, a fixed episode length, and the chosen observation type."""

    def __init__(self, task: str, obs_type: str, seed: int, obs_noise_std: float = 0.3,
                 action_noise_std: float = 0.3, action_repeat: int | None = None, image_size: int = 64,
                 episode_length: int = 1000):
        from dm_control import suite

        self.domain, self.task_name = parse_task(task)
        self.obs_type = check_obs_type(obs_type)
        if obs_noise_std < 0 or action_noise_std < 0:
            raise ValueError(f"noise stds must be >= 0, got obs {obs_noise_std}, action {action_noise_std}")
        if action_repeat is not None and action_repeat < 1:
            raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        self.task = task
        self.action_repeat = action_repeat or default_action_repeat(task)
        self.episode_length = episode_length
        self.image_size = image_size
        noisy = obs_type == "noisy_state"
        self.obs_noise_std = float(obs_noise_std) if noisy else 0.0
        self.action_noise_std = float(action_noise_std) if noisy else 0.0
        self.camera_id = CAMERA.get(self.domain, 0)

        # No time limit inside dm_control: this class ends the episode after `episode_length` steps.
        self._env = suite.load(self.domain, self.task_name,
                               task_kwargs={"random": seed, "time_limit": float("inf")})
        self._noise_rng = np.random.default_rng([seed, 1])
        spec = self._env.action_spec()
        self._low, self._high = spec.minimum.astype(np.float64), spec.maximum.astype(np.float64)
        self._unit_bounds = bool(np.all(self._low == -1.0) and np.all(self._high == 1.0))
        self.action_dim = int(spec.shape[0])
        if obs_type == "pixels":
            self.observation_shape = (3, image_size, image_size)
        else:
            self.observation_shape = (sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values()),)
        self._steps = 0
        self._true_state: np.ndarray | None = None

    @property
    def physics(self):
        """The simulator (for tests and rendering; the agent only sees `reset`/`step` results)."""
        return self._env.physics

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode. With `seed`, reseed the task RNG and the noise RNG first."""
        if seed is not None:
            self._env.task.random.seed(seed)
            self._noise_rng = np.random.default_rng([seed, 1])
        self._steps = 0
        return self._observe(self._env.reset().observation)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict]:
        """One agent step = `action_repeat` simulator steps with the same (noisy) action."""
        a = np.asarray(action, dtype=np.float64).reshape(self.action_dim)  # never written in place
        if self.action_noise_std > 0:
            a = a + self._noise_rng.normal(0.0, self.action_noise_std, size=a.shape)
        a = np.clip(a, -1.0, 1.0)
        if not self._unit_bounds:
            a = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        reward, done = 0.0, False
        for _ in range(self.action_repeat):
            ts = self._env.step(a)
            reward += ts.reward or 0.0
            self._steps += 1
            if ts.last() or self._steps >= self.episode_length:
                done = True
                break
        return self._observe(ts.observation), reward, done, {"env_steps": self._steps}

    def true_state(self) -> np.ndarray:
        """The simulator state behind the latest observation (of `reset` or `step`), as the agent would see it
        without noise: DMC's observation dict flattened (`flatten_state`), float64 (S,), for every observation
        type (equal to the `state` observation; the `noisy_state` observation before its noise). Read by the
        belief probe (rl/probe.py), never by the agent. RuntimeError before the first `reset`."""
        if self._true_state is None:
            raise RuntimeError("true_state(): no observation yet; call reset() first")
        return self._true_state.copy()

    def state_names(self) -> list[str]:
        """A name per entry of `true_state()` (S,): DMC's observation key, with the index where the entry is one of
        several, e.g. cartpole: position[0], position[1], position[2], velocity[0], velocity[1]."""
        names = []
        for key, spec in self._env.observation_spec().items():
            size = int(np.prod(spec.shape))
            names += [key] if size == 1 else [f"{key}[{i}]" for i in range(size)]
        return names

    def close(self) -> None:
        """Free the simulator and its rendering context (otherwise freed at interpreter exit, where
        dm_control's OSMesa/EGL cleanup can fail noisily)."""
        self._env.physics.free()

    def _observe(self, observation: dict) -> np.ndarray:
        self._true_state = flatten_state(observation)
        if self.obs_type == "pixels":
            img = self._env.physics.render(height=self.image_size, width=self.image_size, camera_id=self.camera_id)
            return np.ascontiguousarray(img.transpose(2, 0, 1))
        state = self._true_state
        if self.obs_noise_std > 0:
            state = state + self._noise_rng.normal(0.0, self.obs_noise_std, size=state.shape)
        return state.astype(np.float32)


def make_env(task: str, obs_type: str, seed: int, obs_noise_std: float = 0.3, action_noise_std: float = 0.3,
             action_repeat: int | None = None, image_size: int = 64, episode_length: int = 1000) -> DMCEnv:
    """A seeded dm_control task; see the module docstring for the observation types and defaults."""
    return DMCEnv(task, obs_type, seed, obs_noise_std, action_noise_std, action_repeat, image_size, episode_length)
