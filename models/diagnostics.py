"""Scalar diagnostics of a world-model update, shared by the models and the agent (train.csv `diag_*` columns,
docs/architecture.md). They say *why* a model learns or not: which loss term drives the gradient, whether the KL
is active, how much the Kalman update trusts the observation, and what scale of features SAC sees.

Every function returns a dict of 0-dim tensors (no host sync here: the caller stacks them and copies once).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def gradient_norms(parts: dict[str, Tensor], params: Iterable[Tensor]) -> dict[str, Tensor]:
    """Global L2 norm of d(part)/d(params) for each named scalar `part` (the pre-clip norm that
    `clip_grad_norm_` would see if that part were the whole loss). A part that does not depend on the
    parameters (e.g. a switched-off term, a constant) has norm 0. Uses `torch.autograd.grad` with
    `retain_graph=True`: the parameters' `.grad` and the graph are left as they are."""
    params = [p for p in params if p.requires_grad]
    out = {}
    for name, part in parts.items():
        if not part.requires_grad or not params:
            out[name] = torch.zeros((), device=part.device)
            continue
        grads = torch.autograd.grad(part, params, retain_graph=True, allow_unused=True)
        norms = [g.detach().float().norm() for g in grads if g is not None]
        out[name] = torch.stack(norms).norm() if norms else torch.zeros((), device=part.device)
    return out


def kl_active_fraction(kl: Tensor, free_nats: float) -> dict[str, Tensor]:
    """kl (...): per-(b, t) KL values -> `kl_active`: the fraction above `free_nats`, i.e. where the KL term
    of the loss has a gradient (max(0, KL − fn) and clamp(KL, min=fn) are flat below fn)."""
    return {"kl_active": (kl.detach() > free_nats).float().mean()}


def kalman_gain_stats(var_p: Tensor, var_w: Tensor) -> dict[str, Tensor]:
    """Diagonal Kalman gain K = Σ⁻ / (Σ⁻ + σ²_w) (H = I) of the update at every (b, t, d).

    var_p, var_w (B, T, D): predicted variance Σ⁻_t and latent-observation variance σ²_w,t.
    Returns `gain_mean`, `gain_median` (K ∈ (0, 1): 1 = the belief follows the observation, 0 = the prediction)
    and `obs_var_median` (median σ²_w; it starts at the model's `obs_var_init`)."""
    gain = (var_p / (var_p + var_w)).detach()
    return {"gain_mean": gain.mean(), "gain_median": gain.median(), "obs_var_median": var_w.detach().median()}


def feature_scale(feat: Tensor) -> dict[str, Tensor]:
    """feat (B, T, F): the features SAC sees -> `feat_abs_mean` (mean |feature|) and `feat_std` (the std over
    (b, t) of each feature dimension, averaged over the F dimensions)."""
    flat = feat.detach().float().reshape(-1, feat.shape[-1])
    std = flat.std(0) if flat.shape[0] > 1 else torch.zeros_like(flat[0])
    return {"feat_abs_mean": flat.abs().mean(), "feat_std": std.mean()}
