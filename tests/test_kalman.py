"""models/kalman.py: the parallel (associative-scan), fused (loop with analytic backward) and numba (compiled loops,
models/cpu_kernels.py) filter/smoother equal the sequential loop, all equal an independent implementation (filterpy's KalmanFilter and rts_smoother with the diagonals
as full matrices), float32 stays stable on long sequences, gradients agree (the fused analytic backward also against
finite differences), "auto" resolves by device, and bad input raises ValueError naming the argument."""
import numpy as np
import pytest
import torch
from filterpy.kalman import KalmanFilter, rts_smoother

from models.kalman import (kalman_filter, kalman_filter_smoother, kalman_predict, kalman_smoother, kalman_update,
                           resolve_method, rts_step)

METHODS = ["parallel", "sequential", "fused", "numba"]
FAST = ["parallel", "fused", "numba"]  # checked against "sequential"
ANALYTIC = ["fused", "numba"]  # hand-written backward
NAMES = ("mu_f", "var_f", "mu_p", "var_p", "mu_s", "var_s")


def random_system(B, T, D, seed=0, dtype=torch.float64, masked=True, prior_batched=True, A_scale=1.1):
    """A random diagonal system; transitions may be negative, > 1 in magnitude, and vary over time."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    prior_shape = (B, D) if prior_batched else (D,)
    system = dict(
        w=2 * randn(B, T, D),
        var_w=0.05 + 2 * rand(B, T, D),
        A=A_scale * (2 * rand(B, T, D) - 1),
        b=0.5 * randn(B, T, D),
        var_dyn=0.01 + rand(B, T, D),
        mu0=randn(*prior_shape),
        var0=0.1 + rand(*prior_shape),
        mask=(rand(B, T) > 0.3) if masked else None,
    )
    return {k: (v.to(dtype) if v is not None and v.dtype.is_floating_point else v) for k, v in system.items()}


def run(system, method):
    """Filter + smoother -> dict of the six outputs."""
    f = kalman_filter(**system, method=method)
    s = kalman_smoother(*f, system["A"], method=method)
    return dict(zip(NAMES, f + s))


def filterpy_reference(system):
    """Per batch element with filterpy (float64, full matrices). The control input b enters the filter as
    B = I, u = b_t; filterpy's rts_smoother has no control input, so it smooths the shifted state z_t - c_t with
    c_0 = 0, c_{t+1} = A_t c_t + b_t (which follows z_{t+1} - c_{t+1} = A_t (z_t - c_t) + noise), then shifts back."""
    s = {k: (v.double().numpy() if isinstance(v, torch.Tensor) else v) for k, v in system.items()}
    B, T, D = s["w"].shape
    mu0 = np.broadcast_to(s["mu0"], (B, D))
    var0 = np.broadcast_to(s["var0"], (B, D))
    mask = np.ones((B, T), bool) if s["mask"] is None else s["mask"]
    out = {k: np.zeros((B, T, D)) for k in NAMES}
    for i in range(B):
        kf = KalmanFilter(dim_x=D, dim_z=D)
        kf.x = mu0[i].reshape(D, 1).copy()
        kf.P = np.diag(var0[i])
        kf.H = np.eye(D)
        xs, Ps, Fs, Qs = [], [], [], []
        for t in range(T):
            if t > 0:
                kf.predict(u=s["b"][i, t - 1].reshape(D, 1), B=np.eye(D), F=np.diag(s["A"][i, t - 1]),
                           Q=np.diag(s["var_dyn"][i, t - 1]))
            out["mu_p"][i, t], out["var_p"][i, t] = kf.x[:, 0], np.diag(kf.P)
            if mask[i, t]:
                kf.update(s["w"][i, t].reshape(D, 1), R=np.diag(s["var_w"][i, t]))
            xs.append(kf.x.copy())
            Ps.append(kf.P.copy())
            Fs.append(np.diag(s["A"][i, t]))
            Qs.append(np.diag(s["var_dyn"][i, t]))
            # the model is diagonal: filterpy's full covariances must stay diagonal
            assert np.abs(kf.P - np.diag(np.diag(kf.P))).max() <= 1e-12 * np.abs(kf.P).max()
        xs, Ps = np.stack(xs), np.stack(Ps)
        out["mu_f"][i], out["var_f"][i] = xs[:, :, 0], np.diagonal(Ps, axis1=1, axis2=2)
        shift = np.zeros((T, D, 1))
        for t in range(T - 1):
            shift[t + 1] = s["A"][i, t].reshape(D, 1) * shift[t] + s["b"][i, t].reshape(D, 1)
        x_s, P_s, _, _ = rts_smoother(xs - shift, Ps, Fs, Qs)
        out["mu_s"][i], out["var_s"][i] = (x_s + shift)[:, :, 0], np.diagonal(P_s, axis1=1, axis2=2)
    return {k: torch.from_numpy(v) for k, v in out.items()}


def assert_rel_close(got, want, rel, name=""):
    """max |got - want| <= rel * (|want| + 1e-3 max|want|) elementwise (relative error with a small floor)."""
    got, want = got.double(), want.double()
    assert got.shape == want.shape, name
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    floor = 1e-3 * want.abs().max().clamp(min=1e-30)
    err = ((got - want).abs() / (want.abs() + floor)).max().item()
    assert err < rel, f"{name}: relative error {err:.3g} >= {rel:.3g}"


# (T, B, D, prior batched): batch and latent sizes vary with T
CASES = [(1, 3, 4, True), (2, 1, 1, False), (7, 2, 5, True), (32, 4, 3, False), (100, 2, 6, True),
         (1024, 2, 3, False)]


@pytest.mark.parametrize("method", FAST)
@pytest.mark.parametrize("T, B, D, prior_batched", CASES)
def test_parallel_equals_sequential_float64(method, T, B, D, prior_batched):
    system = random_system(B, T, D, seed=T, prior_batched=prior_batched)
    seq, par = run(system, "sequential"), run(system, method)
    for name in NAMES:
        assert par[name].shape == (B, T, D) and par[name].dtype == torch.float64
        assert_rel_close(par[name], seq[name], 1e-6, name)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("T, B, D, prior_batched", [(1, 2, 3, True), (2, 2, 3, False), (7, 3, 2, True),
                                                     (32, 2, 3, False), (100, 2, 3, True), (1024, 1, 2, True)])
def test_against_filterpy(method, T, B, D, prior_batched):
    system = random_system(B, T, D, seed=1000 + T, prior_batched=prior_batched)
    ref = filterpy_reference(system)
    ours = run(system, method)
    for name in NAMES:
        assert_rel_close(ours[name], ref[name], 1e-6, name)


def test_without_mask_against_filterpy():
    system = random_system(2, 20, 3, seed=5, masked=False)
    ref = filterpy_reference(system)
    for method in METHODS:
        ours = run(system, method)
        for name in NAMES:
            assert_rel_close(ours[name], ref[name], 1e-6, name)


@pytest.mark.parametrize("method", METHODS)
def test_smoother_with_zero_transition_equals_filter(method):
    system = random_system(3, 50, 4, seed=7)
    system["A"] = torch.zeros_like(system["A"])
    out = run(system, method)
    torch.testing.assert_close(out["mu_s"], out["mu_f"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["var_s"], out["var_f"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_last_transition_is_unused_and_missing_observations_are_ignored(method):
    system = random_system(2, 9, 3, seed=8)
    base = run(system, method)
    changed = dict(system)
    changed["A"] = system["A"].clone()
    changed["A"][:, -1] = 123.0
    changed["b"] = system["b"].clone()
    changed["b"][:, -1] = -7.0
    changed["var_dyn"] = system["var_dyn"].clone()
    changed["var_dyn"][:, -1] = 0.0  # never used, so not validated either
    missing = ~system["mask"]
    changed["w"] = system["w"].masked_fill(missing.unsqueeze(-1), float("nan"))
    changed["var_w"] = system["var_w"].masked_fill(missing.unsqueeze(-1), -1.0)
    out = run(changed, method)
    for name in NAMES:
        torch.testing.assert_close(out[name], base[name], rtol=0, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_fully_missing_sequence_is_pure_prediction(method):
    system = random_system(2, 6, 3, seed=9)
    system["mask"] = torch.zeros(2, 6, dtype=torch.bool)
    out = run(system, method)
    mu, var = system["mu0"], system["var0"]
    for t in range(6):
        torch.testing.assert_close(out["mu_f"][:, t], mu)
        torch.testing.assert_close(out["var_f"][:, t], var)
        mu = system["A"][:, t] * mu + system["b"][:, t]
        var = system["A"][:, t] ** 2 * var + system["var_dyn"][:, t]


@pytest.mark.parametrize("method", METHODS)
def test_float32_long_sequence_is_stable(method):
    """T = 1024, A near 0.99, tiny process noise and small observation noise: float32 stays finite, variances stay
    positive, and the result stays close to float64."""
    B, T, D = 2, 1024, 8
    system = random_system(B, T, D, seed=11)
    g = torch.Generator().manual_seed(12)
    system["A"] = 0.99 + 0.009 * (2 * torch.rand(B, T, D, generator=g, dtype=torch.float64) - 1)
    system["var_dyn"] = 1e-6 * (1 + torch.rand(B, T, D, generator=g, dtype=torch.float64))
    system["var_w"] = 10.0 ** (-4 + 4 * torch.rand(B, T, D, generator=g, dtype=torch.float64))  # 1e-4 .. 1
    ref = run(system, "sequential")
    system32 = {k: (v.float() if v is not None and v.dtype == torch.float64 else v) for k, v in system.items()}
    out = run(system32, method)
    for name in NAMES:
        assert out[name].dtype == torch.float32
        assert torch.isfinite(out[name]).all(), name
        if name.startswith("var"):
            assert (out[name] > 0).all(), name
            assert_rel_close(out[name], ref[name], 1e-3, name)
        else:
            torch.testing.assert_close(out[name].double(), ref[name], rtol=1e-4, atol=1e-4 * ref[name].abs().max())


@pytest.mark.parametrize("T", [1, 2, 17])
def test_gradients_finite_and_equal_between_methods(T):
    system = random_system(2, T, 3, seed=20 + T)
    names = ["w", "var_w", "A", "b", "var_dyn", "mu0", "var0"]
    g = torch.Generator().manual_seed(21)
    weights = {k: torch.randn(2, T, 3, generator=g, dtype=torch.float64) for k in NAMES}
    grads = {}
    for method in METHODS:
        inputs = {k: (v.clone().requires_grad_(True) if k in names else v) for k, v in system.items()}
        out = run(inputs, method)
        loss = sum((weights[k] * out[k]).sum() for k in NAMES)
        grads[method] = torch.autograd.grad(loss, [inputs[k] for k in names], allow_unused=True,
                                             materialize_grads=True)
    for method in FAST:
        for name, gp, gs in zip(names, grads[method], grads["sequential"]):
            assert torch.isfinite(gp).all(), name
            assert_rel_close(gp, gs, 1e-6, f"{method}: grad {name}")
        # missing observations get no gradient
        missing = ~system["mask"]
        assert (grads[method][0][missing] == 0).all() and (grads[method][1][missing] == 0).all()


@pytest.mark.parametrize("method", METHODS)
def test_nan_at_missing_observations_does_not_reach_gradients(method):
    system = random_system(2, 12, 3, seed=25)
    names = ["w", "var_w", "A", "b", "var_dyn", "mu0", "var0"]
    missing = (~system["mask"]).unsqueeze(-1)
    grads = []
    for fill in (0.5, float("nan")):
        s = dict(system, w=system["w"].masked_fill(missing, fill), var_w=system["var_w"].masked_fill(missing, fill))
        inputs = {k: (v.clone().requires_grad_(True) if k in names else v) for k, v in s.items()}
        out = run(inputs, method)
        loss = sum(out[k].sum() for k in NAMES)
        grads.append(torch.autograd.grad(loss, [inputs[k] for k in names]))
    for name, g_clean, g_nan in zip(names, *grads):
        assert torch.isfinite(g_nan).all(), name
        torch.testing.assert_close(g_nan, g_clean, rtol=0, atol=0)


def test_gradcheck_parallel_small():
    system = random_system(1, 5, 2, seed=30)
    names = ["w", "var_w", "A", "b", "var_dyn", "mu0", "var0"]

    def fn(*xs):
        s = dict(system)
        s.update(zip(names, xs))
        out = run(s, "parallel")
        return tuple(out[k] for k in NAMES)

    assert torch.autograd.gradcheck(fn, [system[k].clone().requires_grad_(True) for k in names])


def test_single_step_helpers():
    g = torch.Generator().manual_seed(40)
    mu, b, w = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    var, var_dyn, var_w = (0.1 + torch.rand(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    A = torch.randn(4, 3, generator=g, dtype=torch.float64)
    mu_p, var_p = kalman_predict(mu, var, A, b, var_dyn)
    torch.testing.assert_close(mu_p, A * mu + b)
    torch.testing.assert_close(var_p, A ** 2 * var + var_dyn)
    mu_f, var_f = kalman_update(mu_p, var_p, w, var_w)
    torch.testing.assert_close(var_f, 1 / (1 / var_p + 1 / var_w))  # information form
    torch.testing.assert_close(mu_f, var_f * (mu_p / var_p + w / var_w))
    mask = torch.tensor([True, False, True, False])
    mu_m, var_m = kalman_update(mu_p, var_p, w, var_w, mask)
    torch.testing.assert_close(mu_m[mask], mu_f[mask])
    torch.testing.assert_close(mu_m[~mask], mu_p[~mask])
    torch.testing.assert_close(var_m[~mask], var_p[~mask])
    # one RTS step against the joint Gaussian of (z_t, z_{t+1}) conditioned on z_{t+1} ~ N(m, v)
    m_next, v_next = torch.randn(4, 3, generator=g, dtype=torch.float64), 0.1 + torch.rand(4, 3, generator=g,
                                                                                            dtype=torch.float64)
    mu_s, var_s = rts_step(mu_f, var_f, *kalman_predict(mu_f, var_f, A, b, var_dyn), A, m_next, v_next)
    cov = var_f * A
    var_n = A ** 2 * var_f + var_dyn
    torch.testing.assert_close(mu_s, mu_f + cov / var_n * (m_next - (A * mu_f + b)))
    torch.testing.assert_close(var_s, var_f - cov ** 2 / var_n + (cov / var_n) ** 2 * v_next)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    system = random_system(3, 100, 5, seed=50)
    cpu = run(system, method)
    gpu = run({k: (v.cuda() if v is not None else v) for k, v in system.items()}, method)
    for name in NAMES:
        assert_rel_close(gpu[name].cpu(), cpu[name], 1e-9, name)


# ---------------------------------------------------------------------------------------------------------------
# Bad input -> ValueError naming the argument
# ---------------------------------------------------------------------------------------------------------------

def _filter_bad(name, value=None, edit=None):
    """A case: a valid system with argument `name` replaced by value(system) (or the system changed by edit)."""
    def make():
        s = random_system(2, 5, 3, seed=60)
        if edit is not None:
            edit(s)
        else:
            s[name] = value(s)
        return s
    return make, name


FILTER_BAD = [
    _filter_bad("w", lambda s: s["w"].numpy()),
    _filter_bad("w", lambda s: s["w"].long()),
    _filter_bad("w", lambda s: s["w"][0]),
    _filter_bad("w", lambda s: s["w"][:, :0]),
    _filter_bad("var_w", lambda s: s["var_w"][:, :4]),
    _filter_bad("var_w", lambda s: s["var_w"].float()),
    _filter_bad("var_w", edit=lambda s: s["var_w"].__setitem__((0, 0, 0), 0.0) or s["mask"].fill_(True)),
    _filter_bad("var_w", edit=lambda s: s["var_w"].__setitem__((1, 2, 1), float("nan")) or s["mask"].fill_(True)),
    _filter_bad("A", lambda s: s["A"][..., :2]),
    _filter_bad("A", lambda s: s["A"].float()),
    _filter_bad("b", lambda s: s["b"].unsqueeze(0)),
    _filter_bad("var_dyn", lambda s: s["var_dyn"].index_fill(1, torch.tensor([2]), -1.0)),
    _filter_bad("var_dyn", lambda s: s["var_dyn"].half()),
    _filter_bad("mu0", lambda s: torch.zeros(3, 3, dtype=torch.float64)),
    _filter_bad("mu0", lambda s: torch.zeros(2, dtype=torch.float64)),
    _filter_bad("mu0", lambda s: [0.0, 0.0, 0.0]),
    _filter_bad("var0", lambda s: torch.zeros(2, 3, dtype=torch.float64)),
    _filter_bad("var0", lambda s: torch.ones(4, dtype=torch.float64)),
    _filter_bad("var0", lambda s: torch.ones(3, dtype=torch.float32)),
    _filter_bad("mask", lambda s: s["mask"].float()),
    _filter_bad("mask", lambda s: s["mask"][:, :3]),
    _filter_bad("method", lambda s: "fast"),
]


@pytest.mark.parametrize("make, name", FILTER_BAD, ids=[f"{name}-{i}" for i, (_, name) in enumerate(FILTER_BAD)])
def test_filter_bad_input_names_argument(make, name):
    s = make()
    method = s.pop("method", "parallel")
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        kalman_filter(**s, method=method)


@pytest.mark.parametrize("name, edit", [
    ("mu_f", lambda o: o.__setitem__("mu_f", o["mu_f"][:, :, 0])),
    ("mu_f", lambda o: o.__setitem__("mu_f", o["mu_f"].int())),
    ("var_f", lambda o: o.__setitem__("var_f", -o["var_f"])),
    ("var_f", lambda o: o.__setitem__("var_f", o["var_f"].float())),
    ("mu_p", lambda o: o.__setitem__("mu_p", o["mu_p"][:1])),
    ("var_p", lambda o: o["var_p"].__setitem__((0, 3, 0), 0.0)),
    ("A", lambda o: o.__setitem__("A", o["A"][:, 1:])),
    ("method", lambda o: o.__setitem__("method", "scan")),
])
def test_smoother_bad_input_names_argument(name, edit):
    s = random_system(2, 5, 3, seed=61)
    mu_f, var_f, mu_p, var_p = kalman_filter(**s)
    o = dict(mu_f=mu_f, var_f=var_f, mu_p=mu_p, var_p=var_p, A=s["A"], method="parallel")
    edit(o)
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        kalman_smoother(**o)


def test_prior_variance_of_first_prediction_is_not_checked_by_smoother():
    """var_p[:, 0] is the prior: the smoother never divides by it, so it is not validated (but var_p[:, 1:] is)."""
    s = random_system(2, 5, 3, seed=62)
    mu_f, var_f, mu_p, var_p = kalman_filter(**s)
    var_p = var_p.clone()
    var_p[:, 0] = 0.0
    kalman_smoother(mu_f, var_f, mu_p, var_p, s["A"])


def test_single_step_helpers_name_bad_arguments():
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="^b"):
        kalman_predict(x, x, x, torch.ones(2, 4), x)
    with pytest.raises(ValueError, match="^var_w"):
        kalman_update(x, x, x, x.double())
    with pytest.raises(ValueError, match="^mask"):
        kalman_update(x, x, x, x, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="^A"):
        rts_step(x, x, x, x, torch.ones(3), x, x)


# Non-power-of-two lengths at every T up to 39 (and around 121): the scan's odd/even splits at every depth.
@pytest.mark.parametrize("method", FAST)
@pytest.mark.parametrize("T", list(range(1, 40)) + [120, 121, 122])
def test_parallel_equals_sequential_at_every_chunking(method, T):
    system = random_system(2, T, 3, seed=200 + T)
    seq, par = run(system, "sequential"), run(system, method)
    for name in NAMES:
        assert_rel_close(par[name], seq[name], 1e-9, name)


@pytest.mark.parametrize("T", [1, 2, 11, 30])
def test_parallel_gradients_equal_sequential_with_remainders(T):
    """Odd lengths (odd splits at several scan levels), masked, both outputs weighted."""
    system = random_system(2, T, 3, seed=300 + T)
    names = ["w", "var_w", "A", "b", "var_dyn", "mu0", "var0"]
    g = torch.Generator().manual_seed(301)
    weights = {k: torch.randn(2, T, 3, generator=g, dtype=torch.float64) for k in NAMES}
    grads = {}
    for method in METHODS:
        inputs = {k: (v.clone().requires_grad_(True) if k in names else v) for k, v in system.items()}
        out = run(inputs, method)
        loss = sum((weights[k] * out[k]).sum() + (out[k] ** 2).sum() for k in NAMES)
        grads[method] = torch.autograd.grad(loss, [inputs[k] for k in names], allow_unused=True,
                                             materialize_grads=True)  # T = 1 uses no transition
    for method in FAST:
        for name, gp, gs in zip(names, grads[method], grads["sequential"]):
            assert_rel_close(gp, gs, 1e-8, f"{method}: grad {name}")


# ---------------------------------------------------------------------------------------------------------------
# The fused method's analytic backward; "auto"
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ANALYTIC)
@pytest.mark.parametrize("T, masked", [(1, False), (2, True), (5, True), (6, False)])
def test_gradcheck_fused(method, T, masked):
    """The hand-written backward of the fused/numba filter + smoother against finite differences (float64)."""
    system = random_system(2, T, 2, seed=400 + T, masked=masked)
    names = ["w", "var_w", "A", "b", "var_dyn", "mu0", "var0"]

    def fn(*xs):
        s = dict(system)
        s.update(zip(names, xs))
        out = run(s, method)
        return tuple(out[k] for k in NAMES)

    assert torch.autograd.gradcheck(fn, [system[k].clone().requires_grad_(True) for k in names])


@pytest.mark.parametrize("method", ANALYTIC)
@pytest.mark.parametrize("T", [1, 2, 9])
def test_fused_smoother_on_arbitrary_inputs(method, T):
    """The smoother alone, on inputs that are not a filter's output (var_p' may be < A² var_f, so the clamp of
    1 - J A is active at some entries): values and gradients equal autograd of the sequential reference."""
    g = torch.Generator().manual_seed(500 + T)
    B, D = 3, 4
    x = {"mu_f": torch.randn(B, T, D, generator=g, dtype=torch.float64),
         "var_f": 0.1 + torch.rand(B, T, D, generator=g, dtype=torch.float64),
         "mu_p": torch.randn(B, T, D, generator=g, dtype=torch.float64),
         "var_p": 0.1 + torch.rand(B, T, D, generator=g, dtype=torch.float64),
         "A": 2 * torch.rand(B, T, D, generator=g, dtype=torch.float64) - 1}
    if T > 2:
        J_A = x["var_f"][:, :-1] * x["A"][:, :-1] ** 2 / x["var_p"][:, 1:]
        assert (J_A > 1).any() and (J_A < 1).any()  # both branches of the clamp are exercised
    weights = [torch.randn(B, T, D, generator=g, dtype=torch.float64) for _ in range(2)]
    results = {}
    for m in ("sequential", method):
        inputs = {k: v.clone().requires_grad_(True) for k, v in x.items()}
        out = kalman_smoother(**inputs, method=m)
        loss = sum((w * o).sum() + (o ** 2).sum() for w, o in zip(weights, out))
        results[m] = out + torch.autograd.grad(loss, list(inputs.values()), allow_unused=True,
                                               materialize_grads=True)  # T = 1 uses only mu_f, var_f
    for i, (got, want) in enumerate(zip(results[method], results["sequential"])):
        assert_rel_close(got, want, 1e-9, f"output/grad {i}")


def test_auto_resolves_by_device_and_size(monkeypatch):
    x = torch.zeros(2, 3, 4)
    assert resolve_method("auto", x) == "numba"                               # CPU with numba installed
    assert resolve_method("auto", torch.zeros(32, 256, 230)) == "numba"
    for method in ("fused", "numba", "parallel", "sequential"):
        assert resolve_method(method, x) == method
    with pytest.raises(ValueError, match="^method"):
        resolve_method("fastest", x)
    with pytest.raises(ValueError, match="^method: 'numba' needs CPU"):
        resolve_method("numba", torch.zeros(2, 3, 4, device="meta"))
    system = random_system(2, 7, 3, seed=600)
    for got, want in zip(run(system, "auto").values(), run(system, "numba").values()):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # without numba: the torch rule by size
    monkeypatch.setattr("models.cpu_kernels.available", lambda: False)
    assert resolve_method("auto", x) == "fused"
    assert resolve_method("auto", torch.zeros(32, 256, 230)) == "fused"
    assert resolve_method("auto", torch.zeros(32, 511, 32)) == "fused"
    assert resolve_method("auto", torch.zeros(32, 512, 32)) == "parallel"   # B*D = 1024: few elements per step
    assert resolve_method("auto", torch.zeros(32, 4096, 33)) == "fused"
    with pytest.raises(ValueError, match="^method: 'numba'"):
        resolve_method("numba", x)


@pytest.mark.parametrize("method", METHODS)
def test_validate_false_skips_only_the_value_checks(method):
    """validate=False gives the same results, skips the variance-value checks (no host sync), and still checks
    shapes."""
    system = random_system(2, 9, 3, seed=610)
    checked = run(system, method)
    f = kalman_filter(**system, method=method, validate=False)
    unchecked = dict(zip(NAMES, f + kalman_smoother(*f, system["A"], method=method, validate=False)))
    for name in NAMES:
        torch.testing.assert_close(unchecked[name], checked[name], rtol=0, atol=0)
    bad = dict(system, var_w=system["var_w"].clone(), mask=None)
    bad["var_w"][0, 0, 0] = -1.0
    with pytest.raises(ValueError, match="^var_w"):
        kalman_filter(**bad, method=method)
    kalman_filter(**bad, method=method, validate=False)  # no check, no error
    with pytest.raises(ValueError, match="^A"):
        kalman_filter(**dict(system, A=system["A"][:, 1:]), method=method, validate=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_is_parallel_on_cuda():
    assert resolve_method("auto", torch.zeros(2, 3, 4, device="cuda")) == "parallel"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("T, masked", [(1, True), (2, False), (13, True)])
def test_filter_smoother_in_one_call_equals_the_two_calls(method, T, masked):
    """kalman_filter_smoother (for "numba" one autograd Function with an in-kernel accumulation of the gradients)
    gives the values and gradients of kalman_filter followed by kalman_smoother, with every output weighted."""
    system = random_system(2, T, 3, seed=700 + T, masked=masked)
    names = ["w", "var_w", "A", "b", "var_dyn", "mu0", "var0"]
    g = torch.Generator().manual_seed(701)
    weights = {k: torch.randn(2, T, 3, generator=g, dtype=torch.float64) for k in NAMES}
    results = []
    for one_call in (False, True):
        inputs = {k: (v.clone().requires_grad_(True) if k in names else v) for k, v in system.items()}
        out = dict(zip(NAMES, kalman_filter_smoother(**inputs, method=method))) if one_call else run(inputs, method)
        loss = sum((weights[k] * out[k]).sum() + (out[k] ** 2).sum() for k in NAMES)
        results.append([out[k] for k in NAMES] + list(torch.autograd.grad(
            loss, [inputs[k] for k in names], allow_unused=True, materialize_grads=True)))
    for i, (got, want) in enumerate(zip(*results[::-1])):
        assert_rel_close(got, want, 1e-12, f"output/grad {i}")
    with pytest.raises(ValueError, match="^var_w"):
        kalman_filter_smoother(**dict(system, var_w=-system["var_w"], mask=None), method=method)


@pytest.mark.parametrize("T, masked", [(1, True), (4, True), (5, False)])
def test_gradcheck_filter_smoother_numba(T, masked):
    system = random_system(2, T, 2, seed=800 + T, masked=masked)
    names = ["w", "var_w", "A", "b", "var_dyn", "mu0", "var0"]

    def fn(*xs):
        return kalman_filter_smoother(**dict(system, **dict(zip(names, xs))), method="numba")

    assert torch.autograd.gradcheck(fn, [system[k].clone().requires_grad_(True) for k in names])

