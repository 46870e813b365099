"""Adaptive (ASAM) XSAM: ``XSAM(adaptive=True, eta=..., adaptive_weights_only=...)``.

Checked against :class:`Float64AdaptiveXSAM`, an independent float64
re-derivation written here from the definition (work in ``u = T^{-1} w``,
``T = |theta_0| + eta``): it forms the u-space vectors ``g_u = T g`` and
``d_u = d / T`` explicitly and maps back with ``w = T u`` (points) and
``G = T^{-1} G_u`` (the gradient handed to the base optimizer), instead of the
package's ``(c_d, c_g)`` coefficients and fused elementwise forms. The base
optimizers' rules are those of :class:`xsam_float64.Float64XSAM` (reused, not
changed). The fused backends are checked phase by phase in their own test
files; here the whole optimizer on the CPU backend against the reference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import xsam_fast
from xsam_fast import XSAM
from conftest import buckets_of
from xsam_float64 import Float64XSAM, _dot, _norm

ETA = 0.01


class Float64AdaptiveXSAM(Float64XSAM):
    """One ASAM-geometry XSAM step per :meth:`step` (no BatchNorm handling: models here
    have none). ``weights_only``: T = 1 on tensors with ndim <= 1."""

    def __init__(
        self, model: nn.Module, *, eta: float = ETA, weights_only: bool = True, **kw
    ) -> None:
        super().__init__(model, **kw)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        self.eta = eta
        self.adaptive = [p.dim() > 1 or not weights_only for p in self.params]

    def step(self, loss_fn, search: bool = False, lr: float | None = None) -> None:
        if lr is not None:
            self.lr = lr
        with torch.no_grad():
            theta0 = [p.detach().clone() for p in self.params]
        T = [t.abs() + self.eta if a else torch.ones_like(t) for t, a in zip(theta0, self.adaptive)]
        r = self.rho / self.steps
        for _ in range(self.steps):
            grads = self._grads(loss_fn)
            live = [j for j, g in enumerate(grads) if g is not None]
            g_u = [T[j] * grads[j] for j in live]
            n = _norm(g_u)
            with torch.no_grad():
                for j, gu in zip(live, g_u):  # u += r g_u / ||g_u||, w = T u
                    self.params[j].add_(T[j] * (r * gu / (n + self.eps)))
        grads = self._grads(loss_fn)
        idx = [j for j, g in enumerate(grads) if g is not None]
        g_u = [T[j] * grads[j] for j in idx]
        d_u = [(self.params[j].detach() - theta0[j]) / T[j] for j in idx]
        ng, nd = _norm(g_u), _norm(d_u)
        v0 = [x / (nd + self.eps) for x in d_u]
        v1 = [x / (ng + self.eps) for x in g_u]
        psi = math.acos(max(-1.0, min(1.0, _dot(v0, v1))))
        self.psi, self.grad_norm, self.d_norm = psi, ng, nd
        if search:
            best, best_loss, curve = 0.0, 0.0, []
            for a in np.arange(0.0, self.alpha_max + 1e-5, self.alpha_delta):
                a = float(a)
                with torch.no_grad():
                    for j, vj in zip(idx, self._v(a, v0, v1, psi)):
                        self.params[j].copy_(theta0[j] + T[j] * (self.rho_max * vj))
                    loss = float(loss_fn())
                curve.append((a, loss))
                if loss > best_loss:
                    best, best_loss = a, loss
            self.alpha, self.curve = best, curve
        G_u = [ng * x for x in self._v(self.alpha, v0, v1, psi)]
        with torch.no_grad():
            for p, t0 in zip(self.params, theta0):
                p.copy_(t0)
            for j, Gu in zip(idx, G_u):
                self._base_update(j, self.params[j], Gu / T[j])


# ------------------------------------------------------------------ models and data
def _model(dtype=torch.float64, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    # weights (2-d) and 1-d tensors (biases, LayerNorm): weights-only mode mixes both
    return nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.LayerNorm(9), nn.Linear(9, 3)).to(dtype)


def _data(dtype=torch.float64):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 5, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randint(0, 3, (32,), generator=gen)
    return x, y


def _loss(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def _run_package(model, x, y, nsteps, *, search, backend="reference", **kw):
    opt = XSAM(model.parameters(), kw.pop("base"), backend=backend, adaptive=True, **kw)

    def closure():
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    for _ in range(nsteps):
        opt.step(
            closure,
            search_loss=(lambda: _loss(model, x, y)) if search else None,
            update_alpha=search,
        )
    return opt


BASES = {
    "sgd-momentum": (
        torch.optim.SGD,
        dict(lr=0.1, momentum=0.9, weight_decay=1e-3),
        "sgd",
        dict(lr=0.1, momentum=0.9, weight_decay=1e-3),
    ),
    "adamw": (
        torch.optim.AdamW,
        dict(lr=1e-2, weight_decay=1e-2),
        "adamw",
        dict(lr=1e-2, weight_decay=1e-2),
    ),
}


# ------------------------------------------------------------------ (1) vs float64
#: weights-only: every k x alpha x base; all tensors: a subset (the test time stays small)
REDERIVATION_CASES = (
    [(k, a, base, True) for k in (1, 2) for a in (0.0, 1.0, 1.5, "search") for base in BASES]
    + [(2, a, base, False) for a in (1.5, "search") for base in BASES]
    + [(1, 0.0, "sgd-momentum", False)]
)


@pytest.mark.parametrize(
    "k,alpha,base,weights_only",
    REDERIVATION_CASES,
    ids=[f"k{k}-alpha{a}-{b}-{'weights' if w else 'all'}" for k, a, b, w in REDERIVATION_CASES],
)
def test_matches_float64_rederivation(k, alpha, base, weights_only):
    search = alpha == "search"
    torch_base, torch_kw, ref_base, ref_kw = BASES[base]
    x, y = _data()
    ours, theirs = _model(), _model()
    opt = _run_package(
        ours,
        x,
        y,
        2,
        search=search,
        base=torch_base,
        rho=0.5,
        steps=k,
        alpha=1.0 if search else alpha,
        eta=ETA,
        adaptive_weights_only=weights_only,
        alpha_delta=0.25,
        **torch_kw,
    )
    ref = Float64AdaptiveXSAM(
        theirs,
        eta=ETA,
        weights_only=weights_only,
        rho=0.5,
        steps=k,
        alpha=1.0 if search else alpha,
        alpha_delta=0.25,
        base=ref_base,
        **ref_kw,
    )
    for _ in range(2):
        ref.step(lambda: _loss(theirs, x, y), search=search)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")
    assert opt.alpha == ref.alpha
    stats = opt.stats()
    assert stats["psi"] == pytest.approx(ref.psi, rel=1e-10, abs=1e-12)
    assert stats["grad_norm"] == pytest.approx(ref.grad_norm, rel=1e-12)
    assert stats["d_norm"] == pytest.approx(ref.d_norm, rel=1e-12)
    if search:
        got = np.array(opt.search_curve)
        np.testing.assert_allclose(got, np.array(ref.curve), rtol=1e-12, atol=0)


# ------------------------------------------------------------------ (2) ASAM's formulas
def _asam_ascent(model, x, y, rho, eta, weights_only=True):
    """ASAM (Kwon et al. 2021) eps = rho T^2 g / ||T g||, T = |w| + eta on weights."""
    params = list(model.parameters())
    grads = torch.autograd.grad(_loss(model, x, y), params)
    T = [
        p.detach().abs() + eta if (p.dim() > 1 or not weights_only) else torch.ones_like(p)
        for p in params
    ]
    norm = math.sqrt(sum(float(((t * g) ** 2).sum()) for t, g in zip(T, grads)))
    return [rho * t * t * g / norm for t, g in zip(T, grads)]


def test_ascent_is_asams_perturbation():
    x, y = _data()
    model, copy = _model(), _model()
    want = _asam_ascent(copy, x, y, 0.7, ETA)
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.7,
        adaptive=True,
        eta=ETA,
        lr=0.1,
        eps=0.0,
        backend="reference",
    )  # ASAM's formula has no eps
    theta0 = [p.detach().clone() for p in model.parameters()]
    _loss(model, x, y).backward()
    opt.first_step()
    for p, t0, e in zip(model.parameters(), theta0, want):
        torch.testing.assert_close(p.detach(), t0 + e, rtol=1e-14, atol=1e-16)
    # not SAM's rho g / ||g||: the geometry did change
    grads = [p.grad for p in model.parameters()]
    sam = 0.7 * grads[0] / _norm(grads)
    assert not torch.allclose(model[0].weight.detach() - theta0[0], sam, rtol=1e-2)
    opt.restore_param()


def test_alpha1_k1_step_is_asams_update():
    """alpha=1, k=1, plain SGD: theta_0 - lr g(theta_0 + eps_ASAM), ASAM's update."""
    x, y = _data()
    model, copy = _model(), _model()
    lr, rho = 0.05, 0.4
    eps_asam = _asam_ascent(copy, x, y, rho, ETA)
    with torch.no_grad():
        for p, e in zip(copy.parameters(), eps_asam):
            p.add_(e)
    g_at = torch.autograd.grad(_loss(copy, x, y), list(copy.parameters()))
    want = [t0.detach() - e - lr * g for t0, e, g in zip(copy.parameters(), eps_asam, g_at)]
    _run_package(
        model,
        x,
        y,
        1,
        search=False,
        base=torch.optim.SGD,
        rho=rho,
        alpha=1.0,
        eta=ETA,
        lr=lr,
        eps=0.0,
    )
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ options
class _OneDim(nn.Module):
    """Only 1-d parameters: in weights-only mode adaptive XSAM is plain XSAM."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, 5, dtype=torch.float64))
        self.b = nn.Parameter(torch.linspace(0.3, -0.2, 5, dtype=torch.float64))
        self.norm = nn.LayerNorm(5, dtype=torch.float64)

    def forward(self, x):
        return self.norm(torch.tanh(x * self.w + self.b))[:, :3]


def _backends():
    return ["reference"] + (["cpu"] if "cpu" in xsam_fast.available_backends() else [])


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_non_adaptive_tensors_are_plain_xsam_bit_for_bit(backend, dtype):
    x, y = _data(dtype)
    results = []
    for adaptive in (False, True):
        torch.manual_seed(0)
        model = _OneDim().to(dtype)
        opt = XSAM(
            model.parameters(),
            torch.optim.SGD,
            rho=0.3,
            steps=2,
            alpha=0.6,
            adaptive=adaptive,
            backend=backend,
            lr=0.1,
            momentum=0.9,
        )
        for _ in range(3):

            def closure():
                opt.zero_grad()
                loss = _loss(model, x, y)
                loss.backward()
                return loss

            opt.step(closure, search_loss=lambda: _loss(model, x, y), update_alpha=True)
        assert all(b.eta is None for b in buckets_of(opt))
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_buckets_split_by_adaptivity():
    model = _model()
    _loss(model, *_data()).backward()
    weights_only = XSAM(model.parameters(), adaptive=True, eta=0.05, backend="reference", lr=0.1)
    etas = {id(p): b.eta for b in buckets_of(weights_only) for p in b.owners}
    assert [etas[id(p)] for p in model.parameters()] == [0.05, None, None, None, 0.05, None]
    every = XSAM(
        model.parameters(), adaptive=True, adaptive_weights_only=False, backend="reference", lr=0.1
    )
    assert {b.eta for b in buckets_of(every)} == {ETA}
    plain = XSAM(model.parameters(), backend="reference", lr=0.1)
    assert {b.eta for b in buckets_of(plain)} == {None}


@pytest.mark.parametrize("eta", [-0.1, float("nan"), float("inf")])
def test_invalid_eta_raises(eta):
    with pytest.raises(ValueError, match="eta"):
        XSAM(_model().parameters(), adaptive=True, eta=eta, lr=0.1)


def test_eta_zero_needs_non_adaptive():
    with pytest.raises(ValueError, match="eta > 0"):
        XSAM(_model().parameters(), adaptive=True, eta=0.0, lr=0.1)
    XSAM(_model().parameters(), adaptive=False, eta=0.0, lr=0.1)  # unused: fine


def test_batched_search_matches_sequential():
    """search_batch stacks the ASAM search points itself (optimizer._stacked_points)."""
    x, y = _data()
    outs = []
    for batch in (1, 4):
        model = _model()
        opt = XSAM(
            model.parameters(),
            torch.optim.SGD,
            rho=0.5,
            adaptive=True,
            backend="reference",
            search_batch=batch,
            alpha_delta=0.25,
            lr=0.1,
        )
        for _ in range(2):
            opt.zero_grad()
            _loss(model, x, y).backward()
            opt.first_step()
            opt.zero_grad()
            _loss(model, x, y).backward()
            opt.second_step(
                update_alpha=True,
                model=model,
                inputs=x,
                targets=y,
                criterion=nn.functional.cross_entropy,
            )
        outs.append((opt.search_curve, [p.detach().clone() for p in model.parameters()]))
    np.testing.assert_allclose(np.array(outs[0][0]), np.array(outs[1][0]), rtol=1e-12)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ (4) cpu backend
@pytest.mark.skipif("cpu" not in xsam_fast.available_backends(), reason="cpu backend unavailable")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", ["sgd-nesterov-k2", "adamw-search", "rmsprop-generic"])
def test_cpu_backend_matches_reference(case, dtype):
    base, kw, search = {
        "sgd-nesterov-k2": (
            torch.optim.SGD,
            dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, steps=2),
            False,
        ),
        "adamw-search": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2), True),
        "rmsprop-generic": (torch.optim.RMSprop, dict(lr=1e-2), False),
    }[case]
    x, y = _data(dtype)
    models = []
    for backend in ("reference", "cpu"):
        model = _model(dtype)
        opt = _run_package(
            model,
            x,
            y,
            3,
            search=search,
            backend=backend,
            base=base,
            rho=0.5,
            alpha=0.8,
            adaptive_weights_only=False,
            alpha_delta=0.5,
            **kw,
        )
        assert {b.kernels.name for b in buckets_of(opt)} == {backend}
        models.append((model, opt))
    (m1, o1), (m2, o2) = models
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for (name, a), b in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(b, a, msg=lambda m: f"{name}: {m}", **tol)
    assert o1.alpha == o2.alpha
