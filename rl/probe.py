"""Belief-quality probe: how much of the true simulator state a linear read-out recovers from what the agent acts on.

KalMamba's premise (the paper's abstract and Fig. 1) is that its filtered belief holds the state better than the
noisy observation does. This module measures that directly, at every evaluation of a `state` or `noisy_state` run:

1. On each evaluation episode, at every acting step t, record the agent's features f_t (what SAC's actor sees:
   the world model's filtered belief; for plain `sac`, the observation itself), the observation o_t the agent saw,
   and the true state s_t (the clean flattened DMC observation behind o_t, `rl.envs.DMCEnv.true_state`).
2. Split by episode: the first floor(n/2) episodes fit, the other ceil(n/2) test (steps of one episode are
   correlated, so they never straddle the split). Fewer than 2 episodes: no probe (NaN).
3. Fit ridge regression x -> s on the fit half (`fit_ridge`): inputs standardised with the fit half's mean and
   std (std floored at `STD_FLOOR`), targets centred with the fit half's mean (the intercept, not penalised),
   minimising (1/n) sum_i ||s_i - b - W x_i||^2 + alpha ||W||_F^2 with alpha = `RIDGE_ALPHA` = 0.01, in closed
   form: W = (X^T X + n alpha I)^{-1} X^T (S - mean S), float64.
4. Report R^2 on the test half (`r2_score`): per state dimension j, R^2_j = 1 - SSE_j / SST_j with SST_j about
   the test half's own mean of dimension j, then the plain average over the dimensions (scikit-learn's
   `uniform_average`, not the variance-weighted multi-output R^2, so a state entry with a large scale, e.g. a
   velocity, does not drown the positions). Dimensions constant on the test half (SST_j <= 1e-12 x n) have no
   R^2 and are left out of the average.

`features_r2` is the R^2 from f_t, `observation_r2` the same from o_t (the reference: what a linear read-out of the
raw observation recovers; 1 for `state` up to the ridge shrinkage). A model that filters the noise has
features_r2 > observation_r2 on `noisy_state`. Pixels are not probed (a linear read-out of 12,288 raw pixels says
little).

Rows end up in the run directory's `probe.csv` (`env_step, features_r2, observation_r2`; docs/architecture.md),
written by rl.rundir from the evaluation rows held in the checkpoint, so a restarted run rewrites it whole.
"""
from __future__ import annotations

import math

import numpy as np

RIDGE_ALPHA = 1e-2        # penalty per unit-variance input, relative to the mean squared error
STD_FLOOR = 1e-6          # inputs (nearly) constant on the fit half are centred, not blown up
PROBE_COLUMNS = ["env_step", "features_r2", "observation_r2"]
PROBED_OBS = ("state", "noisy_state")


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = RIDGE_ALPHA):
    """Ridge regression y ~ b + W standardise(x) in closed form (module docstring, step 3).

    x: (N, F) inputs, y: (N, S) targets, N >= 1; alpha >= 0 (alpha = 0 with collinear inputs: LinAlgError).
    Returns (x_mean (F,), x_std (F,), W (F, S), b (S,)), all float64; predict with `ridge_predict`."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 1:
        raise ValueError(f"fit_ridge: need x (N, F) and y (N, S) with the same N >= 1, got {x.shape} and {y.shape}")
    if not alpha >= 0:
        raise ValueError(f"fit_ridge: alpha must be >= 0, got {alpha}")
    x_mean, x_std = x.mean(0), np.maximum(x.std(0), STD_FLOOR)
    xs = (x - x_mean) / x_std
    b = y.mean(0)
    n, f = xs.shape
    w = np.linalg.solve(xs.T @ xs + n * alpha * np.eye(f), xs.T @ (y - b))
    return x_mean, x_std, w, b


def ridge_predict(model, x: np.ndarray) -> np.ndarray:
    """Predictions (N, S) of a `fit_ridge` model for inputs x (N, F)."""
    x_mean, x_std, w, b = model
    return ((np.asarray(x, np.float64) - x_mean) / x_std) @ w + b


def r2_scores(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """R^2 = 1 − SSE / SST per target dimension (S,); NaN for a dimension that does not vary. y_true, y_pred: (N, S)."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(f"r2_scores: need equal (N, S) shapes, got {y_true.shape} and {y_pred.shape}")
    sse = ((y_true - y_pred) ** 2).sum(0)
    sst = ((y_true - y_true.mean(0)) ** 2).sum(0)
    varies = sst > 1e-12 * len(y_true)
    return np.where(varies, 1.0 - sse / np.where(varies, sst, 1.0), np.nan)


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """R^2 per target dimension, averaged uniformly over the dimensions that vary (module docstring, step 4).
    y_true, y_pred: (N, S). NaN when no dimension varies."""
    scores = r2_scores(y_true, y_pred)
    return math.nan if np.isnan(scores).all() else float(np.nanmean(scores))


def probe_r2(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             alpha: float = RIDGE_ALPHA) -> float:
    """Test-half R^2 of a ridge read-out fitted on the fit half."""
    return r2_score(y_test, ridge_predict(fit_ridge(x_fit, y_fit, alpha), x_test))


class ProbeRecorder:
    """Collects (features, observation, true state) of the evaluation episodes of one evaluation.

    Use: `start_episode()` before each episode, `record(f_t, o_t, s_t)` at each acting step, `result()` once."""

    def __init__(self, alpha: float = RIDGE_ALPHA):
        self.alpha = alpha
        self.episodes: list[dict[str, list[np.ndarray]]] = []

    def start_episode(self) -> None:
        self.episodes.append({"features": [], "observation": [], "state": []})

    def record(self, features, observation, true_state) -> None:
        """features (F,), observation (O,), true_state (S,) of one acting step (arrays or tensors)."""
        if not self.episodes:
            raise RuntimeError("ProbeRecorder.record: call start_episode() first")
        ep = self.episodes[-1]
        for key, value in (("features", features), ("observation", observation), ("state", true_state)):
            ep[key].append(np.asarray(value, np.float64).reshape(-1))

    def result(self) -> dict[str, float]:
        """{'features_r2': ..., 'observation_r2': ...}: the test-half R^2 from each input; NaN with < 2 episodes."""
        episodes = [ep for ep in self.episodes if ep["state"]]
        if len(episodes) < 2:
            return {"features_r2": math.nan, "observation_r2": math.nan}
        half = len(episodes) // 2

        def stack(eps, key):
            return np.concatenate([np.stack(ep[key]) for ep in eps])

        fit, test = episodes[:half], episodes[half:]
        y_fit, y_test = stack(fit, "state"), stack(test, "state")
        return {f"{key}_r2": probe_r2(stack(fit, key), y_fit, stack(test, key), y_test, self.alpha)
                for key in ("features", "observation")}


def recorder_for(obs_type: str) -> ProbeRecorder | None:
    """A recorder for a run of this observation type, or None where the probe does not apply (pixels)."""
    return ProbeRecorder() if obs_type in PROBED_OBS else None
