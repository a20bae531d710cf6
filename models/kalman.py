"""Diagonal Kalman filter and RTS smoother (H = I), sequential and parallel (associative scan).

Model (all covariances diagonal, every product element-wise; digest §3.2, §4):
    z_0 ~ N(mu0, var0)
    z_{t+1} | z_t ~ N(A_t z_t + b_t, var_dyn_t)         (A, b, var_dyn at index t map z_t to z_{t+1})
    w_t | z_t ~ N(z_t, var_w_t)                          (auxiliary observation, H = I)
Shapes: B batch, T time, D latent dimensions. Sequences are (B, T, D).

Outputs of the filter at every t: the one-step prediction N(mu_p_t, var_p_t) (before w_t; at t = 0 the prior) and the
filtered belief N(mu_f_t, var_f_t) (after w_t). The smoother gives N(mu_s_t, var_s_t) = p(z_t | w_{0..T-1}).

method="sequential" is the readable reference loop (digest §4.1) built from the public single-step functions
`kalman_predict`, `kalman_update`, `rts_step`. method="parallel" is Särkkä & García-Fernández (2021) specialised to
diagonals (digest §4.2): one forward associative scan for the filter, one reverse scan for the smoother.
Speed (benchmarks/kalman_scan.py): the scan has depth O(log T) but does ~3x the element-wise work of the loop, so it
pays off where the loop is latency-bound (GPUs; small B*D on CPU: ~2.5x faster at B=32, D=16, T>=256 on 1 core).
On a CPU with B*D in the thousands (B=32, D=230) each loop step is already a vectorised, compute-bound op and the
loop is ~2.5-4x faster than the scan: prefer method="sequential" there.

Missing observations: `mask[b, t] = False` skips the update at t (var_w_t = inf, i.e. K_t = 0). w and var_w at such
positions are never used in arithmetic, so they may hold anything (even NaN) without affecting values or gradients.

Numerics: the forms below avoid cancellation, so variances stay positive in float32:
    1 - K = var_w / S,   var_f = var_p * var_w / S  (= Joseph form),   S = var_p + var_w
    smoother: var_s = var_f * max(1 - J A, 0) + J² var_s_next  (= var_f + J² (var_s_next - var_p_next))
"""
from __future__ import annotations

import torch
from torch import Tensor

from models.scan import associative_scan

METHODS = ("parallel", "sequential")


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
# Sequential reference (digest §4.1)
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
# Parallel form (digest §4.2, Särkkä & García-Fernández 2021, diagonal, H = I)
# ----------------------------------------------------------------------------------------------------------------

def _filter_elements(w, var_w, A, b, var_dyn, mu0, var0, mask):
    """Filtering elements (F_k, m_k, C_k, eta_k, J_k), each (B, T, D). (F_k is Särkkä's A_k, renamed so it is not
    confused with the transition A.) For k >= 1, with F = A_{k-1}, u = b_{k-1}, q = var_dyn_{k-1}, R = var_w_k:
        S = q + R,  K = q / S,  F_k = (1 - K) F,  m_k = u + K (w_k - u),  C_k = (1 - K) q = q R / S,
        eta_k = F (w_k - u) / S,  J_k = F² / S.
    A missing observation (R = inf) gives 1/S = 0, K = 0: F_k = F, m_k = u, C_k = q, eta_k = J_k = 0.
    Element 0 is the prior updated with w_0: F_0 = eta_0 = J_0 = 0, (m_0, C_0) = filtered belief at t = 0.
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
    F_k = one_minus_K * F
    m_k = u + K * innovation
    C_k = one_minus_K * q
    eta_k = F * innovation * inv_S
    J_k = F * F * inv_S

    mu_f0, var_f0 = _update(mu0, var0, w[:, 0], var_w[:, 0], None if mask is None else mask[:, 0])
    zero = torch.zeros_like(mu_f0).unsqueeze(1)
    first = (zero, mu_f0.unsqueeze(1), var_f0.unsqueeze(1), zero, zero)
    rest = (F_k, m_k, C_k, eta_k, J_k)
    return tuple(torch.cat([x0, xk], dim=1) for x0, xk in zip(first, rest))


def _filter_combine(earlier, later):
    """a_i ⊗ a_j (i earlier), diagonal:  M = 1 / (1 + C_i J_j)
        F = F_j M F_i,            m = F_j M (m_i + C_i eta_j) + m_j,    C = F_j² M C_i + C_j,
        eta = F_i M (eta_j - J_j m_i) + eta_i,                           J = F_i² M J_j + J_i.
    (addcmul(x, y, z) = x + y z fuses a multiply-add into one pass over memory.)
    """
    F1, m1, C1, e1, J1 = earlier
    F2, m2, C2, e2, J2 = later
    M = torch.reciprocal(torch.addcmul(torch.ones((), dtype=C1.dtype, device=C1.device), C1, J2))
    F2M = F2 * M
    F1M = F1 * M
    return (F2M * F1,
            torch.addcmul(m2, F2M, torch.addcmul(m1, C1, e2)),
            torch.addcmul(C2, F2M * F2, C1),
            torch.addcmul(e1, F1M, torch.addcmul(e2, J2, m1, value=-1)),
            torch.addcmul(J1, F1M * F1, J2))


def _filter_parallel(w, var_w, A, b, var_dyn, mu0, var0, mask):
    elems = _filter_elements(w, var_w, A, b, var_dyn, mu0, var0, mask)
    _, mu_f, var_f, _, _ = associative_scan(_filter_combine, elems, dim=1)
    T = w.shape[1]
    head = [x.split([T - 1, 1], dim=1)[0] for x in (mu_f, var_f, A, b, var_dyn)]
    mu_pred, var_pred = _predict(*head)
    mu_p = torch.cat([mu0.unsqueeze(1), mu_pred], dim=1)
    var_p = torch.cat([var0.unsqueeze(1), var_pred], dim=1)
    return mu_f, var_f, mu_p, var_p


def _smoother_combine(earlier, later):
    """a_i ⊗ a_j (i earlier):  E = E_i E_j,  g = E_i g_j + g_i,  L = E_i² L_j + L_i."""
    E1, g1, L1 = earlier
    E2, g2, L2 = later
    return E1 * E2, torch.addcmul(g1, E1, g2), torch.addcmul(L1, E1 * E1, L2)


def _smoother_parallel(mu_f, var_f, mu_p, var_p, A):
    """Smoothing elements, k < T-1:  E_k = var_f_k A_k / var_p_{k+1},  g_k = mu_f_k - E_k mu_p_{k+1},
    L_k = var_f_k (1 - E_k A_k);  k = T-1: E = 0, g = mu_f, L = var_f. A reverse scan gives g = mu_s, L = var_s."""
    T = mu_f.shape[1]
    (mu_f_head, mu_f_last), (var_f_head, var_f_last) = (x.split([T - 1, 1], dim=1) for x in (mu_f, var_f))
    A_head = A.split([T - 1, 1], dim=1)[0]
    mu_p_next, var_p_next = (x.split([1, T - 1], dim=1)[1] for x in (mu_p, var_p))
    E = var_f_head * A_head / var_p_next
    g = mu_f_head - E * mu_p_next
    L = var_f_head * torch.clamp(1 - E * A_head, min=0)
    E = torch.cat([E, torch.zeros_like(mu_f_last)], dim=1)
    g = torch.cat([g, mu_f_last], dim=1)
    L = torch.cat([L, var_f_last], dim=1)
    _, mu_s, var_s = associative_scan(_smoother_combine, (E, g, L), dim=1, reverse=True)
    return mu_s, var_s


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------

def kalman_filter(w: Tensor, var_w: Tensor, A: Tensor, b: Tensor, var_dyn: Tensor, mu0: Tensor, var0: Tensor,
                  mask: Tensor | None = None, method: str = "parallel") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Diagonal Kalman filter with H = I.

    Args:
        w, var_w: (B, T, D) observations and their variances (var_w > 0 where observed).
        A, b, var_dyn: (B, T, D) transition z_t -> z_{t+1}; the last step (t = T-1) is not used.
        mu0, var0: (B, D) or (D,) prior of z_0 (updated directly by w[:, 0], no transition before t = 0).
        mask: (B, T) bool or None; False = observation missing, update skipped.
        method: "parallel" (associative scan) or "sequential" (reference loop).
    Returns:
        mu_f, var_f: (B, T, D) filtered beliefs p(z_t | w_{0..t}).
        mu_p, var_p: (B, T, D) predictions p(z_t | w_{0..t-1}); at t = 0 the prior.
    Raises:
        ValueError naming the argument for bad types, shapes, dtypes, devices, non-positive variances, or method.
    """
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
    _check_positive("var_w", var_w, None if mask is None else mask.unsqueeze(-1))
    _check_positive("var_dyn", var_dyn[:, :-1])
    _check_positive("var0", var0)
    mu0, var0 = mu0.expand(B, D), var0.expand(B, D)
    run = _filter_parallel if method == "parallel" else _filter_sequential
    return run(w, var_w, A, b, var_dyn, mu0, var0, mask)


def kalman_smoother(mu_f: Tensor, var_f: Tensor, mu_p: Tensor, var_p: Tensor, A: Tensor,
                    method: str = "parallel") -> tuple[Tensor, Tensor]:
    """Rauch-Tung-Striebel smoother for the filter above.

    Args:
        mu_f, var_f, mu_p, var_p: (B, T, D) outputs of `kalman_filter`.
        A: (B, T, D) transition coefficients (the last step is not used).
        method: "parallel" (reverse associative scan) or "sequential" (reference loop).
    Returns:
        mu_s, var_s: (B, T, D) smoothed beliefs p(z_t | w_{0..T-1}).
    """
    _check_method(method)
    _check_tensor("mu_f", mu_f)
    if mu_f.dim() != 3 or mu_f.shape[1] == 0:
        raise ValueError(f"mu_f: expected shape (B, T, D) with T >= 1, got {tuple(mu_f.shape)}")
    for name, x in (("var_f", var_f), ("mu_p", mu_p), ("var_p", var_p), ("A", A)):
        _check_tensor(name, x, shape=mu_f.shape, like=mu_f)
    _check_positive("var_f", var_f)
    _check_positive("var_p", var_p[:, 1:])
    run = _smoother_parallel if method == "parallel" else _smoother_sequential
    return run(mu_f, var_f, mu_p, var_p, A)
