"""torch.optim step hooks fire exactly once per step on every path.

EMA and SWA averaging, profilers and loggers hang on ``register_step_pre_hook`` /
``register_step_post_hook`` (of an optimizer, or globally). An XSAM step is one
step for them: its hooks and the global ones fire once, the base optimizer's own
hooks fire once around the base update (whether it is fused, when the base
``step()`` never runs, or not), with :meth:`XSAM.step`, with the manual API, and
for each plain step of ``interval > 1``.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from conftest import authors_step, closure_step, make_batches, make_mlp
from xsam_fast import XSAM

N = 4


def _count(counter: Counter, name: str):
    def hook(opt, args, kwargs):
        counter[(name, type(opt).__name__)] += 1

    return hook


@pytest.mark.parametrize("interval", [1, 2])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("api", ["closure", "authors"])
def test_every_hook_fires_once_per_step(api, fuse, interval):
    if api == "authors" and interval > 1:
        pytest.skip("interval is a schedule of step(); the manual API is one XSAM step a call")
    model = make_mlp()
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.2,
        steps=2,
        lr=0.1,
        momentum=0.9,
        fuse_base_update=fuse,
        interval=interval,
        backend="reference",
    )
    seen: Counter = Counter()
    handles = [
        opt.register_step_pre_hook(_count(seen, "pre")),
        opt.register_step_post_hook(_count(seen, "post")),
        opt.base_optimizer.register_step_pre_hook(_count(seen, "pre")),
        opt.base_optimizer.register_step_post_hook(_count(seen, "post")),
        register_optimizer_step_pre_hook(_count(seen, "global-pre")),
        register_optimizer_step_post_hook(_count(seen, "global-post")),
    ]
    try:
        for x, y in make_batches("mlp", N):
            if api == "closure":
                closure_step(opt, model, x, y)
            else:
                authors_step(opt, model, x, y, 2)
    finally:
        for h in handles:
            h.remove()
    assert seen == Counter(
        {
            ("pre", "XSAM"): N,
            ("post", "XSAM"): N,
            ("pre", "SGD"): N,
            ("post", "SGD"): N,
            ("global-pre", "XSAM"): N,
            ("global-post", "XSAM"): N,
        }
    )


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_ema_in_a_post_hook_sees_one_update_per_step(fuse):
    model = make_mlp()
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    opt = XSAM(
        model.parameters(),
        torch.optim.AdamW,
        rho=0.2,
        lr=1e-2,
        fuse_base_update=fuse,
        backend="reference",
    )
    opt.register_step_post_hook(lambda o, a, k: ema.update_parameters(model))
    for x, y in make_batches("mlp", N):
        closure_step(opt, model, x, y)
    assert int(ema.n_averaged) == N
    for p, q in zip(ema.module.parameters(), model.parameters()):
        assert not torch.equal(p, q)  # an average of the steps, not the last parameters


def test_a_failed_step_fires_no_post_hook():
    model = make_mlp()
    opt = XSAM(model.parameters(), lr=0.1, backend="reference")
    seen: Counter = Counter()
    opt.register_step_post_hook(_count(seen, "post"))
    x, y = make_batches("mlp", 1)[0]

    def boom():
        raise KeyError("forward failed")

    with pytest.raises(KeyError):
        opt.step(boom)
    assert seen == Counter()
