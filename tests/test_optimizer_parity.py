"""The whole optimizer on every backend that runs here, against the reference backend.

The contract suite (``test_backend_contract.py``) holds each phase of each backend to
the reference; this file holds whole training runs to it: several steps of SGD
(Nesterov), AdamW, a dynamic alpha search, a base optimizer without a fused update
(RMSprop), ASAM's geometry, per-group rho with clipping and an interval, two
ascents, in float64 and float32. Tolerances: float64 1e-12, float32 2e-5 relative.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import STEP_BACKENDS, backend_loaded, buckets_of
from xsam_fast import XSAM

FAST = [b for b in STEP_BACKENDS if b != "reference"]

CASES = {
    "sgd-nesterov-k2": (
        torch.optim.SGD,
        dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, steps=2),
        False,
    ),
    "adamw-search": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2), True),
    "sgd-search-k2": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, steps=2), True),
    "rmsprop-unfused": (torch.optim.RMSprop, dict(lr=1e-2), False),
    "asam-adamw": (torch.optim.AdamW, dict(lr=1e-2, adaptive=True, eta=0.05), True),
    "asam-all-sgd": (
        torch.optim.SGD,
        dict(lr=0.1, momentum=0.9, adaptive=True, adaptive_weights_only=False),
        False,
    ),
    "groups-clip-interval": (
        torch.optim.SGD,
        dict(lr=0.1, momentum=0.9, max_grad_norm=0.5, interval=2),
        False,
    ),
}


def _model(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 3)).to(dtype)


def _train(backend: str, case: str, dtype: torch.dtype, n_steps: int = 4):
    cls, kw, search = CASES[case]
    kw = dict(kw)
    model = _model(dtype)
    params = list(model.parameters())
    groups = (
        [{"params": params[:2], "rho": 0.1}, {"params": params[2:], "rho": 0.3}]
        if case.startswith("groups")
        else params
    )
    opt = XSAM(
        groups, cls, rho=kw.pop("rho", 0.2), alpha=0.8, alpha_delta=0.25, backend=backend, **kw
    )
    gen = torch.Generator().manual_seed(1)
    for i in range(n_steps):
        x = torch.randn(12, 6, generator=gen, dtype=torch.float64).to(dtype)
        y = torch.randint(0, 3, (12,), generator=gen)
        loss = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
        opt.step(lambda: loss().backward(), search_loss=loss, update_alpha=search and i % 2 == 0)
    return model, opt


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    "backend",
    FAST or [pytest.param("none", marks=pytest.mark.skip(reason="no fused backend runs here"))],
)
def test_optimizer_matches_reference(backend, case, dtype):
    with backend_loaded(backend):
        got, opt = _train(backend, case, dtype)
        assert {b.kernels.name for b in buckets_of(opt)} == {backend}
    want, ref = _train("reference", case, dtype)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for (name, a), b in zip(got.named_parameters(), want.parameters()):
        torch.testing.assert_close(a, b, msg=lambda m: f"{name}: {m}", **tol)
    assert opt.alpha == ref.alpha
    assert [r["alpha"] for r in opt.search_history] == [r["alpha"] for r in ref.search_history]
