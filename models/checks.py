"""Checks for the `__post_init__` of the config dataclasses: each raises ValueError naming the field and its value.

The config dataclasses are the one place a setting is validated (the run CLI, the study workflow and Python callers
all construct them); see rl/config.py."""
from __future__ import annotations

from typing import Any


def ints(cfg: Any, low: int, *names: str) -> None:
    """Each field an int (not a bool) >= low."""
    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name}: must be an int >= {low}, got {v!r}")


def at_least(cfg: Any, low: float, *names: str, none_ok: bool = False) -> None:
    """Each field a number >= low (or None where none_ok)."""
    for name in names:
        v = getattr(cfg, name)
        if not (v is None and none_ok) and not (isinstance(v, (int, float)) and v >= low):
            raise ValueError(f"{name}: must be >= {low}, got {v!r}")


def above(cfg: Any, low: float, *names: str) -> None:
    """Each field a number > low."""
    for name in names:
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and v > low):
            raise ValueError(f"{name}: must be > {low}, got {v!r}")


def within(cfg: Any, name: str, low: float, high: float, high_open: bool = False) -> None:
    """low <= field <= high (< high where high_open)."""
    v = getattr(cfg, name)
    if not (isinstance(v, (int, float)) and low <= v and (v < high if high_open else v <= high)):
        raise ValueError(f"{name}: must be in [{low}, {high}{')' if high_open else ']'}, got {v!r}")


def increasing(cfg: Any, *names: str, low: float, strict_low: bool) -> None:
    """low <= names[0] < names[1] < ... (low < names[0] where strict_low), e.g. a_min < a_init < a_max."""
    values = [getattr(cfg, n) for n in names]
    ok = all(isinstance(v, (int, float)) for v in values) and all(a < b for a, b in zip(values, values[1:]))
    if not (ok and (values[0] > low if strict_low else values[0] >= low)):
        raise ValueError(f"{'/'.join(names)}: need {low} {'<' if strict_low else '<='} {' < '.join(names)}, "
                         f"got {', '.join(map(repr, values))}")


def one_of(cfg: Any, name: str, choices: tuple[str, ...]) -> None:
    v = getattr(cfg, name)
    if v not in choices:
        raise ValueError(f"{name}: must be one of {', '.join(choices)}, got {v!r}")


def activation(cfg: Any, name: str) -> None:
    """The field names a torch.nn activation class (torch.nn.modules.activation), e.g. ELU, ReLU."""
    from torch import nn

    v = getattr(cfg, name)
    cls = getattr(nn, v, None) if isinstance(v, str) else None
    if not (isinstance(cls, type) and cls.__module__ == "torch.nn.modules.activation"):
        raise ValueError(f"{name}: must name a torch.nn activation class (e.g. ELU, ReLU), got {v!r}")
