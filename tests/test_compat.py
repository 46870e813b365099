"""``xsam_fast.compat.XSAM``: the authors' constructor (rho PER ASCENT STEP) on top of XSAM."""

from __future__ import annotations

import inspect

import pytest
import torch

from conftest import (
    assert_params_close,
    authors_step,
    criterion,
    float64_copy,
    make_batches,
    make_cnn_bn,
    params_of,
)
from xsam_float64 import Float64XSAM
from xsam_fast import XSAM
from xsam_fast.compat import XSAM as CompatXSAM

AUTHORS_ARGS = [
    "params",
    "base_optimizer",
    "steps",
    "rho",
    "rho_max",
    "alpha",
    "alpha_max",
    "alpha_delta",
    "eps",
]


def test_signature_is_the_authors():
    params = list(inspect.signature(CompatXSAM.__init__).parameters)
    assert params[1:10] == AUTHORS_ARGS
    assert (
        inspect.signature(CompatXSAM.__init__).parameters["kwargs"].kind
        == inspect.Parameter.VAR_KEYWORD
    )


@pytest.mark.parametrize("dynamic", [False, True], ids=["alpha1", "dynamic"])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_compat_equals_core_with_total_rho(steps, dynamic):
    """compat(rho) == XSAM(rho_total = rho * steps), and both == the re-derivation."""
    rho = 0.15 / steps  # what the authors' train.py passes
    model_a = make_cnn_bn(torch.float64)
    model_b = make_cnn_bn(torch.float64)
    model64 = float64_copy(model_a)
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    compat = CompatXSAM(
        model_a.parameters(), torch.optim.SGD, steps, rho, 0.3, 1.0, 2.0, 0.1, 1e-12, **kw
    )
    core = XSAM(
        model_b.parameters(),
        torch.optim.SGD,
        steps=steps,
        rho=rho * steps,
        rho_max=0.3,
        alpha=1.0,
        alpha_max=2.0,
        alpha_delta=0.1,
        eps=1e-12,
        **kw,
    )
    assert compat.param_groups[0]["rho"] == rho * steps
    ref = Float64XSAM(model64, rho=rho * steps, steps=steps, rho_max=0.3, base="sgd", **kw)
    for n, (x, y) in enumerate(make_batches("cnn_bn", 3)):
        search = dynamic and n == 0  # the authors search on the first batch of an epoch
        scale = authors_step(compat, model_a, x, y, steps, update_alpha=search)
        authors_step(core, model_b, x, y, steps, update_alpha=search)
        ref.step(lambda: criterion(model64(x), y), search=search)
        for p, q in zip(model_a.parameters(), model_b.parameters()):
            assert torch.equal(p, q)
        assert compat.alpha == core.alpha == ref.alpha
        assert float(scale) == pytest.approx(ref.grad_norm, rel=1e-12)  # the authors' return
        assert_params_close(params_of(model_a), params_of(model64), 1e-12, 1e-12)
