"""Generic associative scan over a tuple of tensors (O(log T) depth, forward or reverse).

Given elements x_0, ..., x_{T-1} (each a tuple of tensors sliced along `dim`) and an associative operator ⊗,
    forward (prefix) scan:   y_k = x_0 ⊗ x_1 ⊗ ... ⊗ x_k
    reverse (suffix) scan:   y_k = x_k ⊗ x_{k+1} ⊗ ... ⊗ x_{T-1}
`combine(earlier, later)` computes earlier ⊗ later, where `earlier` holds the elements with the LOWER time index in
both directions (so a non-commutative operator is written once, in time order, and used for both scans).
Elements given as a NamedTuple (e.g. models.kalman.FilterElement) reach `combine` and come back as that NamedTuple,
so an operator can use the paper's symbols (`a_i.C * a_j.J`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

Elems = tuple[Tensor, ...]
Combine = Callable[[Elems, Elems], Sequence[Tensor]]


def _split(elems: Elems, dim: int, sizes: list[int]) -> list[Elems]:
    """Cut every tensor of `elems` along `dim` into consecutive parts of the given sizes (views)."""
    parts = [x.split(sizes, dim=dim) for x in elems]
    return [tuple(p[i] for p in parts) for i in range(len(sizes))]


def _pairs(elems: Elems, dim: int) -> tuple[Elems, Elems]:
    """Views of x_0, x_2, x_4, ... and x_1, x_3, x_5, ... of an even-length sequence."""
    n = elems[0].shape[dim]
    split = [x.unflatten(dim, (n // 2, 2)).unbind(dim + 1) for x in elems]
    return tuple(s[0] for s in split), tuple(s[1] for s in split)


def _assemble(first: Elems, odd: Elems, even: Elems, dim: int) -> Elems:
    """y_0 = first, y_1 = odd_0, y_2 = even_0, y_3 = odd_1, y_4 = even_1, ... (len(odd) - len(even) is 0 or 1)."""
    out = []
    for f, o, e in zip(first, odd, even):
        n_pairs = e.shape[dim]
        o_head, o_tail = o.split([n_pairs, o.shape[dim] - n_pairs], dim=dim)
        pairs = torch.stack([o_head, e], dim=dim + 1).flatten(dim, dim + 1)  # o_0, e_0, o_1, e_1, ...
        out.append(torch.cat([f, pairs, o_tail], dim=dim))
    return tuple(out)


def _prefix_scan(combine: Combine, elems: Elems, dim: int) -> Elems:
    """Inclusive prefix scan by pairwise reduction (work O(T), depth 2 log2 T; the odd/even scheme of Blelloch).

    Combine neighbours p_k = x_{2k} ⊗ x_{2k+1}; scan the T/2 pairs recursively (that gives the odd prefixes
    y_1, y_3, ...); then every even prefix is y_{2k} = y_{2k-1} ⊗ x_{2k}, with y_0 = x_0.
    Inputs are cut with split/unbind views rather than strided slices: their backward is one cat/stack, whereas
    a slice's backward writes into a zero tensor of the full length.
    """
    n = elems[0].shape[dim]
    if n < 2:
        return elems
    m = n // 2
    if n % 2:  # odd length: hold the last element back; it is an even position 2m
        body, last = _split(elems, dim, [n - 1, 1])
    else:
        body, last = elems, None
    evens, odds = _pairs(body, dim)  # x_0, x_2, ..., x_{2m-2} and x_1, x_3, ..., x_{2m-1}
    y_odd = _prefix_scan(combine, tuple(combine(evens, odds)), dim)  # y_1, y_3, ..., y_{2m-1}
    y_0, x_even_rest = _split(evens, dim, [1, m - 1])  # x_2, x_4, ..., x_{2m-2}
    if last is not None:  # y_{2k} = y_{2k-1} ⊗ x_{2k} for k = 1..m
        x_even_rest = tuple(torch.cat([x, l], dim=dim) for x, l in zip(x_even_rest, last))
        return _assemble(y_0, y_odd, tuple(combine(y_odd, x_even_rest)), dim)
    if m == 1:
        return tuple(torch.cat([a, b], dim=dim) for a, b in zip(y_0, y_odd))
    # even length: y_{2k} = y_{2k-1} ⊗ x_{2k} for k = 1..m-1; y_{2m-1} closes the sequence
    y_odd_head, _ = _split(y_odd, dim, [m - 1, 1])
    return _assemble(y_0, y_odd, tuple(combine(y_odd_head, x_even_rest)), dim)


def associative_scan(combine: Combine, elems: Sequence[Tensor], dim: int = 1, reverse: bool = False) -> Elems:
    """Inclusive prefix scan (suffix scan with `reverse=True`) of a tuple of tensors along `dim`.

    Args:
        combine: associative `combine(earlier, later) -> tuple`, element-wise over batched tuples: it receives two
            tuples of tensors with equal shapes (the scanned dim of any length) and returns a tuple of the same
            structure and shapes. `earlier` holds the lower time indices, also for `reverse=True`.
        elems: tuple (or NamedTuple) of tensors (..., T, ...) sharing the size T of `dim`.
        dim: the scanned dimension (negative values count from the end).
        reverse: False: y_k = x_0 ⊗ ... ⊗ x_k.  True: y_k = x_k ⊗ ... ⊗ x_{T-1}.

    Returns:
        tuple of tensors with the shapes of `elems` (the NamedTuple type of `elems`, if it is one).
    """
    structure = type(elems) if hasattr(elems, "_fields") else None   # a NamedTuple: combine sees and returns it
    if structure is not None:
        combine = _with_structure(combine, structure)
    elems = tuple(elems)
    if len(elems) == 0:
        raise ValueError("elems: need at least one tensor")
    ndim = elems[0].dim()
    if not -ndim <= dim < ndim:
        raise ValueError(f"dim: {dim} is out of range for tensors with {ndim} dimensions")
    dim = dim % ndim
    length = elems[0].shape[dim]
    for i, x in enumerate(elems):
        if x.dim() != ndim or x.shape[dim] != length:
            raise ValueError(f"elems: tensor {i} has shape {tuple(x.shape)}, expected {ndim} dims and size "
                             f"{length} along dim {dim}")
    if length == 0:
        out = elems
    elif not reverse:
        out = _prefix_scan(combine, elems, dim)
    else:  # suffix scan = prefix scan of the time-reversed sequence with the operands swapped
        flipped = tuple(x.flip(dim) for x in elems)
        out = tuple(x.flip(dim) for x in _prefix_scan(lambda later, earlier: combine(earlier, later), flipped, dim))
    return out if structure is None else structure(*out)


def _with_structure(combine: Combine, structure: type) -> Combine:
    """`combine` called with (and returning) NamedTuples of type `structure` instead of plain tuples."""
    return lambda earlier, later: tuple(combine(structure(*earlier), structure(*later)))


# ----------------------------------------------------------------------------------------------------------------
# torch's own scan, for comparison (benchmarks/kalman_scan.py). Decision, torch 2.13 on CPU:
# `torch._higher_order_ops.associative_scan` is a prototype. combine_mode="pointwise" (the fast, compiled mode)
# refuses CPU tensors ("all input tensors need to be on CUDA or XPU"); combine_mode="generic" runs eagerly on CPU and
# is correct (tests/test_scan.py), but it is the same odd/even recursion as ours with strided slices (whose backward
# writes into full-length zero tensors) plus a torch.vmap around the combine; measured slower than ours
# (see the benchmark's "parallel_torchscan" row), so models/kalman.py uses `associative_scan` above.
# ----------------------------------------------------------------------------------------------------------------

def torch_associative_scan(combine: Combine, elems: Sequence[Tensor], dim: int = 1, reverse: bool = False) -> Elems:
    """Same contract as `associative_scan`, computed by torch's prototype generic scan (torch >= 2.6).

    torch calls combine(x, y) with x first in *scan order*, so for reverse=True the operands are swapped back to
    our convention (earlier in time first).
    """
    from torch._higher_order_ops.associative_scan import associative_scan as _torch_scan

    structure = type(elems) if hasattr(elems, "_fields") else None
    wrap = tuple if structure is None else (lambda e: structure(*e))

    def fn(x, y):
        return tuple(combine(wrap(y), wrap(x)) if reverse else combine(wrap(x), wrap(y)))

    return wrap(_torch_scan(fn, tuple(elems), dim=dim, reverse=reverse, combine_mode="generic"))
