"""Mixed precision: bf16 autocast unchanged; fp16 loss scaling with torch.amp.GradScaler.

With a GradScaler, every pass of a step is scaled, XSAM unscales each pass itself
before any norm, and an inf/NaN in any pass skips the step with theta_0 restored,
the base optimizer untouched and the scaler told (``scaler.update()`` backs off),
exactly as ``scaler.step`` does for a plain optimizer.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

from conftest import assert_params_close, criterion, make_batches, make_mlp, params_of
from xsam_float64 import Float64XSAM
from xsam_fast import XSAM

BASES = {
    "sgd_fused": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3), True),
    "sgd_unfused": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True), False),
    "adamw": (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1), True),
}


def _batches(n=4, dtype=torch.float32):
    return make_batches("mlp", n, dtype)


def _opt(model, base="sgd_fused", **kw):
    cls, hyper, fuse = BASES[base]
    kw = {**dict(rho=0.2, backend="auto", fuse_base_update=fuse), **hyper, **kw}
    return XSAM(model.parameters(), cls, **kw)


def _scaler(init_scale=2.0**12, growth_interval=2):
    return torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=growth_interval)


def _run(
    model, opt, batches, scaler=None, api="closure", autocast=None, search_at=(0,), inject=None
):
    """Train on ``batches``; ``inject=(step, pass)`` makes one gradient element inf
    after that backward pass (0: ascent, 1: final) of that step."""
    losses = []
    for t, (x, y) in enumerate(batches):
        passes = [0]
        search = t in search_at

        def loss_of():
            if autocast is None:
                return criterion(model(x), y)
            with torch.autocast("cpu", dtype=autocast):
                return criterion(model(x), y)

        def backward():
            opt.zero_grad()
            loss = loss_of()
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if inject == (t, passes[0]):
                next(model.parameters()).grad.view(-1)[3] = math.inf
            passes[0] += 1
            return loss

        if api == "closure":
            opt.step(backward, search_loss=loss_of, update_alpha=search, scaler=scaler)
        else:  # the authors' sequence, with the scaler handed to both phases
            backward()
            opt.first_step(0, scaler=scaler)
            backward()
            opt.second_step(update_alpha=search, search_loss=loss_of, scaler=scaler)
        if scaler is not None:
            scaler.update()
        losses.append(float(loss_of().detach()))
    return losses


@pytest.mark.parametrize("api", ["closure", "authors"])
@pytest.mark.parametrize("base", list(BASES))
def test_scaled_fp32_equals_unscaled_run(base, api):
    """Power-of-two scaling is exact in fp32: a GradScaler run is bit-identical to the
    plain run (without unscaling, ||g|| and G would be 4096x too large), and the
    scaler grows on schedule (the step records "no overflow" for scaler.update())."""
    model = make_mlp(torch.float32)
    plain = copy.deepcopy(model)
    scaler = _scaler()
    _run(model, _opt(model, base), _batches(), scaler=scaler, api=api)
    _run(plain, _opt(plain, base), _batches(), api=api)
    for a, b in zip(model.parameters(), plain.parameters()):
        assert torch.equal(a, b)
    assert scaler.get_scale() == 2.0**12 * 2**2  # 4 finite steps, growth every 2


def test_fp16_autocast_with_scaler_matches_unscaled():
    """fp16 autocast forward, scaled backward: equals the unscaled fp16 run up to fp
    tolerance, and trains (loss goes down)."""
    model = make_mlp(torch.float32)
    plain = copy.deepcopy(model)
    batches = _batches(1) * 6
    scaler = _scaler(init_scale=2.0**8, growth_interval=100)
    losses = _run(model, _opt(model), batches, scaler=scaler, autocast=torch.float16)
    _run(plain, _opt(plain), batches, autocast=torch.float16)
    assert_params_close(params_of(model), params_of(plain), 1e-3, 1e-3, "fp16+scaler")
    assert losses[-1] < losses[0]
    assert scaler.get_scale() == 2.0**8


def _state(opt):
    return {
        id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
        for p, s in opt.base_optimizer.state.items()
    }


@pytest.mark.parametrize("nonfinite", ["warn", "none"])
@pytest.mark.parametrize("api", ["closure", "authors"])
@pytest.mark.parametrize("bad_pass", [0, 1], ids=["ascent", "final"])
@pytest.mark.parametrize("base", ["sgd_fused", "adamw"])
def test_overflow_skips_step_restores_and_backs_off(base, bad_pass, api, nonfinite):
    """An inf in either backward: no warning (overflow is expected with a scaler, even
    with nonfinite="none"), parameters back at theta_0 bit for bit, base state and
    alpha and counters untouched, the scale halved; the next step trains normally."""
    model = make_mlp(torch.float32)
    opt = _opt(model, base, nonfinite=nonfinite)
    scaler = _scaler(growth_interval=1000)
    batches = _batches(3)
    _run(model, opt, batches[:1], scaler=scaler, api=api)  # creates the base state
    before, state, alpha = params_of(model), _state(opt), opt.alpha
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(model, opt, batches[1:2], scaler=scaler, api=api, search_at=(), inject=(0, bad_pass))
    for a, b in zip(params_of(model), before):
        assert torch.equal(a, b)
    after = _state(opt)
    assert after.keys() == state.keys()
    for pid, s in state.items():
        for k, v in s.items():
            assert torch.equal(after[pid][k], v) if torch.is_tensor(v) else after[pid][k] == v
    # a skipped step is a step taken (the host does not wait for the flag), and counted
    stats = opt.stats()
    assert opt.alpha == alpha and opt.step_count == 2 and stats["skipped"] is True
    assert stats["skipped_steps"] == 1
    assert scaler.get_scale() == 2.0**11
    _run(model, opt, batches[2:], scaler=scaler, api=api, search_at=())
    assert opt.step_count == 3 and opt.stats()["skipped"] is False
    assert not any(torch.equal(a, b) for a, b in zip(params_of(model), before))
    assert scaler.get_scale() == 2.0**11


def test_overflow_in_both_passes_and_then_scaler_step_refused():
    """The recorded state is scaler.step's: calling scaler.step(opt) in the same
    iteration is refused as for a plain optimizer."""
    model = make_mlp(torch.float32)
    opt = _opt(model)
    scaler = _scaler()
    x, y = _batches(1)[0]

    def closure():
        opt.zero_grad()
        loss = criterion(model(x), y)
        scaler.scale(loss * math.inf).backward()
        return loss

    before = params_of(model)
    opt.step(closure, scaler=scaler)
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**11
    for a, b in zip(params_of(model), before):
        assert torch.equal(a, b)


def test_scaler_must_be_passed_to_every_phase():
    model = make_mlp(torch.float32)
    opt = _opt(model)
    scaler = _scaler()
    x, y = _batches(1)[0]
    theta0 = params_of(model)
    scaler.scale(criterion(model(x), y)).backward()
    opt.first_step(0, scaler=scaler)
    opt.zero_grad()
    scaler.scale(criterion(model(x), y)).backward()
    with pytest.raises(ValueError, match="same enabled GradScaler"):
        opt.second_step()
    for a, b in zip(params_of(model), theta0):  # the failed step left theta_0
        assert torch.equal(a, b)
    assert opt._stepper.backed == [] and opt.step_count == 0


def test_disabled_scaler_is_a_plain_step():
    model = make_mlp(torch.float32)
    plain = copy.deepcopy(model)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    _run(model, _opt(model), _batches(2), scaler=scaler)
    _run(plain, _opt(plain), _batches(2))
    for a, b in zip(model.parameters(), plain.parameters()):
        assert torch.equal(a, b)


def test_interval_plain_steps_go_through_the_scaler():
    """With interval=2 every other call is a plain base step: scaler.step(base) unscales it."""
    model = make_mlp(torch.float32)
    plain = copy.deepcopy(model)
    scaler = _scaler()
    _run(model, _opt(model, interval=2), _batches(4), scaler=scaler)
    _run(plain, _opt(plain, interval=2), _batches(4))
    for a, b in zip(model.parameters(), plain.parameters()):
        assert torch.equal(a, b)


def test_bf16_autocast_unchanged_matches_float64_math():
    """bf16 autocast needs nothing: fp32 parameters and gradients, bf16 forward; the
    steps (alpha search included) follow the float64 re-derivation that runs the same
    autocast forward, to bf16-forward tolerance."""
    model = make_mlp(torch.float32)
    model_ref = copy.deepcopy(model)
    opt = _opt(model, "sgd_fused", rho_max=0.6)
    ref = Float64XSAM(
        model_ref, rho=0.2, rho_max=0.6, base="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3
    )
    for t, (x, y) in enumerate(_batches(3)):

        def loss_fn(m=model_ref, x=x, y=y):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return criterion(m(x), y)

        ref.step(loss_fn, search=(t == 0))
        _run(model, opt, [(x, y)], autocast=torch.bfloat16, search_at=(0,) if t == 0 else ())
        if t == 0:
            assert opt.alpha == ref.alpha
            assert [a for a, _ in opt.search_curve] == [a for a, _ in ref.curve]
            torch.testing.assert_close(
                [v for _, v in opt.search_curve], [v for _, v in ref.curve], atol=1e-2, rtol=0
            )
    assert_params_close(params_of(model), params_of(model_ref), 2e-4, 2e-4, "bf16 autocast")
