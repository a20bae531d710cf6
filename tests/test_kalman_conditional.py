"""The smoothed conditional q(z_t | z_{t-1}, w) and its KL to the dynamics (models/kalman.py), shared by KalMamba
and VRKN, against references that use no Kalman recursion: the exact joint posterior of z_{0..T-1} built densely
(tests/dense_lgssm.py), textbook Gaussian conditioning on it (pairwise and on the whole history), torch's
MultivariateNormal and torch.distributions' KL."""
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from models.kalman import COND_VAR_FLOOR, smoothed_conditional, smoothed_conditional_kl
from tests.dense_lgssm import (dense_conditional, dense_history_conditional, dense_posterior, kalman_quantities,
                               random_lgssm)


def random_problem(B, T, D, seed):
    A, b, var_dyn = random_lgssm(B, T, D, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    var_w = torch.rand(B, T, D, generator=g, dtype=torch.float64) + 0.1
    mu0, var0 = torch.randn(D, generator=g, dtype=torch.float64), torch.rand(D, generator=g, dtype=torch.float64) + 0.5
    return (w, var_w, A, b, var_dyn, mu0, var0), g


@pytest.mark.parametrize("seed", [3, 11])
def test_smoothed_conditional_and_kl_match_dense_joint_gaussian(seed):
    B, T, D = 2, 6, 3
    (w, var_w, A, b, var_dyn, mu0, var0), g = random_problem(B, T, D, seed)
    mu_f, var_f, mu_p, var_p, mu_s, var_s = kalman_quantities(w, var_w, A, b, var_dyn, mu0, var0)
    mean, cov = dense_posterior(w, var_w, A, b, var_dyn, mu0, var0)
    # the smoothed marginals themselves (sanity of the reference)
    torch.testing.assert_close(mu_s, mean.transpose(1, 2))
    torch.testing.assert_close(var_s, torch.diagonal(cov, dim1=-2, dim2=-1).transpose(1, 2))

    z = mu_s + var_s.sqrt() * torch.randn(B, T, D, generator=g, dtype=torch.float64)
    cm, cv = smoothed_conditional(var_f, var_p, mu_s, var_s, A, var_dyn, z)
    ref_cm, ref_cv = dense_conditional(mean, cov, z)
    assert cm.shape == cv.shape == (B, T - 1, D)
    torch.testing.assert_close(cm, ref_cm)
    torch.testing.assert_close(cv, ref_cv)

    kl = smoothed_conditional_kl(var_f, var_p, mu_s, var_s, A, b, var_dyn, z)
    prior = Normal(A[:, :-1] * z[:, :-1] + b[:, :-1], var_dyn[:, :-1].sqrt())
    ref_kl = kl_divergence(Normal(ref_cm, ref_cv.sqrt()), prior).sum(-1)
    assert kl.shape == (B, T - 1)
    torch.testing.assert_close(kl, ref_kl)


def test_conditional_on_z_prev_equals_conditioning_on_the_whole_history():
    """The posterior is Markov: conditioning the dense joint on all of z_{0..t-1} (Schur complement of the full
    covariance, no pairwise shortcut) gives the same Gaussian as the pairwise formula on z_{t-1}."""
    B, T, D = 2, 7, 2
    (w, var_w, A, b, var_dyn, mu0, var0), g = random_problem(B, T, D, seed=21)
    mu_f, var_f, mu_p, var_p, mu_s, var_s = kalman_quantities(w, var_w, A, b, var_dyn, mu0, var0)
    mean, cov = dense_posterior(w, var_w, A, b, var_dyn, mu0, var0)
    z = mu_s + 2 * var_s.sqrt() * torch.randn(B, T, D, generator=g, dtype=torch.float64)   # also far from the mean
    cm, cv = smoothed_conditional(var_f, var_p, mu_s, var_s, A, var_dyn, z)
    for t in range(1, T):
        ref_cm, ref_cv = dense_history_conditional(mean, cov, z, t)
        torch.testing.assert_close(cm[:, t - 1], ref_cm, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(cv[:, t - 1], ref_cv, rtol=1e-9, atol=1e-9)


def test_smoothed_conditional_is_the_joint_conditional_of_a_2d_gaussian():
    """Direct check of the pairwise formula with torch's multivariate normal: for one dimension and T = 2, the
    conditional of the smoothed joint (z_0, z_1) equals the conditional of the exact 2-D posterior Gaussian."""
    A, b, q = torch.tensor([[[0.7], [1.0]]]), torch.tensor([[[0.3], [0.0]]]), torch.tensor([[[0.2], [1.0]]])
    w, var_w = torch.tensor([[[0.5], [-1.0]]]), torch.tensor([[[0.4], [0.3]]])
    mu0, var0 = torch.tensor([0.1]), torch.tensor([1.5])
    A, b, q, w, var_w, mu0, var0 = (x.double() for x in (A, b, q, w, var_w, mu0, var0))
    _, var_f, _, var_p, mu_s, var_s = kalman_quantities(w, var_w, A, b, q, mu0, var0)
    # exact joint posterior of (z0, z1) from the information form
    prec = torch.tensor([[1 / var0.item() + A[0, 0, 0] ** 2 / q[0, 0, 0] + 1 / var_w[0, 0, 0], -A[0, 0, 0] / q[0, 0, 0]],
                         [-A[0, 0, 0] / q[0, 0, 0], 1 / q[0, 0, 0] + 1 / var_w[0, 1, 0]]], dtype=torch.float64)
    cov = torch.linalg.inv(prec)
    post = MultivariateNormal(torch.zeros(2, dtype=torch.float64), covariance_matrix=cov)
    z0 = torch.tensor(0.8, dtype=torch.float64)
    _, cv = smoothed_conditional(var_f, var_p, mu_s, var_s, A, q, torch.full_like(mu_s, z0.item()))
    ref_cv = post.covariance_matrix[1, 1] - post.covariance_matrix[0, 1] ** 2 / post.covariance_matrix[0, 0]
    torch.testing.assert_close(cv[0, 0, 0], ref_cv)
    # and the conditional variance equals 1 / (posterior precision of z1), as for any 2-D Gaussian
    torch.testing.assert_close(cv[0, 0, 0], 1 / prec[1, 1])


def test_kl_floors_the_conditional_variance_only_below_min_var():
    """min_var acts as max(var, min_var) on the conditional variance and nowhere else."""
    B, T, D = 1, 4, 3
    (w, var_w, A, b, var_dyn, mu0, var0), g = random_problem(B, T, D, seed=5)
    mu_f, var_f, mu_p, var_p, mu_s, var_s = kalman_quantities(w, var_w, A, b, var_dyn, mu0, var0)
    z = mu_s.clone()
    cm, cv = smoothed_conditional(var_f, var_p, mu_s, var_s, A, var_dyn, z)
    floor = cv.median().item()                      # floors some entries and leaves the others
    kl = smoothed_conditional_kl(var_f, var_p, mu_s, var_s, A, b, var_dyn, z, min_var=floor)
    prior = Normal(A[:, :-1] * z[:, :-1] + b[:, :-1], var_dyn[:, :-1].sqrt())
    ref = kl_divergence(Normal(cm, cv.clamp(min=floor).sqrt()), prior).sum(-1)
    torch.testing.assert_close(kl, ref)
    assert not torch.allclose(kl, smoothed_conditional_kl(var_f, var_p, mu_s, var_s, A, b, var_dyn, z))
    assert COND_VAR_FLOOR < cv.min()                # the default floor does not act on a well-conditioned problem
