"""Compiled CPU kernels (numba) for the two element-wise recurrences over time in kalbench: the diagonal Kalman
filter + RTS smoother (models/kalman.py, method "numba") and Mamba's selective scan (models/mamba.py, method
"numba"), each forward and its analytic backward, wrapped in `torch.autograd.Function`s.

Why: both recurrences do a few flops per element and step. A torch loop over T issues tens of small ops per step
and is bound by their overhead; here each direction is one compiled loop: `prange` over the batch (the chains of
one batch element are independent), a sequential loop over T inside, and the innermost loop over the contiguous
last dimension(s), which LLVM vectorises (for the Kalman kernels: a small function per step on (D,) rows, the shape
of loop LLVM reliably vectorises here). Temporaries live in registers; outputs are written once.

Same equations as the torch "fused" loop (models/kalman.py) and `SelectiveScanLoop` (models/mamba.py); the adjoint
recursions are written out at each kernel. The Kalman kernels keep the torch loop's order of operations per element;
the selective scan differs in the last bits: float32 exp by a polynomial (relative error <= 1.5e-7) and its two sums
over E in 8 partial sums (tests/test_mamba.py compares it with the other paths in float32 and float64). Constants are cast
to the input's dtype so float32 stays float32 arithmetic (fastmath off: IEEE semantics, no reassociation;
`error_model="numpy"`: a division by zero gives inf/NaN as in torch instead of numba's per-element Python check,
which would keep the loops from being vectorised).

Contract: CPU tensors, float32 or float64 (all of one dtype), any strides (made contiguous; numpy views share the
memory, no copies of contiguous inputs). Once differentiable: gradients of the outputs are exact, but there is no
double backward (`torch.autograd.gradgradcheck` is unsupported) — nothing in kalbench needs it.
Threads: every call sets numba's thread count to torch.get_num_threads(), so a 1-thread run stays 1-thread.
JIT: compiled on first use per dtype and cached on disk (`cache=True`, in __pycache__), so later processes load
the machine code instead of compiling (benchmarks/kalman_scan.py reports the first-call cost).
`available()` says whether numba is importable; without it the callers fall back to their torch loops.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

try:
    import numba
    from numba import njit, prange

    # numba's own thread pool, not its OpenMP layer: that one shares libgomp with torch and changes the OpenMP state
    # torch's ops run under, after which a run resumed in another process no longer repeats its curve exactly
    # (tests/test_train.py, the SIGKILL/SIGTERM/SIGINT resume tests). Set before any kernel runs.
    numba.config.THREADING_LAYER = "workqueue"
except ImportError:  # pragma: no cover - numba is a dependency; the torch paths remain without it
    numba = None


def available() -> bool:
    """True when numba is importable (then method "auto" uses these kernels on CPU)."""
    return numba is not None


def _set_threads() -> None:
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _np(x: Tensor) -> np.ndarray:
    """A contiguous numpy view of a CPU tensor (a copy only if x is not contiguous)."""
    return x.detach().contiguous().numpy()


def _jit(fn):
    """Compile lazily (the first call per dtype), cached on disk; numba absent: never called."""
    if numba is None:
        return fn
    return njit(parallel=True, cache=True, fastmath=False, error_model="numpy")(fn)


def _jit_serial(fn):
    """A serial helper the parallel kernels call (per batch element); numba inlines or calls it natively."""
    if numba is None:
        return fn
    return njit(cache=True, fastmath=False, error_model="numpy")(fn)


# ----------------------------------------------------------------------------------------------------------------
# Kalman filter (H = I, diagonal), per chain (b, d); notation of models/kalman.py:
#   p_0 = var0, m_0 = mu0;  p_t = A_{t-1}² f_{t-1} + q_{t-1},  m_t = A_{t-1} u_{t-1} + b_{t-1}
#   observed: S = p + R, K = p / S, f = K R (= p R / S), u = m + K (w - m);  missing: f = p, u = m (w, R unread)
# Adjoint, t = T-1..0, with ū, f̄, m̄, p̄ the adjoints of u, f, m, p (Gu, Gf, Gm, Gp from the outputs):
#   ū = Gu + A m̄_{t+1},  f̄ = Gf + A² p̄_{t+1},  Ā_t = m̄_{t+1} u + 2 A f p̄_{t+1},  b̄_t = m̄_{t+1},  q̄_t = p̄_{t+1}
#   observed (K = f / R, so K's dependence on p and R runs through f):  w̄ = K ū,  K̄ = ū (w - m),
#       f̄ += K̄ / R,  R̄ = K (K f̄ - K̄ / R),  m̄ = Gm + (1 - K) ū,  p̄ = Gp + (1 - K)² f̄      (1 - K = R / S)
#   missing: w̄ = R̄ = 0, m̄ = Gm + ū, p̄ = Gp + f̄.   Ā, b̄, q̄ at t = T-1 are 0 (the last transition is unused).
#
# Layout: a `_..._chain` function runs one batch element, (T, D) arrays, with the loop over D innermost and free of
# branches (what LLVM vectorises); the `prange` kernels below call them per batch element, and the filter+smoother
# kernels call filter and smoother for one batch element back to back, so that the (T, D) intermediates are still
# in cache (forward) or never leave a per-thread scratch (backward: the smoother's gradients of the filter's
# outputs, which the filter's adjoint reads).
# ----------------------------------------------------------------------------------------------------------------

# Rows (D,) of one step; a loop over D with nothing else in it is what LLVM vectorises.

@_jit_serial
def _predict_row(a, b, q, u, f, m, p):
    for d in range(a.shape[0]):
        p[d] = a[d] * a[d] * f[d] + q[d]
        m[d] = a[d] * u[d] + b[d]


@_jit_serial
def _update_row(w, R, m, p, u, f):
    for d in range(w.shape[0]):
        k = p[d] / (p[d] + R[d])
        f[d] = k * R[d]
        u[d] = m[d] + k * (w[d] - m[d])


@_jit_serial
def _predict_adjoint_row(a, mb, pb, u, f, Gu, Gf, u_bar, f_bar, gA):
    # mb, pb: m̄_{t+1}, p̄_{t+1}; adds Ā_t to gA.
    for d in range(a.shape[0]):
        u_bar[d] = Gu[d] + a[d] * mb[d]
        f_bar[d] = Gf[d] + a[d] * a[d] * pb[d]
        gA[d] += mb[d] * u[d] + (a[d] + a[d]) * f[d] * pb[d]


@_jit_serial
def _update_adjoint_row(w, R, m, p, u_bar, f_bar, Gm, Gp, gw, gR, m_bar, p_bar):
    for d in range(w.shape[0]):
        r = R[d]
        k = p[d] / (p[d] + r)
        omk = r / (p[d] + r)                           # 1 - K
        ub = u_bar[d]
        gw[d] = k * ub
        kb_over_r = ub * (w[d] - m[d]) / r             # K̄ / R;  K = f / R with f = p R / S
        fb = f_bar[d] + kb_over_r
        gR[d] = k * (k * fb - kb_over_r)
        m_bar[d] = Gm[d] + omk * ub
        p_bar[d] = Gp[d] + omk * omk * fb


@_jit_serial
def _missing_adjoint_row(u_bar, f_bar, Gm, Gp, gw, gR, m_bar, p_bar):
    for d in range(u_bar.shape[0]):
        gw[d] = 0
        gR[d] = 0
        m_bar[d] = Gm[d] + u_bar[d]
        p_bar[d] = Gp[d] + f_bar[d]


@_jit_serial
def _filter_fwd_chain(w, R, A, b, q, mu0, var0, obs, mu_f, var_f, mu_p, var_p):
    # One batch element: (T, D) sequences, mu0/var0 (D,), obs (T,) bool.
    for t in range(w.shape[0]):
        if t == 0:
            mu_p[0] = mu0
            var_p[0] = var0
        else:
            _predict_row(A[t - 1], b[t - 1], q[t - 1], mu_f[t - 1], var_f[t - 1], mu_p[t], var_p[t])
        if obs[t]:
            _update_row(w[t], R[t], mu_p[t], var_p[t], mu_f[t], var_f[t])
        else:
            mu_f[t] = mu_p[t]
            var_f[t] = var_p[t]


@_jit_serial
def _filter_bwd_chain(w, R, A, obs, mu_f, var_f, mu_p, var_p, Gu, Gf, Gm, Gp, gw, gR, gA, gb, gq, g_mu0, g_var0):
    # Adds Ā to gA (which holds the smoother's, or zeros). gb[t] = m̄_{t+1} and gq[t] = p̄_{t+1} double as the carries.
    T, D = w.shape
    u_bar = Gu[T - 1].copy()
    f_bar = Gf[T - 1].copy()
    gb[T - 1] = 0
    gq[T - 1] = 0
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            _predict_adjoint_row(A[t], gb[t], gq[t], mu_f[t], var_f[t], Gu[t], Gf[t], u_bar, f_bar, gA[t])
        m_bar = gb[t - 1] if t > 0 else g_mu0      # where m̄_t and p̄_t go: the carries of step t-1, or the prior
        p_bar = gq[t - 1] if t > 0 else g_var0
        if obs[t]:
            _update_adjoint_row(w[t], R[t], mu_p[t], var_p[t], u_bar, f_bar, Gm[t], Gp[t], gw[t], gR[t], m_bar, p_bar)
        else:
            _missing_adjoint_row(u_bar, f_bar, Gm[t], Gp[t], gw[t], gR[t], m_bar, p_bar)


# ----------------------------------------------------------------------------------------------------------------
# RTS smoother, per chain (b, d), t = T-2..0 (at T-1: mu_s = u, var_s = f):
#   J = f A / p_{t+1},  κ = max(1 - J A, 0),  mu_s = u + J (mu_s' - m_{t+1}),  var_s = f κ + J² var_s'
# Adjoint, t = 0..T-2, with σ, ν the adjoints of mu_s_t, var_s_t (σ_0 = Gs_0, ν_0 = Gv_0):
#   J̄ = σ (mu_s' - m') + 2 J ν var_s' - [κ > 0] ν f A,   ū = σ,  f̄ = ν κ + J̄ A / p',
#   Ā = J̄ f / p' - [κ > 0] ν f J,  m̄' = -J σ,  p̄' = -J̄ J / p',  σ' = Gs' + J σ,  ν' = Gv' + J² ν
# (ū_{T-1} = σ_{T-1}, f̄_{T-1} = ν_{T-1}; m̄_0 = p̄_0 = Ā_{T-1} = 0.)
# ----------------------------------------------------------------------------------------------------------------

@_jit_serial
def _rts_row(u, f, a, m1, p1, mu_s1, var_s1, mu_s, var_s):
    # m1, p1, mu_s1, var_s1: rows of step t+1.
    one, zero = u.dtype.type(1), u.dtype.type(0)
    for d in range(u.shape[0]):
        j = f[d] * a[d] / p1[d]
        kap = max(one - j * a[d], zero)
        mu_s[d] = u[d] + j * (mu_s1[d] - m1[d])
        var_s[d] = f[d] * kap + j * (j * var_s1[d])


@_jit_serial
def _rts_adjoint_row(f, a, m1, p1, mu_s1, var_s1, Gs1, Gv1, sig, nu, g_mu_f, g_var_f, g_mu_p1, g_var_p1, gA):
    # sig, nu: σ_t, ν_t in, σ_{t+1}, ν_{t+1} out.
    one, zero = f.dtype.type(1), f.dtype.type(0)
    for d in range(f.shape[0]):
        sigma, v = sig[d], nu[d]
        j = f[d] * a[d] / p1[d]
        kap = one - j * a[d]
        nu_f = v * f[d] if kap > zero else zero
        kap = max(kap, zero)
        j_bar = sigma * (mu_s1[d] - m1[d]) + (j + j) * v * var_s1[d] - nu_f * a[d]
        x = j_bar / p1[d]                                # J̄ / p'
        g_mu_f[d] = sigma
        g_var_f[d] = v * kap + x * a[d]
        g_mu_p1[d] = -j * sigma
        g_var_p1[d] = -x * j
        gA[d] = x * f[d] - nu_f * j
        sig[d] = Gs1[d] + j * sigma
        nu[d] = Gv1[d] + j * (j * v)


@_jit_serial
def _rts_fwd_chain(mu_f, var_f, mu_p, var_p, A, mu_s, var_s):
    T = mu_f.shape[0]
    mu_s[T - 1] = mu_f[T - 1]
    var_s[T - 1] = var_f[T - 1]
    for t in range(T - 2, -1, -1):
        _rts_row(mu_f[t], var_f[t], A[t], mu_p[t + 1], var_p[t + 1], mu_s[t + 1], var_s[t + 1], mu_s[t], var_s[t])


@_jit_serial
def _rts_bwd_chain(var_f, mu_p, var_p, A, mu_s, var_s, Gs, Gv, g_mu_f, g_var_f, g_mu_p, g_var_p, gA):
    # Writes the smoother's gradients of the filter's outputs (g_mu_f, g_var_f, g_mu_p, g_var_p) and of A (gA).
    T = var_f.shape[0]
    sig = Gs[0].copy()                                 # σ and ν, carried over t
    nu = Gv[0].copy()
    g_mu_p[0] = 0
    g_var_p[0] = 0
    gA[T - 1] = 0
    for t in range(T - 1):
        _rts_adjoint_row(var_f[t], A[t], mu_p[t + 1], var_p[t + 1], mu_s[t + 1], var_s[t + 1], Gs[t + 1], Gv[t + 1],
                         sig, nu, g_mu_f[t], g_var_f[t], g_mu_p[t + 1], g_var_p[t + 1], gA[t])
    g_mu_f[T - 1] = sig
    g_var_f[T - 1] = nu


@_jit_serial
def _add_into(dst, src):
    """dst += src, (T, D) arrays."""
    T, D = dst.shape
    for t in range(T):
        for d in range(D):
            dst[t, d] += src[t, d]


# The batched kernels: chains of one batch element are independent, so `prange` splits the batch over threads.

@_jit
def _kalman_filter_fwd(w, R, A, b, q, mu0, var0, mask, mu_f, var_f, mu_p, var_p):
    for i in prange(w.shape[0]):
        _filter_fwd_chain(w[i], R[i], A[i], b[i], q[i], mu0[i], var0[i], mask[i], mu_f[i], var_f[i], mu_p[i],
                          var_p[i])


@_jit
def _kalman_filter_bwd(w, R, A, mask, mu_f, var_f, mu_p, var_p, Gu, Gf, Gm, Gp, gw, gR, gA, gb, gq, g_mu0, g_var0):
    for i in prange(w.shape[0]):
        gA[i] = 0
        _filter_bwd_chain(w[i], R[i], A[i], mask[i], mu_f[i], var_f[i], mu_p[i], var_p[i], Gu[i], Gf[i], Gm[i],
                          Gp[i], gw[i], gR[i], gA[i], gb[i], gq[i], g_mu0[i], g_var0[i])


@_jit
def _rts_fwd(mu_f, var_f, mu_p, var_p, A, mu_s, var_s):
    for i in prange(mu_f.shape[0]):
        _rts_fwd_chain(mu_f[i], var_f[i], mu_p[i], var_p[i], A[i], mu_s[i], var_s[i])


@_jit
def _rts_bwd(var_f, mu_p, var_p, A, mu_s, var_s, Gs, Gv, g_mu_f, g_var_f, g_mu_p, g_var_p, gA):
    for i in prange(var_f.shape[0]):
        _rts_bwd_chain(var_f[i], mu_p[i], var_p[i], A[i], mu_s[i], var_s[i], Gs[i], Gv[i], g_mu_f[i], g_var_f[i],
                       g_mu_p[i], g_var_p[i], gA[i])


@_jit
def _filter_smoother_fwd(w, R, A, b, q, mu0, var0, mask, mu_f, var_f, mu_p, var_p, mu_s, var_s):
    for i in prange(w.shape[0]):
        _filter_fwd_chain(w[i], R[i], A[i], b[i], q[i], mu0[i], var0[i], mask[i], mu_f[i], var_f[i], mu_p[i],
                          var_p[i])
        _rts_fwd_chain(mu_f[i], var_f[i], mu_p[i], var_p[i], A[i], mu_s[i], var_s[i])


@_jit
def _filter_smoother_bwd(w, R, A, mask, mu_f, var_f, mu_p, var_p, mu_s, var_s, Gu, Gf, Gm, Gp, Gs, Gv,
                         gw, gR, gA, gb, gq, g_mu0, g_var0, n_chunks):
    # Per batch element: the smoother's adjoint into (T, D) scratch, plus the gradients that reach the filter's
    # outputs directly, then the filter's adjoint reading that scratch. One scratch set per chunk of the batch.
    Bn, T, D = w.shape
    for c in prange(n_chunks):
        tu = np.empty((T, D), w.dtype)
        tf = np.empty((T, D), w.dtype)
        tm = np.empty((T, D), w.dtype)
        tp = np.empty((T, D), w.dtype)
        for i in range(c * Bn // n_chunks, (c + 1) * Bn // n_chunks):
            _rts_bwd_chain(var_f[i], mu_p[i], var_p[i], A[i], mu_s[i], var_s[i], Gs[i], Gv[i], tu, tf, tm, tp, gA[i])
            _add_into(tu, Gu[i])
            _add_into(tf, Gf[i])
            _add_into(tm, Gm[i])
            _add_into(tp, Gp[i])
            _filter_bwd_chain(w[i], R[i], A[i], mask[i], mu_f[i], var_f[i], mu_p[i], var_p[i], tu, tf, tm, tp,
                              gw[i], gR[i], gA[i], gb[i], gq[i], g_mu0[i], g_var0[i])


def _empty(like: Tensor, shape=None) -> Tensor:
    return torch.empty(like.shape if shape is None else shape, dtype=like.dtype)


def _n_chunks(batch: int) -> int:
    return max(1, min(batch, numba.get_num_threads()))


class KalmanFilterNumba(torch.autograd.Function):
    """The filter of models/kalman.py ("numba"): apply(w, var_w, A, b, var_dyn, mu0, var0, mask) with the (B, T, D)
    sequences, mu0/var0 (B, D) and mask (B, T) bool or None -> (mu_f, var_f, mu_p, var_p), each (B, T, D).
    Where mask is False, w and var_w are never read (NaN there reaches neither values nor gradients)."""

    @staticmethod
    def forward(ctx, w, var_w, A, b, var_dyn, mu0, var0, mask):
        B, T, D = w.shape
        m = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.contiguous()
        outs = [_empty(w) for _ in range(4)]
        _set_threads()
        _kalman_filter_fwd(*(_np(x) for x in (w, var_w, A, b, var_dyn, mu0, var0)), m.numpy(),
                           *(o.numpy() for o in outs))
        ctx.save_for_backward(w, var_w, A, m, *outs)
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_mu_f, g_var_f, g_mu_p, g_var_p):
        w, var_w, A, m, mu_f, var_f, mu_p, var_p = ctx.saved_tensors
        gw, gR, gA, gb, gq = (_empty(w) for _ in range(5))
        g_mu0, g_var0 = _empty(w, w[:, 0].shape), _empty(w, w[:, 0].shape)
        _set_threads()
        _kalman_filter_bwd(*(_np(x) for x in (w, var_w, A)), m.numpy(),
                           *(_np(x) for x in (mu_f, var_f, mu_p, var_p, g_mu_f, g_var_f, g_mu_p, g_var_p)),
                           *(g.numpy() for g in (gw, gR, gA, gb, gq, g_mu0, g_var0)))
        return gw, gR, gA, gb, gq, g_mu0, g_var0, None


class RTSSmootherNumba(torch.autograd.Function):
    """The RTS smoother of models/kalman.py ("numba"): apply(mu_f, var_f, mu_p, var_p, A), each (B, T, D)
    -> (mu_s, var_s), each (B, T, D)."""

    @staticmethod
    def forward(ctx, mu_f, var_f, mu_p, var_p, A):
        mu_s, var_s = _empty(mu_f), _empty(mu_f)
        _set_threads()
        _rts_fwd(*(_np(x) for x in (mu_f, var_f, mu_p, var_p, A)), mu_s.numpy(), var_s.numpy())
        ctx.save_for_backward(var_f, mu_p, var_p, A, mu_s, var_s)
        return mu_s, var_s

    @staticmethod
    @once_differentiable
    def backward(ctx, g_mu_s, g_var_s):
        var_f, mu_p, var_p, A, mu_s, var_s = ctx.saved_tensors
        grads = [_empty(var_f) for _ in range(5)]  # mu_f, var_f, mu_p, var_p, A
        _set_threads()
        _rts_bwd(*(_np(x) for x in (var_f, mu_p, var_p, A, mu_s, var_s, g_mu_s, g_var_s)), *(g.numpy() for g in grads))
        return tuple(grads)


class KalmanFilterSmootherNumba(torch.autograd.Function):
    """Filter and smoother in one Function (models/kalman.py `kalman_filter_smoother`, "numba"): apply(w, var_w, A,
    b, var_dyn, mu0, var0, mask) -> (mu_f, var_f, mu_p, var_p, mu_s, var_s), each (B, T, D). Same values as the
    two Functions above. Forward and backward each run filter and smoother of one batch element back to back; the
    backward adds the gradients reaching the filter's outputs directly to the smoother's in a per-thread scratch,
    so no (B, T, D) intermediate is allocated."""

    @staticmethod
    def forward(ctx, w, var_w, A, b, var_dyn, mu0, var0, mask):
        B, T, D = w.shape
        m = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.contiguous()
        outs = [_empty(w) for _ in range(6)]
        _set_threads()
        _filter_smoother_fwd(*(_np(x) for x in (w, var_w, A, b, var_dyn, mu0, var0)), m.numpy(),
                             *(o.numpy() for o in outs))
        ctx.save_for_backward(w, var_w, A, m, *outs)
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *g_out):
        w, var_w, A, m, mu_f, var_f, mu_p, var_p, mu_s, var_s = ctx.saved_tensors
        gw, gR, gA, gb, gq = (_empty(w) for _ in range(5))
        g_mu0, g_var0 = _empty(w, w[:, 0].shape), _empty(w, w[:, 0].shape)
        _set_threads()
        _filter_smoother_bwd(*(_np(x) for x in (w, var_w, A)), m.numpy(),
                             *(_np(x) for x in (mu_f, var_f, mu_p, var_p, mu_s, var_s, *g_out)),
                             *(g.numpy() for g in (gw, gR, gA, gb, gq, g_mu0, g_var0)), _n_chunks(w.shape[0]))
        return gw, gR, gA, gb, gq, g_mu0, g_var0, None


# ----------------------------------------------------------------------------------------------------------------
# Mamba's selective scan (Gu & Dao 2023, Alg. 2; symbols of models/mamba.py), per batch element b:
#   Ā_t = exp(Δ_t A),  h_t = Ā_t ⊙ h_{t-1} + Δ_t u_t B_t  (h_{-1} = 0),  y_t = h_t C_t + D ⊙ u_t      (E, N) states
# The forward keeps only the running state h; the backward recomputes Ā_t and h_t of one batch element into
# per-thread scratch (T, N, E) — so no (B, T, E, N) tensor is allocated — and then runs the adjoint in reverse:
#   g_t = Ā_{t+1} ⊙ g_{t+1} + ∂y_t ⊗ C_t,   S_t = g_t ⊙ Ā_t ⊙ h_{t-1}  (0 at t = 0)
#   ∂C_t = Σ_e ∂y_t,e h_t,e    ∂B_t = Σ_e Δ_t,e u_t,e g_t,e    ∂A = Σ_{b,t} Δ_t ⊙ S_t    ∂D = Σ_{b,t} u ⊙ ∂y
#   ∂(Δu)_t = Σ_n g_t B_t,   ∂Δ_t = u_t ∂(Δu)_t + Σ_n A ⊙ S_t,   ∂u_t = Δ_t ∂(Δu)_t + D ∂y_t
# Layout: states are held as (N, E) rows, so every loop over e is contiguous and LLVM vectorises it (also the sums
# over n, accumulated per e). The two sums over e (∂C, ∂B) take their terms from the element-wise loop of g_t (into
# scratch rows) and add them in 8 partial sums (e mod 8) in a fixed order, so the sums do not depend on how a loop is
# vectorised; the backward's loops index flat rows, without a helper call or a view per (t, n): numba reference-counts
# every view, and a dot product over two arrays did not vectorise (the terms did: -37 % of the backward). Ā is
# computed for a whole step at once by `_exp_rows` (float32: a polynomial LLVM vectorises, since numba's np.exp
# is a scalar call per element and was most of the scan's time; float64: np.exp).
# Batch elements are split over `n_chunks` chunks (one per thread); ∂A and ∂D are summed per chunk in float64.
# ----------------------------------------------------------------------------------------------------------------

def _exp_rows(dt, At, a, bits):
    """a[n·E + e] <- exp(Δ_e A_n,e) for dt (E,), At (N, E), a (N·E,): Ā of one step as (N, E) rows; `bits` is int32
    scratch of a's length (used for float32 only)."""
    for n in range(At.shape[0]):
        for e in range(At.shape[1]):
            a[n * At.shape[1] + e] = np.exp(dt[e] * At[n, e])


if numba is not None:
    from numba import types
    from numba.extending import overload

    _LOG2E, _LN2_HI, _LN2_LO = np.float32(1.4426950408889634), np.float32(0.693359375), np.float32(-2.12194440e-4)
    _C = tuple(np.float32(1.0 / np.prod(np.arange(1, j + 1, dtype=np.float64))) for j in range(8))  # 1/j!

    @_jit_serial
    def _exp_rows_f32(dt, At, a, bits):
        """`_exp_rows` in float32, relative error <= 1.5e-7 (tests/test_mamba.py; np.exp: 6e-8), as a polynomial LLVM
        vectorises: v = Δ_e A_n,e = k ln2 + r with |r| <= ln2/2 (Cody-Waite: ln2 split in a part exact in float32
        and the rest), e^r by its degree-7 Taylor polynomial, 2^k from its float32 bit pattern (k + 127) << 23,
        written to `bits` and multiplied in by a second loop through a float32 view. v is clamped to [-87, 88]
        (exp: 1.6e-38 to 1.7e38, the normal float32 range); NaN stays NaN."""
        N, E = At.shape
        c0, c1, c2, c3, c4, c5, c6, c7 = _C
        for n in range(N):
            An, an, bn = At[n], a[n * E:(n + 1) * E], bits[n * E:(n + 1) * E]
            for e in range(E):
                v = dt[e] * An[e]
                v = np.float32(-87.0) if v < np.float32(-87.0) else v
                v = np.float32(88.0) if v > np.float32(88.0) else v
                ki = np.int32(v * _LOG2E + np.float32(126.5))        # floor(v log2 e + 1/2) + 126, >= 0
                k = np.float32(ki) - np.float32(126.0)
                r = v - k * _LN2_HI - k * _LN2_LO
                an[e] = ((((((c7 * r + c6) * r + c5) * r + c4) * r + c3) * r + c2) * r + c1) * r + c0
                bn[e] = (ki + np.int32(1)) << np.int32(23)          # the float32 2^k
        two_k = bits.view(np.float32)
        for j in range(a.shape[0]):
            a[j] *= two_k[j]

    _exp_rows_loop = _jit_serial(_exp_rows)   # other dtypes: np.exp, as written above

    @overload(_exp_rows)
    def _exp_rows_overload(dt, At, a, bits):
        if a.dtype == types.float32:
            return lambda dt, At, a, bits: _exp_rows_f32(dt, At, a, bits)
        return lambda dt, At, a, bits: _exp_rows_loop(dt, At, a, bits)


@_jit_serial
def _scan_fwd_chain(u, delta, At, Bm, C, D, y, h, a, bits):
    """One batch element: u, delta, y (T, E); At (N, E); Bm, C (T, N); scratch h (N, E), a (N·E,), bits (N·E,)."""
    T, E = u.shape
    N = At.shape[0]
    h[:] = 0
    for t in range(T):
        dt, ut, yt = delta[t], u[t], y[t]
        _exp_rows(dt, At, a, bits)
        for e in range(E):
            yt[e] = D[e] * ut[e]
        for n in range(N):
            bn, cn = Bm[t, n], C[t, n]
            for e in range(E):
                x = a[n * E + e] * h[n, e] + (dt[e] * ut[e]) * bn
                h[n, e] = x
                yt[e] += x * cn


@_jit_serial
def _scan_recompute(u, delta, At, Bm, dA, h, bits):
    """Ā_t and h_t of one batch element into dA, h (T, N·E): u, delta (T, E); At (N, E); Bm (T, N)."""
    T, E = u.shape
    N = At.shape[0]
    for t in range(T):
        dt, ut, at, ht = delta[t], u[t], dA[t], h[t]
        _exp_rows(dt, At, at, bits)
        for n in range(N):
            bn = Bm[t, n]
            if t > 0:
                hp = h[t - 1]
                for e in range(E):
                    ht[n * E + e] = at[n * E + e] * hp[n * E + e] + (dt[e] * ut[e]) * bn
            else:
                for e in range(E):
                    ht[n * E + e] = (dt[e] * ut[e]) * bn


@_jit_serial
def _scan_bwd_chain(u, delta, At, Bm, C, D, gy, gu, gdelta, gB, gC, gA, gD, dA, h, g, bits, du, gdu, sa, pc, pb):
    """One batch element: u, delta, gy, gu, gdelta (T, E); At (N, E); Bm, C, gB, gC (T, N); accumulates into gA
    (N·E,) and gD (E,) (float64); scratch dA, h (T, N·E), g, bits (N·E,), du, gdu, sa, pc, pb (E,)."""
    T, E = u.shape
    N = At.shape[0]
    E8 = E - E % 8
    zero = u.dtype.type(0)
    _scan_recompute(u, delta, At, Bm, dA, h, bits)
    g[:] = 0
    for t in range(T - 1, -1, -1):                                   # the adjoint, in reverse
        for e in range(E):
            du[e] = delta[t, e] * u[t, e]
            gdu[e] = 0
            sa[e] = 0
        for n in range(N):
            lo = n * E
            cn, bn = C[t, n], Bm[t, n]
            # g_t = Ā_{t+1} ⊙ g_{t+1} + ∂y_t C_t,n, and the terms of ∂C_t,n = Σ_e ∂y_t,e h_t,e and ∂B_t,n = Σ_e
            # (Δu)_t,e g_t,e into pc, pb (element-wise: vectorised)
            if t + 1 < T:
                for e in range(E):
                    ge = g[lo + e] * dA[t + 1, lo + e] + gy[t, e] * cn
                    g[lo + e] = ge
                    pc[e] = gy[t, e] * h[t, lo + e]
                    pb[e] = du[e] * ge
            else:
                for e in range(E):
                    ge = gy[t, e] * cn
                    g[lo + e] = ge
                    pc[e] = gy[t, e] * h[t, lo + e]
                    pb[e] = du[e] * ge
            # the two sums, each in 8 partial sums (e mod 8) added in a fixed order: independent of vectorisation
            c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = zero
            b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = zero
            for j in range(0, E8, 8):
                c0 += pc[j]
                c1 += pc[j + 1]
                c2 += pc[j + 2]
                c3 += pc[j + 3]
                c4 += pc[j + 4]
                c5 += pc[j + 5]
                c6 += pc[j + 6]
                c7 += pc[j + 7]
                b0 += pb[j]
                b1 += pb[j + 1]
                b2 += pb[j + 2]
                b3 += pb[j + 3]
                b4 += pb[j + 4]
                b5 += pb[j + 5]
                b6 += pb[j + 6]
                b7 += pb[j + 7]
            for j in range(E8, E):       # the last E mod 8 go to partial sums 0..6 (a padded row: 5-10 % slower)
                r = j - E8
                if r == 0:
                    c0 += pc[j]
                    b0 += pb[j]
                elif r == 1:
                    c1 += pc[j]
                    b1 += pb[j]
                elif r == 2:
                    c2 += pc[j]
                    b2 += pb[j]
                elif r == 3:
                    c3 += pc[j]
                    b3 += pb[j]
                elif r == 4:
                    c4 += pc[j]
                    b4 += pb[j]
                elif r == 5:
                    c5 += pc[j]
                    b5 += pb[j]
                else:
                    c6 += pc[j]
                    b6 += pb[j]
            gC[t, n] = ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7))
            gB[t, n] = ((b0 + b1) + (b2 + b3)) + ((b4 + b5) + (b6 + b7))
            if t > 0:       # ∂(Δu) += g B_n;  S = g ⊙ Ā_t ⊙ h_{t-1}:  ∂A_n += Δ ⊙ S,  Σ_n A ⊙ S += A_n ⊙ S
                for e in range(E):
                    ge = g[lo + e]
                    gdu[e] += ge * bn
                    s = ge * dA[t, lo + e] * h[t - 1, lo + e]
                    gA[lo + e] += delta[t, e] * s
                    sa[e] += At[n, e] * s
            else:
                for e in range(E):
                    gdu[e] += g[lo + e] * bn
        for e in range(E):
            gdelta[t, e] = gdu[e] * u[t, e] + sa[e]
            gu[t, e] = gdu[e] * delta[t, e] + D[e] * gy[t, e]
            gD[e] += gy[t, e] * u[t, e]


@_jit
def _selective_scan_fwd(u, delta, A, Bm, C, D, y, n_chunks):
    Bn, T, E = u.shape
    N = A.shape[1]
    At = np.ascontiguousarray(A.T)               # (N, E)
    for c in prange(n_chunks):
        h = np.empty((N, E), u.dtype)
        a = np.empty(N * E, u.dtype)             # Ā_t as (N, E) rows
        bits = np.empty(N * E, np.int32)
        for i in range(c, Bn, n_chunks):
            _scan_fwd_chain(u[i], delta[i], At, Bm[i], C[i], D, y[i], h, a, bits)


@_jit
def _selective_scan_bwd(u, delta, A, Bm, C, D, gy, gu, gdelta, gB, gC, gA_part, gD_part, n_chunks):
    Bn, T, E = u.shape
    N = A.shape[1]
    At = np.ascontiguousarray(A.T)               # (N, E)
    for c in prange(n_chunks):
        gA = np.zeros(N * E, np.float64)         # this chunk's ∂A, (N, E)
        gD = np.zeros(E, np.float64)
        dA, h = np.empty((T, N * E), u.dtype), np.empty((T, N * E), u.dtype)
        g, bits = np.empty(N * E, u.dtype), np.empty(N * E, np.int32)
        du, gdu, sa = np.empty(E, u.dtype), np.empty(E, u.dtype), np.empty(E, u.dtype)
        pc, pb = np.empty(E, u.dtype), np.empty(E, u.dtype)
        for i in range(c, Bn, n_chunks):
            _scan_bwd_chain(u[i], delta[i], At, Bm[i], C[i], D, gy[i], gu[i], gdelta[i], gB[i], gC[i], gA, gD,
                            dA, h, g, bits, du, gdu, sa, pc, pb)
        for n in range(N):
            for e in range(E):
                gA_part[c, e, n] = gA[n * E + e]
        for e in range(E):
            gD_part[c, e] = gD[e]


class SelectiveScanNumba(torch.autograd.Function):
    """The selective scan of models/mamba.py ("numba"): apply(u, delta, A, B, C, D) with u, delta (B, T, E),
    A (E, N), B, C (B, T, N), D (E,) -> y (B, T, E). Saves only its inputs (the backward recomputes the states)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D):
        xs = [x.detach().contiguous() for x in (u, delta, A, B, C, D)]
        y = _empty(xs[0])
        n_chunks = min(torch.get_num_threads(), u.shape[0])
        _set_threads()
        _selective_scan_fwd(*(x.numpy() for x in xs), y.numpy(), n_chunks)
        ctx.save_for_backward(*xs)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        u, delta, A, B, C, D = ctx.saved_tensors
        # One chunk per batch element, whatever the thread count: the gradients of the shared A and D are summed over
        # the chunks, so a partition by threads would make them depend (in the last bits) on the thread count, and a
        # run resumed with another one would not repeat its curve exactly.
        n_chunks = u.shape[0]
        gu, gdelta, gB, gC = _empty(u), _empty(u), _empty(B), _empty(B)
        gA_part = torch.empty((n_chunks, *A.shape), dtype=torch.float64)
        gD_part = torch.empty((n_chunks, *D.shape), dtype=torch.float64)
        _set_threads()
        _selective_scan_bwd(*(x.numpy() for x in (u, delta, A, B, C, D)), _np(grad_y),
                            *(x.numpy() for x in (gu, gdelta, gB, gC, gA_part, gD_part)), n_chunks)
        return gu, gdelta, gA_part.sum(0).to(A.dtype), gB, gC, gD_part.sum(0).to(D.dtype)
