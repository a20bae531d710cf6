"""RSSM baseline: interface shapes on pixels and states, online `observe` == batch `features`, causality and the
first-step alignment, the KL with free nats (plain and balanced) against torch.distributions, and learning."""
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from tests import world_model_checks
from tests.world_model_checks import loss_before_and_after_adam
from models.rssm import RSSM, RSSMConfig, kl_free_nats

SMALL = RSSMConfig(stoch_dim=6, deter_dim=10, hidden_dim=16, conv_depth=4, mlp_hidden_dim=16, reward_hidden_dim=16)
ACTION_DIM = 3


def make_batch(obs_shape, **kw):
    return world_model_checks.make_batch(obs_shape, ACTION_DIM, **kw)


@pytest.mark.parametrize("obs_shape", [(3, 64, 64), (7,)], ids=["pixels", "states"])
def test_shapes_finite_loss_and_gradients(obs_shape):
    torch.manual_seed(0)
    model = RSSM(obs_shape, ACTION_DIM, SMALL)
    obs, prev_actions, rewards = make_batch(obs_shape)
    loss, terms = model.loss(obs, prev_actions, rewards)
    assert loss.shape == () and torch.isfinite(loss)
    assert set(terms) == {"obs_nll", "reward_nll", "kl", "kl_loss", "loss_recon", "loss_reward", "loss_kl"}
    logged = {k: v for k, v in terms.items() if not k.startswith("loss_")}
    assert all(v.shape == () and torch.isfinite(v) and not v.requires_grad for v in logged.values())
    torch.testing.assert_close(loss, terms["loss_recon"] + terms["loss_reward"] + terms["loss_kl"])
    # default scales are 1: the loss is the sum of its terms
    torch.testing.assert_close(loss.detach(), terms["obs_nll"] + terms["reward_nll"] + terms["kl_loss"])
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.feature_dim == SMALL.stoch_dim + SMALL.deter_dim and model.critic_grad is False
    model.eval()
    assert model.features(obs, prev_actions).shape == (3, 5, model.feature_dim)


@pytest.mark.parametrize("obs_shape", [(3, 64, 64), (7,)], ids=["pixels", "states"])
def test_observe_stepped_equals_features(obs_shape):
    torch.manual_seed(0)
    model = RSSM(obs_shape, ACTION_DIM, SMALL).eval()
    obs, prev_actions, _ = make_batch(obs_shape)
    torch.manual_seed(1)
    feats = model.features(obs, prev_actions)
    torch.manual_seed(1)  # the posterior samples feeding the GRU are drawn in the same order
    state = model.initial_state(obs.shape[0])
    steps = []
    for t in range(obs.shape[1]):
        f, state = model.observe(state, obs[:, t], prev_actions[:, t])
        steps.append(f)
    torch.testing.assert_close(torch.stack(steps, dim=1), feats, rtol=1e-5, atol=1e-5)
    # the deterministic part of the features is the GRU state, the stochastic part the posterior mean
    torch.testing.assert_close(feats[:, -1, SMALL.stoch_dim:], state["h"], rtol=1e-5, atol=1e-5)


def test_features_are_causal_and_use_the_first_previous_action():
    torch.manual_seed(0)
    model = RSSM((7,), ACTION_DIM, SMALL).eval()
    obs, prev_actions, _ = make_batch((7,), T=6)
    torch.manual_seed(1)
    base = model.features(obs, prev_actions)
    obs2 = obs.clone()
    obs2[:, 3:] += 5.0
    torch.manual_seed(1)
    changed = model.features(obs2, prev_actions)
    torch.testing.assert_close(changed[:, :3], base[:, :3])
    assert (changed[:, 3:] - base[:, 3:]).abs().max() > 1e-3
    # CoRAL: the first prediction starts from the zero state with prev_actions[0]
    pa2 = prev_actions.clone()
    pa2[:, 0] = -pa2[:, 0]
    torch.manual_seed(1)
    assert (model.features(obs, pa2)[:, 0] - base[:, 0]).abs().max() > 1e-4


def _random_gaussians(shape, seed):
    g = torch.Generator().manual_seed(seed)
    mq, mp = torch.randn(*shape, generator=g, dtype=torch.float64), torch.randn(*shape, generator=g, dtype=torch.float64)
    sq = torch.rand(*shape, generator=g, dtype=torch.float64) + 0.1
    sp = torch.rand(*shape, generator=g, dtype=torch.float64) + 0.1
    return [x.requires_grad_() for x in (mq, sq, mp, sp)]


def test_kl_with_free_nats_matches_torch_distributions():
    mq, sq, mp, sp = _random_gaussians((4, 9, 5), seed=0)
    ref_kl = kl_divergence(Normal(mq, sq), Normal(mp, sp)).sum(-1)            # (4, 9)
    srt = ref_kl.detach().flatten().sort().values
    free_nats = float(srt[len(srt) // 2 - 1: len(srt) // 2 + 1].mean())      # half the entries clamped, no ties
    loss, kl = kl_free_nats(mq, sq, mp, sp, free_nats, balanced=False)
    torch.testing.assert_close(kl, ref_kl)
    ref_loss = torch.maximum(ref_kl, torch.full_like(ref_kl, free_nats)).mean()
    torch.testing.assert_close(loss, ref_loss)
    # gradients: the clamped entries contribute nothing
    grads = torch.autograd.grad(loss, (mq, sq, mp, sp))
    ref_grads = torch.autograd.grad(ref_loss, (mq, sq, mp, sp))
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg)
    below = ref_kl.detach() < free_nats
    assert below.any() and torch.all(grads[0][below] == 0)


def test_balanced_kl_values_and_gradient_routing():
    alpha, free_nats = 0.8, 0.5
    mq, sq, mp, sp = _random_gaussians((6, 4, 3), seed=1)
    loss, kl = kl_free_nats(mq, sq, mp, sp, free_nats, balanced=True, alpha=alpha)
    ref = kl_divergence(Normal(mq, sq), Normal(mp, sp)).sum(-1)
    ref_clamped = ref.clamp(min=free_nats).mean()
    # the value is that of the plain KL term (both sides have the same value) ...
    torch.testing.assert_close(loss, ref_clamped)
    torch.testing.assert_close(kl, ref)
    # ... but the prior gets α of its gradient and the posterior 1 − α (DreamerV2-style KL balancing)
    g_post = torch.autograd.grad(loss, (mq, sq), retain_graph=True)
    g_prior = torch.autograd.grad(loss, (mp, sp))
    r_post = torch.autograd.grad(ref_clamped, (mq, sq), retain_graph=True)
    r_prior = torch.autograd.grad(ref_clamped, (mp, sp))
    for g, r in zip(g_post, r_post):
        torch.testing.assert_close(g, (1 - alpha) * r)
    for g, r in zip(g_prior, r_prior):
        torch.testing.assert_close(g, alpha * r)
    with pytest.raises(ValueError, match="alpha"):
        kl_free_nats(mq, sq, mp, sp, free_nats, balanced=True, alpha=1.5)


@pytest.mark.parametrize("balanced", [False, True])
def test_loss_kl_term_is_the_free_nats_kl_of_the_filter_posterior_and_prior(balanced):
    """Inside `loss`: kl_loss = mean_{b,t} max(KL(q_t ‖ p_t), free_nats) of the filter's own posterior and prior,
    recomputed here with torch.distributions (same random draws: the seed is reset)."""
    cfg = RSSMConfig(**{**SMALL.__dict__, "free_nats": 0.3, "kl_balanced": balanced})
    torch.manual_seed(0)
    model = RSSM((7,), ACTION_DIM, cfg)
    obs, prev_actions, rewards = make_batch((7,), B=4, T=6)
    torch.manual_seed(3)
    _, terms = model.loss(obs, prev_actions, rewards)
    torch.manual_seed(3)
    with torch.no_grad():
        s = model._filter(model._embed(obs, dequantize=False)[1], prev_actions)
    kl = kl_divergence(Normal(s["post_mean"], s["post_std"]), Normal(s["prior_mean"], s["prior_std"])).sum(-1)
    assert kl.shape == (4, 6) and (kl < 0.3).any() and (kl > 0.3).any()   # both sides of the clamp
    torch.testing.assert_close(terms["kl"], kl.mean())
    torch.testing.assert_close(terms["kl_loss"], kl.clamp(min=0.3).mean())


def test_adam_steps_reduce_the_loss_on_a_fixed_batch():
    """(States only: on pixels the constant part of the Gaussian NLL, 0.5 log 2π per pixel, dwarfs any change.)"""
    obs_shape = (7,)
    torch.manual_seed(0)
    model = RSSM(obs_shape, ACTION_DIM, SMALL)
    obs, prev_actions, rewards = make_batch(obs_shape, B=4, T=6, learnable=True)
    before, after = loss_before_and_after_adam(model, (obs, prev_actions, rewards), SMALL)
    assert after < 0.5 * before, (before, after)  # ~42 -> ~9 (the floor is ~8.4: NLL constants + free nats)
