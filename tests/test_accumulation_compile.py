"""Gradient accumulation over micro-batches, and a ``torch.compile``'d model.

Accumulation: the closure zeroes the gradients once and runs backward on every
micro-batch, each loss weighted by its share of the batch, so every pass of the
step (ascents and final gradient) accumulates over the same micro-batches; the
search loss is the same weighted sum. The result equals the full-batch step.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import assert_params_close, criterion, make_batches, make_mlp, params_of
from xsam_fast import XSAM


def _micro(x, y, sizes):
    return list(zip(torch.split(x, sizes), torch.split(y, sizes)))


def _opt(model, **kw):
    return XSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.2,
        rho_max=0.6,
        steps=2,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-3,
        **kw,
    )


def _accumulate(model, opt, micro, n):
    """The documented pattern: one zero_grad, backward per micro-batch, weights n_i / n."""

    def closure():
        opt.zero_grad()
        total = 0.0
        for x, y in micro:
            loss = criterion(model(x), y) * (len(y) / n)
            loss.backward()
            total += loss.detach()
        return total

    def search_loss():  # forward only, same weights
        return sum(criterion(model(x), y) * (len(y) / n) for x, y in micro)

    return closure, search_loss


@pytest.mark.parametrize("api", ["closure", "authors"])
def test_micro_batch_accumulation_equals_full_batch(api):
    model = make_mlp(torch.float64)
    full = copy.deepcopy(model)
    opt, opt_full = _opt(model), _opt(full)
    for t, (x, y) in enumerate(make_batches("mlp", 3, torch.float64, batch=10)):
        search = t != 1
        closure, search_loss = _accumulate(model, opt, _micro(x, y, [4, 3, 3]), len(y))
        if api == "closure":
            opt.step(closure, search_loss=search_loss, update_alpha=search)
        else:
            closure()
            opt.first_step(0)
            closure()
            opt.first_step(1)
            closure()
            opt.second_step(update_alpha=search, search_loss=search_loss)
        full_closure, full_loss = _accumulate(full, opt_full, [(x, y)], len(y))
        opt_full.step(full_closure, search_loss=full_loss, update_alpha=search)
        assert opt.alpha == opt_full.alpha
        assert_params_close(params_of(model), params_of(full), 1e-12, 1e-12, f"step {t}")
    assert len(opt.search_history) == 2


def test_torch_compiled_model_trains_like_eager():
    """A torch.compile'd model (inductor) under XSAM, alpha search included: the same
    alpha and, to fp32 tolerance, the same parameters as the eager model."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = make_mlp(torch.float32)
    base = copy.deepcopy(eager)
    compiled = torch.compile(base)
    assert all(a is b for a, b in zip(compiled.parameters(), base.parameters()))
    runs = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        opt = XSAM(model.parameters(), torch.optim.SGD, rho=0.2, rho_max=0.6, lr=0.1, momentum=0.9)
        losses = []
        for t, (x, y) in enumerate(make_batches("mlp", 4, torch.float32)):

            def closure(model=model, x=x, y=y):
                opt.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                return loss

            loss = opt.step(
                closure,
                search_loss=lambda model=model, x=x, y=y: criterion(model(x), y),
                update_alpha=(t == 0),
            )
            losses.append(float(loss.detach()))
        runs[name] = (opt.alpha, params_of(model), losses)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert runs["compiled"][0] == runs["eager"][0]
    assert_params_close(runs["compiled"][1], runs["eager"][1], 1e-5, 1e-5, "compiled")
    torch.testing.assert_close(runs["compiled"][2], runs["eager"][2], atol=1e-5, rtol=1e-5)
