"""``torch.optim`` step hooks around an XSAM step: each fires exactly once per step.

Torch wraps every optimizer class's ``step`` so that its pre/post hooks (the
optimizer's own and the global ones) run around it. An XSAM step taken with
:meth:`~xsam_fast.XSAM.step` gets that for free; a step taken with the manual API
(``first_step`` ... ``second_step``) fires the same hooks itself, at its first
ascent and at its end. The base optimizer's own hooks fire once per step around
the base update, whether it is fused (its ``step`` never runs) or not (its
unwrapped ``step`` runs, so that global hooks do not fire twice).
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Callable

import torch

try:  # torch keeps the global hooks in these private dicts
    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
except ImportError:  # pragma: no cover
    _global_optimizer_pre_hooks = _global_optimizer_post_hooks = {}


def fire_pre(opt: torch.optim.Optimizer, *, global_hooks: bool = True) -> None:
    """Run ``opt``'s step pre-hooks (and the global ones) as ``opt.step()`` would."""
    hooks = chain(
        _global_optimizer_pre_hooks.values() if global_hooks else (),
        opt._optimizer_step_pre_hooks.values(),
    )
    for hook in hooks:
        hook(opt, (), {})


def fire_post(opt: torch.optim.Optimizer, *, global_hooks: bool = True) -> None:
    hooks = chain(
        opt._optimizer_step_post_hooks.values(),
        _global_optimizer_post_hooks.values() if global_hooks else (),
    )
    for hook in hooks:
        hook(opt, (), {})


def has_hooks(opt: torch.optim.Optimizer) -> bool:
    return bool(opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks)


def unhooked_step(opt: torch.optim.Optimizer) -> Callable[..., Any]:
    """``opt.step`` without torch's hook wrapper (the hooks are the caller's to fire)."""
    step = type(opt).step
    return getattr(step, "__wrapped__", step).__get__(opt, type(opt))
