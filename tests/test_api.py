"""The optimizer's public API: param groups, schedulers, statistics, search, parameters
left alone."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import xsam_fast
from conftest import (
    assert_params_close,
    authors_step,
    closure_step,
    criterion,
    float64_copy,
    make_batches,
    make_mlp,
    params_of,
)
from xsam_float64 import Float64XSAM
from xsam_fast import XSAM


def _opt(model, **kw):
    kw.setdefault("lr", 0.1)
    kw.setdefault("rho", 0.2)
    return XSAM(model.parameters(), torch.optim.SGD, backend="reference", **kw)


def test_available_backends_lists_reference():
    names = xsam_fast.available_backends()
    assert "reference" in names
    assert set(names) <= set(xsam_fast.backend_status())


def test_param_groups_are_the_base_optimizers(mlp64):
    opt = _opt(mlp64, momentum=0.9)
    assert opt.param_groups is opt.base_optimizer.param_groups
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["rho"] == 0.2
    opt.param_groups[0]["lr"] = 0.01
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.01


@pytest.mark.parametrize("attach", ["xsam", "base"])
def test_lr_scheduler_changes_the_lr_used(attach, mlp64, batches64):
    """A scheduler on XSAM or on opt.base_optimizer sets the lr of the next step."""
    model64 = float64_copy(mlp64)
    opt = _opt(mlp64, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(
        opt if attach == "xsam" else opt.base_optimizer, step_size=1, gamma=0.5
    )
    ref = Float64XSAM(model64, rho=0.2, base="sgd", lr=0.1, momentum=0.9)
    lr = 0.1
    for x, y in batches64:
        ref.step(lambda: criterion(model64(x), y), lr=lr)
        authors_step(opt, mlp64, x, y, 1)
        sched.step()
        lr *= 0.5
        assert opt.param_groups[0]["lr"] == pytest.approx(lr)
        assert_params_close(params_of(mlp64), params_of(model64), 1e-12, 1e-12)


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("api", ["authors", "closure"])
@pytest.mark.parametrize("attach", ["xsam", "base"])
def test_cosine_scheduler_without_order_warning(attach, api, fuse, mlp64, batches64):
    opt = _opt(mlp64, momentum=0.9, fuse_base_update=fuse)
    target = opt if attach == "xsam" else opt.base_optimizer
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(target, T_max=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x, y in batches64[:2]:
            if api == "authors":
                authors_step(opt, mlp64, x, y, 1)
            else:
                closure_step(opt, mlp64, x, y)
            sched.step()
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "optimizer.step()" in m], messages
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * (1 + np.cos(np.pi * 2 / 10)))


def test_zero_grad(mlp64, batches64):
    x, y = batches64[0]
    opt = _opt(mlp64)
    criterion(mlp64(x), y).backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in mlp64.parameters())
    criterion(mlp64(x), y).backward()
    opt.zero_grad()
    assert all(p.grad is None for p in mlp64.parameters())


def test_add_param_group_reaches_base_with_defaults(batches64):
    """A group added after construction gets both optimizers' defaults and is stepped."""
    whole, split = make_mlp(), make_mlp()
    opt_whole = _opt(whole, momentum=0.9, weight_decay=1e-3)
    opt_split = XSAM(
        split[0].parameters(),
        torch.optim.SGD,
        backend="reference",
        rho=0.2,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-3,
    )
    opt_split.add_param_group({"params": list(split[2].parameters())})
    assert len(opt_split.base_optimizer.param_groups) == 2
    group = opt_split.param_groups[1]
    assert group is opt_split.base_optimizer.param_groups[1]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 1e-3)
    assert (group["rho"], group["rho_max"]) == (0.2, None)
    for x, y in batches64:
        authors_step(opt_whole, whole, x, y, 1)
        authors_step(opt_split, split, x, y, 1)
        assert_params_close(params_of(split), params_of(whole), 1e-12, 1e-12)


def test_search_updates_alpha_and_curve_on_the_authors_grid(mlp64, batches64):
    opt = _opt(mlp64, alpha=0.123, rho_max=0.4)
    x, y = batches64[0]
    authors_step(opt, mlp64, x, y, 1, update_alpha=True)
    grid = np.arange(0, 2 + 1e-5, 0.1).tolist()
    assert len(opt.search_curve) == 21
    assert [a for a, _ in opt.search_curve] == grid  # bit-identical, 0.30000000000000004 included
    losses = [v for _, v in opt.search_curve]
    assert opt.alpha == grid[int(np.argmax(losses))] and opt.alpha != 0.123
    assert opt.stats()["alpha"] == opt.alpha


def test_search_grid_follows_alpha_max_and_delta(mlp64, batches64):
    opt = _opt(mlp64, alpha_max=1.0, alpha_delta=0.25)
    x, y = batches64[0]
    authors_step(opt, mlp64, x, y, 1, update_alpha=True)
    assert [a for a, _ in opt.search_curve] == np.arange(0, 1.0 + 1e-5, 0.25).tolist()


def test_stats_values(mlp64, batches64):
    """k = 1: ||d|| = rho (up to eps); psi, ||g|| from the gradient at the ascent point."""
    opt = _opt(mlp64, rho=0.3)
    x, y = batches64[0]
    theta0 = params_of(mlp64)
    with torch.enable_grad():
        g0 = torch.autograd.grad(criterion(mlp64(x), y), list(mlp64.parameters()))
    n0 = torch.sqrt(sum((g * g).sum() for g in g0))
    with torch.no_grad():
        for p, g in zip(mlp64.parameters(), g0):
            p.add_(0.3 * g / n0)
    g1 = torch.autograd.grad(criterion(mlp64(x), y), list(mlp64.parameters()))
    n1 = torch.sqrt(sum((g * g).sum() for g in g1))
    cos = sum((a * b).sum() for a, b in zip(g0, g1)) / (n0 * n1)
    with torch.no_grad():
        for p, t in zip(mlp64.parameters(), theta0):
            p.copy_(t)
    authors_step(opt, mlp64, x, y, 1)
    stats = opt.stats()
    assert set(stats) >= {"alpha", "psi", "grad_norm", "d_norm"}
    assert stats["d_norm"] == pytest.approx(0.3, rel=1e-12)
    assert stats["grad_norm"] == pytest.approx(float(n1), rel=1e-12)
    assert stats["psi"] == pytest.approx(float(torch.arccos(cos)), rel=1e-9)
    assert stats["alpha"] == 1.0
    assert isinstance(opt.last_stats["psi"], torch.Tensor)


def test_search_interval_schedule(mlp64):
    """step(closure): a search at step_count 0, 2, 4, ... with search_interval=2."""
    opt = _opt(mlp64, search_interval=2)
    for x, y in make_batches("mlp", 5):
        closure_step(opt, mlp64, x, y, update_alpha=None)
    assert [h["step"] for h in opt.search_history] == [0, 2, 4]
    assert opt.step_count == 5
    assert opt.alpha == opt.search_history[-1]["alpha"]


def test_no_search_without_search_loss(mlp64, batches64):
    opt = _opt(mlp64, search_interval=1, alpha=0.7)
    x, y = batches64[0]

    def closure():
        opt.zero_grad()
        loss = criterion(mlp64(x), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="search_loss"):  # a search is due: loud, not skipped
        opt.step(closure)
    assert opt.search_history == [] and opt.alpha == 0.7 and opt.step_count == 0
    with pytest.raises(ValueError, match="search_loss"):
        opt.step(closure, update_alpha=True)
    opt.step(closure, update_alpha=False)  # this step asked for no search
    assert opt.step_count == 1


def test_step_returns_first_loss_and_needs_closure(mlp64, batches64):
    opt = _opt(mlp64)
    x, y = batches64[0]
    expected = float(criterion(mlp64(x), y).detach())
    assert float(closure_step(opt, mlp64, x, y).detach()) == expected
    with pytest.raises(ValueError, match="closure"):
        opt.step()


def test_state_holds_theta0_only(mlp64, batches64):
    opt = _opt(mlp64, momentum=0.9, steps=2)
    for x, y in batches64[:2]:
        authors_step(opt, mlp64, x, y, 2, update_alpha=True)
    for p in mlp64.parameters():
        assert set(opt.state[p]) == {"theta0"}
        assert set(opt.base_optimizer.state[p]) == {"momentum_buffer"}


# --------------------------------------------------------------- params left alone
class _TwoBranch(nn.Module):
    """Branch ``a`` always used; branch ``b`` used only when ``use_b`` says so."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(6, 3).double()
        self.b = nn.Linear(6, 3).double()
        self.frozen = nn.Linear(6, 3).double().requires_grad_(False)
        self.use_b = True

    def forward(self, x):
        out = self.a(x) + self.frozen(x)
        return out + self.b(x) if self.use_b else out


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_frozen_and_unused_params_never_move(fuse, batches64):
    model = _TwoBranch()
    model.use_b = False
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        backend="reference",
        rho=0.3,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-2,
        fuse_base_update=fuse,
        steps=2,
    )
    frozen, unused, used = (params_of(model.frozen), params_of(model.b), params_of(model.a))
    for x, y in batches64:
        authors_step(opt, model, x, y, 2, update_alpha=True)
    assert all(torch.equal(p, q) for p, q in zip(model.frozen.parameters(), frozen))
    assert all(torch.equal(p, q) for p, q in zip(model.b.parameters(), unused))
    assert not all(torch.equal(p, q) for p, q in zip(model.a.parameters(), used))


@pytest.mark.parametrize("search", [False, True], ids=["fixed", "search"])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_param_without_final_gradient_ends_at_theta0(fuse, search, batches64):
    """A param with a gradient in the ascent but none at the ascent point takes no step.

    It moved during the ascent; it must end the step exactly where it started
    (the authors restore every parameter before the base step, which skips it).
    The other params follow the re-derivation.
    """
    model = _TwoBranch()
    model64 = _TwoBranch()
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        backend="reference",
        rho=0.3,
        steps=2,
        lr=0.1,
        momentum=0.9,
        fuse_base_update=fuse,
    )
    ref = Float64XSAM(model64, rho=0.3, steps=2, base="sgd", lr=0.1, momentum=0.9)
    b_start = params_of(model.b)
    for x, y in batches64:
        calls = {"n": 0}

        def loss64():  # ascent passes use b; the final gradient and the search do not
            model64.use_b = calls["n"] < 2
            calls["n"] += 1
            return criterion(model64(x), y)

        ref.step(loss64, search=search)
        model.use_b = True
        opt.backup_param()
        for i in range(2):
            opt.zero_grad()
            criterion(model(x), y).backward()
            opt.first_step(i)
        model.use_b = False
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.second_step(search, model, x, y, criterion)
        assert all(torch.equal(p, q) for p, q in zip(model.b.parameters(), b_start))
        assert_params_close(params_of(model), params_of(model64), 1e-12, 1e-12)


def test_param_with_gradient_only_at_the_ascent_point(batches64):
    """A param without gradient during the ascent but with one at the end is stepped with
    its share of G (d = 0 for it), as in the re-derivation."""
    model, model64 = _TwoBranch(), _TwoBranch()
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        backend="reference",
        rho=0.3,
        lr=0.1,
        momentum=0.9,
        alpha=0.5,
    )
    ref = Float64XSAM(model64, rho=0.3, base="sgd", lr=0.1, momentum=0.9, alpha=0.5)
    for x, y in batches64:
        calls = {"n": 0}

        def loss64():
            model64.use_b = calls["n"] >= 1
            calls["n"] += 1
            return criterion(model64(x), y)

        ref.step(loss64)
        model.use_b = False
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.first_step(0)
        model.use_b = True
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.second_step()
        assert_params_close(params_of(model), params_of(model64), 1e-12, 1e-12)


@pytest.mark.parametrize("capturable", [False, True])
def test_adamw_is_fused_capturable_or_not(capturable, mlp64, batches64):
    """AdamW's bias corrections come from per-tensor step counts on the device, so
    ``capturable=True`` (torch's flag for CUDA-graph capture) is fused like the default:
    the base ``step()`` never runs, and the step counts advance on the device."""
    opt = XSAM(mlp64.parameters(), torch.optim.AdamW, lr=0.01, rho=0.2, capturable=capturable)
    calls = []
    opt.base_optimizer.step = lambda closure=None: calls.append(closure)
    closure_step(opt, mlp64, *batches64[0])
    closure_step(opt, mlp64, *batches64[1])
    assert calls == []
    for p in mlp64.parameters():
        step = opt.base_optimizer.state[p]["step"]
        assert step.device == p.device and float(step) == 2.0


def test_gradients_are_freed_by_zero_grad_after_a_step(mlp64, batches64):
    """The step keeps no reference to the gradients it used."""
    import gc
    import weakref

    opt = _opt(mlp64, momentum=0.9)
    closure_step(opt, mlp64, *batches64[0])
    refs = [weakref.ref(p.grad) for p in mlp64.parameters()]
    opt.zero_grad()
    gc.collect()
    assert all(r() is None for r in refs)
