"""rl/envs.py against dm_control itself: the noise wrappers change what they should and nothing else."""
import numpy as np
import pytest
from dm_control import suite

from rl import envs
from rl.envs import make_env


def clean_env(domain, task, seed):
    return suite.load(domain, task, task_kwargs={"random": seed})


def flat(obs_dict):
    return np.concatenate([np.asarray(v, np.float64).ravel() for v in obs_dict.values()])


def test_unknown_task_and_observation_type_list_the_valid_ones():
    with pytest.raises(ValueError, match="walker-fly") as e:
        make_env("walker-fly", "noisy_state", seed=0)
    assert "walker-walk" in str(e.value) and "cartpole-swingup" in str(e.value)
    with pytest.raises(ValueError, match="'rgb'") as e:
        make_env("walker-walk", "rgb", seed=0)
    assert "pixels" in str(e.value) and "noisy_state" in str(e.value)
    assert "lqr-lqr_2_1" not in envs.valid_tasks()


def test_planet_action_repeat_defaults():
    expected = {"cartpole-swingup": 8, "walker-walk": 2, "quadruped-walk": 2, "finger-spin": 2,
                "cheetah-run": 4, "reacher-easy": 4, "ball_in_cup-catch": 4, "hopper-hop": 2}
    assert {t: envs.default_action_repeat(t) for t in expected} == expected


def test_true_state_is_the_clean_state_observation_and_needs_a_reset():
    env = make_env("walker-walk", "state", seed=5, episode_length=10)
    with pytest.raises(RuntimeError, match="reset"):
        env.true_state()
    obs = env.reset()
    np.testing.assert_array_equal(env.true_state().astype(np.float32), obs)
    obs, *_ = env.step(np.zeros(env.action_dim))
    state = env.true_state()
    assert state.dtype == np.float64 and state.shape == env.observation_shape
    np.testing.assert_array_equal(state.astype(np.float32), obs)
    state[:] = 0   # a copy: the probe cannot change the env
    assert np.any(env.true_state() != 0)


def test_noise_free_state_env_is_dm_control_bit_for_bit():
    """sigma = 0: observations, rewards (summed over the repeats) and episode end equal plain dm_control's."""
    env = make_env("cartpole-swingup", "noisy_state", seed=3, obs_noise_std=0.0, action_noise_std=0.0,
                   action_repeat=3, episode_length=20)
    ref = clean_env("cartpole", "swingup", 3)
    obs = env.reset()
    assert obs.dtype == np.float32 and obs.shape == env.observation_shape == (5,)
    np.testing.assert_array_equal(obs, flat(ref.reset().observation).astype(np.float32))
    rng = np.random.default_rng(0)
    for k in range(7):  # 20 env steps = 6 full agent steps of 3 + one of 2
        a = rng.uniform(-1, 1, size=1)
        obs, reward, done, info = env.step(a)
        r_ref = 0.0
        for _ in range(3 if k < 6 else 2):
            ts = ref.step(a)
            r_ref += ts.reward
        np.testing.assert_array_equal(obs, flat(ts.observation).astype(np.float32))
        assert reward == r_ref
        assert done == (k == 6)
    assert info["env_steps"] == 20


def test_reset_with_seed_equals_a_freshly_seeded_task():
    env = make_env("reacher-easy", "noisy_state", seed=0, obs_noise_std=0.0, action_noise_std=0.0)
    env.reset()
    env.step(np.zeros(2))
    obs = env.reset(seed=11)
    np.testing.assert_array_equal(obs, flat(clean_env("reacher", "easy", 11).reset().observation).astype(np.float32))


def test_observation_noise_has_the_right_std_and_never_returns_the_clean_state():
    sigma = 0.3
    env = make_env("cartpole-swingup", "noisy_state", seed=1, obs_noise_std=sigma, action_noise_std=0.0,
                   action_repeat=2)
    ref = clean_env("cartpole", "swingup", 1)
    noisy, clean = [env.reset()], [flat(ref.reset().observation)]
    rng = np.random.default_rng(1)
    for _ in range(400):
        a = rng.uniform(-1, 1, size=1)
        obs, reward, _, _ = env.step(a)
        ts1, ts2 = ref.step(a), ref.step(a)
        assert reward == ts1.reward + ts2.reward  # dynamics and rewards untouched
        noisy.append(obs)
        clean.append(flat(ts2.observation))
        np.testing.assert_array_equal(env.true_state(), clean[-1])  # the probe's target: the state before noise
    noisy, clean = np.array(noisy), np.array(clean)
    assert noisy.dtype == np.float32
    assert not np.any(noisy == clean.astype(np.float32))  # the clean value never comes through
    eps = noisy.astype(np.float64) - clean
    n = eps.size
    assert abs(eps.mean()) < 4 * sigma / np.sqrt(n)
    assert abs(eps.std() - sigma) < 0.05 * sigma
    assert np.all(np.abs(eps.std(axis=0) - sigma) < 0.15 * sigma)  # every dimension
    lag1 = np.corrcoef(eps[:-1].ravel(), eps[1:].ravel())[0, 1]
    assert abs(lag1) < 0.1  # fresh noise every step


def test_action_noise_enters_the_simulator_clipped_and_held_over_repeats():
    sigma = 0.3
    env = make_env("walker-walk", "noisy_state", seed=2, obs_noise_std=0.0, action_noise_std=sigma,
                   action_repeat=2)
    ref = clean_env("walker", "walk", 2)  # driven with the control the noisy env actually applied
    obs = env.reset()
    ref.reset()
    rng = np.random.default_rng(2)
    applied, sent = [], []
    for t in range(300):
        a = rng.uniform(-1, 1, size=6).astype(np.float32)
        if t % 3 == 0:
            a[:] = 0.95  # near the bound: the noisy action must be clipped
        elif t % 3 == 1:
            a[:] = 0.0   # far from the bounds (|noise| > 1 has probability 1e-3): the noise itself reaches ctrl
        a_copy = a.copy()
        obs, reward, _, _ = env.step(a)
        np.testing.assert_array_equal(a, a_copy)  # the agent's action is untouched
        ctrl = env.physics.data.ctrl.copy()
        ts1, ts2 = ref.step(ctrl), ref.step(ctrl)  # the same noisy action for both sub-steps
        np.testing.assert_array_equal(env.physics.get_state(), ref.physics.get_state())
        np.testing.assert_array_equal(obs, flat(ts2.observation).astype(np.float32))  # sigma_o = 0: true state
        assert reward == ts1.reward + ts2.reward
        applied.append(ctrl)
        sent.append(a.astype(np.float64))
    applied, sent = np.array(applied), np.array(sent)
    assert applied.min() >= -1.0 and applied.max() <= 1.0
    at_095 = applied[0::3]
    assert np.any(at_095 == 1.0)  # clipping happened
    # P(0.95 + noise > 1) = P(noise > 0.05) = 0.43 for sigma 0.3
    assert 0.3 < np.mean(at_095 == 1.0) < 0.56
    noise = (applied - sent)[1::3].ravel()  # 600 draws of clip(N(0, sigma^2), -1, 1)
    assert abs(noise.std() - sigma) < 0.1 * sigma and abs(noise.mean()) < 4 * sigma / np.sqrt(noise.size)
    lag1 = np.corrcoef(noise.reshape(-1, 6)[:-1].ravel(), noise.reshape(-1, 6)[1:].ravel())[0, 1]
    assert abs(lag1) < 0.15  # a fresh draw every agent step
    assert not np.any(applied == sent)


def test_pixels_are_dm_control_renders_without_noise():
    env = make_env("cartpole-swingup", "pixels", seed=4, action_repeat=8, episode_length=16)
    ref = clean_env("cartpole", "swingup", 4)
    obs = env.reset()
    ref.reset()
    assert obs.shape == env.observation_shape == (3, 64, 64) and obs.dtype == np.uint8
    np.testing.assert_array_equal(obs, ref.physics.render(64, 64, camera_id=0).transpose(2, 0, 1))
    a = np.array([0.5])
    obs, _, done, _ = env.step(a)
    np.testing.assert_array_equal(env.physics.data.ctrl, a)  # the default noise stds do not apply to pixels
    for _ in range(8):
        ref.step(a)
    np.testing.assert_array_equal(obs, ref.physics.render(64, 64, camera_id=0).transpose(2, 0, 1))
    np.testing.assert_array_equal(env.true_state(), flat(ref.task.get_observation(ref.physics)))
    assert not done and env.step(a)[2]


def test_quadruped_camera_2_and_action_bounds_mapping():
    env = make_env("quadruped-walk", "pixels", seed=0)
    ref = clean_env("quadruped", "walk", 0)
    obs = env.reset()
    ref.reset()
    np.testing.assert_array_equal(obs, ref.physics.render(64, 64, camera_id=2).transpose(2, 0, 1))
    spec = ref.action_spec()
    assert not np.all(spec.maximum == 1.0)  # quadruped's bounds are not [-1, 1]
    env.step(np.ones(env.action_dim))
    np.testing.assert_allclose(env.physics.data.ctrl, spec.maximum)
    env.step(-np.ones(env.action_dim))
    np.testing.assert_allclose(env.physics.data.ctrl, spec.minimum)
    env.step(np.zeros(env.action_dim))
    np.testing.assert_allclose(env.physics.data.ctrl, (spec.minimum + spec.maximum) / 2)


def test_noisy_episodes_are_a_function_of_the_seed():
    def rollout(env, seed):
        out = [env.reset(seed=seed)]
        for t in range(10):
            out.append(env.step(np.full(env.action_dim, 0.1 * (t % 3)))[0])
        return np.array(out)

    env = make_env("walker-walk", "noisy_state", seed=0)
    a, b = rollout(env, 5), rollout(env, 6)
    np.testing.assert_array_equal(rollout(env, 5), a)  # the noise RNG is reseeded with the task RNG
    np.testing.assert_array_equal(rollout(make_env("walker-walk", "noisy_state", seed=9), 5), a)
    assert not np.allclose(a, b)


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match="-0.1"):
        make_env("walker-walk", "noisy_state", seed=0, obs_noise_std=-0.1)
    with pytest.raises(ValueError, match="action_repeat must be >= 1, got -2"):
        make_env("walker-walk", "noisy_state", seed=0, action_repeat=-2)
    with pytest.raises(ValueError, match="episode_length must be >= 1, got 0"):
        make_env("walker-walk", "noisy_state", seed=0, episode_length=0)
