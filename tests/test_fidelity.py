"""Fidelity: the package's update against an independent statement of the authors' code.

``authors_xsam.AuthorsXSAM`` restates the authors' ``utils/xsam.py`` tensor by
tensor (see that module); nothing of ``xsam_fast`` is used to build the
expected values. The package runs through its public API only (``XSAM(...)``,
``first_step``/``second_step``, the closure ``step``, ``alpha``,
``search_curve``, the BN helpers, ``xsam_fast.compat.XSAM``), on its default
backend and on ``backend="reference"``, in the regime where the authors' code is
well-defined: finite values, eps > 0 (or no zero norm), a positive loss on the
search grid (cross-entropy). Several consecutive steps each, so momentum buffers
and the searched alpha carry over.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import xsam_fast
from authors_xsam import AuthorsXSAM, train_step
from authors_xsam import disable_running_stats as authors_disable
from authors_xsam import enable_running_stats as authors_enable
from conftest import make_batches, make_cnn_bn, make_mlp
from xsam_fast import XSAM
from xsam_fast.compat import XSAM as CompatXSAM

#: (atol, rtol) between the package and the authors' arithmetic
TOLERANCES = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5)}
DTYPE_IDS = {torch.float64: "fp64", torch.float32: "fp32"}

MODELS = {"mlp": make_mlp, "cnn_bn": make_cnn_bn}
#: (model, dtype) pairs: both models in float64, the MLP in float32 too
CASES = [("mlp", torch.float64), ("cnn_bn", torch.float64), ("mlp", torch.float32)]
CASE_IDS = [f"{m}-{DTYPE_IDS[d]}" for m, d in CASES]

#: SGD variants; a larger lr and weight decay than their train.py's defaults (0.05, wd 1e-3,
#: used in the compat test) so that every term moves the parameters visibly within three steps
BASES = {
    "momentum": dict(lr=0.1, momentum=0.9),
    "nesterov": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-3),
    "weight_decay": dict(lr=0.1, momentum=0.9, weight_decay=1e-2),
}
BACKENDS = ["auto", "reference"]
RHO = 0.15  # TOTAL ascent length, as the package takes it
#: search radius at which the loss curves of these tiny models peak inside the default grid
#: 0..2 (at the authors' 0.3 they peak at its end, which would leave the selection untested)
SEARCH_RHO_MAX = 0.2
EPS = 1e-12
criterion = nn.CrossEntropyLoss()


# ------------------------------------------------------------------ comparison
def assert_close(actual: Tensor, expected: Tensor, dtype: torch.dtype, what: str) -> None:
    """Elementwise |a - e| <= atol + rtol |e| (NaN fails); names the first mismatching element."""
    atol, rtol = TOLERANCES[dtype]
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    )
    a = actual.detach().double().reshape(-1)
    e = expected.detach().double().reshape(-1)
    bad = ~((a - e).abs() <= atol + rtol * e.abs())
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        index = tuple(int(j) for j in np.unravel_index(i, tuple(actual.shape)))
        raise AssertionError(
            f"{what}: first mismatch at index {index}: package {a[i].item()!r}, authors "
            f"{e[i].item()!r} (|diff| {abs(a[i] - e[i]).item():.3e}, atol {atol}, rtol {rtol}); "
            f"{int(bad.sum())} of {a.numel()} elements differ"
        )


def assert_models_match(
    package: nn.Module, authors: nn.Module, dtype: torch.dtype, what: str
) -> None:
    """Parameters and BN running mean/variance (``num_batches_tracked`` deliberately differs)."""
    for (name, p), q in zip(package.named_parameters(), authors.parameters()):
        assert_close(p, q, dtype, f"{what}, parameter {name}")
    for (name, b), c in zip(package.named_buffers(), authors.buffers()):
        if not name.endswith("num_batches_tracked"):
            assert_close(b, c, dtype, f"{what}, buffer {name}")


def assert_momentum_match(
    package_state: dict[str, Any], authors_state: dict[str, Any], dtype: torch.dtype, what: str
) -> None:
    """The SGD momentum buffers of two ``state_dict()``s, by parameter index."""
    expected = authors_state["state"]
    assert set(package_state["state"]) == set(expected), f"{what}: state keys differ"
    for i, state in expected.items():
        assert_close(
            package_state["state"][i]["momentum_buffer"],
            state["momentum_buffer"],
            dtype,
            f"{what}, momentum buffer of parameter #{i}",
        )


# ------------------------------------------------------------------ set-up
def twin_models(model_name: str, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """Two identical models: one for the package, one for the authors' restatement."""
    model = MODELS[model_name](dtype)
    return model, copy.deepcopy(model)


def authors_optimizer(
    model: nn.Module,
    steps: int,
    rho_max: float,
    alpha: float,
    base: dict[str, Any],
    rho_per_step: float | None = None,
    eps: float = EPS,
) -> AuthorsXSAM:
    """Their class as their train.py builds it: rho per ascent (``RHO / steps`` by default)."""
    rho = RHO / steps if rho_per_step is None else rho_per_step
    return AuthorsXSAM(
        model.parameters(), torch.optim.SGD, steps, rho, rho_max, alpha, 2.0, 0.1, eps, **base
    )


def package_step(
    opt: XSAM, model: nn.Module, x: Tensor, y: Tensor, api: str, update_alpha: bool
) -> Tensor | None:
    """One package step through the authors' call sequence or the closure API."""
    if api == "authors_sequence":
        return train_step(
            opt,
            model,
            criterion,
            x,
            y,
            update_alpha,
            enable=xsam_fast.enable_running_stats,
            disable=xsam_fast.disable_running_stats,
        )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        return loss

    opt.step(closure, search_loss=lambda: criterion(model(x), y), update_alpha=update_alpha)
    return None


# ------------------------------------------------------------------ fixed alpha
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("steps", [1, 2, 3], ids=lambda k: f"k{k}")
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.7], ids=lambda a: f"alpha{a}")
@pytest.mark.parametrize("model_name,dtype", CASES, ids=CASE_IDS)
def test_fixed_alpha_matches_authors(model_name, dtype, alpha, steps, base, backend):
    """Three consecutive steps with a fixed alpha: parameters, BN statistics, momentum, ||g||."""
    model, theirs = twin_models(model_name, dtype)
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=RHO,
        steps=steps,
        alpha=alpha,
        eps=EPS,
        backend=backend,
        **BASES[base],
    )
    ref = authors_optimizer(theirs, steps, 2 * RHO, alpha, BASES[base])
    for n, (x, y) in enumerate(make_batches(model_name, 3, dtype)):
        scale = package_step(opt, model, x, y, "authors_sequence", update_alpha=False)
        expected_scale = train_step(ref, theirs, criterion, x, y, update_alpha=False)
        what = f"step {n}"
        assert_close(scale.reshape(1), expected_scale.reshape(1), dtype, f"{what}, ||g||")
        assert_models_match(model, theirs, dtype, what)
        assert_momentum_match(opt.state_dict(), ref.base_optimizer.state_dict(), dtype, what)
    assert opt.alpha == alpha


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("steps", [1, 3], ids=lambda k: f"k{k}")
@pytest.mark.parametrize("alpha", [0.5, 1.7], ids=lambda a: f"alpha{a}")
@pytest.mark.parametrize("model_name,dtype", CASES, ids=CASE_IDS)
def test_closure_api_matches_authors(model_name, dtype, alpha, steps, backend):
    """``step(closure)`` with ``model=`` (BN handled inside) gives the authors' update."""
    model, theirs = twin_models(model_name, dtype)
    base = BASES["weight_decay"]
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=RHO,
        steps=steps,
        alpha=alpha,
        eps=EPS,
        backend=backend,
        model=model,
        **base,
    )
    ref = authors_optimizer(theirs, steps, 2 * RHO, alpha, base)
    for n, (x, y) in enumerate(make_batches(model_name, 3, dtype)):
        package_step(opt, model, x, y, "closure", update_alpha=False)
        train_step(ref, theirs, criterion, x, y, update_alpha=False)
        assert_models_match(model, theirs, dtype, f"step {n}")


# ------------------------------------------------------------------ the search
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("api", ["authors_sequence", "closure"])
@pytest.mark.parametrize("steps", [1, 2], ids=lambda k: f"k{k}")
@pytest.mark.parametrize("model_name", ["mlp", "cnn_bn"])
def test_dynamic_alpha_matches_authors(model_name, steps, api, backend):
    """Searches on the first batch of each 3-batch "epoch" (as their train.py): alpha*, the
    (alpha, loss) curve, and the parameters after every step."""
    dtype = torch.float64
    rho_max = SEARCH_RHO_MAX
    model, theirs = twin_models(model_name, dtype)
    base = BASES["weight_decay"]
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=RHO,
        steps=steps,
        rho_max=rho_max,
        alpha=1.0,
        eps=EPS,
        backend=backend,
        model=model,
        **base,
    )
    ref = authors_optimizer(theirs, steps, rho_max, 1.0, base)
    chosen = []
    for n, (x, y) in enumerate(make_batches(model_name, 9, dtype)):
        search = n % 3 == 0
        package_step(opt, model, x, y, api, update_alpha=search)
        train_step(ref, theirs, criterion, x, y, update_alpha=search)
        what = f"step {n}"
        if search:
            assert max(loss for _, loss in ref.curve) > 0  # the regime where both rules agree
            assert [a for a, _ in opt.search_curve] == [a for a, _ in ref.curve], what
            assert_close(
                torch.tensor([loss for _, loss in opt.search_curve]),
                torch.tensor([loss for _, loss in ref.curve]),
                dtype,
                f"{what}, search curve",
            )
            chosen.append(ref.alpha)
        assert opt.alpha == ref.alpha, f"{what}: alpha {opt.alpha} vs authors {ref.alpha}"
        assert_models_match(model, theirs, dtype, what)
    # the searches must exercise the selection: not every alpha* at an end of the grid
    assert any(0.0 < a < 2.0 for a in chosen), f"alpha* of the searches: {chosen}"


@pytest.mark.parametrize("api", ["authors_sequence", "closure"])
@pytest.mark.parametrize("steps", [1, 2], ids=lambda k: f"k{k}")
def test_num_batches_tracked_counts_steps_not_passes(steps, api):
    """The documented difference: theirs counts every train-mode forward of a step (k + 1, plus
    one per grid point when searching), the package one per step; running statistics agree."""
    dtype = torch.float64
    model, theirs = twin_models("cnn_bn", dtype)
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=RHO,
        steps=steps,
        rho_max=SEARCH_RHO_MAX,
        eps=EPS,
        model=model,
        **BASES["momentum"],
    )
    ref = authors_optimizer(theirs, steps, SEARCH_RHO_MAX, 1.0, BASES["momentum"])
    batches = make_batches("cnn_bn", 3, dtype)
    for n, (x, y) in enumerate(batches):
        package_step(opt, model, x, y, api, update_alpha=n == 0)
        train_step(ref, theirs, criterion, x, y, update_alpha=n == 0)
    xsam_fast.enable_running_stats(model)  # what the next batch's step starts with
    assert_models_match(model, theirs, dtype, "after 3 steps")
    grid = len(ref.curve)
    assert int(model[1].num_batches_tracked) == len(batches)
    assert int(theirs[1].num_batches_tracked) == len(batches) * (steps + 1) + grid


# ------------------------------------------------------------------ changing gradient sets
class _PassDependent(nn.Module):
    """Three weights; which of them the loss uses depends on the pass of the step: ``a`` in every
    pass, ``late`` from the second pass on (k = 2: the second ascent and the final pass),
    ``early`` in the first pass only (no gradient at the final point)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64))
        self.late = nn.Parameter(torch.tensor([3.0, -1.0], dtype=torch.float64))
        self.early = nn.Parameter(torch.tensor([0.5, 1.5], dtype=torch.float64))
        self.passes = 0

    def forward(self, x: Tensor) -> Tensor:
        first = self.passes % 3 == 0  # k = 2: three passes per step
        self.passes += 1
        out = (torch.tanh(self.a * x) ** 2).sum()
        if first:
            return out + (self.early**2).sum()
        return out + 0.1 * (self.late**3).sum()


def _sum_loss(out: Tensor, _target: Any) -> Tensor:
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("api", ["authors_sequence", "closure"])
def test_gradient_sets_changing_between_passes(api, backend):
    """A weight first used in the second ascent, and one unused at the final point: their
    theta_0 is kept, the first is stepped, the second restored and left alone (two steps)."""
    model, theirs = _PassDependent(), _PassDependent()
    base = dict(lr=0.1, momentum=0.9)
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=RHO,
        steps=2,
        alpha=0.5,
        eps=EPS,
        backend=backend,
        **base,
    )
    ref = authors_optimizer(theirs, 2, 2 * RHO, 0.5, base)
    x = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
    for n in range(2):
        if api == "authors_sequence":
            train_step(
                opt,
                model,
                _sum_loss,
                x,
                None,
                False,
                enable=xsam_fast.enable_running_stats,
                disable=xsam_fast.disable_running_stats,
            )
        else:

            def closure() -> Tensor:
                opt.zero_grad()
                loss = model(x)
                loss.backward()
                return loss

            opt.step(closure)
        train_step(ref, theirs, _sum_loss, x, None, False)
        assert_models_match(model, theirs, torch.float64, f"step {n}")
    assert torch.equal(theirs.early, torch.tensor([0.5, 1.5], dtype=torch.float64))


# ------------------------------------------------------------------ degenerate angle
class _ConcaveLine(nn.Module):
    """L(w) = -w^2 / 2 for one scalar weight: an ascent of length rho > |w| passes the maximum,
    so the final gradient is exactly opposite to the ascent (cos psi = -1, sin psi < 1e-8)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.1], dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return self.w * x


def _concave_loss(out: Tensor, _target: Any) -> Tensor:
    return -0.5 * (out**2).sum()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.7], ids=lambda a: f"alpha{a}")
def test_opposite_directions_take_the_degenerate_rule(alpha, backend):
    """v0 = -v1 exactly (eps = 0, one weight: no rounding in the unit vectors), psi = pi: both
    codes use (v0 + v1)/2 = 0 whatever alpha, so only weight decay moves the weight."""
    model, theirs = _ConcaveLine(), _ConcaveLine()
    base = dict(lr=0.1, momentum=0.9, weight_decay=1e-2)
    opt = XSAM(
        model.parameters(), torch.optim.SGD, rho=RHO, alpha=alpha, eps=0.0, backend=backend, **base
    )
    ref = authors_optimizer(theirs, 1, 2 * RHO, alpha, base, eps=0.0)
    x = torch.ones(1, dtype=torch.float64)
    for n in range(2):
        train_step(
            opt,
            model,
            _concave_loss,
            x,
            None,
            False,
            enable=xsam_fast.enable_running_stats,
            disable=xsam_fast.disable_running_stats,
        )
        train_step(ref, theirs, _concave_loss, x, None, False)
        assert_close(model.w, theirs.w, torch.float64, f"step {n}, w")
    assert opt.stats()["psi"] == pytest.approx(np.pi)
    # G = 0: the two steps are pure weight decay with momentum
    w = 0.1 * (1 - 0.1 * 1e-2)
    w = w - 0.1 * (0.9 * 1e-2 * 0.1 + 1e-2 * w)
    assert theirs.w.item() == pytest.approx(w, rel=1e-12)


# ------------------------------------------------------------------ the compat class
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dynamic", [False, True], ids=["alpha1", "dynamic"])
@pytest.mark.parametrize("steps", [1, 2, 3], ids=lambda k: f"k{k}")
def test_compat_class_with_per_step_rho(steps, dynamic, backend):
    """``xsam_fast.compat.XSAM`` built exactly as their train.py builds theirs (rho per ascent,
    their BN helpers), searching on the first batch of each epoch when dynamic."""
    dtype = torch.float64
    rho_per_step = RHO / steps  # their train.py: args.rho / args.steps
    model, theirs = twin_models("cnn_bn", dtype)
    base = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)  # their train.py defaults
    opt = CompatXSAM(
        model.parameters(),
        torch.optim.SGD,
        steps,
        rho_per_step,
        SEARCH_RHO_MAX,
        1.0,
        2.0,
        0.1,
        EPS,
        backend=backend,
        **base,
    )
    ref = authors_optimizer(theirs, steps, SEARCH_RHO_MAX, 1.0, base, rho_per_step=rho_per_step)
    for n, (x, y) in enumerate(make_batches("cnn_bn", 6, dtype)):
        search = dynamic and n % 3 == 0
        scale = train_step(
            opt, model, criterion, x, y, search, enable=authors_enable, disable=authors_disable
        )
        expected_scale = train_step(ref, theirs, criterion, x, y, search)
        what = f"step {n}"
        assert_close(scale.reshape(1), expected_scale.reshape(1), dtype, f"{what}, ||g||")
        assert opt.alpha == ref.alpha, f"{what}: alpha {opt.alpha} vs authors {ref.alpha}"
        assert_models_match(model, theirs, dtype, what)
