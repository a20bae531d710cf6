"""rl/probe.py (the belief probe) against textbook formulas on synthetic data whose answer is known, and the
probe.csv a run writes."""
import math

import numpy as np
import pandas as pd
import pytest

from rl import probe
from rl.probe import PROBE_COLUMNS, ProbeRecorder, fit_ridge, probe_r2, r2_score, ridge_predict
from rl.train import main
from tests.test_train import argv


def test_r2_of_a_linear_signal_plus_noise_is_the_signal_share_of_the_variance():
    """y_j = x w_j + e_j with var(x w_j) = v_j and var(e_j) = s_j^2: the best linear read-out has population
    R^2_j = v_j / (v_j + s_j^2); the probe reports the plain average over j (textbook, no scikit-learn)."""
    rng = np.random.default_rng(0)
    n, f = 40_000, 6
    x = rng.normal(size=(2 * n, f)) * rng.uniform(0.5, 3.0, size=f) + rng.normal(size=f)
    w = rng.normal(size=(f, 3))
    signal = x @ w
    v = signal.var(0)
    noise_std = np.sqrt(v * np.array([0.25, 1.0, 4.0]))   # R^2 = 0.8, 0.5, 0.2
    y = signal + rng.normal(size=signal.shape) * noise_std + 5.0
    want = np.mean(v / (v + noise_std ** 2))
    got = probe_r2(x[:n], y[:n], x[n:], y[n:], alpha=1e-6)
    assert want == pytest.approx(0.5, abs=1e-2) and got == pytest.approx(want, abs=1e-2)


def test_noisy_observation_r2_is_the_textbook_signal_to_noise_ratio():
    """s ~ N(0, diag(v)), o = s + N(0, sigma^2 I): the linear read-out of s_j from o has R^2_j = v_j / (v_j + sigma^2)
    (independent dimensions), through the recorder's split by episodes."""
    rng = np.random.default_rng(1)
    v, sigma = np.array([0.09, 0.36, 1.0, 4.0]), 0.3
    rec = ProbeRecorder(alpha=1e-6)
    for _ in range(10):
        rec.start_episode()
        for _ in range(4000):
            s = rng.normal(size=4) * np.sqrt(v)
            o = s + rng.normal(size=4) * sigma
            rec.record(features=s + 1e-3 * rng.normal(size=4), observation=o, true_state=s)
    res = rec.result()
    assert res["observation_r2"] == pytest.approx(np.mean(v / (v + sigma ** 2)), abs=1e-2)
    assert res["features_r2"] == pytest.approx(1.0, abs=1e-3)


def test_ridge_equals_least_squares_on_the_augmented_system():
    """Closed form == np.linalg.lstsq of [X_std, 1; sqrt(n alpha) I, 0] [W; b] = [Y; 0] (the ridge objective
    written as plain least squares), with fit-half standardisation and an unpenalised intercept."""
    rng = np.random.default_rng(2)
    n, f, s, alpha = 50, 8, 3, 0.3
    x = rng.normal(size=(n, f)) * rng.uniform(0.1, 10, size=f) + rng.normal(size=f)
    x[:, 3] = x[:, 2] * 2 + 1          # collinear inputs: fine with alpha > 0
    y = rng.normal(size=(n, s))
    model = fit_ridge(x, y, alpha)
    xs = (x - x.mean(0)) / x.std(0)
    a = np.block([[xs, np.ones((n, 1))], [np.sqrt(n * alpha) * np.eye(f), np.zeros((f, 1))]])
    sol = np.linalg.lstsq(a, np.vstack([y, np.zeros((f, s))]), rcond=None)[0]
    np.testing.assert_allclose(model[2], sol[:f], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model[3], sol[f], rtol=1e-8, atol=1e-10)
    x_new = rng.normal(size=(7, f))
    np.testing.assert_allclose(ridge_predict(model, x_new), ((x_new - x.mean(0)) / x.std(0)) @ sol[:f] + sol[f],
                               rtol=1e-8, atol=1e-10)


def test_r2_score_per_dimension_average_and_edge_cases():
    rng = np.random.default_rng(3)
    y, p = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    textbook = np.mean([1 - np.sum((y[:, j] - p[:, j]) ** 2) / np.sum((y[:, j] - y[:, j].mean()) ** 2)
                        for j in range(4)])
    assert r2_score(y, p) == pytest.approx(textbook, rel=1e-12)
    assert r2_score(y, y) == 1.0
    assert r2_score(y, np.broadcast_to(y.mean(0), y.shape)) == pytest.approx(0.0, abs=1e-12)
    y_const = np.column_stack([y[:, :2], np.full(30, 2.5)])      # a constant dimension has no R^2: left out
    p_const = np.column_stack([p[:, :2], np.zeros(30)])
    assert r2_score(y_const, p_const) == pytest.approx(r2_score(y[:, :2], p[:, :2]), rel=1e-12)
    assert math.isnan(r2_score(np.ones((5, 2)), np.zeros((5, 2))))
    with pytest.raises(ValueError, match=r"\(30, 4\) and \(30, 3\)"):
        r2_score(y, p[:, :3])
    with pytest.raises(ValueError, match="alpha must be >= 0, got -1"):
        fit_ridge(y, y, alpha=-1)


def test_recorder_splits_by_episode_and_needs_two():
    rec = ProbeRecorder()
    with pytest.raises(RuntimeError, match="start_episode"):
        rec.record([1.0], [1.0], [1.0])
    rec.start_episode()
    for t in range(5):
        rec.record([t], [t], [t])
    assert all(math.isnan(v) for v in rec.result().values())   # one episode: nothing to test on
    rng = np.random.default_rng(4)
    rec = ProbeRecorder()
    eps = []
    for _ in range(5):   # fit on episodes 0, 1; test on 2, 3, 4
        rec.start_episode()
        ep = rng.normal(size=(6, 2)), rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
        for f, o, s in zip(*ep):
            rec.record(f, o, s)
        eps.append(ep)
    fit = [np.concatenate([e[k] for e in eps[:2]]) for k in range(3)]
    test = [np.concatenate([e[k] for e in eps[2:]]) for k in range(3)]
    assert rec.result() == {"features_r2": probe_r2(fit[0], fit[2], test[0], test[2]),
                            "observation_r2": probe_r2(fit[1], fit[2], test[1], test[2])}
    assert probe.recorder_for("pixels") is None and isinstance(probe.recorder_for("noisy_state"), ProbeRecorder)


CARTPOLE = dict(task="cartpole-swingup", episode_length=160, env_steps=320, eval_every=160, eval_episodes=4,
                initial_episodes=1, checkpoint_every=160, log_every=160, context_length=4)


@pytest.mark.parametrize("obs", ["state", "noisy_state"])
def test_a_run_writes_one_probe_row_per_evaluation(obs, tmp_path):
    """Plain SAC acts on the observation itself: its features R^2 is the observation's. On `state` the observation
    is the true state: a linear read-out recovers it up to the ridge shrinkage."""
    out = tmp_path / "run"
    assert main(argv("sac", obs, out, **CARTPOLE)) == 0
    pr = pd.read_csv(out / "probe.csv", float_precision="round_trip")
    ev = pd.read_csv(out / "eval.csv")
    assert list(pr.columns) == PROBE_COLUMNS and pr["env_step"].tolist() == ev["env_step"].tolist() == [160, 320]
    assert np.isfinite(pr[["features_r2", "observation_r2"]]).all().all()
    assert (pr["features_r2"] == pr["observation_r2"]).all()
    if obs == "state":
        assert (pr["observation_r2"] > 0.95).all()


def test_a_world_model_run_probes_its_features_and_pixels_are_not_probed(tmp_path):
    out = tmp_path / "run"
    assert main(argv("vrkn", "noisy_state", out, **CARTPOLE)) == 0
    pr = pd.read_csv(out / "probe.csv")
    assert len(pr) == 2 and np.isfinite(pr[["features_r2", "observation_r2"]]).all().all()
    assert (pr["features_r2"] != pr["observation_r2"]).all()
    pix = tmp_path / "pixels"
    assert main(argv("sac", "pixels", pix, **{**CARTPOLE, "eval_episodes": 2})) == 0
    assert (pix / "eval.csv").exists() and not (pix / "probe.csv").exists()
