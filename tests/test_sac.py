"""SAC: squashed-Gaussian log-prob vs torch.distributions, critic target vs the textbook formula, target EMA,
optimiser state in state_dict, gradient routing, and learning on a one-step bandit."""
import copy
import io
import math

import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from models.sac import SAC, SACConfig, SquashedGaussianActor, ema_update, tanh_log_det_jacobian

SMALL = SACConfig(hidden_dim=32, n_layers=2)


def test_squashed_gaussian_log_prob_matches_change_of_variables():
    torch.manual_seed(0)
    actor = SquashedGaussianActor(5, 3, SMALL).double()
    s = torch.randn(64, 5, dtype=torch.float64) * 3
    mu, std = actor.dist_params(s)
    u = mu + std * torch.randn_like(mu) * 2.0
    ref = TransformedDistribution(Normal(mu, std), [TanhTransform(cache_size=1)])
    a = ref.transforms[0](u)  # populate the cache so log_prob does not invert tanh
    expected = ref.log_prob(a).sum(-1)
    got = actor.log_prob_of_pre_tanh(u, mu, std)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    # also against the naive formula away from saturation
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)
    torch.testing.assert_close(tanh_log_det_jacobian(x), torch.log(1 - torch.tanh(x) ** 2))


def test_actor_mean_and_std_parameterisation():
    actor = SquashedGaussianActor(4, 2, SMALL)
    torch.nn.init.zeros_(actor.net[-1].weight)
    torch.nn.init.zeros_(actor.net[-1].bias)
    mu, std = actor.dist_params(torch.randn(7, 4))
    assert torch.all(mu == 0)
    torch.testing.assert_close(std, torch.full_like(std, math.exp(-4.0) + 0.005))
    actor.net[-1].bias.data[:2] = 100.0
    mu, _ = actor.dist_params(torch.randn(7, 4))
    assert torch.all(mu <= 5.0) and torch.all(mu > 4.9)  # 5 tanh(x/5)


def test_act_shapes_and_bounds():
    sac = SAC(6, 2, SMALL)
    s = torch.randn(10, 6) * 10
    for det in (True, False):
        a = sac.act(s, deterministic=det)
        assert a.shape == (10, 2) and a.abs().max() <= 1.0 and not a.requires_grad
    torch.testing.assert_close(sac.act(s, True), sac.act(s, True))


def test_critic_target_equals_direct_formula():
    torch.manual_seed(1)
    sac = SAC(4, 2, SMALL)
    with torch.no_grad():
        sac.log_alpha.fill_(math.log(0.37))
        for p in sac.critic_target.parameters():  # make target differ from online
            p.add_(0.1 * torch.randn_like(p))
    r, s_next = torch.randn(16), torch.randn(16, 4)
    torch.manual_seed(7)
    y = sac.critic_target_value(r, s_next)
    # direct: draw the same noise, compute a', log π(a') with torch.distributions, min of target heads
    torch.manual_seed(7)
    mu, std = sac.actor.dist_params(s_next)
    eps = torch.randn_like(mu)
    u = mu + std * eps
    dist = TransformedDistribution(Normal(mu, std), [TanhTransform(cache_size=1)])
    a_next = dist.transforms[0](u)
    logp = dist.log_prob(a_next).sum(-1)
    x = torch.cat([s_next, a_next], -1)
    qmin = torch.min(sac.critic_target.q1(x), sac.critic_target.q2(x)).squeeze(-1)
    expected = r + 0.99 * (qmin - 0.37 * logp)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_ema_update():
    torch.manual_seed(2)
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for p_t, p0, p in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(p_t, 0.9 * p0 + 0.1 * p)


def test_update_steps_every_part_and_routes_gradients():
    torch.manual_seed(3)
    encoder = torch.nn.Linear(8, 4)  # stands in for plain SAC's pixel encoder
    sac = SAC(4, 2, SMALL, extra_critic_params=encoder.parameters())
    snap = {k: v.clone() for k, v in sac.state_dict().items() if isinstance(v, torch.Tensor)}
    enc_before = encoder.weight.detach().clone()
    target_before = [p.clone() for p in sac.critic_target.parameters()]
    critic_before = [p.detach().clone() for p in sac.critic.parameters()]
    obs, obs_next = torch.randn(32, 8), torch.randn(32, 8)
    s, s_next = encoder(obs), encoder(obs_next)
    info = sac.update(s, torch.rand(32, 2) * 2 - 1, torch.randn(32), s_next)
    assert set(info) >= {"critic_loss", "actor_loss", "alpha_loss", "alpha", "entropy"}
    assert all(math.isfinite(v) for v in info.values())
    assert not torch.equal(encoder.weight, enc_before)          # critic loss reached the encoder
    for k in ("actor.net.0.weight", "critic.q1.0.weight", "critic.q2.0.weight", "log_alpha"):
        assert not torch.equal(sac.state_dict()[k], snap[k]), k
    for p_t, p0, p in zip(sac.critic_target.parameters(), target_before, sac.critic.parameters()):
        torch.testing.assert_close(p_t, 0.995 * p0 + 0.005 * p)   # EMA of the *updated* critic
    # the actor step must not move the critic: its change is exactly one Adam step of the critic loss
    assert all(not p.requires_grad for p in sac.critic_target.parameters())
    assert all(p.requires_grad for p in sac.critic.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, sac.critic.parameters()))


def test_actor_step_leaves_critic_grads_alone():
    torch.manual_seed(4)
    sac = SAC(4, 2, SMALL)
    sac.update(torch.randn(8, 4), torch.rand(8, 2) * 2 - 1, torch.randn(8), torch.randn(8, 4))
    # after an update the critic's grads are exactly those of the critic loss (the actor loss added nothing)
    torch.manual_seed(5)
    s, a, r, s2 = torch.randn(8, 4), torch.rand(8, 2) * 2 - 1, torch.randn(8), torch.randn(8, 4)
    ref = copy.deepcopy(sac)
    ref.critic.zero_grad(set_to_none=True)
    torch.manual_seed(6)
    sac.update(s, a, r, s2)
    torch.manual_seed(6)
    y = ref.critic_target_value(r, s2)
    q1, q2 = ref.critic(s, a)
    ((q1 - y).pow(2).mean() + (q2 - y).pow(2).mean()).backward()
    for p_sac, p_ref in zip(sac.critic.parameters(), ref.critic.parameters()):
        torch.testing.assert_close(p_sac.grad, p_ref.grad)


def test_optimizer_state_round_trips_through_state_dict():
    torch.manual_seed(8)
    sac = SAC(4, 2, SMALL)
    batch = (torch.randn(16, 4), torch.rand(16, 2) * 2 - 1, torch.randn(16), torch.randn(16, 4))
    sac.update(*batch)
    buf = io.BytesIO()
    torch.save(sac.state_dict(), buf)
    buf.seek(0)
    clone = SAC(4, 2, SMALL)
    state = torch.load(buf, weights_only=False)
    assert "_extra_state" in state
    clone.load_state_dict(state)
    assert clone.critic_opt.state_dict()["state"][0]["step"] == 1
    torch.manual_seed(9)
    out_a = sac.update(*batch)
    torch.manual_seed(9)
    out_b = clone.update(*batch)
    assert out_a == out_b
    for (k, v), (k2, v2) in zip(sac.state_dict().items(), clone.state_dict().items()):
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, v2), k


def test_learns_one_step_bandit():
    """Reward −(a − 0.5)², γ = 0 (one-step bandit): the deterministic action must approach 0.5."""
    torch.manual_seed(10)
    cfg = SACConfig(hidden_dim=64, n_layers=2, gamma=0.0, init_alpha=0.01, actor_lr=3e-3, critic_lr=3e-3)
    sac = SAC(2, 1, cfg)
    s = torch.randn(128, 2)
    start = sac.act(s, deterministic=True)
    for _ in range(150):
        a = torch.rand(128, 1) * 2 - 1
        r = -(a.squeeze(-1) - 0.5) ** 2
        sac.update(s, a, r, torch.randn(128, 2))
    end = sac.act(s, deterministic=True)
    assert (end - 0.5).abs().mean() < 0.1 < (start - 0.5).abs().mean()


@pytest.mark.parametrize("dim", [1, 6])
def test_default_target_entropy(dim):
    assert SAC(3, dim, SMALL).target_entropy == -dim


def test_tanh_log_det_jacobian_matches_autograd():
    """log |d tanh(u)/du| from autograd, and the asymptote 2 (log 2 − |u|) where float64 tanh' underflows."""
    u = torch.linspace(-8, 8, 161, dtype=torch.float64, requires_grad=True)
    (du,) = torch.autograd.grad(torch.tanh(u).sum(), u)
    torch.testing.assert_close(tanh_log_det_jacobian(u.detach()), torch.log(du), rtol=1e-9, atol=1e-9)
    big = torch.tensor([-400.0, -40.0, 40.0, 400.0], dtype=torch.float64)
    got = tanh_log_det_jacobian(big)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, 2 * (math.log(2) - big.abs()), rtol=1e-12, atol=1e-9)
    got32 = tanh_log_det_jacobian(torch.tensor([-60.0, 60.0]))   # float32: finite far beyond tanh's saturation
    assert torch.isfinite(got32).all()


def test_actor_and_temperature_losses_match_textbook():
    """SAC v2 (Haarnoja et al. 2018b): J_π = E[α log π(ã|s) − min_i Q_i(s, ã)] with the critic *after* this
    update's critic step, J(α) = α · (H − H̄) with H = −E log π; the temperature moves against H − H̄."""
    torch.manual_seed(12)
    sac = SAC(4, 2, SMALL)
    with torch.no_grad():
        sac.log_alpha.fill_(math.log(0.2))
    before = copy.deepcopy(sac)
    N = 64
    s, a, r, s2 = torch.randn(N, 4), torch.rand(N, 2) * 2 - 1, torch.randn(N), torch.randn(N, 4)
    torch.manual_seed(13)
    info = sac.update(s, a, r, s2)
    # the same noise: first a' for the target (N, A), then ã for the actor (N, A)
    torch.manual_seed(13)
    _ = torch.randn(N, 2)
    eps = torch.randn(N, 2)
    with torch.no_grad():
        mu, std = before.actor.dist_params(s)
        u = mu + std * eps
        dist = TransformedDistribution(Normal(mu, std), [TanhTransform(cache_size=1)])
        a_pi = dist.transforms[0](u)
        logp = dist.log_prob(a_pi).sum(-1)
        x = torch.cat([s, a_pi], -1)
        q_min = torch.min(sac.critic.q1(x), sac.critic.q2(x)).squeeze(-1)   # updated critic
        actor_loss = (0.2 * logp - q_min).mean()
        entropy = -logp.mean()
    assert info["actor_loss"] == pytest.approx(actor_loss.item(), rel=1e-5, abs=1e-5)
    assert info["entropy"] == pytest.approx(entropy.item(), rel=1e-5, abs=1e-5)
    assert info["alpha_loss"] == pytest.approx(0.2 * (entropy.item() - sac.target_entropy), rel=1e-5, abs=1e-6)
    # first Adam step on log α: −lr · sign(∂J/∂log α) = −lr · sign(α (H − H̄))
    step = sac.log_alpha.item() - math.log(0.2)
    expected = -SMALL.alpha_lr * math.copysign(1.0, entropy.item() - sac.target_entropy)
    assert step == pytest.approx(expected, rel=1e-3)


def test_actor_gradient_matches_textbook_loss():
    """The actor's parameter change is one Adam step of J_π above: compare gradients before the step."""
    torch.manual_seed(14)
    sac = SAC(3, 1, SMALL)
    N = 32
    s, a, r, s2 = torch.randn(N, 3), torch.rand(N, 1) * 2 - 1, torch.randn(N), torch.randn(N, 3)
    ref = copy.deepcopy(sac)
    captured = {}
    original_step = sac.actor_opt.step

    def capture_then_step(*args, **kwargs):
        captured.update({n: p.grad.clone() for n, p in sac.actor.named_parameters()})
        return original_step(*args, **kwargs)

    sac.actor_opt.step = capture_then_step
    torch.manual_seed(15)
    sac.update(s, a, r, s2)
    # reference: the critic after its step is sac.critic (the actor step does not touch it)
    torch.manual_seed(15)
    _ = torch.randn(N, 1)
    eps = torch.randn(N, 1)
    mu, std = ref.actor.dist_params(s)
    u = mu + std * eps
    logp = (Normal(mu, std).log_prob(u) - torch.log1p(-torch.tanh(u) ** 2)).sum(-1)
    x = torch.cat([s, torch.tanh(u)], -1)
    q_min = torch.min(sac.critic.q1(x), sac.critic.q2(x)).squeeze(-1)
    loss = (SMALL.init_alpha * logp - q_min).mean()
    grads = torch.autograd.grad(loss, list(ref.actor.parameters()))
    total = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    clip = min(1.0, SMALL.actor_grad_clip / (total.item() + 1e-6))
    for (name, _), g in zip(ref.actor.named_parameters(), grads):
        torch.testing.assert_close(captured[name], g * clip, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
