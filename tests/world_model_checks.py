"""Shared by the world-model tests (RSSM, VRKN): a random batch and the 'a few Adam steps reduce the loss' check."""
import torch


def make_batch(obs_shape, action_dim, B=3, T=5, seed=0, learnable=False):
    """Random batch (obs, prev_actions, rewards); `learnable` gives observations and rewards with a large
    predictable part (pixels in [150, 200), states and rewards around a constant)."""
    g = torch.Generator().manual_seed(seed)
    if len(obs_shape) == 3:
        low, high = (150, 200) if learnable else (0, 256)
        obs = torch.randint(low, high, (B, T, *obs_shape), dtype=torch.uint8, generator=g)
    else:
        obs = torch.randn(B, T, *obs_shape, generator=g) * (0.1 if learnable else 1.0) + (3.0 if learnable else 0.0)
    prev_actions = torch.rand(B, T, action_dim, generator=g) * 2 - 1
    rewards = torch.randn(B, T, generator=g) * (0.1 if learnable else 1.0) + (2.0 if learnable else 0.0)
    return obs, prev_actions, rewards


def loss_before_and_after_adam(model, batch, cfg, steps=30, lr=3e-3):
    """The model's loss on `batch` (same sampling noise each time) before and after `steps` Adam steps with the
    config's eps and grad-norm clip."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=cfg.adam_eps)

    def loss_at_fixed_noise():
        torch.manual_seed(7)
        with torch.no_grad():
            return model.loss(*batch)[0].item()

    before = loss_at_fixed_noise()
    for _ in range(steps):
        loss, _ = model.loss(*batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    return before, loss_at_fixed_noise()
