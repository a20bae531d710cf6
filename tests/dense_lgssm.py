"""Dense reference for the diagonal linear-Gaussian SSM of models/kalman.py: random parameters, the exact posterior
p(z_{0..T-1} | w) from the joint Gaussian (no Kalman recursions), and its pairwise conditionals."""
import torch

from models.kalman import kalman_filter, kalman_smoother


def random_lgssm(B, T, D, seed, dtype=torch.float64):
    """Random transitions (A, b, var_dyn), each (B, T, D), with A in [0.1, 0.99] and var_dyn in [0.05, 1.05]."""
    g = torch.Generator().manual_seed(seed)
    A = 0.1 + 0.89 * torch.rand(B, T, D, generator=g, dtype=dtype)
    b = torch.randn(B, T, D, generator=g, dtype=dtype)
    var_dyn = 0.05 + torch.rand(B, T, D, generator=g, dtype=dtype)
    return A, b, var_dyn


# ------------------------------------------------------------------------------------------------------------------
# dense reference: the joint Gaussian of z_{0..T-1} and w_{0..T-1}, conditioned on w (per batch and dimension)
# ------------------------------------------------------------------------------------------------------------------

def dense_posterior(w, var_w, A, b, var_dyn, mu0, var0):
    """Exact p(z_{0..T-1} | w) of the diagonal LGSSM from its joint Gaussian. Inputs (B, T, D), mu0/var0 (D,).
    Returns mean (B, D, T) and covariance (B, D, T, T)."""
    B, T, D = w.shape
    m = torch.empty(B, D, T, dtype=w.dtype)
    K = torch.zeros(B, D, T, T, dtype=w.dtype)
    m[..., 0], K[..., 0, 0] = mu0, var0
    for t in range(1, T):
        a, bb, q = A[:, t - 1], b[:, t - 1], var_dyn[:, t - 1]          # (B, D), z_{t-1} -> z_t
        m[..., t] = a * m[..., t - 1] + bb
        K[..., t, t] = a * a * K[..., t - 1, t - 1] + q
        for s in range(t):                                              # Cov(z_s, z_t) = A_{t-1} Cov(z_s, z_{t-1})
            K[..., s, t] = K[..., t, s] = a * K[..., s, t - 1]
    S = K + torch.diag_embed(var_w.transpose(1, 2))
    gain = torch.linalg.solve(S, K).transpose(-1, -2)                  # K S^-1 (S, K symmetric)
    mean = m + (gain @ (w.transpose(1, 2) - m).unsqueeze(-1)).squeeze(-1)
    cov = K - gain @ K
    return mean, cov


def dense_conditional(mean, cov, z_prev):
    """q(z_t | z_{t-1}) of the pairwise marginal of (z_{t-1}, z_t), t = 1..T-1. z_prev (B, T, D) -> (B, T-1, D)."""
    var_t = torch.diagonal(cov, dim1=-2, dim2=-1)                      # (B, D, T)
    cross = torch.diagonal(cov, offset=1, dim1=-2, dim2=-1)            # Cov(z_{t-1}, z_t), (B, D, T-1)
    gain = cross / var_t[..., :-1]
    cm = mean[..., 1:] + gain * (z_prev.transpose(1, 2)[..., :-1] - mean[..., :-1])
    cv = var_t[..., 1:] - gain * cross
    return cm.transpose(1, 2), cv.transpose(1, 2)


def kalman_quantities(w, var_w, A, b, var_dyn, mu0, var0):
    """Filter and smoother outputs of the sequential reference: mu_f, var_f, mu_p, var_p, mu_s, var_s (B, T, D)."""
    mu_f, var_f, mu_p, var_p = kalman_filter(w, var_w, A, b, var_dyn, mu0, var0, method="sequential")
    mu_s, var_s = kalman_smoother(mu_f, var_f, mu_p, var_p, A, method="sequential")
    return mu_f, var_f, mu_p, var_p, mu_s, var_s




def dense_history_conditional(mean, cov, z, t):
    """q(z_t | z_{0..t-1} = z_{0..t-1}) of the full posterior by textbook Gaussian conditioning (Schur complement),
    without the Markov property. mean (B, D, T), cov (B, D, T, T), z (B, T, D). Returns (mean, var), each (B, D)."""
    past = z.transpose(1, 2)[..., :t]                                   # (B, D, t)
    S_pp = cov[..., :t, :t]
    S_tp = cov[..., t, :t]                                              # (B, D, t)
    gain = torch.linalg.solve(S_pp, S_tp.unsqueeze(-1)).squeeze(-1)    # S_pp^-1 S_pt (S_pp symmetric)
    cm = mean[..., t] + (gain * (past - mean[..., :t])).sum(-1)
    cv = cov[..., t, t] - (gain * S_tp).sum(-1)
    return cm, cv
