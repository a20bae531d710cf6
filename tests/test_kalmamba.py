"""KalMamba world model: shapes, online == batch inference, the KL and Mahalanobis terms against independent
references (full-matrix Gaussian conditioning, torch.distributions), the ablation switches, MC dropout, learning."""
import dataclasses
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from models.kalmamba import KalMamba, KalMambaConfig

TINY = KalMambaConfig(latent_dim=6, d_model=8, n_layers=2, d_state=4, hidden_dim=16, mlp_hidden_dim=16,
                      mlp_layers=2, reward_hidden_dim=16, reward_layers=2, conv_depth=4)
OBS_DIM, ACT_DIM = 5, 2


def make(cfg=TINY, obs_shape=(OBS_DIM,), dtype=torch.float32, seed=0, **changes):
    torch.manual_seed(seed)
    return KalMamba(obs_shape, ACT_DIM, dataclasses.replace(cfg, **changes)).to(dtype)


def batch(B=3, T=7, obs_shape=(OBS_DIM,), dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    if len(obs_shape) == 3:
        obs = torch.randint(0, 256, (B, T, *obs_shape), dtype=torch.uint8, generator=g)
    else:
        obs = torch.randn(B, T, *obs_shape, generator=g, dtype=dtype)
    prev_actions = torch.rand(B, T, ACT_DIM, generator=g, dtype=dtype) * 2 - 1
    prev_actions[:, 0] = 0
    return obs, prev_actions, torch.randn(B, T, generator=g, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
# independent reference: the exact joint posterior of z_{0..T-1} per (batch, dimension) in information form
# ---------------------------------------------------------------------------------------------------------------

def joint_posterior(w, var_w, A, b, var_dyn, mu0, var0, upto=None):
    """Exact Gaussian posterior p(z_0..z_{T-1} | w_0..w_{upto}) of the chain z_0 ~ N(mu0, var0),
    z_{t+1} = A_t z_t + b_t + N(0, var_dyn_t), w_t = z_t + N(0, var_w_t), built as a (T, T) precision matrix and
    inverted. Returns mean (B, D, T) and covariance (B, D, T, T). All inputs (B, T, D) except mu0, var0 (D,)."""
    w, var_w, A, b, q = (x.permute(0, 2, 1) for x in (w, var_w, A, b, var_dyn))
    B, D, T = w.shape
    lam = torch.zeros(B, D, T, T, dtype=w.dtype)
    h = torch.zeros(B, D, T, dtype=w.dtype)
    lam[..., 0, 0] += 1 / var0
    h[..., 0] += mu0 / var0
    for t in range(T - 1):            # factor N(z_{t+1}; A_t z_t + b_t, q_t)
        a, c, v = A[..., t], b[..., t], q[..., t]
        lam[..., t, t] += a * a / v
        lam[..., t + 1, t + 1] += 1 / v
        lam[..., t, t + 1] -= a / v
        lam[..., t + 1, t] -= a / v
        h[..., t] -= a * c / v
        h[..., t + 1] += c / v
    observed = torch.arange(T) <= (T - 1 if upto is None else upto)
    prec_w = torch.where(observed, 1 / var_w, torch.zeros_like(var_w))
    lam = lam + torch.diag_embed(prec_w)
    h = h + w * prec_w
    cov = torch.linalg.inv(lam)
    return (cov @ h.unsqueeze(-1)).squeeze(-1), cov


def filtered_reference(f, model):
    """Filtered marginals p(z_t | w_{0..t}) from the reference joint, (B, T, D) each."""
    T = f["w"].shape[1]
    mus, vars_ = [], []
    for t in range(T):
        mean, cov = joint_posterior(f["w"], f["var_w"], f["A"], f["b"], f["var_dyn"], model.mu0, model.var0, upto=t)
        mus.append(mean[..., t])
        vars_.append(cov[..., t, t])
    return torch.stack(mus, 1), torch.stack(vars_, 1)


# ---------------------------------------------------------------------------------------------------------------
# shapes and interface
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("obs_shape", [(OBS_DIM,), (3, 64, 64)])
def test_shapes_and_finite_loss(obs_shape):
    model = make(obs_shape=obs_shape)
    obs, pa, r = batch(B=2, T=5, obs_shape=obs_shape)
    model.train()
    loss, terms = model.loss(obs, pa, r)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert set(terms) == {"recon", "reward", "kl", "init_kl", "kl_loss", "mahalanobis", "reg",
                          "loss_recon", "loss_reward", "loss_kl", "loss_reg"}
    logged = {k: v for k, v in terms.items() if not k.startswith("loss_")}
    assert all(v.dim() == 0 and torch.isfinite(v) and not v.requires_grad for v in logged.values())
    assert all(terms[k].dim() == 0 and terms[k].requires_grad for k in terms if k.startswith("loss_"))
    torch.testing.assert_close(loss, terms["loss_recon"] + terms["loss_reward"] + terms["loss_kl"] + terms["loss_reg"])
    assert model.reward_loss_scale == (10.0 if len(obs_shape) == 3 else 1.0)   # by observation type
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    assert model.feature_dim == TINY.latent_dim
    assert model.features(obs, pa).shape == (2, 5, TINY.latent_dim)
    feat, state = model.observe(model.initial_state(2), obs[:, 0], pa[:, 0])
    assert feat.shape == (2, TINY.latent_dim) and not state["first"].any()


def test_rejects_bad_shapes():
    model = make()
    obs, pa, r = batch()
    with pytest.raises(ValueError, match="obs"):
        model.loss(obs[..., :-1], pa, r)
    with pytest.raises(ValueError, match="prev_actions"):
        model.loss(obs, pa[..., :1], r)
    with pytest.raises(ValueError, match="rewards"):
        model.loss(obs, pa, r[:, :-1])
    with pytest.raises(ValueError, match="kalman_method"):
        KalMambaConfig(kalman_method="magic")


@pytest.mark.parametrize("changes,name", [
    (dict(latent_dim=0), "latent_dim"), (dict(d_model=2.5), "d_model"), (dict(n_layers=0), "n_layers"),
    (dict(nn_layers=-1), "nn_layers"), (dict(dropout=1.0), "dropout"), (dict(a_min=0.95), "a_min"),
    (dict(a_max=1.2, a_init=1.3), "a_min"), (dict(var_dyn_min=0.0), "var_dyn"), (dict(obs_var_min=2.0), "obs_var"),
    (dict(init_var=0.0), "init_var"), (dict(reg_alpha=-1.0), "reg_alpha"), (dict(free_nats=-0.5), "free_nats"),
    (dict(lr=0.0), "lr"), (dict(reward_loss_scale=-1.0), "reward_loss_scale"), (dict(mamba_backend="tpu"), "mamba_backend"),
])
def test_bad_config_values_raise_value_error_naming_them(changes, name):
    with pytest.raises(ValueError, match=name):
        dataclasses.replace(TINY, **changes)


# ---------------------------------------------------------------------------------------------------------------
# online inference == batch inference
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("use_mamba,features_with_m", [(True, False), (False, False), (True, True)])
def test_observe_equals_features_float64(use_mamba, features_with_m):
    model = make(dtype=torch.float64, use_mamba=use_mamba, features_with_m=features_with_m).eval()
    obs, pa, _ = batch(B=3, T=9, dtype=torch.float64)
    with torch.no_grad():
        feat = model.features(obs, pa)
        state, steps = model.initial_state(3), []
        for t in range(obs.shape[1]):
            mu, state = model.observe(state, obs[:, t], pa[:, t])
            steps.append(mu)
    torch.testing.assert_close(torch.stack(steps, 1), feat, rtol=1e-10, atol=1e-10)
    D = model.cfg.latent_dim
    assert feat.shape[-1] == model.feature_dim == (2 * D if features_with_m else D)
    if features_with_m:   # concat(μ⁺_t, m_t), each as the filter and the backbone compute them
        with torch.no_grad():
            f = model.infer(obs, pa, smooth=False)
        torch.testing.assert_close(feat, torch.cat([f["mu_f"], f["m"]], -1), rtol=0, atol=0)


def test_observe_equals_features_pixels_float32():
    shape = (3, 64, 64)
    model = make(obs_shape=shape).eval()
    obs, pa, _ = batch(B=2, T=4, obs_shape=shape)
    with torch.no_grad():
        feat = model.features(obs, pa)
        state, steps = model.initial_state(2), []
        for t in range(4):
            mu, state = model.observe(state, obs[:, t], pa[:, t])
            steps.append(mu)
    torch.testing.assert_close(torch.stack(steps, 1), feat, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# loss terms against independent computations
# ---------------------------------------------------------------------------------------------------------------

def test_kl_term_matches_full_matrix_gaussian_conditioning():
    model = make(dtype=torch.float64, init_kl_scale=0.5).eval()
    B, T, D = 3, 6, model.cfg.latent_dim
    obs, pa, r = batch(B=B, T=T, dtype=torch.float64)
    with torch.no_grad():
        f = model.infer(obs, pa)
        mean, cov = joint_posterior(f["w"], f["var_w"], f["A"], f["b"], f["var_dyn"], model.mu0, model.var0)
        var = cov.diagonal(dim1=-2, dim2=-1)                                   # (B, D, T)
        # the smoother's marginals are the joint's marginals
        torch.testing.assert_close(f["mu_s"], mean.permute(0, 2, 1), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(f["var_s"], var.permute(0, 2, 1), rtol=1e-9, atol=1e-9)
        # the sample the loss draws (eval mode, state observations: it is the only random draw)
        torch.manual_seed(123)
        eps = torch.randn(B, T, D, dtype=torch.float64).permute(0, 2, 1)
        z = mean + var.sqrt() * eps                                             # (B, D, T)
        # q(z_t | z_{t-1}, w) by conditioning the pairwise block of the joint
        c = cov.diagonal(offset=-1, dim1=-2, dim2=-1)                          # Cov(z_t, z_{t-1}), t = 1..T-1
        cond_mean = mean[..., 1:] + c / var[..., :-1] * (z[..., :-1] - mean[..., :-1])
        cond_var = var[..., 1:] - c ** 2 / var[..., :-1]
        A, b, q = (f[k].permute(0, 2, 1)[..., :-1] for k in ("A", "b", "var_dyn"))
        prior = Normal(A * z[..., :-1] + b, q.sqrt())
        kl = kl_divergence(Normal(cond_mean, cond_var.sqrt()), prior).sum(1)  # (B, T-1)
        init_kl = kl_divergence(Normal(mean[..., 0], var[..., 0].sqrt()),
                                Normal(model.mu0, model.var0.sqrt())).sum(-1)  # (B,)
    # free nats between the smallest and largest KL, so the clamp acts on some terms and not on others
    free_nats = kl.median().item()
    model.cfg.free_nats = free_nats
    torch.manual_seed(123)
    _, terms = model.loss(obs, pa, r)
    expected_loss = (0.5 * (init_kl - free_nats).clamp(min=0).mean() / T
                     + (T - 1) / T * (kl - free_nats).clamp(min=0).mean())
    torch.testing.assert_close(terms["kl"], kl.mean(), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(terms["init_kl"], init_kl.mean(), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(terms["kl_loss"], expected_loss, rtol=1e-8, atol=1e-10)


def test_mahalanobis_term_matches_direct_formula():
    model = make(dtype=torch.float64, reg_alpha=0.7, reg_reduction="sum").eval()
    obs, pa, r = batch(B=2, T=5, dtype=torch.float64)
    _, terms = model.loss(obs, pa, r)
    with torch.no_grad():
        f = model.infer(obs, pa, smooth=False)
        mu_f, var_f = filtered_reference(f, model)                   # (B, T, D) from the exact posterior
        torch.testing.assert_close(f["mu_f"], mu_f, rtol=1e-9, atol=1e-9)
        diff = (f["m"] - mu_f).unsqueeze(-1)                          # (B, T, D, 1)
        precision = torch.linalg.inv(torch.diag_embed(var_f))         # (Σ⁺)⁻¹ as a full matrix
        direct = (diff.transpose(-1, -2) @ precision @ diff).squeeze(-1).squeeze(-1).mean()
    torch.testing.assert_close(terms["mahalanobis"], direct, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(terms["reg"], 0.7 * direct, rtol=1e-8, atol=1e-10)


def test_reconstruction_and_reward_terms_match_torch_distributions():
    model = make(dtype=torch.float64, obs_std=0.5, reward_std=2.0, reward_loss_scale=10.0).eval()
    obs, pa, r = batch(B=2, T=4, dtype=torch.float64)
    torch.manual_seed(5)
    loss, terms = model.loss(obs, pa, r)
    with torch.no_grad():
        f = model.infer(obs, pa)
        torch.manual_seed(5)
        z = f["mu_s"] + f["var_s"].sqrt() * torch.randn_like(f["mu_s"])
        recon = -Normal(model.decoder(z), 0.5).log_prob(obs).sum(-1).mean()
        reward = -Normal(model.reward_head(z).squeeze(-1), 2.0).log_prob(r).mean()
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["reward"], reward)
    expected = recon + 10.0 * reward + terms["kl_loss"] + terms["reg"]
    torch.testing.assert_close(loss.detach(), expected)


def test_parallel_and_sequential_inference_give_the_same_loss():
    obs, pa, r = batch(B=2, T=8, dtype=torch.float64)
    losses = []
    for method in ("parallel", "sequential"):
        model = make(dtype=torch.float64, kalman_method=method).eval()
        torch.manual_seed(3)
        losses.append(model.loss(obs, pa, r)[0])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# ablations and MC dropout
# ---------------------------------------------------------------------------------------------------------------

def test_no_mamba_has_no_temporal_layers():
    model = make(use_mamba=False)
    assert model.mamba is None and not any("mamba" in n for n, _ in model.named_parameters())
    assert model.initial_state(2)["mamba"] is None
    obs, pa, _ = batch(B=2, T=8)
    k = 4                                      # perturb every input before step k
    obs2, pa2 = obs.clone(), pa.clone()
    obs2[:, :k] += 3.0
    pa2[:, :k] = -pa2[:, :k]
    model.eval()
    with torch.no_grad():
        f1, f2 = model.infer(obs, pa, smooth=False), model.infer(obs2, pa2, smooth=False)
    for key in ("m", "A", "b", "var_dyn"):
        torch.testing.assert_close(f1[key][:, k:], f2[key][:, k:], rtol=0, atol=0)
    assert not torch.allclose(f1["mu_f"][:, k:], f2["mu_f"][:, k:])   # the filter still carries the past
    with_mamba = make().eval()
    with torch.no_grad():
        g1, g2 = with_mamba.infer(obs, pa, smooth=False), with_mamba.infer(obs2, pa2, smooth=False)
    assert not torch.allclose(g1["m"][:, k:], g2["m"][:, k:])         # Mamba carries the past


@pytest.mark.parametrize("use_mamba", [True, False])
def test_mc_dropout_on_in_train_off_in_eval(use_mamba):
    model = make(use_mamba=use_mamba, dropout=0.3)
    obs, pa, _ = batch()
    model.train()
    a, b = model.infer(obs, pa, smooth=False), model.infer(obs, pa, smooth=False)
    assert not torch.equal(a["A"], b["A"]) and not torch.equal(a["m"], b["m"])
    model.eval()
    a, b = model.infer(obs, pa, smooth=False), model.infer(obs, pa, smooth=False)
    assert torch.equal(a["A"], b["A"]) and torch.equal(a["mu_f"], b["mu_f"])


def test_no_dropout_is_deterministic_in_train_mode():
    model = make(dropout=0.0).train()
    assert not any(isinstance(mod, torch.nn.Dropout) and mod.p > 0 for mod in model.modules())
    obs, pa, _ = batch()
    a, b = model.infer(obs, pa), model.infer(obs, pa)
    for key in ("m", "A", "b", "var_dyn", "mu_f", "mu_s"):
        assert torch.equal(a[key], b[key]), key


def test_no_reg_removes_the_regulariser_from_the_gradient():
    obs, pa, r = batch(B=2, T=6, dtype=torch.float64)

    def grads(model, extra=None):
        model.zero_grad()
        torch.manual_seed(11)
        loss, terms = model.loss(obs, pa, r)
        if extra is not None:
            loss = loss - extra(model)
        loss.backward()
        return loss.detach(), terms, {n: p.grad.clone() for n, p in model.named_parameters()}

    def reg_of(model):                        # α · Mahalanobis, recomputed with gradient
        f = model.infer(obs, pa, smooth=False)
        return model.cfg.reg_alpha * model.mahalanobis(f["m"], f["mu_f"], f["var_f"]).mean() / TINY.latent_dim

    with_reg = make(dtype=torch.float64, reg_alpha=1.0).eval()
    no_reg = make(dtype=torch.float64, reg_alpha=0.0).eval()
    loss0, terms0, g0 = grads(no_reg)
    loss1, terms1, g1 = grads(with_reg, extra=reg_of)               # loss − reg, gradients included
    assert terms0["reg"] == 0 and terms0["mahalanobis"] > 0
    torch.testing.assert_close(loss0, loss1, rtol=1e-10, atol=1e-10)
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], rtol=1e-8, atol=1e-10)
    _, _, g_full = grads(with_reg)
    assert any(not torch.allclose(g_full[n], g0[n]) for n in g0)    # and the regulariser does move gradients


def random_belief(B=3, T=4, D=5, seed=0):
    """Random leaf tensors m, μ⁺, Σ⁺ (B, T, D), float64, requiring grad."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    mu_f = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    var_f = torch.rand(B, T, D, generator=g, dtype=torch.float64) * 2 + 0.05
    return [x.requires_grad_() for x in (m, mu_f, var_f)]


@pytest.mark.parametrize("detach", [True, False])
def test_regulariser_gradient_into_the_filtered_belief_is_zero_with_the_stop_gradient(detach):
    model = make(reg_detach_belief=detach)
    m, mu_f, var_f = random_belief()
    _, reg = model.regulariser(m, mu_f, var_f)
    g_m, g_mu, g_var = torch.autograd.grad(reg, (m, mu_f, var_f), allow_unused=True)
    assert g_m is not None and g_m.abs().sum() > 0               # m is always pulled towards the filter
    for g in (g_mu, g_var):
        if detach:
            assert g is None or torch.all(g == 0)
        else:
            assert g is not None and g.abs().sum() > 0


@pytest.mark.parametrize("detach", [True, False])
def test_stop_gradient_inside_the_loss_keeps_the_regulariser_off_the_observation_variance_head(detach):
    """σ²_w enters only the filter (NN_pre sees w_t, not σ²_w): the loss's `loss_reg` reaches `var_w_head` only
    through μ⁺, Σ⁺, so its gradient there is zero with the stop-gradient and non-zero without."""
    model = make(dtype=torch.float64, reg_detach_belief=detach).eval()
    obs, pa, r = batch(B=2, T=5, dtype=torch.float64)
    _, terms = model.loss(obs, pa, r)
    g_var_head, g_backbone = torch.autograd.grad(terms["loss_reg"], (model.latent.var_w_head.weight, model.m_proj.weight),
                                                 allow_unused=True)
    assert g_backbone is not None and g_backbone.abs().sum() > 0
    if detach:
        assert g_var_head is None or torch.all(g_var_head == 0)
    else:
        assert g_var_head is not None and g_var_head.abs().sum() > 0


def test_regulariser_mean_is_sum_over_latent_dim_divided_by_D_in_value_and_gradient():
    m, mu_f, var_f = random_belief(D=7, seed=3)
    out = {}
    for reduction in ("sum", "mean"):
        model = make(reg_reduction=reduction, reg_alpha=0.6)
        quad, reg = model.regulariser(m, mu_f, var_f)
        out[reduction] = (quad, reg, torch.autograd.grad(reg, (m, mu_f, var_f)))
    torch.testing.assert_close(out["mean"][0], out["sum"][0], rtol=0, atol=0)   # the logged quadratic form
    torch.testing.assert_close(out["mean"][1], out["sum"][1] / 7, rtol=1e-12, atol=0)
    for g_mean, g_sum in zip(out["mean"][2], out["sum"][2]):
        torch.testing.assert_close(g_mean, g_sum / 7, rtol=1e-12, atol=0)
    # and through the whole model: loss_reg and its parameter gradients
    obs, pa, r = batch(B=2, T=5, dtype=torch.float64)
    grads = {}
    for reduction in ("sum", "mean"):
        model = make(dtype=torch.float64, reg_reduction=reduction).eval()
        _, terms = model.loss(obs, pa, r)
        grads[reduction] = (terms["loss_reg"], torch.autograd.grad(terms["loss_reg"], list(model.parameters()),
                                                                   allow_unused=True))
    torch.testing.assert_close(grads["mean"][0], grads["sum"][0] / TINY.latent_dim)
    for g_mean, g_sum in zip(grads["mean"][1], grads["sum"][1]):
        if g_sum is None:
            assert g_mean is None
        else:
            torch.testing.assert_close(g_mean, g_sum / TINY.latent_dim, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("seed", range(5))
def test_regulariser_never_pulls_the_filtered_variance_down(seed):
    """The variance-inflation channel (docs/paper-notes.md#stop-gradient): ∂R/∂Σ⁺ = −(m − μ⁺)² / Σ⁺² ≤ 0 elementwise, here
    against that formula for the summed form with α = 1 averaged over (b, t)."""
    m, mu_f, var_f = random_belief(B=4, T=6, D=5, seed=seed)
    _, reg = make(reg_reduction="sum", reg_alpha=1.0).regulariser(m, mu_f, var_f)
    (g_var,) = torch.autograd.grad(reg, var_f)
    expected = -((m - mu_f) ** 2 / var_f ** 2).detach() / (4 * 6)
    torch.testing.assert_close(g_var, expected, rtol=1e-12, atol=0)
    assert torch.all(g_var <= 0) and torch.any(g_var < 0)


def test_bad_regulariser_reduction_and_reward_scale_are_named():
    with pytest.raises(ValueError, match="reg_reduction.*'max'"):
        KalMambaConfig(reg_reduction="max")
    with pytest.raises(ValueError, match="reward_loss_scale"):
        KalMambaConfig(reward_loss_scale=-1.0)
    assert make(reward_loss_scale=3.0).reward_loss_scale == 3.0          # an explicit value wins over the obs type


@pytest.mark.parametrize("obs_shape", [(OBS_DIM,), (3, 64, 64)])
def test_diagnostics_against_their_definitions(obs_shape):
    model = make(obs_shape=obs_shape, free_nats=0.2).eval()
    obs, pa, r = batch(B=2, T=6, obs_shape=obs_shape)
    torch.manual_seed(4)
    d = model.diagnostics(obs, pa, r)
    assert set(d) == {"gain_mean", "gain_median", "obs_var_median", "kl_active"}
    with torch.no_grad():
        f = model.infer(obs, pa)
        torch.manual_seed(4)
        z = f["mu_s"] + f["var_s"].sqrt() * torch.randn_like(f["mu_s"])
        kl = model.dynamics_kl(f, z)
    gain = f["var_p"] / (f["var_p"] + f["var_w"])
    torch.testing.assert_close(d["gain_mean"], gain.mean())
    torch.testing.assert_close(d["gain_median"], gain.flatten().sort().values[(gain.numel() - 1) // 2])
    torch.testing.assert_close(d["obs_var_median"], f["var_w"].median())
    torch.testing.assert_close(d["kl_active"], (kl > 0.2).double().mean().to(d["kl_active"].dtype))
    assert 0 < d["gain_mean"] < 1


# ---------------------------------------------------------------------------------------------------------------
# learning
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("obs_shape", [(OBS_DIM,), (3, 64, 64)])
def test_adam_steps_reduce_the_loss_on_a_fixed_batch(obs_shape):
    model = make(obs_shape=obs_shape, dropout=0.0).train()
    obs, pa, r = batch(B=4, T=8, obs_shape=obs_shape)
    if len(obs_shape) == 3:   # one colour per image: learnable (i.i.d. pixel noise would be irreducible)
        obs = obs[..., :1, :1].expand(obs.shape).contiguous()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_at_fixed_noise():
        torch.manual_seed(0)
        return model.loss(obs, pa, r)[0]

    with torch.no_grad():
        start = loss_at_fixed_noise().item()
    for _ in range(30):
        loss = loss_at_fixed_noise()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), model.cfg.grad_clip)
        opt.step()
    with torch.no_grad():
        end = loss_at_fixed_noise().item()
    # the Gaussian NLLs (std 1) contain the constant 0.5 log 2π per observation entry and per reward (× 10):
    # compare what lies above it
    const = 0.5 * math.log(2 * math.pi) * (math.prod(obs_shape) + model.reward_loss_scale)
    assert math.isfinite(end) and end - const < 0.85 * (start - const), (start, end, const)


def test_ablation_methods_switch_exactly_one_field():
    from rl import methods

    base = dataclasses.asdict(methods.make_model_config("kalmamba"))
    expected = {"kalmamba_no_mamba": {"use_mamba": False}, "kalmamba_no_dropout": {"dropout": 0.0},
                "kalmamba_no_reg": {"reg_alpha": 0.0}}
    for method, change in expected.items():
        cfg = dataclasses.asdict(methods.make_model_config(method))
        assert {k: v for k, v in cfg.items() if base[k] != v} == change, method


@pytest.mark.parametrize("obs_shape", [(OBS_DIM,), (3, 64, 64)])
def test_agent_updates_and_acts_with_kalmamba_and_sac(obs_shape):
    """The WorldModel interface as rl/agent.py uses it: a few full updates (model + SAC on detached features),
    then acting with observe() in eval mode (MC dropout off: the same observations give the same actions)."""
    import numpy as np

    from models.sac import SAC, SACConfig
    from rl.agent import Agent

    model = make(obs_shape=obs_shape, dropout=0.2)
    agent = Agent(model, SAC(model.feature_dim, ACT_DIM, SACConfig(hidden_dim=16, n_layers=1)), "cpu")
    obs, pa, r = batch(B=3, T=6, obs_shape=obs_shape)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        logs = agent.update({"obs": obs, "prev_actions": pa, "rewards": r})
    assert all(math.isfinite(v) for v in logs.values())
    assert {"model_loss", "model_recon", "model_kl", "model_reg", "sac_critic_loss", "sac_actor_loss"} <= set(logs)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not model.training                                   # left in eval mode after computing SAC features

    def rollout():
        state, actions = agent.initial_state(), []
        for t in range(4):
            o = obs[0, t].numpy()
            action, state = agent.act(o, state, deterministic=True)
            actions.append(action)
        return np.stack(actions)

    first = rollout()
    assert first.shape == (4, ACT_DIM) and np.all(np.abs(first) <= 1)
    np.testing.assert_array_equal(first, rollout())
