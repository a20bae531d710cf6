"""Diagonal Kalman filter and RTS smoother (H = I): a reference loop, a fused loop with analytic backward, and the
parallel associative scan.

Model (paper Eq. 1 with H = I; all covariances diagonal, every product element-wise; docs/paper-notes.md#model):
    z_0 ~ N(mu0, var0)
    z_{t+1} | z_t ~ N(A_t z_t + b_t, var_dyn_t)         (A, b, var_dyn at index t map z_t to z_{t+1})
    w_t | z_t ~ N(z_t, var_w_t)                          (auxiliary observation, H = I)
Shapes: B batch, T time, D latent dimensions. Sequences are (B, T, D).

Outputs of the filter at every t: the one-step prediction N(mu_p_t, var_p_t) (before w_t; at t = 0 the prior) and the
filtered belief N(mu_f_t, var_f_t) (after w_t). The smoother gives N(mu_s_t, var_s_t) = p(z_t | w_{0..T-1}).

Methods (the `method` argument of `kalman_filter` and `kalman_smoother`):
- "sequential": the readable reference loop (docs/paper-notes.md#inference) built from the public single-step functions
  `kalman_predict`, `kalman_update`, `rts_step`; autograd differentiates it.
- "fused": the same recursion as one loop over (B, D) slices per direction, each step a few fused element-wise ops
  written straight into the outputs, with the analytic backward (the adjoint recursions below) as a
  `torch.autograd.Function`. Neither direction builds an autograd graph per step. No double backward.
- "numba": the fused recursion and its adjoint compiled with numba (models/cpu_kernels.py; CPU, float32/float64,
  no double backward); `kalman_filter_smoother` runs filter and smoother as one autograd Function.
- "parallel": Särkkä & García-Fernández (2021, arXiv:1905.13002) specialised to diagonals: one forward associative
  scan for the filter, one reverse scan for the smoother: depth O(log T), ~3x the element-wise work of a loop.
- "auto" (the default, and what every caller in kalbench uses) picks by device and size (`resolve_method`):
  "parallel" on CUDA, where a loop of T small kernels is latency-bound and the scan's depth wins; on the CPU
  "numba" when numba is importable (one compiled loop has no per-op overhead); without numba "parallel" only for
  few elements per step and long sequences (B*D <= 1024 and T >= 512), where the loop's per-op overhead
  dominates, and "fused" otherwise: with thousands of elements per step each loop op already does
  real work and the scan's extra element-wise work costs more than its depth saves. benchmarks/kalman_scan.py
  measures all of them side by side with a plain autograd loop (README, "Benchmarks").

Missing observations: `mask[b, t] = False` skips the update at t (var_w_t = inf, i.e. K_t = 0). w and var_w at such
positions are never used in arithmetic, so they may hold anything (even NaN) without affecting values or gradients.

Numerics: the forms below avoid cancellation, so variances stay positive in float32:
    1 - K = var_w / S,   var_f = var_p * var_w / S  (= Joseph form),   S = var_p + var_w
    smoother: var_s = var_f * max(1 - J A, 0) + J² var_s_next  (= var_f + J² (var_s_next - var_p_next))

The smoothing ELBO's KL term, shared by KalMamba and VRKN, is here too: `smoothed_conditional` gives
q(z_t | z_{t-1}, w) from the smoother's outputs, `smoothed_conditional_kl` its KL to the dynamics
(docs/paper-notes.md#smoothing-elbo).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from models.nets import diag_gaussian_kl
from models import cpu_kernels
from models.scan import associative_scan

METHODS = ("auto", "fused", "numba", "parallel", "sequential")


# ----------------------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------------------

def _check_tensor(name: str, x, shape: tuple[int, ...] | None = None, like: Tensor | None = None) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name}: dtype must be float32 or float64, got {x.dtype}")
    if like is not None and (x.dtype != like.dtype or x.device != like.device):
        raise ValueError(f"{name}: dtype/device {x.dtype}/{x.device} differ from {like.dtype}/{like.device}")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(x.shape)}")


def _check_positive(name: str, x: Tensor, where: Tensor | None = None) -> None:
    """All entries > 0 (only where `where` is True, if given). NaN fails."""
    ok = x > 0
    if where is not None:
        ok = ok | ~where
    if not bool(ok.all()):
        raise ValueError(f"{name}: variances must be positive (found a value <= 0 or NaN)")


def _check_mask(mask, shape: tuple[int, ...], device: torch.device, name: str = "mask") -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"{name}: expected a bool tensor, got "
                         f"{mask.dtype if isinstance(mask, Tensor) else type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name}: device {mask.device} differs from {device}")


def _check_method(method) -> None:
    if method not in METHODS:
        raise ValueError(f"method: must be one of {METHODS}, got {method!r}")


AUTO_PARALLEL_CPU_MAX_BD, AUTO_PARALLEL_CPU_MIN_T = 1024, 512


def resolve_method(method: str, x: Tensor) -> str:
    """The method that `method` runs for sequences like x (B, T, D): "auto" is "parallel" on CUDA; on the CPU
    "numba" when numba is importable, else "parallel" if B*D <= 1024 and T >= 512 and "fused" otherwise (module
    docstring); any other method is itself. Raises ValueError for an unknown method, and for "numba" on a
    non-CPU tensor or without numba."""
    _check_method(method)
    if method == "numba":
        if x.device.type != "cpu" or not cpu_kernels.available():
            raise ValueError(f"method: 'numba' needs CPU tensors and numba installed, got a tensor on {x.device}"
                             + ("" if cpu_kernels.available() else " and no numba"))
        return method
    if method != "auto":
        return method
    B, T, D = x.shape
    if x.device.type == "cpu" and cpu_kernels.available():
        return "numba"
    if x.is_cuda or (B * D <= AUTO_PARALLEL_CPU_MAX_BD and T >= AUTO_PARALLEL_CPU_MIN_T):
        return "parallel"
    return "fused"


def _check_same(names: tuple[str, ...], tensors: tuple, ref_name: str) -> None:
    ref = tensors[0]
    _check_tensor(ref_name, ref)
    for name, x in zip(names, tensors):
        _check_tensor(name, x, shape=ref.shape, like=ref)


# ----------------------------------------------------------------------------------------------------------------
# Single steps (used by the sequential reference and by the VRKN baseline)
# ----------------------------------------------------------------------------------------------------------------

def kalman_predict(mu: Tensor, var: Tensor, A: Tensor, b: Tensor, var_dyn: Tensor) -> tuple[Tensor, Tensor]:
    """One prediction step z_t -> z_{t+1}:  mu_p = A mu + b,  var_p = A² var + var_dyn.

    All arguments (..., D) of equal shape. Returns (mu_p, var_p), (..., D).
    """
    _check_same(("mu", "var", "A", "b", "var_dyn"), (mu, var, A, b, var_dyn), "mu")
    return _predict(mu, var, A, b, var_dyn)


def _predict(mu, var, A, b, var_dyn):
    return torch.addcmul(b, A, mu), torch.addcmul(var_dyn, A * A, var)


def kalman_update(mu_p: Tensor, var_p: Tensor, w: Tensor, var_w: Tensor,
                  mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One update with the observation w ~ N(z, var_w) (H = I).

        S = var_p + var_w,   K = var_p / S,   mu_f = mu_p + K (w - mu_p)
        var_f = (1 - K)² var_p + K² var_w      (Joseph form; with 1 - K = var_w / S it equals var_p var_w / S)

    mu_p, var_p, w, var_w: (..., D). mask: (...) bool or None; False skips the update (mu_f = mu_p, var_f = var_p),
    and w, var_w are then not used (they may hold anything). Returns (mu_f, var_f), (..., D).
    """
    _check_same(("mu_p", "var_p", "w", "var_w"), (mu_p, var_p, w, var_w), "mu_p")
    if mask is not None:
        _check_mask(mask, mu_p.shape[:-1], mu_p.device)
    return _update(mu_p, var_p, w, var_w, mask)


def _update(mu_p, var_p, w, var_w, mask):
    if mask is not None:
        m = mask.unsqueeze(-1)
        w = torch.where(m, w, mu_p)
        var_w = torch.where(m, var_w, torch.ones_like(var_w))
    S = var_p + var_w
    K = var_p / S
    one_minus_K = var_w / S
    mu_f = mu_p + K * (w - mu_p)
    var_f = one_minus_K * one_minus_K * var_p + K * K * var_w
    if mask is not None:
        mu_f = torch.where(m, mu_f, mu_p)
        var_f = torch.where(m, var_f, var_p)
    return mu_f, var_f


def rts_step(mu_f: Tensor, var_f: Tensor, mu_p_next: Tensor, var_p_next: Tensor, A: Tensor,
             mu_s_next: Tensor, var_s_next: Tensor) -> tuple[Tensor, Tensor]:
    """One Rauch-Tung-Striebel step from t+1 back to t.

        J = var_f A / var_p_next,   mu_s = mu_f + J (mu_s_next - mu_p_next)
        var_s = var_f + J² (var_s_next - var_p_next) = var_f (1 - J A) + J² var_s_next

    (1 - J A = var_dyn / var_p_next >= 0 in exact arithmetic; it is clamped at 0 against rounding.)
    All arguments (..., D): filtered belief at t, prediction for t+1, A_t, smoothed belief at t+1.
    Returns (mu_s, var_s), (..., D).
    """
    _check_same(("mu_f", "var_f", "mu_p_next", "var_p_next", "A", "mu_s_next", "var_s_next"),
                (mu_f, var_f, mu_p_next, var_p_next, A, mu_s_next, var_s_next), "mu_f")
    return _rts(mu_f, var_f, mu_p_next, var_p_next, A, mu_s_next, var_s_next)


def _rts(mu_f, var_f, mu_p_next, var_p_next, A, mu_s_next, var_s_next):
    J = var_f * A / var_p_next
    mu_s = mu_f + J * (mu_s_next - mu_p_next)
    var_s = var_f * torch.clamp(1 - J * A, min=0) + J * J * var_s_next
    return mu_s, var_s


# ----------------------------------------------------------------------------------------------------------------
# Sequential reference (docs/paper-notes.md#inference)
# ----------------------------------------------------------------------------------------------------------------

def _filter_sequential(w, var_w, A, b, var_dyn, mu0, var0, mask):
    # unbind(1) once instead of indexing [:, t] every step: the backward of T unbinds is one stack, whereas
    # each indexing op would write its gradient into a zero tensor of the full (B, T, D) size (O(T²) in total).
    w, var_w, A, b, var_dyn = (x.unbind(1) for x in (w, var_w, A, b, var_dyn))
    mask = [None] * len(w) if mask is None else mask.unbind(1)
    mu_p, var_p = mu0, var0
    out = {"mu_f": [], "var_f": [], "mu_p": [], "var_p": []}
    for t in range(len(w)):
        if t > 0:
            mu_p, var_p = _predict(mu_f, var_f, A[t - 1], b[t - 1], var_dyn[t - 1])
        mu_f, var_f = _update(mu_p, var_p, w[t], var_w[t], mask[t])
        for key, value in (("mu_f", mu_f), ("var_f", var_f), ("mu_p", mu_p), ("var_p", var_p)):
            out[key].append(value)
    return tuple(torch.stack(out[key], dim=1) for key in ("mu_f", "var_f", "mu_p", "var_p"))


def _smoother_sequential(mu_f, var_f, mu_p, var_p, A):
    mu_f, var_f, mu_p, var_p, A = (x.unbind(1) for x in (mu_f, var_f, mu_p, var_p, A))
    mu_s, var_s = mu_f[-1], var_f[-1]
    mus, vars_ = [mu_s], [var_s]
    for t in range(len(mu_f) - 2, -1, -1):
        mu_s, var_s = _rts(mu_f[t], var_f[t], mu_p[t + 1], var_p[t + 1], A[t], mu_s, var_s)
        mus.append(mu_s)
        vars_.append(var_s)
    return torch.stack(mus[::-1], dim=1), torch.stack(vars_[::-1], dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Parallel form (Särkkä & García-Fernández 2021, arXiv:1905.13002; diagonal, H = I)
# ----------------------------------------------------------------------------------------------------------------

class FilterElement(NamedTuple):
    """Filtering element a_k = (A_k, b_k, C_k, η_k, J_k) of the parallel Kalman filter of Särkkä & García-Fernández
    (2021, arXiv:1905.13002), diagonal with H = I, each (B, T, D). A_k is the element's symbol, not the model's
    transition A_t (which this section calls F). An inclusive forward scan leaves b = μ⁺_k, C = Σ⁺_k at position k."""
    A: Tensor
    b: Tensor
    C: Tensor
    eta: Tensor
    J: Tensor


class SmootherElement(NamedTuple):
    """Smoothing element a_k = (E_k, g_k, L_k) of the parallel RTS smoother of Särkkä & García-Fernández (2021,
    arXiv:1905.13002), diagonal, each (B, T, D). A reverse (suffix) scan leaves g = μˢ_k and L = Σˢ_k at position k."""
    E: Tensor
    g: Tensor
    L: Tensor


def _filter_elements(w, var_w, A, b, var_dyn, mu0, var0, mask) -> FilterElement:
    """The filtering elements. For k >= 1, with F = A_{k-1}, u = b_{k-1}, q = var_dyn_{k-1} (the transition
    z_{k-1} -> z_k) and R = var_w_k:
        S = q + R,  K = q / S,  A_k = (1 - K) F,  b_k = u + K (w_k - u),  C_k = (1 - K) q = q R / S,
        η_k = F (w_k - u) / S,  J_k = F² / S.
    A missing observation (R = inf) gives 1/S = 0, K = 0: A_k = F, b_k = u, C_k = q, η_k = J_k = 0.
    Element 0 is the prior updated with w_0: A_0 = η_0 = J_0 = 0, (b_0, C_0) = filtered belief at t = 0.
    """
    T = w.shape[1]
    # split views instead of slices: a slice's backward would write into a zero tensor of the full size
    F, u, q = (x.split([T - 1, 1], dim=1)[0] for x in (A, b, var_dyn))
    y, R = (x.split([1, T - 1], dim=1)[1] for x in (w, var_w))
    if mask is not None:  # replace missing entries first, so that NaN there cannot reach values or gradients
        m = mask[:, 1:].unsqueeze(-1)
        y = torch.where(m, y, u)
        R = torch.where(m, R, 1.0)
    inv_S = 1 / (q + R)
    K, one_minus_K = q * inv_S, R * inv_S
    if mask is not None:
        inv_S = torch.where(m, inv_S, 0.0)
        K = torch.where(m, K, 0.0)
        one_minus_K = torch.where(m, one_minus_K, 1.0)
    innovation = y - u
    rest = FilterElement(A=one_minus_K * F, b=u + K * innovation, C=one_minus_K * q, eta=F * innovation * inv_S,
                         J=F * F * inv_S)

    mu_f0, var_f0 = _update(mu0, var0, w[:, 0], var_w[:, 0], None if mask is None else mask[:, 0])
    zero = torch.zeros_like(mu_f0).unsqueeze(1)
    first = FilterElement(A=zero, b=mu_f0.unsqueeze(1), C=var_f0.unsqueeze(1), eta=zero, J=zero)
    return FilterElement(*(torch.cat([x0, xk], dim=1) for x0, xk in zip(first, rest)))


def _filter_combine(ai: FilterElement, aj: FilterElement) -> FilterElement:
    """a_i ⊗ a_j (i earlier), diagonal:  M = 1 / (1 + C_i J_j)
        A = A_j M A_i,            b = A_j M (b_i + C_i η_j) + b_j,     C = A_j² M C_i + C_j,
        η = A_i M (η_j - J_j b_i) + η_i,                               J = A_i² M J_j + J_i.
    (addcmul(x, y, z) = x + y z fuses a multiply-add into one pass over memory.)
    """
    M = torch.reciprocal(torch.addcmul(torch.ones((), dtype=ai.C.dtype, device=ai.C.device), ai.C, aj.J))
    AjM = aj.A * M
    AiM = ai.A * M
    return FilterElement(A=AjM * ai.A,
                         b=torch.addcmul(aj.b, AjM, torch.addcmul(ai.b, ai.C, aj.eta)),
                         C=torch.addcmul(aj.C, AjM * aj.A, ai.C),
                         eta=torch.addcmul(ai.eta, AiM, torch.addcmul(aj.eta, aj.J, ai.b, value=-1)),
                         J=torch.addcmul(ai.J, AiM * ai.A, aj.J))


def _filter_parallel(w, var_w, A, b, var_dyn, mu0, var0, mask):
    elems = _filter_elements(w, var_w, A, b, var_dyn, mu0, var0, mask)
    scanned = associative_scan(_filter_combine, elems, dim=1)
    mu_f, var_f = scanned.b, scanned.C
    T = w.shape[1]
    head = [x.split([T - 1, 1], dim=1)[0] for x in (mu_f, var_f, A, b, var_dyn)]
    mu_pred, var_pred = _predict(*head)
    mu_p = torch.cat([mu0.unsqueeze(1), mu_pred], dim=1)
    var_p = torch.cat([var0.unsqueeze(1), var_pred], dim=1)
    return mu_f, var_f, mu_p, var_p


def _smoother_combine(ai: SmootherElement, aj: SmootherElement) -> SmootherElement:
    """a_i ⊗ a_j (i earlier):  E = E_i E_j,  g = E_i g_j + g_i,  L = E_i² L_j + L_i."""
    return SmootherElement(E=ai.E * aj.E, g=torch.addcmul(ai.g, ai.E, aj.g), L=torch.addcmul(ai.L, ai.E * ai.E, aj.L))


def _smoother_parallel(mu_f, var_f, mu_p, var_p, A):
    """The smoothing elements, k < T-1:  E_k = var_f_k A_k / var_p_{k+1},  g_k = mu_f_k - E_k mu_p_{k+1},
    L_k = var_f_k (1 - E_k A_k);  k = T-1: E = 0, g = mu_f, L = var_f. A reverse scan gives g = mu_s, L = var_s."""
    T = mu_f.shape[1]
    (mu_f_head, mu_f_last), (var_f_head, var_f_last) = (x.split([T - 1, 1], dim=1) for x in (mu_f, var_f))
    A_head = A.split([T - 1, 1], dim=1)[0]
    mu_p_next, var_p_next = (x.split([1, T - 1], dim=1)[1] for x in (mu_p, var_p))
    E = var_f_head * A_head / var_p_next
    g = mu_f_head - E * mu_p_next
    L = var_f_head * torch.clamp(1 - E * A_head, min=0)
    elems = SmootherElement(E=torch.cat([E, torch.zeros_like(mu_f_last)], dim=1), g=torch.cat([g, mu_f_last], dim=1),
                            L=torch.cat([L, var_f_last], dim=1))
    scanned = associative_scan(_smoother_combine, elems, dim=1, reverse=True)
    return scanned.g, scanned.L


# ----------------------------------------------------------------------------------------------------------------
# Fused loop with an analytic backward (CPU)
# ----------------------------------------------------------------------------------------------------------------
# A plain loop builds an autograd graph of ~30 small ops per step and its backward replays them. Here forward and
# backward are each one loop over (B, D) slices whose temporaries stay in cache, writing straight into the (B, T, D)
# outputs; the backward is the adjoint (reverse-mode) recursion written out by hand:
#   filter, step t (f = var_f, p = var_p, u = mu_f, m = mu_p):
#       f = p R / (p + R),  K = f / R,  u = m + K (w - m),   p' = A² f + q,  m' = A u + b
#   adjoint, t = T-1..0, given ū, f̄, m̄, p̄ from the outputs and m̄', p̄' from step t+1 (zero at t = T-1):
#       ū += A m̄',  f̄ += A² p̄',  Ā = m̄' u + 2 A f p̄',  b̄ = m̄',  q̄ = p̄',  w̄ = K ū,  K̄ = ū (w - m)
#       f̄ += K̄ / R,  R̄ = K (K f̄ - K̄ / R),  m̄ += (1 - K) ū,  p̄ += (1 - K)² f̄      (1 - K = f / p)
#   smoother, step t: J = f A / p',  κ = max(1 - J A, 0),  mu_s = u + J (mu_s' - m'),  var_s = f κ + J² var_s'
#   adjoint, t = 0..T-2, with σ, ν the adjoints of mu_s, var_s (σ_0, ν_0 from the outputs):
#       J̄ = σ (mu_s' - m') + 2 J ν var_s' - [κ > 0] ν f A,   ū = σ,  f̄ = ν κ + J̄ A / p',
#       Ā = J̄ f / p' - [κ > 0] ν f J,  m̄' = -J σ,  p̄' = -J̄ J / p',  σ' += J σ,  ν' += J² ν
# A missing observation enters as R = inf (and w = 0): K = 0, f = p, and R̄ = w̄ = 0.

def _empty(like: Tensor) -> Tensor:
    return torch.empty(like.shape, dtype=like.dtype, device=like.device)


class _FusedFilter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, var_w, A, b, var_dyn, mu0, var0):
        T = w.shape[1]
        mu_f, var_f, mu_p, var_p, K = (_empty(w) for _ in range(5))
        one = torch.ones((), dtype=w.dtype, device=w.device)
        u, f, m, p, k = (x.unbind(1) for x in (mu_f, var_f, mu_p, var_p, K))
        w_, R, A_, b_, q = (x.unbind(1) for x in (w, var_w, A, b, var_dyn))
        m[0].copy_(mu0)
        p[0].copy_(var0)
        for t in range(T):
            torch.div(p[t], torch.addcdiv(one, p[t], R[t]), out=f[t])      # f = p / (1 + p / R) = p R / (p + R)
            torch.div(f[t], R[t], out=k[t])                                # K = p / (p + R)
            torch.addcmul(m[t], k[t], w_[t] - m[t], out=u[t])              # u = m + K (w - m)
            if t + 1 < T:
                torch.addcmul(q[t], A_[t], A_[t] * f[t], out=p[t + 1])     # p' = A² f + q
                torch.addcmul(b_[t], A_[t], u[t], out=m[t + 1])            # m' = A u + b
        ctx.save_for_backward(w, var_w, A, mu_f, var_f, mu_p, var_p, K)
        return mu_f, var_f, mu_p, var_p

    @staticmethod
    @once_differentiable
    def backward(ctx, g_mu_f, g_var_f, g_mu_p, g_var_p):
        w, var_w, A, mu_f, var_f, mu_p, var_p, K = ctx.saved_tensors
        T = w.shape[1]
        gw, gR, gA, gb, gq = (_empty(w) for _ in range(5))
        g_mu0, g_var0 = _empty(w[:, 0]), _empty(w[:, 0])
        for g in (gA, gb, gq):
            g[:, -1].zero_()  # the last transition is not used
        u, f, m, p, k = (x.unbind(1) for x in (mu_f, var_f, mu_p, var_p, K))
        w_, R, A_ = w.unbind(1), var_w.unbind(1), A.unbind(1)
        Gu, Gf, Gm, Gp = (x.unbind(1) for x in (g_mu_f, g_var_f, g_mu_p, g_var_p))
        m_bar, p_bar = gb.unbind(1), gq.unbind(1)  # b̄_{t-1} = m̄_t and q̄_{t-1} = p̄_t: written in place
        m_bar, p_bar = (g_mu0, *m_bar[:-1]), (g_var0, *p_bar[:-1])
        for t in range(T - 1, -1, -1):
            if t + 1 < T:  # contributions of step t+1 through m' = A u + b and p' = A² f + q
                u_bar = torch.addcmul(Gu[t], A_[t], m_bar[t + 1])
                f_bar = torch.addcmul(Gf[t], A_[t] * A_[t], p_bar[t + 1])
                torch.mul(m_bar[t + 1], u[t], out=gA[:, t]).addcmul_(A_[t] * f[t], p_bar[t + 1], value=2)
            else:
                u_bar, f_bar = Gu[t], Gf[t].clone()
            torch.mul(k[t], u_bar, out=gw[:, t])
            K_bar_over_R = (w_[t] - m[t]).mul_(u_bar).div_(R[t])
            f_bar += K_bar_over_R
            torch.mul(k[t], torch.mul(k[t], f_bar).sub_(K_bar_over_R), out=gR[:, t])
            one_minus_K = f[t] / p[t]
            torch.addcmul(Gm[t], one_minus_K, u_bar, out=m_bar[t])
            torch.addcmul(Gp[t], one_minus_K.square_(), f_bar, out=p_bar[t])
        return gw, gR, gA, gb, gq, g_mu0, g_var0


class _FusedSmoother(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu_f, var_f, mu_p, var_p, A):
        T = mu_f.shape[1]
        mu_s, var_s, J, kappa = (_empty(mu_f) for _ in range(4))
        one = torch.ones((), dtype=mu_f.dtype, device=mu_f.device)
        u, f, m, p, A_ = (x.unbind(1) for x in (mu_f, var_f, mu_p, var_p, A))
        ms, vs, j, kap = (x.unbind(1) for x in (mu_s, var_s, J, kappa))
        ms[-1].copy_(u[-1])
        vs[-1].copy_(f[-1])
        for t in range(T - 2, -1, -1):
            torch.mul(f[t], A_[t], out=j[t]).div_(p[t + 1])                             # J = f A / p'
            torch.addcmul(one, j[t], A_[t], value=-1, out=kap[t]).clamp_(min=0)         # κ = max(1 - J A, 0)
            torch.addcmul(u[t], j[t], ms[t + 1] - m[t + 1], out=ms[t])                  # u + J (mu_s' - m')
            torch.addcmul(f[t] * kap[t], j[t], j[t] * vs[t + 1], out=vs[t])             # f κ + J² var_s'
        ctx.save_for_backward(var_f, mu_p, var_p, A, mu_s, var_s, J, kappa)
        return mu_s, var_s

    @staticmethod
    @once_differentiable
    def backward(ctx, g_mu_s, g_var_s):
        var_f, mu_p, var_p, A, mu_s, var_s, J, kappa = ctx.saved_tensors
        T = var_f.shape[1]
        g_mu_f, g_var_f, g_mu_p, g_var_p, gA = (_empty(var_f) for _ in range(5))
        for g in (g_mu_p[:, 0], g_var_p[:, 0], gA[:, -1]):
            g.zero_()
        zero = torch.zeros((), dtype=var_f.dtype, device=var_f.device)
        f, m, p, A_, ms, vs, j, kap = (x.unbind(1) for x in (var_f, mu_p, var_p, A, mu_s, var_s, J, kappa))
        Gs, Gv = g_mu_s.unbind(1), g_var_s.unbind(1)
        sigma = g_mu_f.unbind(1)  # σ_t is ū_t: accumulated in place
        sigma[0].copy_(Gs[0])
        nu = Gv[0].clone()
        for t in range(T - 1):
            J_nu = j[t] * nu
            nu_f = (nu * f[t]).mul_(kap[t] > 0)
            J_bar = (ms[t + 1] - m[t + 1]).mul_(sigma[t]).addcmul_(J_nu, vs[t + 1], value=2)
            J_bar.addcmul_(nu_f, A_[t], value=-1)
            X = J_bar.div_(p[t + 1])                                                   # J̄ / p'
            torch.addcmul(nu * kap[t], X, A_[t], out=g_var_f[:, t])                    # f̄ = ν κ + J̄ A / p'
            torch.addcmul(X * f[t], nu_f, j[t], value=-1, out=gA[:, t])                # Ā
            torch.addcmul(zero, j[t], sigma[t], value=-1, out=g_mu_p[:, t + 1])        # m̄' = -J σ
            torch.addcmul(zero, X, j[t], value=-1, out=g_var_p[:, t + 1])              # p̄' = -J̄ J / p'
            torch.addcmul(Gs[t + 1], j[t], sigma[t], out=sigma[t + 1])                 # σ' = Gs' + J σ
            nu = torch.addcmul(Gv[t + 1], j[t], J_nu)                                  # ν' = Gv' + J² ν
        g_var_f[:, -1].copy_(nu)
        return g_mu_f, g_var_f, g_mu_p, g_var_p, gA


def _filter_fused(w, var_w, A, b, var_dyn, mu0, var0, mask):
    if mask is not None:  # a missing observation is R = inf, w = 0 (finite, so NaN there reaches nothing)
        m = mask.unsqueeze(-1)
        var_w = torch.where(m, var_w, torch.inf)
        w = torch.where(m, w, 0.0)
    return _FusedFilter.apply(w, var_w, A, b, var_dyn, mu0, var0)


def _smoother_fused(mu_f, var_f, mu_p, var_p, A):
    return _FusedSmoother.apply(mu_f, var_f, mu_p, var_p, A)


def _filter_numba(w, var_w, A, b, var_dyn, mu0, var0, mask):
    return cpu_kernels.KalmanFilterNumba.apply(w, var_w, A, b, var_dyn, mu0, var0, mask)


def _smoother_numba(mu_f, var_f, mu_p, var_p, A):
    return cpu_kernels.RTSSmootherNumba.apply(mu_f, var_f, mu_p, var_p, A)


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------

def kalman_filter(w: Tensor, var_w: Tensor, A: Tensor, b: Tensor, var_dyn: Tensor, mu0: Tensor, var0: Tensor,
                  mask: Tensor | None = None, method: str = "auto",
                  validate: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Diagonal Kalman filter with H = I.

    Args:
        w, var_w: (B, T, D) observations and their variances (var_w > 0 where observed).
        A, b, var_dyn: (B, T, D) transition z_t -> z_{t+1}; the last step (t = T-1) is not used.
        mu0, var0: (B, D) or (D,) prior of z_0 (updated directly by w[:, 0], no transition before t = 0).
        mask: (B, T) bool or None; False = observation missing, update skipped.
        method: "auto" (default: `resolve_method`), "numba" (compiled loops, CPU), "fused" (loop with analytic
            backward), "parallel" (associative scan) or "sequential" (reference loop).
        validate: check the variances' values (> 0, not NaN). Each check is a pass over the data and a host sync
            (bool of a tensor), so a training step whose variances are positive by construction (softplus, exp)
            passes False; types, shapes, dtypes, devices and the method are always checked (no sync).
    Returns:
        mu_f, var_f: (B, T, D) filtered beliefs p(z_t | w_{0..t}).
        mu_p, var_p: (B, T, D) predictions p(z_t | w_{0..t-1}); at t = 0 the prior.
    Raises:
        ValueError naming the argument for bad types, shapes, dtypes, devices, method, or (validate=True)
        non-positive variances.
    """
    mu0, var0 = _check_filter_args(w, var_w, A, b, var_dyn, mu0, var0, mask, method, validate)
    run = {"fused": _filter_fused, "numba": _filter_numba, "parallel": _filter_parallel,
           "sequential": _filter_sequential}[resolve_method(method, w)]
    return run(w, var_w, A, b, var_dyn, mu0, var0, mask)


def _check_filter_args(w, var_w, A, b, var_dyn, mu0, var0, mask, method, validate) -> tuple[Tensor, Tensor]:
    """kalman_filter's argument checks; returns mu0, var0 expanded to (B, D)."""
    _check_method(method)
    _check_tensor("w", w)
    if w.dim() != 3 or w.shape[1] == 0:
        raise ValueError(f"w: expected shape (B, T, D) with T >= 1, got {tuple(w.shape)}")
    B, T, D = w.shape
    for name, x in (("var_w", var_w), ("A", A), ("b", b), ("var_dyn", var_dyn)):
        _check_tensor(name, x, shape=w.shape, like=w)
    for name, x in (("mu0", mu0), ("var0", var0)):
        _check_tensor(name, x, like=w)
        if tuple(x.shape) not in ((B, D), (D,)):
            raise ValueError(f"{name}: expected shape {(B, D)} or {(D,)}, got {tuple(x.shape)}")
    if mask is not None:
        _check_mask(mask, (B, T), w.device)
    if validate:
        _check_positive("var_w", var_w, None if mask is None else mask.unsqueeze(-1))
        _check_positive("var_dyn", var_dyn[:, :-1])
        _check_positive("var0", var0)
    return mu0.expand(B, D), var0.expand(B, D)


def kalman_smoother(mu_f: Tensor, var_f: Tensor, mu_p: Tensor, var_p: Tensor, A: Tensor,
                    method: str = "auto", validate: bool = True) -> tuple[Tensor, Tensor]:
    """Rauch-Tung-Striebel smoother for the filter above.

    Args:
        mu_f, var_f, mu_p, var_p: (B, T, D) outputs of `kalman_filter`.
        A: (B, T, D) transition coefficients (the last step is not used).
        method: "auto" (default: `resolve_method`), "numba", "fused", "parallel" (reverse associative scan) or
            "sequential" (reference loop).
        validate: check var_f > 0 and var_p[:, 1:] > 0 (as in `kalman_filter`; False skips these host syncs).
    Returns:
        mu_s, var_s: (B, T, D) smoothed beliefs p(z_t | w_{0..T-1}).
    Raises:
        ValueError naming the argument for bad types, shapes, dtypes, devices, method, or (validate=True)
        non-positive variances.
    """
    _check_method(method)
    _check_tensor("mu_f", mu_f)
    if mu_f.dim() != 3 or mu_f.shape[1] == 0:
        raise ValueError(f"mu_f: expected shape (B, T, D) with T >= 1, got {tuple(mu_f.shape)}")
    for name, x in (("var_f", var_f), ("mu_p", mu_p), ("var_p", var_p), ("A", A)):
        _check_tensor(name, x, shape=mu_f.shape, like=mu_f)
    if validate:
        _check_positive("var_f", var_f)
        _check_positive("var_p", var_p[:, 1:])
    run = {"fused": _smoother_fused, "numba": _smoother_numba, "parallel": _smoother_parallel,
           "sequential": _smoother_sequential}[resolve_method(method, mu_f)]
    return run(mu_f, var_f, mu_p, var_p, A)


def kalman_filter_smoother(w: Tensor, var_w: Tensor, A: Tensor, b: Tensor, var_dyn: Tensor, mu0: Tensor,
                           var0: Tensor, mask: Tensor | None = None, method: str = "auto",
                           validate: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`kalman_filter` followed by `kalman_smoother` (same arguments as `kalman_filter`, same method for both).

    Returns (mu_f, var_f, mu_p, var_p, mu_s, var_s), each (B, T, D). With "numba" both run in one autograd
    Function (`models.cpu_kernels.KalmanFilterSmootherNumba`), whose backward adds the gradients reaching the
    filter's outputs directly and from the smoother inside one kernel; other methods call the two functions.
    Raises ValueError as `kalman_filter` does.
    """
    mu0_, var0_ = _check_filter_args(w, var_w, A, b, var_dyn, mu0, var0, mask, method, validate)
    if resolve_method(method, w) == "numba":
        return cpu_kernels.KalmanFilterSmootherNumba.apply(w, var_w, A, b, var_dyn, mu0_, var0_, mask)
    f = kalman_filter(w, var_w, A, b, var_dyn, mu0, var0, mask, method, validate=False)  # checked above
    return f + kalman_smoother(*f, A, method=method, validate=validate)


# ----------------------------------------------------------------------------------------------------------------
# Smoothed conditional and its KL to the dynamics: the KL term of the smoothing ELBO (KalMamba and VRKN)
# ----------------------------------------------------------------------------------------------------------------

COND_VAR_FLOOR = 1e-8   # floor of the smoothed conditional variance in the KL (only against float underflow)


def smoothed_conditional(var_f: Tensor, var_p: Tensor, mu_s: Tensor, var_s: Tensor, A: Tensor, var_dyn: Tensor,
                         z_prev: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(z_t | z_{t-1} = z_prev_{t-1}, w_{0..T-1}) for t = 1..T-1 (diagonal, H = I).

    Gaussian conditioning of the smoothed pairwise marginal of (z_{t-1}, z_t), whose cross-covariance is
    J_{t-1} Σˢ_t (the RTS smoother's pairwise marginal; docs/paper-notes.md#smoothing-elbo):
        J_{t-1} = Σ⁺_{t-1} A_{t-1} / Σ⁻_t                  (RTS gain)
        G_t     = Σˢ_t J_{t-1} / Σˢ_{t-1}
        mean_t  = μˢ_t + G_t (z_{t-1} − μˢ_{t-1})
        var_t   = Σˢ_t − G_t J_{t-1} Σˢ_t = Σˢ_t · L_{t-1} / Σˢ_{t-1},   L_{t-1} = Σ⁺_{t-1} Σ^dyn_{t-1} / Σ⁻_t
    (L_{t-1} = Σ⁺_{t-1}(1 − J_{t-1} A_{t-1}) is the variance of z_{t-1} given z_t; Σˢ_{t-1} = L_{t-1} + J² Σˢ_t.
    The product form is the same quantity without the cancellation of the difference form.)

    Args (B, T, D): filtered variance var_f, predicted variance var_p (var_p_t = A_{t-1}² var_f_{t-1} + var_dyn_{t-1}
    for t ≥ 1), smoothed mean/variance mu_s/var_s, transition A and var_dyn (index t: z_t -> z_{t+1}), and z_prev:
    the values of z_{t-1} to condition on, at index t-1 (e.g. a sample of the smoothed marginals).
    Returns (mean, var), each (B, T-1, D), for t = 1..T-1.
    """
    J = var_f[:, :-1] * A[:, :-1] / var_p[:, 1:]
    L = var_f[:, :-1] * var_dyn[:, :-1] / var_p[:, 1:]
    G = var_s[:, 1:] * J / var_s[:, :-1]
    mean = mu_s[:, 1:] + G * (z_prev[:, :-1] - mu_s[:, :-1])
    var = var_s[:, 1:] * L / var_s[:, :-1]
    return mean, var


def smoothed_conditional_kl(var_f: Tensor, var_p: Tensor, mu_s: Tensor, var_s: Tensor, A: Tensor, b: Tensor,
                            var_dyn: Tensor, z_s: Tensor, min_var: float = COND_VAR_FLOOR) -> Tensor:
    """KL_t = KL( q(z_t | z_{t-1} = ẑ_{t-1}, w) ‖ N(A_{t-1} ẑ_{t-1} + b_{t-1}, Σ^dyn_{t-1}) ) for t = 1..T-1.

    The KL term of the smoothing ELBO that KalMamba takes over from VRKN (docs/paper-notes.md#smoothing-elbo):
    ẑ = z_s (B, T, D) is a sample of the smoothed marginals; the left argument is `smoothed_conditional` at ẑ, the
    right one the model's dynamics at ẑ. Other arguments as in `smoothed_conditional`, b (B, T, D) the transition
    offset. The conditional variance is floored at `min_var` (only against float underflow; it is positive by
    construction). Returns (B, T-1) in nats, summed over D.
    """
    cond_mean, cond_var = smoothed_conditional(var_f, var_p, mu_s, var_s, A, var_dyn, z_s)
    prior_mean = A[:, :-1] * z_s[:, :-1] + b[:, :-1]
    return diag_gaussian_kl(cond_mean, cond_var.clamp(min=min_var), prior_mean, var_dyn[:, :-1])
