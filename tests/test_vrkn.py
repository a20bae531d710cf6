"""VRKN baseline: interface shapes on pixels and states, `observe` == `features`, MC dropout on/off, the filter
with a fixed linear transition against `models.kalman.kalman_filter(..., "sequential")`, and the smoothed
conditional, its KL and the whole ELBO against a dense joint-Gaussian reference (no Kalman recursions)."""
import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from tests import world_model_checks
from tests.world_model_checks import loss_before_and_after_adam
from models.kalman import kalman_filter
from models.vrkn import VRKN, VRKNConfig, smoothed_conditional, smoothed_conditional_kl

SMALL = VRKNConfig(latent_dim=5, hidden_dim=16, conv_depth=4, mlp_hidden_dim=16, reward_hidden_dim=16)
ACTION_DIM = 3


def make_batch(obs_shape, **kw):
    return world_model_checks.make_batch(obs_shape, ACTION_DIM, **kw)


class FixedTransition(nn.Module):
    """Replaces the transition net: call k returns (A, b, var_dyn)[:, k] and records its inputs."""

    def __init__(self, A, b, var_dyn):
        super().__init__()
        self.A, self.b, self.var_dyn, self.calls = A, b, var_dyn, []

    def forward(self, mu, a):
        k = len(self.calls)
        self.calls.append((mu.detach().clone(), a.detach().clone()))
        return self.A[:, k], self.b[:, k], self.var_dyn[:, k]


def random_lgssm(B, T, D, seed, dtype=torch.float64):
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
    from models.kalman import kalman_smoother
    mu_f, var_f, mu_p, var_p = kalman_filter(w, var_w, A, b, var_dyn, mu0, var0, method="sequential")
    mu_s, var_s = kalman_smoother(mu_f, var_f, mu_p, var_p, A, method="sequential")
    return mu_f, var_f, mu_p, var_p, mu_s, var_s


# ------------------------------------------------------------------------------------------------------------------
# interface
# ------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("obs_shape", [(3, 64, 64), (7,)], ids=["pixels", "states"])
def test_shapes_finite_loss_and_gradients(obs_shape):
    torch.manual_seed(0)
    model = VRKN(obs_shape, ACTION_DIM, SMALL)
    obs, prev_actions, rewards = make_batch(obs_shape)
    loss, terms = model.loss(obs, prev_actions, rewards)
    assert loss.shape == () and torch.isfinite(loss)
    assert set(terms) == {"obs_nll", "reward_nll", "kl", "init_kl", "kl_loss", "loss_recon", "loss_reward", "loss_kl"}
    logged = {k: v for k, v in terms.items() if not k.startswith("loss_")}
    assert all(v.shape == () and torch.isfinite(v) and not v.requires_grad for v in logged.values())
    # reward weight by observation type: 10 on images (VRKN), 1 on states (CoRAL)
    scale = 10.0 if len(obs_shape) == 3 else 1.0
    assert model.reward_loss_scale == scale
    torch.testing.assert_close(loss.detach(), terms["obs_nll"] + scale * terms["reward_nll"] + terms["kl_loss"])
    # the weighted summands (with gradient) add up to the loss
    assert all(terms[k].requires_grad for k in ("loss_recon", "loss_reward", "loss_kl"))
    torch.testing.assert_close(loss, terms["loss_recon"] + terms["loss_reward"] + terms["loss_kl"])
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.feature_dim == SMALL.latent_dim and model.critic_grad is False
    model.eval()
    assert model.features(obs, prev_actions).shape == (3, 5, SMALL.latent_dim)


@pytest.mark.parametrize("obs_shape", [(3, 64, 64), (7,)], ids=["pixels", "states"])
def test_observe_stepped_equals_features(obs_shape):
    torch.manual_seed(0)
    model = VRKN(obs_shape, ACTION_DIM, SMALL).eval()
    obs, prev_actions, _ = make_batch(obs_shape)
    feats = model.features(obs, prev_actions)
    state = model.initial_state(obs.shape[0])
    steps = []
    for t in range(obs.shape[1]):
        f, state = model.observe(state, obs[:, t], prev_actions[:, t])
        steps.append(f)
    torch.testing.assert_close(torch.stack(steps, dim=1), feats, rtol=1e-5, atol=1e-6)


def test_features_are_causal_and_ignore_the_first_previous_action():
    torch.manual_seed(0)
    model = VRKN((7,), ACTION_DIM, SMALL).eval()
    obs, prev_actions, _ = make_batch((7,), T=6)
    base = model.features(obs, prev_actions)
    obs2 = obs.clone()
    obs2[:, 3:] += 5.0
    changed = model.features(obs2, prev_actions)
    torch.testing.assert_close(changed[:, :3], base[:, :3])
    assert (changed[:, 3:] - base[:, 3:]).abs().max() > 1e-3
    # no transition before the first observation (VRKN): prev_actions[:, 0] is unused; prev_actions[:, 1] is used
    pa2 = prev_actions.clone()
    pa2[:, 0] = -pa2[:, 0]
    torch.testing.assert_close(model.features(obs, pa2), base)
    pa2[:, 1] = -pa2[:, 1]
    assert (model.features(obs, pa2)[:, 1] - base[:, 1]).abs().max() > 1e-5


def test_mc_dropout_on_in_train_off_in_eval():
    torch.manual_seed(0)
    model = VRKN((7,), ACTION_DIM, SMALL)
    obs, prev_actions, _ = make_batch((7,))
    mu, a = torch.randn(4, SMALL.latent_dim), torch.rand(4, ACTION_DIM)
    model.train()
    A1, A2 = model.transition(mu, a)[0], model.transition(mu, a)[0]
    assert (A1 - A2).abs().max() > 1e-4
    assert (model.features(obs, prev_actions) - model.features(obs, prev_actions)).abs().max() > 1e-5
    model.eval()
    torch.testing.assert_close(model.transition(mu, a)[0], model.transition(mu, a)[0], rtol=0, atol=0)
    torch.testing.assert_close(model.features(obs, prev_actions), model.features(obs, prev_actions), rtol=0, atol=0)
    no_mcd = VRKN((7,), ACTION_DIM, VRKNConfig(**{**SMALL.__dict__, "dropout": 0.0})).train()
    torch.testing.assert_close(no_mcd.transition(mu, a)[0], no_mcd.transition(mu, a)[0], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------------
# inference against independent references
# ------------------------------------------------------------------------------------------------------------------

def test_filter_with_fixed_transition_equals_kalman_filter_sequential():
    B, T, D = 3, 7, SMALL.latent_dim
    model = VRKN((7,), ACTION_DIM, SMALL).double()
    with torch.no_grad():
        model.raw_var0.copy_(torch.randn(D, dtype=torch.float64))
    A, b, var_dyn = random_lgssm(B, T, D, seed=1)
    model.transition = FixedTransition(A[:, :-1], b[:, :-1], var_dyn[:, :-1])
    g = torch.Generator().manual_seed(2)
    w = torch.randn(B, T, D, generator=g, dtype=torch.float64) * 2
    var_w = torch.rand(B, T, D, generator=g, dtype=torch.float64) + 0.05
    prev_actions = torch.randn(B, T, ACTION_DIM, generator=g, dtype=torch.float64)
    out = model.filter(w, var_w, prev_actions)
    ref = kalman_filter(w, var_w, A, b, var_dyn, model.mu0, model.var0.detach(), method="sequential")
    for key, r in zip(("mu_f", "var_f", "mu_p", "var_p"), ref):
        torch.testing.assert_close(out[key], r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["A"][:, :-1], A[:, :-1], rtol=0, atol=0)
    # the transition at step t saw the filtered mean at t-1 and a_{t-1} = prev_actions[:, t]
    assert len(model.transition.calls) == T - 1
    for k, (mu_in, a_in) in enumerate(model.transition.calls):
        torch.testing.assert_close(mu_in, out["mu_f"][:, k], rtol=0, atol=0)
        torch.testing.assert_close(a_in, prev_actions[:, k + 1], rtol=0, atol=0)


def test_smoothed_conditional_and_kl_match_dense_joint_gaussian():
    B, T, D = 2, 6, 3
    A, b, var_dyn = random_lgssm(B, T, D, seed=3)
    g = torch.Generator().manual_seed(4)
    w = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    var_w = torch.rand(B, T, D, generator=g, dtype=torch.float64) + 0.1
    mu0, var0 = torch.randn(D, generator=g, dtype=torch.float64), torch.rand(D, generator=g, dtype=torch.float64) + 0.5
    mu_f, var_f, mu_p, var_p, mu_s, var_s = kalman_quantities(w, var_w, A, b, var_dyn, mu0, var0)
    mean, cov = dense_posterior(w, var_w, A, b, var_dyn, mu0, var0)
    # the smoothed marginals themselves (sanity of the reference)
    torch.testing.assert_close(mu_s, mean.transpose(1, 2))
    torch.testing.assert_close(var_s, torch.diagonal(cov, dim1=-2, dim2=-1).transpose(1, 2))

    z = mu_s + var_s.sqrt() * torch.randn(B, T, D, generator=g, dtype=torch.float64)
    cm, cv = smoothed_conditional(var_f, var_p, mu_s, var_s, A, var_dyn, z)
    ref_cm, ref_cv = dense_conditional(mean, cov, z)
    torch.testing.assert_close(cm, ref_cm)
    torch.testing.assert_close(cv, ref_cv)

    kl = smoothed_conditional_kl(var_f, var_p, mu_s, var_s, A, b, var_dyn, z)
    prior = Normal(A[:, :-1] * z[:, :-1] + b[:, :-1], var_dyn[:, :-1].sqrt())
    ref_kl = kl_divergence(Normal(ref_cm, ref_cv.sqrt()), prior).sum(-1)
    assert kl.shape == (B, T - 1)
    torch.testing.assert_close(kl, ref_kl)


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


def test_elbo_terms_match_dense_reference(monkeypatch):
    """With a fixed transition and ẑ = μˢ (noise patched to 0), the model's KL term, its free-nats weighting and the
    reconstruction terms equal the same quantities from the dense joint-Gaussian posterior."""
    B, T, D = 2, 6, SMALL.latent_dim
    cfg = VRKNConfig(**{**SMALL.__dict__, "free_nats": 0.7, "init_kl_scale": 0.5, "reward_loss_scale": 10.0})
    torch.manual_seed(0)
    model = VRKN((7,), ACTION_DIM, cfg).double().eval()
    A, b, var_dyn = random_lgssm(B, T, D, seed=5)
    model.transition = FixedTransition(A[:, :-1], b[:, :-1], var_dyn[:, :-1])
    obs, prev_actions, rewards = (x.double() for x in make_batch((7,), B=B, T=T, seed=6))
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)
    loss, terms = model.loss(obs, prev_actions, rewards)

    with torch.no_grad():
        _, w, var_w = model.latent_obs(obs, dequantize=False)
        mean, cov = dense_posterior(w, var_w, A, b, var_dyn, model.mu0, model.var0)
    z = mean.transpose(1, 2)                                             # ẑ = smoothed mean, (B, T, D)
    var_marg = torch.diagonal(cov, dim1=-2, dim2=-1).transpose(1, 2)
    cm, cv = dense_conditional(mean, cov, z)
    dyn_kl = kl_divergence(Normal(cm, cv.sqrt()), Normal(A[:, :-1] * z[:, :-1] + b[:, :-1], var_dyn[:, :-1].sqrt())).sum(-1)
    init_kl = kl_divergence(Normal(z[:, 0], var_marg[:, 0].sqrt()),
                            Normal(model.mu0, model.var0.detach().sqrt())).sum(-1)
    ref_kl_loss = (0.5 * (init_kl - 0.7).clamp(min=0).mean() / T
                   + (T - 1) / T * (dyn_kl - 0.7).clamp(min=0).mean())
    with torch.no_grad():
        ref_obs = -Normal(model.decoder(z), 1.0).log_prob(obs).sum(-1).mean()
        ref_rew = -Normal(model.reward_head(z).squeeze(-1), 1.0).log_prob(rewards).mean()
    assert (dyn_kl > 0.7).any() and (dyn_kl < 0.7).any()  # the free-nats clamp is exercised
    torch.testing.assert_close(terms["kl"], dyn_kl.mean())
    torch.testing.assert_close(terms["init_kl"], init_kl.mean())
    torch.testing.assert_close(terms["kl_loss"], ref_kl_loss)
    torch.testing.assert_close(terms["obs_nll"], ref_obs)
    torch.testing.assert_close(terms["reward_nll"], ref_rew)
    torch.testing.assert_close(loss.detach(), ref_obs + 10.0 * ref_rew + ref_kl_loss)
    assert math.isfinite(loss.item())


def test_adam_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = VRKN((7,), ACTION_DIM, SMALL)
    obs, prev_actions, rewards = make_batch((7,), B=4, T=6, learnable=True)
    before, after = loss_before_and_after_adam(model, (obs, prev_actions, rewards), SMALL)
    assert after < 0.5 * before, (before, after)
