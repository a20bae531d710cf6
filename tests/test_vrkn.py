"""VRKN baseline: interface shapes on pixels and states, `observe` == `features`, MC dropout on/off, the filter
with a fixed linear transition against `models.kalman.kalman_filter(..., "sequential")`, and the smoothed
conditional, its KL and the whole ELBO against a dense joint-Gaussian reference (no Kalman recursions)."""
import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from tests import world_model_checks
from tests.world_model_checks import loss_before_and_after_adam
from models.kalman import kalman_filter
from models.vrkn import VRKN, VRKNConfig
from tests.dense_lgssm import dense_conditional, dense_posterior, random_lgssm

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
        model.latent.raw_var0.copy_(torch.randn(D, dtype=torch.float64))
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
