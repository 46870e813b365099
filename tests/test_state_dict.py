"""Checkpoints: stop after n steps, save, rebuild, load, continue == an uninterrupted run."""

from __future__ import annotations

import io

import pytest
import torch

import xsam_fast
from xsam_fast import checkpoint
from conftest import closure_step, make_batches, make_mlp
from xsam_fast import XSAM

BASES = {
    "sgd-momentum": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3)),
    "adamw": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2)),
}
N_STEPS, STOP_AT = 6, 3  # searches at step_count 0, 2, 4: the restart lands between two
BACKENDS = [
    pytest.param("reference"),
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            "cpu" not in xsam_fast.available_backends(),
            reason=f"cpu backend unavailable: {xsam_fast.backend_status().get('cpu')}",
        ),
    ),
]


def _build(base_name, fuse=True, backend="reference"):
    model = make_mlp(torch.float64)
    base, kw = BASES[base_name]
    opt = XSAM(
        model.parameters(),
        base,
        backend=backend,
        rho=0.3,
        steps=2,
        rho_max=0.5,
        alpha=1.0,
        search_interval=2,
        model=model,
        fuse_base_update=fuse,
        **kw,
    )
    return model, opt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("base_name", list(BASES))
def test_resume_is_bit_identical(base_name, fuse, backend):
    batches = make_batches("mlp", N_STEPS)

    model, opt = _build(base_name, fuse, backend)
    for x, y in batches:
        closure_step(opt, model, x, y, update_alpha=None)
    uninterrupted = [p.detach().clone() for p in model.parameters()]
    assert len(opt.search_history) == 3

    model, opt = _build(base_name, fuse, backend)
    for x, y in batches[:STOP_AT]:
        closure_step(opt, model, x, y, update_alpha=None)
    opt.param_groups[0]["lr"] *= 0.5  # a changed hyper-parameter travels with the groups
    saved_alpha, saved_lr = opt.alpha, opt.param_groups[0]["lr"]
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    del model, opt

    model, opt = _build(base_name, fuse, backend)
    state = torch.load(buffer, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    assert opt.param_groups is opt.base_optimizer.param_groups
    assert opt.param_groups[0]["lr"] == saved_lr and opt.param_groups[0]["rho"] == 0.3
    assert opt.alpha == saved_alpha and opt.step_count == STOP_AT
    for x, y in batches[STOP_AT:]:
        closure_step(opt, model, x, y, update_alpha=None)

    # the uninterrupted run did not halve lr: redo it with the same change
    model_ref, opt_ref = _build(base_name, fuse, backend)
    for n, (x, y) in enumerate(batches):
        if n == STOP_AT:
            opt_ref.param_groups[0]["lr"] *= 0.5
        closure_step(opt_ref, model_ref, x, y, update_alpha=None)
    for p, q in zip(model.parameters(), model_ref.parameters()):
        assert torch.equal(p, q)
    assert [h["step"] for h in opt.search_history] == [0, 2, 4]
    assert opt.alpha == opt_ref.alpha
    # and halving lr did change the result (the comparison above can tell runs apart)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), uninterrupted))


@pytest.mark.parametrize("base_name", list(BASES))
def test_alpha_and_step_count_matter_on_resume(base_name):
    """Guard: a resume that forgot alpha/step_count would not match (so the test above can fail)."""
    batches = make_batches("mlp", N_STEPS)
    model_ref, opt_ref = _build(base_name)
    for x, y in batches:
        closure_step(opt_ref, model_ref, x, y, update_alpha=None)

    model, opt = _build(base_name)
    for x, y in batches[:STOP_AT]:
        closure_step(opt, model, x, y, update_alpha=None)
    sd = opt.state_dict()
    checkpoint.write(sd, dict(checkpoint.read(sd), alpha=1.0, step_count=0))
    model2, opt2 = _build(base_name)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(sd)
    for x, y in batches[STOP_AT:]:
        closure_step(opt2, model2, x, y, update_alpha=None)
    assert not all(torch.equal(p, q) for p, q in zip(model2.parameters(), model_ref.parameters()))


def test_state_dict_has_no_theta0_and_keeps_groups():
    model, opt = _build("sgd-momentum")
    x, y = make_batches("mlp", 1)[0]
    closure_step(opt, model, x, y, update_alpha=None)
    sd = opt.state_dict()
    for entry in sd["state"].values():
        assert set(entry) == {"momentum_buffer"}
    group = sd["param_groups"][0]
    assert group["rho"] == 0.3 and group["rho_max"] == 0.5 and group["momentum"] == 0.9
    assert "xsam" not in sd  # kept where every checkpoint route keeps it: a param group
    xsam = checkpoint.read(sd)
    assert xsam["step_count"] == 1 and len(xsam["search_curve"]) == 21
