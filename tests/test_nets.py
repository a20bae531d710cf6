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
