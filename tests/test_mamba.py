"""Tests of models/mamba.py against independent references.

References: a naive per-timestep loop written here (explicit zero-padded causal conv taps and the SSM
recurrence h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t), sequence mode vs step mode, a naive loop for the chunked
linear recurrence, and `mamba_ssm`'s own `selective_scan_ref` / kernels where `mamba_ssm` is importable.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.mamba import (Mamba, MambaBlock, MambaSSMKernels, MambaStack, linear_recurrence, load_mamba_ssm,
                          selective_scan)

TOL64 = dict(rtol=1e-9, atol=1e-10)


def _kernels_or_skip():
    kernels, why = load_mamba_ssm()
    if kernels is None:
        pytest.skip(f"mamba_ssm not importable here: {why}")
    return kernels


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Move every parameter away from its structured init (A = 1..N, D = 1, LayerNorm = identity), so the
    comparisons cannot pass by a coincidence of the init. Keeps Δ in a range where the decay matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.endswith("dt_proj.bias"):
                p.add_(0.5 * noise).add_(2.0)          # softplus(.) ~ 0.2..3: strong, varied decay
            elif name.endswith("A_log"):
                p.add_(0.3 * noise)
            else:
                p.add_(0.2 * noise)


def _make_block(d_model=8, d_state=4, d_conv=4, expand=2, dropout=0.0, seed=0) -> MambaBlock:
    torch.manual_seed(seed)
    block = MambaBlock(d_model, d_state=d_state, d_conv=d_conv, expand=expand, dropout=dropout,
                       backend="torch").double()
    _randomize(block, seed + 100)
    return block


def naive_block(block: MambaBlock, x: torch.Tensor) -> torch.Tensor:
    """x + Mamba(LayerNorm(x)) by a plain loop over time and conv taps. x: (B, T, d_model)."""
    m = block.mixer
    Bsz, T, _ = x.shape
    E, N, K, R = m.d_inner, m.d_state, m.d_conv, m.dt_rank
    xn = F.layer_norm(x, (m.d_model,), block.norm.weight, block.norm.bias, block.norm.eps)
    xz = xn @ m.in_proj.weight.T
    u_raw, z = xz[..., :E], xz[..., E:]
    w = m.conv1d.weight[:, 0, :]                                   # (E, K); tap k multiplies u_{t-(K-1)+k}
    A = -torch.exp(m.A_log)
    h = [x.new_zeros(Bsz, N) for _ in range(E)]                    # one state per channel
    outs = []
    for t in range(T):
        conv = m.conv1d.bias.expand(Bsz, E)
        for k in range(K):
            s = t - (K - 1) + k
            if s >= 0:
                conv = conv + w[:, k] * u_raw[:, s]
        u = conv * torch.sigmoid(conv)                             # SiLU
        proj = u @ m.x_proj.weight.T
        s_dt, Bt, Ct = proj[:, :R], proj[:, R:R + N], proj[:, R + N:]
        delta = torch.log1p(torch.exp(s_dt @ m.dt_proj.weight.T + m.dt_proj.bias))   # softplus
        for e in range(E):
            h[e] = torch.exp(delta[:, e:e + 1] * A[e]) * h[e] + (delta[:, e:e + 1] * u[:, e:e + 1]) * Bt
        y = torch.stack([(h[e] * Ct).sum(-1) for e in range(E)], dim=-1) + m.D * u
        y = y * z[:, t] * torch.sigmoid(z[:, t])
        outs.append(y @ m.out_proj.weight.T)
    return x + torch.stack(outs, dim=1)


# ----------------------------------------------------------------------------------------------------------
# The pure PyTorch path
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 2, 7, 70])
def test_torch_path_matches_naive_loop(T):
    block = _make_block(seed=T)
    x = torch.randn(3, T, 8, dtype=torch.float64)
    torch.testing.assert_close(block(x), naive_block(block, x), **TOL64)


@pytest.mark.parametrize("d_conv,expand,d_state", [(1, 1, 3), (3, 1.5, 5)])
def test_torch_path_matches_naive_loop_other_shapes(d_conv, expand, d_state):
    block = _make_block(d_model=6, d_state=d_state, d_conv=d_conv, expand=expand, seed=1)
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    torch.testing.assert_close(block(x), naive_block(block, x), **TOL64)


def test_chunked_selective_scan_equals_unchunked_and_its_gradients():
    torch.manual_seed(2)
    Bsz, T, E, N = 2, 37, 5, 3
    u, dt = torch.randn(Bsz, T, E, dtype=torch.float64), torch.randn(Bsz, T, E, dtype=torch.float64)
    B, C = (torch.randn(Bsz, T, N, dtype=torch.float64, requires_grad=True) for _ in range(2))
    A, D = -torch.rand(E, N, dtype=torch.float64) * 3, torch.randn(E, dtype=torch.float64)
    w = torch.randn(Bsz, T, E, dtype=torch.float64)
    outs = [selective_scan(u, F.softplus(dt), A, B, C, D, chunk_size=c, method="parallel") for c in (None, 8, 5)]
    grads = [torch.autograd.grad((y * w).sum(), (B, C)) for y in outs]
    for y, g in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(y, outs[0], **TOL64)
        torch.testing.assert_close(g, grads[0], **TOL64)


def test_gradients_finite_and_match_naive_loop():
    block = _make_block(seed=3)
    x = torch.randn(2, 11, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 11, 8, dtype=torch.float64)
    params = [x] + list(block.parameters())
    g_fast = torch.autograd.grad((block(x) * w).sum(), params)
    g_ref = torch.autograd.grad((naive_block(block, x) * w).sum(), params)
    names = ["x"] + [n for n, _ in block.named_parameters()]
    for name, a, b in zip(names, g_fast, g_ref):
        assert torch.isfinite(a).all(), name
        assert b.abs().max() > 0, f"reference gradient of {name} is zero: the check would be empty"
        torch.testing.assert_close(a, b, **TOL64, msg=lambda m: f"{name}: {m}")


def _naive_selective_scan(u, delta, A, B, C, D):
    """h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t, y_t = h_t C_t + D u_t by a plain autograd loop over time."""
    h, ys = u.new_zeros(u.shape[0], *A.shape), []
    for t in range(u.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * u[:, t])
    return torch.stack(ys, 1)


def _scan_inputs(Bsz, T, E, N, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(Bsz, E, T, generator=g, dtype=dtype).transpose(1, 2)      # non-contiguous, as in the mixer
    delta = F.softplus(torch.randn(Bsz, T, E, generator=g, dtype=dtype))
    A = -torch.rand(E, N, generator=g, dtype=dtype) * 3 - 0.1
    B, C = (torch.randn(Bsz, T, N, generator=g, dtype=dtype) for _ in range(2))
    D = torch.randn(E, generator=g, dtype=dtype)
    w = torch.randn(Bsz, T, E, generator=g, dtype=dtype)
    return [x.requires_grad_() for x in (u, delta, A, B, C, D)], w


@pytest.mark.parametrize("T", [1, 2, 17])
def test_loop_and_parallel_scans_match_naive_loop_values_and_gradients(T):
    xs, w = _scan_inputs(3, T, 5, 4, torch.float64, seed=T)
    ref = _naive_selective_scan(*xs)
    ref_grads = torch.autograd.grad((ref * w).sum(), xs)
    for method in ("loop", "numba", "parallel"):
        y = selective_scan(*xs, method=method)
        grads = torch.autograd.grad((y * w).sum(), xs, allow_unused=True, materialize_grads=True)
        torch.testing.assert_close(y, ref, **TOL64)
        for name, a, b in zip("u delta A B C D".split(), grads, ref_grads):
            if not (name == "A" and T == 1):   # with h_0 = 0 the first step does not see A
                assert b.abs().max() > 0, f"reference gradient of {name} is zero: the check would be empty"
            torch.testing.assert_close(a, b, **TOL64, msg=lambda m: f"{method}, {name}: {m}")


@pytest.mark.parametrize("method", ["loop", "numba"])
def test_loop_scan_equals_parallel_scan_in_float32_at_model_size(method):
    xs, w = _scan_inputs(4, 64, 64, 16, torch.float32, seed=9)
    outs = {m: selective_scan(*xs, method=m) for m in (method, "parallel")}
    grads = {m: torch.autograd.grad((y * w).sum(), xs) for m, y in outs.items()}
    torch.testing.assert_close(outs[method], outs["parallel"], rtol=1e-5, atol=1e-5)
    for name, a, b in zip("u delta A B C D".split(), grads[method], grads["parallel"]):
        scale = b.abs().max()
        torch.testing.assert_close(a / scale, b / scale, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("T", [1, 3, 8])
def test_numba_scan_gradcheck(T):
    """The numba kernels' hand-written backward against finite differences (float64, one thread and two)."""
    xs, _ = _scan_inputs(3, T, 4, 3, torch.float64, seed=40 + T)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, method="numba"), xs)
    finally:
        torch.set_num_threads(threads)


def test_numba_float32_exp_against_float64_exp():
    """The scan's float32 exp (a vectorisable polynomial, models/cpu_kernels.py) against numpy's float64 exp on
    [-87, 88] (its documented range; numpy's own float32 exp is within 6e-8): relative error <= 1.5e-7; NaN stays
    NaN; outside the range it saturates at the range's ends."""
    from models import cpu_kernels

    if not cpu_kernels.available():
        pytest.skip("numba is not importable")
    import numpy as np

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-87, 88, 200_000), rng.uniform(-1, 1, 1000), [0.0, -87.0, 88.0, -1e-30, 1e-30],
                        np.log(2.0) * np.arange(-125, 127)]).astype(np.float32)

    def exp_f32(v):   # the kernels' float32 exp of Δ_e A_n,e, here with N = 1, A = 1
        out = np.empty_like(v)
        cpu_kernels._exp_rows_f32(v, np.ones((1, len(v)), np.float32), out, np.empty(len(v), np.int32))
        return out

    out = exp_f32(x)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(out / ref - 1)) <= 1.5e-7
    special = np.array([np.nan, -np.inf, -100.0, np.inf, 100.0], np.float32)
    special = exp_f32(special)
    assert np.isnan(special[0])
    np.testing.assert_allclose(special[1:], np.exp(np.array([-87, -87, 88, 88], np.float64)), rtol=1.5e-7)


def test_auto_scan_is_numba_on_cpu_and_bad_method_raises(monkeypatch):
    xs, _ = _scan_inputs(2, 5, 3, 2, torch.float32, seed=0)
    assert type(selective_scan(*xs).grad_fn).__name__ == "SelectiveScanNumbaBackward"
    assert type(selective_scan(*xs, method="parallel").grad_fn).__name__ != "SelectiveScanNumbaBackward"
    monkeypatch.setattr("models.cpu_kernels.available", lambda: False)   # without numba: the torch loop
    assert type(selective_scan(*xs).grad_fn).__name__ == "SelectiveScanLoopBackward"
    with pytest.raises(ValueError, match="numba"):
        selective_scan(*xs, method="numba")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="method"):
        selective_scan(*xs, method="sequential")


@pytest.mark.parametrize("T,chunk", [(13, 4), (16, 4), (5, 8), (9, 1), (9, None), (1, 3)])
def test_linear_recurrence_matches_loop(T, chunk):
    torch.manual_seed(T)
    a = torch.rand(2, T, 3, 4, dtype=torch.float64) * 1.5      # > 1 allowed: the algebra does not care
    b = torch.randn(2, T, 3, 4, dtype=torch.float64)
    h, ref = torch.zeros(2, 3, 4, dtype=torch.float64), []
    for t in range(T):
        h = a[:, t] * h + b[:, t]
        ref.append(h)
    torch.testing.assert_close(linear_recurrence(a, b, chunk_size=chunk), torch.stack(ref, 1), **TOL64)


def test_float32_forward_backward_finite_long_sequence():
    torch.manual_seed(0)
    block = MambaBlock(16, backend="torch")
    x = torch.randn(2, 300, 16)
    y = block(x)
    y.square().mean().backward()
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


# ----------------------------------------------------------------------------------------------------------
# Step mode
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 2, 5, 33])
@pytest.mark.parametrize("d_conv", [4, 1])
def test_step_mode_equals_sequence_mode(T, d_conv):
    torch.manual_seed(T)
    stack = MambaStack(8, n_layers=2, d_state=4, d_conv=d_conv, dropout=0.3, backend="torch").double().eval()
    _randomize(stack, T)
    x = torch.randn(3, T, 8, dtype=torch.float64)
    states = stack.initial_state(3)
    assert all(s.ssm.dtype == torch.float64 and s.conv.shape == (3, 16, d_conv - 1) for s in states)
    ys = []
    for t in range(T):
        y_t, states = stack.step(x[:, t], states)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), stack(x), **TOL64)


def test_step_state_continues_after_a_split():
    """Stepping through x[:, :5] and then x[:, 5:] from the carried state = one pass over x."""
    block = _make_block(seed=5).eval()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    state, ys = block.initial_state(2), []
    for t in range(9):
        y, state = block.step(x[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), naive_block(block, x), **TOL64)
    # the carried SSM state is h_T of the recurrence: zero it and the next output changes
    y_next, _ = block.step(x[:, 0], state)
    y_zero, _ = block.step(x[:, 0], block.initial_state(2))
    assert (y_next - y_zero).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------------
# Official mamba_ssm (skips where it is not importable, e.g. on CPU machines)
# ----------------------------------------------------------------------------------------------------------

def test_selective_scan_matches_mamba_ssm_selective_scan_ref():
    _kernels_or_skip()
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
    torch.manual_seed(0)
    Bsz, T, E, N = 2, 37, 6, 4
    u, dt, z = (torch.randn(Bsz, T, E, dtype=torch.float64) for _ in range(3))
    B, C = (torch.randn(Bsz, T, N, dtype=torch.float64) for _ in range(2))
    A = -torch.rand(E, N, dtype=torch.float64) * 4
    D, dt_bias = torch.randn(E, dtype=torch.float64), torch.randn(E, dtype=torch.float64)
    ours = selective_scan(u, F.softplus(dt + dt_bias), A, B, C, D) * F.silu(z)
    ref = selective_scan_ref(u.mT, dt.mT, A, B.mT, C.mT, D, z=z.mT, delta_bias=dt_bias, delta_softplus=True)
    torch.testing.assert_close(ours, ref.mT.to(ours.dtype), rtol=1e-5, atol=1e-5)   # ref computes in fp32


def test_cuda_backend_matches_torch_backend_on_gpu():
    _kernels_or_skip()
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    fast = MambaBlock(32, backend="cuda").cuda()
    slow = MambaBlock(32, backend="torch").cuda()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(4, 50, 32, device="cuda", requires_grad=True)
    y_fast, y_slow = fast(x), slow(x)
    torch.testing.assert_close(y_fast, y_slow, rtol=1e-4, atol=1e-4)
    g_fast = torch.autograd.grad(y_fast.square().sum(), x)[0]
    g_slow = torch.autograd.grad(y_slow.square().sum(), x)[0]
    torch.testing.assert_close(g_fast, g_slow, rtol=1e-3, atol=1e-3)
    with pytest.raises(RuntimeError, match="CUDA input"):
        fast.cpu()(x.detach().cpu())


def _reference_selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The documented contract of mamba_ssm's `selective_scan_fn`, channel-first, as a plain loop.
    u, delta, z: (B, E, T); A: (E, N); B, C: (B, N, T); D, delta_bias: (E,). Returns (B, E, T)."""
    delta = delta + delta_bias[:, None] if delta_bias is not None else delta
    delta = F.softplus(delta) if delta_softplus else delta
    h, ys = u.new_zeros(u.shape[0], A.shape[0], A.shape[1]), []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    y = torch.stack(ys, -1)
    return y * F.silu(z) if z is not None else y


def _reference_causal_conv1d_fn(x, weight, bias=None, activation=None):
    """The documented contract of `causal_conv1d_fn`: x (B, E, T), weight (E, K)."""
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=weight.shape[1] - 1, groups=x.shape[1])[..., :x.shape[-1]]
    return F.silu(out) if activation in ("silu", "swish") else out


@pytest.mark.parametrize("with_conv_kernel", [True, False])
def test_mamba_ssm_glue_layout_with_reference_kernels(with_conv_kernel):
    """The CUDA path's transposes, dt bias/softplus hand-off and z gating, checked on CPU by feeding it
    loop implementations of the kernels' documented contracts instead of the compiled kernels."""
    block = _make_block(seed=7)
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    kernels = MambaSSMKernels(_reference_selective_scan_fn,
                              _reference_causal_conv1d_fn if with_conv_kernel else None)
    m = block.mixer
    u, z = m.in_proj(block.norm(x)).chunk(2, dim=-1)
    glued = x + m.out_proj(m._mixer_mamba_ssm(kernels, u, z))
    # A, D and Δ's bias reach the kernels in fp32 (as mamba_ssm requires): agreement to fp32 rounding (~1e-8
    # here); a wrong transpose or a double/missing bias gives O(0.1) differences.
    torch.testing.assert_close(glued, block(x), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Backends, parameters, dropout, arguments
# ----------------------------------------------------------------------------------------------------------

def test_cuda_backend_raises_clear_error_when_unavailable():
    kernels, why = load_mamba_ssm()
    if kernels is not None and torch.cuda.is_available():
        pytest.skip("CUDA and mamba_ssm are both available here")
    with pytest.raises(RuntimeError, match="backend='cuda'") as info:
        MambaBlock(8, backend="cuda")
    if not torch.cuda.is_available():
        assert "no CUDA device" in str(info.value)
    if kernels is None:
        assert "mamba_ssm" in str(info.value) and "pip install .[cuda]" in str(info.value)


def test_auto_backend_uses_torch_for_cpu_inputs():
    block = MambaBlock(8, backend="auto")
    assert not block.mixer.uses_mamba_ssm(torch.zeros(1, 3, 8))
    assert block(torch.randn(2, 3, 8)).shape == (2, 3, 8)


def test_parameters_follow_mamba_ssm_names_shapes_and_init():
    d_model, N, K = 40, 16, 4
    E, R = 80, math.ceil(40 / 16)
    block = MambaBlock(d_model, d_state=N, d_conv=K, dt_min=0.002, dt_max=0.05)
    shapes = {k: tuple(v.shape) for k, v in block.mixer.state_dict().items()}
    assert shapes == {"in_proj.weight": (2 * E, d_model), "conv1d.weight": (E, 1, K), "conv1d.bias": (E,),
                      "x_proj.weight": (R + 2 * N, E), "dt_proj.weight": (E, R), "dt_proj.bias": (E,),
                      "A_log": (E, N), "D": (E,), "out_proj.weight": (d_model, E)}
    dt0 = F.softplus(block.mixer.dt_proj.bias)
    assert dt0.min() >= 0.002 * (1 - 1e-5) and dt0.max() <= 0.05 * (1 + 1e-5)
    assert dt0.max() / dt0.min() > 5                                # spread over the log-range, not constant
    torch.testing.assert_close(-torch.exp(block.mixer.A_log), -torch.arange(1.0, N + 1).repeat(E, 1))
    torch.testing.assert_close(block.mixer.D.detach(), torch.ones(E))
    assert block.mixer.dt_proj.weight.abs().max() <= R**-0.5
    if load_mamba_ssm()[0] is not None:                            # the official module, where importable
        from mamba_ssm.modules.mamba_simple import Mamba as OfficialMamba
        official = {k: tuple(v.shape) for k, v in OfficialMamba(d_model, d_state=N, d_conv=K).state_dict().items()}
        assert official == shapes


def test_checkpoint_loads_across_backends():
    src = MambaStack(8, n_layers=2, backend="torch")
    dst = MambaStack(8, n_layers=2, backend="auto")
    dst.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(dst(x), src(x))


def test_dropout_active_in_train_identity_in_eval():
    p = 0.5
    block = _make_block(d_model=32, dropout=p, seed=2)
    plain = _make_block(d_model=32, dropout=0.0, seed=2)
    plain.load_state_dict(block.state_dict())
    x = torch.randn(4, 16, 32, dtype=torch.float64)
    mixer_out = (plain(x) - x).detach()                              # Mamba(LayerNorm(x)), no dropout

    block.train()
    delta = block(x) - x                                             # Dropout(Mamba(LayerNorm(x)))
    dropped = delta == 0
    assert abs(dropped.double().mean().item() - p) < 0.05           # 2048 draws: sd of the mean ~0.011
    torch.testing.assert_close(delta[~dropped], mixer_out[~dropped] / (1 - p), **TOL64)
    assert not torch.equal(block(x), block(x))                       # a fresh mask per call

    block.eval()
    torch.testing.assert_close(block(x), plain(x), **TOL64)
    torch.testing.assert_close(block(x), block(x), rtol=0, atol=0)


def test_dropout_in_step_mode():
    p = 0.5
    block = _make_block(d_model=32, dropout=p, seed=4)
    x_t = torch.randn(64, 32, dtype=torch.float64)
    state = block.initial_state(64)
    block.eval()
    y_eval, s_eval = block.step(x_t, state)
    block.train()
    y_train, s_train = block.step(x_t, state)
    delta, dropped = y_train - x_t, (y_train - x_t) == 0
    assert abs(dropped.double().mean().item() - p) < 0.05
    torch.testing.assert_close(delta[~dropped], (y_eval - x_t)[~dropped] / (1 - p), **TOL64)
    # dropout sits on the block output: the recurrent state is the same in both modes
    torch.testing.assert_close(s_train.ssm, s_eval.ssm, **TOL64)


@pytest.mark.parametrize("kwargs,name", [
    (dict(d_model=0), "d_model"), (dict(d_model=8.0), "d_model"), (dict(d_state=-1), "d_state"),
    (dict(d_conv=0), "d_conv"), (dict(expand=0), "expand"), (dict(dt_rank=0), "dt_rank"),
    (dict(dt_rank="full"), "dt_rank"), (dict(dt_min=0.0), "dt_min"), (dict(dt_min=0.2, dt_max=0.1), "dt_max"),
    (dict(dropout=1.0), "dropout"), (dict(dropout=-0.1), "dropout"), (dict(backend="gpu"), "backend"),
])
def test_bad_block_arguments_raise_value_error_naming_them(kwargs, name):
    args = dict(d_model=8) | kwargs
    with pytest.raises(ValueError, match=name):
        MambaBlock(**args)


def test_bad_stack_arguments_and_inputs_raise_value_error():
    with pytest.raises(ValueError, match="n_layers"):
        MambaStack(8, n_layers=0)
    with pytest.raises(ValueError, match="backend"):
        MambaStack(8, backend="jax")
    stack = MambaStack(8, n_layers=2)
    with pytest.raises(ValueError, match="x must have shape"):
        stack(torch.zeros(2, 3, 9))
    with pytest.raises(ValueError, match="x must have shape"):
        stack(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="x_t must have shape"):
        stack.step(torch.zeros(2, 3, 8), stack.initial_state(2))
    good = stack.initial_state(2)
    with pytest.raises(ValueError, match=r"state\.ssm"):
        stack.step(torch.zeros(2, 8), [good[0]._replace(ssm=torch.zeros(2, 16, 3)), good[1]])
    with pytest.raises(ValueError, match=r"state\.conv"):
        stack.step(torch.zeros(2, 8), [good[0], good[1]._replace(conv=torch.zeros(3, 16, 3))])
    with pytest.raises(ValueError, match="states"):
        stack.step(torch.zeros(2, 8), stack.initial_state(2)[:1])
    with pytest.raises(ValueError, match="batch_size"):
        stack.initial_state(0)
