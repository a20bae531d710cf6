"""rl/lag_probe.py: the shifted read-out finds a belief that runs one step late; the CLI on a finished run."""
import json

import numpy as np
import pytest

from rl import lag_probe
from rl.train import main as train_main
from tests.test_train import argv


def test_shifted_pairs_features_at_t_plus_shift_with_state_at_t():
    x = np.arange(5.0)[:, None]
    s = 10 + np.arange(5.0)[:, None]
    for shift in (-1, 0, 1):
        xs, ys = lag_probe.shifted([(x, s)], shift)
        assert len(xs) == 5 - abs(shift)
        np.testing.assert_array_equal(xs[:, 0] - (ys[:, 0] - 10), shift)
    with pytest.raises(ValueError, match="longer than 1"):
        lag_probe.shifted([(x[:1], s[:1])], 1)


def test_a_belief_one_step_late_is_read_best_from_t_plus_1():
    """A random walk (a velocity-like signal); the 'belief' is the state one step earlier plus a little noise."""
    rng = np.random.default_rng(0)
    eps = []
    for _ in range(10):
        s = np.cumsum(rng.normal(size=(60, 2)), 0)
        late = np.vstack([np.zeros((1, 2)), s[:-1]]) + 0.01 * rng.normal(size=(60, 2))
        eps.append((late, s))
    r2 = {k: lag_probe.readout_r2(eps[:5], eps[5:], k) for k in (-1, 0, 1)}
    assert (r2[1] > 0.999).all()                       # f_{t+1} = s_t: read exactly
    assert (r2[0] < r2[1] - 1e-3).all() and (r2[-1] < r2[0]).all()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lag") / "run"
    assert train_main(argv("kalmamba", "noisy_state", out)) == 0
    return out


def test_cli_on_a_finished_run(run, tmp_path, capsys):
    out = tmp_path / "lag.json"
    assert lag_probe.main([str(run), "--episodes", "4", "--json", str(out)]) == 0
    (res,) = json.loads(out.read_text())
    assert res["state_names"][:2] == ["orientations[0]", "orientations[1]"] and len(res["state_names"]) == 24
    assert res["fit_steps"] == 2 * 10 and res["feature_dim"] == 8   # 2 of 4 episodes of 10 agent steps fit
    assert list(res["rows"]) == ["features t-1", "features t", "features t+1", "observation t"]
    assert all(len(v) == 24 for v in res["rows"].values())
    captured = capsys.readouterr()
    assert "features t+1" in captured.out and "R^2 means little" not in captured.err   # 20 steps for 8 features
    assert lag_probe.main([str(run), "--episodes", "1"]) == 2
    assert "got 1" in capsys.readouterr().err
    assert lag_probe.main([str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert "none" in err and len(err.splitlines()) == 1


def test_pixel_runs_are_refused_before_anything_is_built(tmp_path, capsys):
    for name in ("config.json", "checkpoint.pt", "DONE"):
        (tmp_path / name).write_text(json.dumps({"obs": "pixels"}))
    assert lag_probe.main([str(tmp_path)]) == 2
    assert "pixel run has no true state" in capsys.readouterr().err
