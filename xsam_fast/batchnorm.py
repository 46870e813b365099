"""BatchNorm running statistics during an XSAM step.

The authors' rule: running statistics move only in the first forward pass of a
step; every later pass (ascents, the final gradient, the alpha search) runs in
train mode with BN momentum 0. These helpers are idempotent (disabling twice
keeps the original momentum), unlike the authors' versions, and they also give
``num_batches_tracked`` back its value at the time of disabling (the authors'
let it count every pass, which skews BN layers with ``momentum=None``, whose
cumulative average divides by that count).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_SAVED = "_xsam_saved_momentum"
_SAVED_COUNT = "_xsam_saved_num_batches_tracked"


def _bn_layers(model: nn.Module | Sequence[nn.Module]) -> list[_BatchNorm]:
    modules = model.modules() if isinstance(model, nn.Module) else model
    return [m for m in modules if isinstance(m, _BatchNorm)]


def _freeze(layers: list[_BatchNorm]) -> list[_BatchNorm]:
    frozen = [m for m in layers if not hasattr(m, _SAVED)]
    for module in frozen:
        setattr(module, _SAVED, module.momentum)
        count = module.num_batches_tracked
        setattr(module, _SAVED_COUNT, None if count is None else count.clone())
        module.momentum = 0.0
    return frozen


def _thaw(layers: list[_BatchNorm]) -> None:
    for module in layers:
        if hasattr(module, _SAVED):
            module.momentum = getattr(module, _SAVED)
            delattr(module, _SAVED)
            count = getattr(module, _SAVED_COUNT, None)
            if count is not None and module.num_batches_tracked is not None:
                module.num_batches_tracked.copy_(count)
            if hasattr(module, _SAVED_COUNT):
                delattr(module, _SAVED_COUNT)


def disable_running_stats(model: nn.Module) -> None:
    """Freeze BN running statistics (momentum 0) until :func:`enable_running_stats`."""
    _freeze(_bn_layers(model))


def enable_running_stats(model: nn.Module) -> None:
    """Give BN layers back the momentum they had before :func:`disable_running_stats`."""
    _thaw(_bn_layers(model))


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module | Sequence[nn.Module] | None) -> Iterator[None]:
    """Freeze BN running statistics inside the block (of a model's BN layers, or of a list
    of modules); a no-op for ``model=None``.

    Layers that were already frozen on entry stay frozen on exit.
    """
    frozen = _freeze(_bn_layers(model)) if model is not None else []
    try:
        yield
    finally:
        _thaw(frozen)


@contextlib.contextmanager
def learn_batchnorm(found: list[nn.Module]) -> Iterator[None]:
    """Append to ``found`` every BatchNorm layer that runs in training mode with running
    statistics inside the block (a global forward pre-hook, removed on exit).

    Lets :meth:`xsam_fast.XSAM.step` freeze the running statistics of the model a closure
    runs without being given the model.
    """
    seen: set[int] = set()

    def hook(module: nn.Module, args: object) -> None:
        if (
            isinstance(module, _BatchNorm)
            and module.training
            and module.track_running_stats
            and id(module) not in seen
        ):
            seen.add(id(module))
            found.append(module)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
