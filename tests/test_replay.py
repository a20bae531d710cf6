"""rl/replay.py: CoRAL batch alignment, uniform sub-sequence sampling, persistence."""
import numpy as np
import pytest
import torch

from rl.replay import EpisodeReplay


def episode(T, start, obs_dim=3, action_dim=2):
    """An episode whose every value encodes (episode id `start`, time step): obs o_t = start + t,
    a_t = -(start + t), r_t = 1000 + start + t."""
    t = np.arange(T + 1, dtype=np.float32)
    obs = np.repeat((start + t)[:, None], obs_dim, axis=1)
    actions = -np.repeat((start + t[:T])[:, None], action_dim, axis=1)
    rewards = 1000.0 + start + t[:T]
    return obs, actions, rewards


def test_batch_alignment_obs_t_with_previous_action_and_reward():
    replay = EpisodeReplay()
    replay.add_episode(*episode(50, start=0))
    replay.add_episode(*episode(40, start=100))
    batch = replay.sample(64, 8, np.random.default_rng(0))
    assert batch["obs"].shape == (64, 8, 3) and batch["prev_actions"].shape == (64, 8, 2)
    assert batch["rewards"].shape == (64, 8)
    assert batch["obs"].dtype == torch.float32 and batch["prev_actions"].dtype == torch.float32
    for obs, prev_a, r in zip(batch["obs"].numpy(), batch["prev_actions"].numpy(), batch["rewards"].numpy()):
        k = obs[:, 0]  # start + t along the sub-sequence
        np.testing.assert_array_equal(np.diff(k), 1)  # consecutive steps of one episode
        ep_start = 0 if k[0] < 100 else 100
        for i, ki in enumerate(k):
            t = ki - ep_start
            if t == 0:  # the first observation: nothing happened before it
                np.testing.assert_array_equal(prev_a[i], 0)
                assert r[i] == 0
            else:  # a_{t-1} led to o_t and earned r_{t-1}
                np.testing.assert_array_equal(prev_a[i], -(ki - 1))
                assert r[i] == 1000 + ki - 1


def test_starts_and_episodes_are_uniform_and_short_episodes_are_skipped():
    replay = EpisodeReplay()
    replay.add_episode(*episode(9, start=0))        # 10 entries: starts 0..5 for L = 5
    replay.add_episode(*episode(3, start=100))      # 4 entries: too short for L = 5, never sampled
    replay.add_episode(*episode(14, start=200))     # 15 entries: starts 0..10
    assert len(replay) == 3 and replay.num_steps == 9 + 3 + 14
    n = 20000
    first = replay.sample(n, 5, np.random.default_rng(1))["obs"][:, 0, 0].numpy()
    assert not np.any((first >= 100) & (first < 200))
    ep0, ep2 = first[first < 100], first[first >= 200] - 200
    assert abs(len(ep0) / n - 0.5) < 4 * 0.5 / np.sqrt(n)  # episodes uniform, not length-weighted
    for starts, n_starts in ((ep0, 6), (ep2, 11)):
        counts = np.bincount(starts.astype(int), minlength=n_starts)
        assert len(counts) == n_starts  # every start from 0 to len - L, none beyond
        expected = len(starts) / n_starts
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 30  # df <= 10: p < 1e-3 only if not uniform


def test_whole_episode_sub_sequence_and_error_when_none_is_long_enough():
    replay = EpisodeReplay()
    replay.add_episode(*episode(4, start=0))
    batch = replay.sample(3, 5, np.random.default_rng(0))  # L = T + 1: the whole episode
    np.testing.assert_array_equal(batch["obs"][:, :, 0], np.tile(np.arange(5), (3, 1)))
    with pytest.raises(ValueError, match="length 6"):
        replay.sample(3, 6, np.random.default_rng(0))


def test_pixels_stay_uint8_and_sampling_is_seeded():
    rng = np.random.default_rng(0)
    replay = EpisodeReplay()
    for _ in range(3):
        replay.add_episode(rng.integers(0, 256, size=(21, 3, 8, 8), dtype=np.uint8),
                           rng.uniform(-1, 1, size=(20, 1)), rng.normal(size=20))
    a = replay.sample(4, 6, np.random.default_rng(7))
    b = replay.sample(4, 6, np.random.default_rng(7))
    assert a["obs"].dtype == torch.uint8 and a["obs"].shape == (4, 6, 3, 8, 8)
    for k in a:
        assert torch.equal(a[k], b[k])


def test_bad_episode_shapes_are_errors():
    replay = EpisodeReplay()
    obs, actions, rewards = episode(5, start=0)
    with pytest.raises(ValueError, match="episode shapes"):
        replay.add_episode(obs[:-1], actions, rewards)  # needs T + 1 observations
    with pytest.raises(ValueError, match="episode shapes"):
        replay.add_episode(obs, actions, rewards[:-1])
    with pytest.raises(ValueError, match="episode shapes"):
        replay.add_episode(obs[:1], actions[:0], rewards[:0])  # no step at all


def test_save_writes_each_episode_once_and_load_restores_the_first_n(tmp_path):
    replay = EpisodeReplay()
    replay.add_episode(*episode(6, start=0))
    replay.add_episode(*episode(7, start=100))
    replay.save(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["episode_0000000.npz", "episode_0000001.npz"]
    mtime = (tmp_path / files[0]).stat().st_mtime_ns
    replay.add_episode(*episode(8, start=200))
    replay.save(tmp_path)
    assert (tmp_path / files[0]).stat().st_mtime_ns == mtime  # episodes are immutable: not rewritten
    assert len(list(tmp_path.glob("*.npz"))) == 3

    back = EpisodeReplay()
    back.load(tmp_path, 2)  # a checkpoint taken after two episodes ignores the third
    assert len(back) == 2
    for ep, ref in zip(back.episodes, replay.episodes[:2]):
        for k in ("obs", "prev_actions", "rewards"):
            np.testing.assert_array_equal(ep[k], ref[k])
            assert ep[k].dtype == ref[k].dtype
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files
    with pytest.raises(FileNotFoundError, match="episode_0000003"):
        EpisodeReplay().load(tmp_path, 4)
