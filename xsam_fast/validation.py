"""Checks of XSAM's arguments, with messages that name the argument and the value.

Numbers may be Python ints and floats, numpy scalars or 0-d tensors (read once,
at construction); ``bool`` is refused wherever a number is expected (``True`` is
an int in Python, and ``rho=True`` is a mistake, not 1.0).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor


def number(name: str, value: Any, *, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite float (>= ``minimum``, > 0 if ``positive``), or ValueError."""
    if (
        isinstance(value, Tensor)
        and value.dim() == 0
        and value.dtype != torch.bool
        and not value.dtype.is_complex
    ):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and not out > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return out


def integer(name: str, value: Any, *, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (numpy integers accepted, bool and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


_BASE_NUMBERS = ("lr", "momentum", "weight_decay")  # NaN passes torch's own ``< 0`` checks


def check_group(group: dict[str, Any], index: int | None = None) -> None:
    """A param group's ``rho`` and ``rho_max``, and the base optimizer's ``lr``,
    ``momentum`` and ``weight_decay`` where they are Python numbers (read at every step,
    so checked at every step: a schedule may have set them; a tensor ``lr`` is left to
    the base optimizer, as reading it could wait for a device). Raises ValueError
    naming the group."""
    where = "" if index is None else f" (param group {index})"
    for key in ("rho", "rho_max", *_BASE_NUMBERS):
        value = group.get(key)
        if (key != "rho" and value is None) or (key in _BASE_NUMBERS and isinstance(value, Tensor)):
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"{key} must be a finite number >= 0{where}, got {value!r}")


def check_choices(
    *, base_optimizer: Any, backend: str, nonfinite: str, search: str, adaptive: bool, eta: float
) -> None:
    """XSAM's non-numeric arguments, and eta > 0 with the adaptive geometry."""
    from .backends import available_backends, backend_status, validate_backend_name
    from .search import STRATEGIES

    if adaptive and eta == 0:
        raise ValueError(
            "adaptive=True needs eta > 0: T = |theta_0| + eta must not vanish "
            "where a weight is 0 (the step divides by T^2)"
        )
    if nonfinite not in ("warn", "raise", "none"):
        raise ValueError(f"nonfinite must be 'warn', 'raise' or 'none', got {nonfinite!r}")
    if search not in STRATEGIES:
        raise ValueError(f"unknown search {search!r}; valid: {', '.join(STRATEGIES)}")
    check_base_optimizer(base_optimizer)
    validate_backend_name(backend)
    if backend != "auto" and backend not in available_backends():
        raise ValueError(f"backend {backend!r} cannot run here: {backend_status()[backend]}")


def check_base_optimizer(base_optimizer: Any) -> None:
    if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
        raise TypeError(
            f"base_optimizer must be a torch.optim.Optimizer class, got {base_optimizer!r}"
        )
    if issubclass(base_optimizer, torch.optim.LBFGS):
        raise ValueError(
            "LBFGS cannot be XSAM's base optimizer: its step() re-evaluates a "
            "closure at points of its own line search, while XSAM hands it one "
            "interpolated gradient G from theta_0"
        )
