"""models/scan.py: the associative scan equals a plain cumulative loop, for any length, forward and reverse,
with tuple elements and non-commutative operators (affine maps, 2x2 matrix products)."""
from typing import NamedTuple

import pytest
import torch

from models.scan import associative_scan, torch_associative_scan

LENGTHS = [1, 2, 3, 5, 7, 8, 100, 1024]


def affine_combine(earlier, later):
    """Composition of affine maps x -> a x + c: first `earlier`, then `later` (non-commutative)."""
    a1, c1 = earlier
    a2, c2 = later
    return a2 * a1, a2 * c1 + c2


def matmul_combine(earlier, later):
    """Products of 2x2 matrices, later @ earlier (non-commutative)."""
    (m1,), (m2,) = earlier, later
    return (m2 @ m1,)


class Affine(NamedTuple):
    """x -> a x + c."""
    a: torch.Tensor
    c: torch.Tensor


def named_affine_combine(earlier: Affine, later: Affine) -> Affine:
    assert isinstance(earlier, Affine) and isinstance(later, Affine)
    return Affine(a=later.a * earlier.a, c=later.a * earlier.c + later.c)


def loop_scan(combine, elems, dim, reverse):
    """Reference: y_k = x_0 ⊗ ... ⊗ x_k (or x_k ⊗ ... ⊗ x_{T-1}) by a cumulative Python loop."""
    T = elems[0].shape[dim]
    steps = [tuple(x.select(dim, t) for x in elems) for t in range(T)]
    out = [None] * T
    order = range(T - 1, -1, -1) if reverse else range(T)
    acc = None
    for t in order:
        if acc is None:
            acc = steps[t]
        elif reverse:
            acc = tuple(combine(steps[t], acc))
        else:
            acc = tuple(combine(acc, steps[t]))
        out[t] = acc
    return tuple(torch.stack([o[i] for o in out], dim=dim) for i in range(len(elems)))


def random_affine(T, gen, shape=(3,), dim=1):
    size = list(shape)
    size.insert(dim, T)
    # |a| around 1 so products over 1024 steps neither vanish nor explode
    a = (1 + 0.01 * torch.randn(*size, generator=gen, dtype=torch.float64)) * torch.sign(
        torch.randn(*size, generator=gen, dtype=torch.float64))
    c = torch.randn(*size, generator=gen, dtype=torch.float64)
    return a, c


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T", LENGTHS)
def test_affine_tuple_scan_matches_loop(T, reverse):
    gen = torch.Generator().manual_seed(T)
    a, c = random_affine(T, gen, shape=(2, 3))
    got = associative_scan(affine_combine, (a, c), dim=1, reverse=reverse)
    want = loop_scan(affine_combine, (a, c), dim=1, reverse=reverse)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T", LENGTHS)
def test_matrix_product_scan_matches_loop(T, reverse):
    gen = torch.Generator().manual_seed(100 + T)
    # near-orthogonal random 2x2 matrices: products stay O(1), and order matters
    angle = torch.rand(4, T, generator=gen, dtype=torch.float64) * 6.283
    shear = 0.01 * torch.randn(4, T, generator=gen, dtype=torch.float64)
    m = torch.stack([torch.stack([angle.cos(), -angle.sin() + shear], -1),
                     torch.stack([angle.sin(), angle.cos()], -1)], -2)  # (4, T, 2, 2)
    got = associative_scan(matmul_combine, (m,), dim=1, reverse=reverse)
    want = loop_scan(matmul_combine, (m,), dim=1, reverse=reverse)
    torch.testing.assert_close(got[0], want[0], rtol=1e-9, atol=1e-9)


def test_matrix_products_are_not_commutative_here():
    """Guard: the operator used above really distinguishes the order (a scan with swapped operands differs)."""
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(1, 5, 2, 2, generator=gen, dtype=torch.float64)
    fwd = associative_scan(matmul_combine, (m,), dim=1)[0]
    swapped = associative_scan(lambda e, l: matmul_combine(l, e), (m,), dim=1)[0]
    assert not torch.allclose(fwd[:, -1], swapped[:, -1])


@pytest.mark.parametrize("dim", [0, 2, -1])
@pytest.mark.parametrize("reverse", [False, True])
def test_other_dims(dim, reverse):
    gen = torch.Generator().manual_seed(1)
    shape = [4, 5, 6]
    T = shape[dim]
    rest = [s for i, s in enumerate(shape) if i != dim % 3]
    a, c = random_affine(T, gen, shape=rest, dim=dim % 3)
    got = associative_scan(affine_combine, (a, c), dim=dim, reverse=reverse)
    want = loop_scan(affine_combine, (a, c), dim=dim % 3, reverse=reverse)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T", [1, 6, 13])
def test_gradients_match_loop(T):
    gen = torch.Generator().manual_seed(2)
    a, c = random_affine(T, gen, shape=(3,))
    a.requires_grad_(True)
    c.requires_grad_(True)
    weights = torch.randn(3, T, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (lambda: associative_scan(affine_combine, (a, c), dim=1, reverse=True),
               lambda: loop_scan(affine_combine, (a, c), dim=1, reverse=True)):
        ya, yc = fn()
        loss = (weights * yc).sum() + (ya ** 2).sum()
        grads.append(torch.autograd.grad(loss, (a, c)))
    for g, w in zip(*grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_empty_sequence_is_returned_unchanged():
    x = torch.zeros(2, 0, 3)
    (y,) = associative_scan(lambda e, l: (e[0] + l[0],), (x,), dim=1)
    assert y.shape == (2, 0, 3)


def test_cumsum_float32():
    x = torch.randn(3, 1000, 2)
    (y,) = associative_scan(lambda e, l: (e[0] + l[0],), (x,), dim=1)
    torch.testing.assert_close(y, x.cumsum(1), rtol=1e-4, atol=1e-4)
    (y,) = associative_scan(lambda e, l: (e[0] + l[0],), (x,), dim=1, reverse=True)
    torch.testing.assert_close(y, x.flip(1).cumsum(1).flip(1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("elems, dim, match", [
    ((), 1, "elems"),
    ((torch.zeros(2, 3),), 2, "dim"),
    ((torch.zeros(2, 3),), -3, "dim"),
    ((torch.zeros(2, 3), torch.zeros(2, 4)), 1, "elems"),
    ((torch.zeros(2, 3), torch.zeros(2, 3, 1)), 1, "elems"),
])
def test_bad_arguments_raise(elems, dim, match):
    with pytest.raises(ValueError, match=match):
        associative_scan(lambda e, l: e, elems, dim=dim)


def _torch_scan_available() -> bool:
    try:
        from torch._higher_order_ops.associative_scan import associative_scan  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _torch_scan_available(), reason="torch has no prototype associative_scan")
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T", [1, 7, 8, 100])
def test_torch_generic_scan_wrapper_matches_loop(T, reverse):
    """The wrapper around torch's generic scan (benchmarked against ours) keeps our operand order."""
    gen = torch.Generator().manual_seed(200 + T)
    a, c = random_affine(T, gen, shape=(2, 3))
    got = torch_associative_scan(affine_combine, (a, c), dim=1, reverse=reverse)
    want = loop_scan(affine_combine, (a, c), dim=1, reverse=reverse)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scan", [associative_scan, torch_associative_scan], ids=["ours", "torch"])
@pytest.mark.parametrize("reverse", [False, True])
def test_named_tuple_elements_reach_combine_and_come_back(scan, reverse):
    """A NamedTuple keeps its type through the scan (models/kalman.py's FilterElement, SmootherElement); the values
    equal the plain-tuple scan's."""
    if scan is torch_associative_scan and not _torch_scan_available():
        pytest.skip("torch has no prototype associative_scan")
    gen = torch.Generator().manual_seed(5)
    a, c = random_affine(9, gen, shape=(2, 3))
    got = scan(named_affine_combine, Affine(a, c), dim=1, reverse=reverse)
    want = loop_scan(affine_combine, (a, c), dim=1, reverse=reverse)
    assert isinstance(got, Affine)
    torch.testing.assert_close(got.a, want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.c, want[1], rtol=1e-12, atol=1e-12)
