"""Diagnostics (models/diagnostics.py, Agent.diagnose, train.csv `diag_*`): each number against its definition
computed independently (one backward per loss term, numpy statistics, the models' own KL), and the promise that
taking them changes nothing about training."""
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from tests import world_model_checks
from models.kalman import kalman_smoother, smoothed_conditional_kl
from models.diagnostics import feature_scale, gradient_norms, kalman_gain_stats, kl_active_fraction
from models.kalmamba import KalMamba, KalMambaConfig
from models.rssm import RSSM, RSSMConfig
from models.sac import SAC, SACConfig
from models.vrkn import VRKN, VRKNConfig
from rl.agent import Agent

OBS, ACT = 5, 2
MODELS = {
    "kalmamba": (KalMamba, KalMambaConfig(latent_dim=6, d_model=8, n_layers=1, d_state=4, hidden_dim=16,
                                          mlp_hidden_dim=16, mlp_layers=1, reward_hidden_dim=16, reward_layers=1,
                                          free_nats=0.5)),
    "vrkn": (VRKN, VRKNConfig(latent_dim=6, hidden_dim=16, mlp_hidden_dim=16, mlp_layers=1, reward_hidden_dim=16,
                              reward_layers=1, free_nats=0.5)),
    "rssm": (RSSM, RSSMConfig(stoch_dim=4, deter_dim=8, hidden_dim=16, n_layers=1, mlp_hidden_dim=16, mlp_layers=1,
                              reward_hidden_dim=16, reward_layers=1, free_nats=0.5)),
}
PARTS = {"kalmamba": {"recon", "reward", "kl", "reg"}, "vrkn": {"recon", "reward", "kl"},
         "rssm": {"recon", "reward", "kl"}}


def batch(B=3, T=6, seed=0):
    obs, prev_actions, rewards = world_model_checks.make_batch((OBS,), ACT, B=B, T=T, seed=seed)
    return {"obs": obs, "prev_actions": prev_actions, "rewards": rewards}


def test_gradient_norms_equal_one_backward_per_term():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(10, 4)
    y = net(x)
    parts = {"a": y[:, 0].pow(2).mean(), "b": 3 * y[:, 1:].sum(), "const": torch.tensor(2.0)}
    got = gradient_norms(parts, net.parameters())
    assert all(p.grad is None for p in net.parameters())                 # .grad left alone
    terms = {"a": lambda out: out[:, 0].pow(2).mean(), "b": lambda out: 3 * out[:, 1:].sum()}
    for name, term in terms.items():
        net.zero_grad()
        term(net(x)).backward()
        ref = torch.cat([p.grad.flatten() for p in net.parameters()]).norm()
        torch.testing.assert_close(got[name], ref)
    assert got["const"] == 0


def test_feature_scale_and_gain_statistics_against_numpy():
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(4, 7, 3, generator=g) * torch.tensor([0.1, 1.0, 5.0]) + 2.0
    got = feature_scale(feat)
    flat = feat.reshape(-1, 3).numpy().astype(np.float64)
    np.testing.assert_allclose(got["feat_abs_mean"].item(), np.abs(flat).mean(), rtol=1e-6)
    np.testing.assert_allclose(got["feat_std"].item(), flat.std(0, ddof=1).mean(), rtol=1e-6)
    var_p, var_w = torch.rand(2, 5, 3, generator=g) + 0.1, torch.rand(2, 5, 3, generator=g) * 3 + 0.01
    stats = kalman_gain_stats(var_p, var_w)
    gain = (var_p / (var_p + var_w)).numpy()
    np.testing.assert_allclose(stats["gain_mean"].item(), gain.mean(), rtol=1e-6)
    assert stats["gain_median"].item() in gain                            # torch's median: an element (the lower)
    assert np.sum(gain < stats["gain_median"].item()) == (gain.size - 1) // 2
    np.testing.assert_allclose(stats["obs_var_median"].item(), np.sort(var_w.numpy().ravel())[(var_w.numel() - 1) // 2])
    kl = torch.tensor([[0.2, 1.5, 3.0], [0.9, 1.0, 1.1]])
    assert kl_active_fraction(kl, 1.0)["kl_active"].item() == pytest.approx(3 / 6)   # strictly above


def test_rssm_kl_active_is_the_fraction_of_its_kl_above_free_nats():
    model_cls, cfg = MODELS["rssm"]
    torch.manual_seed(0)
    model = model_cls((OBS,), ACT, cfg).eval()
    b = batch()
    torch.manual_seed(3)
    got = model.diagnostics(b["obs"], b["prev_actions"], b["rewards"])
    torch.manual_seed(3)
    with torch.no_grad():
        _, embed = model._embed(b["obs"], dequantize=False)
        s = model._filter(embed, b["prev_actions"])
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(s["post_mean"], s["post_std"]),
                                           torch.distributions.Normal(s["prior_mean"], s["prior_std"])).sum(-1)
    assert (kl > 0.5).any() and (kl < 0.5).any()
    torch.testing.assert_close(got["kl_active"], (kl > 0.5).float().mean())


def test_vrkn_diagnostics_match_its_filter_and_kl():
    model_cls, cfg = MODELS["vrkn"]
    torch.manual_seed(0)
    model = model_cls((OBS,), ACT, dataclasses.replace(cfg, free_nats=0.03)).eval()   # KLs of an untrained VRKN
    b = batch()
    torch.manual_seed(3)
    got = model.diagnostics(b["obs"], b["prev_actions"], b["rewards"])
    torch.manual_seed(3)
    with torch.no_grad():
        _, w, var_w = model.latent_obs(b["obs"], dequantize=False)
        f = model.filter(w, var_w, b["prev_actions"])
        mu_s, var_s = kalman_smoother(f["mu_f"], f["var_f"], f["mu_p"], f["var_p"], f["A"], method="sequential")
        z_s = mu_s + var_s.sqrt() * torch.randn_like(mu_s)
        kl = smoothed_conditional_kl(f["var_f"], f["var_p"], mu_s, var_s, f["A"], f["b"], f["var_dyn"], z_s)
    torch.testing.assert_close(got["gain_mean"], (f["var_p"] / (f["var_p"] + var_w)).mean())
    torch.testing.assert_close(got["obs_var_median"], var_w.median())
    assert (kl > 0.03).any() and (kl < 0.03).any()
    torch.testing.assert_close(got["kl_active"], (kl > 0.03).float().mean())


@pytest.mark.parametrize("name", list(MODELS))
def test_agent_diagnose_reports_every_term_and_changes_nothing(name):
    model_cls, cfg = MODELS[name]
    torch.manual_seed(0)
    model = model_cls((OBS,), ACT, cfg)
    agent = Agent(model, SAC(model.feature_dim, ACT, SACConfig(hidden_dim=16, n_layers=1)), "cpu")
    agent.update(batch(seed=1))                                     # optimiser state exists
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    opt_state = str(agent.model_opt.state_dict())
    b = batch(seed=2)
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    d = agent.diagnose(b)
    assert torch.equal(torch.get_rng_state(), rng)                       # the torch RNG was forked

    expected = ({f"diag_grad_{p}" for p in PARTS[name]} | {"diag_grad_total", "diag_kl_active", "diag_feat_abs_mean",
                                                            "diag_feat_std"})
    if name != "rssm":
        expected |= {"diag_gain_mean", "diag_gain_median", "diag_obs_var_median"}
    assert set(d) == expected and all(np.isfinite(v) for v in d.values())
    # the total's norm is the pre-clip norm of one ordinary backward with the same dropout masks and samples
    model.train()
    torch.manual_seed(5)
    loss, _ = model.loss(b["obs"].clone(), b["prev_actions"], b["rewards"])
    ref = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
                     if g is not None]).norm()
    assert d["diag_grad_total"] == pytest.approx(ref.item(), rel=1e-5)
    assert d["diag_grad_total"] <= sum(d[f"diag_grad_{p}"] for p in PARTS[name]) * (1 + 1e-6)   # triangle inequality
    # features as SAC sees them (eval mode), after the same RNG draws as inside diagnose (RSSM's filter samples)
    with torch.no_grad():
        model.diagnostics(b["obs"], b["prev_actions"], b["rewards"])
        model.eval()
        feat = model.features(b["obs"], b["prev_actions"])
    assert d["diag_feat_std"] == pytest.approx(feat.reshape(-1, feat.shape[-1]).std(0).mean().item(), rel=1e-5)
    # nothing changed
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    assert all((p.grad is None and grads[n] is None) or torch.equal(p.grad, grads[n])
               for n, p in model.named_parameters())
    assert str(agent.model_opt.state_dict()) == opt_state


def test_switched_off_regulariser_has_zero_gradient_norm():
    model_cls, cfg = MODELS["kalmamba"]
    torch.manual_seed(0)
    model = model_cls((OBS,), ACT, dataclasses.replace(cfg, reg_alpha=0.0))
    agent = Agent(model, SAC(model.feature_dim, ACT, SACConfig(hidden_dim=16, n_layers=1)), "cpu")
    d = agent.diagnose(batch())
    assert d["diag_grad_reg"] == 0 and d["diag_grad_recon"] > 0
