"""Misuse and corner cases that used to train wrongly without an error.

Each test names the case; each behaviour is either the correct result where the
input can be honoured, or a clear error or warning naming the cause.
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import xsam_fast
from conftest import criterion, make_batches, make_cnn_bn, make_mlp, params_of
from xsam_fast import XSAM, checkpoint
from xsam_fast.compat import XSAM as CompatXSAM
from xsam_fast.search import ModelLoss


def _closure(opt, model, x, y):
    def closure():
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        return loss

    return closure


# ------------------------------------------------------------------ fidelity
class _LateBranch(nn.Module):
    """``late`` gets a gradient only from the second forward pass of a step on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 3).double()
        self.late = nn.Parameter(torch.randn(3, dtype=torch.float64))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.a(x)
        return out + self.late if self.calls % 3 != 1 else out


@pytest.mark.parametrize("adaptive", [False, True], ids=["plain", "asam"])
def test_param_first_moved_by_a_later_ascent_is_backed_up(adaptive):
    """k = 2 and a parameter that joins at the second ascent (MoE routing, LayerDrop):
    backed up before it moves, its displacement counted in ||d||, and with lr = 0 every
    parameter ends exactly at theta_0."""
    model = _LateBranch()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.3,
        steps=2,
        lr=0.0,
        adaptive=adaptive,
        eta=0.1,
        adaptive_weights_only=False,
        backend="reference",
    )
    start = params_of(model)
    closure = _closure(opt, model, x, y)
    closure()
    opt.first_step(0)
    assert model.late.grad is None
    closure()
    opt.first_step(1)
    moved = [p.detach() - s for p, s in zip(model.parameters(), start)]
    assert moved[-1].abs().sum() > 0  # the late parameter took the second ascent
    closure()
    opt.second_step()
    if not adaptive:
        assert opt.stats()["d_norm"] == pytest.approx(
            math.sqrt(sum(float((m * m).sum()) for m in moved)), rel=1e-12
        )
    for p, s in zip(model.parameters(), start):
        assert torch.equal(p, s)


@pytest.mark.parametrize("shift", [-10.0, 0.0], ids=["negative", "zero-crossing"])
def test_search_picks_the_largest_loss_even_when_all_are_negative(shift):
    """The authors start from (alpha, loss) = (0, 0): with every loss negative (Gaussian
    NLL, -ELBO, a shifted loss) they always return 0. The search picks the largest."""
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, backend="reference")
    loss = lambda: criterion(model(x), y) + shift  # noqa: E731
    opt.step(_closure(opt, model, x, y), search_loss=loss, update_alpha=True)
    losses = [v for _, v in opt.search_curve]
    assert opt.alpha == opt.search_curve[int(np.argmax(losses))][0]
    assert opt.alpha > 0 or max(losses) == losses[0]


def test_search_with_no_finite_loss_keeps_alpha_and_warns():
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, alpha=0.6, backend="reference")
    with pytest.warns(RuntimeWarning, match="no finite loss"):
        opt.step(
            _closure(opt, model, x, y),
            search_loss=lambda: torch.tensor(math.nan),
            update_alpha=True,
        )
    assert opt.alpha == 0.6


def test_eps_zero_with_rho_zero_is_the_base_step():
    """eps = 0 and rho = 0: the displacement is 0 (unit vector 0, not 0/0); alpha = 1 then
    gives G = g, the base optimizer's own step."""
    model, twin = make_mlp(), make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(model.parameters(), torch.optim.SGD, rho=0.0, eps=0.0, lr=0.1, backend="reference")
    opt.step(_closure(opt, model, x, y))
    sgd = torch.optim.SGD(twin.parameters(), lr=0.1)
    criterion(twin(x), y).backward()
    sgd.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


def test_tiny_eta_with_zero_weights_writes_no_nan():
    """ASAM with T = |w| + 1e-30 where w = 0: T^2 underflows to 0; d / T^2 is 0, not 0/0."""
    layer = nn.Linear(4, 3).double()
    with torch.no_grad():
        layer.weight[0].zero_()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    opt = XSAM(
        layer.parameters(),
        torch.optim.SGD,
        rho=0.5,
        adaptive=True,
        eta=1e-300,
        lr=0.1,
        backend="reference",
    )
    opt.step(_closure(opt, layer, x, y))
    assert all(torch.isfinite(p).all() for p in layer.parameters())
    assert opt.stats()["skipped_steps"] == 0


# ------------------------------------------------------------------ faults on other paths
@pytest.mark.parametrize("nonfinite", ["warn", "raise"])
def test_interval_plain_steps_are_guarded(nonfinite):
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.2,
        lr=0.1,
        momentum=0.9,
        interval=2,
        nonfinite=nonfinite,
        backend="reference",
    )
    opt.step(_closure(opt, model, x, y))  # an XSAM step
    before = params_of(model)

    def bad():
        opt.zero_grad()
        loss = criterion(model(x), y) * math.nan
        loss.backward()
        return loss

    if nonfinite == "raise":
        with pytest.raises(FloatingPointError):
            opt.step(bad)
    else:
        with pytest.warns(RuntimeWarning, match="skipped"):  # without reading stats()
            opt.step(bad)  # a plain step
        assert opt.stats()["skipped_steps"] == 1
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), before))


def test_search_hook_that_raises_undoes_the_whole_step():
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, alpha=0.4, backend="reference")
    opt.register_search_hook(lambda o, r: (_ for _ in ()).throw(KeyError("hook")))
    before = params_of(model)
    with pytest.raises(KeyError):
        opt.step(
            _closure(opt, model, x, y),
            search_loss=lambda: criterion(model(x), y),
            update_alpha=True,
        )
    assert opt.alpha == 0.4 and opt.search_history == [] and opt.search_curve == []
    assert opt.step_count == 0
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), before))


def test_manual_api_way_back_and_refused_second_ascent():
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, backend="reference")
    before = params_of(model)
    criterion(model(x), y).backward()
    opt.first_step()
    opt.restore_param()  # what the README's example does when the forward fails
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), before))
    criterion(model(x), y).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="steps=1"):
        opt.first_step()  # would silently ascend 2 rho
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), before))


# ------------------------------------------------------------------ misuse
def test_closure_api_without_model_keeps_batchnorm_statistics():
    model = make_cnn_bn()
    x, y = make_batches("cnn_bn", 1)[0]
    opt = XSAM(model.parameters(), torch.optim.SGD, rho=0.2, steps=2, lr=0.1, backend="reference")
    for _ in range(3):
        opt.step(
            _closure(opt, model, x, y),
            search_loss=lambda: criterion(model(x), y),
            update_alpha=True,
        )
    assert int(model[1].num_batches_tracked) == 3


@pytest.mark.parametrize("trailing_zero_grad", [True, False], ids=["their-loop", "forgotten"])
def test_davda54_style_closure_gives_the_same_step(trailing_zero_grad):
    """davda54/sam: the first backward outside step(), closures without zero_grad (their
    loop zeroes after the step; a forgotten zero_grad leaves the last step's gradients,
    which XSAM clears before its first pass). The first pass may hold twice the gradient,
    which the ascent normalises away (to eps)."""
    results = []
    x, y = make_batches("mlp", 1)[0]
    for style in ("torch", "davda54"):
        model = make_mlp()
        opt = XSAM(
            model.parameters(),
            torch.optim.SGD,
            rho=0.2,
            steps=2,
            lr=0.1,
            momentum=0.9,
            backend="reference",
        )
        for _ in range(3):
            if style == "torch":
                opt.step(_closure(opt, model, x, y))
            else:
                criterion(model(x), y).backward()
                opt.step(lambda: criterion(model(x), y).backward())
                if trailing_zero_grad:
                    opt.zero_grad()
        results.append(params_of(model))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_davda54_first_step_zero_grad():
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, backend="reference")
    criterion(model(x), y).backward()
    opt.first_step(zero_grad=True)
    assert all(p.grad is None for p in model.parameters())
    criterion(model(x), y).backward()
    opt.second_step(zero_grad=True)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf])
def test_a_scheduled_rho_is_checked_at_each_step(bad):
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(
        [{"params": [model[0].weight]}, {"params": [model[0].bias, *model[2].parameters()]}],
        torch.optim.SGD,
        rho=0.2,
        lr=0.1,
        backend="reference",
    )
    opt.step(_closure(opt, model, x, y))
    opt.param_groups[1]["rho"] = bad
    before = params_of(model)
    with pytest.raises(ValueError, match=r"rho must be .*param group 1"):
        opt.step(_closure(opt, model, x, y))
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), before))


def test_deepcopy_keeps_everything():
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.2,
        lr=0.1,
        alpha=0.3,
        momentum=0.9,
        backend="reference",
    )
    opt.step(_closure(opt, model, x, y))
    twin = copy.deepcopy(opt)
    assert twin.alpha == 0.3 and twin.step_count == 1 and twin.base_optimizer is not None
    assert twin.param_groups is twin.base_optimizer.param_groups


def test_plain_optimizer_state_dict_loads_and_keeps_rho():
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion(model(x), y).backward()
    sgd.step()
    opt = XSAM(
        model.parameters(), torch.optim.SGD, rho=0.25, lr=0.3, momentum=0.9, backend="reference"
    )
    opt.load_state_dict(sgd.state_dict())
    assert opt.param_groups[0]["rho"] == 0.25 and opt.param_groups[0]["lr"] == 0.1
    opt.step(_closure(opt, model, x, y))  # used to raise KeyError: 'rho'
    with pytest.raises(ValueError, match="param groups"):
        opt.load_state_dict({"state": {}, "param_groups": []})


def test_group_added_to_the_base_optimizer_is_stepped():
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM([model[0].weight], torch.optim.SGD, rho=0.2, lr=0.1, backend="reference")
    opt.base_optimizer.add_param_group({"params": [model[0].bias, *model[2].parameters()]})
    before = params_of(model)
    opt.step(_closure(opt, model, x, y))
    assert opt.param_groups[1]["rho"] == 0.2
    assert not any(torch.equal(a, b) for a, b in zip(params_of(model), before))
    sd = opt.state_dict()
    fresh = XSAM([model[0].weight], torch.optim.SGD, rho=0.2, lr=0.1, backend="reference")
    fresh.add_param_group({"params": [model[0].bias, *model[2].parameters()]})
    fresh.load_state_dict(sd)


def test_backends_and_base_optimizers_that_cannot_work_are_refused_at_construction():
    params = make_mlp().parameters()
    for name, why in xsam_fast.backend_status().items():
        if why:
            with pytest.raises(ValueError, match=f"backend '{name}' cannot run here"):
                XSAM(make_mlp().parameters(), backend=name, lr=0.1)
    with pytest.raises(ValueError, match="LBFGS"):
        XSAM(params, torch.optim.LBFGS, lr=0.1)


def test_numbers_of_any_kind_and_bool_refused():
    p = make_mlp().parameters
    opt = XSAM(p(), rho=np.float32(0.1), alpha=torch.tensor(0.5), steps=np.int64(2), lr=0.1)
    assert opt.steps == 2 and opt.alpha == 0.5 and opt.param_groups[0]["rho"] == pytest.approx(0.1)
    for kw in (dict(steps=True), dict(rho=True), dict(alpha=False)):
        with pytest.raises(ValueError):
            XSAM(p(), lr=0.1, **kw)


def test_compat_reports_the_rho_the_user_gave():
    with pytest.raises(ValueError, match=r"rho \(the length of one ascent step here\).*-0\.1"):
        CompatXSAM(
            make_mlp().parameters(), torch.optim.SGD, 2, -0.1, 0.3, 1.0, 2.0, 0.1, 1e-12, lr=0.1
        )


def test_closure_without_backward_says_so():
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(model.parameters(), lr=0.1, backend="reference")
    with pytest.raises(RuntimeError, match="loss.backward"):
        opt.step(lambda: criterion(model(x), y))


def test_step_without_closure_is_refused_unless_initialising():
    model = make_mlp()
    opt = XSAM(model.parameters(), lr=0.1, backend="reference")
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step()


# ------------------------------------------------------------------ nothing lost
def test_pending_search_request_survives_a_checkpoint():
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(model.parameters(), lr=0.1, backend="reference")
    opt.step(_closure(opt, model, x, y))
    opt.request_search()
    fresh = XSAM(model.parameters(), lr=0.1, backend="reference")
    fresh.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="request_search"):
        fresh.step(_closure(fresh, model, x, y))
    fresh.step(_closure(fresh, model, x, y), search_loss=lambda: criterion(model(x), y))
    assert len(fresh.search_history) == 1


def test_checkpoint_history_is_bounded():
    from xsam_fast.checkpoint import HISTORY_IN_CHECKPOINT

    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(model.parameters(), lr=0.1, backend="reference", alpha_delta=1.0)
    for _ in range(HISTORY_IN_CHECKPOINT + 5):
        opt.step(
            _closure(opt, model, x, y),
            search_loss=lambda: criterion(model(x), y),
            update_alpha=True,
        )
    saved = checkpoint.read(opt.state_dict())["search_history"]
    assert len(saved) == HISTORY_IN_CHECKPOINT
    assert saved[-1]["step"] == opt.search_history[-1]["step"]


def test_skipped_steps_are_counted_and_checkpointed():
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(model.parameters(), lr=0.1, backend="reference")
    with pytest.warns(RuntimeWarning, match="1 step"):
        opt.step(lambda: (criterion(model(x), y) * math.nan).backward())
    assert opt.stats()["skipped_steps"] == 1
    fresh = XSAM(model.parameters(), lr=0.1, backend="reference")
    fresh.load_state_dict(opt.state_dict())
    fresh.step(_closure(fresh, model, x, y))
    assert fresh.stats()["skipped_steps"] == 1


# ------------------------------------------------------------------ found in a new user's trial
def test_a_run_of_nan_losses_warns_without_stats():
    """Every loss NaN and nobody reads stats(): the default nonfinite="warn" still warns,
    at the 1st, 2nd, 4th and 8th skipped step (stats() would report every one)."""
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(model.parameters(), lr=0.1, backend="reference")
    before = params_of(model)
    with pytest.warns(RuntimeWarning, match="skipped") as seen:
        for _ in range(9):
            opt.step(lambda: (criterion(model(x), y) * math.nan).backward())
    totals = [int(re.search(r"\((\d+) in all\)", str(w.message))[1]) for w in seen]
    assert totals == [1, 2, 4, 8]
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), before))
    with pytest.warns(RuntimeWarning, match=r"1 step\(s\) skipped .*9 in all"):
        assert opt.stats()["skipped_steps"] == 9


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("fault", ["no-zero-grad", "no-backward"])
def test_manual_api_pass_without_fresh_gradients_is_refused(fault, steps):
    """The manual API with zero_grad() forgotten before a backward at the ascent point
    (g0 + g would be used as g), or with no backward at all (g0): refused, theta_0 back."""
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(model.parameters(), rho=0.2, lr=0.1, steps=steps, backend="reference")
    before = params_of(model)
    criterion(model(x), y).backward()
    opt.first_step()
    if fault == "no-zero-grad":
        criterion(model(x), y).backward()
    phase = opt.first_step if steps == 2 else opt.second_step  # the pass after the ascent
    match = "one backward pass added" if fault == "no-zero-grad" else "run the backward"
    with pytest.raises(RuntimeError, match=match):
        phase()
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), before))
    assert opt.step_count == 0


@pytest.mark.parametrize("clear", ["set_to_none", "zeros", "first_step_zero_grad"])
def test_manual_api_with_gradients_cleared_any_way_runs(clear):
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(model.parameters(), rho=0.2, lr=0.1, steps=2, backend="reference")
    for _ in range(2):
        criterion(model(x), y).backward()
        for i in range(3):
            if clear == "first_step_zero_grad":
                (opt.first_step if i < 2 else opt.second_step)(zero_grad=True)
            else:
                (opt.first_step if i < 2 else opt.second_step)()
                opt.zero_grad(set_to_none=clear == "set_to_none")
            if i < 2:
                criterion(model(x), y).backward()
    assert opt.step_count == 2


@pytest.mark.parametrize("key", ["lr", "momentum", "weight_decay"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -0.5])
def test_non_finite_or_negative_base_hyper_parameters_refused(key, value):
    """NaN passes torch's own ``lr < 0`` checks and would reach every weight."""
    model = make_mlp()
    kw = dict(lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=rf"{key}|learning rate"):  # ours, or torch's
        XSAM(model.parameters(), **{**kw, key: value})
    opt = XSAM(model.parameters(), backend="reference", **kw)
    opt.param_groups[0][key] = value  # a scheduler's or a user's later write
    x, y = make_batches("mlp", 1)[0]
    before = params_of(model)
    with pytest.raises(ValueError, match=f"{key} must be a finite number >= 0 .param group 0."):
        opt.step(_closure(opt, model, x, y))
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), before))


def test_tensor_lr_is_left_to_the_base_optimizer():
    opt = XSAM(make_mlp().parameters(), lr=torch.tensor(0.1), backend="reference")
    assert torch.is_tensor(opt.param_groups[0]["lr"])


def test_negative_alpha_refused_like_a_negative_alpha_max():
    model = make_mlp()
    for kw in (dict(alpha=-0.1), dict(alpha_max=-1.0)):
        with pytest.raises(ValueError, match=r"alpha(_max)? must be a finite number >= 0"):
            XSAM(model.parameters(), lr=0.1, **kw)
    opt = XSAM(model.parameters(), lr=0.1, backend="reference", alpha=3.0)  # past g: allowed
    opt.alpha = -1.0
    x, y = make_batches("mlp", 1)[0]
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        opt.step(_closure(opt, model, x, y))


def test_step_with_closure_inside_a_manual_step_says_so():
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    opt = XSAM(model.parameters(), rho=0.2, lr=0.1, backend="reference")
    before = params_of(model)
    criterion(model(x), y).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match=r"manual-API step is under way.*theta_0 restored"):
        opt.step(_closure(opt, model, x, y))
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), before))
    opt.step(_closure(opt, model, x, y))  # and the next step runs
    assert opt.step_count == 1


@pytest.mark.parametrize("fault", ["vector", "backward", "none", "batched-shape"])
def test_search_loss_that_is_not_a_forward_only_scalar_says_so(fault):
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    batch = 4 if fault == "batched-shape" else 1
    opt = XSAM(model.parameters(), rho=0.2, lr=0.1, backend="reference", search_batch=batch)
    before = params_of(model)
    per_sample = nn.CrossEntropyLoss(reduction="none")
    search_loss = {
        "vector": lambda: per_sample(model(x), y),
        "backward": _closure(opt, model, x, y),
        "none": lambda: None,
        "batched-shape": ModelLoss(model, x, y, per_sample),
    }[fault]
    error, match = {
        "vector": (ValueError, r"must return a scalar loss, got shape \(\d+,\)"),
        "backward": (RuntimeError, "forward only"),
        "none": (TypeError, "as a tensor, got NoneType"),
        "batched-shape": (ValueError, r"must return 4 losses \(one per point\)"),
    }[fault]
    with pytest.raises(error, match=match):
        opt.step(_closure(opt, model, x, y), search_loss=search_loss, update_alpha=True)
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), before))
    assert opt.step_count == 0 and not opt.search_history
