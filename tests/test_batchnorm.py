"""BatchNorm running statistics move only in the first forward pass of a step.

Expected buffers come from a copy of the model taken before the step that runs
exactly one train-mode forward on the batch: after the XSAM step (ascents, final
gradient and, where asked, the 21-point search) the buffers must equal it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import xsam_fast
from conftest import authors_step, closure_step, make_batches, make_cnn_bn
from xsam_fast import XSAM


def _one_forward_buffers(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    twin = copy.deepcopy(model)
    twin.train()
    with torch.no_grad():
        twin(x)
    return [b.detach().clone() for b in twin.buffers()]


def _model(bn_momentum):
    model = make_cnn_bn(torch.float64)
    model[1].momentum = bn_momentum
    return model


@pytest.mark.parametrize("bn_momentum", [0.1, None], ids=["momentum0.1", "cumulative"])
@pytest.mark.parametrize("search", [False, True], ids=["fixed", "search"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("api", ["closure", "authors"])
def test_running_stats_move_only_in_first_forward(api, steps, search, bn_momentum):
    model = _model(bn_momentum)
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        lr=0.1,
        momentum=0.9,
        rho=0.3,
        steps=steps,
        model=model if api == "closure" else None,
        backend="reference",
    )
    for x, y in make_batches("cnn_bn", 3):
        expected = _one_forward_buffers(model, x)
        if api == "closure":
            closure_step(opt, model, x, y, update_alpha=search)
        else:
            authors_step(opt, model, x, y, steps, update_alpha=search)
        for name, b, e in zip([n for n, _ in model.named_buffers()], model.buffers(), expected):
            torch.testing.assert_close(b, e, atol=0, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
        assert model[1].momentum == bn_momentum  # given back after the step


def test_first_forward_really_updates_running_stats():
    """Guards the test above against a model whose stats never move at all."""
    model = _model(0.1)
    before = model[1].running_mean.clone()
    opt = XSAM(
        model.parameters(), torch.optim.SGD, lr=0.1, rho=0.3, model=model, backend="reference"
    )
    x, y = make_batches("cnn_bn", 1)[0]
    closure_step(opt, model, x, y)
    assert not torch.equal(model[1].running_mean, before)


@pytest.mark.parametrize("bn_momentum", [0.1, None], ids=["momentum0.1", "cumulative"])
def test_helpers_are_idempotent(bn_momentum):
    model = _model(bn_momentum)
    bn = model[1]
    xsam_fast.enable_running_stats(model)  # nothing to give back: no-op
    assert bn.momentum == bn_momentum
    xsam_fast.disable_running_stats(model)
    assert bn.momentum == 0
    xsam_fast.disable_running_stats(model)  # twice: the original momentum is kept
    assert bn.momentum == 0
    xsam_fast.enable_running_stats(model)
    assert bn.momentum == bn_momentum
    xsam_fast.enable_running_stats(model)
    assert bn.momentum == bn_momentum


@pytest.mark.parametrize("bn_momentum", [0.1, None], ids=["momentum0.1", "cumulative"])
def test_disabled_helpers_freeze_running_stats(bn_momentum):
    """Mean and variance never move while disabled; the batch count is given back on enable."""
    model = _model(bn_momentum)
    bn = model[1]
    x, _ = make_batches("cnn_bn", 1)[0]
    model.train()
    with torch.no_grad():
        model(x)
    xsam_fast.disable_running_stats(model)
    before = [b.clone() for b in model.buffers()]
    with torch.no_grad():
        model(x * 2 + 1)
        model(x - 3)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    xsam_fast.enable_running_stats(model)
    for b, e in zip(model.buffers(), before):
        assert torch.equal(b, e)
    assert int(bn.num_batches_tracked) == 1


def test_step_does_not_unfreeze_layers_the_user_froze():
    """A closure step inside the user's own disable/enable keeps the layers frozen."""
    model = _model(0.1)
    opt = XSAM(
        model.parameters(), torch.optim.SGD, lr=0.1, rho=0.3, model=model, backend="reference"
    )
    x, y = make_batches("cnn_bn", 1)[0]
    xsam_fast.disable_running_stats(model)
    closure_step(opt, model, x, y, update_alpha=True)
    assert model[1].momentum == 0
    xsam_fast.enable_running_stats(model)
    assert model[1].momentum == 0.1
