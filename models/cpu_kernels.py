"""Compiled CPU kernels (numba) for the two element-wise recurrences over time in kalbench: the diagonal Kalman
filter + RTS smoother (models/kalman.py, method "numba") and Mamba's selective scan (models/mamba.py, method
"numba"), each forward and its analytic backward, wrapped in `torch.autograd.Function`s.

Why: both recurrences do a few flops per element and step. A torch loop over T issues tens of small ops per step
and is bound by their overhead; here each direction is one compiled loop: `prange` over the batch (the chains of
one batch element are independent), a sequential loop over T inside, and the innermost loop over the contiguous
last dimension(s), which LLVM vectorises. Temporaries live in registers; outputs are written once.

Same equations, same order of operations per element as the torch "fused" loop (models/kalman.py) and
`SelectiveScanLoop` (models/mamba.py); the adjoint recursions are written out at each kernel. Constants are cast
to the input's dtype so float32 stays float32 arithmetic (fastmath off: IEEE semantics, no reassociation).

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
    return njit(parallel=True, cache=True, fastmath=False)(fn)


# ----------------------------------------------------------------------------------------------------------------
# Kalman filter (H = I, diagonal), per chain (b, d); notation of models/kalman.py:
#   p_0 = var0, m_0 = mu0;  p_t = A_{t-1}² f_{t-1} + q_{t-1},  m_t = A_{t-1} u_{t-1} + b_{t-1}
#   observed: S = p + R, K = p / S, f = K R (= p R / S), u = m + K (w - m);  missing: f = p, u = m (w, R unread)
# Adjoint, t = T-1..0, with ū, f̄, m̄, p̄ the adjoints of u, f, m, p (Gu, Gf, Gm, Gp from the outputs):
#   ū = Gu + A m̄_{t+1},  f̄ = Gf + A² p̄_{t+1},  Ā_t = m̄_{t+1} u + 2 A f p̄_{t+1},  b̄_t = m̄_{t+1},  q̄_t = p̄_{t+1}
#   observed (K = f / R, so K's dependence on p and R runs through f):  w̄ = K ū,  K̄ = ū (w - m),
#       f̄ += K̄ / R,  R̄ = K (K f̄ - K̄ / R),  m̄ = Gm + (1 - K) ū,  p̄ = Gp + (1 - K)² f̄      (1 - K = R / S)
#   missing: w̄ = R̄ = 0, m̄ = Gm + ū, p̄ = Gp + f̄.   Ā, b̄, q̄ at t = T-1 are 0 (the last transition is unused).
# ----------------------------------------------------------------------------------------------------------------

@_jit
def _kalman_filter_fwd(w, R, A, b, q, mu0, var0, mask, mu_f, var_f, mu_p, var_p):
    Bn, T, D = w.shape
    for i in prange(Bn):
        for t in range(T):
            obs = mask[i, t]
            for d in range(D):
                if t == 0:
                    p, m = var0[i, d], mu0[i, d]
                else:
                    a = A[i, t - 1, d]
                    p = a * a * var_f[i, t - 1, d] + q[i, t - 1, d]
                    m = a * mu_f[i, t - 1, d] + b[i, t - 1, d]
                mu_p[i, t, d] = m
                var_p[i, t, d] = p
                if obs:
                    r = R[i, t, d]
                    k = p / (p + r)
                    var_f[i, t, d] = k * r
                    mu_f[i, t, d] = m + k * (w[i, t, d] - m)
                else:
                    var_f[i, t, d] = p
                    mu_f[i, t, d] = m


@_jit
def _kalman_filter_bwd(w, R, A, mask, mu_f, var_f, mu_p, var_p, Gu, Gf, Gm, Gp, gw, gR, gA, gb, gq, g_mu0, g_var0,
                       add_to_gA):
    # gb[:, t] = m̄_{t+1} and gq[:, t] = p̄_{t+1} (t < T-1) double as the carries of the adjoint recursion.
    # add_to_gA: gA holds another gradient of A (the smoother's) and this one is added to it.
    Bn, T, D = w.shape
    for i in prange(Bn):
        for t in range(T - 1, -1, -1):
            obs = mask[i, t]
            for d in range(D):
                f, u = var_f[i, t, d], mu_f[i, t, d]
                if t + 1 < T:
                    a = A[i, t, d]
                    mb, pb = gb[i, t, d], gq[i, t, d]
                    u_bar = Gu[i, t, d] + a * mb
                    f_bar = Gf[i, t, d] + a * a * pb
                    ga = mb * u + (a + a) * f * pb
                    gA[i, t, d] = gA[i, t, d] + ga if add_to_gA else ga
                else:
                    u_bar, f_bar = Gu[i, t, d], Gf[i, t, d]
                    if not add_to_gA:
                        gA[i, t, d] = 0
                    gb[i, t, d] = 0
                    gq[i, t, d] = 0
                if obs:
                    p, m, r = var_p[i, t, d], mu_p[i, t, d], R[i, t, d]
                    k = p / (p + r)
                    omk = r / (p + r)                       # 1 - K
                    gw[i, t, d] = k * u_bar
                    kb_over_r = u_bar * (w[i, t, d] - m) / r  # K̄ / R;  K = f / R with f = p R / S
                    f_bar = f_bar + kb_over_r
                    gR[i, t, d] = k * (k * f_bar - kb_over_r)
                    m_bar = Gm[i, t, d] + omk * u_bar
                    p_bar = Gp[i, t, d] + omk * omk * f_bar
                else:
                    gw[i, t, d] = 0
                    gR[i, t, d] = 0
                    m_bar = Gm[i, t, d] + u_bar
                    p_bar = Gp[i, t, d] + f_bar
                if t > 0:
                    gb[i, t - 1, d] = m_bar
                    gq[i, t - 1, d] = p_bar
                else:
                    g_mu0[i, d] = m_bar
                    g_var0[i, d] = p_bar


# ----------------------------------------------------------------------------------------------------------------
# RTS smoother, per chain (b, d), t = T-2..0 (at T-1: mu_s = u, var_s = f):
#   J = f A / p_{t+1},  κ = max(1 - J A, 0),  mu_s = u + J (mu_s' - m_{t+1}),  var_s = f κ + J² var_s'
# Adjoint, t = 0..T-2, with σ, ν the adjoints of mu_s_t, var_s_t (σ_0 = Gs_0, ν_0 = Gv_0):
#   J̄ = σ (mu_s' - m') + 2 J ν var_s' - [κ > 0] ν f A,   ū = σ,  f̄ = ν κ + J̄ A / p',
#   Ā = J̄ f / p' - [κ > 0] ν f J,  m̄' = -J σ,  p̄' = -J̄ J / p',  σ' = Gs' + J σ,  ν' = Gv' + J² ν
# (ū_{T-1} = σ_{T-1}, f̄_{T-1} = ν_{T-1}; m̄_0 = p̄_0 = Ā_{T-1} = 0.)
# ----------------------------------------------------------------------------------------------------------------

@_jit
def _rts_fwd(mu_f, var_f, mu_p, var_p, A, mu_s, var_s):
    Bn, T, D = mu_f.shape
    one, zero = mu_f.dtype.type(1), mu_f.dtype.type(0)
    for i in prange(Bn):
        for d in range(D):
            mu_s[i, T - 1, d] = mu_f[i, T - 1, d]
            var_s[i, T - 1, d] = var_f[i, T - 1, d]
        for t in range(T - 2, -1, -1):
            for d in range(D):
                f, a = var_f[i, t, d], A[i, t, d]
                j = f * a / var_p[i, t + 1, d]
                kap = max(one - j * a, zero)
                mu_s[i, t, d] = mu_f[i, t, d] + j * (mu_s[i, t + 1, d] - mu_p[i, t + 1, d])
                var_s[i, t, d] = f * kap + j * (j * var_s[i, t + 1, d])


@_jit
def _rts_bwd(var_f, mu_p, var_p, A, mu_s, var_s, Gs, Gv, g_mu_f, g_var_f, g_mu_p, g_var_p, gA, add_in, Gu, Gf, Gm, Gp):
    # σ and ν are carried in (D,) scratch per batch element. add_in: the gradients Gu, Gf, Gm, Gp of the filter's
    # outputs (mu_f, var_f, mu_p, var_p) from elsewhere are added to the smoother's (filter + smoother in one
    # Function: no separate accumulation pass); otherwise these four arguments are not read.
    Bn, T, D = var_f.shape
    one, zero = var_f.dtype.type(1), var_f.dtype.type(0)
    for i in prange(Bn):
        sig = np.empty(D, var_f.dtype)
        nu = np.empty(D, var_f.dtype)
        for d in range(D):
            sig[d] = Gs[i, 0, d]
            nu[d] = Gv[i, 0, d]
            g_mu_p[i, 0, d] = Gm[i, 0, d] if add_in else zero
            g_var_p[i, 0, d] = Gp[i, 0, d] if add_in else zero
            gA[i, T - 1, d] = zero
        for t in range(T - 1):
            for d in range(D):
                f, a, p1 = var_f[i, t, d], A[i, t, d], var_p[i, t + 1, d]
                sigma, v = sig[d], nu[d]
                j = f * a / p1
                kap = one - j * a
                nu_f = v * f if kap > zero else zero
                kap = max(kap, zero)
                j_bar = sigma * (mu_s[i, t + 1, d] - mu_p[i, t + 1, d]) + (j + j) * v * var_s[i, t + 1, d] \
                    - nu_f * a
                x = j_bar / p1                                   # J̄ / p'
                gf = v * kap + x * a
                gm1 = -j * sigma
                gp1 = -x * j
                if add_in:
                    g_mu_f[i, t, d] = sigma + Gu[i, t, d]
                    g_var_f[i, t, d] = gf + Gf[i, t, d]
                    g_mu_p[i, t + 1, d] = gm1 + Gm[i, t + 1, d]
                    g_var_p[i, t + 1, d] = gp1 + Gp[i, t + 1, d]
                else:
                    g_mu_f[i, t, d] = sigma
                    g_var_f[i, t, d] = gf
                    g_mu_p[i, t + 1, d] = gm1
                    g_var_p[i, t + 1, d] = gp1
                gA[i, t, d] = x * f - nu_f * j
                sig[d] = Gs[i, t + 1, d] + j * sigma
                nu[d] = Gv[i, t + 1, d] + j * (j * v)
        for d in range(D):
            g_mu_f[i, T - 1, d] = sig[d] + Gu[i, T - 1, d] if add_in else sig[d]
            g_var_f[i, T - 1, d] = nu[d] + Gf[i, T - 1, d] if add_in else nu[d]



def _empty(like: Tensor, shape=None) -> Tensor:
    return torch.empty(like.shape if shape is None else shape, dtype=like.dtype)


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
                           *(g.numpy() for g in (gw, gR, gA, gb, gq, g_mu0, g_var0)), False)
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
        unused = np.empty((0, 0, 0), grads[0].numpy().dtype)
        _rts_bwd(*(_np(x) for x in (var_f, mu_p, var_p, A, mu_s, var_s, g_mu_s, g_var_s)),
                 *(g.numpy() for g in grads), False, unused, unused, unused, unused)
        return tuple(grads)


class KalmanFilterSmootherNumba(torch.autograd.Function):
    """Filter and smoother in one Function (models/kalman.py `kalman_filter_smoother`, "numba"): apply(w, var_w, A,
    b, var_dyn, mu0, var0, mask) -> (mu_f, var_f, mu_p, var_p, mu_s, var_s), each (B, T, D). Same values as the
    two Functions above; its backward runs the smoother's adjoint, adding the gradients of the filter's outputs
    inside the kernel, then the filter's, adding the gradient of A to the smoother's: no separate accumulation
    passes over (B, T, D) tensors."""

    @staticmethod
    def forward(ctx, w, var_w, A, b, var_dyn, mu0, var0, mask):
        B, T, D = w.shape
        m = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.contiguous()
        outs = [_empty(w) for _ in range(6)]
        xs = [_np(x) for x in (w, var_w, A, b, var_dyn, mu0, var0)]
        _set_threads()
        _kalman_filter_fwd(*xs, m.numpy(), *(o.numpy() for o in outs[:4]))
        _rts_fwd(*(o.numpy() for o in outs[:4]), xs[2], outs[4].numpy(), outs[5].numpy())
        ctx.save_for_backward(w, var_w, A, m, *outs)
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *g_out):
        w, var_w, A, m, mu_f, var_f, mu_p, var_p, mu_s, var_s = ctx.saved_tensors
        G = [_np(g) for g in g_out]                               # mu_f, var_f, mu_p, var_p, mu_s, var_s
        gf = [_empty(w) for _ in range(4)]                        # total gradients of mu_f, var_f, mu_p, var_p
        gw, gR, gA, gb, gq = (_empty(w) for _ in range(5))
        g_mu0, g_var0 = _empty(w, w[:, 0].shape), _empty(w, w[:, 0].shape)
        f_np = [_np(x) for x in (mu_f, var_f, mu_p, var_p)]
        A_np = _np(A)
        _set_threads()
        _rts_bwd(f_np[1], f_np[2], f_np[3], A_np, _np(mu_s), _np(var_s), G[4], G[5],
                 *(g.numpy() for g in gf), gA.numpy(), True, *G[:4])
        _kalman_filter_bwd(_np(w), _np(var_w), A_np, m.numpy(), *f_np, *(g.numpy() for g in gf),
                           *(g.numpy() for g in (gw, gR, gA, gb, gq, g_mu0, g_var0)), True)
        return gw, gR, gA, gb, gq, g_mu0, g_var0, None


# ----------------------------------------------------------------------------------------------------------------
# Mamba's selective scan (Gu & Dao 2023, Alg. 2; symbols of models/mamba.py), per batch element b:
#   Ā_t = exp(Δ_t A),  h_t = Ā_t ⊙ h_{t-1} + Δ_t u_t B_t  (h_{-1} = 0),  y_t = h_t C_t + D ⊙ u_t      (E, N) states
# The forward keeps only the running state h (E, N); the backward recomputes Ā_t and h_t of one batch element into
# per-thread scratch (T, E, N) — so no (B, T, E, N) tensor is allocated — and then runs the adjoint in reverse:
#   g_t = Ā_{t+1} ⊙ g_{t+1} + ∂y_t ⊗ C_t,   S_t = g_t ⊙ Ā_t ⊙ h_{t-1}  (0 at t = 0)
#   ∂C_t = Σ_e ∂y_t,e h_t,e    ∂B_t = Σ_e Δ_t,e u_t,e g_t,e    ∂A = Σ_{b,t} Δ_t ⊙ S_t    ∂D = Σ_{b,t} u ⊙ ∂y
#   ∂(Δu)_t = Σ_n g_t B_t,   ∂Δ_t = u_t ∂(Δu)_t + Σ_n A ⊙ S_t,   ∂u_t = Δ_t ∂(Δu)_t + D ∂y_t
# Batch elements are split over `n_chunks` chunks (one per thread); ∂A and ∂D are summed per chunk in float64.
# ----------------------------------------------------------------------------------------------------------------

@_jit
def _selective_scan_fwd(u, delta, A, Bm, C, D, y, n_chunks):
    Bn, T, E = u.shape
    N = A.shape[1]
    for c in prange(n_chunks):
        h = np.empty((E, N), u.dtype)
        for i in range(c, Bn, n_chunks):
            h[:] = 0
            for t in range(T):
                for e in range(E):
                    dt, ut = delta[i, t, e], u[i, t, e]
                    du = dt * ut
                    acc = D[e] * ut
                    for n in range(N):
                        x = np.exp(dt * A[e, n]) * h[e, n] + du * Bm[i, t, n]
                        h[e, n] = x
                        acc += x * C[i, t, n]
                    y[i, t, e] = acc


@_jit
def _selective_scan_bwd(u, delta, A, Bm, C, D, gy, gu, gdelta, gB, gC, gA_part, gD_part, n_chunks):
    Bn, T, E = u.shape
    N = A.shape[1]
    zero = u.dtype.type(0)
    for c in prange(n_chunks):
        dA = np.empty((T, E, N), u.dtype)   # Ā_t of one batch element
        h = np.empty((T, E, N), u.dtype)    # h_t
        g = np.empty((E, N), u.dtype)       # the adjoint g_t
        for n in range(N):
            for e in range(E):
                gA_part[c, e, n] = 0.0
        for e in range(E):
            gD_part[c, e] = 0.0
        for i in range(c, Bn, n_chunks):
            for t in range(T):                                          # recompute Ā_t, h_t
                for e in range(E):
                    dt = delta[i, t, e]
                    du = dt * u[i, t, e]
                    for n in range(N):
                        a = np.exp(dt * A[e, n])
                        dA[t, e, n] = a
                        h[t, e, n] = (a * h[t - 1, e, n] if t > 0 else zero) + du * Bm[i, t, n]
            g[:] = 0
            for t in range(T - 1, -1, -1):
                for n in range(N):
                    gB[i, t, n] = 0
                    gC[i, t, n] = 0
                for e in range(E):
                    dt, ut, gye = delta[i, t, e], u[i, t, e], gy[i, t, e]
                    du = dt * ut
                    gdu = zero
                    sa = zero
                    for n in range(N):
                        ge = (g[e, n] * dA[t + 1, e, n] if t + 1 < T else zero) + gye * C[i, t, n]
                        g[e, n] = ge
                        gC[i, t, n] += gye * h[t, e, n]
                        gB[i, t, n] += du * ge
                        gdu += ge * Bm[i, t, n]
                        if t > 0:
                            s = ge * dA[t, e, n] * h[t - 1, e, n]
                            gA_part[c, e, n] += dt * s
                            sa += A[e, n] * s
                    gdelta[i, t, e] = gdu * ut + sa
                    gu[i, t, e] = gdu * dt + D[e] * gye
                    gD_part[c, e] += gye * ut


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
