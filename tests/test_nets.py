"""Shared building blocks: shapes of the Dreamer conv nets, and the closed forms against torch.distributions."""
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from models import nets


def test_conv_encoder_decoder_shapes():
    enc, out = nets.make_encoder((3, 64, 64), hidden_dim=32)
    assert out == 1024
    x = torch.randint(0, 256, (2, 5, 3, 64, 64), dtype=torch.uint8)
    h = nets.over_time(enc, nets.obs_to_target(x, image=True, dequantize=True), event_dims=3)
    assert h.shape == (2, 5, 1024)
    dec = nets.make_decoder(7, (3, 64, 64), hidden_dim=32)
    assert nets.over_time(dec, torch.randn(2, 5, 7), 1).shape == (2, 5, 3, 64, 64)


def test_preprocess_image_range_and_bits():
    x = torch.arange(256, dtype=torch.uint8)
    y = nets.preprocess_image(x)
    assert y.min() == -0.5 and y.max() < 0.5
    assert len(torch.unique(y)) == 32  # 5 bits
    with pytest.raises(ValueError, match="obs"):
        nets.preprocess_image(x.float())


def test_gaussian_log_lik_matches_torch():
    x, m = torch.randn(4, 6), torch.randn(4, 6)
    ref = Normal(m, 2.0).log_prob(x).sum(-1)
    torch.testing.assert_close(nets.gaussian_log_lik(x, m, event_dims=1, std=2.0), ref)


def test_diag_kl_matches_torch():
    mq, mp = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    vq, vp = torch.rand(3, 5, dtype=torch.float64) + 0.1, torch.rand(3, 5, dtype=torch.float64) + 0.1
    ref = kl_divergence(Normal(mq, vq.sqrt()), Normal(mp, vp.sqrt())).sum(-1)
    torch.testing.assert_close(nets.diag_gaussian_kl(mq, vq, mp, vp), ref)


def test_constrained_heads_init_and_range():
    zero = torch.zeros(3)
    torch.testing.assert_close(nets.scaled_sigmoid(zero, 0.4, 0.99, 0.9), torch.full((3,), 0.9))
    big = nets.scaled_sigmoid(torch.tensor([-50.0, 50.0]), 0.4, 0.99, 0.9)
    assert 0.4 <= big.min() and big.max() <= 0.99
    torch.testing.assert_close(nets.softplus_positive(zero, 1.0, 0.01), torch.ones(3))
    assert nets.softplus_positive(torch.tensor([-100.0]), 1.0, 0.01).item() == pytest.approx(0.01)
    with pytest.raises(ValueError, match="init"):
        nets.scaled_sigmoid(zero, 0.4, 0.99, 1.5)
    assert math.isfinite(nets.LOG_2PI)


def test_latent_observation_against_its_formula():
    """w = Linear(e), σ²_w = softplus(Linear(e) + shift) + floor with σ²_w = init at a zero pre-activation, and the
    learned σ²_0 likewise; `target` is the float state vector (images: tested through the world models)."""
    torch.manual_seed(0)
    block = nets.LatentObservation((7,), 4, mlp_hidden_dim=16, conv_depth=4, mlp_layers=2, obs_var_init=1.0,
                                   obs_var_min=0.01, init_var=2.0, init_var_min=0.001)
    obs = torch.randn(3, 5, 7)
    target, w, var_w = block(obs, dequantize=False)
    e = block.encoder(obs.reshape(15, 7)).reshape(3, 5, -1)
    torch.testing.assert_close(target, obs)
    torch.testing.assert_close(w, e @ block.w_head.weight.T + block.w_head.bias)
    raw = e @ block.var_w_head.weight.T + block.var_w_head.bias
    torch.testing.assert_close(var_w, torch.log1p(torch.exp(raw + math.log(math.expm1(0.99)))) + 0.01)
    torch.testing.assert_close(block.var0, torch.full((4,), 2.0))
    assert torch.equal(block.mu0, torch.zeros(4))


@pytest.mark.parametrize("name", ["kalmamba", "vrkn"])
def test_world_models_load_checkpoints_written_before_the_shared_block(name):
    """Checkpoints from before `LatentObservation` hold its tensors as `encoder.*`, `w_head.*`, `var_w_head.*`, `mu0`,
    `raw_var0` on the world model; they load (strict) into `latent.*`, also nested inside an agent's state."""
    from models.kalmamba import KalMamba, KalMambaConfig
    from models.vrkn import VRKN, VRKNConfig
    make = {"kalmamba": lambda: KalMamba((5,), 2, KalMambaConfig(latent_dim=4, d_model=8, hidden_dim=8,
                                                                 mlp_hidden_dim=8, reward_hidden_dim=8)),
            "vrkn": lambda: VRKN((5,), 2, VRKNConfig(latent_dim=4, hidden_dim=8, mlp_hidden_dim=8,
                                                     reward_hidden_dim=8))}[name]
    torch.manual_seed(0)
    old = make()
    with torch.no_grad():
        old.latent.raw_var0.normal_()
    legacy = {k.removeprefix("latent."): v.clone() for k, v in old.state_dict().items()}
    assert {"encoder.0.0.weight", "w_head.weight", "var_w_head.bias", "mu0", "raw_var0"} <= set(legacy)
    torch.manual_seed(1)
    new = make()
    new.load_state_dict(legacy)
    for k, v in old.state_dict().items():
        assert torch.equal(new.state_dict()[k], v), k
    wrapper = torch.nn.ModuleDict({"world_model": make()})       # the keys nested one level down, as in rl/agent.py
    wrapper.load_state_dict({f"world_model.{k}": v for k, v in legacy.items()})
    assert torch.equal(wrapper["world_model"].latent.raw_var0, old.latent.raw_var0)
