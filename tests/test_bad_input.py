"""Bad hyper-parameters, degenerate and failing steps: the deviations from the authors' code.

* bad constructor arguments raise ValueError naming the argument;
* the cosine is clamped to [-1, 1] (the authors' arccos can return NaN);
* a zero gradient gives no NaN and no move;
* a non-finite gradient restores theta_0 exactly and skips ("warn") or raises;
* an exception anywhere inside a step leaves the parameters at theta_0;
* sparse gradients are refused with a clear error.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from conftest import authors_step, closure_step, criterion, make_batches, make_mlp, params_of
from xsam_fast import XSAM
from xsam_fast import coefficients
from xsam_fast.backends import backend_names
from xsam_fast.compat import XSAM as CompatXSAM


def _params():
    return [nn.Parameter(torch.randn(3))]


# ------------------------------------------------------------- hyper-parameters
@pytest.mark.parametrize(
    "name,value",
    [
        ("rho", -0.1),
        ("rho", math.nan),
        ("rho", math.inf),
        ("rho_max", -1.0),
        ("rho_max", math.nan),
        ("eps", -1e-12),
        ("eps", math.nan),
        ("alpha_delta", 0.0),
        ("alpha_delta", -0.1),
        ("alpha_delta", math.nan),
        ("alpha_max", -0.5),
        ("steps", 0),
        ("steps", -1),
        ("steps", 2.0),
        ("steps", "2"),
    ],
    ids=lambda v: repr(v),
)
def test_bad_hyper_parameter_raises_naming_it(name, value):
    with pytest.raises(ValueError, match=name):
        XSAM(_params(), torch.optim.SGD, lr=0.1, **{name: value})


@pytest.mark.parametrize("name,value", [("rho", -0.1), ("rho_max", math.nan)])
def test_bad_group_hyper_parameter_raises(name, value):
    group = {"params": _params(), name: value}
    with pytest.raises(ValueError, match=name):
        XSAM([group], torch.optim.SGD, lr=0.1)
    opt = XSAM(_params(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=name):
        opt.add_param_group({"params": _params(), name: value})


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        XSAM(_params(), torch.optim.SGD, lr=0.1, backend="no-such-backend")
    message = str(info.value)
    assert "no-such-backend" in message
    for name in backend_names():
        assert name in message
    assert "reference" in message


def test_compat_rejects_bad_steps():
    with pytest.raises(ValueError, match="steps"):
        CompatXSAM(_params(), torch.optim.SGD, 0, 0.1, 0.3, 1.0, 2.0, 0.1, 1e-12, lr=0.1)


# ------------------------------------------------------------------ the cosine
def test_angle_clamps_cosine_above_one():
    # ||g|| = 2, ||d|| = 1, <d, g> a hair above 2: the unclamped cosine is > 1
    sums = torch.tensor([4.0, 1.0, 2.0 * (1 + 4e-16)], dtype=torch.float64)
    assert float(sums[2] / (sums[0].sqrt() * sums[1].sqrt())) > 1
    psi, ng, nd = coefficients.angle(sums, 0.0)
    assert float(psi) == 0.0 and float(ng) == 2.0 and float(nd) == 1.0
    psi, _, _ = coefficients.angle(
        torch.tensor([4.0, 1.0, -2.0 * (1 + 4e-16)], dtype=torch.float64), 0.0
    )
    assert float(psi) == pytest.approx(math.pi, abs=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_parallel_gradient_and_displacement_give_no_nan(dtype):
    """Linear loss <c, theta> from theta_0 = 0: g = c and d = r c/||c||, parallel.

    ``c`` is chosen so that the cosine computed from the one-pass sums rounds
    above 1 (arccos would be NaN without the clamp); the step must then take
    the sin(psi) < 1e-8 branch, G = ||g|| (v0 + v1) / 2, whatever alpha.
    """
    rho, lr = 0.5, 0.1
    # in float64 an eps of 1e-12 alone keeps the cosine below 1; float32 rounds past it
    eps = 1e-12 if dtype == torch.float32 else 0.0
    gen = torch.Generator().manual_seed(0)
    for _ in range(1000):
        c = torch.randn(37, generator=gen, dtype=torch.float64).to(dtype)
        d = (rho / ((c * c).sum().sqrt() + eps)) * c
        cos = (d * c).sum() / (((d * d).sum().sqrt() + eps) * ((c * c).sum().sqrt() + eps))
        if cos > 1:
            break
    else:
        pytest.fail("no vector found whose cosine rounds above 1")
    theta = nn.Parameter(torch.zeros(37, dtype=dtype))
    opt = XSAM([theta], torch.optim.SGD, backend="reference", rho=rho, alpha=1.7, lr=lr, eps=eps)
    opt.zero_grad()
    (theta * c).sum().backward()
    opt.first_step(0)
    opt.zero_grad()
    (theta * c).sum().backward()
    opt.second_step()
    assert torch.isfinite(theta).all()
    # the angle is taken in float64 from the float32 sums: tiny, or exactly 0
    assert opt.stats()["psi"] < 1e-3
    c64, d64 = c.double(), d.double()
    v0 = d64 / (d64.norm() + eps)
    v1 = c64 / (c64.norm() + eps)
    expected = -lr * c64.norm() * (v0 + v1) / 2
    torch.testing.assert_close(
        theta.detach().double(), expected, atol=1e-6 if dtype == torch.float32 else 1e-14, rtol=0
    )


@pytest.mark.parametrize("api", ["authors", "closure"])
def test_zero_gradient_no_nan_no_move(api):
    model = make_mlp()
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        backend="reference",
        rho=0.2,
        lr=0.1,
        momentum=0.9,
        model=model,
    )
    start = params_of(model)
    x, y = make_batches("mlp", 1)[0]

    def zero_loss():
        return criterion(model(x), y) * 0.0

    for update_alpha in (False, True):
        if api == "authors":
            opt.backup_param()
            opt.zero_grad()
            zero_loss().backward()
            opt.first_step(0)
            opt.zero_grad()
            zero_loss().backward()
            opt.second_step(update_alpha, search_loss=zero_loss)
        else:

            def closure():
                opt.zero_grad()
                loss = zero_loss()
                loss.backward()
                return loss

            opt.step(closure, search_loss=zero_loss, update_alpha=update_alpha)
        for p, s in zip(model.parameters(), start):
            assert torch.equal(p, s)
        stats = opt.stats()
        assert all(math.isfinite(stats[k]) for k in ("psi", "grad_norm", "d_norm"))
        assert stats["grad_norm"] == 0.0 and stats["d_norm"] == 0.0


# ---------------------------------------------------------- non-finite gradients
BASES = {
    "sgd-momentum": (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    "adamw": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2)),
}


def _good_then_bad(
    bad_pass: int, value: float, steps: int, nonfinite: str, base: str = "sgd-momentum"
):
    """A model after one good step, and a closure that poisons pass ``bad_pass`` of the next."""
    model = make_mlp()
    cls, kw = BASES[base]
    opt = XSAM(
        model.parameters(),
        cls,
        backend="reference",
        rho=0.2,
        steps=steps,
        nonfinite=nonfinite,
        model=model,
        **kw,
    )
    batches = make_batches("mlp", 2)
    closure_step(opt, model, *batches[0])
    x, y = batches[1]
    calls = {"n": 0}

    def closure():
        opt.zero_grad()
        loss = criterion(model(x), y)
        if calls["n"] == bad_pass:
            loss = loss * value
        calls["n"] += 1
        loss.backward()
        return loss

    return model, opt, closure


def _snapshot(opt):
    """Every tensor of the base optimizer's state, cloned, keyed by (param, name)."""
    return {
        (id(p), name): t.clone()
        for p, st in opt.base_optimizer.state.items()
        for name, t in st.items()
    }


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("bad_pass", [0, 1, 2], ids=["first-pass", "second-ascent", "final"])
def test_nonfinite_warn_restores_and_skips(bad_pass, value, base):
    model, opt, closure = _good_then_bad(bad_pass, value, steps=2, nonfinite="warn", base=base)
    start, buffers, count = params_of(model), _snapshot(opt), opt.step_count
    # decided on the device; warned about once the count's host copy has landed (on the
    # CPU at once, without stats())
    with pytest.warns(RuntimeWarning, match="1 step.*skipped"):
        opt.step(closure)
    for p, s in zip(model.parameters(), start):
        assert torch.equal(p, s)
    after = _snapshot(opt)
    assert after.keys() == buffers.keys()
    assert all(torch.equal(after[k], buffers[k]) for k in after)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported already
        stats = opt.stats()
    assert opt.step_count == count + 1 and stats["skipped"] and stats["skipped_steps"] == 1
    # the next good step runs normally
    closure_step(opt, model, *make_batches("mlp", 1, seed=5)[0])
    assert opt.step_count == count + 2 and not opt.stats()["skipped"]


@pytest.mark.parametrize("bad_pass", [0, 1, 2], ids=["first-pass", "second-ascent", "final"])
def test_nonfinite_raise(bad_pass):
    model, opt, closure = _good_then_bad(bad_pass, math.nan, steps=2, nonfinite="raise")
    start, buffers = params_of(model), _snapshot(opt)
    with pytest.raises(FloatingPointError):
        opt.step(closure)
    for p, s in zip(model.parameters(), start):
        assert torch.equal(p, s)
    after = _snapshot(opt)
    assert all(torch.equal(after[k], buffers[k]) for k in after)


def test_nonfinite_warn_in_authors_sequence():
    model = make_mlp()
    opt = XSAM(model.parameters(), torch.optim.SGD, backend="reference", rho=0.2, lr=0.1)
    x, y = make_batches("mlp", 1)[0]
    start = params_of(model)
    opt.backup_param()
    opt.zero_grad()
    criterion(model(x), y).backward()
    opt.first_step(0)
    opt.zero_grad()
    (criterion(model(x), y) * math.inf).backward()
    with pytest.warns(RuntimeWarning, match="1 step.*skipped"):
        opt.second_step()
    for p, s in zip(model.parameters(), start):
        assert torch.equal(p, s)
    assert not opt.base_optimizer.state
    assert opt.stats()["skipped"]


# ---------------------------------------------------------------- exceptions
class _Boom(Exception):
    pass


@pytest.mark.parametrize("fail_at", [1, 2, 5], ids=["ascent-2", "final", "search-point-3"])
def test_exception_in_closure_or_search_leaves_theta0(fail_at):
    model = make_mlp()
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        backend="reference",
        rho=0.2,
        lr=0.1,
        momentum=0.9,
        steps=2,
    )
    x, y = make_batches("mlp", 1)[0]
    start = params_of(model)
    calls = {"n": 0}

    def tick():
        if calls["n"] == fail_at:
            raise _Boom()
        calls["n"] += 1

    def closure():
        tick()
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        return loss

    def search_loss():
        tick()
        return criterion(model(x), y)

    with pytest.raises(_Boom):
        opt.step(closure, search_loss=search_loss, update_alpha=True)
    for p, s in zip(model.parameters(), start):
        assert torch.equal(p, s)
    assert not opt.base_optimizer.state and opt.step_count == 0


def test_exception_inside_model_during_authors_search_leaves_theta0():
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = make_mlp()
            self.calls = 0
            self.fail_at = None

        def forward(self, x):
            self.calls += 1
            if self.calls == self.fail_at:
                raise _Boom()
            return self.net(x)

    model = Flaky()
    opt = XSAM(model.parameters(), torch.optim.SGD, backend="reference", rho=0.2, lr=0.1)
    x, y = make_batches("mlp", 1)[0]
    start = params_of(model)
    model.fail_at = 2 + 7  # two gradient passes, then the 7th search point
    with pytest.raises(_Boom):
        authors_step(opt, model, x, y, 1, update_alpha=True)
    for p, s in zip(model.parameters(), start):
        assert torch.equal(p, s)
    # the optimizer is usable afterwards
    model.fail_at = None
    authors_step(opt, model, x, y, 1, update_alpha=True)
    assert opt.step_count == 1


# --------------------------------------------------------------------- sparse
@pytest.mark.parametrize("api", ["authors", "closure"])
def test_sparse_gradient_is_refused_clearly(api):
    emb = nn.Embedding(10, 4, sparse=True)
    head = nn.Linear(4, 2)
    params = list(emb.parameters()) + list(head.parameters())
    opt = XSAM(params, torch.optim.SGD, backend="reference", rho=0.2, lr=0.1)
    idx = torch.tensor([1, 2, 3])
    start = [p.detach().clone() for p in params]

    def closure():
        opt.zero_grad()
        loss = head(emb(idx)).pow(2).sum()
        loss.backward()
        return loss

    with pytest.raises((RuntimeError, ValueError, TypeError), match="sparse"):
        if api == "closure":
            opt.step(closure)
        else:
            opt.backup_param()
            closure()
            opt.first_step(0)
    for p, s in zip(params, start):
        assert torch.equal(p, s)


def test_nonfinite_none_checks_nothing():
    """``nonfinite="none"``: no check, NaN propagates (documented), no warning."""
    model = make_mlp()
    opt = XSAM(
        model.parameters(), torch.optim.SGD, backend="reference", rho=0.2, lr=0.1, nonfinite="none"
    )
    x, y = make_batches("mlp", 1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.backup_param()
        opt.zero_grad()
        (criterion(model(x), y) * math.nan).backward()
        opt.first_step(0)
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.second_step()
    assert not all(torch.isfinite(p).all() for p in model.parameters())
